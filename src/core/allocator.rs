//! The allocation state machine: pools of numbers, leases on them, and the deadlines that move
//! them along `free → leased → cooling → free`. Pure: every method takes `now`, nothing here
//! reads a clock or touches disk; each change is also recorded as an [`Effect`] that the caller
//! persists before answering anyone.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use priority_queue::PriorityQueue;

use super::time::{retry_after_secs, Timestamp};
use super::types::{LeaseId, ListingId, PhoneNumber, PoolId, SessionId, Target, TenantId};
use super::wheel::Wheel;
use super::{CoreError, Effect};

/// How long leases of a pool live, and how long their numbers rest afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Lifetime of a new lease, and of each renewal.
    pub ttl: Duration,
    /// No lease lives longer than this from its creation, however often renewed.
    pub max_ttl: Duration,
    /// After a lease ends, calls are still attributed to its holder for this long.
    pub grace: Duration,
    /// After a lease ends, nobody else gets the number for this long (at least `grace`).
    pub quarantine: Duration,
    /// Ended leases stay readable (state, calls, redeem) this long after they end.
    pub retention: Duration,
}

/// What allocation does when a pool has no free number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnExhausted {
    /// Refuse, telling the client when the next number frees.
    Reject,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub numbers: Vec<PhoneNumber>,
    pub settings: LeaseSettings,
    pub on_exhausted: OnExhausted,
}

/// A validated request for a number.
#[derive(Clone, Debug)]
pub struct AllocateRequest {
    pub tenant: TenantId,
    pub pool: PoolId,
    pub session: SessionId,
    pub listing: Option<ListingId>,
    pub target: Option<Target>,
    pub caller: Option<PhoneNumber>,
    /// Wanted lifetime; the pool's `ttl` if `None`. Capped by `max_ttl`.
    pub ttl: Option<Duration>,
    pub calls_required: u32,
    pub min_call_secs: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    Released,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseEnd {
    /// When the lease stopped being active: its `expires_at` for an expiry (whenever the wheel
    /// noticed), the release time for a release. Cooling is counted from here.
    pub at: Timestamp,
    pub reason: EndReason,
}

/// What a client sees of a lease at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Active,
    Expired,
    Released,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Expired => "expired",
            LeaseState::Released => "released",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub tenant: TenantId,
    pub pool: PoolId,
    pub number: PhoneNumber,
    pub session: SessionId,
    pub listing: Option<ListingId>,
    pub target: Option<Target>,
    pub caller: Option<PhoneNumber>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub end: Option<LeaseEnd>,
    /// The number went back to the free set after quarantine: only the record remains.
    pub freed: bool,
    pub calls_required: u32,
    pub min_call_secs: u32,
    pub calls: u32,
    pub redeemed_at: Option<Timestamp>,
}

impl Lease {
    /// The state at `now`, decided from the stored deadlines alone: a lease past `expires_at`
    /// reads as expired even before the wheel has fired its entry.
    pub fn state(&self, now: Timestamp) -> LeaseState {
        match self.end {
            Some(LeaseEnd {
                reason: EndReason::Released,
                ..
            }) => LeaseState::Released,
            Some(_) => LeaseState::Expired,
            None if now >= self.expires_at => LeaseState::Expired,
            None => LeaseState::Active,
        }
    }

    pub fn paid(&self) -> bool {
        self.calls >= self.calls_required
    }
}

/// The answer to an allocation.
#[derive(Clone, Debug)]
pub struct Allocated {
    pub lease: Lease,
    /// False when the same (tenant, pool, session, listing) got its live lease back, extended.
    pub fresh: bool,
}

/// Counts of a pool's numbers by state; they always add up to `size` (invariant 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub size: usize,
    pub free: usize,
    pub leased: usize,
    pub cooling: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Leased,
    Cooling,
}

#[derive(Debug)]
struct Slot {
    number: PhoneNumber,
    state: SlotState,
    /// The lease leasing or cooling the number; once free, its last holder.
    holder: Option<LeaseId>,
}

#[derive(Debug)]
struct Pool {
    spec: PoolSpec,
    slots: Vec<Slot>,
    /// Free slots, the one free longest first: `Reverse((freed_at, slot))`.
    free: PriorityQueue<u32, Reverse<(Timestamp, u32)>>,
    /// Leased slots by `expires_at`, and cooling slots by the end of their quarantine: both
    /// answer "when does the next number free" for `Retry-After` without a scan.
    leased: PriorityQueue<u32, Reverse<Timestamp>>,
    cooling: PriorityQueue<u32, Reverse<Timestamp>>,
}

impl Pool {
    fn stats(&self) -> PoolStats {
        PoolStats {
            size: self.slots.len(),
            free: self.free.len(),
            leased: self.leased.len(),
            cooling: self.cooling.len(),
        }
    }

    /// When the next number of this pool becomes free if nothing else happens.
    fn next_free_at(&self) -> Option<Timestamp> {
        let cooled = self.cooling.peek().map(|(_, Reverse(t))| *t);
        let expired = self
            .leased
            .peek()
            .map(|(_, Reverse(t))| t.saturating_add(self.spec.settings.quarantine));
        match (cooled, expired) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

type StickyKey = (TenantId, PoolId, SessionId, Option<ListingId>);

/// The whole allocation state of the service.
#[derive(Debug)]
pub struct Allocator {
    pools: Vec<Pool>,
    by_name: HashMap<Arc<str>, PoolId>,
    /// Which pool and slot each number lives in.
    numbers: HashMap<PhoneNumber, (PoolId, u32)>,
    leases: HashMap<LeaseId, Lease>,
    /// The live lease of each (tenant, pool, session, listing): asking again returns it.
    sticky: HashMap<StickyKey, LeaseId>,
    wheel: Wheel,
    effects: Vec<Effect>,
    ended: Vec<Ended>,
}

/// A lease that stopped being active, reported for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub pool: PoolId,
    pub reason: EndReason,
    /// From creation to the end.
    pub lived: Duration,
}

impl Allocator {
    /// An allocator with every number free, least-recently-used order being the listed order.
    pub fn new(specs: Vec<PoolSpec>) -> Result<Self, CoreError> {
        let mut numbers = HashMap::new();
        let mut by_name = HashMap::new();
        let mut pools = Vec::with_capacity(specs.len());
        for (p, spec) in specs.into_iter().enumerate() {
            let pid = PoolId(p as u32);
            if by_name.insert(Arc::from(spec.name.as_str()), pid).is_some() {
                return Err(CoreError::Corrupt(format!(
                    "pool {} defined twice",
                    spec.name
                )));
            }
            let mut free = PriorityQueue::with_capacity(spec.numbers.len());
            let mut slots = Vec::with_capacity(spec.numbers.len());
            for (i, &number) in spec.numbers.iter().enumerate() {
                let i = i as u32;
                if numbers.insert(number, (pid, i)).is_some() {
                    return Err(CoreError::Corrupt(format!("number {number} in two places")));
                }
                slots.push(Slot {
                    number,
                    state: SlotState::Free,
                    holder: None,
                });
                free.push(i, Reverse((Timestamp::ZERO, i)));
            }
            pools.push(Pool {
                spec,
                slots,
                free,
                leased: PriorityQueue::new(),
                cooling: PriorityQueue::new(),
            });
        }
        Ok(Allocator {
            pools,
            by_name,
            numbers,
            leases: HashMap::new(),
            sticky: HashMap::new(),
            wheel: Wheel::new(0),
            effects: Vec::new(),
            ended: Vec::new(),
        })
    }

    /// Rebuilds the state that `leases` and `wheel` (as persisted) describe. Numbers no
    /// longer configured keep their lease records readable but never return to a pool.
    pub fn restore(
        specs: Vec<PoolSpec>,
        leases: impl IntoIterator<Item = Lease>,
        wheel: impl IntoIterator<Item = (u64, LeaseId)>,
    ) -> Result<Self, CoreError> {
        let mut a = Allocator::new(specs)?;
        // Last time each number became free, for least-recently-used order after restart.
        let mut freed_at: HashMap<(PoolId, u32), Timestamp> = HashMap::new();
        for lease in leases {
            if let Some(&(pid, idx)) = a.numbers.get(&lease.number) {
                let cool_until = a.cool_until(&lease);
                let pool = &mut a.pools[pid.0 as usize];
                let slot = &mut pool.slots[idx as usize];
                let claim = match (lease.end, lease.freed) {
                    (None, _) => Some(SlotState::Leased),
                    (Some(_), false) => Some(SlotState::Cooling),
                    (Some(_), true) => None,
                };
                match claim {
                    Some(state) => {
                        if slot.state != SlotState::Free {
                            return Err(CoreError::Corrupt(format!(
                                "number {} is held by two leases ({:?} and {})",
                                lease.number, slot.holder, lease.id
                            )));
                        }
                        slot.state = state;
                        slot.holder = Some(lease.id);
                        pool.free.remove(&idx);
                        match state {
                            SlotState::Leased => pool.leased.push(idx, Reverse(lease.expires_at)),
                            _ => pool.cooling.push(idx, Reverse(cool_until)),
                        };
                        if lease.end.is_none() {
                            a.sticky.insert(sticky_key(&lease), lease.id);
                        }
                    }
                    None => {
                        let t = freed_at.entry((pid, idx)).or_default();
                        if cool_until >= *t {
                            *t = cool_until;
                            if slot.state == SlotState::Free {
                                slot.holder = Some(lease.id);
                            }
                        }
                    }
                }
            }
            a.leases.insert(lease.id, lease);
        }
        for ((pid, idx), t) in freed_at {
            let pool = &mut a.pools[pid.0 as usize];
            if pool.free.get(&idx).is_some() {
                pool.free.change_priority(&idx, Reverse((t, idx)));
            }
        }
        for (tick, id) in wheel {
            a.wheel.insert(tick, id);
        }
        Ok(a)
    }

    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        self.by_name.get(name).copied()
    }

    pub fn pool_spec(&self, pool: PoolId) -> &PoolSpec {
        &self.pools[pool.0 as usize].spec
    }

    pub fn pool_ids(&self) -> impl Iterator<Item = PoolId> {
        (0..self.pools.len() as u32).map(PoolId)
    }

    pub fn pool_stats(&self, pool: PoolId) -> PoolStats {
        self.pools[pool.0 as usize].stats()
    }

    pub fn lease(&self, id: &LeaseId) -> Option<&Lease> {
        self.leases.get(id)
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Wheel entries pending, and the last tick fully fired.
    pub fn wheel_status(&self) -> (usize, u64) {
        (self.wheel.len(), self.wheel.done_through())
    }

    /// The changes made since the last call, in order, for the caller to persist.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The leases that ended since the last call.
    pub fn take_ended(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.ended)
    }

    /// Gives the visitor a number: their live lease back (extended) if they already hold one
    /// for this listing, else the free number that has rested longest.
    pub fn allocate(
        &mut self,
        req: AllocateRequest,
        now: Timestamp,
        new_id: LeaseId,
    ) -> Result<Allocated, CoreError> {
        let pool = self
            .pools
            .get(req.pool.0 as usize)
            .ok_or(CoreError::UnknownPool)?;
        let settings = pool.spec.settings.clone();
        let ttl = req.ttl.unwrap_or(settings.ttl).min(settings.max_ttl);

        let key: StickyKey = (
            req.tenant.clone(),
            req.pool,
            req.session.clone(),
            req.listing.clone(),
        );
        if let Some(&id) = self.sticky.get(&key) {
            if self.leases[&id].state(now) == LeaseState::Active {
                self.extend(id, ttl, now);
                return Ok(Allocated {
                    lease: self.leases[&id].clone(),
                    fresh: false,
                });
            }
        }

        if self.leases.contains_key(&new_id) {
            return Err(CoreError::DuplicateId);
        }
        let pool = &mut self.pools[req.pool.0 as usize];
        let Some((idx, _)) = pool.free.pop() else {
            let next = pool.next_free_at().unwrap_or(now);
            return Err(match pool.spec.on_exhausted {
                OnExhausted::Reject => CoreError::Exhausted {
                    retry_after_secs: retry_after_secs(now, next),
                },
            });
        };
        let expires_at = now.saturating_add(ttl);
        let slot = &mut pool.slots[idx as usize];
        slot.state = SlotState::Leased;
        slot.holder = Some(new_id);
        pool.leased.push(idx, Reverse(expires_at));
        let lease = Lease {
            id: new_id,
            tenant: req.tenant,
            pool: req.pool,
            number: slot.number,
            session: req.session,
            listing: req.listing,
            target: req.target,
            caller: req.caller,
            created_at: now,
            expires_at,
            end: None,
            freed: false,
            calls_required: req.calls_required.max(1),
            min_call_secs: req.min_call_secs,
            calls: 0,
            redeemed_at: None,
        };
        self.sticky.insert(key, new_id);
        self.leases.insert(new_id, lease.clone());
        self.effects.push(Effect::PutLease(lease.clone()));
        self.schedule(expires_at, new_id);
        Ok(Allocated { lease, fresh: true })
    }

    /// Extends an active lease by `ttl` from now (the pool's `ttl` if `None`), never past
    /// `max_ttl` from its creation and never shortening it.
    pub fn renew(
        &mut self,
        id: &LeaseId,
        ttl: Option<Duration>,
        now: Timestamp,
    ) -> Result<&Lease, CoreError> {
        let lease = self.leases.get(id).ok_or(CoreError::UnknownLease)?;
        match lease.state(now) {
            LeaseState::Active => {}
            ended => return Err(CoreError::LeaseEnded(ended)),
        }
        let settings = &self.pools[lease.pool.0 as usize].spec.settings;
        let ttl = ttl.unwrap_or(settings.ttl).min(settings.max_ttl);
        self.extend(*id, ttl, now);
        Ok(&self.leases[id])
    }

    /// Ends a lease now; its number starts cooling. Returns false if it had already ended
    /// (releasing is idempotent).
    pub fn release(&mut self, id: &LeaseId, now: Timestamp) -> Result<bool, CoreError> {
        let lease = self.leases.get(id).ok_or(CoreError::UnknownLease)?;
        match lease.state(now) {
            LeaseState::Active => {
                self.end(*id, now, EndReason::Released);
                let cool_until = self.cool_until(&self.leases[id]);
                self.schedule(cool_until, *id);
                Ok(true)
            }
            // Past its deadline but not yet fired: settle it as the wheel would.
            LeaseState::Expired if lease.end.is_none() => {
                self.advance(*id, now);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Fires every wheel entry due at `now`: expiries, ends of quarantine, purges of old
    /// records. Stale entries (a renewed lease's old deadline) do nothing but go away.
    pub fn tick(&mut self, now: Timestamp) {
        let mut due = Vec::new();
        self.wheel.advance(now.tick_floor(), &mut due);
        for (tick, id) in due {
            self.effects.push(Effect::DelWheel(tick, id));
            self.advance(id, now);
        }
    }

    /// Checks the invariants of DESIGN.md that a single state can show; `Err` says which broke.
    pub fn check_invariants(&self) -> Result<(), String> {
        let done = self.wheel.done_through();
        for pool in &self.pools {
            let s = pool.stats();
            if s.free + s.leased + s.cooling != s.size {
                return Err(format!(
                    "pool {}: counts {s:?} do not add up",
                    pool.spec.name
                ));
            }
            for (idx, slot) in pool.slots.iter().enumerate() {
                let idx = idx as u32;
                let in_sets = [
                    pool.free.get(&idx).is_some(),
                    pool.leased.get(&idx).is_some(),
                    pool.cooling.get(&idx).is_some(),
                ];
                let expected = match slot.state {
                    SlotState::Free => [true, false, false],
                    SlotState::Leased => [false, true, false],
                    SlotState::Cooling => [false, false, true],
                };
                if in_sets != expected {
                    return Err(format!(
                        "{}: state {:?} but sets {in_sets:?}",
                        slot.number, slot.state
                    ));
                }
                if slot.state != SlotState::Free {
                    let lease = slot
                        .holder
                        .and_then(|id| self.leases.get(&id))
                        .ok_or_else(|| format!("{} held by a missing lease", slot.number))?;
                    let (holds, deadline) = match slot.state {
                        SlotState::Leased => (lease.end.is_none(), lease.expires_at),
                        _ => (lease.end.is_some() && !lease.freed, self.cool_until(lease)),
                    };
                    if !holds || lease.number != slot.number {
                        return Err(format!(
                            "{} state {:?} disagrees with {lease:?}",
                            slot.number, slot.state
                        ));
                    }
                    if deadline.tick_ceil() <= done {
                        return Err(format!(
                            "{} still {:?} at tick {done}, past its deadline {deadline:?}",
                            slot.number, slot.state
                        ));
                    }
                }
            }
        }
        let mut holders: HashMap<PhoneNumber, LeaseId> = HashMap::new();
        for lease in self.leases.values() {
            if lease.end.is_none() {
                if let Some(other) = holders.insert(lease.number, lease.id) {
                    return Err(format!("{} held by {other} and {}", lease.number, lease.id));
                }
            }
        }
        Ok(())
    }

    /// When the lease's number may go to someone else.
    pub fn cool_until(&self, lease: &Lease) -> Timestamp {
        let q = self.pools[lease.pool.0 as usize].spec.settings.quarantine;
        lease
            .end
            .map_or(lease.expires_at, |e| e.at)
            .saturating_add(q)
    }

    /// Until when late calls still reach the lease's holder.
    pub fn grace_until(&self, lease: &Lease) -> Timestamp {
        let g = self.pools[lease.pool.0 as usize].spec.settings.grace;
        lease
            .end
            .map_or(lease.expires_at, |e| e.at)
            .saturating_add(g)
    }

    fn purge_at(&self, lease: &Lease) -> Timestamp {
        let r = self.pools[lease.pool.0 as usize].spec.settings.retention;
        lease
            .end
            .map_or(lease.expires_at, |e| e.at)
            .saturating_add(r)
            .max(self.cool_until(lease))
    }

    fn schedule(&mut self, deadline: Timestamp, id: LeaseId) {
        let tick = deadline.tick_ceil();
        self.wheel.insert(tick, id);
        self.effects.push(Effect::PutWheel(tick, id));
    }

    fn extend(&mut self, id: LeaseId, ttl: Duration, now: Timestamp) {
        let lease = self.leases.get_mut(&id).expect("caller checked");
        let max_ttl = self.pools[lease.pool.0 as usize].spec.settings.max_ttl;
        let bound = lease.created_at.saturating_add(max_ttl);
        let new_expiry = now.saturating_add(ttl).min(bound).max(lease.expires_at);
        if new_expiry == lease.expires_at {
            return;
        }
        lease.expires_at = new_expiry;
        let (pid, idx) = self.numbers[&lease.number];
        self.pools[pid.0 as usize]
            .leased
            .change_priority(&idx, Reverse(new_expiry));
        self.effects.push(Effect::PutLease(lease.clone()));
        self.schedule(new_expiry, id);
    }

    /// Moves a lease as far along its life cycle as `now` allows, and files its next deadline.
    fn advance(&mut self, id: LeaseId, now: Timestamp) {
        let mut moved = false;
        loop {
            let Some(lease) = self.leases.get(&id) else {
                return;
            };
            if lease.end.is_none() {
                if now < lease.expires_at {
                    break;
                }
                let at = lease.expires_at;
                self.end(id, at, EndReason::Expired);
                moved = true;
            } else if !lease.freed {
                let cool_until = self.cool_until(lease);
                if now < cool_until {
                    break;
                }
                self.free(id, cool_until);
                moved = true;
            } else {
                if now < self.purge_at(lease) {
                    break;
                }
                self.leases.remove(&id);
                self.effects.push(Effect::DelLease(id));
                return;
            }
        }
        if moved {
            let lease = &self.leases[&id];
            let next = if lease.freed {
                self.purge_at(lease)
            } else {
                self.cool_until(lease)
            };
            self.schedule(next, id);
        }
    }

    fn end(&mut self, id: LeaseId, at: Timestamp, reason: EndReason) {
        let lease = self.leases.get_mut(&id).expect("caller checked");
        lease.end = Some(LeaseEnd { at, reason });
        self.ended.push(Ended {
            pool: lease.pool,
            reason,
            lived: at.since(lease.created_at),
        });
        let key = sticky_key(lease);
        if self.sticky.get(&key) == Some(&id) {
            self.sticky.remove(&key);
        }
        let lease = &self.leases[&id];
        let cool_until = self.cool_until(lease);
        if let Some(&(pid, idx)) = self.numbers.get(&lease.number) {
            let pool = &mut self.pools[pid.0 as usize];
            let slot = &mut pool.slots[idx as usize];
            if slot.holder == Some(id) && slot.state == SlotState::Leased {
                slot.state = SlotState::Cooling;
                pool.leased.remove(&idx);
                pool.cooling.push(idx, Reverse(cool_until));
            }
        }
        self.effects.push(Effect::PutLease(lease.clone()));
    }

    fn free(&mut self, id: LeaseId, at: Timestamp) {
        let lease = self.leases.get_mut(&id).expect("caller checked");
        lease.freed = true;
        if let Some(&(pid, idx)) = self.numbers.get(&lease.number) {
            let pool = &mut self.pools[pid.0 as usize];
            let slot = &mut pool.slots[idx as usize];
            if slot.holder == Some(id) && slot.state == SlotState::Cooling {
                slot.state = SlotState::Free;
                pool.cooling.remove(&idx);
                pool.free.push(idx, Reverse((at, idx)));
            }
        }
        self.effects.push(Effect::PutLease(lease.clone()));
    }
}

fn sticky_key(lease: &Lease) -> StickyKey {
    (
        lease.tenant.clone(),
        lease.pool,
        lease.session.clone(),
        lease.listing.clone(),
    )
}

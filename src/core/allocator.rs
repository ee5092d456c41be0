//! The allocation state machine: pools of numbers, leases on them, and the deadlines that move
//! them along `free → leased → cooling → free`. Pure: every method takes `now`, nothing here
//! reads a clock or touches disk; each change is also recorded as an [`Effect`] that the caller
//! persists before answering anyone.

use std::cmp::Reverse;
use std::collections::HashMap as StdMap;
use std::sync::Arc;
use std::time::Duration;

use priority_queue::PriorityQueue;

use super::call::{Call, ReturnRoute};
use super::directory::Directory;
use super::lease::{
    AllocateRequest, Allocated, EndReason, Lease, LeaseEnd, LeaseSettings, LeaseState, Line,
    OnExhausted, PoolSpec, PoolStats,
};
use super::outbox::Notice;
use super::schedule::{Cx, Schedule};
use super::ticket::{Formula, Pass, PassSource, PoolMode, Progress, Ticket};
use super::tickets::Ticketing;
use super::time::{retry_after_secs, Timestamp};
use super::types::{
    CallKey, Code, Due, LeaseId, ListingId, PassId, PhoneNumber, PoolId, ReturnKey, SessionId,
    Target, TenantId, TicketCode,
};
use super::{CoreError, Effect, Outbox};

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
pub(super) struct Pool {
    slots: Vec<Slot>,
    /// Free slots, the one free longest first: `Reverse((freed_at, slot))`.
    free: PriorityQueue<u32, Reverse<(Timestamp, u32)>>,
    /// Leased slots by `expires_at`, and cooling slots by the end of their quarantine: both
    /// answer "when does the next number free" for `Retry-After` without a scan.
    leased: PriorityQueue<u32, Reverse<Timestamp>>,
    cooling: PriorityQueue<u32, Reverse<Timestamp>>,
    /// Codes of the shared number held by a lease (active or cooling).
    codes: HashMap<Code, LeaseId>,
    /// The same codes by when their lease ends (its expiry while active): when the next code
    /// frees, without a scan on every refusal (refusals are what an attack is made of).
    code_ends: PriorityQueue<Code, Reverse<Timestamp>>,
    /// Numbers and codes held (leased or cooling) by pages' leases, for `page_share`.
    page_numbers: usize,
    page_codes: usize,
}

impl Pool {
    fn stats(&self) -> PoolStats {
        PoolStats {
            size: self.slots.len(),
            free: self.free.len(),
            leased: self.leased.len(),
            cooling: self.cooling.len(),
            codes: self.codes.len(),
            page_numbers: self.page_numbers,
            page_codes: self.page_codes,
        }
    }

    /// Whether pages may take one more number, and one more code.
    fn open_to_pages(&self, spec: &PoolSpec) -> (bool, bool) {
        let share = spec.limits.page_share;
        (
            self.page_numbers < share.of(self.slots.len()),
            self.page_codes < share.of(usize::from(Code::SPACE)),
        )
    }

    /// When the next number of this pool becomes free if nothing else happens.
    fn next_free_at(&self, spec: &PoolSpec) -> Option<Timestamp> {
        let cooled = self.cooling.peek().map(|(_, Reverse(t))| *t);
        let expired = self
            .leased
            .peek()
            .map(|(_, Reverse(t))| t.saturating_add(spec.settings.quarantine));
        min_opt(cooled, expired)
    }
}

fn min_opt(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Maps keyed partly by what clients send (sessions, listings): ahash is fast and randomly
/// seeded, so keys cannot be chosen to collide.
type HashMap<K, V> = StdMap<K, V, ahash::RandomState>;

type StickyKey = (TenantId, PoolId, SessionId, Option<ListingId>);

/// Persisted state to rebuild an allocator from.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub leases: Vec<Lease>,
    pub calls: Vec<Call>,
    pub returns: Vec<ReturnRoute>,
    pub tickets: Vec<Ticket>,
    pub passes: Vec<Pass>,
    pub progress: Vec<Progress>,
    pub listings: Vec<(TenantId, ListingId, Target)>,
    pub wheel: Vec<(u64, Due)>,
}

/// The whole allocation and attribution state of the service.
#[derive(Debug)]
pub struct Allocator {
    /// The pools as configured: names, numbers, settings. Shared, never changed here.
    pub(super) dir: Arc<Directory>,
    /// Each pool's numbers' states, by the directory's pool ids.
    pub(super) pools: Vec<Pool>,
    pub(super) leases: HashMap<LeaseId, Lease>,
    /// The live lease of each (tenant, pool, session, listing): asking again returns it.
    sticky: HashMap<StickyKey, LeaseId>,
    /// Leases of each line, oldest first, until purged: attribution looks back in time here.
    pub(super) history: HashMap<Line, Vec<LeaseId>>,
    /// Leases that named the caller the visitor typed, until purged.
    pub(super) by_caller: HashMap<PhoneNumber, Vec<LeaseId>>,
    pub(super) returns: HashMap<ReturnKey, ReturnRoute>,
    /// Calls still remembered (for idempotency and their `end`), by key.
    pub(super) calls: HashMap<CallKey, Call>,
    /// Tickets, passes and callers' progress.
    pub(super) ticketing: Ticketing,
    /// Where each tenant's listings send their calls, for allocations that name no target
    /// (pages with publishable keys never may).
    listings: HashMap<(TenantId, ListingId), Target>,
    /// Live leases per (pool, tenant, session) and per (pool, tenant), for the pools' caps.
    live_per_session: HashMap<(PoolId, TenantId, SessionId), u32>,
    live_per_tenant: HashMap<(PoolId, TenantId), u32>,
    /// Every record's next deadline.
    pub(super) schedule: Schedule,
}

impl Allocator {
    /// An allocator with every number free, least-recently-used order being the listed order.
    pub fn new(specs: Vec<PoolSpec>) -> Result<Self, CoreError> {
        Self::with(Directory::new(specs)?)
    }

    /// As [`Allocator::new`], on a directory shared with the rest of the service.
    pub fn with(dir: Arc<Directory>) -> Result<Self, CoreError> {
        let mut a = Self::unqueued(dir);
        a.queue_free(&HashMap::default());
        Ok(a)
    }

    /// Puts every free slot in its pool's free queue, the one free longest first.
    fn queue_free(&mut self, freed_at: &HashMap<(PoolId, u32), Timestamp>) {
        for (p, pool) in self.pools.iter_mut().enumerate() {
            let free = pool
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state == SlotState::Free)
                .map(|(i, _)| {
                    let i = i as u32;
                    let t = freed_at
                        .get(&(PoolId(p as u32), i))
                        .copied()
                        .unwrap_or(Timestamp::ZERO);
                    (i, Reverse((t, i)))
                });
            pool.free = free.collect();
        }
    }

    /// Pools and slots, every slot free but no free queue yet.
    fn unqueued(dir: Arc<Directory>) -> Self {
        let pools = dir
            .specs()
            .iter()
            .map(|spec| Pool {
                slots: spec
                    .numbers
                    .iter()
                    .map(|&number| Slot {
                        number,
                        state: SlotState::Free,
                        holder: None,
                    })
                    .collect(),
                free: PriorityQueue::new(),
                leased: PriorityQueue::new(),
                cooling: PriorityQueue::new(),
                codes: HashMap::default(),
                code_ends: PriorityQueue::new(),
                page_numbers: 0,
                page_codes: 0,
            })
            .collect();
        Allocator {
            dir,
            pools,
            leases: HashMap::default(),
            sticky: HashMap::default(),
            history: HashMap::default(),
            by_caller: HashMap::default(),
            returns: HashMap::default(),
            calls: HashMap::default(),
            ticketing: Ticketing::default(),
            listings: HashMap::default(),
            live_per_session: HashMap::default(),
            live_per_tenant: HashMap::default(),
            schedule: Schedule::new(),
        }
    }

    /// Rebuilds the state that a snapshot (as persisted) describes. Numbers no longer
    /// configured keep their lease records readable but never return to a pool.
    pub fn restore(dir: Arc<Directory>, snapshot: Snapshot) -> Result<Self, CoreError> {
        let mut a = Allocator::unqueued(dir);
        // Last time each number became free, for least-recently-used order after restart.
        let mut freed_at: HashMap<(PoolId, u32), Timestamp> = HashMap::default();
        let mut leases = snapshot.leases;
        leases.sort_by_key(|l| (l.created_at, l.id));
        a.leases.reserve(leases.len());
        a.sticky.reserve(leases.len());
        a.history.reserve(leases.len());
        for lease in leases {
            let holds = lease.end.is_none() || !lease.freed;
            let cool_until = a.cool_until(&lease);
            if let Some(code) = lease.code {
                if holds {
                    let pool = &mut a.pools[lease.pool.0 as usize];
                    if let Some(other) = pool.codes.insert(code, lease.id) {
                        return Err(CoreError::Corrupt(format!(
                            "code {code} held by two leases ({other} and {})",
                            lease.id
                        )));
                    }
                    pool.code_ends.push(code, Reverse(lease.end_at()));
                    pool.page_codes += usize::from(lease.from_page);
                }
            } else if let Some(&(pid, idx)) = a.dir.slot(lease.number).as_ref() {
                let pool = &mut a.pools[pid.0 as usize];
                let slot = &mut pool.slots[idx as usize];
                if holds {
                    if slot.state != SlotState::Free {
                        return Err(CoreError::Corrupt(format!(
                            "number {} is held by two leases ({:?} and {})",
                            lease.number, slot.holder, lease.id
                        )));
                    }
                    slot.holder = Some(lease.id);
                    pool.page_numbers += usize::from(lease.from_page);
                    if lease.end.is_none() {
                        slot.state = SlotState::Leased;
                        pool.leased.push(idx, Reverse(lease.expires_at));
                    } else {
                        slot.state = SlotState::Cooling;
                        pool.cooling.push(idx, Reverse(cool_until));
                    }
                } else {
                    let t = freed_at.entry((pid, idx)).or_default();
                    if cool_until >= *t {
                        *t = cool_until;
                        if slot.state == SlotState::Free {
                            slot.holder = Some(lease.id);
                        }
                    }
                }
            }
            if lease.end.is_none() {
                a.sticky.insert(sticky_key(&lease), lease.id);
                a.count_live(&lease, true);
            }
            a.index(&lease);
            a.leases.insert(lease.id, lease);
        }
        a.queue_free(&freed_at);
        for call in snapshot.calls {
            a.calls.insert(call.id.key(), call);
        }
        for r in snapshot.returns {
            a.returns.insert(r.key, r);
        }
        a.ticketing = Ticketing::restore(snapshot.tickets, snapshot.passes, snapshot.progress);
        for (tenant, listing, target) in snapshot.listings {
            a.listings.insert((tenant, listing), target);
        }
        for (tick, due) in snapshot.wheel {
            a.schedule.restore(tick, due);
        }
        Ok(a)
    }

    /// The directory of pools this allocator serves.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.dir
    }

    pub fn pool_spec(&self, pool: PoolId) -> &PoolSpec {
        self.dir.spec(pool)
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

    /// The formula of a ticketing pool.
    pub fn formula(&self, pool: PoolId) -> Option<&Formula> {
        self.dir.formula(pool)
    }

    pub fn pass(&self, id: &PassId) -> Option<&Pass> {
        self.ticketing.pass(id)
    }

    /// Redeems an access code once, for a site allowed on the ticket's pool. Grants a pass
    /// when the pool has an `access_ttl`.
    pub fn redeem_ticket(
        &mut self,
        code: TicketCode,
        tenant: &TenantId,
        allowed: impl Fn(PoolId) -> bool,
        now: Timestamp,
        pass_id: PassId,
        out: &mut Outbox,
    ) -> Result<(Ticket, Option<Pass>), CoreError> {
        self.ticketing.redeem_ticket(
            &mut Cx {
                dir: &self.dir,
                sched: &mut self.schedule,
                out,
            },
            code,
            tenant,
            allowed,
            now,
            pass_id,
        )
    }

    /// Ends a pass now (refund, abuse); only its tenant may.
    pub fn revoke_pass(
        &mut self,
        id: &PassId,
        tenant: &TenantId,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<Pass, CoreError> {
        self.ticketing.revoke_pass(
            &mut Cx {
                dir: &self.dir,
                sched: &mut self.schedule,
                out,
            },
            id,
            tenant,
            now,
        )
    }

    /// Wheel entries pending, and the last tick fully fired.
    pub fn wheel_status(&self) -> (usize, u64) {
        (self.schedule.len(), self.schedule.done_through())
    }

    /// Gives the visitor a number: their live lease back (extended) if they already hold one
    /// for this listing, else the free number that has rested longest, else (if the pool
    /// allows) the shared number with a code. `new_id` is fresh randomness from the caller;
    /// its first bytes also pick where the search for a free code starts.
    pub fn allocate(
        &mut self,
        req: AllocateRequest,
        now: Timestamp,
        new_id: LeaseId,
        out: &mut Outbox,
    ) -> Result<Allocated, CoreError> {
        let dir = Arc::clone(&self.dir);
        let spec = dir
            .pools
            .get(req.pool.0 as usize)
            .ok_or(CoreError::UnknownPool)?;
        if matches!(spec.mode, PoolMode::Ticketing(_)) {
            return Err(CoreError::TicketingPool);
        }
        let settings = &spec.settings;

        let key: StickyKey = (
            req.tenant.clone(),
            req.pool,
            req.session.clone(),
            req.listing.clone(),
        );
        if let Some(&id) = self.sticky.get(&key) {
            if self.leases[&id].state(now) == LeaseState::Active {
                let ttl = self.ttl_of(&self.leases[&id], req.ttl);
                self.extend(id, ttl, now, out);
                return Ok(Allocated {
                    lease: self.leases[&id].clone(),
                    fresh: false,
                });
            }
        }

        if self.leases.contains_key(&new_id) {
            return Err(CoreError::DuplicateId);
        }
        let limits = self.dir.pools[req.pool.0 as usize].limits;
        let per_session = self
            .live_per_session
            .get(&(req.pool, req.tenant.clone(), req.session.clone()))
            .copied()
            .unwrap_or(0);
        if limits.max_live_per_session > 0 && per_session >= limits.max_live_per_session {
            return Err(CoreError::TooManyLeases {
                per: "session",
                limit: limits.max_live_per_session,
            });
        }
        let per_tenant = self
            .live_per_tenant
            .get(&(req.pool, req.tenant.clone()))
            .copied()
            .unwrap_or(0);
        if limits.max_live_per_tenant > 0 && per_tenant >= limits.max_live_per_tenant {
            return Err(CoreError::TooManyLeases {
                per: "tenant",
                limit: limits.max_live_per_tenant,
            });
        }
        let life = life_cap(settings, req.from_page);
        let pool = &mut self.pools[req.pool.0 as usize];
        // A page past its share of numbers is treated as if none were free, and past its share
        // of codes as if every code were taken: what is left stays for servers.
        let (numbers_open, codes_open) = match req.from_page {
            true => pool.open_to_pages(spec),
            false => (true, true),
        };
        let popped = if numbers_open { pool.free.pop() } else { None };
        let (number, code, ttl) = match popped {
            Some((idx, _)) => {
                let slot = &mut pool.slots[idx as usize];
                slot.state = SlotState::Leased;
                slot.holder = Some(new_id);
                let ttl = req.ttl.unwrap_or(settings.ttl).min(life);
                pool.leased.push(idx, Reverse(now.saturating_add(ttl)));
                pool.page_numbers += usize::from(req.from_page);
                (slot.number, None, ttl)
            }
            None => {
                let next_number = pool.next_free_at(spec);
                let OnExhausted::Shared { number, code_ttl } = spec.on_exhausted else {
                    return Err(CoreError::Exhausted {
                        retry_after_secs: retry_after_secs(
                            now,
                            next_number.unwrap_or(now.saturating_add(settings.ttl)),
                        ),
                    });
                };
                let seed = u16::from_le_bytes([new_id.as_bytes()[0], new_id.as_bytes()[1]]);
                let Some(code) = (0..Code::SPACE)
                    .filter(|_| codes_open)
                    .filter_map(|i| Code::new((seed % Code::SPACE + i) % Code::SPACE))
                    .find(|c| !pool.codes.contains_key(c))
                else {
                    let next_code = pool
                        .code_ends
                        .peek()
                        .map(|(_, Reverse(end))| end.saturating_add(settings.quarantine));
                    return Err(CoreError::Exhausted {
                        retry_after_secs: retry_after_secs(
                            now,
                            min_opt(next_number, next_code)
                                .unwrap_or(now.saturating_add(settings.ttl)),
                        ),
                    });
                };
                let ttl = code_ttl.min(life);
                pool.codes.insert(code, new_id);
                pool.code_ends.push(code, Reverse(now.saturating_add(ttl)));
                pool.page_codes += usize::from(req.from_page);
                (number, Some(code), ttl)
            }
        };
        let expires_at = now.saturating_add(ttl);
        let target = req.target.or_else(|| {
            let listing = req.listing.clone()?;
            self.listings.get(&(req.tenant.clone(), listing)).cloned()
        });
        let lease = Lease {
            id: new_id,
            tenant: req.tenant,
            pool: req.pool,
            number,
            session: req.session,
            listing: req.listing,
            target,
            caller: req.caller,
            created_at: now,
            expires_at,
            end: None,
            freed: false,
            calls_required: req.calls_required.max(1),
            min_call_secs: req.min_call_secs,
            calls: 0,
            redeemed_at: None,
            code,
            first_call_at: None,
            pass: None,
            from_page: req.from_page,
        };
        self.sticky.insert(key, new_id);
        self.index(&lease);
        self.count_live(&lease, true);
        self.leases.insert(new_id, lease.clone());
        out.effects.push(Effect::PutLease(lease.clone()));
        self.schedule.at(expires_at, Due::Lease(new_id), out);
        Ok(Allocated { lease, fresh: true })
    }

    /// Registers (or with `None`, forgets) where a tenant's listing sends its calls. Leases
    /// copy the target when created, so a change applies to the next visitors.
    pub fn set_listing(
        &mut self,
        tenant: TenantId,
        listing: ListingId,
        target: Option<Target>,
        out: &mut Outbox,
    ) {
        let key = (tenant, listing);
        match target {
            Some(t) => {
                out.effects
                    .push(Effect::PutListing(key.0.clone(), key.1.clone(), t.clone()));
                self.listings.insert(key, t);
            }
            None => {
                if self.listings.remove(&key).is_some() {
                    out.effects.push(Effect::DelListing(key.0, key.1));
                }
            }
        }
    }

    /// Extends an active lease by `ttl` from now (the pool's `ttl` if `None`; a code's
    /// `code_ttl` on a shared number), never past `max_ttl` from its creation and never
    /// shortening it.
    pub fn renew(
        &mut self,
        id: &LeaseId,
        ttl: Option<Duration>,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<&Lease, CoreError> {
        let lease = self.leases.get(id).ok_or(CoreError::UnknownLease)?;
        match lease.state(now) {
            LeaseState::Active => {}
            ended => return Err(CoreError::LeaseEnded(ended)),
        }
        let ttl = self.ttl_of(lease, ttl);
        self.extend(*id, ttl, now, out);
        Ok(&self.leases[id])
    }

    /// Ends a lease now; its number starts cooling. Returns false if it had already ended
    /// (releasing is idempotent).
    pub fn release(
        &mut self,
        id: &LeaseId,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<bool, CoreError> {
        let lease = self.leases.get(id).ok_or(CoreError::UnknownLease)?;
        match lease.state(now) {
            LeaseState::Active => {
                self.end(*id, now, EndReason::Released, out);
                let cool_until = self.cool_until(&self.leases[id]);
                self.schedule.at(cool_until, Due::Lease(*id), out);
                Ok(true)
            }
            // Past its deadline but not yet fired: settle it as the wheel would.
            LeaseState::Expired if lease.end.is_none() => {
                self.advance(Due::Lease(*id), now, out);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Marks a paid lease redeemed, once: the merchant's proof of payment cannot be replayed.
    /// Grants an access pass (id `pass_id`) when the pool has an `access_ttl`.
    pub fn redeem(
        &mut self,
        id: &LeaseId,
        now: Timestamp,
        pass_id: PassId,
        out: &mut Outbox,
    ) -> Result<(Lease, Option<Pass>), CoreError> {
        let lease = self.leases.get(id).ok_or(CoreError::UnknownLease)?;
        if lease.redeemed_at.is_some() {
            return Err(CoreError::AlreadyRedeemed);
        }
        if !lease.paid() {
            return Err(CoreError::NotPaid {
                calls: lease.calls,
                calls_required: lease.calls_required,
            });
        }
        let (pool, tenant) = (lease.pool, lease.tenant.clone());
        let pass = self.ticketing.grant(
            &mut Cx {
                dir: &self.dir,
                sched: &mut self.schedule,
                out,
            },
            pool,
            &tenant,
            PassSource::Lease(*id),
            now,
            pass_id,
        );
        let lease = self.leases.get_mut(id).expect("just seen");
        lease.redeemed_at = Some(now);
        lease.pass = pass.as_ref().map(|p| p.id);
        let lease = lease.clone();
        out.effects.push(Effect::PutLease(lease.clone()));
        Ok((lease, pass))
    }

    /// Fires every wheel entry due at `now`: expiries, ends of quarantine, purges of old
    /// records. Stale entries (a renewed lease's old deadline) do nothing but go away.
    pub fn tick(&mut self, now: Timestamp, out: &mut Outbox) {
        for (tick, what) in self.schedule.due(now) {
            out.effects.push(Effect::DelWheel(tick, what));
            self.advance(what, now, out);
        }
    }

    /// Runs on from `now` although the state was last written at `mark`, later than `now` (the
    /// wall clock was ahead then, or is behind now). Nothing comes back to life: every lease
    /// that had expired by `mark`, and every lease stamped after `now` (made while the clock
    /// was ahead; its stamps are brought back to `now`), ends at `now`, so its number cools
    /// from now on and its late callers keep their grace. Leases live at `mark` and made before `now` go on unchanged. Returns how
    /// many leases were ended.
    pub fn rewind_to(&mut self, mark: Timestamp, now: Timestamp, out: &mut Outbox) -> usize {
        let untrusted: Vec<LeaseId> = self
            .leases
            .values()
            .filter(|l| l.end.is_none() && (l.expires_at <= mark || l.created_at > now))
            .map(|l| l.id)
            .collect();
        for &id in &untrusted {
            // A lease stamped in the future is brought back to now, so its late callers find
            // it (attribution looks for the lease created before the call) and get its grace.
            let lease = self.leases.get_mut(&id).expect("just seen");
            lease.created_at = lease.created_at.min(now);
            lease.expires_at = lease.expires_at.min(now.max(lease.created_at));
            self.end(id, now, EndReason::Expired, out);
            let cool_until = self.cool_until(&self.leases[&id]);
            self.schedule.at(cool_until, Due::Lease(id), out);
        }
        untrusted.len()
    }

    /// Checks the invariants (ARCHITECTURE.md) that a single state can show; `Err` says which broke.
    pub fn check_invariants(&self) -> Result<(), String> {
        let done = self.schedule.done_through();
        for (pool, spec) in self.pools.iter().zip(self.dir.specs()) {
            let s = pool.stats();
            if s.free + s.leased + s.cooling != s.size {
                return Err(format!("pool {}: counts {s:?} do not add up", spec.name));
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
            let mut page_codes = 0;
            for (code, id) in &pool.codes {
                let lease = self
                    .leases
                    .get(id)
                    .ok_or_else(|| format!("code {code} held by a missing lease"))?;
                if lease.code != Some(*code) || lease.freed {
                    return Err(format!("code {code} disagrees with {lease:?}"));
                }
                if pool.code_ends.get_priority(code) != Some(&Reverse(lease.end_at())) {
                    return Err(format!("code {code} filed under the wrong end"));
                }
                page_codes += usize::from(lease.from_page);
            }
            if pool.code_ends.len() != pool.codes.len() {
                return Err(format!("pool {}: code ends out of step", spec.name));
            }
            let page_numbers = pool
                .slots
                .iter()
                .filter(|s| s.state != SlotState::Free)
                .filter_map(|s| s.holder.and_then(|id| self.leases.get(&id)))
                .filter(|l| l.from_page)
                .count();
            if (page_numbers, page_codes) != (pool.page_numbers, pool.page_codes) {
                return Err(format!(
                    "pool {}: pages hold {page_numbers} numbers and {page_codes} codes, counted {} and {}",
                    spec.name, pool.page_numbers, pool.page_codes
                ));
            }
        }
        let mut holders: HashMap<Line, LeaseId> = HashMap::default();
        for lease in self.leases.values() {
            if lease.end.is_none() {
                if let Some(other) = holders.insert(lease.line(), lease.id) {
                    return Err(format!(
                        "{:?} held by {other} and {}",
                        lease.line(),
                        lease.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// When the lease's number (or code) may go to someone else.
    pub fn cool_until(&self, lease: &Lease) -> Timestamp {
        let q = self.dir.pools[lease.pool.0 as usize].settings.quarantine;
        lease.end_at().saturating_add(q)
    }

    /// Until when late calls still reach the lease's holder.
    pub fn grace_until(&self, lease: &Lease) -> Timestamp {
        let g = self.dir.pools[lease.pool.0 as usize].settings.grace;
        lease.end_at().saturating_add(g)
    }

    fn purge_at(&self, lease: &Lease) -> Timestamp {
        let r = self.dir.pools[lease.pool.0 as usize].settings.retention;
        lease.end_at().saturating_add(r).max(self.cool_until(lease))
    }

    /// The lifetime a new term of `lease` gets: `code_ttl` on a shared number, else `wanted`
    /// or the pool's `ttl`; never more than the lease may live (`max_ttl`, `page_max_ttl`).
    fn ttl_of(&self, lease: &Lease, wanted: Option<Duration>) -> Duration {
        let spec = &self.dir.pools[lease.pool.0 as usize];
        let ttl = match (lease.code, &spec.on_exhausted) {
            (Some(_), OnExhausted::Shared { code_ttl, .. }) => *code_ttl,
            _ => wanted.unwrap_or(spec.settings.ttl),
        };
        ttl.min(life_cap(&spec.settings, lease.from_page))
    }

    /// Adds a lease to the lookups attribution uses.
    fn index(&mut self, lease: &Lease) {
        self.history.entry(lease.line()).or_default().push(lease.id);
        if let Some(c) = lease.caller {
            self.by_caller.entry(c).or_default().push(lease.id);
        }
    }

    /// Counts a lease in (or out of) the live counts its pool's caps look at.
    fn count_live(&mut self, lease: &Lease, live: bool) {
        fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K, up: bool) {
            if up {
                *map.entry(key).or_default() += 1;
            } else if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        bump(
            &mut self.live_per_session,
            (lease.pool, lease.tenant.clone(), lease.session.clone()),
            live,
        );
        bump(
            &mut self.live_per_tenant,
            (lease.pool, lease.tenant.clone()),
            live,
        );
    }

    fn unindex(&mut self, lease: &Lease) {
        remove_from(&mut self.history, lease.line(), lease.id);
        if let Some(c) = lease.caller {
            remove_from(&mut self.by_caller, c, lease.id);
        }
    }

    fn extend(&mut self, id: LeaseId, ttl: Duration, now: Timestamp, out: &mut Outbox) {
        let lease = self.leases.get_mut(&id).expect("caller checked");
        let settings = &self.dir.pools[lease.pool.0 as usize].settings;
        let bound = lease
            .created_at
            .saturating_add(life_cap(settings, lease.from_page));
        let new_expiry = now.saturating_add(ttl).min(bound).max(lease.expires_at);
        if new_expiry == lease.expires_at {
            return;
        }
        lease.expires_at = new_expiry;
        if let Some(code) = lease.code {
            self.pools[lease.pool.0 as usize]
                .code_ends
                .change_priority(&code, Reverse(new_expiry));
        } else if let Some(&(pid, idx)) = self.dir.slot(lease.number).as_ref() {
            self.pools[pid.0 as usize]
                .leased
                .change_priority(&idx, Reverse(new_expiry));
        }
        out.effects.push(Effect::PutLease(lease.clone()));
        self.schedule.at(new_expiry, Due::Lease(id), out);
    }

    /// Moves a record as far along its life as `now` allows, and files its next deadline.
    fn advance(&mut self, what: Due, now: Timestamp, out: &mut Outbox) {
        match what {
            Due::Lease(id) => self.advance_lease(id, now, out),
            Due::Call(key) => self.forget_call(key, now),
            Due::Return(key) => self.expire_return(key, now, out),
            Due::Ticket(id) => self.ticketing.advance_ticket(
                &mut Cx {
                    dir: &self.dir,
                    sched: &mut self.schedule,
                    out,
                },
                id,
                now,
            ),
            Due::Pass(id) => self.ticketing.advance_pass(
                &mut Cx {
                    dir: &self.dir,
                    sched: &mut self.schedule,
                    out,
                },
                id,
                now,
            ),
            Due::Progress(key) => self.ticketing.advance_progress(
                &mut Cx {
                    dir: &self.dir,
                    sched: &mut self.schedule,
                    out,
                },
                key,
                now,
            ),
        }
    }

    fn advance_lease(&mut self, id: LeaseId, now: Timestamp, out: &mut Outbox) {
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
                self.end(id, at, EndReason::Expired, out);
                moved = true;
            } else if !lease.freed {
                let cool_until = self.cool_until(lease);
                if now < cool_until {
                    break;
                }
                self.free(id, cool_until, out);
                moved = true;
            } else {
                if now < self.purge_at(lease) {
                    break;
                }
                let lease = self.leases.remove(&id).expect("just seen");
                self.unindex(&lease);
                out.effects.push(Effect::DelLease(id));
                out.notices.push(Notice::Purged { lease: id });
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
            self.schedule.at(next, Due::Lease(id), out);
        }
    }

    fn end(&mut self, id: LeaseId, at: Timestamp, reason: EndReason, out: &mut Outbox) {
        let lease = self.leases.get_mut(&id).expect("caller checked");
        lease.end = Some(LeaseEnd { at, reason });
        out.notices.push(Notice::Ended {
            lease: id,
            pool: lease.pool,
            reason,
            lived: at.since(lease.created_at),
        });
        let key = sticky_key(lease);
        if self.sticky.get(&key) == Some(&id) {
            self.sticky.remove(&key);
        }
        let lease = self.leases[&id].clone();
        self.count_live(&lease, false);
        let lease = &self.leases[&id];
        let cool_until = self.cool_until(lease);
        if let Some(code) = lease.code {
            let pool = &mut self.pools[lease.pool.0 as usize];
            if pool.codes.get(&code) == Some(&id) {
                pool.code_ends.change_priority(&code, Reverse(at));
            }
        } else {
            if let Some(&(pid, idx)) = self.dir.slot(lease.number).as_ref() {
                let pool = &mut self.pools[pid.0 as usize];
                let slot = &mut pool.slots[idx as usize];
                if slot.holder == Some(id) && slot.state == SlotState::Leased {
                    slot.state = SlotState::Cooling;
                    pool.leased.remove(&idx);
                    pool.cooling.push(idx, Reverse(cool_until));
                }
            }
        }
        out.effects.push(Effect::PutLease(lease.clone()));
    }

    fn free(&mut self, id: LeaseId, at: Timestamp, out: &mut Outbox) {
        let lease = self.leases.get_mut(&id).expect("caller checked");
        lease.freed = true;
        let page = usize::from(lease.from_page);
        match lease.code {
            Some(code) => {
                let pool = &mut self.pools[lease.pool.0 as usize];
                if pool.codes.get(&code) == Some(&id) {
                    pool.codes.remove(&code);
                    pool.code_ends.remove(&code);
                    pool.page_codes -= page;
                }
            }
            None => {
                // The pool the number is configured in now, as `end` and `restore` see it.
                if let Some(&(pid, idx)) = self.dir.slot(lease.number).as_ref() {
                    let pool = &mut self.pools[pid.0 as usize];
                    let slot = &mut pool.slots[idx as usize];
                    if slot.holder == Some(id) && slot.state == SlotState::Cooling {
                        slot.state = SlotState::Free;
                        pool.cooling.remove(&idx);
                        pool.free.push(idx, Reverse((at, idx)));
                        pool.page_numbers -= page;
                    }
                }
            }
        }
        out.effects.push(Effect::PutLease(lease.clone()));
    }
}

/// The longest a lease may live from its creation: `max_ttl`, and `page_max_ttl` for a page's.
fn life_cap(settings: &LeaseSettings, from_page: bool) -> Duration {
    match from_page {
        true => settings.max_ttl.min(settings.page_max_ttl),
        false => settings.max_ttl,
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

fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<LeaseId>>, key: K, id: LeaseId) {
    if let Some(v) = map.get_mut(&key) {
        v.retain(|x| *x != id);
        if v.is_empty() {
            map.remove(&key);
        }
    }
}

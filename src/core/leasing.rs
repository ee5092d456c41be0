//! Leasing: pools of numbers, leases on them, and the deadlines that move them along
//! `free → leased → cooling → free`; codes on shared numbers, the pages' share, the live
//! caps, listings' targets, and the lines' history attribution looks back through. Pure:
//! every method takes `now`; changes go to the outbox in a [`Cx`].

use std::cmp::Reverse;
use std::collections::HashMap as StdMap;
use std::time::Duration;

use priority_queue::PriorityQueue;

use super::directory::Directory;
use super::lease::{
    AllocateRequest, Allocated, EndReason, Lease, LeaseEnd, LeaseSettings, LeaseState, Line,
    OnExhausted, PoolSpec, PoolStats,
};
use super::outbox::{Notice, Outbox};
use super::schedule::Cx;
use super::ticket::PoolMode;
use super::time::{retry_after_secs, Timestamp};
use super::types::{
    Code, Due, LeaseId, ListingId, PassId, PhoneNumber, PoolId, SessionId, Target, TenantId,
};
use super::{CoreError, Effect};

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

/// How a line (a number, or the shared number with a code) stood at an instant.
pub(super) enum Hold<'a> {
    Active(&'a Lease),
    Grace(&'a Lease),
    /// Its last lease is over, grace too, but its quarantine is not.
    Cooling,
    Free,
}

/// Pools' numbers and codes, and the leases holding them. Fields are private: the allocator
/// asks through methods.
#[derive(Debug)]
pub(super) struct Leasing {
    /// Each pool's numbers' states, by the directory's pool ids.
    pools: Vec<Pool>,
    /// Boxed: a map stores its values inline in up to twice as many buckets as entries, so an
    /// unboxed lease (~260 bytes) cost over 500 bytes of buckets at a million leases.
    leases: HashMap<LeaseId, Box<Lease>>,
    /// Keys the maps below by a keyed 64-bit fingerprint of (tenant, pool, session, listing)
    /// instead of copies of those strings: a lease's strings live once, in the lease. The
    /// seed is random per process, so clients cannot choose colliding sessions; an accidental
    /// collision (about 1 in 10^7 at a million leases) costs a visitor its stickiness, or
    /// counts two sessions as one against a cap, never a wrong lease (lookups check it).
    fingerprint: ahash::RandomState,
    /// The live lease of each (tenant, pool, session, listing): asking again returns it.
    sticky: HashMap<u64, LeaseId>,
    /// Leases of each line, oldest first, until purged: attribution looks back in time here.
    history: HashMap<Line, Vec<LeaseId>>,
    /// Leases that named the caller the visitor typed, until purged.
    by_caller: HashMap<PhoneNumber, Vec<LeaseId>>,
    /// Where each tenant's listings send their calls, for allocations that name no target
    /// (pages with publishable keys never may).
    listings: HashMap<(TenantId, ListingId), Target>,
    /// Live leases per (pool, tenant, session) and per (pool, tenant), for the pools' caps,
    /// by fingerprint.
    live_per_session: HashMap<u64, u32>,
    live_per_tenant: HashMap<u64, u32>,
}

impl Leasing {
    /// Every number free, least-recently-used order being the listed order.
    pub(super) fn new(dir: &Directory) -> Self {
        let mut l = Self::unqueued(dir);
        l.queue_free(&HashMap::default());
        l
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
    fn unqueued(dir: &Directory) -> Self {
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
        Leasing {
            pools,
            leases: HashMap::default(),
            fingerprint: ahash::RandomState::new(),
            sticky: HashMap::default(),
            history: HashMap::default(),
            by_caller: HashMap::default(),
            listings: HashMap::default(),
            live_per_session: HashMap::default(),
            live_per_tenant: HashMap::default(),
        }
    }

    /// Rebuilds the state that a snapshot (as persisted) describes. Numbers no longer
    /// configured keep their lease records readable but never return to a pool.
    pub(super) fn restore(
        dir: &Directory,
        mut leases: Vec<Lease>,
        listings: Vec<(TenantId, ListingId, Target)>,
    ) -> Result<Self, CoreError> {
        let mut a = Leasing::unqueued(dir);
        // Last time each number became free, for least-recently-used order after restart.
        let mut freed_at: HashMap<(PoolId, u32), Timestamp> = HashMap::default();
        leases.sort_by_key(|l| (l.created_at, l.id));
        a.leases.reserve(leases.len());
        a.sticky.reserve(leases.len());
        a.history.reserve(leases.len());
        for lease in leases {
            let holds = lease.end.is_none() || !lease.freed;
            let cool_until = cool_until(dir, &lease);
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
            } else if let Some(&(pid, idx)) = dir.slot(lease.number).as_ref() {
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
                a.sticky.insert(a.sticky_key(&lease), lease.id);
                a.count_live(&lease, true);
            }
            a.index(&lease);
            a.leases.insert(lease.id, Box::new(lease));
        }
        a.queue_free(&freed_at);
        for (tenant, listing, target) in listings {
            a.listings.insert((tenant, listing), target);
        }
        Ok(a)
    }

    pub(super) fn pool_stats(&self, pool: PoolId) -> PoolStats {
        self.pools[pool.0 as usize].stats()
    }

    pub(super) fn lease(&self, id: &LeaseId) -> Option<&Lease> {
        self.leases.get(id).map(|l| &**l)
    }

    pub(super) fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Gives the visitor a number: their live lease back (extended) if they already hold one
    /// for this listing, else the free number that has rested longest, else (if the pool
    /// allows) the shared number with a code. `new_id` is fresh randomness from the caller;
    /// its first bytes also pick where the search for a free code starts.
    pub(super) fn allocate(
        &mut self,
        cx: &mut Cx<'_>,
        req: AllocateRequest,
        now: Timestamp,
        new_id: LeaseId,
    ) -> Result<Allocated, CoreError> {
        let dir = cx.dir;
        let spec = dir
            .pools
            .get(req.pool.0 as usize)
            .ok_or(CoreError::UnknownPool)?;
        if matches!(spec.mode, PoolMode::Ticketing(_)) {
            return Err(CoreError::TicketingPool);
        }
        let settings = &spec.settings;

        let key =
            self.fingerprint
                .hash_one((&req.tenant, req.pool, &req.session, req.listing.as_ref()));
        if let Some(&id) = self.sticky.get(&key) {
            let l = &self.leases[&id];
            let same = l.tenant == req.tenant
                && l.pool == req.pool
                && l.session == req.session
                && l.listing == req.listing;
            if same && l.state(now) == LeaseState::Active {
                let ttl = Self::ttl_of(dir, &self.leases[&id], req.ttl);
                self.extend(cx, id, ttl, now);
                return Ok(Allocated {
                    lease: (*self.leases[&id]).clone(),
                    fresh: false,
                });
            }
        }

        if self.leases.contains_key(&new_id) {
            return Err(CoreError::DuplicateId);
        }
        let limits = dir.pools[req.pool.0 as usize].limits;
        let per_session = self
            .live_per_session
            .get(&self.session_key(req.pool, &req.tenant, &req.session))
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
            .get(&self.tenant_key(req.pool, &req.tenant))
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
        self.leases.insert(new_id, Box::new(lease.clone()));
        cx.out.effects.push(Effect::PutLease(lease.clone()));
        cx.sched.at(expires_at, Due::Lease(new_id), cx.out);
        Ok(Allocated { lease, fresh: true })
    }

    /// Registers (or with `None`, forgets) where a tenant's listing sends its calls. Leases
    /// copy the target when created, so a change applies to the next visitors.
    pub(super) fn set_listing(
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
    pub(super) fn renew(
        &mut self,
        cx: &mut Cx<'_>,
        id: &LeaseId,
        ttl: Option<Duration>,
        now: Timestamp,
    ) -> Result<&Lease, CoreError> {
        let dir = cx.dir;
        let lease = self.leases.get(id).ok_or(CoreError::UnknownLease)?;
        match lease.state(now) {
            LeaseState::Active => {}
            ended => return Err(CoreError::LeaseEnded(ended)),
        }
        let ttl = Self::ttl_of(dir, lease, ttl);
        self.extend(cx, *id, ttl, now);
        Ok(&self.leases[id])
    }

    /// Ends a lease now; its number starts cooling. Returns false if it had already ended
    /// (releasing is idempotent).
    pub(super) fn release(
        &mut self,
        cx: &mut Cx<'_>,
        id: &LeaseId,
        now: Timestamp,
    ) -> Result<bool, CoreError> {
        let dir = cx.dir;
        let lease = self.leases.get(id).ok_or(CoreError::UnknownLease)?;
        match lease.state(now) {
            LeaseState::Active => {
                self.end(cx, *id, now, EndReason::Released);
                let cool_until = cool_until(dir, &self.leases[id]);
                cx.sched.at(cool_until, Due::Lease(*id), cx.out);
                Ok(true)
            }
            // Past its deadline but not yet fired: settle it as the wheel would.
            LeaseState::Expired if lease.end.is_none() => {
                self.advance_lease(cx, *id, now);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// The pool and tenant of a lease that may be redeemed now: paid, and not yet redeemed.
    pub(super) fn redeemable(&self, id: &LeaseId) -> Result<(PoolId, TenantId), CoreError> {
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
        Ok((lease.pool, lease.tenant.clone()))
    }

    /// Marks a lease redeemed at `now`, with the pass it granted if any.
    pub(super) fn mark_redeemed(
        &mut self,
        id: &LeaseId,
        now: Timestamp,
        pass: Option<PassId>,
        out: &mut Outbox,
    ) -> Lease {
        let lease = self.leases.get_mut(id).expect("caller checked");
        lease.redeemed_at = Some(now);
        lease.pass = pass;
        let lease = (**lease).clone();
        out.effects.push(Effect::PutLease(lease.clone()));
        lease
    }

    /// Runs on from `now` although the state was last written at `mark`, later than `now` (the
    /// wall clock was ahead then, or is behind now). Nothing comes back to life: every lease
    /// that had expired by `mark`, and every lease stamped after `now` (made while the clock
    /// was ahead; its stamps are brought back to `now`), ends at `now`, so its number cools
    /// from now on and its late callers keep their grace. Leases live at `mark` and made before `now` go on unchanged. Returns how
    /// many leases were ended.
    pub(super) fn rewind_to(&mut self, cx: &mut Cx<'_>, mark: Timestamp, now: Timestamp) -> usize {
        let dir = cx.dir;
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
            self.end(cx, id, now, EndReason::Expired);
            let cool_until = cool_until(dir, &self.leases[&id]);
            cx.sched.at(cool_until, Due::Lease(id), cx.out);
        }
        untrusted.len()
    }

    /// Checks the invariants (ARCHITECTURE.md) that a single state can show; `Err` says which broke.
    pub(super) fn check_invariants(&self, dir: &Directory, done: u64) -> Result<(), String> {
        for (pool, spec) in self.pools.iter().zip(dir.specs()) {
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
                        _ => (lease.end.is_some() && !lease.freed, cool_until(dir, lease)),
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

    /// How `line` stood at `at`: the lease active on it, or in grace, or cooling, or free.
    pub(super) fn hold(&self, dir: &Directory, line: Line, at: Timestamp) -> Hold<'_> {
        let Some(history) = self.history.get(&line) else {
            return Hold::Free;
        };
        for id in history.iter().rev() {
            let Some(l) = self.leases.get(id) else {
                continue;
            };
            if at < l.created_at {
                continue;
            }
            // Older leases on this line ended even earlier: the latest one decides.
            return if at < l.end_at() {
                Hold::Active(l)
            } else if at < grace_until(dir, l) {
                Hold::Grace(l)
            } else if at < cool_until(dir, l) {
                Hold::Cooling
            } else {
                Hold::Free
            };
        }
        Hold::Free
    }

    /// The one lease of `pool` active at `at` that names `caller`; none when no lease or
    /// several (two pages claiming one caller cancel each other out).
    pub(super) fn sole_claim(
        &self,
        pool: PoolId,
        caller: PhoneNumber,
        at: Timestamp,
    ) -> Option<&Lease> {
        let mut claims = self
            .by_caller
            .get(&caller)
            .into_iter()
            .flatten()
            .filter_map(|id| self.leases.get(id))
            .filter(|l| l.pool == pool && l.created_at <= at && at < l.end_at());
        let first = claims.next()?;
        claims.next().is_none().then_some(first)
    }

    /// Notes a call placed at `at` on a lease: its first call (unless it came by a return
    /// route) sets `first_call_at`; returns the time from creation to that first call.
    pub(super) fn note_call(
        &mut self,
        id: LeaseId,
        at: Timestamp,
        first: bool,
    ) -> Option<Duration> {
        let lease = self.leases.get_mut(&id)?;
        if first && lease.first_call_at.is_none() {
            lease.first_call_at = Some(at);
            return Some(at.since(lease.created_at));
        }
        None
    }

    /// Counts a call toward its lease (once), noting when the lease becomes paid.
    pub(super) fn count_call(&mut self, id: LeaseId, out: &mut Outbox) {
        let l = self.leases.get_mut(&id).expect("caller checked");
        let was_paid = l.paid();
        l.calls += 1;
        if !was_paid && l.paid() {
            out.notices.push(Notice::Paid { lease: id });
        }
        out.effects.push(Effect::PutLease((**l).clone()));
    }

    /// Writes the lease as it stands.
    pub(super) fn put(&self, id: LeaseId, out: &mut Outbox) {
        out.effects
            .push(Effect::PutLease((*self.leases[&id]).clone()));
    }

    /// The lifetime a new term of `lease` gets: `code_ttl` on a shared number, else `wanted`
    /// or the pool's `ttl`; never more than the lease may live (`max_ttl`, `page_max_ttl`).
    fn ttl_of(dir: &Directory, lease: &Lease, wanted: Option<Duration>) -> Duration {
        let spec = &dir.pools[lease.pool.0 as usize];
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
        fn bump(map: &mut HashMap<u64, u32>, key: u64, up: bool) {
            if up {
                *map.entry(key).or_default() += 1;
            } else if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        let session = self.session_key(lease.pool, &lease.tenant, &lease.session);
        let tenant = self.tenant_key(lease.pool, &lease.tenant);
        bump(&mut self.live_per_session, session, live);
        bump(&mut self.live_per_tenant, tenant, live);
    }

    fn sticky_key(&self, lease: &Lease) -> u64 {
        self.fingerprint.hash_one((
            &lease.tenant,
            lease.pool,
            &lease.session,
            lease.listing.as_ref(),
        ))
    }

    fn session_key(&self, pool: PoolId, tenant: &TenantId, session: &SessionId) -> u64 {
        self.fingerprint.hash_one((pool, tenant, session))
    }

    fn tenant_key(&self, pool: PoolId, tenant: &TenantId) -> u64 {
        self.fingerprint.hash_one((pool, tenant))
    }

    fn unindex(&mut self, lease: &Lease) {
        remove_from(&mut self.history, lease.line(), lease.id);
        if let Some(c) = lease.caller {
            remove_from(&mut self.by_caller, c, lease.id);
        }
    }

    fn extend(&mut self, cx: &mut Cx<'_>, id: LeaseId, ttl: Duration, now: Timestamp) {
        let dir = cx.dir;
        let lease = self.leases.get_mut(&id).expect("caller checked");
        let settings = &dir.pools[lease.pool.0 as usize].settings;
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
        } else if let Some(&(pid, idx)) = dir.slot(lease.number).as_ref() {
            self.pools[pid.0 as usize]
                .leased
                .change_priority(&idx, Reverse(new_expiry));
        }
        cx.out.effects.push(Effect::PutLease((**lease).clone()));
        cx.sched.at(new_expiry, Due::Lease(id), cx.out);
    }

    pub(super) fn advance_lease(&mut self, cx: &mut Cx<'_>, id: LeaseId, now: Timestamp) {
        let dir = cx.dir;
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
                self.end(cx, id, at, EndReason::Expired);
                moved = true;
            } else if !lease.freed {
                let cool_until = cool_until(dir, lease);
                if now < cool_until {
                    break;
                }
                self.free(cx, id, cool_until);
                moved = true;
            } else {
                if now < purge_at(dir, lease) {
                    break;
                }
                let lease = self.leases.remove(&id).expect("just seen");
                self.unindex(&lease);
                self.forget_last_holder(dir, &lease);
                cx.out.effects.push(Effect::DelLease(id));
                cx.out.notices.push(Notice::Purged { lease: id });
                return;
            }
        }
        if moved {
            let lease = &self.leases[&id];
            let next = if lease.freed {
                purge_at(dir, lease)
            } else {
                cool_until(dir, lease)
            };
            cx.sched.at(next, Due::Lease(id), cx.out);
        }
    }

    fn end(&mut self, cx: &mut Cx<'_>, id: LeaseId, at: Timestamp, reason: EndReason) {
        let dir = cx.dir;
        let lease = self.leases.get_mut(&id).expect("caller checked");
        lease.end = Some(LeaseEnd { at, reason });
        cx.out.notices.push(Notice::Ended {
            lease: id,
            pool: lease.pool,
            reason,
            lived: at.since(lease.created_at),
        });
        let key = self.sticky_key(&self.leases[&id]);
        if self.sticky.get(&key) == Some(&id) {
            self.sticky.remove(&key);
        }
        let lease = self.leases[&id].clone();
        self.count_live(&lease, false);
        let lease = &self.leases[&id];
        let cool_until = cool_until(dir, lease);
        if let Some(code) = lease.code {
            let pool = &mut self.pools[lease.pool.0 as usize];
            if pool.codes.get(&code) == Some(&id) {
                pool.code_ends.change_priority(&code, Reverse(at));
            }
        } else {
            if let Some(&(pid, idx)) = dir.slot(lease.number).as_ref() {
                let pool = &mut self.pools[pid.0 as usize];
                let slot = &mut pool.slots[idx as usize];
                if slot.holder == Some(id) && slot.state == SlotState::Leased {
                    slot.state = SlotState::Cooling;
                    pool.leased.remove(&idx);
                    pool.cooling.push(idx, Reverse(cool_until));
                }
            }
        }
        cx.out.effects.push(Effect::PutLease((**lease).clone()));
    }

    /// Once the record of a free number's last holder is purged, the number ranks as free
    /// since forever, as a restart (which no longer sees the record) ranks it: the
    /// least-recently-used order must not depend on whether the process restarted.
    fn forget_last_holder(&mut self, dir: &Directory, lease: &Lease) {
        if lease.code.is_some() {
            return;
        }
        if let Some((pid, idx)) = dir.slot(lease.number) {
            let pool = &mut self.pools[pid.0 as usize];
            let slot = &mut pool.slots[idx as usize];
            if slot.holder == Some(lease.id) && slot.state == SlotState::Free {
                slot.holder = None;
                pool.free
                    .change_priority(&idx, Reverse((Timestamp::ZERO, idx)));
            }
        }
    }

    fn free(&mut self, cx: &mut Cx<'_>, id: LeaseId, at: Timestamp) {
        let dir = cx.dir;
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
                if let Some(&(pid, idx)) = dir.slot(lease.number).as_ref() {
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
        cx.out.effects.push(Effect::PutLease((**lease).clone()));
    }
}

/// When the lease's number (or code) may go to someone else.
fn cool_until(dir: &Directory, lease: &Lease) -> Timestamp {
    let q = dir.pools[lease.pool.0 as usize].settings.quarantine;
    lease.end_at().saturating_add(q)
}

/// Until when late calls still reach the lease's holder.
fn grace_until(dir: &Directory, lease: &Lease) -> Timestamp {
    let g = dir.pools[lease.pool.0 as usize].settings.grace;
    lease.end_at().saturating_add(g)
}

fn purge_at(dir: &Directory, lease: &Lease) -> Timestamp {
    let r = dir.pools[lease.pool.0 as usize].settings.retention;
    lease.end_at().saturating_add(r).max(cool_until(dir, lease))
}

/// The longest a lease may live from its creation: `max_ttl`, and `page_max_ttl` for a page's.
fn life_cap(settings: &LeaseSettings, from_page: bool) -> Duration {
    match from_page {
        true => settings.max_ttl.min(settings.page_max_ttl),
        false => settings.max_ttl,
    }
}

fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<LeaseId>>, key: K, id: LeaseId) {
    if let Some(v) = map.get_mut(&key) {
        v.retain(|x| *x != id);
        if v.is_empty() {
            map.remove(&key);
        }
    }
}

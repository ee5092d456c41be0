//! Leasing: pools of numbers, leases on them, and the deadlines that move them along
//! `free → leased → cooling → free`; codes on shared numbers, the pages' share, the live
//! caps, listings' targets, and the lines' history attribution looks back through. Pure:
//! every method takes `now`; changes go to the outbox in a [`Cx`].
//!
//! Compact by design, a million live leases being the point: leases are records in a slab
//! addressed by `u32` (`slab.rs`), what they share (tenant, listing, target, terms) interned;
//! each pool's slots wait in three indexed heaps (`queues.rs`); a line's history and a
//! caller's claims are lists threaded through the records (each knows the older and newer
//! lease of its line), with only the newest held by the number's slot, the code or a map.

mod queues;
mod slab;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap as StdMap;
use std::time::Duration;

use hashbrown::HashTable;
use priority_queue::PriorityQueue;

use super::directory::Directory;
use super::lease::{
    paid, AllocateRequest, Allocated, EndReason, Lease, LeaseEnd, LeasePage, LeaseQuery,
    LeaseSettings, LeaseState, Line, NumberState, NumberView, OnExhausted, PoolLimits, PoolSpec,
    PoolStats,
};
use super::money::Money;
use super::outbox::{Notice, Outbox};
use super::schedule::Cx;
use super::ticket::PoolMode;
use super::time::{retry_after_secs, Timestamp};
use super::types::{
    Code, LeaseId, ListingId, PassId, PhoneNumber, PoolId, SessionId, Target, TenantId,
};
use super::{CoreError, Effect};
use queues::{Queue, Queues};
use slab::{table_bytes, Rec, Slab, NONE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Leased,
    Cooling,
    /// Free, and no longer configured (a reload removed it): in no queue, never leased.
    Retired,
}

impl SlotState {
    fn queue(self) -> Option<Queue> {
        match self {
            SlotState::Free => Some(Queue::Free),
            SlotState::Leased => Some(Queue::Leased),
            SlotState::Cooling => Some(Queue::Cooling),
            SlotState::Retired => None,
        }
    }

    /// Held by a lease (leased, or cooling after one).
    fn held(self) -> bool {
        matches!(self, SlotState::Leased | SlotState::Cooling)
    }

    /// What a slot becomes once no lease holds it.
    fn unheld(retired: bool) -> Self {
        if retired {
            SlotState::Retired
        } else {
            SlotState::Free
        }
    }
}

/// A pool number, in 12 bytes (its digits are the directory's).
#[derive(Debug)]
struct Slot {
    /// The lease leasing or cooling the number; once free, its last holder (`NONE`: none
    /// remembered).
    holder: u32,
    /// The newest lease on the number's line (`NONE`: none remembered).
    head: u32,
    state: SlotState,
}

#[derive(Debug)]
struct Pool {
    slots: Vec<Slot>,
    /// Free slots, the one free longest first; leased slots by `expires_at`, and cooling
    /// slots by the end of their quarantine: the last two answer "when does the next number
    /// free" for `Retry-After` without a scan.
    queues: Queues,
    /// Codes of the shared number held by a lease (active or cooling), and by which.
    codes: HashMap<Code, u32>,
    /// The same codes by when their lease ends (its expiry while active): when the next code
    /// frees, without a scan on every refusal (refusals are what an attack is made of).
    code_ends: PriorityQueue<Code, Reverse<Timestamp>>,
    /// The newest lease on each code's line of the shared number.
    code_heads: HashMap<Code, u32>,
    /// Numbers and codes held (leased or cooling) by pages' leases, for `page_share`.
    page_numbers: usize,
    page_codes: usize,
}

impl Pool {
    /// Pool `p`'s slots, each free or retired, with no free queue yet.
    fn unqueued(dir: &Directory, p: PoolId) -> Self {
        Pool {
            slots: (0..dir.spec(p).numbers.len() as u32)
                .map(|i| Slot {
                    holder: NONE,
                    head: NONE,
                    state: SlotState::unheld(dir.retired(p, i)),
                })
                .collect(),
            queues: Queues::default(),
            codes: HashMap::default(),
            code_ends: PriorityQueue::new(),
            code_heads: HashMap::default(),
            page_numbers: 0,
            page_codes: 0,
        }
    }

    /// Queues every free slot, as free since forever, in slot order.
    fn queue_free(&mut self) {
        let slots = &self.slots;
        self.queues = Queues::new(slots.len(), |i| {
            (slots[i as usize].state == SlotState::Free).then_some(Timestamp::ZERO)
        });
    }

    /// A pool's numbers, retired ones included until their last lease is over.
    fn stats(&self) -> PoolStats {
        let (free, leased, cooling) = (
            self.queues.len(Queue::Free),
            self.queues.len(Queue::Leased),
            self.queues.len(Queue::Cooling),
        );
        PoolStats {
            size: free + leased + cooling,
            free,
            leased,
            cooling,
            codes: self.codes.len(),
            page_numbers: self.page_numbers,
            page_codes: self.page_codes,
        }
    }

    /// Whether pages may take one more number, and one more code.
    fn open_to_pages(&self, spec: &PoolSpec) -> (bool, bool) {
        let share = spec.limits.page_share;
        (
            self.page_numbers < share.of(self.stats().size),
            self.page_codes < share.of(usize::from(Code::SPACE)),
        )
    }

    /// When the next number of this pool becomes free if nothing else happens.
    fn next_free_at(&self, spec: &PoolSpec) -> Option<Timestamp> {
        let cooled = self.queues.peek(Queue::Cooling).map(|(t, _)| t);
        let expired = self
            .queues
            .peek(Queue::Leased)
            .map(|(t, _)| t.saturating_add(spec.settings.quarantine));
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
    Active(Claim<'a>),
    Grace(Claim<'a>),
    /// Its last lease is over, grace too, but its quarantine is not.
    Cooling,
    Free,
}

/// What attribution reads of the lease a call goes to.
pub(super) struct Claim<'a> {
    pub(super) id: LeaseId,
    pub(super) listing: Option<&'a ListingId>,
    pub(super) target: Option<&'a Target>,
    /// A purchase (asking an amount, or more than one call) already paid: on a shared
    /// number, its code is spent. A plain lease (one call, no amount: a listing's visitor)
    /// keeps its code for every caller until it ends.
    pub(super) spent: bool,
}

/// Where a line's newest lease is noted.
#[derive(Clone, Copy)]
enum HeadAt {
    /// A pool number: its slot.
    Slot(usize, usize),
    /// A code on a pool's shared number: the pool's `code_heads`.
    Code(usize, Code),
    /// A number (or shared number) no longer configured so: `stray_heads`.
    Stray,
}

fn head_at(dir: &Directory, line: Line) -> HeadAt {
    match line {
        (n, None) => dir.slot(n).map_or(HeadAt::Stray, |(p, i)| {
            HeadAt::Slot(p.0 as usize, i as usize)
        }),
        (n, Some(c)) => dir
            .shared_pool(n)
            .map_or(HeadAt::Stray, |p| HeadAt::Code(p.0 as usize, c)),
    }
}

/// The keys of the live counts a pool's caps read; `None` for a cap the pool does not set
/// (counting what no cap reads would cost a map entry per session).
#[derive(Clone, Copy)]
struct LiveKeys {
    session: Option<u64>,
    tenant: Option<u64>,
}

/// Pools' numbers and codes, and the leases holding them. Fields are private: the allocator
/// asks through methods.
#[derive(Debug)]
pub(super) struct Leasing {
    /// Each pool's numbers' states, by the directory's pool ids.
    pools: Vec<Pool>,
    /// Every lease record until purged, by slot and by id.
    leases: Slab,
    /// Keys the tables below by a keyed 64-bit fingerprint of (tenant, pool, session,
    /// listing) instead of copies of those strings. The seed is random per process, so
    /// clients cannot choose colliding sessions; an accidental collision of the live counts'
    /// keys (about 1 in 10^7 at a million leases) counts two sessions as one against a cap.
    fingerprint: ahash::RandomState,
    /// The live lease of each (tenant, pool, session, listing): asking again returns it. Slot
    /// indices hashed by that fingerprint, compared on the records themselves, so a collision
    /// costs nothing.
    sticky: HashTable<u32>,
    /// The newest lease of each line no slot or code notes (its number no longer configured
    /// so); older ones follow the records' links.
    stray_heads: HashMap<Line, u32>,
    /// The newest lease that named each caller the visitor typed, until purged; older ones
    /// follow the records' links.
    by_caller: HashMap<PhoneNumber, u32>,
    /// Where each tenant's listings send their calls, for allocations that name no target
    /// (pages with publishable keys never may).
    listings: HashMap<(TenantId, ListingId), Target>,
    /// Live leases per (pool, tenant, session) and per (pool, tenant), by fingerprint, for
    /// the pools' caps: only pools that set the cap are counted.
    live_per_session: HashMap<u64, u32>,
    live_per_tenant: HashMap<u64, u32>,
}

impl Leasing {
    /// Every number free, least-recently-used order being the listed order.
    pub(super) fn new(dir: &Directory) -> Self {
        let mut l = Self::unqueued(dir);
        for pool in &mut l.pools {
            pool.queue_free();
        }
        l
    }

    /// Pools and slots, every slot free (or retired) but no free queue yet.
    fn unqueued(dir: &Directory) -> Self {
        let pools = dir.ids().map(|p| Pool::unqueued(dir, p)).collect();
        Leasing {
            pools,
            leases: Slab::default(),
            fingerprint: ahash::RandomState::new(),
            sticky: HashTable::new(),
            stray_heads: HashMap::default(),
            by_caller: HashMap::default(),
            listings: HashMap::default(),
            live_per_session: HashMap::default(),
            live_per_tenant: HashMap::default(),
        }
    }

    /// Takes on `next`, the directory a reload made of the current one
    /// ([`Directory::evolve`]): new pools and numbers join the free queue as free since
    /// forever (first in line); a retired number leaves it (a held one once its lease and
    /// quarantine are over); a number configured again rejoins it. A line whose history was
    /// a stray's (its number was not configured) is a slot's again. Refused, changing
    /// nothing: a pool whose shared number changes while its codes are held.
    pub(super) fn reconfigure(
        &mut self,
        now: &Directory,
        next: &Directory,
    ) -> Result<(), CoreError> {
        for (p, pool) in self.pools.iter().enumerate() {
            let p = PoolId(p as u32);
            // A removed pool's leases could not be served after a restart (the file no longer
            // holds its settings): it goes once nothing holds its numbers or codes.
            let s = pool.stats();
            let held = s.leased + s.cooling + s.codes;
            if next.removed(p) && !now.removed(p) && held > 0 {
                return Err(CoreError::Corrupt(format!(
                    "pool {} still holds {held} numbers or codes (leased, or cooling after a \
                     lease): remove it once they are free (its leases end by their ttl, or \
                     release them), or keep it and remove its numbers, which retire as their \
                     leases end",
                    now.name(p)
                )));
            }
            if !pool.codes.is_empty() && now.spec(p).shared_number() != next.spec(p).shared_number()
            {
                return Err(CoreError::Corrupt(format!(
                    "pool {}: its shared number cannot change while {} of its codes are held",
                    now.name(p),
                    pool.codes.len()
                )));
            }
        }
        for p in next.ids() {
            let known = self
                .pools
                .get(p.0 as usize)
                .map_or(0, |pool| pool.slots.len());
            for &n in next.spec(p).numbers.iter().skip(known) {
                if let Some(&h) = self.stray_heads.get(&(n, None)) {
                    let r = self.leases.get(h);
                    if !r.ended() || !r.freed() {
                        return Err(CoreError::Corrupt(format!(
                            "number {n} is still held by lease {} of the configuration before \
                             the last restart: add it once that lease and its quarantine are over",
                            r.id
                        )));
                    }
                }
            }
        }
        for p in next.ids() {
            let i = p.0 as usize;
            if i == self.pools.len() {
                let mut pool = Pool::unqueued(next, p);
                pool.queue_free();
                self.pools.push(pool);
            }
            let pool = &mut self.pools[i];
            let numbers = &next.spec(p).numbers;
            pool.queues.grow(numbers.len());
            for (idx, &number) in numbers.iter().enumerate() {
                if idx == pool.slots.len() {
                    pool.slots.push(Slot {
                        holder: NONE,
                        head: self.stray_heads.remove(&(number, None)).unwrap_or(NONE),
                        state: SlotState::Retired,
                    });
                }
                let idx32 = idx as u32;
                let slot = &mut pool.slots[idx];
                match (slot.state, next.retired(p, idx32)) {
                    (SlotState::Free, true) => {
                        slot.state = SlotState::Retired;
                        pool.queues.remove(Queue::Free, idx32);
                    }
                    (SlotState::Retired, false) => {
                        slot.state = SlotState::Free;
                        pool.queues.push(Queue::Free, idx32, Timestamp::ZERO);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Rebuilds the state that a snapshot (as persisted) describes. Numbers no longer
    /// configured keep their lease records readable but never return to a pool.
    pub(super) fn restore(
        dir: &Directory,
        leases: Vec<Lease>,
        listings: Vec<(TenantId, ListingId, Target)>,
    ) -> Result<Self, CoreError> {
        let mut a = Leasing::unqueued(dir);
        a.leases.reserve(leases.len());
        // File every record first, in the order given (the store's: by id), then walk them in
        // creation order: the order of each line's history, and the later of two live leases of
        // one sticky key wins. (Filing them in creation order instead, for a walk front to back,
        // reads the given leases out of order: slower, measured.)
        let mut order: Vec<(Timestamp, LeaseId, u32)> = Vec::with_capacity(leases.len());
        for lease in leases {
            let (created, id) = (lease.created_at, lease.id);
            let i = a
                .leases
                .insert(lease)
                .ok_or_else(|| CoreError::Corrupt(format!("lease {id} stored twice")))?;
            order.push((created, id, i));
        }
        order.sort_unstable();
        // Per pool: slots' queue entries, and when each free slot last became free (for
        // least-recently-used order after restart), queued in one go at the end.
        let mut leased: Vec<Vec<(Timestamp, u32)>> = vec![Vec::new(); a.pools.len()];
        let mut cooling = leased.clone();
        let mut freed_at: Vec<Vec<Timestamp>> = a
            .pools
            .iter()
            .map(|p| vec![Timestamp::ZERO; p.slots.len()])
            .collect();
        let live = a.leases.iter().filter(|(_, r)| !r.ended()).count();
        let (leases, fingerprint) = (&a.leases, &a.fingerprint);
        a.sticky
            .reserve(live, |&j| sticky_hash(fingerprint, leases, j));
        for (_, _, i) in order {
            let r = a.leases.get(i);
            let holds = !r.ended() || !r.freed();
            let cool_until = cool_until(dir, r);
            let head = head_at(dir, r.line());
            if let Some(code) = r.code() {
                if holds {
                    let pool = &mut a.pools[r.pool().0 as usize];
                    if let Some(other) = pool.codes.insert(code, i) {
                        return Err(CoreError::Corrupt(format!(
                            "code {code} held by two leases ({} and {})",
                            a.leases.get(other).id,
                            r.id
                        )));
                    }
                    pool.code_ends.push(code, Reverse(r.end_at()));
                    pool.page_codes += usize::from(r.by_page());
                }
            } else if let HeadAt::Slot(p, idx) = head {
                let pool = &mut a.pools[p];
                let slot = &mut pool.slots[idx];
                let idx = idx as u32;
                if holds {
                    if slot.state.held() {
                        return Err(CoreError::Corrupt(format!(
                            "number {} is held by two leases ({} and {})",
                            r.number,
                            a.leases.get(slot.holder).id,
                            r.id
                        )));
                    }
                    slot.holder = i;
                    pool.page_numbers += usize::from(r.by_page());
                    if r.ended() {
                        slot.state = SlotState::Cooling;
                        cooling[p].push((cool_until, idx));
                    } else {
                        slot.state = SlotState::Leased;
                        leased[p].push((r.expires_at, idx));
                    }
                } else {
                    let t = &mut freed_at[p][idx as usize];
                    if cool_until >= *t {
                        *t = cool_until;
                        if !slot.state.held() {
                            slot.holder = i;
                        }
                    }
                }
            }
            if !r.ended() {
                a.stick(i);
                let keys = a.live_keys_of(dir, i);
                a.count_live(keys, true);
            }
            a.link(head, i);
        }
        for (p, pool) in a.pools.iter_mut().enumerate() {
            let slots = &pool.slots;
            let freed = &freed_at[p];
            pool.queues = Queues::new(slots.len(), |i| {
                (slots[i as usize].state == SlotState::Free).then(|| freed[i as usize])
            });
            pool.queues
                .fill(Queue::Leased, std::mem::take(&mut leased[p]));
            pool.queues
                .fill(Queue::Cooling, std::mem::take(&mut cooling[p]));
        }
        for (tenant, listing, target) in listings {
            a.listings.insert((tenant, listing), target);
        }
        Ok(a)
    }

    /// The numbers of `pool` from position `offset`, at most `limit`, in the configured order,
    /// with their state and holder.
    pub(super) fn numbers(
        &self,
        dir: &Directory,
        pool: PoolId,
        offset: usize,
        limit: usize,
    ) -> Vec<NumberView> {
        let spec = dir.spec(pool);
        self.pools[pool.0 as usize]
            .slots
            .iter()
            .enumerate()
            .skip(offset)
            .take(limit)
            .map(|(i, slot)| {
                let state = match slot.state {
                    SlotState::Free => NumberState::Free,
                    SlotState::Leased => NumberState::Leased,
                    SlotState::Cooling => NumberState::Cooling,
                    SlotState::Retired => NumberState::Retired,
                };
                let holder = (slot.state.held() && slot.holder != NONE)
                    .then(|| self.leases.lease(slot.holder));
                NumberView {
                    number: spec.numbers[i],
                    state,
                    holder,
                }
            })
            .collect()
    }

    pub(super) fn pool_stats(&self, pool: PoolId) -> PoolStats {
        self.pools[pool.0 as usize].stats()
    }

    /// The lease `id` as it stands, materialised from its record.
    pub(super) fn lease(&self, id: &LeaseId) -> Option<Lease> {
        self.leases.find(id).map(|i| self.leases.lease(i))
    }

    /// The tenant of lease `id`, if it is still held.
    pub(super) fn tenant_of(&self, id: &LeaseId) -> Option<TenantId> {
        let i = self.leases.find(id)?;
        Some(self.leases.terms(self.leases.get(i)).tenant.clone())
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
        if req.with_code && spec.shared_number().is_none() {
            return Err(CoreError::NoSharedNumber);
        }
        let settings = &spec.settings;

        let key =
            self.fingerprint
                .hash_one((&req.tenant, req.pool, &req.session, req.listing.as_ref()));
        let leases = &self.leases;
        let held = self
            .sticky
            .find(key, |&i| {
                let r = leases.get(i);
                let t = leases.terms(r);
                r.pool() == req.pool
                    && r.session == req.session
                    && t.tenant == req.tenant
                    && t.listing == req.listing
            })
            .copied();
        if let Some(i) = held {
            let r = self.leases.get(i);
            // A checkout asking for a code does not get a number lease back.
            if r.state(now) == LeaseState::Active && !(req.with_code && r.code().is_none()) {
                let ttl = ttl_of(dir, r, req.ttl);
                self.extend(cx, i, ttl, now);
                return Ok(Allocated {
                    lease: self.leases.lease(i),
                    fresh: false,
                });
            }
        }

        if self.leases.find(&new_id).is_some() {
            return Err(CoreError::DuplicateId);
        }
        let limits = &spec.limits;
        let keys = self.live_keys(limits, req.pool, &req.tenant, &req.session);
        if let Some(k) = keys.session {
            let n = self.live_per_session.get(&k).copied().unwrap_or(0);
            if n >= limits.max_live_per_session {
                return Err(CoreError::TooManyLeases {
                    per: "session",
                    limit: limits.max_live_per_session,
                });
            }
        }
        if let Some(k) = keys.tenant {
            let n = self.live_per_tenant.get(&k).copied().unwrap_or(0);
            if n >= limits.max_live_per_tenant {
                return Err(CoreError::TooManyLeases {
                    per: "tenant",
                    limit: limits.max_live_per_tenant,
                });
            }
        }
        let life = life_cap(settings, req.from_page);
        let pool = &mut self.pools[req.pool.0 as usize];
        // A page past its share of numbers is treated as if none were free, and past its share
        // of codes as if every code were taken: what is left stays for servers.
        let (numbers_open, codes_open) = match req.from_page {
            true => pool.open_to_pages(spec),
            false => (true, true),
        };
        let popped = match numbers_open && !req.with_code {
            true => pool.queues.pop(Queue::Free),
            false => None,
        };
        let (number, code, ttl, slot) = match popped {
            Some((_, idx)) => {
                pool.slots[idx as usize].state = SlotState::Leased;
                let ttl = req.ttl.unwrap_or(settings.ttl).min(life);
                pool.queues
                    .push(Queue::Leased, idx, now.saturating_add(ttl));
                pool.page_numbers += usize::from(req.from_page);
                (spec.numbers[idx as usize], None, ttl, Some(idx))
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
                pool.code_ends.push(code, Reverse(now.saturating_add(ttl)));
                pool.page_codes += usize::from(req.from_page);
                (number, Some(code), ttl, None)
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
            amount: req.amount,
            amount_paid: Money::ZERO,
            refunded: Money::ZERO,
            redeemed_at: None,
            code,
            first_call_at: None,
            pass: None,
            from_page: req.from_page,
        };
        let i = self
            .leases
            .insert(lease.clone())
            .expect("the id was checked free");
        let pool = &mut self.pools[req.pool.0 as usize];
        match (slot, code) {
            (Some(idx), _) => pool.slots[idx as usize].holder = i,
            (None, Some(code)) => {
                pool.codes.insert(code, i);
            }
            (None, None) => unreachable!("a number or a code"),
        }
        // A live lease of the same key past its expiry (not yet ended by the wheel) gives
        // its place to the new one.
        match held.and_then(|old| self.sticky.find_mut(key, |&j| j == old)) {
            Some(entry) => *entry = i,
            None => {
                let (leases, fingerprint) = (&self.leases, &self.fingerprint);
                self.sticky
                    .insert_unique(key, i, |&j| sticky_hash(fingerprint, leases, j));
            }
        }
        let head = match (slot, code) {
            (Some(idx), _) => HeadAt::Slot(req.pool.0 as usize, idx as usize),
            (None, Some(code)) => HeadAt::Code(req.pool.0 as usize, code),
            (None, None) => unreachable!("a number or a code"),
        };
        self.link(head, i);
        self.count_live(keys, true);
        cx.out.effects.push(Effect::PutLease(lease.clone()));
        self.file(cx, i, expires_at);
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
    ) -> Result<Lease, CoreError> {
        let dir = cx.dir;
        let i = self.leases.find(id).ok_or(CoreError::UnknownLease)?;
        let r = self.leases.get(i);
        match r.state(now) {
            LeaseState::Active => {}
            ended => return Err(CoreError::LeaseEnded(ended)),
        }
        let ttl = ttl_of(dir, r, ttl);
        self.extend(cx, i, ttl, now);
        Ok(self.leases.lease(i))
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
        let i = self.leases.find(id).ok_or(CoreError::UnknownLease)?;
        let r = self.leases.get(i);
        match r.state(now) {
            LeaseState::Active => {
                self.end(cx, i, now, EndReason::Released);
                let cool_until = cool_until(dir, self.leases.get(i));
                self.file(cx, i, cool_until);
                Ok(true)
            }
            // Past its deadline but not yet fired: settle it as the wheel would.
            LeaseState::Expired if !r.ended() => {
                self.advance(cx, i, now);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// The pool and tenant of a lease that may be redeemed now: paid, and not yet redeemed.
    pub(super) fn redeemable(&self, id: &LeaseId) -> Result<(PoolId, TenantId), CoreError> {
        let i = self.leases.find(id).ok_or(CoreError::UnknownLease)?;
        let r = self.leases.get(i);
        let t = self.leases.terms(r);
        if r.redeemed_at().is_some() {
            return Err(CoreError::AlreadyRedeemed);
        }
        if !self.is_paid(i) {
            return Err(CoreError::NotPaid {
                calls: r.calls(),
                calls_required: t.calls_required,
                amount: t.amount.map(|a| (r.amount_paid(), a)),
            });
        }
        Ok((r.pool(), t.tenant.clone()))
    }

    fn is_paid(&self, i: u32) -> bool {
        let r = self.leases.get(i);
        let t = self.leases.terms(r);
        paid(r.calls(), t.calls_required, r.amount_paid(), t.amount)
    }

    /// The leases `q` asks for, newest first (by creation, then id): one pass over the records,
    /// keeping only the `limit + 1` newest that match.
    pub(super) fn list(&self, q: &LeaseQuery, now: Timestamp) -> LeasePage {
        let mut newest: BinaryHeap<Reverse<(Timestamp, LeaseId, u32)>> = BinaryHeap::new();
        for (i, r) in self.leases.iter() {
            let key = (r.created_at, r.id);
            if q.before.is_some_and(|b| key >= b)
                || q.since.is_some_and(|t| r.created_at < t)
                || q.until.is_some_and(|t| r.created_at >= t)
                || q.pools.as_ref().is_some_and(|p| !p.contains(&r.pool()))
                || q.state.is_some_and(|s| r.state(now) != s)
            {
                continue;
            }
            let t = self.leases.terms(r);
            if q.tenant.as_ref().is_some_and(|x| x != &t.tenant)
                || q.listing
                    .as_ref()
                    .is_some_and(|l| t.listing.as_ref() != Some(l))
            {
                continue;
            }
            newest.push(Reverse((key.0, key.1, i)));
            if newest.len() > q.limit + 1 {
                newest.pop();
            }
        }
        let mut found: Vec<_> = newest.into_iter().map(|Reverse(k)| k).collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        let more = found.len() > q.limit;
        found.truncate(q.limit);
        LeasePage {
            leases: found
                .into_iter()
                .map(|(_, _, i)| self.leases.lease(i))
                .collect(),
            more,
        }
    }

    /// Records a refund of `amount` on a paid lease of `tenant`: never more than was paid and
    /// not yet refunded. Returns the lease as it now stands.
    pub(super) fn refund(
        &mut self,
        id: &LeaseId,
        tenant: &TenantId,
        amount: Money,
        out: &mut Outbox,
    ) -> Result<Lease, CoreError> {
        let i = self.leases.find(id).ok_or(CoreError::UnknownLease)?;
        let r = self.leases.get(i);
        if &self.leases.terms(r).tenant != tenant {
            return Err(CoreError::UnknownLease);
        }
        if !self.is_paid(i) {
            let t = self.leases.terms(r);
            return Err(CoreError::NotPaid {
                calls: r.calls(),
                calls_required: t.calls_required,
                amount: t.amount.map(|a| (r.amount_paid(), a)),
            });
        }
        let refundable = r.amount_paid().saturating_sub(r.refunded());
        if amount > refundable {
            return Err(CoreError::RefundTooLarge {
                asked: amount,
                refundable,
            });
        }
        self.leases.get_mut(i).add_refund(amount);
        let lease = self.leases.lease(i);
        out.effects.push(Effect::PutLease(lease.clone()));
        Ok(lease)
    }

    /// Marks a lease redeemed at `now`, with the pass it granted if any.
    pub(super) fn mark_redeemed(
        &mut self,
        id: &LeaseId,
        now: Timestamp,
        pass: Option<PassId>,
        out: &mut Outbox,
    ) -> Lease {
        let i = self.leases.find(id).expect("caller checked");
        self.leases.get_mut(i).set_redeemed(now, pass);
        let lease = self.leases.lease(i);
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
        let untrusted: Vec<u32> = self
            .leases
            .iter()
            .filter(|(_, r)| !r.ended() && (r.expires_at <= mark || r.created_at > now))
            .map(|(i, _)| i)
            .collect();
        for &i in &untrusted {
            // A lease stamped in the future is brought back to now, so its late callers find
            // it (attribution looks for the lease created before the call) and get its grace.
            let r = self.leases.get_mut(i);
            r.created_at = r.created_at.min(now);
            r.expires_at = r.expires_at.min(now.max(r.created_at));
            self.end(cx, i, now, EndReason::Expired);
            let cool_until = cool_until(dir, self.leases.get(i));
            self.file(cx, i, cool_until);
        }
        untrusted.len()
    }

    /// Checks the invariants (ARCHITECTURE.md) that a single state can show, and that the
    /// compact structures agree with the records: the slab and its id table, each pool's
    /// queues, the lines' and callers' links, the sticky table and the live counts. `Err` says
    /// which broke.
    pub(super) fn check_invariants(
        &self,
        dir: &Directory,
        done: u64,
        wheel: impl Iterator<Item = u32>,
    ) -> Result<(), String> {
        self.leases.check()?;
        let mut pending = vec![0u32; self.leases.slots() as usize];
        for slot in wheel {
            match pending.get_mut(slot as usize) {
                Some(n) => *n += 1,
                None => return Err(format!("a wheel entry names slot {slot}, past the slab")),
            }
        }
        for (i, &n) in pending.iter().enumerate() {
            let counted = self.leases.pending(i as u32);
            if counted.unwrap_or(0) != n {
                return Err(format!(
                    "slot {i}: {n} wheel entries, {counted:?} counted by its record"
                ));
            }
        }
        let live = |i: u32, what: &dyn Fn() -> String| {
            self.leases
                .try_get(i)
                .ok_or_else(|| format!("{} names slot {i}, which holds no lease", what()))
        };
        for (p, (pool, spec)) in self.pools.iter().zip(dir.specs()).enumerate() {
            let s = pool.stats();
            if s.free + s.leased + s.cooling != s.size {
                return Err(format!("pool {}: counts {s:?} do not add up", spec.name));
            }
            pool.queues
                .check()
                .map_err(|e| format!("pool {}: {e}", spec.name))?;
            for (idx, slot) in pool.slots.iter().enumerate() {
                let number = spec.numbers[idx];
                let idx = idx as u32;
                let in_sets = Queue::ALL.map(|q| pool.queues.get(q, idx).is_some());
                let expected = Queue::ALL.map(|q| Some(q) == slot.state.queue());
                if (slot.state == SlotState::Retired)
                    != (slot.state != SlotState::Leased
                        && slot.state != SlotState::Cooling
                        && dir.retired(PoolId(p as u32), idx))
                {
                    return Err(format!(
                        "{number}: state {:?} but retired is {}",
                        slot.state,
                        dir.retired(PoolId(p as u32), idx)
                    ));
                }
                if in_sets != expected {
                    return Err(format!(
                        "{number}: state {:?} but sets {in_sets:?}",
                        slot.state
                    ));
                }
                if slot.holder != NONE {
                    let holder = live(slot.holder, &|| format!("{number}'s holder"))?;
                    if (holder.number, holder.code()) != (number, None) {
                        return Err(format!("{number} held by {holder:?}"));
                    }
                }
                if slot.state.held() {
                    let lease = self
                        .leases
                        .try_get(slot.holder)
                        .ok_or_else(|| format!("{number} held by a missing lease"))?;
                    let (holds, deadline) = match slot.state {
                        SlotState::Leased => (!lease.ended(), lease.expires_at),
                        _ => (lease.ended() && !lease.freed(), cool_until(dir, lease)),
                    };
                    if !holds || lease.number != number {
                        return Err(format!(
                            "{number} state {:?} disagrees with {:?}",
                            slot.state,
                            self.leases.lease(slot.holder)
                        ));
                    }
                    if deadline.tick_ceil() <= done {
                        return Err(format!(
                            "{number} still {:?} at tick {done}, past its deadline {deadline:?}",
                            slot.state
                        ));
                    }
                }
            }
            let mut page_codes = 0;
            for (code, &i) in &pool.codes {
                let lease = live(i, &|| format!("code {code}"))?;
                if lease.code() != Some(*code) || lease.freed() {
                    return Err(format!(
                        "code {code} disagrees with {:?}",
                        self.leases.lease(i)
                    ));
                }
                if pool.code_ends.get_priority(code) != Some(&Reverse(lease.end_at())) {
                    return Err(format!("code {code} filed under the wrong end"));
                }
                page_codes += usize::from(lease.by_page());
            }
            if pool.code_ends.len() != pool.codes.len() {
                return Err(format!("pool {}: code ends out of step", spec.name));
            }
            let page_numbers = pool
                .slots
                .iter()
                .filter(|s| s.state.held())
                .filter_map(|s| self.leases.try_get(s.holder))
                .filter(|l| l.by_page())
                .count();
            if (page_numbers, page_codes) != (pool.page_numbers, pool.page_codes) {
                return Err(format!(
                    "pool {}: pages hold {page_numbers} numbers and {page_codes} codes, counted {} and {}",
                    spec.name, pool.page_numbers, pool.page_codes
                ));
            }
        }
        let mut holders: HashMap<Line, LeaseId> = HashMap::default();
        for (_, lease) in self.leases.iter() {
            if !lease.ended() {
                if let Some(other) = holders.insert(lease.line(), lease.id) {
                    return Err(format!(
                        "{:?} held by {other} and {}",
                        lease.line(),
                        lease.id
                    ));
                }
            }
        }
        self.check_links(dir)?;
        self.check_sticky_and_counts(dir)
    }

    /// Every record is on exactly one list, its line's, reached from where that line's head
    /// is noted, and the links agree both ways; the same for the callers' lists.
    fn check_links(&self, dir: &Directory) -> Result<(), String> {
        let mut heads: Vec<(Line, u32)> = Vec::new();
        for (&line, &i) in &self.stray_heads {
            if !matches!(head_at(dir, line), HeadAt::Stray) {
                return Err(format!("{line:?}'s head is filed as a stray line's"));
            }
            heads.push((line, i));
        }
        for (spec, pool) in dir.specs().iter().zip(&self.pools) {
            heads.extend(
                pool.slots
                    .iter()
                    .zip(&spec.numbers)
                    .filter(|(s, _)| s.head != NONE)
                    .map(|(s, &n)| ((n, None), s.head)),
            );
            if !pool.code_heads.is_empty() {
                let n = spec
                    .shared_number()
                    .ok_or("codes' lines without a shared number")?;
                heads.extend(pool.code_heads.iter().map(|(&c, &i)| ((n, Some(c)), i)));
            }
        }
        let mut seen = 0;
        for (line, head) in heads {
            let (mut at, mut newer) = (head, NONE);
            while at != NONE {
                let r = self
                    .leases
                    .try_get(at)
                    .ok_or_else(|| format!("{line:?}'s list runs into an empty slot"))?;
                if r.line() != line || r.newer != newer {
                    return Err(format!("{line:?}'s list is broken at {}", r.id));
                }
                seen += 1;
                (newer, at) = (at, r.older);
            }
        }
        if seen != self.leases.len() {
            return Err(format!(
                "{seen} leases on lines' lists, {} in the slab",
                self.leases.len()
            ));
        }
        let mut seen = 0;
        for (&caller, &head) in &self.by_caller {
            let (mut at, mut newer) = (head, NONE);
            while at != NONE {
                let r = self
                    .leases
                    .try_get(at)
                    .ok_or_else(|| format!("caller {caller}'s list runs into an empty slot"))?;
                let (older, n) = r.caller_links();
                if r.caller() != Some(caller) || n != newer {
                    return Err(format!("caller {caller}'s list is broken at {}", r.id));
                }
                seen += 1;
                (newer, at) = (at, older);
            }
        }
        let callers = self
            .leases
            .iter()
            .filter(|(_, r)| r.caller().is_some())
            .count();
        if seen != callers {
            return Err(format!(
                "{seen} leases on callers' lists, {callers} name a caller"
            ));
        }
        Ok(())
    }

    /// The sticky table holds live leases only, one per key, and finds each by its key; the
    /// live counts are what the live records add up to.
    fn check_sticky_and_counts(&self, dir: &Directory) -> Result<(), String> {
        let mut keys = std::collections::HashSet::new();
        for &i in self.sticky.iter() {
            let r = self
                .leases
                .try_get(i)
                .ok_or_else(|| format!("the sticky table names empty slot {i}"))?;
            if r.ended() {
                return Err(format!("ended lease {} is sticky", r.id));
            }
            let t = self.leases.terms(r);
            if !keys.insert((
                t.tenant.clone(),
                r.pool(),
                r.session.clone(),
                t.listing.clone(),
            )) {
                return Err(format!("two sticky leases share {}'s key", r.id));
            }
            let hash = sticky_hash(&self.fingerprint, &self.leases, i);
            if self.sticky.find(hash, |&j| j == i).is_none() {
                return Err(format!("lease {} is not found by its key", r.id));
            }
        }
        let mut per_session: HashMap<u64, u32> = HashMap::default();
        let mut per_tenant: HashMap<u64, u32> = HashMap::default();
        for (i, r) in self.leases.iter() {
            if !r.ended() {
                let keys = self.live_keys_of(dir, i);
                for (key, map) in [
                    (keys.session, &mut per_session),
                    (keys.tenant, &mut per_tenant),
                ] {
                    if let Some(k) = key {
                        *map.entry(k).or_default() += 1;
                    }
                }
            }
        }
        if per_session != self.live_per_session || per_tenant != self.live_per_tenant {
            return Err("live counts disagree with the live leases".into());
        }
        Ok(())
    }

    /// Bytes held, by structure (see [`super::Allocator::footprint`]).
    pub(super) fn footprint(&self) -> Vec<(&'static str, usize)> {
        fn map<K, V, S>(m: &StdMap<K, V, S>) -> usize {
            let buckets = match m.capacity() {
                0 => 0,
                c => (c * 8 / 7).next_power_of_two(),
            };
            buckets * (std::mem::size_of::<(K, V)>() + 1)
        }
        let mut f = self.leases.footprint().to_vec();
        let slots: usize = self
            .pools
            .iter()
            .map(|p| p.slots.capacity() * std::mem::size_of::<Slot>())
            .sum();
        let queues: usize = self.pools.iter().map(|p| p.queues.footprint()).sum();
        let codes: usize = self
            .pools
            .iter()
            .map(|p| map(&p.codes) + map(&p.code_heads) + p.code_ends.capacity() * 48)
            .sum();
        f.extend([
            ("sticky (table)", table_bytes(&self.sticky)),
            ("pools: slots", slots),
            ("pools: queues (free, leased, cooling)", queues),
            ("pools: codes", codes),
            (
                "callers and stray lines (heads)",
                map(&self.by_caller) + map(&self.stray_heads),
            ),
            (
                "live counts (capped pools only)",
                map(&self.live_per_session) + map(&self.live_per_tenant),
            ),
            ("listings' targets", map(&self.listings)),
        ]);
        f
    }

    /// How `line` stood at `at`: the lease active on it, or in grace, or cooling, or free.
    pub(super) fn hold(&self, dir: &Directory, line: Line, at: Timestamp) -> Hold<'_> {
        let mut i = self.head(head_at(dir, line), line);
        while i != NONE {
            let l = self.leases.get(i);
            if at < l.created_at {
                i = l.older;
                continue;
            }
            // Older leases on this line ended even earlier: the latest one decides.
            return if at < l.end_at() {
                Hold::Active(self.claim(i))
            } else if at < grace_until(dir, l) {
                Hold::Grace(self.claim(i))
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
    ) -> Option<Claim<'_>> {
        let mut i = self.by_caller.get(&caller).copied().unwrap_or(NONE);
        let mut found = None;
        while i != NONE {
            let l = self.leases.get(i);
            if l.pool() == pool && l.created_at <= at && at < l.end_at() {
                if found.is_some() {
                    return None;
                }
                found = Some(i);
            }
            i = l.caller_links().0;
        }
        found.map(|i| self.claim(i))
    }

    fn claim(&self, i: u32) -> Claim<'_> {
        let r = self.leases.get(i);
        let t = self.leases.terms(r);
        Claim {
            id: r.id,
            listing: t.listing.as_ref(),
            target: t.target.as_ref(),
            spent: (t.amount.is_some() || t.calls_required > 1) && self.is_paid(i),
        }
    }

    /// Notes a call placed at `at` on a lease: its first call (unless it came by a return
    /// route) sets `first_call_at`; returns the time from creation to that first call.
    pub(super) fn note_call(
        &mut self,
        id: LeaseId,
        at: Timestamp,
        first: bool,
    ) -> Option<Duration> {
        let i = self.leases.find(&id)?;
        let lease = self.leases.get_mut(i);
        if first && lease.first_call_at().is_none() {
            lease.set_first_call_at(at);
            return Some(at.since(lease.created_at));
        }
        None
    }

    /// Credits a lease with a call counted toward it (`count`, once per call) and what a
    /// counted call cost (`amount`, once its duration is known), noting when it becomes paid.
    /// Returns whether it just became paid.
    pub(super) fn credit(
        &mut self,
        id: LeaseId,
        count: bool,
        amount: Money,
        out: &mut Outbox,
    ) -> bool {
        let i = self.leases.find(&id).expect("caller checked");
        let was_paid = self.is_paid(i);
        let l = self.leases.get_mut(i);
        if count {
            l.count_call();
        }
        if amount != Money::ZERO {
            l.add_paid(amount);
        }
        let became = !was_paid && self.is_paid(i);
        if became {
            out.notices.push(Notice::Paid { lease: id });
        }
        out.effects.push(Effect::PutLease(self.leases.lease(i)));
        became
    }

    /// Writes the lease as it stands.
    pub(super) fn put(&self, id: LeaseId, out: &mut Outbox) {
        let i = self.leases.find(&id).expect("caller checked");
        out.effects.push(Effect::PutLease(self.leases.lease(i)));
    }

    /// `line`'s newest lease, noted `at`; `NONE` if none.
    fn head(&self, at: HeadAt, line: Line) -> u32 {
        match at {
            HeadAt::Slot(p, i) => self.pools[p].slots[i].head,
            HeadAt::Code(p, c) => self.pools[p].code_heads.get(&c).copied().unwrap_or(NONE),
            HeadAt::Stray => self.stray_heads.get(&line).copied().unwrap_or(NONE),
        }
    }

    fn set_head(&mut self, at: HeadAt, line: Line, i: u32) {
        fn note<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: K, i: u32) {
            match i {
                NONE => map.remove(&k),
                i => map.insert(k, i),
            };
        }
        match at {
            HeadAt::Slot(p, idx) => self.pools[p].slots[idx].head = i,
            HeadAt::Code(p, c) => note(&mut self.pools[p].code_heads, c, i),
            HeadAt::Stray => note(&mut self.stray_heads, line, i),
        }
    }

    /// Puts record `i` at the head of its line's list (whose head is noted `at`), and of its
    /// caller's: the lookups attribution uses.
    fn link(&mut self, at: HeadAt, i: u32) {
        let line = self.leases.get(i).line();
        let head = self.head(at, line);
        let r = self.leases.get_mut(i);
        (r.older, r.newer) = (head, NONE);
        if head != NONE {
            self.leases.get_mut(head).newer = i;
        }
        self.set_head(at, line, i);
        if let Some(c) = self.leases.get(i).caller() {
            let head = self.by_caller.insert(c, i).unwrap_or(NONE);
            self.leases.get_mut(i).set_caller_links((head, NONE));
            if head != NONE {
                let h = self.leases.get_mut(head);
                let older = h.caller_links().0;
                h.set_caller_links((older, i));
            }
        }
    }

    /// Takes record `i` off its line's list and its caller's.
    fn unlink(&mut self, dir: &Directory, i: u32) {
        let r = self.leases.get(i);
        let (line, older, newer) = (r.line(), r.older, r.newer);
        if older != NONE {
            self.leases.get_mut(older).newer = newer;
        }
        match newer {
            NONE => self.set_head(head_at(dir, line), line, older),
            n => self.leases.get_mut(n).older = older,
        }
        let r = self.leases.get(i);
        if let Some(c) = r.caller() {
            let (older, newer) = r.caller_links();
            if older != NONE {
                let o = self.leases.get_mut(older);
                let oo = o.caller_links().0;
                o.set_caller_links((oo, newer));
            }
            match (newer, older) {
                (NONE, NONE) => {
                    self.by_caller.remove(&c);
                }
                (NONE, o) => {
                    self.by_caller.insert(c, o);
                }
                (n, o) => {
                    let nl = self.leases.get_mut(n);
                    let nn = nl.caller_links().1;
                    nl.set_caller_links((o, nn));
                }
            }
        }
    }

    /// Files record `i` (live) as its key's sticky lease, in place of any other.
    fn stick(&mut self, i: u32) {
        let hash = sticky_hash(&self.fingerprint, &self.leases, i);
        let leases = &self.leases;
        let same = |&j: &u32| {
            let (a, b) = (leases.get(i), leases.get(j));
            let (ta, tb) = (leases.terms(a), leases.terms(b));
            a.pool() == b.pool()
                && a.session == b.session
                && ta.tenant == tb.tenant
                && ta.listing == tb.listing
        };
        match self.sticky.find_mut(hash, same) {
            Some(entry) => *entry = i,
            None => {
                let fingerprint = &self.fingerprint;
                self.sticky
                    .insert_unique(hash, i, |&j| sticky_hash(fingerprint, leases, j));
            }
        }
    }

    fn live_keys(
        &self,
        limits: &PoolLimits,
        pool: PoolId,
        tenant: &TenantId,
        session: &SessionId,
    ) -> LiveKeys {
        LiveKeys {
            session: (limits.max_live_per_session > 0)
                .then(|| self.fingerprint.hash_one((pool, tenant, session))),
            tenant: (limits.max_live_per_tenant > 0)
                .then(|| self.fingerprint.hash_one((pool, tenant))),
        }
    }

    fn live_keys_of(&self, dir: &Directory, i: u32) -> LiveKeys {
        let r = self.leases.get(i);
        let limits = &dir.pools[r.pool().0 as usize].limits;
        self.live_keys(limits, r.pool(), &self.leases.terms(r).tenant, &r.session)
    }

    /// Counts a lease in (or out of) the live counts its pool's caps look at.
    fn count_live(&mut self, keys: LiveKeys, live: bool) {
        fn bump(map: &mut HashMap<u64, u32>, key: Option<u64>, up: bool) {
            let Some(key) = key else { return };
            if up {
                *map.entry(key).or_default() += 1;
            } else if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        bump(&mut self.live_per_session, keys.session, live);
        bump(&mut self.live_per_tenant, keys.tenant, live);
    }

    fn extend(&mut self, cx: &mut Cx<'_>, i: u32, ttl: Duration, now: Timestamp) {
        let dir = cx.dir;
        let lease = self.leases.get_mut(i);
        let settings = &dir.pools[lease.pool().0 as usize].settings;
        let bound = lease
            .created_at
            .saturating_add(life_cap(settings, lease.by_page()));
        let new_expiry = now.saturating_add(ttl).min(bound).max(lease.expires_at);
        if new_expiry == lease.expires_at {
            return;
        }
        lease.expires_at = new_expiry;
        if let Some(code) = lease.code() {
            self.pools[lease.pool().0 as usize]
                .code_ends
                .change_priority(&code, Reverse(new_expiry));
        } else if let Some((pid, idx)) = dir.slot(lease.number) {
            self.pools[pid.0 as usize]
                .queues
                .change(Queue::Leased, idx, new_expiry);
        }
        cx.out.effects.push(Effect::PutLease(self.leases.lease(i)));
        self.file(cx, i, new_expiry);
    }

    /// Files record `i`'s next deadline: the wheel holds its slot until the entry fires, so
    /// the slot is not reused before (a purged record with entries pending stays as a ghost).
    fn file(&mut self, cx: &mut Cx<'_>, i: u32, deadline: Timestamp) {
        let r = self.leases.get_mut(i);
        r.pending += 1;
        cx.sched.at_lease(deadline, r.id, i, cx.out);
    }

    /// A restored wheel entry of lease `id`: the slot to file it under, if the lease is here.
    pub(super) fn adopt_entry(&mut self, id: &LeaseId) -> Option<u32> {
        let i = self.leases.find(id)?;
        self.leases.get_mut(i).pending += 1;
        Some(i)
    }

    /// A wheel entry of slot `i` has fired: the id it names (for the store to delete the
    /// entry), and whether its lease is still here (not a ghost, now maybe gone).
    pub(super) fn fired(&mut self, i: u32) -> (LeaseId, bool) {
        self.leases.fired(i)
    }

    /// A wheel entry (restored for a record that was gone) named lease `id`.
    pub(super) fn advance_lease(&mut self, cx: &mut Cx<'_>, id: LeaseId, now: Timestamp) {
        if let Some(i) = self.leases.find(&id) {
            self.advance(cx, i, now);
        }
    }

    /// Moves record `i` as far along its life as `now` allows, and files its next deadline.
    pub(super) fn advance(&mut self, cx: &mut Cx<'_>, i: u32, now: Timestamp) {
        let dir = cx.dir;
        let mut moved = false;
        loop {
            let lease = self.leases.get(i);
            if !lease.ended() {
                if now < lease.expires_at {
                    break;
                }
                let at = lease.expires_at;
                self.end(cx, i, at, EndReason::Expired);
                moved = true;
            } else if !lease.freed() {
                let cool_until = cool_until(dir, lease);
                if now < cool_until {
                    break;
                }
                self.free(cx, i, cool_until);
                moved = true;
            } else {
                if now < purge_at(dir, lease) {
                    break;
                }
                let id = lease.id;
                let last = self.leases.lease(i);
                self.unlink(dir, i);
                self.forget_last_holder(dir, i);
                self.leases.purge(i);
                cx.out.effects.push(Effect::DelLease(id));
                cx.out.effects.push(Effect::ArchiveLease(last));
                cx.out.notices.push(Notice::Purged { lease: id });
                return;
            }
        }
        if moved {
            let lease = self.leases.get(i);
            let next = match lease.freed() {
                true => purge_at(dir, lease),
                false => cool_until(dir, lease),
            };
            self.file(cx, i, next);
        }
    }

    fn end(&mut self, cx: &mut Cx<'_>, i: u32, at: Timestamp, reason: EndReason) {
        let dir = cx.dir;
        let lease = self.leases.get_mut(i);
        lease.set_end(LeaseEnd { at, reason });
        let lived = at.since(lease.created_at);
        cx.out.notices.push(Notice::Ended {
            lease: lease.id,
            pool: lease.pool(),
            reason,
            lived,
        });
        if lease.code().is_none() {
            let called = lease.first_call_at().is_some();
            cx.traffic.ended(lease.pool(), at, lived, called);
        }
        let hash = sticky_hash(&self.fingerprint, &self.leases, i);
        if let Ok(entry) = self.sticky.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let keys = self.live_keys_of(dir, i);
        self.count_live(keys, false);
        let lease = self.leases.get(i);
        let cool_until = cool_until(dir, lease);
        if let Some(code) = lease.code() {
            let pool = &mut self.pools[lease.pool().0 as usize];
            if pool.codes.get(&code) == Some(&i) {
                pool.code_ends.change_priority(&code, Reverse(at));
            }
        } else if let Some((pid, idx)) = dir.slot(lease.number) {
            let pool = &mut self.pools[pid.0 as usize];
            let slot = &mut pool.slots[idx as usize];
            if slot.holder == i && slot.state == SlotState::Leased {
                slot.state = SlotState::Cooling;
                pool.queues.remove(Queue::Leased, idx);
                pool.queues.push(Queue::Cooling, idx, cool_until);
            }
        }
        cx.out.effects.push(Effect::PutLease(self.leases.lease(i)));
    }

    /// Once the record of a free number's last holder is purged, the number ranks as free
    /// since forever, as a restart (which no longer sees the record) ranks it: the
    /// least-recently-used order must not depend on whether the process restarted.
    fn forget_last_holder(&mut self, dir: &Directory, i: u32) {
        let lease = self.leases.get(i);
        if lease.code().is_some() {
            return;
        }
        if let Some((pid, idx)) = dir.slot(lease.number) {
            let pool = &mut self.pools[pid.0 as usize];
            let slot = &mut pool.slots[idx as usize];
            if slot.holder == i && slot.state == SlotState::Free {
                slot.holder = NONE;
                pool.queues.change(Queue::Free, idx, Timestamp::ZERO);
            }
        }
    }

    fn free(&mut self, cx: &mut Cx<'_>, i: u32, at: Timestamp) {
        let dir = cx.dir;
        let lease = self.leases.get_mut(i);
        lease.set_freed();
        let page = usize::from(lease.by_page());
        match lease.code() {
            Some(code) => {
                let pool = &mut self.pools[lease.pool().0 as usize];
                if pool.codes.get(&code) == Some(&i) {
                    pool.codes.remove(&code);
                    pool.code_ends.remove(&code);
                    pool.page_codes -= page;
                }
            }
            None => {
                // The pool the number is configured in now, as `end` and `restore` see it.
                if let Some((pid, idx)) = dir.slot(lease.number) {
                    let pool = &mut self.pools[pid.0 as usize];
                    let slot = &mut pool.slots[idx as usize];
                    if slot.holder == i && slot.state == SlotState::Cooling {
                        slot.state = SlotState::unheld(dir.retired(pid, idx));
                        pool.queues.remove(Queue::Cooling, idx);
                        if slot.state == SlotState::Free {
                            pool.queues.push(Queue::Free, idx, at);
                        }
                        pool.page_numbers -= page;
                    }
                }
            }
        }
        cx.out.effects.push(Effect::PutLease(self.leases.lease(i)));
    }
}

/// The fingerprint of record `i`'s sticky key (tenant, pool, session, listing), as
/// [`Leasing::allocate`] hashes a request's.
fn sticky_hash(fingerprint: &ahash::RandomState, leases: &Slab, i: u32) -> u64 {
    let r = leases.get(i);
    let t = leases.terms(r);
    fingerprint.hash_one((&t.tenant, r.pool(), &r.session, t.listing.as_ref()))
}

/// The lifetime a new term of a lease gets: `code_ttl` on a shared number, else `wanted`
/// or the pool's `ttl`; never more than the lease may live (`max_ttl`, `page_max_ttl`).
fn ttl_of(dir: &Directory, lease: &Rec, wanted: Option<Duration>) -> Duration {
    let spec = &dir.pools[lease.pool().0 as usize];
    let ttl = match (lease.code(), &spec.on_exhausted) {
        (Some(_), OnExhausted::Shared { code_ttl, .. }) => *code_ttl,
        _ => wanted.unwrap_or(spec.settings.ttl),
    };
    ttl.min(life_cap(&spec.settings, lease.by_page()))
}

/// When the lease's number (or code) may go to someone else.
fn cool_until(dir: &Directory, lease: &Rec) -> Timestamp {
    let q = dir.pools[lease.pool().0 as usize].settings.quarantine;
    lease.end_at().saturating_add(q)
}

/// Until when late calls still reach the lease's holder.
fn grace_until(dir: &Directory, lease: &Rec) -> Timestamp {
    let g = dir.pools[lease.pool().0 as usize].settings.grace;
    lease.end_at().saturating_add(g)
}

fn purge_at(dir: &Directory, lease: &Rec) -> Timestamp {
    let r = dir.pools[lease.pool().0 as usize].settings.retention;
    lease.end_at().saturating_add(r).max(cool_until(dir, lease))
}

/// The longest a lease may live from its creation: `max_ttl`, and `page_max_ttl` for a page's.
fn life_cap(settings: &LeaseSettings, from_page: bool) -> Duration {
    match from_page {
        true => settings.max_ttl.min(settings.page_max_ttl),
        false => settings.max_ttl,
    }
}

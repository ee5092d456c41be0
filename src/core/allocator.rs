//! The allocator: the core's one public face. It owns the pools as configured (`Directory`)
//! and the parts — `Leasing`, `Ticketing`, the calls' memory, the `Schedule` — and runs each
//! public operation by asking them in turn, handing each what it needs (the directory, the
//! schedule, the outbox) as parameters. Pure: every method takes `now`; each change is written
//! to the caller's `Outbox` as an [`Effect`], persisted before anyone is answered.

use std::collections::HashMap as StdMap;
use std::sync::Arc;
use std::time::Duration;

use super::call::{Call, ReturnRoute};
use super::directory::Directory;
use super::lease::{AllocateRequest, Allocated, Lease, PoolSpec, PoolStats};
use super::leasing::{self, Leasing};
use super::schedule::{Cx, Schedule};
use super::ticket::{Formula, Pass, PassSource, Progress, Ticket};
use super::tickets::Ticketing;
use super::time::Timestamp;
use super::types::{
    CallKey, Due, LeaseId, ListingId, PassId, PoolId, ReturnKey, Target, TenantId, TicketCode,
};
use super::{CoreError, Effect, Outbox};

/// Maps keyed partly by what clients send: ahash is fast and randomly seeded, so keys cannot
/// be chosen to collide.
type HashMap<K, V> = StdMap<K, V, ahash::RandomState>;

/// What a part needs to change state: the directory, the schedule and the outbox, borrowed
/// beside (not through) the part itself.
macro_rules! cx {
    ($a:expr, $out:expr) => {
        &mut Cx {
            dir: &$a.dir,
            sched: &mut $a.schedule,
            out: $out,
        }
    };
}

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
    /// Pools' numbers and codes, leases, listings.
    pub(super) leasing: Leasing,
    pub(super) returns: HashMap<ReturnKey, ReturnRoute>,
    /// Calls still remembered (for idempotency and their `end`), by key.
    pub(super) calls: HashMap<CallKey, Call>,
    /// Tickets, passes and callers' progress.
    pub(super) ticketing: Ticketing,
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
        Ok(Allocator {
            leasing: Leasing::new(&dir),
            dir,
            returns: HashMap::default(),
            calls: HashMap::default(),
            ticketing: Ticketing::default(),
            schedule: Schedule::new(),
        })
    }

    /// Rebuilds the state that a snapshot (as persisted) describes. Numbers no longer
    /// configured keep their lease records readable but never return to a pool.
    pub fn restore(dir: Arc<Directory>, snapshot: Snapshot) -> Result<Self, CoreError> {
        let leasing = Leasing::restore(&dir, snapshot.leases, snapshot.listings)?;
        let mut a = Allocator {
            leasing,
            dir,
            returns: HashMap::default(),
            calls: HashMap::default(),
            ticketing: Ticketing::restore(snapshot.tickets, snapshot.passes, snapshot.progress),
            schedule: Schedule::new(),
        };
        for call in snapshot.calls {
            a.calls.insert(call.id.key(), call);
        }
        for r in snapshot.returns {
            a.returns.insert(r.key, r);
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
        self.leasing.pool_stats(pool)
    }

    pub fn lease(&self, id: &LeaseId) -> Option<&Lease> {
        self.leasing.lease(id)
    }

    pub fn lease_count(&self) -> usize {
        self.leasing.lease_count()
    }

    /// The formula of a ticketing pool.
    pub fn formula(&self, pool: PoolId) -> Option<&Formula> {
        self.dir.formula(pool)
    }

    pub fn pass(&self, id: &PassId) -> Option<&Pass> {
        self.ticketing.pass(id)
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
        self.leasing.allocate(cx!(self, out), req, now, new_id)
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
        self.leasing.set_listing(tenant, listing, target, out)
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
        self.leasing.renew(cx!(self, out), id, ttl, now)
    }

    /// Ends a lease now; its number starts cooling. Returns false if it had already ended
    /// (releasing is idempotent).
    pub fn release(
        &mut self,
        id: &LeaseId,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<bool, CoreError> {
        self.leasing.release(cx!(self, out), id, now)
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
        let (pool, tenant) = self.leasing.redeemable(id)?;
        let source = PassSource::Lease(*id);
        let pass = self
            .ticketing
            .grant(cx!(self, out), pool, &tenant, source, now, pass_id);
        let lease = self
            .leasing
            .mark_redeemed(id, now, pass.as_ref().map(|p| p.id), out);
        Ok((lease, pass))
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
        self.ticketing
            .redeem_ticket(cx!(self, out), code, tenant, allowed, now, pass_id)
    }

    /// Ends a pass now (refund, abuse); only its tenant may.
    pub fn revoke_pass(
        &mut self,
        id: &PassId,
        tenant: &TenantId,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<Pass, CoreError> {
        self.ticketing.revoke_pass(cx!(self, out), id, tenant, now)
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
        self.leasing.rewind_to(cx!(self, out), mark, now)
    }

    /// Checks the invariants (ARCHITECTURE.md) that a single state can show; `Err` says which broke.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.leasing
            .check_invariants(&self.dir, self.schedule.done_through())
    }

    /// When the lease's number (or code) may go to someone else.
    pub fn cool_until(&self, lease: &Lease) -> Timestamp {
        leasing::cool_until(&self.dir, lease)
    }

    /// Until when late calls still reach the lease's holder.
    pub fn grace_until(&self, lease: &Lease) -> Timestamp {
        leasing::grace_until(&self.dir, lease)
    }

    /// Moves a record as far along its life as `now` allows, and files its next deadline.
    fn advance(&mut self, what: Due, now: Timestamp, out: &mut Outbox) {
        match what {
            Due::Lease(id) => self.leasing.advance_lease(cx!(self, out), id, now),
            Due::Call(key) => self.forget_call(key, now),
            Due::Return(key) => self.expire_return(key, now, out),
            Due::Ticket(id) => self.ticketing.advance_ticket(cx!(self, out), id, now),
            Due::Pass(id) => self.ticketing.advance_pass(cx!(self, out), id, now),
            Due::Progress(key) => self.ticketing.advance_progress(cx!(self, out), key, now),
        }
    }
}

//! The allocator: the core's one public face. It owns the pools as configured (`Directory`)
//! and the parts — `Leasing`, `Calls`, `Ticketing`, the `Schedule` — and runs each
//! public operation by asking them in turn, handing each what it needs (the directory, the
//! schedule, the outbox) as parameters. Pure: every method takes `now`; each change is written
//! to the caller's `Outbox` as an [`Effect`], persisted before anyone is answered.

use std::sync::Arc;
use std::time::Duration;

use super::call::{Attribution, Call, CallEnd, CallStart, Reason, ReturnRoute};
use super::calls::{Calls, Ending};
use super::directory::Directory;
use super::journal::{derived_id, EventKind, JournalEvent};
use super::lease::{
    AllocateRequest, Allocated, Lease, LeasePage, LeaseQuery, NumberView, PoolSpec, PoolStats,
};
use super::leasing::Leasing;
use super::money::Money;
use super::outbox::Notice;
use super::schedule::{Cx, Fired, Schedule};
use super::stats::{day_of, Counts, Tally};
use super::ticket::{Entropy, Formula, Pass, PassSource, Progress, Ticket};
use super::tickets::Ticketing;
use super::time::Timestamp;
use super::traffic::{Asked, Bucket, Capacity, Traffic};
use super::types::{
    CallId, Code, Due, LeaseId, ListingId, PassId, PhoneNumber, PoolId, Target, TenantId,
    TicketCode,
};
use super::{CoreError, Effect, Outbox};

/// What a part needs to change state: the directory, the schedule and the outbox, borrowed
/// beside (not through) the part itself.
macro_rules! cx {
    ($a:expr, $out:expr) => {
        &mut Cx {
            dir: &$a.dir,
            sched: &mut $a.schedule,
            traffic: &mut $a.traffic,
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
    /// Pools' traffic buckets, by index.
    pub traffic: Vec<(PoolId, u64, Bucket)>,
}

impl Snapshot {
    /// Numbers that records still hold (leased or cooling) in a pool of `dir` that no longer
    /// lists them: [`Directory::retiring`] keeps them until they are free, as a reload would.
    pub fn held_unlisted(&self, dir: &Directory) -> Vec<(PoolId, PhoneNumber)> {
        let pools = dir.specs().len();
        self.leases
            .iter()
            .filter(|l| l.code.is_none() && (l.end.is_none() || !l.freed))
            .filter(|l| (l.pool.0 as usize) < pools && dir.slot(l.number).is_none())
            .map(|l| (l.pool, l.number))
            .collect()
    }
}

/// The whole allocation and attribution state of the service.
#[derive(Debug)]
pub struct Allocator {
    /// The pools as configured: names, numbers, settings. Shared, never changed here.
    dir: Arc<Directory>,
    /// Pools' numbers and codes, leases, listings.
    leasing: Leasing,
    /// Calls still remembered, and return routes.
    calls: Calls,
    /// Tickets, passes and callers' progress.
    ticketing: Ticketing,
    /// Every record's next deadline.
    schedule: Schedule,
    /// What each pool was asked for and how long its numbers were held, for capacity.
    traffic: Traffic,
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
            traffic: Traffic::new(dir.specs().len()),
            dir,
            calls: Calls::default(),
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
            traffic: Traffic::restore(dir.specs().len(), snapshot.traffic),
            dir,
            calls: Calls::restore(snapshot.calls, snapshot.returns),
            ticketing: Ticketing::restore(snapshot.tickets, snapshot.passes, snapshot.progress),
            schedule: Schedule::new(),
        };
        for (tick, due) in snapshot.wheel {
            match due {
                Due::Lease(id) => match a.leasing.adopt_entry(&id) {
                    Some(slot) => a.schedule.restore_lease(tick, slot),
                    None => a.schedule.restore(tick, due),
                },
                _ => a.schedule.restore(tick, due),
            }
        }
        Ok(a)
    }

    /// Serves `next`, the directory a reload made of this one's ([`Directory::evolve`]):
    /// new numbers and pools are free at once, removed ones finish what they hold. Refused,
    /// changing nothing, where the state forbids it (see [`Leasing::reconfigure`]).
    pub fn reconfigure(&mut self, next: Arc<Directory>) -> Result<(), CoreError> {
        self.leasing.reconfigure(&self.dir, &next)?;
        self.traffic.grow(next.specs().len());
        self.dir = next;
        Ok(())
    }

    /// The directory of pools this allocator serves.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.dir
    }

    pub fn pool_spec(&self, pool: PoolId) -> &PoolSpec {
        self.dir.spec(pool)
    }

    /// A page of `pool`'s numbers with their state and holder (see `Leasing::numbers`).
    pub fn numbers(&self, pool: PoolId, offset: usize, limit: usize) -> Vec<NumberView> {
        self.leasing.numbers(&self.dir, pool, offset, limit)
    }

    pub fn pool_stats(&self, pool: PoolId) -> PoolStats {
        self.leasing.pool_stats(pool)
    }

    /// The lease `id` as it stands (built from the core's compact record: owned).
    pub fn lease(&self, id: &LeaseId) -> Option<Lease> {
        self.leasing.lease(id)
    }

    /// A page of leases (transactions), newest first; see [`LeaseQuery`].
    pub fn leases(&self, q: &LeaseQuery, now: Timestamp) -> LeasePage {
        self.leasing.list(q, now)
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
        let pool = req.pool;
        let res = self.leasing.allocate(cx!(self, out), req, now, new_id);
        if let Err(CoreError::Exhausted { .. }) = res {
            out.notices.push(Notice::Exhausted { pool });
        }
        // What the pool was offered: every request for a new number, however answered.
        let asked = match &res {
            Ok(a) if !a.fresh => None,
            Ok(a) if a.lease.code.is_some() => Some(Asked::Shared),
            Ok(_) => Some(Asked::Granted),
            Err(CoreError::Exhausted { .. }) => Some(Asked::Refused),
            Err(_) => None,
        };
        if let Some(how) = asked {
            let s = self.leasing.pool_stats(pool);
            self.traffic.asked(pool, how, s.leased + s.cooling, now);
        }
        if let Ok(a) = &res {
            if a.fresh {
                let l = &a.lease;
                let counts = Counts {
                    leases: 1,
                    ..Counts::default()
                };
                let who = (Some(l.tenant.clone()), l.listing.clone());
                self.tally(l.pool, l.created_at, who, counts, out);
            }
        }
        res
    }

    /// What `pool`'s traffic says of its size, aiming at `blocking` (0 to 1, exclusive).
    pub fn capacity(
        &self,
        pool: PoolId,
        blocking: f64,
        now: Timestamp,
    ) -> Result<Capacity, CoreError> {
        let spec = self
            .dir
            .specs()
            .get(pool.0 as usize)
            .ok_or(CoreError::UnknownPool)?;
        if self.dir.formula(pool).is_some() {
            return Err(CoreError::TicketingPool);
        }
        Ok(self
            .traffic
            .capacity(pool, spec.numbers.len(), &spec.settings, blocking, now))
    }

    /// Adds `counts` to the statistics of `pool` on the day of `at`, for `who`: the tenant
    /// and listing of the lease concerned (none for a call that reached no lease).
    fn tally(
        &self,
        pool: PoolId,
        at: Timestamp,
        who: (Option<TenantId>, Option<ListingId>),
        counts: Counts,
        out: &mut Outbox,
    ) {
        out.effects.push(Effect::Tally(Tally {
            day: day_of(at),
            pool,
            currency: self.dir.spec(pool).tariff.map(|t| t.currency),
            tenant: who.0,
            listing: who.1,
            counts,
        }));
    }

    /// Whose a call is, for the statistics: its lease's tenant (if the lease is still held)
    /// and its listing.
    fn call_owner(&self, call: &Call) -> (Option<TenantId>, Option<ListingId>) {
        let tenant = call
            .attribution
            .lease
            .and_then(|id| self.leasing.tenant_of(&id));
        (tenant, call.attribution.listing.clone())
    }

    /// Credits a lease (see `Leasing::credit`), counting it paid in the statistics of the day
    /// it was created when it just became paid.
    fn credit(&mut self, lease: &Lease, count: bool, amount: Money, out: &mut Outbox) {
        if self.leasing.credit(lease.id, count, amount, out) {
            let counts = Counts {
                paid_leases: 1,
                ..Counts::default()
            };
            let who = (Some(lease.tenant.clone()), lease.listing.clone());
            self.tally(lease.pool, lease.created_at, who, counts, out);
        }
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
    ) -> Result<Lease, CoreError> {
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
        out.notices.push(Notice::Redeemed { lease: *id });
        let mut e = self.lease_event(&lease, EventKind::LeaseRedeemed, now);
        e.amount = e.currency.map(|_| lease.amount_paid);
        out.effects.push(Effect::JournalEvent(e));
        Ok((lease, pass))
    }

    /// A journal event about `lease`, its amount and note left for the caller to set.
    fn lease_event(&self, lease: &Lease, kind: EventKind, now: Timestamp) -> JournalEvent {
        JournalEvent {
            id: derived_id(*lease.id.as_bytes(), kind),
            kind,
            at: now,
            pool: lease.pool,
            tenant: lease.tenant.clone(),
            lease: Some(lease.id),
            pass: lease.pass,
            listing: lease.listing.clone(),
            amount: None,
            currency: self.dir.spec(lease.pool).tariff.map(|t| t.currency),
            note: None,
        }
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

    /// Records a refund of part or all of what a paid lease of `tenant` was paid (journalled
    /// with `reason`, under `event_id`, fresh randomness from the caller), and revokes the pass
    /// its redeem granted, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn refund(
        &mut self,
        id: &LeaseId,
        tenant: &TenantId,
        amount: Money,
        reason: String,
        event_id: [u8; 16],
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(Lease, Option<Pass>), CoreError> {
        let lease = self.leasing.refund(id, tenant, amount, out)?;
        let mut e = self.lease_event(&lease, EventKind::LeaseRefunded, now);
        e.id = event_id;
        e.amount = Some(amount);
        e.note = Some(reason);
        out.effects.push(Effect::JournalEvent(e));
        let pass = match lease.pass {
            Some(p) => match self.ticketing.revoke_pass(cx!(self, out), &p, tenant, now) {
                Ok(pass) => Some(pass),
                // A pass already purged (its access long over) has nothing left to revoke.
                Err(CoreError::UnknownPass) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok((lease, pass))
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

    /// Who gets a call placed at `at`, from the state as stored (see [`Calls::attribute`]
    /// for the rules, in order).
    pub fn attribute(
        &self,
        called: PhoneNumber,
        caller: Option<PhoneNumber>,
        code: Option<Code>,
        at: Timestamp,
    ) -> Attribution {
        self.calls
            .attribute(&self.dir, &self.leasing, called, caller, code, at)
    }

    /// Records a call's start and answers where it goes. A retried start (same id, same
    /// facts) gets the first answer again; the same id with other facts is a conflict.
    pub fn call_start(
        &mut self,
        start: CallStart,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<Call, CoreError> {
        if let Some(c) = self.calls.retried_start(&start)? {
            return Ok(c);
        }
        let attribution = self.attribute(start.called, start.caller, start.code, start.at);
        let mut call = Call {
            id: start.id,
            called: start.called,
            caller: start.caller,
            code: start.code,
            started_at: start.at,
            attribution,
            end: None,
            charge: None,
            counted: false,
            ticketing: None,
        };
        if let Some(pool) = call.attribution.pool.filter(|&p| self.formula(p).is_some()) {
            let counts_now = self.formula(pool).is_some_and(|f| f.min_call_secs == 0);
            call.ticketing = Some(if counts_now {
                call.counted = true;
                self.ticketing.count_ticketing(
                    cx!(self, out),
                    pool,
                    call.caller,
                    call.started_at,
                    now,
                    start.entropy,
                )
            } else {
                self.ticketing
                    .ticketing_progress(&self.dir, pool, call.caller, call.started_at)
            });
        }
        let reason = call.attribution.reason;
        let mut first_call_after = None;
        if let Some(lease) = call
            .attribution
            .lease
            .and_then(|id| self.leasing.lease(&id))
        {
            let (id, listing, target) = (lease.id, lease.listing.clone(), lease.target.clone());
            let counts_now = lease.min_call_secs == 0;
            first_call_after =
                self.leasing
                    .note_call(id, call.started_at, reason != Reason::Return);
            out.notices.push(Notice::CallStarted {
                lease: id,
                call: call.id.clone(),
            });
            if counts_now {
                self.credit(&lease, true, Money::ZERO, out);
                call.counted = true;
            } else {
                self.leasing.put(id, out);
            }
            // Only a call proven by the line it reached opens a return route: a `caller`
            // claim typed on a page must not keep a caller's calls for 30 days.
            let proven = matches!(reason, Reason::Code | Reason::Active | Reason::Grace);
            if let (Some(caller), Some(listing), true) = (call.caller, listing, proven) {
                self.calls
                    .open_return(cx!(self, out), caller, &call, id, listing, target);
            }
        }
        out.notices.push(Notice::Attributed {
            pool: call.attribution.pool,
            reason,
            first_call_after,
        });
        if let Some(pool) = call.attribution.pool {
            let counts = Counts {
                calls: 1,
                attributed: u64::from(reason.attributed()),
                ..Counts::default()
            };
            let who = self.call_owner(&call);
            self.tally(pool, call.started_at, who, counts, out);
        }
        self.calls.remember_start(cx!(self, out), &call, now);
        Ok(call)
    }

    /// Records a call's end. A call whose lease (or ticketing formula) needs `min_call_secs`
    /// counts now if it lasted that long; `entropy` serves a ticket this may complete. A retried end with the same duration is answered again; another duration is
    /// a conflict.
    pub fn call_end(
        &mut self,
        id: &CallId,
        end: CallEnd,
        now: Timestamp,
        entropy: Entropy,
        out: &mut Outbox,
    ) -> Result<Call, CoreError> {
        let mut call = match self.calls.ending(id, end)? {
            Ending::Retried(call) => return Ok(call),
            Ending::Fresh(call) => call,
        };
        call.charge = call
            .attribution
            .pool
            .and_then(|p| self.dir.spec(p).tariff)
            .map(|t| t.charge(end.duration_secs));
        let formula = call
            .attribution
            .pool
            .and_then(|p| self.formula(p).map(|f| (p, f.min_call_secs)));
        if let Some((pool, min)) = formula {
            if !call.counted && end.duration_secs >= min {
                call.counted = true;
                call.ticketing = Some(self.ticketing.count_ticketing(
                    cx!(self, out),
                    pool,
                    call.caller,
                    call.started_at,
                    now,
                    entropy,
                ));
            }
        }
        if let Some(lease) = call.attribution.lease.and_then(|l| self.leasing.lease(&l)) {
            let lease_id = lease.id;
            let counts_now = !call.counted && end.duration_secs >= lease.min_call_secs;
            // The page hears the call end before the lease becomes paid.
            out.notices.push(Notice::CallEnded {
                lease: lease_id,
                call: call.id.clone(),
                duration_secs: end.duration_secs,
                counted: call.counted || counts_now,
            });
            // A counted call pays its lease what it cost, whether it counted at its start
            // (no minimum length) or counts now.
            let paid = match call.counted || counts_now {
                true => call.charge.map_or(Money::ZERO, |c| c.amount),
                false => Money::ZERO,
            };
            if counts_now || paid != Money::ZERO {
                self.credit(&lease, counts_now, paid, out);
            }
            call.counted |= counts_now;
        }
        if let (Some(pool), Some(charge)) = (call.attribution.pool, call.charge) {
            out.notices.push(Notice::Charged { pool, charge });
        }
        if let Some(pool) = call.attribution.pool {
            let counts = Counts {
                answered: u64::from(end.duration_secs >= 1),
                billed_secs: call
                    .charge
                    .map_or(u64::from(end.duration_secs), |c| u64::from(c.billed_secs)),
                amount: call.charge.map_or(0, |c| c.amount.cents()),
                ..Counts::default()
            };
            let who = self.call_owner(&call);
            self.tally(pool, call.started_at, who, counts, out);
        }
        self.calls.remember_end(&call, out);
        Ok(call)
    }

    pub fn call(&self, id: &CallId) -> Option<&Call> {
        self.calls.call(id)
    }

    /// Which pool a called number belongs to, as a pool number or a shared number.
    pub fn pool_of_number(&self, n: PhoneNumber) -> Option<PoolId> {
        self.dir.pool_of_number(n)
    }

    /// Fires every wheel entry due at `now`: expiries, ends of quarantine, purges of old
    /// records. Stale entries (a renewed lease's old deadline) do nothing but go away. Then
    /// writes the traffic buckets changed since the last tick (and drops those over a week
    /// old), so counting a request costs its operation no write.
    pub fn tick(&mut self, now: Timestamp, out: &mut Outbox) {
        for (tick, fired) in self.schedule.due(now) {
            match fired {
                Fired::Lease(slot) => {
                    let (id, live) = self.leasing.fired(slot);
                    out.effects.push(Effect::DelWheel(tick, Due::Lease(id)));
                    if live {
                        self.leasing.advance(cx!(self, out), slot, now);
                    }
                }
                Fired::Other(what) => {
                    out.effects.push(Effect::DelWheel(tick, what));
                    self.advance(what, now, out);
                }
            }
        }
        self.traffic.flush(now, out);
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
        self.leasing.check_invariants(
            &self.dir,
            self.schedule.done_through(),
            self.schedule.lease_slots(),
        )
    }

    /// Bytes held by the core's larger structures, by name: what a lease costs, and where.
    /// Capacities, not lengths; strings counted where they are owned.
    pub fn footprint(&self) -> Vec<(&'static str, usize)> {
        let mut f = self.leasing.footprint();
        f.extend(self.schedule.footprint());
        f
    }

    /// Moves a record as far along its life as `now` allows, and files its next deadline.
    fn advance(&mut self, what: Due, now: Timestamp, out: &mut Outbox) {
        match what {
            Due::Lease(id) => self.leasing.advance_lease(cx!(self, out), id, now),
            Due::Call(key) => self.calls.forget_call(&self.dir, key, now),
            Due::Return(key) => self.calls.expire_return(key, now, out),
            Due::Ticket(id) => self.ticketing.advance_ticket(cx!(self, out), id, now),
            Due::Pass(id) => self.ticketing.advance_pass(cx!(self, out), id, now),
            Due::Progress(key) => self.ticketing.advance_progress(cx!(self, out), key, now),
        }
    }
}

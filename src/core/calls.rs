//! Calls: who gets the credit for a call, decided from the stored history at the call's own
//! time (so a late event is answered as it would have been live), and what calls count toward
//! a lease being paid. Pure, like the rest of the core.

use std::time::Duration;

use super::allocator::Allocator;
use super::call::{Attribution, Call, CallEnd, CallStart, Reason, ReturnRoute};
use super::lease::Lease;
use super::leasing::Hold;
use super::outbox::Notice;
use super::schedule::Cx;
use super::ticket::Entropy;
use super::time::Timestamp;
use super::types::{CallId, Code, Due, LeaseId, ListingId, PhoneNumber, PoolId, ReturnKey, Target};
use super::{CoreError, Effect, Outbox};

/// How long a call stays in memory (for retried events and its `end`) when its pool is unknown.
const CALL_MEMORY: Duration = Duration::from_secs(24 * 3600);

impl Allocator {
    /// Who gets a call placed at `at`, from the state as stored. Rules in order: code,
    /// return, active, grace, caller (only on a line nobody holds); else not_leased or
    /// unknown_number (with the pool's fallback target, if any).
    pub fn attribute(
        &self,
        called: PhoneNumber,
        caller: Option<PhoneNumber>,
        code: Option<Code>,
        at: Timestamp,
    ) -> Attribution {
        let pool = self.pool_of_number(called);
        let Some(pool) = pool else {
            return Attribution {
                reason: Reason::UnknownNumber,
                pool: None,
                lease: None,
                target: None,
                listing: None,
            };
        };
        if self.formula(pool).is_some() {
            return Attribution {
                reason: Reason::Ticketing,
                pool: Some(pool),
                lease: None,
                target: None,
                listing: None,
            };
        }
        let from_lease = |reason, l: &Lease| Attribution {
            reason,
            pool: Some(pool),
            lease: Some(l.id),
            target: l.target.clone(),
            listing: l.listing.clone(),
        };
        let on_shared = self.dir.shared_pool(called) == Some(pool);
        if let (Some(code), true) = (code, on_shared) {
            match self.leasing.hold(&self.dir, (called, Some(code)), at) {
                Hold::Active(l) | Hold::Grace(l) => return from_lease(Reason::Code, l),
                Hold::Cooling | Hold::Free => {}
            }
        }
        if let Some(caller) = caller {
            if let Some(r) = self.returns.get(&ReturnKey {
                caller,
                number: called,
            }) {
                if r.first_at < at && at < r.until {
                    return Attribution {
                        reason: Reason::Return,
                        pool: Some(pool),
                        lease: Some(r.lease),
                        target: r.target.clone(),
                        listing: Some(r.listing.clone()),
                    };
                }
            }
        }
        match self.leasing.hold(&self.dir, (called, None), at) {
            Hold::Active(l) => return from_lease(Reason::Active, l),
            Hold::Grace(l) => return from_lease(Reason::Grace, l),
            // A line in quarantine is still its last holder's: nobody's claim takes it.
            Hold::Cooling => {}
            // A number typed on a page is a claim, not a proof: it may only pick up calls
            // that no lease can claim by the number dialled (a free pool number, or the
            // shared number with no code typed), and only when exactly one lease of the
            // pool, active at `at`, makes that claim.
            Hold::Free if on_shared && code.is_some() => {}
            Hold::Free => {
                if let Some(l) = caller.and_then(|c| self.leasing.sole_claim(pool, c, at)) {
                    return from_lease(Reason::Caller, l);
                }
            }
        }
        Attribution {
            reason: Reason::NotLeased,
            pool: Some(pool),
            lease: None,
            target: self.dir.spec(pool).fallback.clone(),
            listing: None,
        }
    }

    /// Records a call's start and answers where it goes. A retried start (same id, same
    /// facts) gets the first answer again; the same id with other facts is a conflict.
    pub fn call_start(
        &mut self,
        start: CallStart,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<Call, CoreError> {
        let key = start.id.key();
        if let Some(c) = self.calls.get(&key) {
            if c.id != start.id {
                return Err(CoreError::CallConflict(
                    "another call has a colliding id".into(),
                ));
            }
            if c.called != start.called || c.caller != start.caller || c.code != start.code {
                return Err(CoreError::CallConflict(format!(
                    "call {} was already started with other numbers or code",
                    start.id.as_str()
                )));
            }
            return Ok(c.clone());
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
            counted: false,
            ticketing: None,
        };
        if let Some(pool) = call.attribution.pool.filter(|&p| self.formula(p).is_some()) {
            let counts_now = self.formula(pool).is_some_and(|f| f.min_call_secs == 0);
            call.ticketing = Some(if counts_now {
                call.counted = true;
                self.ticketing.count_ticketing(
                    &mut Cx {
                        dir: &self.dir,
                        sched: &mut self.schedule,
                        out,
                    },
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
                self.count(id, &mut call, out);
            } else {
                self.leasing.put(id, out);
            }
            // Only a call proven by the line it reached opens a return route: a `caller`
            // claim typed on a page must not keep a caller's calls for 30 days.
            let proven = matches!(reason, Reason::Code | Reason::Active | Reason::Grace);
            if let (Some(caller), Some(listing), true) = (call.caller, listing, proven) {
                self.open_return(caller, &call, id, listing, target, out);
            }
        }
        out.notices.push(Notice::Attributed {
            pool: call.attribution.pool,
            reason,
            first_call_after,
        });
        let memory = call
            .attribution
            .pool
            .map_or(CALL_MEMORY, |p| self.dir.spec(p).settings.retention);
        out.effects.push(Effect::PutCall(call.clone()));
        self.schedule.at(
            now.max(call.started_at).saturating_add(memory),
            Due::Call(call.id.key()),
            out,
        );
        self.calls.insert(key, call.clone());
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
        let key = id.key();
        let call = self
            .calls
            .get(&key)
            .filter(|c| &c.id == id)
            .ok_or(CoreError::UnknownCall)?;
        if let Some(prev) = call.end {
            // A retried end is answered again; its entropy is not used.
            return if prev.duration_secs == end.duration_secs {
                Ok(call.clone())
            } else {
                Err(CoreError::CallConflict(format!(
                    "call {} already ended after {} s",
                    id.as_str(),
                    prev.duration_secs
                )))
            };
        }
        if end.at < call.started_at {
            return Err(CoreError::EndBeforeStart);
        }
        let mut call = call.clone();
        call.end = Some(end);
        let formula = call
            .attribution
            .pool
            .and_then(|p| self.formula(p).map(|f| (p, f.min_call_secs)));
        if let Some((pool, min)) = formula {
            if !call.counted && end.duration_secs >= min {
                call.counted = true;
                call.ticketing = Some(self.ticketing.count_ticketing(
                    &mut Cx {
                        dir: &self.dir,
                        sched: &mut self.schedule,
                        out,
                    },
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
            if counts_now {
                self.count(lease_id, &mut call, out);
            }
        }
        out.effects.push(Effect::PutCall(call.clone()));
        self.calls.insert(key, call.clone());
        Ok(call)
    }

    pub fn call(&self, id: &CallId) -> Option<&Call> {
        self.calls.get(&id.key()).filter(|c| &c.id == id)
    }

    /// Which pool a called number belongs to, as a pool number or a shared number.
    pub fn pool_of_number(&self, n: PhoneNumber) -> Option<PoolId> {
        self.dir.pool_of_number(n)
    }

    /// Counts `call` toward its lease (once), noting when the lease becomes paid.
    fn count(&mut self, lease: LeaseId, call: &mut Call, out: &mut Outbox) {
        self.leasing.count_call(lease, out);
        call.counted = true;
    }

    fn open_return(
        &mut self,
        caller: PhoneNumber,
        call: &Call,
        lease: LeaseId,
        listing: ListingId,
        target: Option<Target>,
        out: &mut Outbox,
    ) {
        let key = ReturnKey {
            caller,
            number: call.called,
        };
        if self
            .returns
            .get(&key)
            .is_some_and(|r| call.started_at < r.until)
        {
            return;
        }
        let Some(pool) = call.attribution.pool else {
            return;
        };
        let window = self.dir.spec(pool).return_window;
        if window.is_zero() {
            return;
        }
        let route = ReturnRoute {
            key,
            lease,
            listing,
            target,
            first_at: call.started_at,
            until: call.started_at.saturating_add(window),
        };
        out.effects.push(Effect::PutReturn(route.clone()));
        self.schedule.at(route.until, Due::Return(key), out);
        self.returns.insert(key, route);
    }

    pub(super) fn forget_call(&mut self, key: super::types::CallKey, now: Timestamp) {
        let Some(c) = self.calls.get(&key) else {
            return;
        };
        let memory = c
            .attribution
            .pool
            .map_or(CALL_MEMORY, |p| self.dir.spec(p).settings.retention);
        // The record stays on disk as the journal; only memory forgets it.
        if now >= c.started_at.saturating_add(memory) {
            self.calls.remove(&key);
        }
    }

    pub(super) fn expire_return(&mut self, key: ReturnKey, now: Timestamp, out: &mut Outbox) {
        if self.returns.get(&key).is_some_and(|r| now >= r.until) {
            self.returns.remove(&key);
            out.effects.push(Effect::DelReturn(key));
        }
    }
}

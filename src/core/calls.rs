//! Calls: who gets the credit for a call, decided from the stored history at the call's own
//! time (so a late event is answered as it would have been live), the calls still remembered
//! and the return routes they open. Pure, like the rest of the core: leases are read through
//! `&Leasing`, and what counts toward a lease is the allocator's to apply.

use std::collections::HashMap as StdMap;
use std::time::Duration;

use super::call::{Attribution, Call, CallEnd, CallStart, Reason, ReturnRoute};
use super::directory::Directory;
use super::leasing::{Claim, Hold, Leasing};
use super::outbox::Outbox;
use super::schedule::Cx;
use super::time::Timestamp;
use super::types::{
    CallId, CallKey, Code, Due, LeaseId, ListingId, PhoneNumber, ReturnKey, Target,
};
use super::{CoreError, Effect};

type HashMap<K, V> = StdMap<K, V, ahash::RandomState>;

/// How long a call stays in memory (for retried events and its `end`) when its pool is unknown.
const CALL_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Calls still remembered and return routes. Fields are private: the allocator asks through
/// methods.
#[derive(Debug, Default)]
pub(super) struct Calls {
    /// Calls still remembered (for idempotency and their `end`), by key.
    calls: HashMap<CallKey, Call>,
    returns: HashMap<ReturnKey, ReturnRoute>,
}

/// What a call's end event finds.
pub(super) enum Ending {
    /// The end was already recorded with this duration: answer the call again.
    Retried(Call),
    /// The call with its end set, to count and record.
    Fresh(Call),
}

impl Calls {
    /// Rebuilds from persisted records.
    pub(super) fn restore(calls: Vec<Call>, returns: Vec<ReturnRoute>) -> Self {
        let mut c = Calls::default();
        for call in calls {
            c.calls.insert(call.id.key(), call);
        }
        for r in returns {
            c.returns.insert(r.key, r);
        }
        c
    }

    /// Who gets a call placed at `at`, from the state as stored. Rules in order: code (unless
    /// its lease is a purchase already paid: a spent code reaches nobody),
    /// return, active, grace, caller (only on a line nobody holds); else not_leased or
    /// unknown_number (with the pool's fallback target, if any).
    pub(super) fn attribute(
        &self,
        dir: &Directory,
        leasing: &Leasing,
        called: PhoneNumber,
        caller: Option<PhoneNumber>,
        code: Option<Code>,
        at: Timestamp,
    ) -> Attribution {
        let pool = dir.pool_of_number(called);
        let Some(pool) = pool else {
            return Attribution {
                reason: Reason::UnknownNumber,
                pool: None,
                lease: None,
                target: None,
                listing: None,
            };
        };
        if dir.formula(pool).is_some() {
            return Attribution {
                reason: Reason::Ticketing,
                pool: Some(pool),
                lease: None,
                target: None,
                listing: None,
            };
        }
        let from_lease = |reason, l: Claim<'_>| Attribution {
            reason,
            pool: Some(pool),
            lease: Some(l.id),
            target: l.target.cloned(),
            listing: l.listing.cloned(),
        };
        let on_shared = dir.shared_pool(called) == Some(pool);
        if let (Some(code), true) = (code, on_shared) {
            match leasing.hold(dir, (called, Some(code)), at) {
                // A paid purchase's code is spent: whoever types it later reaches nobody by
                // it (nor by a return route or a claim: the code typed names the lease).
                Hold::Active(l) | Hold::Grace(l) if l.spent => {
                    return Attribution {
                        reason: Reason::NotLeased,
                        pool: Some(pool),
                        lease: None,
                        target: dir.spec(pool).fallback.clone(),
                        listing: None,
                    }
                }
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
        match leasing.hold(dir, (called, None), at) {
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
                if let Some(l) = caller.and_then(|c| leasing.sole_claim(pool, c, at)) {
                    return from_lease(Reason::Caller, l);
                }
            }
        }
        Attribution {
            reason: Reason::NotLeased,
            pool: Some(pool),
            lease: None,
            target: dir.spec(pool).fallback.clone(),
            listing: None,
        }
    }

    pub(super) fn call(&self, id: &CallId) -> Option<&Call> {
        self.calls.get(&id.key()).filter(|c| &c.id == id)
    }

    /// A start already recorded: the first answer again (same facts) or a conflict; `None`
    /// for a new call.
    pub(super) fn retried_start(&self, start: &CallStart) -> Result<Option<Call>, CoreError> {
        let Some(c) = self.calls.get(&start.id.key()) else {
            return Ok(None);
        };
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
        Ok(Some(c.clone()))
    }

    /// What an end event finds: a retried end (same duration) or the call with its end set;
    /// another duration is a conflict.
    pub(super) fn ending(&self, id: &CallId, end: CallEnd) -> Result<Ending, CoreError> {
        let call = self.call(id).ok_or(CoreError::UnknownCall)?;
        if let Some(prev) = call.end {
            // A retried end is answered again; its entropy is not used.
            return if prev.duration_secs == end.duration_secs {
                Ok(Ending::Retried(call.clone()))
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
        Ok(Ending::Fresh(call))
    }

    /// Records a new call and files when memory may forget it.
    pub(super) fn remember_start(&mut self, cx: &mut Cx<'_>, call: &Call, now: Timestamp) {
        let memory = call
            .attribution
            .pool
            .map_or(CALL_MEMORY, |p| cx.dir.spec(p).settings.retention);
        cx.out.effects.push(Effect::PutCall(call.clone()));
        cx.sched.at(
            now.max(call.started_at).saturating_add(memory),
            Due::Call(call.id.key()),
            cx.out,
        );
        self.calls.insert(call.id.key(), call.clone());
    }

    /// Records a call's end.
    pub(super) fn remember_end(&mut self, call: &Call, out: &mut Outbox) {
        out.effects.push(Effect::PutCall(call.clone()));
        self.calls.insert(call.id.key(), call.clone());
    }

    /// Opens a return route for `caller` on the number `call` reached, unless one is live.
    pub(super) fn open_return(
        &mut self,
        cx: &mut Cx<'_>,
        caller: PhoneNumber,
        call: &Call,
        lease: LeaseId,
        listing: ListingId,
        target: Option<Target>,
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
        let window = cx.dir.spec(pool).return_window;
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
        cx.out.effects.push(Effect::PutReturn(route.clone()));
        cx.sched.at(route.until, Due::Return(key), cx.out);
        self.returns.insert(key, route);
    }

    pub(super) fn forget_call(&mut self, dir: &Directory, key: CallKey, now: Timestamp) {
        let Some(c) = self.calls.get(&key) else {
            return;
        };
        let memory = c
            .attribution
            .pool
            .map_or(CALL_MEMORY, |p| dir.spec(p).settings.retention);
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

//! Ticketing: the Audiotel access code the other way round. Callers dial a ticketing number;
//! once they have made the pool's formula of calls, an eight-digit code is issued for the
//! voice server to read out; the site redeems it once, which may grant an access pass.
//! Pure, like the rest of the core.

use std::collections::HashMap as StdMap;

use super::directory::Directory;
use super::journal::{derived_id, EventKind, JournalEvent};
use super::outbox::Notice;
use super::schedule::Cx;
use super::ticket::{
    Entropy, Pass, PassSource, Progress, Ticket, TicketEvent, TicketEventKind, TicketingAnswer,
};
use super::time::Timestamp;
use super::types::{Due, PassId, PhoneNumber, PoolId, ProgressKey, TenantId, TicketCode, TicketId};
use super::{CoreError, Effect};

type HashMap<K, V> = StdMap<K, V, ahash::RandomState>;

/// Tickets, their codes, passes and callers' progress. Fields are private: the allocator asks
/// through methods, handing in the directory, the schedule and the outbox an operation needs.
#[derive(Debug, Default)]
pub(super) struct Ticketing {
    tickets: HashMap<TicketId, Ticket>,
    /// Codes of tickets not yet purged: a code is never reissued while it could be redeemed
    /// or answered "expired".
    ticket_codes: HashMap<TicketCode, TicketId>,
    passes: HashMap<PassId, Pass>,
    progress: HashMap<ProgressKey, Progress>,
}

impl Ticketing {
    /// Rebuilds from persisted records.
    pub(super) fn restore(
        tickets: Vec<Ticket>,
        passes: Vec<Pass>,
        progress: Vec<Progress>,
    ) -> Self {
        let mut t = Ticketing::default();
        for ticket in tickets {
            t.ticket_codes.insert(ticket.code, ticket.id);
            t.tickets.insert(ticket.id, ticket);
        }
        for p in passes {
            t.passes.insert(p.id, p);
        }
        for p in progress {
            t.progress.insert(p.key, p);
        }
        t
    }

    pub(super) fn pass(&self, id: &PassId) -> Option<&Pass> {
        self.passes.get(id)
    }

    /// Where `caller` stands in `pool`'s formula at `at`, without counting anything.
    pub(super) fn ticketing_progress(
        &self,
        dir: &Directory,
        pool: PoolId,
        caller: Option<PhoneNumber>,
        at: Timestamp,
    ) -> TicketingAnswer {
        let f = dir.formula(pool).expect("a ticketing pool");
        let done = caller
            .and_then(|c| self.progress.get(&ProgressKey { pool, caller: c }))
            .filter(|p| at.since(p.window_start) < f.window)
            .map_or(0, |p| p.calls_done);
        TicketingAnswer {
            calls_done: done,
            calls_missing: f.calls_required.saturating_sub(done),
            code: None,
            ticket: None,
        }
    }

    /// Counts one call placed at `at` toward `caller`'s formula; issues the ticket when it is
    /// complete. `entropy` is fresh randomness for the ticket's id and code.
    pub(super) fn count_ticketing(
        &mut self,
        cx: &mut Cx<'_>,
        pool: PoolId,
        caller: Option<PhoneNumber>,
        at: Timestamp,
        now: Timestamp,
        entropy: Entropy,
    ) -> TicketingAnswer {
        let f = cx.dir.formula(pool).expect("a ticketing pool").clone();
        let (done, start, fresh_window) = match caller
            .and_then(|c| self.progress.get(&ProgressKey { pool, caller: c }))
            .filter(|p| at.since(p.window_start) < f.window)
        {
            Some(p) => (p.calls_done + 1, p.window_start, false),
            None => (1, at, true),
        };
        if done >= f.calls_required {
            if let Some(c) = caller {
                let key = ProgressKey { pool, caller: c };
                if self.progress.remove(&key).is_some() {
                    cx.out.effects.push(Effect::DelProgress(key));
                }
            }
            let ticket = self.issue(cx, pool, caller, done, now, entropy);
            return TicketingAnswer {
                calls_done: done,
                calls_missing: 0,
                code: Some(ticket.code),
                ticket: Some(ticket.id),
            };
        }
        // A withheld caller cannot accumulate calls: each call stands alone.
        if let Some(c) = caller {
            let key = ProgressKey { pool, caller: c };
            let p = Progress {
                key,
                calls_done: done,
                window_start: start,
            };
            cx.out.effects.push(Effect::PutProgress(p.clone()));
            self.progress.insert(key, p);
            if fresh_window {
                cx.sched
                    .at(start.saturating_add(f.window), Due::Progress(key), cx.out);
            }
        }
        TicketingAnswer {
            calls_done: done,
            calls_missing: f.calls_required - done,
            code: None,
            ticket: None,
        }
    }

    fn issue(
        &mut self,
        cx: &mut Cx<'_>,
        pool: PoolId,
        caller: Option<PhoneNumber>,
        calls: u32,
        now: Timestamp,
        entropy: Entropy,
    ) -> Ticket {
        let f = cx.dir.formula(pool).expect("a ticketing pool");
        let start = (entropy.code % TicketCode::SPACE as u64) as u32;
        let code = (0..TicketCode::SPACE)
            .filter_map(|i| TicketCode::new((start + i) % TicketCode::SPACE))
            .find(|c| !self.ticket_codes.contains_key(c))
            .expect("fewer live tickets than codes");
        let ticket = Ticket {
            id: TicketId(entropy.id),
            code,
            pool,
            caller,
            issued_at: now,
            expires_at: now.saturating_add(f.code_ttl),
            calls,
            redeemed_at: None,
            pass: None,
            expiry_noted: false,
            price: f.price.clone(),
        };
        self.ticket_codes.insert(code, ticket.id);
        self.tickets.insert(ticket.id, ticket.clone());
        cx.out.effects.push(Effect::PutTicket(ticket.clone()));
        cx.out.effects.push(Effect::TicketEvent(TicketEvent {
            kind: TicketEventKind::Issued,
            at: now,
            ticket: ticket.clone(),
        }));
        cx.out.notices.push(Notice::TicketIssued {
            pool,
            ticket: ticket.id,
        });
        cx.sched
            .at(ticket.expires_at, Due::Ticket(ticket.id), cx.out);
        ticket
    }

    /// Redeems an access code once, for a site allowed on the ticket's pool. Grants a pass
    /// when the pool has an `access_ttl`.
    pub(super) fn redeem_ticket(
        &mut self,
        cx: &mut Cx<'_>,
        code: TicketCode,
        tenant: &TenantId,
        allowed: impl Fn(PoolId) -> bool,
        now: Timestamp,
        pass_id: PassId,
    ) -> Result<(Ticket, Option<Pass>), CoreError> {
        let id = *self
            .ticket_codes
            .get(&code)
            .ok_or(CoreError::UnknownTicket)?;
        let t = &self.tickets[&id];
        if !allowed(t.pool) {
            return Err(CoreError::UnknownTicket);
        }
        if t.redeemed_at.is_some() {
            return Err(CoreError::AlreadyRedeemed);
        }
        if now >= t.expires_at {
            return Err(CoreError::TicketExpired);
        }
        let pool = t.pool;
        let pass = self.grant(cx, pool, tenant, PassSource::Ticket(id), now, pass_id);
        let t = self.tickets.get_mut(&id).expect("just seen");
        t.redeemed_at = Some(now);
        t.pass = pass.as_ref().map(|p| p.id);
        let t = t.clone();
        cx.out.effects.push(Effect::PutTicket(t.clone()));
        cx.out.effects.push(Effect::TicketEvent(TicketEvent {
            kind: TicketEventKind::Redeemed,
            at: now,
            ticket: t.clone(),
        }));
        cx.out.notices.push(Notice::TicketRedeemed {
            ticket: id,
            tenant: tenant.clone(),
        });
        let retention = cx.dir.spec(pool).settings.retention;
        cx.sched
            .at(now.saturating_add(retention), Due::Ticket(id), cx.out);
        Ok((t, pass))
    }

    /// Creates a pass for a paid purchase if the pool grants access for a period.
    pub(super) fn grant(
        &mut self,
        cx: &mut Cx<'_>,
        pool: PoolId,
        tenant: &TenantId,
        source: PassSource,
        now: Timestamp,
        id: PassId,
    ) -> Option<Pass> {
        let access = cx.dir.spec(pool).access_ttl;
        if access.is_zero() {
            return None;
        }
        let pass = Pass {
            id,
            pool,
            tenant: tenant.clone(),
            source,
            created_at: now,
            access_until: now.saturating_add(access),
            revoked_at: None,
        };
        self.passes.insert(id, pass.clone());
        cx.out.effects.push(Effect::PutPass(pass.clone()));
        cx.sched
            .at(Self::pass_purge_at(cx.dir, &pass), Due::Pass(id), cx.out);
        Some(pass)
    }

    /// Ends a pass now (refund, abuse); only its tenant may.
    pub(super) fn revoke_pass(
        &mut self,
        cx: &mut Cx<'_>,
        id: &PassId,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<Pass, CoreError> {
        let pass = self
            .passes
            .get_mut(id)
            .filter(|p| &p.tenant == tenant)
            .ok_or(CoreError::UnknownPass)?;
        if pass.revoked_at.is_none() {
            pass.revoked_at = Some(now);
            let pass = pass.clone();
            cx.out.effects.push(Effect::PutPass(pass.clone()));
            cx.out.notices.push(Notice::PassRevoked { pass: *id });
            let lease = match pass.source {
                PassSource::Lease(l) => Some(l),
                PassSource::Ticket(_) => None,
            };
            cx.out.effects.push(Effect::JournalEvent(JournalEvent {
                id: derived_id(pass.id.0, EventKind::PassRevoked),
                kind: EventKind::PassRevoked,
                at: now,
                pool: pass.pool,
                tenant: pass.tenant.clone(),
                lease,
                pass: Some(pass.id),
                listing: None,
                amount: None,
                currency: None,
                note: None,
            }));
            cx.sched
                .at(Self::pass_purge_at(cx.dir, &pass), Due::Pass(*id), cx.out);
        }
        Ok(self.passes[id].clone())
    }

    fn pass_purge_at(dir: &Directory, p: &Pass) -> Timestamp {
        let retention = dir.spec(p.pool).settings.retention;
        p.revoked_at
            .map_or(p.access_until, |r| r.min(p.access_until))
            .saturating_add(retention)
    }

    pub(super) fn advance_ticket(&mut self, cx: &mut Cx<'_>, id: TicketId, now: Timestamp) {
        let Some(t) = self.tickets.get(&id) else {
            return;
        };
        let retention = cx.dir.spec(t.pool).settings.retention;
        let purge_at = t
            .redeemed_at
            .unwrap_or(t.expires_at)
            .saturating_add(retention);
        if now >= purge_at {
            let t = self.tickets.remove(&id).expect("just seen");
            self.ticket_codes.remove(&t.code);
            cx.out.effects.push(Effect::DelTicket(id));
            return;
        }
        if t.redeemed_at.is_none() && now >= t.expires_at && !t.expiry_noted {
            let t = self.tickets.get_mut(&id).expect("just seen");
            t.expiry_noted = true;
            let t = t.clone();
            cx.out.effects.push(Effect::PutTicket(t.clone()));
            cx.out.effects.push(Effect::TicketEvent(TicketEvent {
                kind: TicketEventKind::Expired,
                at: t.expires_at,
                ticket: t,
            }));
            cx.sched.at(purge_at, Due::Ticket(id), cx.out);
        }
    }

    pub(super) fn advance_pass(&mut self, cx: &mut Cx<'_>, id: PassId, now: Timestamp) {
        if let Some(p) = self.passes.get(&id) {
            if now >= Self::pass_purge_at(cx.dir, p) {
                self.passes.remove(&id);
                cx.out.effects.push(Effect::DelPass(id));
            }
        }
    }

    pub(super) fn advance_progress(&mut self, cx: &mut Cx<'_>, key: ProgressKey, now: Timestamp) {
        let Some(f) = cx.dir.formula(key.pool) else {
            // The pool no longer sells by formula: its progress can never complete.
            if self.progress.remove(&key).is_some() {
                cx.out.effects.push(Effect::DelProgress(key));
            }
            return;
        };
        let window = f.window;
        if self
            .progress
            .get(&key)
            .is_some_and(|p| now >= p.window_start.saturating_add(window))
        {
            self.progress.remove(&key);
            cx.out.effects.push(Effect::DelProgress(key));
        }
    }
}

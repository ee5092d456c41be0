//! From what a core operation did to the deliveries it causes: each notice (and the ticket
//! event it names) becomes at most one event, with the same object the API shows for it,
//! fanned out to every endpoint that takes its type and may see its tenant. Called by the
//! service under the core's lock, so the objects are as the operation left them; the store
//! writes the deliveries in the operation's own batch.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;

use super::{Endpoint, EventType};
use crate::core::{
    Allocator, Effect, Notice, Outbox, PoolId, TenantId, TicketEvent, TicketEventKind, TicketId,
    Timestamp,
};
use crate::http::wire::{self, JournalRow, LeaseBody, PassBody, PoolBody, TicketBody};
use crate::service::{self, PoolView, TicketView};
use crate::store::{CallRow, Delivery, DeliveryId, JournalRow as StoredRow};

/// `pool.exhausted` is sent at most this often per pool: a pool turning visitors away does so
/// many times a second.
pub const EXHAUSTED_EVERY: Duration = Duration::from_secs(60);

/// Which endpoints get what.
pub struct Router {
    endpoints: Vec<Endpoint>,
    /// When each pool last sent `pool.exhausted` (in memory: a restart may send one early).
    exhausted: Mutex<HashMap<PoolId, Timestamp>>,
}

/// The body posted: `{id, type, created_at, data}`, in that order.
#[derive(Serialize)]
struct Payload<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    created_at: String,
    data: serde_json::Value,
}

impl Router {
    pub fn new(endpoints: Vec<Endpoint>) -> Router {
        Router {
            endpoints,
            exhausted: Mutex::new(HashMap::new()),
        }
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The deliveries caused by what `out` holds, created at `now`.
    pub fn derive(&self, core: &Allocator, out: &Outbox, now: Timestamp) -> Vec<Delivery> {
        let mut sent = Vec::new();
        if self.endpoints.is_empty() {
            return sent;
        }
        let mut emit = |kind: EventType, tenant: Option<&TenantId>, data: &dyn Fn() -> Data| {
            let wanted: Vec<&Endpoint> = self
                .endpoints
                .iter()
                .filter(|e| e.takes(kind) && e.tenant.as_ref().is_none_or(|t| Some(t) == tenant))
                .collect();
            if wanted.is_empty() {
                return;
            }
            let mut event = [0u8; 16];
            event[..8].copy_from_slice(&now.as_millis().to_be_bytes());
            rand::thread_rng().fill(&mut event[8..]);
            let head = (hex::encode(event), kind.as_str(), wire::rfc3339(now));
            let Some(body) = data().body(head) else {
                return;
            };
            for e in wanted {
                let id = DeliveryId::new(event, e.tag());
                sent.push(Delivery::new(id, &e.name, kind.as_str(), now, body.clone()));
            }
        };
        let lease = |id| core.lease(id);
        for n in &out.notices {
            match n {
                Notice::Ended {
                    lease: id, reason, ..
                } => {
                    let kind = match reason {
                        crate::core::EndReason::Expired => EventType::LeaseExpired,
                        crate::core::EndReason::Released => EventType::LeaseReleased,
                    };
                    if let Some(l) = lease(id) {
                        emit(kind, Some(&l.tenant), &|| lease_data(core, id, now));
                    }
                }
                Notice::Paid { lease: id } | Notice::Redeemed { lease: id } => {
                    let kind = match n {
                        Notice::Paid { .. } => EventType::LeasePaid,
                        _ => EventType::LeaseRedeemed,
                    };
                    if let Some(l) = lease(id) {
                        emit(kind, Some(&l.tenant), &|| lease_data(core, id, now));
                    }
                }
                Notice::CallStarted { lease: id, call }
                | Notice::CallEnded {
                    lease: id, call, ..
                } => {
                    let kind = match n {
                        Notice::CallStarted { .. } => EventType::CallStarted,
                        _ => EventType::CallEnded,
                    };
                    if let Some(l) = lease(id) {
                        emit(kind, Some(&l.tenant), &|| match core.call(call) {
                            Some(c) => Data::of(JournalRow::new(&StoredRow::Call(CallRow {
                                pool: c
                                    .attribution
                                    .pool
                                    .map(|p| core.directory().name(p).to_owned()),
                                call: c.clone(),
                                caller_hash: None,
                            }))),
                            None => Data::None,
                        });
                    }
                }
                Notice::TicketIssued { ticket, .. } => {
                    emit(EventType::TicketIssued, None, &|| {
                        ticket_data(core, out, ticket, TicketEventKind::Issued, now)
                    });
                }
                Notice::TicketRedeemed { ticket, tenant } => {
                    emit(EventType::TicketRedeemed, Some(tenant), &|| {
                        ticket_data(core, out, ticket, TicketEventKind::Redeemed, now)
                    });
                }
                Notice::PassRevoked { pass } => {
                    if let Some(p) = core.pass(pass) {
                        emit(EventType::PassRevoked, Some(&p.tenant), &|| {
                            Data::of(PassBody::from(&service::pass_view(core, p.clone(), now)))
                        });
                    }
                }
                Notice::Exhausted { pool } => {
                    if self.exhausted_due(*pool, now) {
                        emit(EventType::PoolExhausted, None, &|| {
                            Data::of(PoolBody::new(
                                &PoolView {
                                    name: core.directory().name(*pool).to_owned(),
                                    stats: core.pool_stats(*pool),
                                    capacity: core
                                        .capacity(*pool, crate::core::DEFAULT_BLOCKING, now)
                                        .ok(),
                                },
                                core.directory().spec(*pool),
                            ))
                        });
                    }
                }
                Notice::Attributed { .. } | Notice::Purged { .. } | Notice::Charged { .. } => {}
            }
        }
        sent
    }

    /// Whether `pool.exhausted` may be sent for `pool` now (and, if so, notes that it is).
    fn exhausted_due(&self, pool: PoolId, now: Timestamp) -> bool {
        let mut last = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&pool) {
            Some(t) if now < t.saturating_add(EXHAUSTED_EVERY) => false,
            _ => {
                last.insert(pool, now);
                true
            }
        }
    }
}

/// An event's `data`, serialised once.
enum Data {
    Json(serde_json::Value),
    None,
}

impl Data {
    fn of(v: impl Serialize) -> Data {
        serde_json::to_value(v).map_or(Data::None, Data::Json)
    }

    /// The posted body: `{id, type, created_at, data}`.
    fn body(self, (id, kind, created_at): (String, &str, String)) -> Option<Vec<u8>> {
        let Data::Json(data) = self else {
            return None;
        };
        serde_json::to_vec(&Payload {
            id,
            kind,
            created_at,
            data,
        })
        .ok()
    }
}

/// A lease as its tenant's `GET /v1/leases/{id}` shows it.
fn lease_data(core: &Allocator, id: &crate::core::LeaseId, now: Timestamp) -> Data {
    match core.lease(id) {
        Some(l) => Data::of(LeaseBody::new(&service::view(core, l, now), true)),
        None => Data::None,
    }
}

/// A ticket as the redeem answer shows it, from the ticket event the operation journaled.
fn ticket_data(
    core: &Allocator,
    out: &Outbox,
    id: &TicketId,
    kind: TicketEventKind,
    now: Timestamp,
) -> Data {
    let ticket = out.effects.iter().find_map(|e| match e {
        Effect::TicketEvent(TicketEvent {
            kind: k, ticket, ..
        }) if *k == kind && ticket.id == *id => Some(ticket),
        _ => None,
    });
    let Some(t) = ticket else {
        return Data::None;
    };
    let view = TicketView {
        pool: core.directory().name(t.pool).to_owned(),
        formula: core.formula(t.pool).cloned(),
        pass: t
            .pass
            .and_then(|p| core.pass(&p))
            .map(|p| service::pass_view(core, p.clone(), now)),
        ticket: t.clone(),
    };
    Data::of(TicketBody::from(&view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::{AllocateRequest, CoreError, LeaseId, SessionId};

    const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);

    /// A one-number pool and `hooks` (`[[webhook]]` sections).
    fn setup(hooks: &str) -> (Allocator, Router) {
        let text = format!("[[pool]]\nname = \"p\"\nnumbers = [\"+33899100000\"]\n{hooks}");
        let c = Config::parse(&text, std::path::Path::new("/tmp")).unwrap();
        let core = Allocator::new(c.pools.iter().map(|p| p.spec.clone()).collect()).unwrap();
        (core, Router::new(c.webhooks))
    }

    fn hook(name: &str, events: &str, tenant: &str) -> String {
        format!("[[webhook]]\nname = \"{name}\"\nurl = \"https://h.example.com/\"\nsecret = \"whsec_0123456789abcdef\"\nevents = [{events}]\n{tenant}\n")
    }

    fn allocate(
        core: &mut Allocator,
        tenant: &str,
        n: u8,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<LeaseId, CoreError> {
        let req = AllocateRequest {
            tenant: TenantId::parse(tenant).unwrap(),
            pool: PoolId(0),
            session: SessionId::parse(&format!("s{n}")).unwrap(),
            listing: None,
            target: None,
            caller: None,
            ttl: None,
            calls_required: 1,
            min_call_secs: 0,
            from_page: false,
            amount: None,
            with_code: false,
        };
        core.allocate(req, now, LeaseId::from_bytes([n; 16]), out)
            .map(|a| a.lease.id)
    }

    #[test]
    fn an_event_goes_to_every_endpoint_that_takes_it_and_may_see_its_tenant() {
        let hooks = [
            hook("mine", "\"lease.released\"", "tenant = \"site-a\""),
            hook("theirs", "\"lease.released\"", "tenant = \"site-b\""),
            hook("ops", "\"lease.released\", \"call.ended\"", ""),
            hook("calls", "\"call.ended\"", ""),
        ]
        .concat();
        let (mut core, router) = setup(&hooks);
        let mut out = Outbox::new();
        let id = allocate(&mut core, "site-a", 1, T0, &mut out).unwrap();
        assert!(
            router.derive(&core, &out, T0).is_empty(),
            "nobody takes allocations"
        );
        let mut out = Outbox::new();
        core.release(&id, T0, &mut out).unwrap();
        let sent = router.derive(&core, &out, T0);
        let to: Vec<&str> = sent.iter().map(|d| d.endpoint.as_str()).collect();
        assert_eq!(to, ["mine", "ops"]);
        // One event: one id and one body for both endpoints, one delivery id each.
        assert_eq!(sent[0].id.event(), sent[1].id.event());
        assert_ne!(sent[0].id, sent[1].id);
        assert_eq!(sent[0].body, sent[1].body);
        let v: serde_json::Value = serde_json::from_slice(&sent[0].body).unwrap();
        assert_eq!(v["type"], "lease.released");
        assert_eq!(v["id"], hex::encode(sent[0].id.event()));
        assert_eq!(v["data"]["lease_id"], id.to_string());
        assert_eq!(v["created_at"], "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn pool_exhausted_is_sent_at_most_once_a_minute_per_pool() {
        let (mut core, router) = setup(&hook("ops", "\"pool.exhausted\"", ""));
        let mut out = Outbox::new();
        allocate(&mut core, "t", 1, T0, &mut out).unwrap();
        let exhausted = |core: &mut Allocator, n: u8, now: Timestamp| {
            let mut out = Outbox::new();
            assert!(allocate(core, "t", n, now, &mut out).is_err());
            router.derive(core, &out, now).len()
        };
        assert_eq!(exhausted(&mut core, 2, T0), 1);
        assert_eq!(
            exhausted(&mut core, 3, T0.saturating_add(Duration::from_secs(59))),
            0
        );
        assert_eq!(
            exhausted(&mut core, 4, T0.saturating_add(Duration::from_secs(60))),
            1
        );
    }
}

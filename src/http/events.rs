//! `GET /v1/leases/{id}/events`: a lease's live events as Server-Sent Events, so a page can
//! show the calls still missing. The lease id authorises; `Last-Event-ID` replays what a
//! reconnecting client missed (from this process's memory of recent events). Open streams
//! are capped per lease and per client address: each one is woken for every lease event of
//! the process, so thousands held by one client would tax every call.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::site::ClientIp;
use super::AppState;
use crate::config::LimitsConfig;
use crate::core::LeaseId;
use crate::limits::Limit;
use crate::metrics::Metrics;

/// When a refused stream should try again: streams end when their page goes away.
const STREAM_RETRY_SECS: u64 = 30;

/// Open event streams per lease and per client address, each capped.
pub struct StreamLimits {
    per_lease: u32,
    per_ip: u32,
    open: Mutex<OpenStreams>,
}

#[derive(Default)]
struct OpenStreams {
    leases: HashMap<LeaseId, u32>,
    ips: HashMap<String, u32>,
}

/// One open stream, counted until dropped (with the stream).
struct StreamSlot {
    limits: Arc<StreamLimits>,
    lease: LeaseId,
    ip: String,
}

impl StreamLimits {
    pub fn new(c: &LimitsConfig) -> Self {
        StreamLimits {
            per_lease: c.event_streams_per_lease,
            per_ip: c.event_streams_per_ip,
            open: Mutex::new(OpenStreams::default()),
        }
    }

    fn take(self: &Arc<Self>, lease: LeaseId, ip: String) -> Result<StreamSlot, Limit> {
        let mut open = self.open.lock().expect("stream limits lock");
        let on_lease = open.leases.get(&lease).copied().unwrap_or(0);
        if on_lease >= self.per_lease {
            return Err(Limit::StreamLease);
        }
        let on_ip = open.ips.get(&ip).copied().unwrap_or(0);
        if on_ip >= self.per_ip {
            return Err(Limit::StreamIp);
        }
        open.leases.insert(lease, on_lease + 1);
        open.ips.insert(ip.clone(), on_ip + 1);
        Ok(StreamSlot {
            limits: Arc::clone(self),
            lease,
            ip,
        })
    }
}

/// One fewer for `key`; forgotten at zero.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limits.open.lock() {
            release(&mut open.leases, &self.lease);
            release(&mut open.ips, &self.ip);
        }
    }
}
use crate::service::{LeaseEvent, LeaseView};

fn snapshot(v: &LeaseView) -> Event {
    let l = &v.lease;
    Event::default().event("lease").data(
        json!({
            "lease_id": l.id.to_string(),
            "state": v.state.as_str(),
            "calls": l.calls,
            "calls_required": l.calls_required,
            "calls_missing": l.calls_required.saturating_sub(l.calls),
            "paid": l.paid(),
        })
        .to_string(),
    )
}

fn event(e: &LeaseEvent) -> Event {
    let mut data = json!({
        "lease_id": e.lease.to_string(),
        "calls": e.calls,
        "calls_required": e.calls_required,
        "calls_missing": e.calls_required.saturating_sub(e.calls),
        "paid": e.paid,
    });
    if let Some(c) = &e.call_id {
        data["call_id"] = json!(c);
    }
    if let Some(d) = e.duration_secs {
        data["duration_secs"] = json!(d);
    }
    if let Some(c) = e.counted {
        data["counted"] = json!(c);
    }
    Event::default()
        .event(e.kind.as_str())
        .id(e.id.to_string())
        .data(data.to_string())
}

/// Counts open streams for as long as it lives, in the gauge and against the caps.
struct Open {
    metrics: Arc<Metrics>,
    _slot: StreamSlot,
}

impl Open {
    fn new(metrics: Arc<Metrics>, slot: StreamSlot) -> Open {
        metrics.sse_clients.inc();
        Open {
            metrics,
            _slot: slot,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.sse_clients.dec();
    }
}

pub async fn stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ip: ClientIp,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = LeaseId::parse(&id).map_err(|_| ApiError::unknown_lease())?;
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (backlog, rx) = s.service.subscribe(&id, last_seen);
    let view = s.service.get(&id)?;
    // Counted only for leases that exist, so made-up ids fill nothing.
    let slot = s.streams.take(id, ip.address()).map_err(|limit| {
        let who = match limit {
            Limit::StreamLease => "this lease",
            _ => "this address",
        };
        s.limited(
            limit,
            "too-many-streams",
            STREAM_RETRY_SECS,
            format!("{who} has as many event streams open as it may; close one first"),
        )
    })?;
    // First the lease as it is, then what was missed, then live events as they come.
    let first: Vec<Event> = std::iter::once(snapshot(&view))
        .chain(backlog.iter().map(|e| event(e)))
        .collect();
    let service = Arc::clone(&s.service);
    let open = Open::new(Arc::clone(&s.metrics), slot);
    let closing = s.service.closing();
    let live = stream::unfold(
        (rx, service, open, closing),
        move |(mut rx, service, open, mut closing)| async move {
            loop {
                let next = tokio::select! {
                    r = rx.recv() => r,
                    // Shutdown: end the stream so the server can drain and exit.
                    _ = closing.wait_for(|c| *c) => return None,
                };
                match next {
                    Ok(e) if e.lease == id => {
                        return Some((event(&e), (rx, service, open, closing)))
                    }
                    Ok(_) => continue,
                    // Fell behind: resynchronise the page with the lease as it now is.
                    Err(RecvError::Lagged(_)) => {
                        let snap = service.get(&id).ok().map(|v| snapshot(&v))?;
                        return Some((snap, (rx, service, open, closing)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let all = stream::iter(first).chain(live).map(Ok);
    Ok(Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

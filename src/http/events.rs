//! `GET /v1/leases/{id}/events`: a lease's live events as Server-Sent Events, so a page can
//! show the calls still missing. The lease id authorises; `Last-Event-ID` replays what a
//! reconnecting client missed (from this process's memory of recent events).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::AppState;
use crate::core::LeaseId;
use crate::metrics::Metrics;
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

/// Counts open streams for as long as it lives.
struct Open(Arc<Metrics>);

impl Open {
    fn new(m: Arc<Metrics>) -> Open {
        m.sse_clients.inc();
        Open(m)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.sse_clients.dec();
    }
}

pub async fn stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = LeaseId::parse(&id).map_err(|_| ApiError::unknown_lease())?;
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (backlog, rx) = s.service.subscribe(&id, last_seen);
    let view = s.service.get(&id)?;
    // First the lease as it is, then what was missed, then live events as they come.
    let first: Vec<Event> = std::iter::once(snapshot(&view))
        .chain(backlog.iter().map(|e| event(e)))
        .collect();
    let service = Arc::clone(&s.service);
    let open = Open::new(Arc::clone(&s.metrics));
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

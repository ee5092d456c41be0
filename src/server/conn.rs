//! One client connection: hyper serves its requests while a watchdog closes it when its
//! request head is too slow or it sits idle too long, and shutdown closes it once its request
//! in progress (if any) is answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use http_body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tower::ServiceExt;

use super::io::Watched;
use crate::config::ConnectionLimits;
use crate::metrics::{Dropped, Metrics};

/// Largest request head held while it arrives: well above what the router accepts (an
/// 8 KiB URL and 16 KiB of headers), so those limits answer first with their own problems;
/// beyond, hyper answers 431 (made a problem by `io.rs`).
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What a connection is doing, which says which deadline runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for a request head since this instant: the connection opened, or the first
    /// byte of a new request arrived. `header_timeout` runs.
    Head(Instant),
    /// This many requests are being answered (their response bodies not yet all sent). No
    /// deadline here: the router's own request timeout bounds a request.
    Busy(usize),
    /// The last answer went out at this instant and nothing has arrived since.
    /// `idle_timeout` runs.
    Idle(Instant),
}

/// A connection's phase, shared by its bytes (`Watched`), its requests and its watchdog.
pub(super) struct Activity(watch::Sender<Phase>);

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity(watch::Sender::new(Phase::Head(Instant::now()))))
    }

    /// Bytes arrived: an idle connection starts a new request head.
    pub(super) fn received(&self) {
        self.0.send_if_modified(|p| match p {
            Phase::Idle(_) => {
                *p = Phase::Head(Instant::now());
                true
            }
            _ => false,
        });
    }

    pub(super) fn busy(&self) -> bool {
        matches!(*self.0.borrow(), Phase::Busy(_))
    }

    /// A request is being answered until the returned guard drops (with its response body).
    fn begin(self: &Arc<Self>) -> Answering {
        self.0.send_modify(|p| {
            *p = match *p {
                Phase::Busy(n) => Phase::Busy(n + 1),
                _ => Phase::Busy(1),
            }
        });
        Answering(Arc::clone(self))
    }

    /// A request is answered: the last one leaves the connection idle from now.
    fn end(&self) {
        self.0.send_modify(|p| {
            *p = match *p {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Idle(Instant::now()),
            }
        });
    }

    /// Resolves when the running deadline passes, with the reason.
    async fn expired(&self, limits: ConnectionLimits) -> Dropped {
        let mut rx = self.0.subscribe();
        loop {
            let phase = *rx.borrow_and_update();
            let (deadline, reason) = match phase {
                Phase::Head(since) => (since + limits.header_timeout, Dropped::HeaderTimeout),
                Phase::Idle(since) => (since + limits.idle_timeout, Dropped::IdleTimeout),
                Phase::Busy(_) => {
                    // The sender lives as long as this connection.
                    let _ = rx.changed().await;
                    continue;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return reason,
                _ = rx.changed() => {}
            }
        }
    }
}

/// One request being answered; dropped with its response body, or with the request if the
/// connection goes away first.
struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its request counted as in progress until it is sent (or
/// dropped): an event stream keeps its connection busy, never idle.
struct Tracked {
    body: Body,
    _answering: Answering,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Counts the connection in `leaseline_http_connections` while it is open.
struct Open(Arc<Metrics>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// Serves one connection until the client leaves, a deadline passes, or shutdown (`stop`)
/// closes it. Holding `_slots` counts it against `max_connections` and its address's and
/// network's caps.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    app: super::Routes,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    _slots: (OwnedSemaphorePermit, Option<super::ClientSlot>),
) {
    metrics.connections.inc();
    let _open = Open(Arc::clone(&metrics));
    let activity = Activity::new();
    let io = TokioIo::new(Watched::new(
        stream,
        Arc::clone(&activity),
        Arc::clone(&metrics),
    ));
    let answering = Arc::clone(&activity);
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let guard = answering.begin();
        let mut req = req.map(Body::new);
        // The client's address, as `axum::serve` would give it (per-address limits use it).
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.read().unwrap_or_else(|p| p.into_inner()).clone();
        async move {
            let res = app.oneshot(req).await.unwrap_or_else(|e| match e {});
            Ok::<_, Infallible>(res.map(|body| Tracked {
                body,
                _answering: guard,
            }))
        }
    });
    let conn = http1::Builder::new()
        // Head and idle deadlines are kept here, by the watchdog (hyper's own header timer
        // needs a timer set and would also run while a connection is idle).
        .header_read_timeout(None)
        // A head may not grow past this in memory (hyper's default is 400 KiB): with
        // thousands of connections, that is the difference between megabytes and gigabytes.
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let expired = activity.expired(limits);
    tokio::pin!(expired);
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            reason = &mut expired => {
                metrics.connections_dropped.with_label_values(&[reason.as_str()]).inc();
                tracing::debug!(reason = reason.as_str(), "closing a connection");
                return;
            }
            _ = stop.changed(), if !draining => {
                // Shutting down: a connection between requests (or still sending a head)
                // is closed now; one answering a request closes once it is answered.
                if !activity.busy() {
                    return;
                }
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

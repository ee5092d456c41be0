//! The connection layer: accepts TCP connections and bounds what clients can hold — how many
//! connections at once, how long a request head may take, how long a connection may sit
//! idle, how long shutdown waits — and hands each request to the router (HTTP/1.1 by hyper).
//!
//! `conn.rs` serves one connection and closes it at its deadline; `io.rs` watches its bytes
//! (the deadlines' clock) and gives hyper's own bare error answers a problem+json body.
//! **Invariant:** this layer knows nothing of routes or the service; it answers by itself
//! only through [`ApiError::to_http1`], so every answer is still one problem mapping.

mod conn;
mod io;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;

/// The router requests go to, swapped whole by a reload: each request takes the current one,
/// so one on a connection opened before a reload already sees the new keys.
pub type Routes = Arc<std::sync::RwLock<Router>>;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::ConnectionLimits;
use crate::http::ApiError;
use crate::limits::{prefix_of, Cidr};
use crate::metrics::{Dropped, Metrics};

/// Connections over the cap that may be answered 503 at the same time; beyond, a new
/// connection is closed without a word. Each lives at most [`OVERFLOW_ANSWER_TIME`].
const OVERFLOW_ANSWERS: usize = 64;
const OVERFLOW_ANSWER_TIME: Duration = Duration::from_secs(1);
/// File descriptors kept for everything but client connections: the store, the listener,
/// logs, over-capacity answers.
const RESERVED_FILES: u64 = 128 + OVERFLOW_ANSWERS as u64;

/// Connections held per client address and per address prefix (/24, /56), for
/// `max_connections_per_ip` and `max_connections_per_prefix` (0: no cap).
struct Clients {
    per_ip: usize,
    per_prefix: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    ips: HashMap<IpAddr, usize>,
    prefixes: HashMap<Cidr, usize>,
}

/// One connection counted against its address and prefix until dropped.
pub(super) struct ClientSlot {
    clients: Arc<Clients>,
    ip: IpAddr,
    prefix: Cidr,
}

impl Clients {
    /// A slot for one more connection from `ip`, or why not: its address, or its network,
    /// holds its share already.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<ClientSlot, Refusal> {
        let prefix = prefix_of(ip);
        let mut held = self.held.lock().expect("per-address lock");
        let on_ip = held.ips.get(&ip).copied().unwrap_or(0);
        if self.per_ip > 0 && on_ip >= self.per_ip {
            return Err(Refusal::PerIp);
        }
        let on_prefix = held.prefixes.get(&prefix).copied().unwrap_or(0);
        if self.per_prefix > 0 && on_prefix >= self.per_prefix {
            return Err(Refusal::PerPrefix);
        }
        held.ips.insert(ip, on_ip + 1);
        held.prefixes.insert(prefix, on_prefix + 1);
        Ok(ClientSlot {
            clients: Arc::clone(self),
            ip,
            prefix,
        })
    }
}

/// One fewer for `key`; forgotten at zero, so the maps hold only addresses with connections.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.clients.held.lock().expect("per-address lock");
        release(&mut held.ips, &self.ip);
        release(&mut held.prefixes, &self.prefix);
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets requests
/// in progress finish for at most `drain_timeout`, and closes every connection left.
/// Connections from one address beyond `max_connections_per_ip`, or from one /24 or /56
/// beyond `max_connections_per_prefix`, get an immediate 429, but from `trusted` proxies,
/// which carry many clients.
pub async fn serve(
    listener: TcpListener,
    app: Routes,
    limits: ConnectionLimits,
    trusted: Arc<Vec<Cidr>>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let cap = connection_cap(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_ANSWERS));
    let full = AtomicBool::new(false);
    let clients = Arc::new(Clients {
        per_ip: limits.max_connections_per_ip,
        per_prefix: limits.max_connections_per_prefix,
        held: Mutex::new(Held::default()),
    });
    let capped = limits.max_connections_per_ip > 0 || limits.max_connections_per_prefix > 0;
    let warned_per_ip = AtomicBool::new(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close rather
                    // than spin.
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ip = peer.ip().to_canonical();
        let ip_slot = if !capped || trusted.iter().any(|c| c.contains(ip)) {
            None
        } else {
            match clients.take(ip) {
                Ok(s) => Some(s),
                Err(why) => {
                    if !warned_per_ip.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            max_connections_per_ip = limits.max_connections_per_ip,
                            max_connections_per_prefix = limits.max_connections_per_prefix,
                            "an address or its network holds as many connections as it may: its new connections get 429 (logged once; if it is a proxy of yours, list it in [server] trusted_proxies)"
                        );
                    }
                    refuse(stream, why, &overflow, &metrics);
                    continue;
                }
            }
        };
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                full.store(false, Ordering::Relaxed);
                conns.spawn(conn::serve(
                    stream,
                    peer,
                    Arc::clone(&app),
                    limits,
                    Arc::clone(&metrics),
                    stop_rx.clone(),
                    (slot, ip_slot),
                ));
            }
            Err(_) => {
                if !full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        max_connections = cap,
                        "connection cap reached: new connections get 503 until some close"
                    );
                }
                refuse(stream, Refusal::OverCapacity, &overflow, &metrics);
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            drain_timeout_ms = limits.drain_timeout.as_millis() as u64,
            "closing connections still open after the drain timeout"
        );
        metrics
            .connections_dropped
            .with_label_values(&[Dropped::DrainTimeout.as_str()])
            .inc_by(conns.len() as u64);
        conns.shutdown().await;
    }
}

/// Why a connection is refused as soon as it is accepted.
#[derive(Clone, Copy)]
enum Refusal {
    /// `max_connections` are open: 503.
    OverCapacity,
    /// Its address holds `max_connections_per_ip`: 429.
    PerIp,
    /// Its /24 or /56 holds `max_connections_per_prefix`: 429.
    PerPrefix,
}

impl Refusal {
    /// The `route` label its answer is counted under.
    fn route(self) -> &'static str {
        match self {
            Refusal::OverCapacity => "over_capacity",
            Refusal::PerIp => "per_ip",
            Refusal::PerPrefix => "per_prefix",
        }
    }

    fn dropped(self) -> Dropped {
        match self {
            Refusal::OverCapacity => Dropped::OverCapacity,
            Refusal::PerIp => Dropped::PerIp,
            Refusal::PerPrefix => Dropped::PerPrefix,
        }
    }

    fn problem(self) -> ApiError {
        let problem = match self {
            Refusal::OverCapacity => ApiError::from_status(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server has as many connections open as it serves at once; retry shortly",
            ),
            Refusal::PerIp => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-connections",
                "this address has as many connections open as one address may; reuse one, or retry when one closes",
            ),
            Refusal::PerPrefix => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-connections",
                "this network (/24 or /56) has as many connections open as one network may; retry when one closes",
            ),
        };
        ApiError {
            retry_after: Some(1),
            ..problem
        }
    }
}

/// Counts a refused connection and answers it (at most [`OVERFLOW_ANSWERS`] at once; beyond,
/// it is closed without a word).
fn refuse(stream: TcpStream, why: Refusal, overflow: &Arc<Semaphore>, metrics: &Arc<Metrics>) {
    metrics
        .connections_dropped
        .with_label_values(&[why.dropped().as_str()])
        .inc();
    match Arc::clone(overflow).try_acquire_owned() {
        Ok(permit) => {
            let metrics = Arc::clone(metrics);
            tokio::spawn(async move {
                answer_at_once(stream, why, &metrics).await;
                drop(permit);
            });
        }
        Err(_) => drop(stream),
    }
}

/// Answers a refused connection with its problem at once, without reading the request, then
/// lets the client's bytes drain briefly so closing does not reset the connection before the
/// client reads the answer.
async fn answer_at_once(mut stream: TcpStream, why: Refusal, metrics: &Metrics) {
    let started = Instant::now();
    let request_id = crate::http::new_request_id();
    let request_id = request_id.to_str().expect("hex");
    let problem = why.problem();
    let status = problem.status;
    let answer = problem.to_http1(request_id);
    let _ = tokio::time::timeout(OVERFLOW_ANSWER_TIME, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    // Counted, not logged one by one: a flood of these would flood the logs (the cap being
    // reached is logged once).
    metrics
        .http_duration
        .with_label_values(&[why.route(), "-", status.as_str()])
        .observe(started.elapsed().as_secs_f64());
}

/// `max_connections`, lowered if the process may not open that many files: the cap must be
/// reached before the open-file limit, or accepting fails and nothing answers at all. The
/// soft limit is raised to the hard one first, as servers commonly do.
fn connection_cap(configured: usize) -> usize {
    let Some(files) = open_files_limit() else {
        return configured;
    };
    let room = files.saturating_sub(RESERVED_FILES).max(1);
    if (configured as u64) <= room {
        return configured;
    }
    tracing::warn!(
        max_connections = configured,
        open_files_limit = files,
        serving = room,
        "max_connections lowered to fit the open-file limit (ulimit -n); raise that limit to serve more"
    );
    room as usize
}

#[cfg(unix)]
fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    // rlim_t is u64 on Linux, but not on every unix.
    #[allow(clippy::unnecessary_cast)]
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur as u64)
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

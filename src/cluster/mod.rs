//! High availability on etcd (`[cluster]`): instances elect one leader through an etcd lease
//! and key; the leader loads the state from etcd, serves everything and writes every round
//! through [`EtcdStore`] (fenced by its key's create revision); a standby answers
//! `503 not-leader` with `Leaseline-Leader`, and campaigns until the leader's lease lapses.
//!
//! A node steps down (back to standby, its core dropped) when it cannot renew its lease
//! before it runs out, or when a write finds it deposed or fails: the state in etcd is the
//! truth, and a node leading again reloads it. Between the last renewal's deadline passing and
//! the step-down, [`Leadership::leading`] already refuses every request, reads included, so a
//! paused node resumed after its lease lapsed answers nothing but 503.

pub mod config;

pub use config::{validate, ClusterConfig, RawCluster};

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::Config;
use crate::core::{Directory, TICK_MS};
use crate::http::{router, ApiError};
use crate::metrics::Metrics;
use crate::store::etcd::client::{Client, Compare, Op};
use crate::store::etcd::{EtcdStore, Mirror, Space};
use crate::store::{Backend, Storage};

/// The header a standby names the leader in.
pub const LEADER_HEADER: &str = "leaseline-leader";

/// This node's hold on the leadership: valid until the last renewal's deadline, unless lost.
pub struct Leadership {
    lost: AtomicBool,
    /// When the lease runs out at the latest, by the last renewal etcd answered (counted from
    /// when the renewal was sent, so never later than etcd's own deadline).
    until: Mutex<Instant>,
}

impl Leadership {
    pub fn leading(&self) -> bool {
        !self.lost.load(Ordering::Acquire)
            && Instant::now() < *self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }
}

/// What a node knows of the cluster, shared with its HTTP answers.
struct Node {
    cluster: ClusterConfig,
    client: Arc<Client>,
    /// The leader's advertise URL, as last read from etcd (empty: unknown).
    leader: RwLock<String>,
    stop: AtomicBool,
}

impl Node {
    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.cluster.prefix).into_bytes()
    }

    fn leader_url(&self) -> String {
        self.leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One try at the leader key: `Some((lease, fence))` when this node now holds it.
    fn try_lead(&self, lease: i64) -> anyhow::Result<Option<i64>> {
        let key = self.key("leader");
        let r = self.client.txn(
            &[Compare::CreateRevision(key.clone(), 0)],
            &[Op::Put {
                key: key.clone(),
                value: self.cluster.advertise.clone().into_bytes(),
                lease,
            }],
            &[Op::Get { key }],
        )?;
        if r.succeeded {
            *self.leader.write().unwrap_or_else(|p| p.into_inner()) =
                self.cluster.advertise.clone();
            return Ok(Some(r.revision));
        }
        if let Some(kv) = r.read.first() {
            *self.leader.write().unwrap_or_else(|p| p.into_inner()) =
                String::from_utf8_lossy(&kv.value).into_owned();
        }
        Ok(None)
    }

    /// Campaigns until this node leads (or stops): `(lease, fence, leadership)`. Between
    /// tries, keeps `mirror` up to date with the leader's writes.
    fn campaign(&self, mirror: &mut Mirror) -> Option<(i64, i64, Arc<Leadership>)> {
        let ttl = self.cluster.lease_ttl;
        let mut lease: Option<(i64, Instant)> = None;
        let mut failing = false;
        while !self.stop.load(Ordering::Acquire) {
            let attempt = (|| -> anyhow::Result<Option<(i64, i64, Arc<Leadership>)>> {
                // A fresh lease when the last one may have run out.
                let (id, granted) = match lease {
                    Some((id, at)) if at.elapsed() < ttl / 2 => (id, at),
                    _ => {
                        let at = Instant::now();
                        let id = self.client.grant(ttl.as_secs())?;
                        lease = Some((id, at));
                        (id, at)
                    }
                };
                Ok(self.try_lead(id)?.map(|fence| {
                    let l = Arc::new(Leadership {
                        lost: AtomicBool::new(false),
                        until: Mutex::new(granted + ttl),
                    });
                    (id, fence, l)
                }))
            })();
            match attempt {
                Ok(Some(won)) => return Some(won),
                Ok(None) => {
                    if failing {
                        tracing::info!("etcd answers again");
                        failing = false;
                    }
                    if let Err(e) = mirror.refresh() {
                        tracing::debug!(error = %e, "warm copy not refreshed");
                    }
                }
                Err(e) => {
                    lease = None;
                    // Once per outage, not every 300 ms.
                    if !failing {
                        tracing::warn!(error = %e, "cannot campaign for leadership");
                    }
                    failing = true;
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        None
    }

    /// Renews `lease` every third of its ttl until it is lost or the node stops leading.
    fn keep(&self, lease: i64, l: &Leadership, done: &AtomicBool) {
        let ttl = self.cluster.lease_ttl;
        while !done.load(Ordering::Acquire) && l.leading() {
            let sent = Instant::now();
            match self.client.keep_alive(lease) {
                Ok(left) if left > 0 => {
                    *l.until.lock().unwrap_or_else(|p| p.into_inner()) = sent + ttl;
                }
                Ok(_) => {
                    tracing::error!("the leadership lease ran out: stepping down");
                    l.lose();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the leadership lease"),
            }
            std::thread::sleep(ttl / 3);
        }
    }
}

/// The answer of a node that does not lead.
fn not_leader(leader: &str) -> Response {
    // Retry-After: a failover takes about lease_ttl; a client without a load balancer may
    // also follow Leaseline-Leader at once.
    let mut r = ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-leader",
            "this node is a standby: send requests to the leader (Leaseline-Leader)",
        )
    }
    .into_response();
    if let Ok(v) = HeaderValue::from_str(leader) {
        if !leader.is_empty() {
            r.headers_mut().insert(LEADER_HEADER, v);
        }
    }
    r
}

/// A standby's routes: alive (`/healthz`), everything else `503 not-leader`.
fn standby(node: &Arc<Node>) -> Router {
    let n = Arc::clone(node);
    Router::new()
        .route(
            "/healthz",
            axum::routing::get(|| async { (StatusCode::OK, "ok\n") }),
        )
        .fallback(move || {
            let n = Arc::clone(&n);
            async move { not_leader(&n.leader_url()) }
        })
}

/// Serves `listener` as a cluster node until `shutdown`: standby, leader when elected, standby
/// again when the leadership is lost.
pub async fn run(
    config: Config,
    cluster: ClusterConfig,
    clock: Arc<dyn Clock>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let timeout = (cluster.lease_ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(2));
    let node = Arc::new(Node {
        client: Arc::new(Client::new(cluster.etcd.clone(), timeout)),
        cluster,
        leader: RwLock::new(String::new()),
        stop: AtomicBool::new(false),
    });
    let listener_addr = listener
        .local_addr()
        .context("the listener has no address")?;
    let routes: crate::server::Routes = Arc::new(RwLock::new(standby(&node)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let routes = Arc::clone(&routes);
        let trusted = Arc::new(config.server.trusted_proxies.clone());
        let n = Arc::clone(&node);
        let stop_tx = stop_tx.clone();
        tokio::spawn(crate::server::serve(
            listener,
            routes,
            config.server.connections,
            trusted,
            Arc::new(Metrics::new()),
            async move {
                shutdown.await;
                n.stop.store(true, Ordering::Release);
                let _ = stop_tx.send(true);
            },
        ))
    };
    // SIGHUP's default would end the process: a reload in cluster mode is a rolling restart
    // (standbys first), said so rather than done halfway.
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::warn!(
                    "SIGHUP: reloading pool.toml is not supported with [cluster] yet; restart \
                     the nodes one by one (standbys first) to apply a new configuration"
                );
            }
        });
    }
    tracing::info!(
        addr = %listener_addr,
        node = %node.cluster.node,
        "cluster node serving as a standby; campaigning"
    );
    while !node.stop.load(Ordering::Acquire) {
        let n = Arc::clone(&node);
        let mut mirror = Mirror::new(Space::new(Arc::clone(&node.client), &node.cluster.prefix));
        let (won, mirror) = tokio::task::spawn_blocking(move || (n.campaign(&mut mirror), mirror))
            .await
            .context("campaign task")?;
        let Some((lease, fence, leadership)) = won else {
            break;
        };
        tracing::info!(
            fence,
            warm_records = mirror.len(),
            "elected leader: catching up the warm copy from etcd"
        );
        if let Err(e) = lead(
            mirror,
            &config,
            &clock,
            &node,
            &routes,
            lease,
            fence,
            &leadership,
            stop_rx.clone(),
        )
        .await
        {
            tracing::error!(error = %format!("{e:#}"), "stepped down");
        }
        *routes.write().unwrap_or_else(|p| p.into_inner()) = standby(&node);
        leadership.lose();
        let c = Arc::clone(&node.client);
        let _ = tokio::task::spawn_blocking(move || c.revoke(lease)).await;
    }
    let _ = server.await;
    Ok(())
}

/// Leads from election to step-down (or shutdown, after which it flushes and folds).
#[allow(clippy::too_many_arguments)]
async fn lead(
    mirror: Mirror,
    config: &Config,
    clock: &Arc<dyn Clock>,
    node: &Arc<Node>,
    routes: &crate::server::Routes,
    lease: i64,
    fence: i64,
    leadership: &Arc<Leadership>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let done = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (n, l, d) = (Arc::clone(node), Arc::clone(leadership), Arc::clone(&done));
        std::thread::spawn(move || n.keep(lease, &l, &d))
    };
    let result = serve_as_leader(
        mirror, config, clock, node, routes, fence, leadership, &mut stop,
    )
    .await;
    done.store(true, Ordering::Release);
    let _ = tokio::task::spawn_blocking(move || keeper.join()).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve_as_leader(
    mirror: Mirror,
    config: &Config,
    clock: &Arc<dyn Clock>,
    node: &Arc<Node>,
    routes: &crate::server::Routes,
    fence: i64,
    leadership: &Arc<Leadership>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pools = Directory::new(config.pools.iter().map(|p| p.spec.clone()).collect())
        .context("the pools are inconsistent")?;
    let deposed = Arc::new(AtomicBool::new(false));
    let store = Arc::new(EtcdStore::new(
        Arc::clone(&node.client),
        &node.cluster.prefix,
        fence,
        Arc::clone(&pools),
        Arc::clone(&deposed),
    )?);
    store.warm_from(mirror);
    let started = Instant::now();
    let state = crate::startup::restore(
        config,
        Arc::clone(clock),
        pools,
        Arc::clone(&store) as Arc<dyn Storage>,
        Arc::clone(&store) as Arc<dyn Backend>,
        None,
    )
    .await
    .context("cannot take over")?;
    if !leadership.leading() {
        anyhow::bail!("the leadership ran out while loading");
    }
    let l = Arc::clone(leadership);
    let n = Arc::clone(node);
    let app = router(state.clone()).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let (l, n) = (Arc::clone(&l), Arc::clone(&n));
            async move {
                if l.leading() {
                    next.run(req).await
                } else {
                    not_leader(&n.leader_url())
                }
            }
        },
    ));
    *routes.write().unwrap_or_else(|p| p.into_inner()) = app;
    tracing::info!(
        load_ms = started.elapsed().as_millis() as u64,
        "leading: serving"
    );
    let mut every = tokio::time::interval(Duration::from_millis(TICK_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fold_at = Instant::now();
    let service = Arc::clone(&state.service);
    let outcome = loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => break Ok(true),
        }
        if !leadership.leading() || deposed.load(Ordering::Acquire) {
            break Err(anyhow::anyhow!("the leadership was lost"));
        }
        if let Err(e) = service.tick().await {
            // A failed write leaves nothing to trust but etcd: step down and reload.
            break Err(anyhow::anyhow!("a write failed: {e}"));
        }
        if fold_at.elapsed() >= Duration::from_secs(2) {
            fold_at = Instant::now();
            let s = Arc::clone(&store);
            match tokio::task::spawn_blocking(move || s.fold()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => break Err(anyhow::anyhow!("folding the log failed: {e}")),
                Err(e) => break Err(anyhow::anyhow!("folding task: {e}")),
            }
        }
    };
    service.begin_shutdown();
    match outcome {
        Ok(_) => {
            // Shutdown: the last traffic counts, a final flush and fold, then the lease is
            // given up (by the caller) so a standby takes over at once.
            let _ = service.tick().await;
            let svc = Arc::clone(&service);
            tokio::task::spawn_blocking(move || svc.shutdown())
                .await
                .context("final flush task")?
                .context("final flush failed")?;
            tracing::info!("stopped cleanly");
            Ok(())
        }
        Err(e) => {
            leadership.lose();
            Err(e)
        }
    }
}

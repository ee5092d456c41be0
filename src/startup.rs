//! Wiring: open the store, recover the core, start the flusher and the tick task, serve HTTP,
//! and on shutdown drain requests and flush before exit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{Config, ConnectionLimits};
use crate::core::{Allocator, Directory, TICK_MS};
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::service::Service;
use crate::store::{Backend, Committer, Policy, Storage, Store};

/// Opens the store, rebuilds the core from it and fires whatever fell due while stopped.
pub async fn build_state(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<AppState> {
    build_state_with(config, clock, |store| store).await
}

/// As [`build_state`], writing through the backend `wrap` makes of the store (tests inject
/// faults this way).
pub async fn build_state_with(
    config: &Config,
    clock: Arc<dyn Clock>,
    wrap: impl FnOnce(Arc<Store>) -> Arc<dyn Backend>,
) -> anyhow::Result<AppState> {
    let pools = Directory::new(config.pools.iter().map(|p| p.spec.clone()).collect())
        .context("the pools are inconsistent")?;
    let dir = &config.server.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
    let policy = Policy {
        after_changes: config.server.snapshot_after_changes,
        min_interval: config.server.snapshot_min_interval,
    };
    let store = Store::open_with(
        dir,
        config.server.cache_capacity,
        Arc::clone(&pools),
        policy,
    )
    .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    let store = Arc::new(store);
    let backend = wrap(Arc::clone(&store));
    restore(
        config,
        clock,
        pools,
        Arc::clone(&store) as Arc<dyn Storage>,
        backend,
        Some(store),
    )
    .await
}

/// Rebuilds the core from `storage` (sled's store, or etcd's for a new leader), starts the
/// committer writing through `backend`, and fires whatever fell due meanwhile. `hooks` is where
/// webhook deliveries live (sled only).
pub(crate) async fn restore(
    config: &Config,
    clock: Arc<dyn Clock>,
    mut pools: Arc<Directory>,
    store: Arc<dyn Storage>,
    backend: Arc<dyn Backend>,
    hooks: Option<Arc<Store>>,
) -> anyhow::Result<AppState> {
    let started = std::time::Instant::now();
    let recovered = store.load().context("cannot read the store")?;
    let read_ms = started.elapsed().as_millis() as u64;
    if recovered.orphans > 0 {
        tracing::warn!(
            records = recovered.orphans,
            "lease records of pools no longer configured are kept on disk but not served"
        );
    }
    // Numbers removed from the configuration while stopped finish the leases they hold, as
    // after a reload; then they are never leased again.
    let held = recovered.snapshot.held_unlisted(&pools);
    if !held.is_empty() {
        tracing::warn!(
            numbers = held.len(),
            "numbers no longer configured still hold leases: they finish them, then retire"
        );
        let retiring = pools.retiring(held).context("the pools are inconsistent")?;
        store.set_directory(Arc::clone(&retiring))?;
        pools = retiring;
    }
    let rewind = check_clock(&config.server, store.watermark(), clock.as_ref())?;
    let leases = recovered.snapshot.leases.len();
    let (from_snapshot, replayed) = (recovered.from_snapshot, recovered.replayed);
    let started = std::time::Instant::now();
    let core = Allocator::restore(Arc::clone(&pools), recovered.snapshot)
        .context("the store's contents are inconsistent")?;
    let rebuild_ms = started.elapsed().as_millis() as u64;
    let metrics = Arc::new(Metrics::new());
    let commit = Committer::start(backend, config.server.commit, Arc::clone(&metrics));
    let mut service = Service::new(
        core,
        store,
        commit,
        Arc::clone(&clock),
        Arc::clone(&metrics),
    )
    .with_journal_retention(config.server.journal_retention);
    if let Some(store) = hooks.filter(|_| !config.webhooks.is_empty()) {
        let hooks = crate::webhooks::Dispatcher::start(
            crate::webhooks::Router::new(config.webhooks.clone()),
            store,
            clock,
            Arc::clone(&metrics),
        )
        .context("cannot read the webhook deliveries")?;
        service = service.with_webhooks(hooks);
    }
    let service = Arc::new(service);
    if let Some(mark) = rewind {
        let ended = service
            .rewind_to(mark)
            .await
            .context("cannot end the leases the clock rewind leaves behind")?;
        tracing::warn!(
            ended,
            "leases over by the last run's time, or stamped after now, ended now"
        );
    }
    service
        .tick()
        .await
        .context("cannot settle overdue deadlines")?;
    tracing::info!(
        leases,
        from_snapshot,
        replayed,
        read_ms,
        rebuild_ms,
        "store recovered"
    );
    Ok(AppState::new(service, metrics, config))
}

/// Where a restart finds the wall clock against the last instant the store recorded (`mark`).
/// Behind by at most `max_clock_rewind`: raised to the mark (time never runs backwards, so
/// nothing expired comes back). Behind by more: refused, unless the operator accepts the wall
/// clock, in which case the mark is returned for [`Allocator::rewind_to`]. Ahead: normal, the
/// process was stopped that long.
fn check_clock(
    server: &crate::config::ServerConfig,
    mark: Option<crate::core::Timestamp>,
    clock: &dyn Clock,
) -> anyhow::Result<Option<crate::core::Timestamp>> {
    let now = clock.now();
    let Some(mark) = mark.filter(|&m| now < m) else {
        return Ok(None);
    };
    let behind = mark.since(now);
    if behind <= server.max_clock_rewind {
        tracing::warn!(
            behind_ms = behind.as_millis() as u64,
            "the wall clock is slightly behind the last time Leaseline ran; counting from that time"
        );
        clock.raise_to(mark);
        return Ok(None);
    }
    let (now_s, mark_s) = (crate::http::rfc3339(now), crate::http::rfc3339(mark));
    if !server.accept_wall_clock {
        anyhow::bail!(
            "the wall clock ({now_s}) is {} s behind the last time Leaseline ran ({mark_s}), more \
             than [server] max_clock_rewind ({} s). If the clock was ahead then and is right now, \
             start once with `leaseline serve --accept-wall-clock`; otherwise set the clock right \
             (NTP) and start again",
            behind.as_secs(),
            server.max_clock_rewind.as_secs()
        );
    }
    tracing::warn!(
        behind_s = behind.as_secs(),
        now = %now_s,
        last_run = %mark_s,
        "accepting the wall clock although it is behind the last run: no lease is revived"
    );
    Ok(Some(mark))
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    connections: ConnectionLimits,
    /// The configuration file and what it held at start, when reloads may read it again.
    reloads: Option<(std::path::PathBuf, Config)>,
}

impl Application {
    pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Application> {
        let state = build_state(config, clock).await?;
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        Ok(Application {
            listener,
            state,
            connections: config.server.connections,
            reloads: None,
        })
    }

    /// Reloads `path` (which held `config` at start) on `SIGHUP` and `POST /v1/admin/reload`.
    pub fn reloading(mut self, path: std::path::PathBuf, config: Config) -> Self {
        self.reloads = Some((path, config));
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (for at most
    /// `drain_timeout`), stops the tick task and flushes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let service = Arc::clone(&self.state.service);
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(TICK_MS));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        if let Err(e) = service.tick().await {
                            tracing::error!(error = %e, "tick failed");
                        }
                    }
                    _ = stop_rx.changed() => break,
                }
            }
        });
        tracing::info!(addr = %self.local_addr(), "serving");
        let routes: crate::server::Routes =
            Arc::new(std::sync::RwLock::new(router(self.state.clone())));
        let reloader = self.reloads.map(|(path, config)| {
            let r =
                crate::reload::Reloader::new(path, config, self.state.clone(), Arc::clone(&routes));
            tokio::spawn(r.run(stop_tx.subscribe()))
        });
        let service = Arc::clone(&self.state.service);
        let shutdown = async move {
            shutdown.await;
            service.begin_shutdown();
        };
        crate::server::serve(
            self.listener,
            routes,
            self.connections,
            Arc::clone(&self.state.trusted_proxies),
            Arc::clone(&self.state.metrics),
            shutdown,
        )
        .await;
        let _ = stop_tx.send(true);
        let _ = ticker.await;
        // One last tick writes the traffic counts changed since the previous one.
        if let Err(e) = self.state.service.tick().await {
            tracing::warn!(error = %e, "no last tick at shutdown; the last second's traffic counts are lost");
        }
        if let Some(r) = reloader {
            let _ = r.await;
        }
        self.state
            .service
            .shutdown()
            .context("final flush failed")?;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; draining");
}

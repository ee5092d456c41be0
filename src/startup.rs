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
use crate::core::{Allocator, PoolSpec, TICK_MS};
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::service::Service;
use crate::store::{Backend, Committer, Store};

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
    let specs: Vec<PoolSpec> = config.pools.iter().map(|p| p.spec.clone()).collect();
    let dir = &config.server.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
    let store = Store::open(dir, config.server.cache_capacity, &specs)
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    let started = std::time::Instant::now();
    let recovered = store.load().context("cannot read the store")?;
    let read_ms = started.elapsed().as_millis() as u64;
    if recovered.orphans > 0 {
        tracing::warn!(
            records = recovered.orphans,
            "lease records of pools no longer configured are kept on disk but not served"
        );
    }
    // Time never runs backwards across a restart: a wall clock stepped back while stopped
    // would otherwise bring expired leases back to life.
    if let Some(mark) = store.watermark() {
        if clock.now() < mark {
            tracing::warn!(
                behind_ms = mark.since(clock.now()).as_millis() as u64,
                "the wall clock is behind the last time Leaseline ran; counting from that time"
            );
            clock.raise_to(mark);
        }
    }
    let leases = recovered.snapshot.leases.len();
    let started = std::time::Instant::now();
    let core = Allocator::restore(specs.clone(), recovered.snapshot)
        .context("the store's contents are inconsistent")?;
    let rebuild_ms = started.elapsed().as_millis() as u64;
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(store);
    let commit = Committer::start(
        wrap(Arc::clone(&store)),
        config.server.commit,
        Arc::clone(&metrics),
    );
    let service = Arc::new(Service::new(
        core,
        specs,
        store,
        commit,
        clock,
        Arc::clone(&metrics),
    ));
    service
        .tick()
        .await
        .context("cannot settle overdue deadlines")?;
    tracing::info!(leases, read_ms, rebuild_ms, "store recovered");
    Ok(AppState::new(service, metrics, config))
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    connections: ConnectionLimits,
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
        })
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
        let service = Arc::clone(&self.state.service);
        let shutdown = async move {
            shutdown.await;
            service.begin_shutdown();
        };
        crate::server::serve(
            self.listener,
            router(self.state.clone()),
            self.connections,
            Arc::clone(&self.state.metrics),
            shutdown,
        )
        .await;
        let _ = stop_tx.send(true);
        let _ = ticker.await;
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

//! The service: the core behind one lock, its effects written to the store in the core's own
//! order and made durable before any answer leaves. HTTP handlers and tests call this; it
//! knows nothing of HTTP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use thiserror::Error;

use crate::clock::Clock;
use crate::core::{
    AllocateRequest, Allocator, CoreError, EndReason, Lease, LeaseId, LeaseState, PoolId,
    PoolStats, Timestamp, TICK_MS,
};
use crate::metrics::Metrics;
use crate::store::{Committer, Store, StoreError};

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An earlier write failed: until restart, in-memory state may be ahead of the disk,
    /// so nothing is served rather than something that might not survive.
    #[error("storage is unavailable after an earlier failure")]
    Unavailable,
}

/// A lease as seen at one instant, with the names the edges need.
#[derive(Clone, Debug)]
pub struct LeaseView {
    pub lease: Lease,
    pub pool: String,
    pub state: LeaseState,
}

/// One pool's counts, for `/v1/pools` and the gauges.
#[derive(Clone, Debug)]
pub struct PoolView {
    pub name: String,
    pub stats: PoolStats,
}

pub struct Service {
    core: Mutex<Allocator>,
    store: Arc<Store>,
    commit: Arc<Committer>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    failed: AtomicBool,
}

impl Service {
    pub fn new(
        core: Allocator,
        store: Arc<Store>,
        commit: Arc<Committer>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Service {
        Service {
            core: Mutex::new(core),
            store,
            commit,
            clock,
            metrics,
            failed: AtomicBool::new(false),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        self.lock().ok()?.pool_id(name)
    }

    /// Allocates, or returns the caller's live lease extended; the flag is true for a new lease.
    pub async fn allocate(&self, req: AllocateRequest) -> Result<(LeaseView, bool), ServiceError> {
        let id = LeaseId::from_bytes(rand::thread_rng().gen());
        let pool = self.lock()?.pool_spec(req.pool).name.clone();
        let res = self
            .write(|core, now| {
                let a = core.allocate(req, now, id)?;
                Ok((a.fresh, view(core, a.lease, now)))
            })
            .await;
        let outcome = match &res {
            Ok((true, _)) => "new",
            Ok((false, _)) => "sticky",
            Err(ServiceError::Core(CoreError::Exhausted { .. })) => "rejected",
            Err(_) => "error",
        };
        self.metrics
            .allocations
            .with_label_values(&[&pool, outcome])
            .inc();
        res.map(|(fresh, v)| (v, fresh))
    }

    /// The lease `id` as it stands now.
    pub fn get(&self, id: &LeaseId) -> Result<LeaseView, ServiceError> {
        let core = self.lock()?;
        let lease = core.lease(id).ok_or(CoreError::UnknownLease)?;
        Ok(view(&core, lease.clone(), self.clock.now()))
    }

    pub async fn renew(
        &self,
        id: LeaseId,
        ttl: Option<Duration>,
    ) -> Result<LeaseView, ServiceError> {
        let v = self
            .write(|core, now| {
                let lease = core.renew(&id, ttl, now)?.clone();
                Ok(view(core, lease, now))
            })
            .await?;
        self.metrics.renewals.with_label_values(&[&v.pool]).inc();
        Ok(v)
    }

    /// Ends the lease now; `owner` must be the tenant that holds it (others are told it does
    /// not exist, so lease ids of other tenants cannot be probed).
    pub async fn release(
        &self,
        id: LeaseId,
        owner: &crate::core::TenantId,
    ) -> Result<(), ServiceError> {
        self.write(|core, now| {
            match core.lease(&id) {
                Some(l) if &l.tenant == owner => {}
                _ => return Err(CoreError::UnknownLease),
            }
            core.release(&id, now).map(drop)
        })
        .await
    }

    /// Fires what the wheel holds due now. The tick task calls this about once a second;
    /// tests call it after moving their clock.
    pub async fn tick(&self) -> Result<(), ServiceError> {
        let (pending, lag) = self
            .write(|core, now| {
                core.tick(now);
                let (pending, done) = core.wheel_status();
                Ok((pending, now.tick_floor().saturating_sub(done)))
            })
            .await?;
        self.metrics.wheel_pending.set(pending as i64);
        self.metrics.wheel_lag.set((lag * TICK_MS) as f64 / 1000.0);
        Ok(())
    }

    pub fn pools(&self) -> Result<Vec<PoolView>, ServiceError> {
        let core = self.lock()?;
        Ok(core
            .pool_ids()
            .map(|p| PoolView {
                name: core.pool_spec(p).name.clone(),
                stats: core.pool_stats(p),
            })
            .collect())
    }

    /// Ready when the store works and the wheel is at most two ticks behind the clock.
    pub fn ready(&self) -> Result<(), String> {
        let core = self.lock().map_err(|e| e.to_string())?;
        let (_, done) = core.wheel_status();
        let lag = self.clock.now().tick_floor().saturating_sub(done);
        if lag > 2 {
            return Err(format!("the timing wheel is {lag} ticks behind the clock"));
        }
        Ok(())
    }

    /// Refreshes the gauges that mirror state (pool counts, store size) before a scrape.
    pub fn refresh_gauges(&self) {
        if let Ok(pools) = self.pools() {
            for p in pools {
                let s = p.stats;
                let m = &self.metrics;
                m.pool_numbers
                    .with_label_values(&[&p.name, "free"])
                    .set(s.free as i64);
                m.pool_numbers
                    .with_label_values(&[&p.name, "leased"])
                    .set(s.leased as i64);
                m.pool_numbers
                    .with_label_values(&[&p.name, "cooling"])
                    .set(s.cooling as i64);
                m.pool_size.with_label_values(&[&p.name]).set(s.size as i64);
                let busy = (s.leased + s.cooling) as f64 / s.size.max(1) as f64;
                m.pool_saturation.with_label_values(&[&p.name]).set(busy);
            }
        }
        if let Ok(core) = self.lock() {
            self.metrics.live_leases.set(core.lease_count() as i64);
        }
        self.metrics
            .store_size
            .set(self.store.size_on_disk() as i64);
    }

    /// Flushes everything written; called once the server has stopped taking requests.
    pub fn shutdown(&self) -> Result<(), ServiceError> {
        let _core = self.lock()?;
        Ok(self.commit.flush_now()?)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Allocator>, ServiceError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(ServiceError::Unavailable);
        }
        // A panic while holding the lock would leave the core half-changed: treat it as failed.
        self.core.lock().map_err(|_| {
            self.failed.store(true, Ordering::Release);
            ServiceError::Unavailable
        })
    }

    /// Runs one core operation at the current instant, writes its effects as one batch, and
    /// waits until they are durable. Effects are persisted even when the operation reports an
    /// error (settling an overdue lease, say), so memory never runs ahead of the disk.
    async fn write<R>(
        &self,
        op: impl FnOnce(&mut Allocator, Timestamp) -> Result<R, CoreError>,
    ) -> Result<R, ServiceError> {
        let (res, seq, ended) = {
            let mut core = self.lock()?;
            let now = self.clock.now();
            let res = op(&mut core, now);
            let effects = core.take_effects();
            let ended = core.take_ended();
            let seq = if effects.is_empty() {
                None
            } else {
                if let Err(e) = self.store.apply(&effects) {
                    self.failed.store(true, Ordering::Release);
                    self.metrics
                        .store_failures
                        .with_label_values(&["write"])
                        .inc();
                    tracing::error!(error = %e, "store write failed; serving nothing until restart");
                    return Err(e.into());
                }
                Some(self.commit.record_write())
            };
            let ended: Vec<_> = ended
                .into_iter()
                .map(|e| (core.pool_spec(e.pool).name.clone(), e))
                .collect();
            (res, seq, ended)
        };
        if let Some(seq) = seq {
            if let Err(e) = self.commit.durable(seq).await {
                self.failed.store(true, Ordering::Release);
                return Err(e.into());
            }
        }
        for (pool, e) in ended {
            let counter = match e.reason {
                EndReason::Expired => &self.metrics.expiries,
                EndReason::Released => &self.metrics.releases,
            };
            counter.with_label_values(&[&pool]).inc();
            self.metrics
                .lease_lifetime
                .with_label_values(&[&pool])
                .observe(e.lived.as_secs_f64());
        }
        Ok(res?)
    }
}

fn view(core: &Allocator, lease: Lease, now: Timestamp) -> LeaseView {
    LeaseView {
        pool: core.pool_spec(lease.pool).name.clone(),
        state: lease.state(now),
        lease,
    }
}

//! Group commit: a write is acknowledged only once a flush that started after it has finished.
//! Writers that arrive while a flush is running share the next one, so durability costs one
//! fsync per batch, not per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::{watch, Notify};

use super::{Store, StoreError};
use crate::config::CommitMode;
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, Default)]
struct Durable {
    /// Every write numbered up to this one is on disk.
    upto: u64,
    /// A flush failed: nothing after `upto` can be promised until the process restarts.
    failed: bool,
}

pub struct Committer {
    store: Arc<Store>,
    mode: CommitMode,
    metrics: Arc<Metrics>,
    /// Number of the last write applied to the store (assigned under the core's lock, so
    /// numbers follow the store's own order).
    written: AtomicU64,
    durable: watch::Sender<Durable>,
    /// Wakes the flusher; shared with it so that dropping the committer can wake it to exit.
    kick: Arc<Notify>,
}

impl Committer {
    /// Starts the flusher task on the current tokio runtime.
    pub fn start(store: Arc<Store>, mode: CommitMode, metrics: Arc<Metrics>) -> Arc<Committer> {
        let c = Arc::new(Committer {
            store,
            mode,
            metrics,
            written: AtomicU64::new(0),
            durable: watch::channel(Durable::default()).0,
            kick: Arc::new(Notify::new()),
        });
        if mode == CommitMode::Group {
            // The flusher holds the committer weakly: once the service lets go of it, the store
            // closes and the task ends.
            tokio::spawn(Self::flusher(Arc::downgrade(&c), Arc::clone(&c.kick)));
        }
        c
    }

    /// Numbers a write just applied to the store; call it right after `Store::apply`, under
    /// the same lock.
    pub fn record_write(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Waits until write `seq` is on disk.
    pub async fn durable(&self, seq: u64) -> Result<(), StoreError> {
        if self.mode == CommitMode::PerRequest {
            let started = Instant::now();
            let store = Arc::clone(&self.store);
            let res = tokio::task::spawn_blocking(move || store.flush())
                .await
                .map_err(|e| StoreError::Failed(e.to_string()))?;
            self.observe(started, 1, &res);
            return res.map(drop);
        }
        let mut rx = self.durable.subscribe();
        self.kick.notify_one();
        let d = rx
            .wait_for(|d| d.upto >= seq || d.failed)
            .await
            .map_err(|_| StoreError::Failed("the flusher has stopped".into()))?;
        if d.upto >= seq {
            Ok(())
        } else {
            Err(StoreError::Failed("a flush to disk failed".into()))
        }
    }

    /// Makes everything written so far durable, now (used at shutdown).
    pub fn flush_now(&self) -> Result<(), StoreError> {
        let target = self.written.load(Ordering::Acquire);
        self.store.flush()?;
        self.durable.send_modify(|d| d.upto = d.upto.max(target));
        Ok(())
    }

    async fn flusher(this: Weak<Committer>, kick: Arc<Notify>) {
        loop {
            kick.notified().await;
            let Some(this) = this.upgrade() else {
                return;
            };
            this.flush_pending().await;
        }
    }

    /// Flushes until everything written so far is durable (or a flush fails).
    async fn flush_pending(&self) {
        loop {
            let target = self.written.load(Ordering::Acquire);
            let done = *self.durable.borrow();
            if target <= done.upto || done.failed {
                return;
            }
            let started = Instant::now();
            let store = Arc::clone(&self.store);
            let res = match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Failed(e.to_string())),
            };
            self.observe(started, target - done.upto, &res);
            match res {
                Ok(_) => self.durable.send_modify(|d| d.upto = d.upto.max(target)),
                Err(e) => {
                    tracing::error!(error = %e, "flush failed; acknowledging no more writes");
                    self.durable.send_modify(|d| d.failed = true);
                }
            }
        }
    }

    fn observe(&self, started: Instant, batch: u64, res: &Result<usize, StoreError>) {
        self.metrics
            .flush_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.flush_batch.observe(batch as f64);
        if res.is_err() {
            self.metrics
                .store_failures
                .with_label_values(&["flush"])
                .inc();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Let the flusher notice it has nothing left to serve.
        self.kick.notify_one();
    }
}

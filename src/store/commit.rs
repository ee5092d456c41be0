//! Group commit: a write is acknowledged only once it is on disk. Writers queue their effects
//! (under the core's lock, so in the core's order); one flusher takes everything queued,
//! writes it to sled as a single batch, flushes, and releases every writer it covered. Writers
//! arriving during a flush share the next one: durability costs one batch and one fsync per
//! group, not per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::sync::{watch, Notify};

use super::{Backend, Group, StoreError};
use crate::config::CommitMode;
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, Default)]
struct Durable {
    /// Every write numbered up to this one is on disk.
    upto: u64,
    /// A write or flush failed: nothing after `upto` can be promised until the process restarts.
    failed: bool,
    /// Incremented by each [`Committer::reset`]: a submission made before it was dropped
    /// unless it was on disk by then (`upto_before_reset`), whatever `upto` says afterwards.
    epoch: u64,
    /// `upto` when the last reset happened.
    upto_before_reset: u64,
}

/// A submission to wait for: its number, and the epoch it was made in.
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    seq: u64,
    epoch: u64,
}

/// Effects submitted but not yet written (one group per operation), and the number of the
/// last submission.
#[derive(Default)]
struct Queue {
    groups: Vec<Group>,
    last: u64,
}

pub struct Committer {
    store: Arc<dyn Backend>,
    mode: CommitMode,
    metrics: Arc<Metrics>,
    queue: Mutex<Queue>,
    /// Per-request mode numbers writes here (they are applied at once, not queued).
    written: AtomicU64,
    durable: watch::Sender<Durable>,
    /// Wakes the flusher; shared with it so that dropping the committer can wake it to exit.
    kick: Arc<Notify>,
    /// When the write in progress started (ms since the Unix epoch, by the system clock), or 0:
    /// a write stuck for long makes the service unready.
    writing_since: AtomicU64,
}

impl Committer {
    /// Starts the flusher task on the current tokio runtime.
    pub fn start(
        store: Arc<dyn Backend>,
        mode: CommitMode,
        metrics: Arc<Metrics>,
    ) -> Arc<Committer> {
        let c = Arc::new(Committer {
            store,
            mode,
            metrics,
            queue: Mutex::new(Queue::default()),
            written: AtomicU64::new(0),
            durable: watch::channel(Durable::default()).0,
            kick: Arc::new(Notify::new()),
            writing_since: AtomicU64::new(0),
        });
        if mode == CommitMode::Group {
            // The flusher holds the committer weakly: once the service lets go of it, the store
            // closes and the task ends.
            tokio::spawn(Self::flusher(Arc::downgrade(&c), Arc::clone(&c.kick)));
        }
        c
    }

    /// Hands over one operation's effects; call it under the core's lock, so submissions keep
    /// the core's order. Returns the number to wait for with [`Committer::durable`].
    pub fn submit(&self, group: impl Into<Group>) -> Result<Pending, StoreError> {
        let group = group.into();
        let (failed, epoch) = {
            let d = self.durable.borrow();
            (d.failed, d.epoch)
        };
        if failed {
            return Err(StoreError::Failed("an earlier write failed".into()));
        }
        let seq = match self.mode {
            CommitMode::PerRequest => {
                self.store.write_groups(std::slice::from_ref(&group))?;
                self.written.fetch_add(1, Ordering::AcqRel) + 1
            }
            CommitMode::Group => {
                let mut q = self.queue.lock().expect("queue lock");
                q.groups.push(group);
                q.last += 1;
                q.last
            }
        };
        Ok(Pending { seq, epoch })
    }

    /// Waits until submission `seq` is on disk.
    pub async fn durable(&self, pending: Pending) -> Result<(), StoreError> {
        let Pending { seq, epoch } = pending;
        if self.mode == CommitMode::PerRequest {
            let started = Instant::now();
            let store = Arc::clone(&self.store);
            let res = tokio::task::spawn_blocking(move || store.flush())
                .await
                .map_err(|e| StoreError::Failed(e.to_string()))?;
            self.observe(started, 1, &res);
            return res;
        }
        let mut rx = self.durable.subscribe();
        self.kick.notify_one();
        let d = rx
            .wait_for(|d| d.epoch != epoch || d.upto >= seq || d.failed)
            .await
            .map_err(|_| StoreError::Failed("the flusher has stopped".into()))?;
        // A reset since the submission dropped it from the queue: it is on disk only if it
        // was before the failure. (A waiter can miss the failed state and see the reset.)
        let on_disk = if d.epoch == epoch {
            d.upto >= seq
        } else {
            d.epoch == epoch + 1 && seq <= d.upto_before_reset
        };
        if on_disk {
            Ok(())
        } else {
            Err(StoreError::Failed("a write to disk failed".into()))
        }
    }

    /// Writes and flushes everything submitted so far, now (used at shutdown).
    pub fn flush_now(&self) -> Result<(), StoreError> {
        let (groups, last) = self.take();
        self.store.write_groups(&groups)?;
        self.store.flush()?;
        self.durable.send_modify(|d| d.upto = d.upto.max(last));
        Ok(())
    }

    /// How long the write in progress has been running, if one is.
    pub fn writing_for(&self) -> Option<std::time::Duration> {
        match self.writing_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(std::time::Duration::from_millis(
                wall_ms().saturating_sub(since),
            )),
        }
    }

    /// Whether a write failed (and nothing more is acknowledged).
    pub fn failed(&self) -> bool {
        self.durable.borrow().failed
    }

    /// After a failure, once the service has reloaded its state from disk: forget what was
    /// queued (none of it was acknowledged) and accept writes again.
    pub fn reset(&self) {
        let mut q = self.queue.lock().expect("queue lock");
        q.groups.clear();
        let last = q.last.max(self.written.load(Ordering::Acquire));
        self.durable.send_modify(|d| {
            d.upto_before_reset = d.upto;
            d.epoch += 1;
            d.upto = last;
            d.failed = false;
        });
    }

    /// Checks that the backend takes a write and a flush again.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.store.probe()
    }

    fn take(&self) -> (Vec<Group>, u64) {
        let mut q = self.queue.lock().expect("queue lock");
        (std::mem::take(&mut q.groups), q.last)
    }

    async fn flusher(this: Weak<Committer>, kick: Arc<Notify>) {
        loop {
            kick.notified().await;
            let Some(this) = this.upgrade() else {
                return;
            };
            this.commit_pending().await;
        }
    }

    /// Writes and flushes until everything submitted so far is durable (or a write fails).
    async fn commit_pending(&self) {
        loop {
            let done = *self.durable.borrow();
            if done.failed {
                return;
            }
            let (groups, last) = self.take();
            if last <= done.upto {
                return;
            }
            let started = Instant::now();
            self.writing_since.store(wall_ms(), Ordering::Release);
            let store = Arc::clone(&self.store);
            let res = match tokio::task::spawn_blocking(move || {
                store.write_groups(&groups)?;
                store.flush()
            })
            .await
            {
                Ok(r) => r,
                Err(e) => Err(StoreError::Failed(e.to_string())),
            };
            self.writing_since.store(0, Ordering::Release);
            self.observe(started, last - done.upto, &res);
            match res {
                Ok(()) => self.durable.send_modify(|d| d.upto = d.upto.max(last)),
                Err(e) => {
                    tracing::error!(error = %e, "write to disk failed; acknowledging no more writes");
                    self.durable.send_modify(|d| d.failed = true);
                }
            }
        }
    }

    fn observe(&self, started: Instant, batch: u64, res: &Result<(), StoreError>) {
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

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A backend that fails every write and flush while `failing` is set.
    struct Flaky {
        failing: AtomicBool,
    }

    impl Backend for Flaky {
        fn write_groups(&self, _: &[Group]) -> Result<(), StoreError> {
            self.check()
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.check()
        }
        fn probe(&self) -> Result<(), StoreError> {
            self.check()
        }
    }

    impl Flaky {
        fn check(&self) -> Result<(), StoreError> {
            match self.failing.load(Ordering::Acquire) {
                true => Err(StoreError::Failed("disk full".into())),
                false => Ok(()),
            }
        }
    }

    #[tokio::test]
    async fn a_write_dropped_by_a_reset_is_never_confirmed() {
        let disk = Arc::new(Flaky {
            failing: AtomicBool::new(true),
        });
        let c = Committer::start(disk.clone(), CommitMode::Group, Arc::new(Metrics::new()));
        // A is submitted; its waiter is slow to run.
        let a = c.submit(Group::default()).unwrap();
        // Another writer drives the failing flush and sees the failure.
        let b = c.submit(Group::default()).unwrap();
        assert!(c.durable(b).await.is_err());
        // The disk comes back; the service heals and resets the committer.
        disk.failing.store(false, Ordering::Release);
        c.reset();
        // Only now does A's waiter run: its write was dropped, so it is not confirmed.
        assert!(c.durable(a).await.is_err());
        // Writes after the reset are confirmed again.
        let n = c.submit(Group::default()).unwrap();
        assert!(c.durable(n).await.is_ok());
    }
}

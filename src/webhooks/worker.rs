//! The delivery worker: posts pending deliveries, signed, and records each outcome in the
//! store. Each endpoint has its own lane (a queue by due time and `concurrency` threads), so
//! a slow or dead receiver only ever holds its own threads; nothing here runs on the async
//! runtime or takes the core's lock. Deliveries reach a lane only once their batch is
//! durable (from the service) or from the store at start-up, so nothing is sent for a change
//! a crash could still undo.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rand::Rng;

use super::{retry_delay, signature, Endpoint, Router};
use crate::clock::Clock;
use crate::core::Timestamp;
use crate::metrics::{Metrics, WebhookOutcome};
use crate::store::{Delivery, DeliveryId, DeliveryLog, DeliveryStatus, StoreError};

/// How long an idle lane thread sleeps before looking again (the clock may have moved).
const POLL: Duration = Duration::from_millis(200);
/// Delivered and failed deliveries are kept this long for the admin API, then purged.
pub const KEEP_FINISHED: Duration = Duration::from_secs(7 * 86_400);

pub struct Dispatcher {
    router: Router,
    lanes: Vec<Lane>,
    log: Arc<dyn DeliveryLog>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    stopping: AtomicBool,
    /// Outcomes recorded since the last flush.
    dirty: AtomicBool,
}

struct Lane {
    endpoint: Endpoint,
    agent: ureq::Agent,
    state: Mutex<Queue>,
    wake: Condvar,
}

/// A lane's pending deliveries: by id (so oldest first: ids start with the creation time),
/// and by due time (entries whose time no longer matches are stale and skipped).
#[derive(Default)]
struct Queue {
    pending: BTreeMap<DeliveryId, Slot>,
    due: BinaryHeap<Reverse<(Timestamp, DeliveryId)>>,
}

#[derive(Clone, Copy)]
struct Slot {
    next_at: Timestamp,
    in_flight: bool,
}

impl Queue {
    fn insert(&mut self, id: DeliveryId, next_at: Timestamp) {
        let slot = self.pending.entry(id).or_insert(Slot {
            next_at,
            in_flight: false,
        });
        if !slot.in_flight {
            slot.next_at = next_at;
            self.due.push(Reverse((next_at, id)));
        }
    }
}

/// Why a retry asked for by an operator was refused.
#[derive(Debug)]
pub enum RetryError {
    Unknown,
    /// Its endpoint is no longer configured.
    NoEndpoint(String),
    Store(StoreError),
}

impl Dispatcher {
    /// Starts a lane per endpoint, with every delivery the store holds pending (those of an
    /// endpoint no longer configured are failed).
    pub fn start(
        router: Router,
        log: Arc<dyn DeliveryLog>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Dispatcher>, StoreError> {
        let lanes = router
            .endpoints()
            .iter()
            .map(|e| {
                metrics.register_webhook(&e.name);
                Lane {
                    agent: ureq::AgentBuilder::new()
                        .timeout_connect(e.timeout)
                        .timeout(e.timeout)
                        .redirects(0)
                        .user_agent(concat!("Leaseline-Webhooks/", env!("CARGO_PKG_VERSION")))
                        .build(),
                    endpoint: e.clone(),
                    state: Mutex::new(Queue::default()),
                    wake: Condvar::new(),
                }
            })
            .collect();
        let d = Arc::new(Dispatcher {
            router,
            lanes,
            log,
            clock,
            metrics,
            stopping: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
        });
        d.rescan()?;
        if let Err(e) = d.purge() {
            tracing::warn!(error = %e, "finished webhook deliveries not purged");
        }
        for (i, lane) in d.lanes.iter().enumerate() {
            for n in 0..lane.endpoint.concurrency {
                let weak = Arc::downgrade(&d);
                std::thread::Builder::new()
                    .name(format!("webhook-{i}-{n}"))
                    .spawn(move || run_lane(weak, i))
                    .map_err(StoreError::Io)?;
            }
        }
        let weak = Arc::downgrade(&d);
        std::thread::Builder::new()
            .name("webhook-flush".into())
            .spawn(move || housekeeping(weak))
            .map_err(StoreError::Io)?;
        Ok(d)
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Hands deliveries (id, when due) whose batch is now durable to their lanes.
    pub fn enqueue(&self, deliveries: &[(DeliveryId, Timestamp)]) {
        for (id, at) in deliveries {
            if let Some(lane) = self.lane(id) {
                lane.queue().insert(*id, *at);
                lane.wake.notify_one();
            }
        }
    }

    /// Reads the pending deliveries from the store again (at start-up, and after the store
    /// healed: a round written but not confirmed may be on disk).
    pub fn rescan(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        for mut d in self.log.deliveries(DeliveryStatus::Pending)? {
            match self.lane(&d.id) {
                Some(lane) => {
                    lane.queue().insert(d.id, d.next_at);
                    lane.wake.notify_one();
                }
                None => {
                    d.status = DeliveryStatus::Failed;
                    d.done_at = Some(now);
                    d.last_error =
                        Some(format!("endpoint {:?} is no longer configured", d.endpoint));
                    self.log.update_delivery(DeliveryStatus::Pending, &d)?;
                }
            }
        }
        Ok(())
    }

    /// Sends `id` again as soon as possible, whatever its status, with a fresh `max_age`.
    pub fn retry(&self, id: &DeliveryId) -> Result<Delivery, RetryError> {
        let mut d = self
            .log
            .delivery(id)
            .map_err(RetryError::Store)?
            .ok_or(RetryError::Unknown)?;
        let Some(lane) = self.lane(id) else {
            return Err(RetryError::NoEndpoint(d.endpoint));
        };
        let mut q = lane.queue();
        // Read again under the lane's lock: an attempt may have finished meanwhile.
        d = self
            .log
            .delivery(id)
            .map_err(RetryError::Store)?
            .ok_or(RetryError::Unknown)?;
        if q.pending.get(id).is_some_and(|s| s.in_flight) {
            return Ok(d);
        }
        let was = d.status;
        let now = self.clock.now();
        d.status = DeliveryStatus::Pending;
        d.next_at = now;
        d.window_from = now;
        d.done_at = None;
        self.log
            .update_delivery(was, &d)
            .map_err(RetryError::Store)?;
        self.dirty.store(true, Ordering::Release);
        q.insert(d.id, now);
        drop(q);
        lane.wake.notify_one();
        Ok(d)
    }

    /// A page of deliveries with `status`, newest first (see [`DeliveryLog::delivery_page`]).
    pub fn page(
        &self,
        status: DeliveryStatus,
        cursor: Option<DeliveryId>,
        limit: usize,
    ) -> Result<(Vec<Delivery>, Option<DeliveryId>), StoreError> {
        self.log.delivery_page(status, cursor, limit)
    }

    /// Ends the lanes' threads (an attempt in flight finishes first, unwaited for).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for l in &self.lanes {
            l.wake.notify_all();
        }
        if let Err(e) = self.log.flush_deliveries() {
            tracing::warn!(error = %e, "webhook outcomes not flushed at shutdown");
        }
    }

    /// Sets the queue gauges (pending deliveries and the oldest one's age, per endpoint).
    pub fn refresh_gauges(&self) {
        let now = self.clock.now();
        for l in &self.lanes {
            let q = l.queue();
            let oldest = q.pending.keys().next().map_or(0.0, |id| {
                let created = u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"));
                now.as_millis().saturating_sub(created) as f64 / 1000.0
            });
            let name = [l.endpoint.name.as_str()];
            self.metrics
                .webhook_queue
                .with_label_values(&name)
                .set(q.pending.len() as i64);
            self.metrics
                .webhook_oldest
                .with_label_values(&name)
                .set(oldest);
        }
    }

    fn lane(&self, id: &DeliveryId) -> Option<&Lane> {
        let tag = id.endpoint_tag();
        self.lanes.iter().find(|l| l.endpoint.tag() == tag)
    }

    /// The next delivery due on lane `i`, marked in flight; or `None` after waiting a while.
    fn next_due(&self, i: usize) -> Option<DeliveryId> {
        let lane = &self.lanes[i];
        let mut q = lane.queue();
        let now = self.clock.now();
        let mut wait = POLL;
        while let Some(&Reverse((at, id))) = q.due.peek() {
            match q.pending.get(&id) {
                Some(s) if s.next_at == at && !s.in_flight => {}
                _ => {
                    q.due.pop();
                    continue;
                }
            }
            if at <= now {
                q.due.pop();
                q.pending.get_mut(&id).expect("just seen").in_flight = true;
                return Some(id);
            }
            wait = wait.min(at.since(now));
            break;
        }
        let _unused = lane.wake.wait_timeout(q, wait);
        None
    }

    /// Posts delivery `id` once and records the outcome.
    fn attempt(&self, i: usize, id: DeliveryId) {
        let lane = &self.lanes[i];
        let e = &lane.endpoint;
        let d = match self.log.delivery(&id) {
            Ok(Some(d)) if d.status == DeliveryStatus::Pending => d,
            Ok(_) => {
                lane.queue().pending.remove(&id);
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "webhook delivery unreadable; retried later");
                let later = self.clock.now().saturating_add(POLL * 25);
                let mut q = lane.queue();
                q.pending.remove(&id);
                q.insert(id, later);
                return;
            }
        };
        let outcome = self.post(lane, &d);
        let now = self.clock.now();
        let mut next = d.clone();
        next.attempts += 1;
        next.last_attempt_at = Some(now);
        let label = match outcome {
            Ok(()) => {
                next.status = DeliveryStatus::Delivered;
                next.done_at = Some(now);
                WebhookOutcome::Delivered
            }
            Err(why) => {
                next.last_error = Some(why);
                let jitter = rand::thread_rng().gen::<f64>();
                let at = now.saturating_add(retry_delay(e.backoff, next.attempts, jitter));
                if at >= d.window_from.saturating_add(e.max_age) {
                    next.status = DeliveryStatus::Failed;
                    next.done_at = Some(now);
                    WebhookOutcome::Failed
                } else {
                    next.next_at = at;
                    WebhookOutcome::Retried
                }
            }
        };
        self.metrics
            .webhook_deliveries
            .with_label_values(&[&e.name, label.as_str()])
            .inc();
        let mut q = lane.queue();
        // Still in flight unless an operator's retry replaced it (it then waits its turn).
        let ours = q.pending.get(&id).is_some_and(|s| s.in_flight);
        if !ours {
            return;
        }
        match self.log.update_delivery(DeliveryStatus::Pending, &next) {
            Ok(()) => self.dirty.store(true, Ordering::Release),
            Err(err) => {
                tracing::warn!(error = %err, webhook = %e.name, "webhook outcome not recorded")
            }
        }
        q.pending.remove(&id);
        if next.status == DeliveryStatus::Pending {
            q.insert(id, next.next_at);
        }
        match label {
            WebhookOutcome::Failed => tracing::warn!(
                webhook = %e.name, delivery = %id, attempts = next.attempts,
                error = next.last_error.as_deref().unwrap_or(""),
                "webhook delivery failed for good (max_age reached)"
            ),
            WebhookOutcome::Retried => tracing::debug!(
                webhook = %e.name, delivery = %id, attempts = next.attempts,
                error = next.last_error.as_deref().unwrap_or(""),
                "webhook delivery failed; will retry"
            ),
            WebhookOutcome::Delivered => {}
        }
    }

    /// One signed POST; `Err` says why it did not count as delivered.
    fn post(&self, lane: &Lane, d: &Delivery) -> Result<(), String> {
        let e = &lane.endpoint;
        let t = self.clock.now().as_millis() / 1000;
        let res = lane
            .agent
            .post(&e.url)
            .set("Content-Type", "application/json")
            .set("Leaseline-Event-Id", &hex::encode(d.id.event()))
            .set("Leaseline-Signature", &signature(&e.secret, t, &d.body))
            .send_bytes(&d.body);
        match res {
            Ok(r) if (200..300).contains(&r.status()) => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(ureq::Error::Status(code, _)) => Err(format!("HTTP {code}")),
            Err(ureq::Error::Transport(t)) => Err(brief(&t.to_string())),
        }
    }

    fn purge(&self) -> Result<usize, StoreError> {
        let before = Timestamp::from_millis(
            self.clock
                .now()
                .as_millis()
                .saturating_sub(KEEP_FINISHED.as_millis() as u64),
        );
        self.log.purge_deliveries(before)
    }
}

impl Lane {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A lane's thread: holds the dispatcher only while it works, so dropping the service lets
/// the store close.
fn run_lane(this: Weak<Dispatcher>, i: usize) {
    loop {
        let Some(d) = this.upgrade() else {
            return;
        };
        if d.stopping.load(Ordering::Acquire) {
            return;
        }
        if let Some(id) = d.next_due(i) {
            d.attempt(i, id);
        }
    }
}

/// Flushes recorded outcomes about once a second, and purges finished deliveries hourly.
fn housekeeping(this: Weak<Dispatcher>) {
    let mut since_purge = Duration::ZERO;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        since_purge += Duration::from_secs(1);
        let Some(d) = this.upgrade() else {
            return;
        };
        if d.stopping.load(Ordering::Acquire) {
            return;
        }
        if d.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = d.log.flush_deliveries() {
                tracing::warn!(error = %e, "webhook outcomes not flushed; retried");
                d.dirty.store(true, Ordering::Release);
            }
        }
        if since_purge >= Duration::from_secs(3600) {
            since_purge = Duration::ZERO;
            if let Err(e) = d.purge() {
                tracing::warn!(error = %e, "finished webhook deliveries not purged");
            }
        }
    }
}

/// At most 200 bytes of an error, cut on a character boundary.
fn brief(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

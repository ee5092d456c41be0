//! The service: the core behind one lock, its effects written to the store in the core's own
//! order and made durable before any answer leaves; then metrics and live events. HTTP
//! handlers and tests call this; it knows nothing of HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use rand::Rng;
use thiserror::Error;
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::core::{
    day_start, AllocateRequest, Allocator, Call, CallEnd, CallId, CallStart, Capacity, CoreError,
    Counts, Currency, Directory, EndReason, Entropy, Formula, Lease, LeaseId, LeaseQuery,
    LeaseState, ListingId, Money, Notice, Outbox, Pass, PassId, PhoneNumber, PoolId, PoolSpec,
    PoolStats, Target, Tariff, TenantId, Ticket, TicketCode, Timestamp, DEFAULT_BLOCKING, TICK_MS,
};
use crate::metrics::Metrics;
use crate::metrics::Window;
use crate::store::{Committer, DeliveryId, Group, JournalPage, JournalQuery, Storage, StoreError};
use crate::webhooks::Dispatcher;

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

/// How long callers' numbers stay in the journal by default: a year.
pub const DEFAULT_JOURNAL_RETENTION: Duration = Duration::from_secs(365 * 86_400);
/// Journal rows looked at per tick when replacing callers' numbers.
const PSEUDONYMIZE_PER_TICK: usize = 10_000;

/// A lease as seen at one instant, with the names the edges need.
#[derive(Clone, Debug)]
pub struct LeaseView {
    pub lease: Lease,
    pub pool: String,
    pub state: LeaseState,
    /// The access pass its redeem granted, if any.
    pub pass: Option<PassView>,
    /// Its pool's tariff, so a page can show the price beside the number.
    pub tariff: Option<Tariff>,
}

/// How statistics are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsBy {
    Day,
    Listing,
    Pool,
}

/// One row of statistics: a group's counters, in one currency.
#[derive(Clone, Debug)]
pub struct StatRow {
    /// The day (`2026-01-31`), the listing (`None`: calls and leases of no listing) or the pool.
    pub key: Option<String>,
    pub currency: Option<Currency>,
    pub counts: Counts,
}

/// What a reload changed.
#[derive(Clone, Debug, Default)]
pub struct Reconfigured {
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    /// Per pool: numbers added, numbers retired.
    pub numbers: Vec<(String, usize, usize)>,
}

/// One pool's counts, for `/v1/pools` and the gauges.
#[derive(Clone, Debug)]
pub struct PoolView {
    pub name: String,
    pub stats: PoolStats,
    /// What its traffic says of its size at the default blocking (none for a ticketing pool).
    pub capacity: Option<Capacity>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    CallStarted,
    CallEnded,
    Paid,
    Expired,
    Released,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CallStarted => "call_started",
            EventKind::CallEnded => "call_ended",
            EventKind::Paid => "paid",
            EventKind::Expired => "expired",
            EventKind::Released => "released",
        }
    }
}

/// Something a page showing a lease wants to know, with the lease's counters after it.
#[derive(Clone, Debug)]
pub struct LeaseEvent {
    /// Increasing across the process and its restarts (seeded from the clock at start).
    pub id: u64,
    pub lease: LeaseId,
    pub kind: EventKind,
    pub calls: u32,
    pub calls_required: u32,
    pub paid: bool,
    pub call_id: Option<String>,
    pub duration_secs: Option<u32>,
    pub counted: Option<bool>,
}

/// Events kept per lease for clients that reconnect with `Last-Event-ID`.
const EVENT_BACKLOG: usize = 64;

pub struct Service {
    core: Mutex<Allocator>,
    /// The pools as configured: read without the core's lock, so a request gets the 503 of
    /// its write rather than a misleading 404 while storage is failing; and the core is
    /// rebuilt on it after a failure. A reload swaps it (after the store's, before the core's:
    /// ids only ever extend, so any of the three may name a pool of another's).
    dir: RwLock<Arc<Directory>>,
    /// Persistence, reached only through its traits: this (reads, snapshots) and the
    /// committer's `Backend` (writes).
    store: Arc<dyn Storage>,
    commit: Arc<Committer>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    failed: AtomicBool,
    /// Live event channels, one per lease someone follows: a publish wakes only that lease's
    /// streams (one process-wide channel woke every stream for every event).
    streams: Mutex<Streams>,
    backlog: Mutex<HashMap<LeaseId, VecDeque<Arc<LeaseEvent>>>>,
    next_event: AtomicU64,
    /// Becomes true when shutdown starts, so long-lived streams end and draining can finish.
    closing: tokio::sync::watch::Sender<bool>,
    /// Webhooks, when `[[webhook]]` endpoints are configured: each write's events are derived
    /// under the lock, written in its batch, and handed to the worker once durable.
    hooks: Option<Arc<Dispatcher>>,
    /// Past this age, callers' numbers in the journal are replaced by keyed hashes.
    journal_retention: Duration,
}

impl Service {
    pub fn new(
        core: Allocator,
        store: Arc<dyn Storage>,
        commit: Arc<Committer>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Service {
        let first_event = clock.now().as_millis() * 1000;
        let dir = Arc::clone(core.directory());
        for p in dir.ids() {
            let currency = dir.spec(p).tariff.map(|t| t.currency);
            metrics.register_pool(dir.name(p), currency.as_ref().map(Currency::as_str));
        }
        Service {
            core: Mutex::new(core),
            dir: RwLock::new(dir),
            store,
            commit,
            clock,
            metrics,
            failed: AtomicBool::new(false),
            streams: Mutex::new(Streams::default()),
            backlog: Mutex::new(HashMap::new()),
            next_event: AtomicU64::new(first_event),
            closing: tokio::sync::watch::channel(false).0,
            hooks: None,
            journal_retention: DEFAULT_JOURNAL_RETENTION,
        }
    }

    /// How long callers' numbers stay readable in the journal (`[server] journal_retention`).
    pub fn with_journal_retention(mut self, retention: Duration) -> Service {
        self.journal_retention = retention;
        self
    }

    /// Sends webhooks through `hooks` from now on.
    pub fn with_webhooks(mut self, hooks: Arc<Dispatcher>) -> Service {
        self.hooks = Some(hooks);
        self
    }

    /// The webhook worker, if endpoints are configured.
    pub fn webhooks(&self) -> Option<&Arc<Dispatcher>> {
        self.hooks.as_ref()
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The pools as configured now.
    pub fn directory(&self) -> Arc<Directory> {
        Arc::clone(&self.dir.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        self.directory().id(name)
    }

    /// Whether `n` is a pool's shared number (callers type a code there).
    pub fn is_shared_number(&self, n: PhoneNumber) -> bool {
        self.directory().shared_pool(n).is_some()
    }

    /// The ticketing formula of the pool `n` belongs to.
    pub fn formula_of(&self, n: PhoneNumber) -> Option<Formula> {
        let dir = self.directory();
        dir.pool_of_number(n).and_then(|p| dir.formula(p).cloned())
    }

    /// The call `id`, while memory keeps it.
    pub fn call(&self, id: &CallId) -> Option<Call> {
        self.lock().ok()?.call(id).cloned()
    }

    /// The fallback target of the pool `n` belongs to.
    pub fn fallback_of(&self, n: PhoneNumber) -> Option<crate::core::Target> {
        let dir = self.directory();
        dir.pool_of_number(n)
            .and_then(|p| dir.spec(p).fallback.clone())
    }

    /// Who a call would reach, decided as a `start` would, recording nothing.
    pub fn attribute(
        &self,
        called: PhoneNumber,
        caller: Option<PhoneNumber>,
        code: Option<crate::core::Code>,
        at: Option<Timestamp>,
    ) -> Result<(crate::core::Attribution, Option<String>), ServiceError> {
        let core = self.lock()?;
        let a = core.attribute(called, caller, code, at.unwrap_or_else(|| self.clock.now()));
        let pool = a.pool.map(|p| core.directory().name(p).to_owned());
        Ok((a, pool))
    }

    /// The name of the pool a called number (pool or shared number) belongs to.
    pub fn pool_of_number(&self, n: PhoneNumber) -> Option<String> {
        let dir = self.directory();
        dir.pool_of_number(n).map(|p| dir.name(p).to_owned())
    }

    /// Allocates, or returns the caller's live lease extended; the flag is true for a new lease.
    pub async fn allocate(&self, req: AllocateRequest) -> Result<(LeaseView, bool), ServiceError> {
        let id = LeaseId::from_bytes(rand::thread_rng().gen());
        let pool = self.directory().name(req.pool).to_owned();
        let res = self
            .write(|core, now, out| {
                let a = core.allocate(req, now, id, out)?;
                Ok((a.fresh, view(core, a.lease, now)))
            })
            .await;
        let outcome = match &res {
            Ok((true, v)) if v.lease.code.is_some() => "shared_code",
            Ok((true, _)) => "new",
            Ok((false, _)) => "sticky",
            Err(ServiceError::Core(CoreError::Exhausted { .. })) => "rejected",
            Err(ServiceError::Core(CoreError::TooManyLeases { .. })) => "limited",
            Err(_) => "error",
        };
        self.metrics
            .allocations
            .with_label_values(&[&pool, outcome])
            .inc();
        res.map(|(fresh, v)| (v, fresh))
    }

    /// The lease `id` as it stands now.
    /// Statistics of the UTC days `from..=to` (days since 1970-01-01) for `pools` (`None`:
    /// every configured pool) and `tenant` (`None`: every tenant's, and calls that reached no
    /// lease), grouped `by` day, listing or pool and by currency, in key
    /// order. Read from the store's index: the cells of the range, never the journal.
    pub fn stats(
        &self,
        from: u32,
        to: u32,
        pools: Option<&[PoolId]>,
        tenant: Option<&TenantId>,
        by: StatsBy,
    ) -> Result<Vec<StatRow>, ServiceError> {
        let tenant = tenant.map(crate::store::tenant_tag);
        if self.failed.load(Ordering::Acquire) {
            return Err(ServiceError::Unavailable);
        }
        let mut groups: std::collections::BTreeMap<(Option<String>, Option<Currency>), Counts> =
            Default::default();
        for cell in self.store.stats(from, to)? {
            let Some(pool) = cell.pool else { continue };
            if pools.is_some_and(|p| !p.contains(&pool))
                || tenant.is_some_and(|t| cell.tenant != Some(t))
            {
                continue;
            }
            let key = match by {
                StatsBy::Day => Some(
                    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(
                        day_start(cell.day).as_millis() as i64,
                    )
                    .unwrap_or_default()
                    .format("%Y-%m-%d")
                    .to_string(),
                ),
                StatsBy::Listing => cell.listing,
                StatsBy::Pool => Some(self.directory().name(pool).to_owned()),
            };
            groups
                .entry((key, cell.currency))
                .or_default()
                .add(&cell.counts);
        }
        Ok(groups
            .into_iter()
            .map(|((key, currency), counts)| StatRow {
                key,
                currency,
                counts,
            })
            .collect())
    }

    /// A page of leases (transactions), newest first, as views: the leases the core holds,
    /// merged with the purged ones the store keeps (the history), by (creation, id).
    pub fn leases(&self, q: &LeaseQuery) -> Result<(Vec<LeaseView>, bool), ServiceError> {
        let now = self.clock.now();
        let held = {
            let core = self.lock()?;
            core.leases(q, now)
        };
        let keep = |l: &Lease| {
            q.tenant.as_ref().is_none_or(|t| t == &l.tenant)
                && q.pools.as_ref().is_none_or(|p| p.contains(&l.pool))
                && q.listing
                    .as_ref()
                    .is_none_or(|x| l.listing.as_ref() == Some(x))
                && q.state.is_none_or(|s| l.state(now) == s)
        };
        let archived = self
            .store
            .lease_history(q.before, q.since, q.until, &keep, q.limit + 1)?;
        let mut all: Vec<Lease> = held.leases;
        all.extend(archived);
        all.sort_unstable_by_key(|l| std::cmp::Reverse((l.created_at, l.id)));
        // A lease purged between the two reads is in both.
        all.dedup_by_key(|l| l.id);
        let more = held.more || all.len() > q.limit;
        all.truncate(q.limit);
        let core = self.lock()?;
        let views = all.into_iter().map(|l| view(&core, l, now)).collect();
        Ok((views, more))
    }

    pub fn get(&self, id: &LeaseId) -> Result<LeaseView, ServiceError> {
        let core = self.lock()?;
        let lease = core.lease(id).ok_or(CoreError::UnknownLease)?;
        Ok(view(&core, lease, self.clock.now()))
    }

    pub async fn renew(
        &self,
        id: LeaseId,
        ttl: Option<Duration>,
    ) -> Result<LeaseView, ServiceError> {
        let v = self
            .write(|core, now, out| {
                let lease = core.renew(&id, ttl, now, out)?;
                Ok(view(core, lease, now))
            })
            .await?;
        self.metrics.renewals.with_label_values(&[&v.pool]).inc();
        Ok(v)
    }

    /// Ends the lease now; `owner` must be the tenant that holds it (others are told it does
    /// not exist, so lease ids of other tenants cannot be probed).
    pub async fn release(&self, id: LeaseId, owner: &TenantId) -> Result<(), ServiceError> {
        self.write(|core, now, out| {
            owned(core, &id, owner)?;
            core.release(&id, now, out).map(drop)
        })
        .await
    }

    /// Redeems a paid lease of `owner`'s, once.
    pub async fn redeem(&self, id: LeaseId, owner: &TenantId) -> Result<LeaseView, ServiceError> {
        let pool = self.get(&id)?.pool;
        let pass_id = PassId(rand::thread_rng().gen());
        let res = self
            .write(|core, now, out| {
                owned(core, &id, owner)?;
                let (lease, _) = core.redeem(&id, now, pass_id, out)?;
                Ok(view(core, lease, now))
            })
            .await;
        let outcome = match &res {
            Ok(_) => "ok",
            Err(ServiceError::Core(CoreError::NotPaid { .. })) => "not_paid",
            Err(ServiceError::Core(CoreError::AlreadyRedeemed)) => "already",
            Err(_) => "error",
        };
        self.metrics
            .redeemed
            .with_label_values(&[&pool, outcome])
            .inc();
        res
    }

    /// Records a refund on a paid lease of `owner` and revokes the pass its redeem granted.
    pub async fn refund(
        &self,
        id: LeaseId,
        owner: &TenantId,
        amount: Money,
        reason: String,
    ) -> Result<LeaseView, ServiceError> {
        let event_id: [u8; 16] = rand::thread_rng().gen();
        self.write(|core, now, out| {
            let (lease, _) = core.refund(&id, owner, amount, reason, event_id, now, out)?;
            Ok(view(core, lease, now))
        })
        .await
    }

    /// Registers (or forgets, with `None`) where `tenant`'s listing sends its calls.
    pub async fn set_listing(
        &self,
        tenant: TenantId,
        listing: ListingId,
        target: Option<Target>,
    ) -> Result<(), ServiceError> {
        self.write(|core, _, out| {
            core.set_listing(tenant, listing, target, out);
            Ok(())
        })
        .await
    }

    /// Redeems a ticketing access code for a site whose key may use `pools` (all if `None`).
    pub async fn redeem_ticket(
        &self,
        code: TicketCode,
        tenant: &TenantId,
        pools: Option<&[String]>,
    ) -> Result<TicketView, ServiceError> {
        let pass_id = PassId(rand::thread_rng().gen());
        let res = self
            .write(|core, now, out| {
                let dir = Arc::clone(core.directory());
                let allowed =
                    |p: PoolId| pools.is_none_or(|list| list.iter().any(|n| n == dir.name(p)));
                let allowed: Vec<bool> = dir.ids().map(allowed).collect();
                let (ticket, pass) =
                    core.redeem_ticket(code, tenant, |p| allowed[p.0 as usize], now, pass_id, out)?;
                Ok(TicketView {
                    pool: dir.name(ticket.pool).to_owned(),
                    formula: core.formula(ticket.pool).cloned(),
                    pass: pass.map(|p| pass_view(core, p, now)),
                    ticket,
                })
            })
            .await;
        let (pool, outcome) = match &res {
            Ok(v) => (v.pool.clone(), "ok"),
            Err(ServiceError::Core(e)) => (
                String::new(),
                match e {
                    CoreError::UnknownTicket => "unknown",
                    CoreError::TicketExpired => "expired",
                    CoreError::AlreadyRedeemed => "already",
                    _ => "error",
                },
            ),
            Err(_) => (String::new(), "error"),
        };
        self.metrics
            .ticket_redeems
            .with_label_values(&[&pool, outcome])
            .inc();
        res
    }

    /// The pass `id` as it stands now.
    pub fn pass(&self, id: &PassId) -> Result<PassView, ServiceError> {
        let core = self.lock()?;
        let p = core.pass(id).ok_or(CoreError::UnknownPass)?.clone();
        Ok(pass_view(&core, p, self.clock.now()))
    }

    /// Revokes `owner`'s pass `id` now (refund, abuse).
    pub async fn revoke_pass(
        &self,
        id: PassId,
        owner: &TenantId,
    ) -> Result<PassView, ServiceError> {
        self.write(|core, now, out| {
            let p = core.revoke_pass(&id, owner, now, out)?;
            Ok(pass_view(core, p, now))
        })
        .await
    }

    /// Records a call's start and says where it goes; `at` defaults to now.
    pub async fn call_start(
        &self,
        mut start: CallStart,
        at_given: bool,
    ) -> Result<(Call, Option<String>), ServiceError> {
        start.entropy = entropy();
        self.write(|core, now, out| {
            if !at_given {
                start.at = now;
            }
            let call = core.call_start(start, now, out)?;
            let pool = (call.attribution.pool).map(|p| core.directory().name(p).to_owned());
            Ok((call, pool))
        })
        .await
    }

    pub async fn call_end(
        &self,
        id: CallId,
        duration_secs: u32,
        at: Option<Timestamp>,
    ) -> Result<Call, ServiceError> {
        self.write(|core, now, out| {
            core.call_end(
                &id,
                CallEnd {
                    at: at.unwrap_or(now),
                    duration_secs,
                },
                now,
                entropy(),
                out,
            )
        })
        .await
    }

    /// A page of the call journal (read from the store: it outlives what memory keeps).
    pub fn journal(&self, q: &JournalQuery) -> Result<JournalPage, ServiceError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(ServiceError::Unavailable);
        }
        let mut page = self.store.journal(q)?;
        // Calls recorded before amounts were (store format's call record 1) are priced now,
        // from their pool's tariff, when their pool is still configured.
        for row in &mut page.rows {
            if let crate::store::JournalRow::Call(c) = row {
                if let (None, Some(end), Some(pool)) =
                    (c.call.charge, c.call.end, c.call.attribution.pool)
                {
                    c.call.charge = self
                        .directory()
                        .spec(pool)
                        .tariff
                        .map(|t| t.charge(end.duration_secs));
                }
            }
        }
        Ok(page)
    }

    /// Events of lease `id` after `last_seen`, and a receiver for those still to come.
    /// Subscribing before reading the backlog means nothing falls between the two.
    pub fn subscribe(
        &self,
        id: &LeaseId,
        last_seen: Option<u64>,
    ) -> (Vec<Arc<LeaseEvent>>, broadcast::Receiver<Arc<LeaseEvent>>) {
        let rx = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .subscribe(*id);
        // A new client starts from the lease's current state; only a reconnecting one
        // (with the id of the last event it saw) is owed the events since.
        let backlog = match (last_seen, self.backlog.lock()) {
            (Some(seen), Ok(b)) => b
                .get(id)
                .into_iter()
                .flatten()
                .filter(|e| e.id > seen)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        (backlog, rx)
    }

    /// Fires what the wheel holds due now. The tick task calls this about once a second;
    /// tests call it after moving their clock.
    pub async fn tick(&self) -> Result<(), ServiceError> {
        if self.failed.load(Ordering::Acquire) && !self.heal().await? {
            return Err(ServiceError::Unavailable);
        }
        let (pending, lag) = self
            .write(|core, now, out| {
                core.tick(now, out);
                let (pending, done) = core.wheel_status();
                Ok((pending, now.tick_floor().saturating_sub(done)))
            })
            .await?;
        self.metrics.wheel_pending.set(pending as i64);
        self.metrics.wheel_lag.set((lag * TICK_MS) as f64 / 1000.0);
        let now = self.clock.now();
        self.store.set_watermark(now);
        // Callers' numbers past the journal's retention become pseudonyms, a bounded batch a
        // tick so a first pass over an old journal never holds the writers for long.
        if let Some(before) = now
            .as_millis()
            .checked_sub(self.journal_retention.as_millis() as u64)
        {
            self.store
                .pseudonymize(Timestamp::from_millis(before), PSEUDONYMIZE_PER_TICK)?;
        }
        Ok(())
    }

    /// Runs on from now although the store was last written at `mark`, later than now (the
    /// operator accepted the wall clock): see [`Allocator::rewind_to`]. Returns how many
    /// leases ended.
    pub async fn rewind_to(&self, mark: Timestamp) -> Result<usize, ServiceError> {
        self.write(|core, now, out| Ok(core.rewind_to(mark, now, out)))
            .await
    }

    /// After a failed write: once the disk takes writes again, rebuilds the state from what
    /// is on disk (only unacknowledged changes can be lost) and serves again. True if healed.
    pub async fn heal(&self) -> Result<bool, ServiceError> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(false);
        }
        let commit = Arc::clone(&self.commit);
        let probe = tokio::task::spawn_blocking(move || commit.probe()).await;
        if !matches!(probe, Ok(Ok(()))) {
            return Ok(false);
        }
        let snapshot = self.store.load()?.snapshot;
        let core = Allocator::restore(Arc::clone(&self.directory()), snapshot)?;
        let mut guard = self.core.lock().unwrap_or_else(|p| p.into_inner());
        *guard = core;
        self.core.clear_poison();
        self.commit.reset();
        self.failed.store(false, Ordering::Release);
        drop(guard);
        if let Some(h) = &self.hooks {
            // A round written but never confirmed may be on disk, its events with it.
            if let Err(e) = h.rescan() {
                tracing::warn!(error = %e, "webhook deliveries not rescanned after healing");
            }
        }
        tracing::warn!("storage works again: state reloaded from disk, serving again");
        Ok(true)
    }

    /// Serves the pools `specs` from now on (a reload): new pools and numbers are leased at
    /// once; a removed number finishes its lease and quarantine and is never leased again;
    /// every lease stays as it is. Refused, changing nothing, when the state forbids it (a
    /// number moving between pools, a pool removed while it holds numbers or codes, a pool
    /// switching modes, a shared number changing under held codes). Nothing is written: the configuration, not the store, is where pools live.
    pub fn reconfigure(&self, specs: Vec<PoolSpec>) -> Result<Reconfigured, ServiceError> {
        let mut core = self.lock()?;
        let old = Arc::clone(core.directory());
        let next = old.evolve(specs)?;
        // The store first: effects already queued name pools of `old`, the same under `next`.
        self.store.set_directory(Arc::clone(&next))?;
        if let Err(e) = core.reconfigure(Arc::clone(&next)) {
            self.store.set_directory(old)?;
            return Err(e.into());
        }
        *self.dir.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&next);
        drop(core);
        let mut changes = Reconfigured::default();
        for p in next.ids() {
            let known = old.specs().get(p.0 as usize);
            let was = |slot: usize| {
                known.is_some_and(|s| slot < s.numbers.len()) && !old.retired(p, slot as u32)
            };
            let numbers = next.spec(p).numbers.len();
            let added = (0..numbers)
                .filter(|&i| !was(i) && !next.retired(p, i as u32))
                .count();
            let retired = (0..numbers)
                .filter(|&i| was(i) && next.retired(p, i as u32))
                .count();
            let name = next.name(p).to_owned();
            if known.is_none() {
                let currency = next.spec(p).tariff.map(|t| t.currency);
                self.metrics
                    .register_pool(&name, currency.as_ref().map(Currency::as_str));
                changes.pools_added.push(name.clone());
            } else if next.removed(p) && !old.removed(p) {
                changes.pools_removed.push(name.clone());
            }
            if added + retired > 0 {
                changes.numbers.push((name, added, retired));
            }
        }
        Ok(changes)
    }

    /// A page of a pool's numbers with their state and holder.
    pub fn numbers(
        &self,
        pool: PoolId,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<crate::core::NumberView>, ServiceError> {
        Ok(self.lock()?.numbers(pool, offset, limit))
    }

    pub fn pools(&self) -> Result<Vec<PoolView>, ServiceError> {
        let core = self.lock()?;
        let now = self.clock.now();
        let dir = core.directory();
        Ok(dir
            .serving()
            .map(|p| PoolView {
                name: dir.name(p).to_owned(),
                stats: core.pool_stats(p),
                capacity: core.capacity(p, DEFAULT_BLOCKING, now).ok(),
            })
            .collect())
    }

    /// What pool `pool`'s traffic says of its size, aiming at `blocking` (0 to 1, exclusive).
    pub fn capacity(&self, pool: PoolId, blocking: f64) -> Result<Capacity, ServiceError> {
        Ok(self.lock()?.capacity(pool, blocking, self.clock.now())?)
    }

    /// Ready when the store works and the wheel is at most two ticks behind the clock.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(d) = self.commit.writing_for().filter(|d| d.as_secs() >= 2) {
            return Err(format!(
                "a write to disk has been stuck for {} s",
                d.as_secs()
            ));
        }
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
                let set = |state: &str, v: usize| {
                    m.pool_numbers
                        .with_label_values(&[&p.name, state])
                        .set(v as i64)
                };
                set("free", s.free);
                set("leased", s.leased);
                set("cooling", s.cooling);
                m.pool_size.with_label_values(&[&p.name]).set(s.size as i64);
                let busy = (s.leased + s.cooling) as f64 / s.size.max(1) as f64;
                m.pool_saturation.with_label_values(&[&p.name]).set(busy);
                if let Some(c) = &p.capacity {
                    for (w, load) in [
                        (Window::LastHour, &c.last_hour),
                        (Window::BusiestHour, &c.busiest_hour),
                    ] {
                        m.pool_offered
                            .with_label_values(&[&p.name, w.as_str()])
                            .set(load.erlangs);
                    }
                    m.pool_recommended
                        .with_label_values(&[&p.name])
                        .set(c.recommended.min(i64::MAX as u64) as i64);
                }
            }
        }
        if let Ok(core) = self.lock() {
            self.metrics.live_leases.set(core.lease_count() as i64);
            // Measured at scrape time: a stalled tick task shows as growing lag.
            let (pending, done) = core.wheel_status();
            let lag = self.clock.now().tick_floor().saturating_sub(done);
            self.metrics.wheel_pending.set(pending as i64);
            self.metrics.wheel_lag.set((lag * TICK_MS) as f64 / 1000.0);
        }
        self.metrics
            .store_size
            .set(self.store.size_on_disk() as i64);
        if let Some(h) = &self.hooks {
            h.refresh_gauges();
        }
    }

    /// Checks the core's invariants (for tests and drills); `Err` names the broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.lock().map_err(|e| e.to_string())?.check_invariants()
    }

    /// Tells long-lived streams to end: shutdown has begun.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Flushes everything written, then folds the log into a snapshot so the next start
    /// reads little of it; called once the server has stopped taking requests.
    pub fn shutdown(&self) -> Result<(), ServiceError> {
        {
            let _core = self.lock()?;
            self.commit.flush_now()?;
        }
        if let Some(h) = &self.hooks {
            h.stop();
        }
        // Everything is on disk already: a snapshot that fails costs the next start time only.
        let started = std::time::Instant::now();
        match self.store.snapshot() {
            Ok(Some(seq)) => tracing::info!(
                seq,
                ms = started.elapsed().as_millis() as u64,
                "snapshot written at shutdown"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "no snapshot at shutdown; the next start replays the log")
            }
        }
        Ok(())
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
    /// waits until they are durable; only then are metrics counted and events published.
    /// Effects are persisted even when the operation reports an error (settling an overdue
    /// lease, say), so memory never runs ahead of the disk.
    async fn write<R>(
        &self,
        op: impl FnOnce(&mut Allocator, Timestamp, &mut Outbox) -> Result<R, CoreError>,
    ) -> Result<R, ServiceError> {
        let (res, seq, notices, queued) = {
            let mut core = self.lock()?;
            let now = self.clock.now();
            let mut out = Outbox::new();
            let res = op(&mut core, now, &mut out);
            let deliveries = match &self.hooks {
                Some(h) => h.router().derive(&core, &out, now),
                None => Vec::new(),
            };
            let queued: Vec<(DeliveryId, Timestamp)> =
                deliveries.iter().map(|d| (d.id, d.next_at)).collect();
            let Outbox { effects, notices } = out;
            let seq = if effects.is_empty() && deliveries.is_empty() {
                None
            } else {
                match self.commit.submit(Group {
                    effects,
                    deliveries,
                }) {
                    Ok(seq) => Some(seq),
                    Err(e) => {
                        self.failed.store(true, Ordering::Release);
                        self.metrics
                            .store_failures
                            .with_label_values(&["write"])
                            .inc();
                        tracing::error!(error = %e, "store write failed; serving nothing until restart");
                        return Err(e.into());
                    }
                }
            };
            let notices = self.describe(&core, notices);
            (res, seq, notices, queued)
        };
        if let Some(seq) = seq {
            if let Err(e) = self.commit.durable(seq).await {
                self.failed.store(true, Ordering::Release);
                return Err(e.into());
            }
        }
        if let (Some(h), false) = (&self.hooks, queued.is_empty()) {
            h.enqueue(&queued);
        }
        self.publish(notices);
        Ok(res?)
    }

    /// Resolves what notices need from the core (names, counters) while the lock is held.
    fn describe(&self, core: &Allocator, notices: Vec<Notice>) -> Vec<Described> {
        let name = |p: PoolId| core.directory().name(p).to_owned();
        notices
            .into_iter()
            .map(|n| {
                let lease_of = |id: &LeaseId| {
                    core.lease(id)
                        .map(|l| (l.calls, l.calls_required, l.paid(), name(l.pool)))
                };
                match &n {
                    Notice::Ended { lease, .. }
                    | Notice::CallStarted { lease, .. }
                    | Notice::CallEnded { lease, .. }
                    | Notice::Paid { lease } => Described {
                        counters: lease_of(lease),
                        pool: None,
                        notice: n,
                    },
                    Notice::Attributed { pool, .. } => Described {
                        counters: None,
                        pool: pool.map(name),
                        notice: n,
                    },
                    Notice::Charged { pool, .. } | Notice::TicketIssued { pool, .. } => Described {
                        counters: None,
                        pool: Some(name(*pool)),
                        notice: n,
                    },
                    Notice::Purged { .. }
                    | Notice::Redeemed { .. }
                    | Notice::TicketRedeemed { .. }
                    | Notice::PassRevoked { .. }
                    | Notice::Exhausted { .. } => Described {
                        counters: None,
                        pool: None,
                        notice: n,
                    },
                }
            })
            .collect()
    }

    fn publish(&self, notices: Vec<Described>) {
        for d in notices {
            let (calls, calls_required, paid, pool) = d.counters.clone().unwrap_or_default();
            let event = |lease: LeaseId,
                         kind,
                         call: Option<&CallId>,
                         duration: Option<u32>,
                         counted: Option<bool>| {
                let e = Arc::new(LeaseEvent {
                    id: self.next_event.fetch_add(1, Ordering::Relaxed) + 1,
                    lease,
                    kind,
                    calls,
                    calls_required,
                    paid,
                    call_id: call.map(|c| c.as_str().to_owned()),
                    duration_secs: duration,
                    counted,
                });
                if let Ok(mut b) = self.backlog.lock() {
                    let q = b.entry(lease).or_default();
                    if q.len() == EVENT_BACKLOG {
                        q.pop_front();
                    }
                    q.push_back(Arc::clone(&e));
                }
                self.streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(e);
            };
            match d.notice {
                Notice::Ended {
                    lease,
                    pool: _,
                    reason,
                    lived,
                } => {
                    let (counter, kind) = match reason {
                        EndReason::Expired => (&self.metrics.expiries, EventKind::Expired),
                        EndReason::Released => (&self.metrics.releases, EventKind::Released),
                    };
                    counter.with_label_values(&[&pool]).inc();
                    self.metrics
                        .lease_lifetime
                        .with_label_values(&[&pool])
                        .observe(lived.as_secs_f64());
                    event(lease, kind, None, None, None);
                }
                Notice::Attributed {
                    reason,
                    first_call_after,
                    ..
                } => {
                    let pool = d.pool.unwrap_or_default();
                    self.metrics
                        .calls
                        .with_label_values(&[&pool, reason.as_str()])
                        .inc();
                    if let Some(after) = first_call_after {
                        self.metrics
                            .first_call
                            .with_label_values(&[&pool])
                            .observe(after.as_secs_f64());
                    }
                }
                Notice::CallStarted { lease, call } => {
                    event(lease, EventKind::CallStarted, Some(&call), None, None)
                }
                Notice::CallEnded {
                    lease,
                    call,
                    duration_secs,
                    counted,
                } => {
                    let label = if counted { "true" } else { "false" };
                    self.metrics
                        .call_ends
                        .with_label_values(&[&pool, label])
                        .inc();
                    event(
                        lease,
                        EventKind::CallEnded,
                        Some(&call),
                        Some(duration_secs),
                        Some(counted),
                    )
                }
                Notice::Paid { lease } => {
                    self.metrics.paid.with_label_values(&[&pool]).inc();
                    event(lease, EventKind::Paid, None, None, None)
                }
                Notice::Charged { charge, .. } => {
                    let pool = d.pool.unwrap_or_default();
                    self.metrics
                        .billed_seconds
                        .with_label_values(&[&pool])
                        .inc_by(u64::from(charge.billed_secs));
                    if let Ok(cents) = u64::try_from(charge.amount.cents()) {
                        self.metrics
                            .amount
                            .with_label_values(&[&pool, charge.currency.as_str()])
                            .inc_by(cents);
                    }
                }
                Notice::TicketIssued { .. } => {
                    let pool = d.pool.unwrap_or_default();
                    self.metrics
                        .tickets_issued
                        .with_label_values(&[&pool])
                        .inc();
                }
                // Counted where they happen (redeem outcomes, rejected allocations); for
                // webhooks only.
                Notice::Redeemed { .. }
                | Notice::TicketRedeemed { .. }
                | Notice::PassRevoked { .. }
                | Notice::Exhausted { .. } => {}
                Notice::Purged { lease } => {
                    if let Ok(mut b) = self.backlog.lock() {
                        b.remove(&lease);
                    }
                    self.streams
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .by_lease
                        .remove(&lease);
                }
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // The worker's threads hold it only while they work, but in turns: tell them to end,
        // so the store closes.
        if let Some(h) = &self.hooks {
            h.stop();
        }
    }
}

/// The live event channels of the leases someone follows.
#[derive(Default)]
struct Streams {
    by_lease: HashMap<LeaseId, broadcast::Sender<Arc<LeaseEvent>>>,
    /// Past this many channels, those nobody listens to any more are dropped (then the mark
    /// doubles): subscribing to made-up ids leaves nothing behind for long, at little cost.
    sweep_at: usize,
}

impl Streams {
    fn subscribe(&mut self, lease: LeaseId) -> broadcast::Receiver<Arc<LeaseEvent>> {
        if self.by_lease.len() >= self.sweep_at.max(64) {
            self.by_lease.retain(|_, tx| tx.receiver_count() > 0);
            self.sweep_at = self.by_lease.len() * 2;
        }
        self.by_lease
            .entry(lease)
            .or_insert_with(|| broadcast::channel(EVENT_BACKLOG).0)
            .subscribe()
    }

    fn send(&mut self, e: Arc<LeaseEvent>) {
        let lease = e.lease;
        if let Some(tx) = self.by_lease.get(&lease) {
            if tx.send(e).is_err() {
                // Nobody follows this lease any more.
                self.by_lease.remove(&lease);
            }
        }
    }
}

/// A notice with what the core could tell about it at the time.
struct Described {
    notice: Notice,
    /// (calls, calls_required, paid, pool name) of the lease concerned.
    counters: Option<(u32, u32, bool, String)>,
    pool: Option<String>,
}

/// A pass as seen at one instant.
#[derive(Clone, Debug)]
pub struct PassView {
    pub pass: Pass,
    pub pool: String,
    pub valid: bool,
}

/// A redeemed ticket, with what the site needs to show.
#[derive(Clone, Debug)]
pub struct TicketView {
    pub ticket: Ticket,
    pub pool: String,
    pub formula: Option<Formula>,
    pub pass: Option<PassView>,
}

pub(crate) fn pass_view(core: &Allocator, pass: Pass, now: Timestamp) -> PassView {
    PassView {
        pool: core.directory().name(pass.pool).to_owned(),
        valid: pass.valid(now),
        pass,
    }
}

/// Fresh randomness for tickets, from the thread's CSPRNG.
fn entropy() -> Entropy {
    let mut rng = rand::thread_rng();
    Entropy {
        id: rng.gen(),
        code: rng.gen(),
    }
}

/// Refuses (as "unknown") a lease that is not `owner`'s.
fn owned(core: &Allocator, id: &LeaseId, owner: &TenantId) -> Result<(), CoreError> {
    match core.lease(id) {
        Some(l) if &l.tenant == owner => Ok(()),
        _ => Err(CoreError::UnknownLease),
    }
}

pub(crate) fn view(core: &Allocator, lease: Lease, now: Timestamp) -> LeaseView {
    LeaseView {
        pool: core.directory().name(lease.pool).to_owned(),
        tariff: core.directory().spec(lease.pool).tariff,
        state: lease.state(now),
        pass: lease
            .pass
            .and_then(|id| core.pass(&id))
            .map(|p| pass_view(core, p.clone(), now)),
        lease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(lease: LeaseId) -> Arc<LeaseEvent> {
        Arc::new(LeaseEvent {
            id: 1,
            lease,
            kind: EventKind::Paid,
            calls: 1,
            calls_required: 1,
            paid: true,
            call_id: None,
            duration_secs: None,
            counted: None,
        })
    }

    #[test]
    fn a_lease_event_wakes_only_that_leases_streams() {
        let (a, b) = (LeaseId::from_bytes([1; 16]), LeaseId::from_bytes([2; 16]));
        let mut streams = Streams::default();
        let mut on_a = streams.subscribe(a);
        streams.send(event(b));
        assert!(
            on_a.try_recv().is_err(),
            "another lease's event is not seen"
        );
        streams.send(event(a));
        assert_eq!(on_a.try_recv().unwrap().lease, a);
    }

    #[test]
    fn channels_nobody_follows_are_dropped() {
        let mut streams = Streams::default();
        // Streams opened on made-up ids, then closed.
        for i in 0..1000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            drop(streams.subscribe(LeaseId::from_bytes(id)));
        }
        let kept = streams.subscribe(LeaseId::from_bytes([9; 16]));
        assert!(streams.by_lease.len() <= 128, "{}", streams.by_lease.len());
        // A lease whose followers left loses its channel at its next event.
        let gone = LeaseId::from_bytes([7; 16]);
        drop(streams.subscribe(gone));
        streams.send(event(gone));
        assert!(!streams.by_lease.contains_key(&gone));
        drop(kept);
    }
}

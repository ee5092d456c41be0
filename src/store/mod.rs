//! Durable state: a log of state changes and snapshot files, beside the call journal, in the
//! data folder. Each commit round writes the journal's keys and one log entry of the round's
//! state changes as one atomic sled batch; compaction ([`compact`]) folds the log into
//! snapshot files in the background; recovery reads the newest good snapshot and replays the
//! log after it.
//!
//! State keys (the log's entries change them; snapshots hold them; the first byte is the
//! record kind, values are [`record`]'s versioned encodings):
//! - `L` + lease id (16 bytes) → lease record.
//! - `R` + caller digits (8 bytes) + called digits (8 bytes) → return route.
//! - `T` + ticket id → ticket; `P` + pass id → access pass; `G` + pool tag (8 bytes: the
//!   first bytes of SHA-256 of the pool's name, so reordering pools moves nothing) + caller
//!   digits (8 bytes) → a caller's progress through a ticketing formula.
//! - `Q` + tenant + 0 + listing → where that listing's calls go (a target).
//! - `S` + pool tag (8 bytes) + bucket index (8 bytes, big-endian: its start over five
//!   minutes) → a pool's traffic counts in that bucket (for capacity planning).
//! - `W` + due tick (8 bytes, big-endian) + kind (1 byte: L, C, R, T, P, G) + id (16 bytes) → empty:
//!   a wheel entry. Big-endian ticks make byte order time order.
//!
//! sled keys:
//! - `X` + seq (8 bytes, big-endian) → a log entry ([`log`]): one round's state changes.
//! - `C` + call key (16 bytes) → versioned call record. Kept after memory forgets the call:
//!   this is the call journal, never loaded whole.
//! - `J` + time (ms, 8 bytes big-endian) + record id (16 bytes) → the record's kind byte (`C`
//!   or `E`): the journal's time index.
//! - `E` + ticket id (15 bytes) + event kind → a ticket event (issued, redeemed, expired),
//!   indexed in the journal like calls.
//! - `H` + status + delivery id → a webhook delivery ([`deliveries`]): written in the batch of
//!   the change that caused its event, then moved between statuses by the delivery worker.
//! - `M` + name → metadata: `Mformat` (the store format, checked on open; older formats are
//!   migrated, see [`migrate`]), `Mnow` (the time watermark), `Mlogstart` (the first log seq
//!   still held), `Mprobe`.
//!
//! Files: `state-<seq>.snap` ([`snapshot`]), sled's own (`conf`, `db`, `blobs/`, `snap.*`).

mod commit;
mod compact;
mod deliveries;
pub mod etcd;
mod faults;
mod log;
mod migrate;
mod record;
mod snapshot;
mod stats;

pub use commit::Committer;
pub use compact::Policy;
pub use deliveries::{Delivery, DeliveryId, DeliveryLog, DeliveryStatus, Group};
pub use faults::{Fault, Faulty};
pub use record::{CallRow, EventRow, Pseudonym, TicketRow};
pub use stats::{tenant_tag, Cell};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

use crate::core::{
    CallKey, Directory, Due, Effect, Lease, LeaseId, ListingId, PassId, PhoneNumber, PoolId,
    ProgressKey, ReturnKey, Snapshot, TenantId, TicketEvent, TicketEventKind, TicketId, Timestamp,
};

const LEASE: u8 = b'L';
const CALL: u8 = b'C';
const JOURNAL: u8 = b'J';
const RETURN: u8 = b'R';
const TICKET: u8 = b'T';
const PASS: u8 = b'P';
const PROGRESS: u8 = b'G';
const EVENT: u8 = b'E';
/// A purged lease as it last stood, by creation time: the transactions' history.
const HISTORY: u8 = b'Y';
/// A lease or pass event (redeemed, refunded, pass revoked): journal, like calls.
const LEASE_EVENT: u8 = b'V';
const LISTING: u8 = b'Q';
const WHEEL: u8 = b'W';
/// Traffic buckets; new in this release, within format 3 (older stores simply have none).
const TRAFFIC: u8 = b'S';
/// The kinds of state keys that format 2 held as sled keys, which migration moves into the
/// log (traffic buckets came later, in the log from the start).
const STATE_KINDS: [u8; 7] = [PROGRESS, LEASE, PASS, LISTING, RETURN, TICKET, WHEEL];
const FORMAT_KEY: &[u8] = b"Mformat";
const WATERMARK_KEY: &[u8] = b"Mnow";
/// The first log seq the log still holds (every entry from it on is there); absent: 1.
const LOG_START_KEY: &[u8] = b"Mlogstart";
/// The key of the callers' pseudonyms (32 random bytes, made at first open): HMAC keys them,
/// so a pseudonym cannot be reversed by hashing every possible number.
const PSEUDONYM_KEY: &[u8] = b"Mpseudokey";
/// The journal key up to which callers' numbers were replaced (exclusive).
const PSEUDONYMIZED_KEY: &[u8] = b"Mpseudoupto";
/// Written by the probe that checks a failed disk takes writes again.
const PROBE_KEY: &[u8] = b"Mprobe";
const FORMAT: &[u8] = b"leaseline-store-3";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Corrupt(String),
    /// A snapshot file failed its checks (another one, or the log, may stand in for it).
    #[error("bad snapshot {0}")]
    BadSnapshot(String),
    #[error("storage is failing: {0}")]
    Failed(String),
    #[error("the cursor is not one this journal gave")]
    BadCursor,
}

/// What was on disk at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    pub snapshot: Snapshot,
    /// Records of pools no longer configured: left on disk untouched, not served.
    pub orphans: usize,
    /// The log seq of the snapshot file the state was read from (`None`: the log alone).
    pub from_snapshot: Option<u64>,
    /// Log changes replayed after it.
    pub replayed: u64,
}
/// One line of the journal: a call, or something that happened to a ticket.
#[derive(Debug, Clone)]
pub enum JournalRow {
    Call(CallRow),
    Ticket(TicketRow),
    Event(EventRow),
}

impl JournalRow {
    pub fn pool(&self) -> Option<&str> {
        match self {
            JournalRow::Call(c) => c.pool.as_deref(),
            JournalRow::Ticket(t) => Some(&t.pool),
            JournalRow::Event(e) => Some(&e.pool),
        }
    }
}

/// A page of the call journal, newest first.
#[derive(Debug, Default)]
pub struct JournalPage {
    pub rows: Vec<JournalRow>,
    /// The journal key of each row, for the cursor.
    keys: Vec<[u8; 25]>,
    /// Pass back to get the next (older) page; `None` on the last page.
    pub next: Option<String>,
}

/// Which calls a journal page holds.
#[derive(Debug, Default, Clone)]
pub struct JournalQuery {
    /// Only these pools' rows (`None`: every pool, and calls to numbers of no pool).
    pub pools: Option<Vec<String>>,
    /// Calls started at or after this instant.
    pub since: Option<Timestamp>,
    /// Calls started before this instant.
    pub until: Option<Timestamp>,
    /// Continue after this cursor (from a previous page).
    pub cursor: Option<String>,
    pub limit: usize,
}

/// What the committer writes through: the store itself, or a wrapper that injects faults.
pub trait Backend: Send + Sync + 'static {
    /// Writes many operations' effects (and the webhook deliveries they caused), each
    /// operation atomically, in order.
    fn write_groups(&self, groups: &[Group]) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// After a failure: checks that a write and a flush work again, repairing what can be
    /// repaired first (sled keeps a failed write as an error for good: the store reopens).
    fn probe(&self) -> Result<(), StoreError>;
}

/// What the service asks of persistence besides writes ([`Backend`]): recovery, the journal,
/// the time watermark, snapshots. With `Backend`, all the service knows of its store, so a
/// replicated one (etcd) can stand in for sled without the service or the core changing.
pub trait Storage: Send + Sync + 'static {
    /// Reads back what the core needs to rebuild itself (see [`Store::load`]).
    fn load(&self) -> Result<Recovered, StoreError>;
    /// One page of the call journal, newest first.
    fn journal(&self, q: &JournalQuery) -> Result<JournalPage, StoreError>;
    /// The statistics' cells of the UTC days `from..=to` (days since 1970-01-01).
    fn stats(&self, from: u32, to: u32) -> Result<Vec<Cell>, StoreError>;
    /// Replaces callers' numbers in the journal's calls started before `before` by keyed
    /// hashes, at most `max` rows at a time (see [`Store::pseudonymize`]).
    fn pseudonymize(&self, before: Timestamp, max: usize) -> Result<usize, StoreError>;
    /// Purged leases, newest first (see [`Store::lease_history`]).
    fn lease_history(
        &self,
        before: Option<(Timestamp, LeaseId)>,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
        keep: &dyn Fn(&Lease) -> bool,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError>;
    /// The last instant a running Leaseline recorded.
    fn watermark(&self) -> Option<Timestamp>;
    /// Records how far time has got; made durable by the next flush.
    fn set_watermark(&self, now: Timestamp);
    fn size_on_disk(&self) -> u64;
    /// Folds every durable change into a new snapshot now (at clean shutdown), waiting for it;
    /// `None` if nothing changed since the newest one.
    fn snapshot(&self) -> Result<Option<u64>, StoreError>;
    /// Names pools by `pools` from now on (a reload; see [`Store::set_directory`]).
    fn set_directory(&self, pools: Arc<Directory>) -> Result<(), StoreError>;
}

impl Backend for Store {
    fn write_groups(&self, groups: &[Group]) -> Result<(), StoreError> {
        self.write(groups.iter().map(|g| (&g.effects[..], &g.deliveries[..])))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Store::flush(self).map(drop)
    }

    fn probe(&self) -> Result<(), StoreError> {
        let written = |db: &sled::Db| -> Result<(), StoreError> {
            db.insert(PROBE_KEY, &[1u8][..])?;
            db.flush()?;
            Ok(())
        };
        if self.disk.db().and_then(|db| written(&db)).is_ok() {
            return Ok(());
        }
        self.reopen()?;
        written(&self.disk.db()?)
    }
}

impl Storage for Store {
    fn load(&self) -> Result<Recovered, StoreError> {
        Store::load(self)
    }

    fn journal(&self, q: &JournalQuery) -> Result<JournalPage, StoreError> {
        Store::journal(self, q)
    }

    fn stats(&self, from: u32, to: u32) -> Result<Vec<Cell>, StoreError> {
        Store::stats(self, from, to)
    }

    fn pseudonymize(&self, before: Timestamp, max: usize) -> Result<usize, StoreError> {
        Store::pseudonymize(self, before, max)
    }

    fn lease_history(
        &self,
        before: Option<(Timestamp, LeaseId)>,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
        keep: &dyn Fn(&Lease) -> bool,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        Store::lease_history(self, before, since, until, keep, limit)
    }

    fn watermark(&self) -> Option<Timestamp> {
        Store::watermark(self)
    }

    fn set_watermark(&self, now: Timestamp) {
        Store::set_watermark(self, now)
    }

    fn size_on_disk(&self) -> u64 {
        Store::size_on_disk(self)
    }

    fn snapshot(&self) -> Result<Option<u64>, StoreError> {
        self.compact()
    }

    fn set_directory(&self, pools: Arc<Directory>) -> Result<(), StoreError> {
        Store::set_directory(self, pools)
    }
}

pub struct Store {
    /// The database, the folder and the log's counters, shared with the compaction thread.
    disk: Arc<Disk>,
    /// How records name pools, from the directory served (a reload swaps it).
    names: RwLock<Arc<Names>>,
    compactor: compact::Compactor,
}

/// How records name pools, for one directory: records name their pool, and progress keys
/// carry a tag of its name; these map both to this process's ids.
struct Names {
    pools: Arc<Directory>,
    /// Pools by tag; tags by pool index.
    by_tag: HashMap<[u8; 8], PoolId>,
    tags: Vec<[u8; 8]>,
}

impl Names {
    fn new(pools: Arc<Directory>) -> Result<Names, StoreError> {
        let tags: Vec<[u8; 8]> = pools.ids().map(|p| pool_tag(pools.name(p))).collect();
        let by_tag: HashMap<[u8; 8], PoolId> = tags
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, PoolId(i as u32)))
            .collect();
        if by_tag.len() != tags.len() {
            return Err(StoreError::Corrupt(
                "two pool names share a storage tag; rename one".into(),
            ));
        }
        Ok(Names {
            pools,
            by_tag,
            tags,
        })
    }
}

/// What the store shares with its compaction thread.
struct Disk {
    /// `None` only while reopening (or when a reopen failed: the next heal tries again).
    db: RwLock<Option<sled::Db>>,
    dir: PathBuf,
    cache_capacity: u64,
    /// The seq the next log entry takes; held while a round is written, so seqs follow
    /// sled's order.
    next_seq: Mutex<u64>,
    /// The last log entry written, and the last one made durable by a flush: compaction
    /// folds in only durable entries (a crash may still lose the others).
    written: AtomicU64,
    durable: AtomicU64,
    /// State changes logged since the store opened (the log tail read at load included), and
    /// how many of them the newest snapshot covers: what is pending is the difference (an
    /// estimate that triggers compaction, off by a round at most).
    logged: AtomicU64,
    covered: AtomicU64,
    /// Snapshot files found damaged during this run: not built upon again.
    bad: Mutex<HashSet<u64>>,
    /// One compaction at a time.
    compacting: Mutex<()>,
    /// Set when the store closes: a running compaction stops (its file is removed).
    closing: AtomicBool,
}

/// Opens sled in `dir`. sled lets go of its file lock only when its last handle's threads
/// have finished (a handle of this process just dropped keeps it a moment), so a lock held
/// is waited for up to 2 s before it is an error; another process holding it for longer
/// is refused then.
fn open_db(dir: &Path, cache_capacity: u64) -> Result<sled::Db, StoreError> {
    let open = || {
        sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match open() {
            // sled words this error itself (kind `Other`): its message is all there is.
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return Ok(r?),
        }
    }
}

/// The stable 8-byte tag of a pool name in fixed-size keys (progress and its wheel entries).
fn pool_tag(name: &str) -> [u8; 8] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    digest[..8].try_into().expect("8 bytes")
}

/// The last log seq used: the log's last entry or the newest snapshot file's, whichever is
/// later (a cut log may end before the snapshot that covers it).
fn last_seq(db: &sled::Db, dir: &Path) -> Result<u64, StoreError> {
    let logged = match db.scan_prefix([log::LOG]).next_back() {
        Some(item) => log::seq_of(&item?.0)?,
        None => 0,
    };
    let snapped = snapshot::list(dir)?.last().map_or(0, |s| s.seq);
    Ok(logged.max(snapped))
}

impl Disk {
    /// The open database (a cheap handle).
    fn db(&self) -> Result<sled::Db, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Failed("the store is closed after a failure".into()))
    }

    fn log_start(&self) -> Result<u64, StoreError> {
        Ok(match self.db()?.get(LOG_START_KEY)? {
            Some(v) => u64::from_be_bytes(fixed(&v)?),
            None => 1,
        })
    }

    fn pending(&self) -> u64 {
        self.logged
            .load(Ordering::Acquire)
            .saturating_sub(self.covered.load(Ordering::Acquire))
    }

    /// The log's changes after seq `from` up to `to` (inclusive), the last change of each key
    /// winning, and how many changes were read. The entries must follow each other without a
    /// gap: a missing one would silently lose state.
    fn tail(&self, from: u64, to: u64) -> Result<(log::Tail, u64), StoreError> {
        let db = self.db()?;
        let mut tail = log::Tail::new();
        let (mut changes, mut expect) = (0, from + 1);
        for item in db.range(log::key(from + 1)..) {
            let (k, v) = item?;
            if k.first() != Some(&log::LOG) {
                break;
            }
            let seq = log::seq_of(&k)?;
            if seq > to {
                break;
            }
            if seq != expect {
                return Err(StoreError::Corrupt(format!(
                    "the log goes from entry {} to {seq}: entries are missing",
                    expect - 1
                )));
            }
            changes += log::replay(&v, &mut tail)?;
            expect += 1;
        }
        Ok((tail, changes))
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, compacting by the default [`Policy`]. `pools`
    /// gives the names records are stored under.
    pub fn open(
        dir: &Path,
        cache_capacity: u64,
        pools: Arc<Directory>,
    ) -> Result<Store, StoreError> {
        Self::open_with(dir, cache_capacity, pools, Policy::default())
    }

    /// As [`Store::open`], compacting in the background by `policy`. An older format is
    /// migrated first; `.tmp` files a crash left are removed.
    pub fn open_with(
        dir: &Path,
        cache_capacity: u64,
        pools: Arc<Directory>,
        policy: Policy,
    ) -> Result<Store, StoreError> {
        let db = open_db(dir, cache_capacity)?;
        let pool_names: Vec<&str> = pools.ids().map(|p| pools.name(p)).collect();
        match db.get(FORMAT_KEY)? {
            Some(v) if v == FORMAT => {}
            Some(v) if v == migrate::FORMAT_2 => migrate::from_2(&db)?,
            Some(v) if v == migrate::FORMAT_1 => {
                migrate::from_1(&db, &pool_names)?;
                migrate::from_2(&db)?;
            }
            Some(v) => {
                return Err(StoreError::Corrupt(format!(
                    "{} holds store format {:?}, not {:?}: is it another program's data?",
                    dir.display(),
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )))
            }
            None if db.is_empty() => {
                db.insert(FORMAT_KEY, FORMAT)?;
                db.flush()?;
            }
            None => {
                return Err(StoreError::Corrupt(format!(
                    "{} holds data that Leaseline did not write",
                    dir.display()
                )))
            }
        }
        let stale = snapshot::remove_stale(dir)?;
        if stale > 0 {
            tracing::warn!(
                files = stale,
                "removed snapshot files a crash left unfinished"
            );
        }
        let counted = stats::build(&db, &pools)?;
        let names = RwLock::new(Arc::new(Names::new(pools)?));
        if counted > 0 {
            tracing::info!(calls = counted, "statistics index built from the journal");
        }
        let last = last_seq(&db, dir)?;
        let disk = Arc::new(Disk {
            db: RwLock::new(Some(db)),
            dir: dir.to_owned(),
            cache_capacity,
            next_seq: Mutex::new(last + 1),
            written: AtomicU64::new(last),
            durable: AtomicU64::new(last),
            logged: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            bad: Mutex::new(HashSet::new()),
            compacting: Mutex::new(()),
            closing: AtomicBool::new(false),
        });
        Ok(Store {
            compactor: compact::Compactor::new(Arc::clone(&disk), policy),
            disk,
            names,
        })
    }

    /// Names pools by `pools` from now on: the directory a reload made, whose ids extend the
    /// current one's (so writes already queued name the same pools either way).
    pub fn set_directory(&self, pools: Arc<Directory>) -> Result<(), StoreError> {
        let names = Arc::new(Names::new(pools)?);
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
        Ok(())
    }

    fn names(&self) -> Arc<Names> {
        Arc::clone(&self.names.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads back what the core needs: every lease, return route, ticket, pass, progress,
    /// listing and wheel entry (the newest snapshot that checks out, merged with the log after
    /// it, streamed: the state is never held twice), and the calls the wheel still remembers
    /// (older calls live on only in the journal). A damaged snapshot is skipped with a warning
    /// for the one before it and a longer log; with none left, the whole log, if it still
    /// goes back to the beginning.
    pub fn load(&self) -> Result<Recovered, StoreError> {
        // Not while a compaction (after a heal, say) renames files and cuts the log.
        let _files = self
            .disk
            .compacting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let db = self.disk.db()?;
        let start = self.disk.log_start()?;
        let files = snapshot::list(&self.disk.dir)?;
        for file in files.iter().rev().map(Some).chain([None]) {
            let from = file.map_or(0, |s| s.seq);
            if from + 1 < start {
                if let Some(f) = file {
                    tracing::warn!(
                        snapshot = %f.path.display(),
                        log_start = start,
                        "snapshot older than the log kept: cannot be used"
                    );
                }
                continue;
            }
            let (tail, changes) = self.disk.tail(from, u64::MAX)?;
            let calls = |k: &[u8]| Ok(db.get(k)?.map(|v| v.to_vec()));
            let mut loader = Loader::new(self.names(), &calls);
            match file {
                None => {
                    for (k, v) in &tail {
                        if let Some(v) = v {
                            loader.entry(k, v)?;
                        }
                    }
                }
                Some(f) => match compact::merge(f, &tail, |k, v| loader.entry(k, v)) {
                    Ok(()) => {}
                    Err(compact::MergeError::Sink(e)) => {
                        // A record that does not decode: damage (then another snapshot will do)
                        // or a record this build cannot read (then none will).
                        let checked = compact::merge(f, &log::Tail::new(), |_, _| Ok(()));
                        match checked {
                            Err(compact::MergeError::Snapshot(bad)) => {
                                self.skip(f, &bad);
                                continue;
                            }
                            _ => return Err(e),
                        }
                    }
                    Err(compact::MergeError::Snapshot(bad)) => {
                        self.skip(f, &bad);
                        continue;
                    }
                },
            }
            self.disk.logged.store(changes, Ordering::Release);
            self.disk.covered.store(0, Ordering::Release);
            let mut out = loader.out;
            out.from_snapshot = file.map(|f| f.seq);
            out.replayed = changes;
            return Ok(out);
        }
        Err(StoreError::Corrupt(format!(
            "no snapshot in {} can be read and the log no longer goes back to the beginning: \
             the state cannot be rebuilt (see the warnings above)",
            self.disk.dir.display()
        )))
    }

    fn skip(&self, file: &snapshot::SnapshotFile, e: &StoreError) {
        tracing::warn!(
            snapshot = %file.path.display(),
            error = %e,
            "snapshot damaged: ignored, reading the one before it and a longer log"
        );
        self.disk
            .bad
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(file.seq);
    }

    /// Writes the effects of one core operation atomically (not yet durable: see
    /// [`Committer`]).
    pub fn apply(&self, effects: &[Effect]) -> Result<(), StoreError> {
        self.write(std::iter::once((effects, &[][..])))
    }

    /// Writes the effects of many operations, in order: the journal's keys and one log entry
    /// of the state changes, in one sled batch. A huge round is split, only ever between two
    /// operations, so each operation stays atomic.
    pub fn apply_groups(&self, groups: &[Vec<Effect>]) -> Result<(), StoreError> {
        self.write(groups.iter().map(|g| (g.as_slice(), &[][..])))
    }

    fn write<'a>(
        &self,
        groups: impl Iterator<Item = (&'a [Effect], &'a [Delivery])>,
    ) -> Result<(), StoreError> {
        /// Past this many changes or bytes, the entry (and its batch) is written and a new
        /// one started.
        const ENTRY_CHANGES: usize = 4096;
        const ENTRY_BYTES: usize = 4 << 20;
        // The seq lock first: a reopen holds it, so no writer holds the old database then.
        let mut next = self.disk.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let db = self.disk.db()?;
        let mut batch = sled::Batch::default();
        let mut entry = log::Entry::default();
        let mut tallies = stats::Pending::new();
        let mut journal = 0;
        let names = self.names();
        for (effects, sent) in groups {
            journal += add_to(&names, &mut batch, &mut entry, &mut tallies, effects);
            journal += deliveries::add_to(&mut batch, sent);
            if entry.ops() + journal >= ENTRY_CHANGES || entry.bytes().len() >= ENTRY_BYTES {
                stats::merge_into(&db, &mut batch, std::mem::take(&mut tallies))?;
                self.commit(&db, &mut next, std::mem::take(&mut batch), entry)?;
                entry = log::Entry::default();
                journal = 0;
            }
        }
        if entry.ops() + journal > 0 || !tallies.is_empty() {
            stats::merge_into(&db, &mut batch, tallies)?;
            self.commit(&db, &mut next, batch, entry)?;
        }
        Ok(())
    }

    /// Writes one batch: the journal's keys in it, and `entry` as log entry `next` if it
    /// holds any change.
    fn commit(
        &self,
        db: &sled::Db,
        next: &mut u64,
        mut batch: sled::Batch,
        entry: log::Entry,
    ) -> Result<(), StoreError> {
        let changes = entry.ops() as u64;
        if changes > 0 {
            batch.insert(&log::key(*next)[..], entry.bytes());
        }
        db.apply_batch(batch)?;
        if changes > 0 {
            self.disk.written.store(*next, Ordering::Release);
            self.disk.logged.fetch_add(changes, Ordering::AcqRel);
            *next += 1;
        }
        Ok(())
    }

    /// Folds every durable log entry into a new snapshot file now, on this thread (after any
    /// compaction running in the background), and cuts the log; `None` if nothing changed
    /// since the newest snapshot. The service calls it at clean shutdown.
    pub fn compact(&self) -> Result<Option<u64>, StoreError> {
        self.compactor.now(true)
    }

    /// For tests: writes and syncs the next snapshot's `.tmp` file in full but stops before
    /// renaming it into place, as a crash at that moment would. The next open removes it;
    /// nothing else changes.
    #[doc(hidden)]
    pub fn compact_torn_for_tests(&self) -> Result<Option<u64>, StoreError> {
        self.compactor.now(false)
    }

    /// The statistics' cells of the UTC days `from..=to`: one key per (day, pool, currency,
    /// listing) that saw anything, read in key order.
    pub fn stats(&self, from: u32, to: u32) -> Result<Vec<Cell>, StoreError> {
        let lo = [&[stats::STATS][..], &from.to_be_bytes()].concat();
        let hi = match to.checked_add(1) {
            Some(d) => [&[stats::STATS][..], &d.to_be_bytes()].concat(),
            None => vec![stats::STATS + 1],
        };
        let db = self.disk.db()?;
        db.range(lo..hi)
            .map(|item| {
                let (k, v) = item?;
                stats::cell(&k, &v, &self.names().by_tag)
            })
            .collect()
    }

    /// Purged leases (the transactions' history), newest first by (creation, id), strictly
    /// before `before` and created in `since..until`, that `keep` accepts: at most `limit`.
    /// Leases of pools no longer configured are left out.
    pub fn lease_history(
        &self,
        before: Option<(Timestamp, LeaseId)>,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
        keep: &dyn Fn(&Lease) -> bool,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        let lo = history_key(
            since.unwrap_or(Timestamp::ZERO),
            &LeaseId::from_bytes([0; 16]),
        );
        let mut hi = match until {
            Some(t) => history_key(t, &LeaseId::from_bytes([0; 16])).to_vec(),
            None => vec![HISTORY + 1],
        };
        if let Some((t, id)) = before {
            let b = history_key(t, &id).to_vec();
            if b < hi {
                hi = b;
            }
        }
        let db = self.disk.db()?;
        let names = self.names();
        let mut out = Vec::new();
        for item in db.range(lo.to_vec()..hi).rev() {
            if out.len() == limit {
                break;
            }
            let (k, v) = item?;
            let id = LeaseId::from_bytes(fixed(&k[9..])?);
            match record::decode_lease(id, &v, |n| names.pools.id(n)) {
                Ok(l) if keep(&l) => out.push(l),
                Ok(_) | Err(record::DecodeError::UnknownPool) => {}
                Err(e) => return Err(corrupt(e)),
            }
        }
        Ok(out)
    }

    /// Replaces the callers' numbers of the journal's calls started before `before` by their
    /// pseudonyms (a keyed hash), at most `max` rows a call, resuming where the last call
    /// stopped; amounts, durations and everything else stay. Returns how many rows changed.
    /// Under the writers' lock, so it never interleaves with a commit or a reopen.
    pub fn pseudonymize(&self, before: Timestamp, max: usize) -> Result<usize, StoreError> {
        use hmac::Mac;
        let _writer = self.disk.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let db = self.disk.db()?;
        let key = match db.get(PSEUDONYM_KEY)? {
            Some(k) => k.to_vec(),
            None => {
                let k: [u8; 32] = rand::random();
                db.insert(PSEUDONYM_KEY, &k[..])?;
                k.to_vec()
            }
        };
        let hash = |digits: u64| -> record::Pseudonym {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key");
            mac.update(&digits.to_be_bytes());
            let out = mac.finalize().into_bytes();
            out[..12].try_into().expect("12 bytes")
        };
        let from = match db.get(PSEUDONYMIZED_KEY)? {
            Some(k) => k.to_vec(),
            None => vec![JOURNAL],
        };
        let to = journal_bound(before).to_vec();
        if from >= to {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        let (mut seen, mut changed, mut upto) = (0, 0, None);
        for item in db.range(from..to.clone()) {
            let (k, kind) = item?;
            if seen == max {
                upto = Some(k.to_vec());
                break;
            }
            seen += 1;
            let id: [u8; 16] = fixed(&k[9..])?;
            let (rk, hidden) = match kind.first() {
                Some(&CALL) => {
                    let rk = call_key(&CallKey(id)).to_vec();
                    let Some(v) = db.get(&rk)? else { continue };
                    (rk, record::pseudonymize_call(&v, hash))
                }
                Some(&EVENT) => {
                    let rk = prefixed(EVENT, &id);
                    let Some(v) = db.get(&rk)? else { continue };
                    (rk, record::pseudonymize_ticket_event(&v, hash))
                }
                _ => continue,
            };
            if let Some(hidden) = hidden.map_err(corrupt)? {
                batch.insert(rk, hidden);
                changed += 1;
            }
        }
        batch.insert(PSEUDONYMIZED_KEY, upto.unwrap_or(to));
        db.apply_batch(batch)?;
        Ok(changed)
    }

    /// One page of the call journal, newest first.
    pub fn journal(&self, q: &JournalQuery) -> Result<JournalPage, StoreError> {
        let (lo, hi) = journal_range(q)?;
        let names = self.names();
        let mut page = JournalPage::default();
        let db = self.disk.db()?;
        let fetch = |k: &[u8]| Ok(db.get(k)?.map(|v| v.to_vec()));
        for item in db.range(lo..hi).rev() {
            let (k, kind) = item?;
            let Some(row) = journal_row(&k, &kind, &names, &fetch)? else {
                continue;
            };
            if page.offer(q, &k, row)? {
                break;
            }
        }
        Ok(page)
    }

    /// Makes every write applied so far durable; returns the bytes flushed. Then, if the log
    /// has grown enough, starts a compaction in the background.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let written = self.disk.written.load(Ordering::Acquire);
        let flushed = self.disk.db()?.flush()?;
        self.disk.durable.fetch_max(written, Ordering::AcqRel);
        self.compactor.maybe_start();
        Ok(flushed)
    }

    /// Closes and opens the database again: after a failed write sled answers every later
    /// write with that error, even once the disk has room again. Recovery on open keeps what
    /// was flushed and drops a torn tail (never acknowledged); the log's counters restart from
    /// what is on disk.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let disk = &self.disk;
        let mut next = disk.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut slot = disk.db.write().unwrap_or_else(|p| p.into_inner());
        drop(slot.take());
        // sled lets go of its file lock once the last handle (a reader finishing) is gone.
        let mut tries = 0;
        loop {
            match open_db(&disk.dir, disk.cache_capacity) {
                Ok(db) => {
                    let last = last_seq(&db, &disk.dir)?;
                    *next = last + 1;
                    disk.written.store(last, Ordering::Release);
                    disk.durable.store(last, Ordering::Release);
                    *slot = Some(db);
                    tracing::warn!("store reopened after a failure");
                    return Ok(());
                }
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!(error = %e, "store not reopened yet");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The last instant a running Leaseline recorded (see `set_watermark`).
    pub fn watermark(&self) -> Option<Timestamp> {
        let v = self.disk.db().ok()?.get(WATERMARK_KEY).ok()??;
        Some(Timestamp::from_millis(u64::from_be_bytes(
            v.as_ref().try_into().ok()?,
        )))
    }

    /// Records how far time has got; made durable by the next flush. At start-up, a wall
    /// clock behind it is not trusted.
    pub fn set_watermark(&self, now: Timestamp) {
        if let Ok(db) = self.disk.db() {
            let _ = db.insert(WATERMARK_KEY, &now.as_millis().to_be_bytes());
        }
    }

    /// sled's files and the snapshot files.
    pub fn size_on_disk(&self) -> u64 {
        let sled = self
            .disk
            .db()
            .map_or(0, |db| db.size_on_disk().unwrap_or(0));
        let snapshots: u64 = snapshot::list(&self.disk.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        sled + snapshots
    }
}

/// Where an operation's journal keys go (sled's batch; the etcd log entry), beside its state
/// changes in the log entry.
trait JournalSink {
    fn put(&mut self, k: &[u8], v: &[u8]);
}

impl JournalSink for sled::Batch {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.insert(k, v);
    }
}

/// Adds one operation's effects: journal keys to `batch`, state changes to `entry`, naming
/// pools by `names`. Returns how many journal keys it added.
fn add_to(
    names: &Names,
    batch: &mut impl JournalSink,
    entry: &mut log::Entry,
    tallies: &mut stats::Pending,
    effects: &[Effect],
) -> usize {
    let name = |p: PoolId| names.pools.name(p);
    let mut journal = 0;
    for e in effects {
        match e {
            Effect::PutLease(l) => {
                entry.put(&lease_key(&l.id), &record::encode_lease(l, name(l.pool)))
            }
            Effect::DelLease(id) => entry.del(&lease_key(id)),
            Effect::ArchiveLease(l) => {
                batch.put(
                    &history_key(l.created_at, &l.id),
                    &record::encode_lease(l, name(l.pool)),
                );
                journal += 1;
            }
            Effect::PutCall(c) => {
                let key = c.id.key();
                let pool = c.attribution.pool.map(name);
                batch.put(&call_key(&key)[..], &record::encode_call(c, pool));
                batch.put(&journal_key(c.started_at, &key.0)[..], &[CALL][..]);
                journal += 2;
            }
            Effect::PutTicket(t) => entry.put(
                &prefixed(TICKET, &t.id.0),
                &record::encode_ticket(t, name(t.pool)),
            ),
            Effect::DelTicket(id) => entry.del(&prefixed(TICKET, &id.0)),
            Effect::PutPass(p) => entry.put(
                &prefixed(PASS, &p.id.0),
                &record::encode_pass(p, name(p.pool)),
            ),
            Effect::DelPass(id) => entry.del(&prefixed(PASS, &id.0)),
            Effect::PutProgress(p) => entry.put(
                &prefixed(PROGRESS, &names.progress_id(&p.key)),
                &record::encode_progress(p),
            ),
            Effect::DelProgress(k) => entry.del(&prefixed(PROGRESS, &names.progress_id(k))),
            Effect::PutListing(t, l, target) => {
                entry.put(&listing_key(t, l), &record::encode_target(target))
            }
            Effect::DelListing(t, l) => entry.del(&listing_key(t, l)),
            Effect::TicketEvent(e) => {
                let id = event_id(e);
                batch.put(
                    &prefixed(EVENT, &id)[..],
                    &record::encode_ticket_event(e, name(e.ticket.pool)),
                );
                batch.put(&journal_key(e.at, &id)[..], &[EVENT][..]);
                journal += 2;
            }
            Effect::JournalEvent(e) => {
                batch.put(
                    &prefixed(LEASE_EVENT, &e.id),
                    &record::encode_journal_event(e, name(e.pool)),
                );
                batch.put(&journal_key(e.at, &e.id), &[LEASE_EVENT]);
                journal += 2;
            }
            Effect::Tally(t) => stats::add(tallies, t, name(t.pool)),
            Effect::PutReturn(r) => entry.put(&return_key(&r.key), &record::encode_return(r)),
            Effect::DelReturn(k) => entry.del(&return_key(k)),
            Effect::PutWheel(t, due) => entry.put(&names.wheel_key(*t, due), &[]),
            Effect::DelWheel(t, due) => entry.del(&names.wheel_key(*t, due)),
            Effect::PutTraffic(p, index, b) => entry.put(
                &prefixed(TRAFFIC, &names.traffic_id(*p, *index)),
                &record::encode_traffic(b),
            ),
            Effect::DelTraffic(p, index) => {
                entry.del(&prefixed(TRAFFIC, &names.traffic_id(*p, *index)))
            }
        }
    }
    journal
}

/// A call record by its key (sled's, or etcd's folded keys and log).
type CallLookup<'a> = dyn Fn(&[u8]) -> Result<Option<Vec<u8>>, StoreError> + 'a;

/// Turns state entries, in key order, into the core's [`Snapshot`]: the dispatch by record
/// kind that recovery and nothing else uses.
struct Loader<'a> {
    names: Arc<Names>,
    /// A call record by its key: for the calls the wheel remembers (the journal's records).
    calls: &'a CallLookup<'a>,
    out: Recovered,
}

impl<'a> Loader<'a> {
    fn new(names: Arc<Names>, calls: &'a CallLookup) -> Self {
        Loader {
            names,
            calls,
            out: Recovered::default(),
        }
    }

    fn entry(&mut self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        let names = Arc::clone(&self.names);
        let pool_id = |name: &str| names.pools.id(name);
        let snap = &mut self.out.snapshot;
        let (&kind, rest) = k
            .split_first()
            .ok_or_else(|| StoreError::Corrupt("empty state key".into()))?;
        match kind {
            LEASE => {
                let id = LeaseId::from_bytes(fixed(rest)?);
                match record::decode_lease(id, v, pool_id) {
                    Ok(lease) => snap.leases.push(lease),
                    Err(record::DecodeError::UnknownPool) => self.out.orphans += 1,
                    Err(record::DecodeError::Invalid(m)) => return Err(StoreError::Corrupt(m)),
                }
            }
            RETURN => {
                let key = return_key_from(rest)?;
                snap.returns
                    .push(record::decode_return(key, v).map_err(corrupt)?);
            }
            TICKET => match record::decode_ticket(TicketId(fixed(rest)?), v, pool_id) {
                Ok(t) => snap.tickets.push(t),
                Err(record::DecodeError::UnknownPool) => self.out.orphans += 1,
                Err(e) => return Err(corrupt(e)),
            },
            PASS => match record::decode_pass(PassId(fixed(rest)?), v, pool_id) {
                Ok(p) => snap.passes.push(p),
                Err(record::DecodeError::UnknownPool) => self.out.orphans += 1,
                Err(e) => return Err(corrupt(e)),
            },
            LISTING => {
                let bad = || StoreError::Corrupt("malformed listing key".into());
                let (tenant, listing) = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| s.split_once('\0'))
                    .ok_or_else(bad)?;
                let tenant = TenantId::parse(tenant).map_err(|_| bad())?;
                let listing = ListingId::parse(listing).map_err(|_| bad())?;
                let target = record::decode_target(v).map_err(corrupt)?;
                snap.listings.push((tenant, listing, target));
            }
            PROGRESS => match self.names.progress_key_from(rest)? {
                Some(key) => snap
                    .progress
                    .push(record::decode_progress(key, v).map_err(corrupt)?),
                None => self.out.orphans += 1,
            },
            TRAFFIC => {
                if rest.len() != 16 {
                    return Err(StoreError::Corrupt("malformed traffic key".into()));
                }
                let index = u64::from_be_bytes(fixed(&rest[8..])?);
                match self.names.by_tag.get(&fixed::<8>(&rest[..8])?) {
                    Some(&pool) => {
                        let b = record::decode_traffic(v).map_err(corrupt)?;
                        snap.traffic.push((pool, index, b));
                    }
                    None => self.out.orphans += 1,
                }
            }
            WHEEL => {
                if k.len() != 26 {
                    return Err(StoreError::Corrupt("malformed wheel key".into()));
                }
                let tick = u64::from_be_bytes(fixed(&k[1..9])?);
                let id: [u8; 16] = fixed(&k[10..])?;
                let due = match k[9] {
                    LEASE => Due::Lease(LeaseId::from_bytes(id)),
                    CALL => {
                        if let Some(v) = (self.calls)(&call_key(&CallKey(id)))? {
                            let row = record::decode_call(&v, pool_id).map_err(corrupt)?;
                            snap.calls.push(row.call);
                        }
                        Due::Call(CallKey(id))
                    }
                    RETURN => Due::Return(return_key_from(&id)?),
                    TICKET => Due::Ticket(TicketId(id)),
                    PASS => Due::Pass(PassId(id)),
                    PROGRESS => match self.names.progress_key_from(&id)? {
                        Some(key) => Due::Progress(key),
                        // Progress in a pool no longer configured: left on disk, not served.
                        None => return Ok(()),
                    },
                    other => {
                        return Err(StoreError::Corrupt(format!(
                            "wheel entry of unknown kind {other}"
                        )))
                    }
                };
                snap.wheel.push((tick, due));
            }
            other => {
                return Err(StoreError::Corrupt(format!(
                    "state key of unknown kind {other}"
                )))
            }
        }
        Ok(())
    }
}

fn lease_key(id: &LeaseId) -> [u8; 17] {
    let mut k = [LEASE; 17];
    k[1..].copy_from_slice(id.as_bytes());
    k
}

/// The journal keys a query reads, `lo..hi`: its time bounds, narrowed to before its cursor.
fn journal_range(q: &JournalQuery) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let lo = journal_bound(q.since.unwrap_or(Timestamp::ZERO)).to_vec();
    let mut hi = match q.until {
        Some(t) => journal_bound(t).to_vec(),
        None => vec![JOURNAL + 1],
    };
    if let Some(c) = &q.cursor {
        let mut k = [0u8; 25];
        if c.len() != 48 || hex::decode_to_slice(c, &mut k[1..]).is_err() {
            return Err(StoreError::BadCursor);
        }
        k[0] = JOURNAL;
        if k.as_slice() < hi.as_slice() {
            hi = k.to_vec();
        }
    }
    Ok((lo, hi))
}

/// Reads one record by key from where the journal lives (sled; etcd and its unfolded log).
type Fetch<'a> = dyn Fn(&[u8]) -> Result<Option<Vec<u8>>, StoreError> + 'a;

/// The row journal key `k` (whose value is `kind`, the record's prefix) points to, read through
/// `fetch`; `None` if the record is gone.
fn journal_row(
    k: &[u8],
    kind: &[u8],
    names: &Names,
    fetch: &Fetch<'_>,
) -> Result<Option<JournalRow>, StoreError> {
    let pool_id = |name: &str| names.pools.id(name);
    let id: [u8; 16] = fixed(&k[9..])?;
    Ok(match kind.first() {
        Some(&EVENT) => match fetch(&prefixed(EVENT, &id))? {
            Some(v) => Some(JournalRow::Ticket(
                record::decode_ticket_event(&v, pool_id).map_err(corrupt)?,
            )),
            None => None,
        },
        Some(&LEASE_EVENT) => match fetch(&prefixed(LEASE_EVENT, &id))? {
            Some(v) => Some(JournalRow::Event(
                record::decode_journal_event(id, &v, pool_id).map_err(corrupt)?,
            )),
            None => None,
        },
        _ => match fetch(&call_key(&CallKey(id)))? {
            Some(v) => Some(JournalRow::Call(
                record::decode_call(&v, pool_id).map_err(corrupt)?,
            )),
            None => None,
        },
    })
}

impl JournalPage {
    /// Adds `row` (journal key `k`) unless the query's pools exclude it; true once the page is
    /// full, `row` being the one past it: the cursor is the last key returned.
    fn offer(&mut self, q: &JournalQuery, k: &[u8], row: JournalRow) -> Result<bool, StoreError> {
        if let Some(pools) = &q.pools {
            if !row.pool().is_some_and(|p| pools.iter().any(|x| x == p)) {
                return Ok(false);
            }
        }
        if self.rows.len() == q.limit {
            let last = self.keys.last().expect("a full page has rows");
            self.next = Some(hex::encode(&last[1..]));
            return Ok(true);
        }
        self.rows.push(row);
        self.keys.push(fixed(k)?);
        Ok(false)
    }
}

fn call_key(key: &CallKey) -> [u8; 17] {
    let mut k = [CALL; 17];
    k[1..].copy_from_slice(&key.0);
    k
}

fn journal_key(at: Timestamp, id: &[u8; 16]) -> [u8; 25] {
    let mut k = [JOURNAL; 25];
    k[1..9].copy_from_slice(&at.as_millis().to_be_bytes());
    k[9..].copy_from_slice(id);
    k
}

/// The smallest journal key at `at`.
fn history_key(created_at: Timestamp, id: &LeaseId) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = HISTORY;
    k[1..9].copy_from_slice(&created_at.as_millis().to_be_bytes());
    k[9..].copy_from_slice(id.as_bytes());
    k
}

fn journal_bound(at: Timestamp) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = JOURNAL;
    k[1..9].copy_from_slice(&at.as_millis().to_be_bytes());
    k
}

fn listing_key(t: &TenantId, l: &ListingId) -> Vec<u8> {
    let mut k = vec![LISTING];
    k.extend_from_slice(t.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(l.as_str().as_bytes());
    k
}

fn prefixed(kind: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(kind);
    k.extend_from_slice(id);
    k
}

/// A ticket event's id: the ticket's first 15 bytes and the kind, so each event is kept once.
fn event_id(e: &TicketEvent) -> [u8; 16] {
    let mut id = e.ticket.id.0;
    id[15] = match e.kind {
        TicketEventKind::Issued => 0,
        TicketEventKind::Redeemed => 1,
        TicketEventKind::Expired => 2,
    };
    id
}

impl Names {
    /// A progress record's id: its pool's tag, then the caller's digits.
    fn progress_id(&self, k: &ProgressKey) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.tags[k.pool.0 as usize]);
        id[8..].copy_from_slice(&k.caller.digits().to_be_bytes());
        id
    }

    /// A traffic bucket's id: its pool's tag, then its index (big-endian: byte order is time
    /// order within a pool).
    fn traffic_id(&self, pool: PoolId, index: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.tags[pool.0 as usize]);
        id[8..].copy_from_slice(&index.to_be_bytes());
        id
    }

    /// The key a progress id names; `None` when its pool is no longer configured.
    fn progress_key_from(&self, b: &[u8]) -> Result<Option<ProgressKey>, StoreError> {
        let bad = || StoreError::Corrupt("malformed progress key".into());
        if b.len() != 16 {
            return Err(bad());
        }
        let caller =
            PhoneNumber::from_digits(u64::from_be_bytes(fixed(&b[8..])?)).ok_or_else(bad)?;
        Ok(self
            .by_tag
            .get(&fixed::<8>(&b[..8])?)
            .map(|&pool| ProgressKey { pool, caller }))
    }

    fn wheel_key(&self, tick: u64, due: &Due) -> [u8; 26] {
        let (kind, id) = match due {
            Due::Lease(id) => (LEASE, *id.as_bytes()),
            Due::Call(key) => (CALL, key.0),
            Due::Return(r) => (RETURN, return_id(r)),
            Due::Ticket(t) => (TICKET, t.0),
            Due::Pass(p) => (PASS, p.0),
            Due::Progress(k) => (PROGRESS, self.progress_id(k)),
        };
        wheel_key_of(tick, kind, &id)
    }
}

fn return_key(r: &ReturnKey) -> [u8; 17] {
    let mut k = [RETURN; 17];
    k[1..].copy_from_slice(&return_id(r));
    k
}

fn return_id(r: &ReturnKey) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&r.caller.digits().to_be_bytes());
    id[8..].copy_from_slice(&r.number.digits().to_be_bytes());
    id
}

fn return_key_from(b: &[u8]) -> Result<ReturnKey, StoreError> {
    let number = |b: &[u8]| {
        PhoneNumber::from_digits(u64::from_be_bytes(fixed(b)?))
            .ok_or_else(|| StoreError::Corrupt("malformed return key".into()))
    };
    if b.len() != 16 {
        return Err(StoreError::Corrupt("malformed return key".into()));
    }
    Ok(ReturnKey {
        caller: number(&b[..8])?,
        number: number(&b[8..])?,
    })
}

fn wheel_key_of(tick: u64, kind: u8, id: &[u8; 16]) -> [u8; 26] {
    let mut k = [WHEEL; 26];
    k[1..9].copy_from_slice(&tick.to_be_bytes());
    k[9] = kind;
    k[10..].copy_from_slice(id);
    k
}

fn fixed<const N: usize>(b: &[u8]) -> Result<[u8; N], StoreError> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt("malformed key".into()))
}

fn corrupt(e: record::DecodeError) -> StoreError {
    match e {
        record::DecodeError::Invalid(m) => StoreError::Corrupt(m),
        record::DecodeError::UnknownPool => StoreError::Corrupt("record of an unknown pool".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sled's keys are told apart by their first byte, and so are the state keys in log entries
    /// and snapshots: each kind has a letter of its own (features written side by side once
    /// both took `H`, one for webhook deliveries and one for the lease history).
    #[test]
    fn every_kind_of_key_has_a_first_byte_of_its_own() {
        let sled_keys = [
            CALL,
            JOURNAL,
            EVENT,
            HISTORY,
            LEASE_EVENT,
            log::LOG,
            stats::STATS,
            deliveries::DELIVERY,
            FORMAT_KEY[0],
        ];
        let state_keys = [
            LEASE, RETURN, TICKET, PASS, PROGRESS, LISTING, WHEEL, TRAFFIC,
        ];
        for keys in [&sled_keys[..], &state_keys[..]] {
            let distinct: std::collections::HashSet<u8> = keys.iter().copied().collect();
            let letters: String = keys.iter().map(|&b| char::from(b)).collect();
            assert_eq!(distinct.len(), keys.len(), "{letters}");
        }
        // The journal's `M` keys all start alike, and only they do.
        for k in [
            WATERMARK_KEY,
            LOG_START_KEY,
            PSEUDONYM_KEY,
            PSEUDONYMIZED_KEY,
            PROBE_KEY,
        ] {
            assert_eq!(k[0], b'M');
        }
        assert_eq!(stats::BUILT_KEY[0], b'M');
    }

    #[test]
    fn a_lock_let_go_of_a_moment_later_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let held = open_db(dir.path(), 1 << 20).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let releaser = std::thread::spawn(move || {
            rx.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        tx.send(()).unwrap();
        let db = open_db(dir.path(), 1 << 20).expect("opened once the lock is let go of");
        releaser.join().unwrap();
        drop(db);
    }

    #[test]
    fn a_lock_held_on_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let _held = open_db(dir.path(), 1 << 20).unwrap();
        let e = open_db(dir.path(), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("could not acquire lock"), "{e}");
    }
}

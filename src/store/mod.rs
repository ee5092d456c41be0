//! Durable state in sled: lease records and the timing wheel's entries, in one tree so that
//! the effects of one core operation land in one atomic batch. Recovery reads them back.
//!
//! Key layout (one tree, first byte = record kind):
//! - `L` + lease id (16 bytes) → versioned lease record ([`record`]).
//! - `C` + call key (16 bytes) → versioned call record. Kept after memory forgets the call:
//!   this is the call journal.
//! - `J` + time (ms, 8 bytes big-endian) + record id (16 bytes) → the record's kind byte (`C`
//!   or `E`): the journal's time index.
//! - `R` + caller digits (8 bytes) + called digits (8 bytes) → return route.
//! - `T` + ticket id → ticket; `P` + pass id → access pass; `G` + pool tag (8 bytes: the
//!   first bytes of SHA-256 of the pool's name, so reordering pools moves nothing) + caller
//!   digits (8 bytes) → a caller's progress through a ticketing formula.
//! - `E` + ticket id (15 bytes) + event kind → a ticket event (issued, redeemed, expired),
//!   indexed in the journal like calls.
//! - `W` + due tick (8 bytes, big-endian) + kind (1 byte: L, C, R, T, P, G) + id (16 bytes) → empty.
//!   Big-endian ticks make byte order time order: a range scan from `W` yields entries
//!   earliest first.
//! - `Q` + tenant + 0 + listing → where that listing's calls go (a target).
//! - `M` + name → metadata (`Mformat` = the store format, checked on open; a store of format
//!   1, which keyed progress by the pool's position in the config, is migrated on open).

mod commit;
mod faults;
mod record;

pub use commit::Committer;
pub use faults::{Fault, Faulty};
pub use record::{CallRow, TicketRow};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::core::{
    CallKey, Directory, Due, Effect, LeaseId, ListingId, PassId, PhoneNumber, PoolId, ProgressKey,
    ReturnKey, Snapshot, TenantId, TicketEvent, TicketEventKind, TicketId, Timestamp,
};

const LEASE: u8 = b'L';
const CALL: u8 = b'C';
const JOURNAL: u8 = b'J';
const RETURN: u8 = b'R';
const TICKET: u8 = b'T';
const PASS: u8 = b'P';
const PROGRESS: u8 = b'G';
const EVENT: u8 = b'E';
const LISTING: u8 = b'Q';
const WHEEL: u8 = b'W';
const FORMAT_KEY: &[u8] = b"Mformat";
const WATERMARK_KEY: &[u8] = b"Mnow";
/// Written by the probe that checks a failed disk takes writes again.
const PROBE_KEY: &[u8] = b"Mprobe";
const FORMAT: &[u8] = b"leaseline-store-2";
/// Format 1 keyed progress by the pool's index in `pool.toml` instead of its name.
const FORMAT_1: &[u8] = b"leaseline-store-1";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("{0}")]
    Corrupt(String),
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
}

/// One line of the journal: a call, or something that happened to a ticket.
#[derive(Debug, Clone)]
pub enum JournalRow {
    Call(CallRow),
    Ticket(TicketRow),
}

impl JournalRow {
    pub fn pool(&self) -> Option<&str> {
        match self {
            JournalRow::Call(c) => c.pool.as_deref(),
            JournalRow::Ticket(t) => Some(&t.pool),
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
    /// Writes many operations' effects, each operation atomically, in order.
    fn apply_groups(&self, groups: &[Vec<Effect>]) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// After a failure: checks that a write and a flush work again, repairing what can be
    /// repaired first (sled keeps a failed write as an error for good: the store reopens).
    fn probe(&self) -> Result<(), StoreError>;
}

impl Backend for Store {
    fn apply_groups(&self, groups: &[Vec<Effect>]) -> Result<(), StoreError> {
        Store::apply_groups(self, groups)
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
        if self.db().and_then(|db| written(&db)).is_ok() {
            return Ok(());
        }
        self.reopen()?;
        written(&self.db()?)
    }
}

pub struct Store {
    /// `None` only while reopening (or when a reopen failed: the next heal tries again).
    db: std::sync::RwLock<Option<sled::Db>>,
    dir: std::path::PathBuf,
    cache_capacity: u64,
    /// The pools as configured: records name their pool; this maps names to this run's ids.
    pools: Arc<Directory>,
    /// Pools by the tag progress keys carry; tags by pool index.
    pool_by_tag: HashMap<[u8; 8], PoolId>,
    pool_tags: Vec<[u8; 8]>,
}

fn open_db(dir: &Path, cache_capacity: u64) -> Result<sled::Db, StoreError> {
    Ok(sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .open()?)
}

/// The stable 8-byte tag of a pool name in fixed-size keys (progress and its wheel entries).
fn pool_tag(name: &str) -> [u8; 8] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    digest[..8].try_into().expect("8 bytes")
}

impl Store {
    /// Opens (or creates) the store in `dir`. `pools` gives the names records are stored under.
    pub fn open(
        dir: &Path,
        cache_capacity: u64,
        pools: Arc<Directory>,
    ) -> Result<Store, StoreError> {
        let db = open_db(dir, cache_capacity)?;
        let pool_names: Vec<&str> = pools.ids().map(|p| pools.name(p)).collect();
        match db.get(FORMAT_KEY)? {
            Some(v) if v == FORMAT => {}
            Some(v) if v == FORMAT_1 => migrate_from_1(&db, &pool_names)?,
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
        let pool_tags: Vec<[u8; 8]> = pool_names.iter().map(|n| pool_tag(n)).collect();
        let pool_by_tag: HashMap<[u8; 8], PoolId> = pool_tags
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, PoolId(i as u32)))
            .collect();
        if pool_by_tag.len() != pool_tags.len() {
            return Err(StoreError::Corrupt(
                "two pool names share a storage tag; rename one".into(),
            ));
        }
        Ok(Store {
            db: std::sync::RwLock::new(Some(db)),
            dir: dir.to_owned(),
            cache_capacity,
            pools,
            pool_by_tag,
            pool_tags,
        })
    }

    /// Reads back what the core needs: every lease, return route and wheel entry, and the
    /// calls the wheel still remembers (older calls live on only in the journal).
    pub fn load(&self) -> Result<Recovered, StoreError> {
        let db = self.db()?;
        let mut out = Recovered::default();
        let pool_id = |name: &str| self.pools.id(name);
        for item in db.scan_prefix([LEASE]) {
            let (k, v) = item?;
            let id = LeaseId::from_bytes(fixed(&k[1..])?);
            match record::decode_lease(id, &v, pool_id) {
                Ok(lease) => out.snapshot.leases.push(lease),
                Err(record::DecodeError::UnknownPool) => out.orphans += 1,
                Err(record::DecodeError::Invalid(m)) => return Err(StoreError::Corrupt(m)),
            }
        }
        for item in db.scan_prefix([RETURN]) {
            let (k, v) = item?;
            let key = return_key_from(&k[1..])?;
            let route = record::decode_return(key, &v).map_err(corrupt)?;
            out.snapshot.returns.push(route);
        }
        for item in db.scan_prefix([TICKET]) {
            let (k, v) = item?;
            match record::decode_ticket(TicketId(fixed(&k[1..])?), &v, pool_id) {
                Ok(t) => out.snapshot.tickets.push(t),
                Err(record::DecodeError::UnknownPool) => out.orphans += 1,
                Err(e) => return Err(corrupt(e)),
            }
        }
        for item in db.scan_prefix([PASS]) {
            let (k, v) = item?;
            match record::decode_pass(PassId(fixed(&k[1..])?), &v, pool_id) {
                Ok(p) => out.snapshot.passes.push(p),
                Err(record::DecodeError::UnknownPool) => out.orphans += 1,
                Err(e) => return Err(corrupt(e)),
            }
        }
        for item in db.scan_prefix([LISTING]) {
            let (k, v) = item?;
            let bad = || StoreError::Corrupt("malformed listing key".into());
            let (tenant, listing) = std::str::from_utf8(&k[1..])
                .ok()
                .and_then(|s| s.split_once('\0'))
                .ok_or_else(bad)?;
            let tenant = TenantId::parse(tenant).map_err(|_| bad())?;
            let listing = ListingId::parse(listing).map_err(|_| bad())?;
            let target = record::decode_target(&v).map_err(corrupt)?;
            out.snapshot.listings.push((tenant, listing, target));
        }
        for item in db.scan_prefix([PROGRESS]) {
            let (k, v) = item?;
            match self.progress_key_from(&k[1..])? {
                Some(key) => out
                    .snapshot
                    .progress
                    .push(record::decode_progress(key, &v).map_err(corrupt)?),
                None => out.orphans += 1,
            }
        }
        for item in db.scan_prefix([WHEEL]) {
            let (k, _) = item?;
            if k.len() != 26 {
                return Err(StoreError::Corrupt("malformed wheel key".into()));
            }
            let tick = u64::from_be_bytes(fixed(&k[1..9])?);
            let id: [u8; 16] = fixed(&k[10..])?;
            let due = match k[9] {
                LEASE => Due::Lease(LeaseId::from_bytes(id)),
                CALL => {
                    if let Some(v) = db.get(call_key(&CallKey(id)))? {
                        let row = record::decode_call(&v, pool_id).map_err(corrupt)?;
                        out.snapshot.calls.push(row.call);
                    }
                    Due::Call(CallKey(id))
                }
                RETURN => Due::Return(return_key_from(&id)?),
                TICKET => Due::Ticket(TicketId(id)),
                PASS => Due::Pass(PassId(id)),
                PROGRESS => match self.progress_key_from(&id)? {
                    Some(key) => Due::Progress(key),
                    // Progress in a pool no longer configured: left on disk, not served.
                    None => continue,
                },
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "wheel entry of unknown kind {other}"
                    )))
                }
            };
            out.snapshot.wheel.push((tick, due));
        }
        Ok(out)
    }

    /// Writes the effects of one core operation as one atomic batch (not yet durable: see
    /// [`Committer`]).
    pub fn apply(&self, effects: &[Effect]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        self.add_to(&mut batch, effects);
        self.db()?.apply_batch(batch)?;
        Ok(())
    }

    /// Writes the effects of many operations, in order, in as few batches as sled handles well.
    /// A batch only ever ends between two operations, so each operation stays atomic.
    pub fn apply_groups(&self, groups: &[Vec<Effect>]) -> Result<(), StoreError> {
        /// Past this many effects a batch is written and a new one started.
        const BATCH: usize = 4096;
        let db = self.db()?;
        let mut batch = sled::Batch::default();
        let mut size = 0;
        for g in groups {
            self.add_to(&mut batch, g);
            size += g.len();
            if size >= BATCH {
                db.apply_batch(std::mem::take(&mut batch))?;
                size = 0;
            }
        }
        if size > 0 {
            db.apply_batch(batch)?;
        }
        Ok(())
    }

    fn add_to(&self, batch: &mut sled::Batch, effects: &[Effect]) {
        let name = |p: PoolId| self.pools.name(p);
        for e in effects {
            match e {
                Effect::PutLease(l) => {
                    batch.insert(&lease_key(&l.id)[..], record::encode_lease(l, name(l.pool)))
                }
                Effect::DelLease(id) => batch.remove(&lease_key(id)[..]),
                Effect::PutCall(c) => {
                    let key = c.id.key();
                    let pool = c.attribution.pool.map(name);
                    batch.insert(&call_key(&key)[..], record::encode_call(c, pool));
                    batch.insert(&journal_key(c.started_at, &key.0)[..], &[CALL][..]);
                }
                Effect::PutTicket(t) => batch.insert(
                    &prefixed(TICKET, &t.id.0)[..],
                    record::encode_ticket(t, name(t.pool)),
                ),
                Effect::DelTicket(id) => batch.remove(&prefixed(TICKET, &id.0)[..]),
                Effect::PutPass(p) => batch.insert(
                    &prefixed(PASS, &p.id.0)[..],
                    record::encode_pass(p, name(p.pool)),
                ),
                Effect::DelPass(id) => batch.remove(&prefixed(PASS, &id.0)[..]),
                Effect::PutProgress(p) => batch.insert(
                    &prefixed(PROGRESS, &self.progress_id(&p.key))[..],
                    record::encode_progress(p),
                ),
                Effect::DelProgress(k) => {
                    batch.remove(&prefixed(PROGRESS, &self.progress_id(k))[..])
                }
                Effect::PutListing(t, l, target) => {
                    batch.insert(listing_key(t, l), record::encode_target(target))
                }
                Effect::DelListing(t, l) => batch.remove(listing_key(t, l)),
                Effect::TicketEvent(e) => {
                    let id = event_id(e);
                    batch.insert(
                        &prefixed(EVENT, &id)[..],
                        record::encode_ticket_event(e, name(e.ticket.pool)),
                    );
                    batch.insert(&journal_key(e.at, &id)[..], &[EVENT][..]);
                }
                Effect::PutReturn(r) => {
                    batch.insert(&return_key(&r.key)[..], record::encode_return(r))
                }
                Effect::DelReturn(k) => batch.remove(&return_key(k)[..]),
                Effect::PutWheel(t, due) => batch.insert(&self.wheel_key(*t, due)[..], &[][..]),
                Effect::DelWheel(t, due) => batch.remove(&self.wheel_key(*t, due)[..]),
            }
        }
    }

    /// One page of the call journal, newest first.
    pub fn journal(&self, q: &JournalQuery) -> Result<JournalPage, StoreError> {
        let lo = journal_bound(q.since.unwrap_or(Timestamp::ZERO));
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
        let pool_id = |name: &str| self.pools.id(name);
        let mut page = JournalPage::default();
        let db = self.db()?;
        for item in db.range(lo.to_vec()..hi).rev() {
            let (k, kind) = item?;
            let id: [u8; 16] = fixed(&k[9..])?;
            let row = match kind.first() {
                Some(&EVENT) => {
                    let Some(v) = db.get(prefixed(EVENT, &id))? else {
                        continue;
                    };
                    JournalRow::Ticket(record::decode_ticket_event(&v, pool_id).map_err(corrupt)?)
                }
                _ => {
                    let Some(v) = db.get(call_key(&CallKey(id)))? else {
                        continue;
                    };
                    JournalRow::Call(record::decode_call(&v, pool_id).map_err(corrupt)?)
                }
            };
            if let Some(pools) = &q.pools {
                if !row.pool().is_some_and(|p| pools.iter().any(|x| x == p)) {
                    continue;
                }
            }
            if page.rows.len() == q.limit {
                // There is at least one more: the cursor is the last key returned.
                let last = page.keys.last().expect("a full page has rows");
                page.next = Some(hex::encode(&last[1..]));
                break;
            }
            page.rows.push(row);
            page.keys.push(fixed(&k)?);
        }
        Ok(page)
    }

    /// Makes every write applied so far durable; returns the bytes flushed.
    pub fn flush(&self) -> Result<usize, StoreError> {
        Ok(self.db()?.flush()?)
    }

    /// The open database (a cheap handle).
    fn db(&self) -> Result<sled::Db, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Failed("the store is closed after a failure".into()))
    }

    /// Closes and opens the database again: after a failed write sled answers every later
    /// write with that error, even once the disk has room again. Recovery on open keeps what
    /// was flushed and drops a torn tail (never acknowledged).
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(slot.take());
        // sled lets go of its file lock once the last handle (a reader finishing) is gone.
        let mut tries = 0;
        loop {
            match open_db(&self.dir, self.cache_capacity) {
                Ok(db) => {
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
        let v = self.db().ok()?.get(WATERMARK_KEY).ok()??;
        Some(Timestamp::from_millis(u64::from_be_bytes(
            v.as_ref().try_into().ok()?,
        )))
    }

    /// Records how far time has got; made durable by the next flush. At start-up, a wall
    /// clock behind it is not trusted.
    pub fn set_watermark(&self, now: Timestamp) {
        if let Ok(db) = self.db() {
            let _ = db.insert(WATERMARK_KEY, &now.as_millis().to_be_bytes());
        }
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db().map_or(0, |db| db.size_on_disk().unwrap_or(0))
    }
}

fn lease_key(id: &LeaseId) -> [u8; 17] {
    let mut k = [LEASE; 17];
    k[1..].copy_from_slice(id.as_bytes());
    k
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

impl Store {
    /// A progress record's id: its pool's tag, then the caller's digits.
    fn progress_id(&self, k: &ProgressKey) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.pool_tags[k.pool.0 as usize]);
        id[8..].copy_from_slice(&k.caller.digits().to_be_bytes());
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
            .pool_by_tag
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

/// Rewrites a format-1 store's progress records and their wheel entries, keyed by the pool's
/// index in the config, under the pool's tag instead. The index is read against the pools as
/// configured now (format 1 had no better knowledge); records of an index beyond them are
/// dropped, as format 1 could not serve them either. One atomic batch, then the new format.
fn migrate_from_1(db: &sled::Db, pool_names: &[&str]) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let (mut moved, mut dropped) = (0usize, 0usize);
    let retag = |old: &[u8]| -> Option<[u8; 16]> {
        let index = u32::from_be_bytes(old[..4].try_into().ok()?) as usize;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&pool_tag(pool_names.get(index)?));
        id[8..].copy_from_slice(&old[4..12]);
        Some(id)
    };
    for item in db.scan_prefix([PROGRESS]) {
        let (k, v) = item?;
        if k.len() != 13 {
            return Err(StoreError::Corrupt(
                "malformed format-1 progress key".into(),
            ));
        }
        batch.remove(k.clone());
        match retag(&k[1..]) {
            Some(id) => {
                batch.insert(prefixed(PROGRESS, &id), v);
                moved += 1;
            }
            None => dropped += 1,
        }
    }
    for item in db.scan_prefix([WHEEL]) {
        let (k, _) = item?;
        if k.len() != 26 || k[9] != PROGRESS {
            continue;
        }
        batch.remove(k.clone());
        if let Some(id) = retag(&k[10..]) {
            let tick = u64::from_be_bytes(fixed(&k[1..9])?);
            batch.insert(&wheel_key_of(tick, PROGRESS, &id)[..], &[][..]);
        }
    }
    batch.insert(FORMAT_KEY, FORMAT);
    db.apply_batch(batch)?;
    db.flush()?;
    tracing::info!(
        moved,
        dropped,
        "store migrated from format 1: progress keyed by pool name"
    );
    Ok(())
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

//! The store on etcd, for `[cluster]`: the same [`Backend`] and [`Storage`] as sled's, so the
//! service and the core do not know which one they write through.
//!
//! Keys, under the cluster's prefix `P`:
//! - `P leader` → the leader's advertise URL, attached to its etcd lease ([`crate::cluster`]).
//! - `P log/` + seq (8 bytes, big-endian) → one commit round's changes, encoded as sled's log
//!   entries ([`super::log`]): the state keys' puts and deletes *and* the journal's keys (`C`,
//!   `J`, `E`), so a round is one put, whatever its size.
//! - `P s/` + key → a key as the folded log leaves it (state and journal alike).
//! - `P applied` → the last log seq folded into `P s/` (8 bytes, big-endian).
//! - `P now` → the time watermark (ms, 8 bytes, big-endian).
//!
//! Every write is a transaction guarded by the leader key's create revision (`fence`): once the
//! leader's lease lapses the key is gone (or another node's), and the write fails whatever the
//! deposed node believes. etcd answers only once a quorum has the change on disk, so a round
//! is durable when the transaction returns; `flush` has nothing left to do.
//!
//! Folding ([`EtcdStore::fold`], the leader's background thread) moves the log into `P s/` in
//! transactions of at most [`FOLD_OPS`] keys, records `applied` in the last one, deletes the
//! folded entries, then compacts etcd's history: what etcd holds stays about the live state
//! plus the journal. A fold cut short leaves `applied` behind: the next load replays those
//! entries again over keys that already hold their values, which changes nothing.

pub mod client;
mod mirror;

pub use mirror::Mirror;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use client::{prefix_end, Client, Compare, Op};

use super::{
    add_to, journal_range, journal_row, log, stats, Backend, Cell, Group, JournalPage,
    JournalQuery, Loader, Names, Recovered, Storage, StoreError, CALL, STATE_KINDS, TRAFFIC, WHEEL,
};
use crate::core::{Directory, Lease, LeaseId, Timestamp};

/// Keys per folding transaction (etcd refuses more than `--max-txn-ops`, 128 by default).
const FOLD_OPS: usize = 100;
/// A round's entry is cut between operations past this size (etcd's default request limit is
/// 1.5 MiB).
const ENTRY_BYTES: usize = 1 << 20;

impl super::JournalSink for log::Entry {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        log::Entry::put(self, k, v)
    }
}

/// Where a cluster's keys live: the client and the prefix, for the leader's store and a
/// standby's [`Mirror`] alike.
#[derive(Clone)]
pub struct Space {
    client: Arc<Client>,
    prefix: Vec<u8>,
}

impl Space {
    pub fn new(client: Arc<Client>, prefix: &str) -> Space {
        Space {
            client,
            prefix: prefix.as_bytes().to_vec(),
        }
    }

    fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        parts.iter().for_each(|p| k.extend_from_slice(p));
        k
    }

    fn log_key(&self, seq: u64) -> Vec<u8> {
        self.key(&[b"log/", &seq.to_be_bytes()])
    }

    fn get_u64(&self, name: &[u8]) -> Result<Option<u64>, StoreError> {
        let r = self
            .client
            .range(&self.key(&[name]), None, 1, false)
            .map_err(etcd)?;
        Ok(match r.kvs.first() {
            Some(kv) => Some(u64::from_be_bytes(super::fixed(&kv.value)?)),
            None => None,
        })
    }

    /// The log after `applied`, in order, as `(seq, entry)`.
    fn log_after(&self, applied: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = self.log_key(applied + 1);
        let end = prefix_end(&self.key(&[b"log/"]));
        let mut out = Vec::new();
        let mut from = start;
        loop {
            let page = self
                .client
                .range(&from, Some(&end), 64, false)
                .map_err(etcd)?;
            let more = page.more;
            for kv in page.kvs {
                let seq = u64::from_be_bytes(super::fixed(&kv.key[kv.key.len() - 8..])?);
                from = kv.key;
                from.push(0);
                out.push((seq, kv.value));
            }
            if !more {
                return Ok(out);
            }
        }
    }
}

pub struct EtcdStore {
    space: Space,
    /// The create revision of the leader key this node holds: every write compares it.
    fence: i64,
    names: RwLock<Arc<Names>>,
    /// The seq the next log entry takes; held while a round is written.
    next_seq: Mutex<u64>,
    /// The watermark to write with the next round (0: unchanged).
    watermark: AtomicU64,
    /// A write was refused or may not have happened: nothing more is written through this
    /// store (the node steps down and, leader again, reloads from etcd).
    failed: AtomicBool,
    /// Set when a write found the leader key gone or another node's.
    pub deposed: Arc<AtomicBool>,
    /// One fold at a time.
    folding: Mutex<()>,
    /// A standby's copy of the state, handed over when it wins: `load` catches it up.
    warm: Mutex<Option<Mirror>>,
}

impl EtcdStore {
    /// The store of the leader holding the leader key created at revision `fence`.
    pub fn new(
        client: Arc<Client>,
        prefix: &str,
        fence: i64,
        pools: Arc<Directory>,
        deposed: Arc<AtomicBool>,
    ) -> Result<EtcdStore, StoreError> {
        Ok(EtcdStore {
            space: Space::new(client, prefix),
            fence,
            names: RwLock::new(Arc::new(Names::new(pools)?)),
            next_seq: Mutex::new(1),
            watermark: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            deposed,
            folding: Mutex::new(()),
            warm: Mutex::new(None),
        })
    }

    /// Loads from `mirror` (a standby's warm copy) rather than reading everything again.
    pub fn warm_from(&self, mirror: Mirror) {
        *self.warm.lock().unwrap_or_else(|p| p.into_inner()) = Some(mirror);
    }

    fn names(&self) -> Arc<Names> {
        Arc::clone(&self.names.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn fenced(&self) -> [Compare; 1] {
        [Compare::CreateRevision(
            self.space.key(&[b"leader"]),
            self.fence,
        )]
    }

    /// Runs a fenced transaction; any doubt (refused, unreachable, deposed) fails the store.
    fn commit(&self, ops: &[Op]) -> Result<i64, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed("an earlier write to etcd failed".into()));
        }
        let res = self.space.client.txn(&self.fenced(), ops, &[]);
        match res {
            Ok(r) if r.succeeded => Ok(r.revision),
            Ok(_) => {
                self.failed.store(true, Ordering::Release);
                self.deposed.store(true, Ordering::Release);
                Err(StoreError::Failed(
                    "this node is no longer the leader".into(),
                ))
            }
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                Err(StoreError::Failed(e.to_string()))
            }
        }
    }

    /// Folds the log into `P s/` up to its current end, then lets etcd forget the history
    /// before. The leader calls it every few seconds; it takes no lock the service holds.
    pub fn fold(&self) -> Result<u64, StoreError> {
        let _one = self.folding.lock().unwrap_or_else(|p| p.into_inner());
        let applied = self.space.get_u64(b"applied")?.unwrap_or(0);
        let entries = self.space.log_after(applied)?;
        let Some(&(last, _)) = entries.last() else {
            return Ok(0);
        };
        let mut tail = log::Tail::new();
        for (_, e) in &entries {
            log::replay(e, &mut tail)?;
        }
        let mut ops: Vec<Op> = Vec::new();
        let mut revision = 0;
        let n = tail.len();
        for (i, (k, v)) in tail.into_iter().enumerate() {
            let key = self.space.key(&[b"s/", &k]);
            ops.push(match v {
                Some(value) => Op::Put {
                    key,
                    value,
                    lease: 0,
                },
                None => Op::Delete { key, end: None },
            });
            if ops.len() == FOLD_OPS || i + 1 == n {
                if i + 1 == n {
                    ops.push(Op::Put {
                        key: self.space.key(&[b"applied"]),
                        value: last.to_be_bytes().to_vec(),
                        lease: 0,
                    });
                    // Entries folded by the fold before this one: a standby polling the log
                    // had a whole fold's interval to read them.
                    ops.push(Op::Delete {
                        key: self.space.log_key(0),
                        end: Some(self.space.log_key(applied + 1)),
                    });
                }
                revision = self.commit(&std::mem::take(&mut ops))?;
            }
        }
        // etcd keeps every version of every key until told otherwise.
        if let Err(e) = self.space.client.compact(revision) {
            tracing::debug!(error = %e, "etcd history not compacted");
        }
        Ok(n as u64)
    }

    /// Reads one key of `P s/`, or the newer value a log tail holds for it.
    fn folded(&self, tail: &log::Tail, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = tail.get(k) {
            return Ok(v.clone());
        }
        let r = self
            .space
            .client
            .range(&self.space.key(&[b"s/", k]), None, 1, false)
            .map_err(etcd)?;
        Ok(r.kvs.into_iter().next().map(|kv| kv.value))
    }
}

fn etcd(e: client::EtcdError) -> StoreError {
    StoreError::Failed(e.to_string())
}

impl Backend for EtcdStore {
    fn write_groups(&self, groups: &[Group]) -> Result<(), StoreError> {
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let names = self.names();
        let mut entry = log::Entry::default();
        let mut journal = log::Entry::default();
        for g in groups {
            if !g.deliveries.is_empty() {
                // `check` refuses [[webhook]] with [cluster]; never written half.
                return Err(StoreError::Failed(
                    "webhook deliveries are not stored in etcd".into(),
                ));
            }
            // The statistics' index and pseudonyms are the embedded store's (see `stats`):
            // tallies are dropped here, the journal rows they would count are kept.
            add_to(
                &names,
                &mut journal,
                &mut entry,
                &mut stats::Pending::new(),
                &g.effects,
            );
            if entry.bytes().len() + journal.bytes().len() >= ENTRY_BYTES {
                self.round(&mut next, &mut entry, &mut journal)?;
            }
        }
        if entry.ops() + journal.ops() > 0 {
            self.round(&mut next, &mut entry, &mut journal)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // A transaction etcd answered is on a quorum's disks already; the watermark goes
        // alone only when no round took it.
        let now = self.watermark.swap(0, Ordering::AcqRel);
        if now != 0 {
            self.commit(&[self.watermark_put(now)])?;
        }
        Ok(())
    }

    fn probe(&self) -> Result<(), StoreError> {
        // A failed write may or may not be in etcd: only a reload can tell, so the node
        // steps down rather than heal in place.
        Err(StoreError::Failed(
            "a write to etcd failed: this node steps down and reloads".into(),
        ))
    }
}

impl EtcdStore {
    fn watermark_put(&self, now: u64) -> Op {
        Op::Put {
            key: self.space.key(&[b"now"]),
            value: now.to_be_bytes().to_vec(),
            lease: 0,
        }
    }

    /// Writes `entry` and `journal` as log entry `next`, fenced.
    fn round(
        &self,
        next: &mut u64,
        entry: &mut log::Entry,
        journal: &mut log::Entry,
    ) -> Result<(), StoreError> {
        let mut value = std::mem::take(entry);
        value.append(&std::mem::take(journal));
        let mut ops = vec![Op::Put {
            key: self.space.log_key(*next),
            value: value.bytes().to_vec(),
            lease: 0,
        }];
        // The watermark rides with the round rather than costing a transaction of its own.
        let now = self.watermark.swap(0, Ordering::AcqRel);
        if now != 0 {
            ops.push(self.watermark_put(now));
        }
        self.commit(&ops)?;
        *next += 1;
        Ok(())
    }
}

impl Storage for EtcdStore {
    /// The folded state (`P s/`, one range per state kind: the journal is not read) with the
    /// log after `applied` replayed over it.
    fn load(&self) -> Result<Recovered, StoreError> {
        let mut mirror = self
            .warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Mirror::new(self.space.clone()));
        let from = mirror.synced.then_some(mirror.seq);
        let replayed = mirror.refresh()?;
        *self.next_seq.lock().unwrap_or_else(|p| p.into_inner()) = mirror.seq + 1;
        let state = &mirror.state;
        // Call records not folded yet are in the log after `applied`.
        let applied = self.space.get_u64(b"applied")?.unwrap_or(0);
        let mut tail = log::Tail::new();
        for (_, e) in self.space.log_after(applied)? {
            log::replay(&e, &mut tail)?;
        }
        let skip = self.space.prefix.len() + 2;
        // The calls the wheel remembers, fetched a hundred per request rather than one by one.
        let mut remembered: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let wanted: Vec<Vec<u8>> = state
            .keys()
            .filter(|k| k.len() == 26 && k[0] == WHEEL && k[9] == CALL)
            .map(|k| [&[CALL][..], &k[10..]].concat())
            .filter(|k| !tail.contains_key(k))
            .collect();
        for chunk in wanted.chunks(FOLD_OPS) {
            let keys: Vec<Vec<u8>> = chunk.iter().map(|k| self.space.key(&[b"s/", k])).collect();
            for kv in self.space.client.get_many(&keys).map_err(etcd)? {
                remembered.insert(kv.key[skip..].to_vec(), kv.value);
            }
        }
        let calls = |k: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(match tail.get(k) {
                Some(v) => v.clone(),
                None => remembered.get(k).cloned(),
            })
        };
        let mut loader = Loader::new(self.names(), &calls);
        for (k, v) in state {
            loader.entry(k, v)?;
        }
        let mut out = loader.out;
        // A warm copy's log position, or none (everything read now).
        out.from_snapshot = from;
        out.replayed = replayed;
        Ok(out)
    }

    /// The journal's folded keys (`P s/J…`) and those still in the log, newest first.
    fn journal(&self, q: &JournalQuery) -> Result<JournalPage, StoreError> {
        // The leader folds every few seconds: the unfolded rows are merged in from the log.
        let applied = self.space.get_u64(b"applied")?.unwrap_or(0);
        let mut tail = log::Tail::new();
        for (_, e) in self.space.log_after(applied)? {
            log::replay(&e, &mut tail)?;
        }
        let (lo, hi) = journal_range(q)?;
        let names = self.names();
        let fetch = |k: &[u8]| self.folded(&tail, k);
        let mut page = JournalPage::default();
        // Newest first: the unfolded index keys and a page of folded ones at a time.
        let mut unfolded: Vec<(Vec<u8>, Vec<u8>)> = tail
            .range(lo.clone()..hi.clone())
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        let mut upper = hi;
        loop {
            let r = self
                .space
                .client
                .range(
                    &self.space.key(&[b"s/", &lo]),
                    Some(&self.space.key(&[b"s/", &upper])),
                    q.limit as i64 + 1,
                    true,
                )
                .map_err(etcd)?;
            let skip = self.space.prefix.len() + 2;
            let mut keys: Vec<(Vec<u8>, Vec<u8>)> = r
                .kvs
                .into_iter()
                .map(|kv| (kv.key[skip..].to_vec(), kv.value))
                .collect();
            let exhausted = !r.more;
            let floor = if exhausted {
                lo.clone()
            } else {
                keys.last()
                    .map(|k| k.0.clone())
                    .unwrap_or_else(|| lo.clone())
            };
            keys.extend(unfolded.extract_if_at_least(&floor));
            keys.sort();
            keys.dedup_by(|a, b| a.0 == b.0);
            for (k, kind) in keys.into_iter().rev() {
                let Some(row) = journal_row(&k, &kind, &names, &fetch)? else {
                    continue;
                };
                if page.offer(q, &k, row)? {
                    return Ok(page);
                }
            }
            if exhausted {
                return Ok(page);
            }
            upper = floor;
        }
    }

    /// Not kept in cluster mode yet: `GET /v1/stats` answers no rows (README, High
    /// availability). The journal rows the index would count are in etcd.
    fn stats(&self, _from: u32, _to: u32) -> Result<Vec<Cell>, StoreError> {
        Ok(Vec::new())
    }

    /// Not done in cluster mode yet: callers' numbers stay as they are (README).
    fn pseudonymize(&self, _before: Timestamp, _max: usize) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Purged leases are written to etcd's journal but not read back yet: the transactions
    /// list shows the leases the core still holds (README).
    fn lease_history(
        &self,
        _before: Option<(Timestamp, LeaseId)>,
        _since: Option<Timestamp>,
        _until: Option<Timestamp>,
        _keep: &dyn Fn(&Lease) -> bool,
        _limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        Ok(Vec::new())
    }

    fn watermark(&self) -> Option<Timestamp> {
        self.space.get_u64(b"now").ok()?.map(Timestamp::from_millis)
    }

    fn set_watermark(&self, now: Timestamp) {
        self.watermark.store(now.as_millis(), Ordering::Release);
    }

    fn size_on_disk(&self) -> u64 {
        0
    }

    fn snapshot(&self) -> Result<Option<u64>, StoreError> {
        self.fold().map(|n| (n > 0).then_some(n))
    }

    fn set_directory(&self, pools: Arc<Directory>) -> Result<(), StoreError> {
        let names = Arc::new(Names::new(pools)?);
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
        Ok(())
    }
}

/// Takes the keys at or above `floor` out of a list (the unfolded journal keys a page of folded
/// ones reaches down to).
trait ExtractAtLeast {
    fn extract_if_at_least(&mut self, floor: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)>;
}

impl ExtractAtLeast for Vec<(Vec<u8>, Vec<u8>)> {
    fn extract_if_at_least(&mut self, floor: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let (keep, take): (Vec<_>, Vec<_>) = std::mem::take(self)
            .into_iter()
            .partition(|(k, _)| k.as_slice() < floor);
        *self = keep;
        take
    }
}

//! Compaction: folds the log into a new snapshot file, off the request path. The newest
//! readable snapshot is streamed, merged in key order with the log's changes after it (held in
//! memory: O(changes), never O(state)), into a new file covering every durable entry. Then the
//! log is cut: entries up to the *older* of the two snapshots kept are deleted, so a newest
//! snapshot found damaged falls back to the older one and a longer log tail; while only one
//! snapshot exists, the log is kept from the beginning (a full replay stays possible). Older
//! snapshot files are deleted. It never takes the core's lock: it reads only files and sled.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::log::{self, Tail};
use super::snapshot::{self, SnapshotFile, Writer};
use super::{Disk, StoreError};

/// When the background compaction runs (`[server] snapshot_after_changes`,
/// `snapshot_min_interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// State changes logged since the newest snapshot that call for a new one.
    pub after_changes: u64,
    /// No sooner than this after the last compaction (or the store's opening).
    pub min_interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            after_changes: 100_000,
            min_interval: Duration::from_secs(60),
        }
    }
}

/// Log entries deleted per sled batch when the log is cut.
const CUT_CHUNK: usize = 4096;
/// How often (in entries) a running merge looks whether the store is closing.
const CANCEL_EVERY: u64 = 1 << 16;

/// Starts compactions in the background and waits for them when the store closes.
pub struct Compactor {
    disk: Arc<Disk>,
    policy: Policy,
    worker: Mutex<Worker>,
}

#[derive(Default)]
struct Worker {
    handle: Option<std::thread::JoinHandle<()>>,
    /// When the last background compaction started (`None`: none yet, so a long log left by
    /// the last run is folded in soon after start-up).
    last: Option<Instant>,
}

impl Compactor {
    pub fn new(disk: Arc<Disk>, policy: Policy) -> Compactor {
        Compactor {
            disk,
            policy,
            worker: Mutex::new(Worker::default()),
        }
    }

    /// Called after each flush: starts a compaction thread if the log has grown past the
    /// policy's threshold, the interval has passed and none is running. Returns at once.
    pub fn maybe_start(&self) {
        if self.disk.pending() < self.policy.after_changes {
            return;
        }
        let mut w = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        if w.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if w.last
            .is_some_and(|t| t.elapsed() < self.policy.min_interval)
        {
            return;
        }
        if let Some(h) = w.handle.take() {
            let _ = h.join();
        }
        let disk = Arc::clone(&self.disk);
        let spawned = std::thread::Builder::new()
            .name("leaseline-compact".into())
            .spawn(move || {
                if let Err(e) = compact(&disk, true) {
                    if !disk.closing.load(Ordering::Acquire) {
                        tracing::error!(error = %e, "compaction failed; the log keeps growing until one succeeds");
                    }
                }
            });
        match spawned {
            Ok(h) => {
                w.handle = Some(h);
                // Counted from the start: a compaction slower than the interval runs back to
                // back at worst, never two at once.
                w.last = Some(Instant::now());
            }
            Err(e) => tracing::error!(error = %e, "cannot start the compaction thread"),
        }
    }

    /// Compacts now, on this thread (after any background run): at clean shutdown, and for
    /// tests. `rename: false` stops after the file is written and synced, before its rename,
    /// as a crash there would. Returns the seq of the new snapshot, or `None` if no durable
    /// change came after the newest one.
    pub fn now(&self, rename: bool) -> Result<Option<u64>, StoreError> {
        compact(&self.disk, rename)
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.disk.closing.store(true, Ordering::Release);
        let handle = self
            .worker
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .handle
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Why a merge stopped.
pub enum MergeError {
    /// The snapshot failed its checks (or could not be read): use another.
    Snapshot(StoreError),
    /// The sink refused an entry; the snapshot was fine as far as it was read.
    Sink(StoreError),
}

/// Streams the snapshot `file` merged with `tail` (a key the tail changed takes the tail's
/// value, or is left out if the tail deleted it) into `sink`, in key order. Succeeds only if
/// the whole file checked out.
pub fn merge(
    file: &SnapshotFile,
    tail: &Tail,
    mut sink: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), MergeError> {
    let mut reader = snapshot::Reader::open(&file.path).map_err(MergeError::Snapshot)?;
    if reader.seq() != file.seq {
        return Err(MergeError::Snapshot(StoreError::BadSnapshot(format!(
            "{}: covers seq {}, not the {} its name says",
            file.path.display(),
            reader.seq(),
            file.seq
        ))));
    }
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut changes = tail.iter().peekable();
    loop {
        let more = reader
            .next(&mut key, &mut value)
            .map_err(MergeError::Snapshot)?;
        while let Some((k, v)) = changes.next_if(|(k, _)| !more || k.as_slice() < key.as_slice()) {
            if let Some(v) = v {
                sink(k, v).map_err(MergeError::Sink)?;
            }
        }
        if !more {
            return Ok(());
        }
        let emitted = match changes.next_if(|(k, _)| k.as_slice() == key.as_slice()) {
            Some((_, Some(v))) => sink(&key, v),
            Some((_, None)) => Ok(()),
            None => sink(&key, &value),
        };
        emitted.map_err(MergeError::Sink)?;
    }
}

/// One compaction (see the module's doc); serialised with any other by `disk.compacting`.
fn compact(disk: &Disk, rename: bool) -> Result<Option<u64>, StoreError> {
    let _one = disk.compacting.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let logged = disk.logged.load(Ordering::Acquire);
    let target = disk.durable.load(Ordering::Acquire);
    let files = snapshot::list(&disk.dir)?;
    if target <= files.last().map_or(0, |s| s.seq) {
        return Ok(None);
    }
    let start = disk.log_start()?;
    let bad = disk.bad.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let bases = files.iter().rev().filter(|s| !bad.contains(&s.seq));
    for base in bases.map(Some).chain([None]) {
        let from = base.map_or(0, |s| s.seq);
        if from + 1 < start {
            continue;
        }
        let (tail, changes) = disk.tail(from, target)?;
        let mut out = Writer::create(&disk.dir, target)?;
        let mut push = |k: &[u8], v: &[u8]| {
            if out.count() % CANCEL_EVERY == CANCEL_EVERY - 1
                && disk.closing.load(Ordering::Acquire)
            {
                return Err(StoreError::Failed(
                    "compaction stopped: the store is closing".into(),
                ));
            }
            out.push(k, v)
        };
        match base {
            None => {
                for (k, v) in &tail {
                    if let Some(v) = v {
                        push(k, v)?;
                    }
                }
            }
            Some(file) => match merge(file, &tail, &mut push) {
                Ok(()) => {}
                Err(MergeError::Snapshot(e)) => {
                    tracing::warn!(error = %e, "snapshot unreadable: compacting from an older one");
                    disk.bad
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(file.seq);
                    continue;
                }
                Err(MergeError::Sink(e)) => return Err(e),
            },
        }
        let entries = out.count();
        let written = out.finish(rename)?;
        if !rename {
            return Ok(Some(target));
        }
        disk.covered.fetch_max(logged, Ordering::AcqRel);
        cut(disk, &written, base)?;
        tracing::info!(
            seq = target,
            entries,
            from_snapshot = base.map(|s| s.seq),
            log_changes = changes,
            ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        return Ok(Some(target));
    }
    Err(StoreError::Corrupt(format!(
        "no snapshot in {} can be read and the log no longer goes back to the beginning: \
         nothing to compact from",
        disk.dir.display()
    )))
}

/// After snapshot `new` (built on `base`) is in place: the log is kept from `base` on (from
/// the beginning without a base), every other snapshot file deleted.
fn cut(disk: &Disk, new: &SnapshotFile, base: Option<&SnapshotFile>) -> Result<(), StoreError> {
    if let Some(base) = base {
        let start = base.seq + 1;
        // First the mark, durably, then the entries: a crash between leaves entries nobody
        // reads, never a log that claims entries it no longer has.
        if disk.log_start()? < start {
            let db = disk.db()?;
            db.insert(super::LOG_START_KEY, &start.to_be_bytes())?;
            db.flush()?;
        }
        loop {
            let db = disk.db()?;
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for item in db.range(log::key(0)..log::key(start)).take(CUT_CHUNK) {
                batch.remove(item?.0);
                n += 1;
            }
            if n == 0 {
                break;
            }
            db.apply_batch(batch)?;
        }
    }
    let keep = |s: &SnapshotFile| s.seq == new.seq || base.is_some_and(|b| b.seq == s.seq);
    let mut bad = disk.bad.lock().unwrap_or_else(|p| p.into_inner());
    for s in snapshot::list(&disk.dir)? {
        if !keep(&s) {
            std::fs::remove_file(&s.path)?;
            bad.remove(&s.seq);
        }
    }
    Ok(())
}

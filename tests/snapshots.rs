//! Snapshot files and the log: a damaged snapshot (a flipped byte, a truncated file) is
//! detected and ignored, and the state comes back whole from the older snapshot and a longer
//! log, or from the log alone while it still goes back to the beginning; a snapshot torn by a
//! crash before its rename leaves nothing behind; compaction runs by itself past its
//! threshold and keeps two snapshots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leaseline::core::{
    AllocateRequest, Allocator, CallId, CallStart, Directory, Entropy, LeaseId, LeaseSettings,
    ListingId, OnExhausted, Outbox, PhoneNumber, PoolId, PoolMode, PoolSpec, SessionId, Target,
    TenantId, Timestamp,
};
use leaseline::store::{Policy, Store};

const START: u64 = 1_800_000_000_000;
const FIRST: u64 = 33_899_100_000;

fn spec() -> PoolSpec {
    PoolSpec {
        name: "p".into(),
        numbers: (0..64)
            .map(|i| PhoneNumber::from_digits(FIRST + i).unwrap())
            .collect(),
        settings: LeaseSettings {
            ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(600),
            page_max_ttl: Duration::from_secs(600),
            grace: Duration::from_secs(20),
            quarantine: Duration::from_secs(40),
            retention: Duration::from_secs(300),
        },
        on_exhausted: OnExhausted::Reject,
        return_window: Duration::from_secs(86_400),
        fallback: None,
        mode: PoolMode::Dynamic,
        access_ttl: Duration::ZERO,
        limits: Default::default(),
        tariff: None,
    }
}

fn directory() -> Arc<Directory> {
    Directory::new(vec![spec()]).unwrap()
}

/// The core and its store, driven as the service drives them: each step's effects written
/// and flushed.
struct Node {
    dir: tempfile::TempDir,
    store: Option<Store>,
    core: Allocator,
    out: Outbox,
    now: u64,
    next: u64,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, directory()).unwrap();
        Node {
            dir,
            store: Some(store),
            core: Allocator::with(directory()).unwrap(),
            out: Outbox::new(),
            now: START,
            next: 0,
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn persist(&mut self) {
        let effects = std::mem::take(&mut self.out.effects);
        self.out.notices.clear();
        self.store().apply(&effects).unwrap();
        self.store().flush().unwrap();
    }

    /// Some of everything: leases with listings and targets, calls (wheel entries that name
    /// them), releases, renewals, expiries and purges as time passes.
    fn work(&mut self, rounds: u64) {
        let tenant = TenantId::parse("t").unwrap();
        for _ in 0..rounds {
            let i = self.next;
            self.next += 1;
            let listing = ListingId::parse(&format!("l{}", i % 5)).unwrap();
            if i.is_multiple_of(7) {
                let target = Target::parse(&format!("+3361234{:04}", i % 10_000)).unwrap();
                self.core
                    .set_listing(tenant.clone(), listing.clone(), Some(target), &mut self.out);
            }
            let now = Timestamp::from_millis(self.now);
            let req = AllocateRequest {
                tenant: tenant.clone(),
                pool: PoolId(0),
                session: SessionId::parse(&format!("s{i}")).unwrap(),
                listing: Some(listing),
                target: None,
                caller: None,
                ttl: None,
                calls_required: 1,
                min_call_secs: 0,
                amount: None,
                with_code: false,
                from_page: i.is_multiple_of(3),
            };
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&i.to_be_bytes());
            if let Ok(a) = self
                .core
                .allocate(req, now, LeaseId::from_bytes(id), &mut self.out)
            {
                let number = a.lease.number;
                match i % 4 {
                    0 => {
                        self.core.release(&a.lease.id, now, &mut self.out).unwrap();
                    }
                    1 => {
                        let start = CallStart {
                            id: CallId::parse(&format!("c{i}")).unwrap(),
                            called: number,
                            caller: PhoneNumber::from_digits(33_612_000_000 + i),
                            code: None,
                            at: now,
                            entropy: Entropy {
                                id: [i as u8; 16],
                                code: i,
                            },
                        };
                        self.core.call_start(start, now, &mut self.out).unwrap();
                    }
                    2 => {
                        self.core
                            .renew(&a.lease.id, None, now, &mut self.out)
                            .unwrap();
                    }
                    _ => {}
                }
            }
            self.now += 7_000;
            self.core
                .tick(Timestamp::from_millis(self.now), &mut self.out);
            self.persist();
        }
    }

    fn close(&mut self) {
        self.store = None;
    }

    /// Opens the data folder again (as a restart would) and reads it back.
    fn reopen(&mut self) -> Result<leaseline::store::Recovered, String> {
        self.close();
        let store = open(self.dir.path());
        let r = store.load().map_err(|e| e.to_string());
        self.store = Some(store);
        r
    }

    fn snapshots(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_str().unwrap();
                name.starts_with("state-") && name.ends_with(".snap")
            })
            .collect();
        files.sort();
        files
    }
}

/// sled's background threads may hold the file lock a moment after the last handle.
fn open(dir: &Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(dir, 8 << 20, directory()) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

/// The state as recovered, compared whole (its `Debug` lists every record in key order).
fn state(r: &leaseline::store::Recovered) -> String {
    format!("{:?}", r.snapshot)
}

fn flip_byte(path: &Path, at: f64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = (bytes.len() as f64 * at) as usize;
    bytes[i] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}

fn flip_last_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() * 2 / 3]).unwrap();
}

#[test]
fn a_damaged_newest_snapshot_is_ignored_for_the_older_one_and_a_longer_log() {
    let mut node = Node::new();
    node.work(60);
    let older = node.store().compact().unwrap().expect("a first snapshot");
    node.work(60);
    let newer = node.store().compact().unwrap().expect("a second snapshot");
    assert!(newer > older);
    node.work(30);
    let files = node.snapshots();
    assert_eq!(files.len(), 2, "two snapshots kept: {files:?}");
    let whole = node.reopen().unwrap();
    assert_eq!(whole.from_snapshot, Some(newer));
    assert!(whole.replayed > 0, "the log after the snapshot is replayed");
    assert!(!whole.snapshot.leases.is_empty() && !whole.snapshot.calls.is_empty());
    assert!(!whole.snapshot.listings.is_empty() && !whole.snapshot.wheel.is_empty());

    let good = std::fs::read(&files[1]).unwrap();
    for (what, damage) in [
        (
            "a byte flipped in an entry",
            &(|p: &Path| flip_byte(p, 0.5)) as &dyn Fn(&Path),
        ),
        ("a byte flipped in the header", &|p: &Path| {
            flip_byte(p, 0.0)
        }),
        ("a byte flipped in the checksum", &flip_last_byte),
        ("truncated", &truncate),
        ("emptied", &|p: &Path| std::fs::write(p, b"").unwrap()),
    ] {
        node.close();
        damage(&files[1]);
        let r = node.reopen().unwrap();
        assert_eq!(
            r.from_snapshot,
            Some(older),
            "{what}: the older snapshot stands in"
        );
        assert!(r.replayed > whole.replayed, "{what}: with a longer log");
        assert_eq!(
            state(&r),
            state(&whole),
            "{what}: the state comes back whole"
        );
        node.close();
        std::fs::write(&files[1], &good).unwrap();
    }

    // Both damaged: the log no longer goes back to the beginning (it was cut at the older
    // snapshot), so start-up is refused rather than served with state missing.
    node.close();
    flip_byte(&files[0], 0.5);
    truncate(&files[1]);
    let e = node.reopen().unwrap_err();
    assert!(e.contains("cannot be rebuilt"), "{e}");
}

#[test]
fn with_its_only_snapshot_damaged_the_whole_log_rebuilds_the_state() {
    let mut node = Node::new();
    node.work(50);
    node.store().compact().unwrap().expect("a snapshot");
    node.work(40);
    let whole = node.reopen().unwrap();
    let files = node.snapshots();
    assert_eq!(files.len(), 1);
    for damage in [flip_byte as fn(&Path, f64), |p, _| truncate(p)] {
        node.close();
        let good = std::fs::read(&files[0]).unwrap();
        damage(&files[0], 0.3);
        let r = node.reopen().unwrap();
        assert_eq!(
            r.from_snapshot, None,
            "every snapshot damaged: the log alone"
        );
        assert_eq!(state(&r), state(&whole));
        // Compaction then builds on the log alone too, and the damaged file goes.
        let seq = node.store().compact().unwrap();
        assert!(seq.is_some());
        let r = node.reopen().unwrap();
        assert_eq!(r.from_snapshot, seq);
        assert_eq!(state(&r), state(&whole));
        assert_eq!(node.snapshots().len(), 1, "the damaged file is deleted");
        node.close();
        for f in node.snapshots() {
            std::fs::remove_file(f).unwrap();
        }
        std::fs::write(&files[0], &good).unwrap();
    }
}

#[test]
fn compaction_after_a_fallback_builds_on_the_good_snapshot_and_drops_the_damaged_one() {
    let mut node = Node::new();
    node.work(40);
    let older = node.store().compact().unwrap().unwrap();
    node.work(40);
    node.store().compact().unwrap().unwrap();
    node.work(20);
    let whole = node.reopen().unwrap();
    let files = node.snapshots();
    node.close();
    flip_byte(&files[1], 0.5);
    assert_eq!(node.reopen().unwrap().from_snapshot, Some(older));
    node.work(10);
    let expected = node.reopen().unwrap();
    assert_ne!(state(&expected), state(&whole));
    let newest = node.store().compact().unwrap().unwrap();
    let kept = node.snapshots();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(!kept.contains(&files[1]), "the damaged snapshot is deleted");
    assert!(kept.contains(&files[0]), "the one it was built on is kept");
    let r = node.reopen().unwrap();
    assert_eq!(r.from_snapshot, Some(newest));
    assert_eq!(r.replayed, 0);
    assert_eq!(state(&r), state(&expected));
}

#[test]
fn a_snapshot_torn_before_its_rename_leaves_nothing_behind() {
    let mut node = Node::new();
    node.work(30);
    let first = node.store().compact().unwrap().unwrap();
    node.work(30);
    let whole = node.reopen().unwrap();
    let torn = node.store().compact_torn_for_tests().unwrap().unwrap();
    assert!(torn > first);
    let tmp = std::fs::read_dir(node.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(tmp, 1, "the torn file is there until the next open");
    let r = node.reopen().unwrap();
    assert_eq!(r.from_snapshot, Some(first));
    assert_eq!(state(&r), state(&whole));
    let left: Vec<String> = std::fs::read_dir(node.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        left.is_empty(),
        "stale .tmp files are removed at open: {left:?}"
    );
}

#[test]
fn compaction_runs_by_itself_past_its_threshold_and_keeps_two_snapshots() {
    let mut node = Node::new();
    node.close();
    let policy = Policy {
        after_changes: 50,
        min_interval: Duration::ZERO,
    };
    node.store = Some(Store::open_with(node.dir.path(), 8 << 20, directory(), policy).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.snapshots().len() < 2 {
        assert!(Instant::now() < deadline, "no background compaction");
        node.work(20);
        std::thread::sleep(Duration::from_millis(20));
    }
    node.work(5);
    let whole = {
        let r = node.store().load().unwrap();
        state(&r)
    };
    // Whatever the background thread was doing, a restart reads the same state.
    let r = node.reopen().unwrap();
    assert_eq!(state(&r), whole);
    assert!(r.from_snapshot.is_some());
    assert!(node.snapshots().len() <= 2);
}

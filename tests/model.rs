//! Model-based test: random allocate / renew / release / advance-clock / restart sequences are
//! applied to the real core persisted in a real sled store, and to a small reference model
//! written from the rules in ARCHITECTURE.md. After every step both must agree and the invariants hold.
//! Some allocations come from pages, which may hold only half the pool and live shorter.
//! A second run adds snapshots (compaction) at random points, and snapshots torn by a crash
//! between the file's write and its rename, each followed by a restart: a restart then reads
//! the newest snapshot and replays the log's tail after it.

use std::time::Duration;

use leaseline::core::{
    AllocateRequest, Allocator, CoreError, Directory, LeaseId, LeaseSettings, LeaseState,
    ListingId, OnExhausted, Outbox, PhoneNumber, PoolId, PoolSpec, SessionId, TenantId, Timestamp,
};
use leaseline::store::Store;
use proptest::prelude::*;

const N: usize = 4;
const TTL: u64 = 60_000;
const MAX_TTL: u64 = 180_000;
const PAGE_MAX_TTL: u64 = 100_000;
/// Pages may hold this many of the N numbers (a share of 0.5).
const PAGE_NUMBERS: usize = N / 2;
const GRACE: u64 = 20_000;
const Q: u64 = 40_000;
const RETENTION: u64 = 120_000;
const START: u64 = 1_800_000_000_000;

fn spec() -> PoolSpec {
    PoolSpec {
        name: "p".into(),
        numbers: (0..N as u64)
            .map(|i| PhoneNumber::from_digits(33_899_100_000 + i).unwrap())
            .collect(),
        settings: LeaseSettings {
            ttl: Duration::from_millis(TTL),
            max_ttl: Duration::from_millis(MAX_TTL),
            page_max_ttl: Duration::from_millis(PAGE_MAX_TTL),
            grace: Duration::from_millis(GRACE),
            quarantine: Duration::from_millis(Q),
            retention: Duration::from_millis(RETENTION),
        },
        on_exhausted: OnExhausted::Reject,
        return_window: Duration::from_secs(30 * 86_400),
        fallback: None,
        mode: leaseline::core::PoolMode::Dynamic,
        access_ttl: Duration::ZERO,
        limits: leaseline::core::PoolLimits {
            page_share: leaseline::core::Share::from_permille(500).unwrap(),
            ..Default::default()
        },
        tariff: None,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        session: u8,
        listing: Option<u8>,
        ttl_secs: Option<u16>,
        page: bool,
    },
    Renew {
        lease: u8,
        ttl_secs: Option<u16>,
    },
    Release {
        lease: u8,
    },
    Advance {
        secs: u16,
    },
    Restart,
    /// Compaction: the log folded into a new snapshot file, the log cut.
    Snapshot,
    /// A snapshot written and synced but never renamed into place, then a crash and restart.
    TornSnapshot,
}

fn op() -> impl Strategy<Value = Op> {
    let ttl = prop::option::of(1u16..400);
    prop_oneof![
        4 => (0u8..4, prop::option::of(0u8..2), ttl.clone(), any::<bool>())
            .prop_map(|(session, listing, ttl_secs, page)| Op::Allocate { session, listing, ttl_secs, page }),
        2 => (any::<u8>(), ttl).prop_map(|(lease, ttl_secs)| Op::Renew { lease, ttl_secs }),
        2 => any::<u8>().prop_map(|lease| Op::Release { lease }),
        3 => (0u16..100).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Restart),
    ]
}

/// The same operations, with snapshots and torn snapshots among them.
fn op_with_snapshots() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => op(),
        2 => Just(Op::Snapshot),
        1 => Just(Op::TornSnapshot),
    ]
}

/// What a step answered, in terms both sides can produce.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Lease {
        id: u64,
        number: usize,
        expires: u64,
        fresh: bool,
    },
    Released(bool),
    Exhausted(u64),
    Unknown,
    Ended(LeaseState),
    Nothing,
}

// ---- the reference model -------------------------------------------------------------

#[derive(Debug, Clone)]
struct MLease {
    number: usize,
    session: u8,
    listing: Option<u8>,
    created: u64,
    expires: u64,
    released: Option<u64>,
    page: bool,
}

#[derive(Default)]
struct Model {
    leases: Vec<MLease>,
}

impl MLease {
    fn end(&self, now: u64) -> Option<u64> {
        self.released
            .or((now >= self.expires).then_some(self.expires))
    }
    fn state(&self, now: u64) -> LeaseState {
        match (self.released, now >= self.expires) {
            (Some(_), _) => LeaseState::Released,
            (None, true) => LeaseState::Expired,
            (None, false) => LeaseState::Active,
        }
    }
    fn purged(&self, now: u64) -> bool {
        self.end(now).is_some_and(|e| now >= e + RETENTION.max(Q))
    }
}

impl Model {
    fn latest_on(&self, n: usize) -> Option<&MLease> {
        self.leases.iter().rev().find(|l| l.number == n)
    }

    /// (free since, or None if busy; busy until)
    fn number_state(&self, n: usize, now: u64) -> (Option<u64>, u64) {
        match self.latest_on(n) {
            None => (Some(0), 0),
            Some(l) => {
                let until = l.end(now).unwrap_or(l.expires) + Q;
                if now >= until {
                    // Once its last lease's record is purged, a number ranks as free since
                    // forever (index order), restart or not.
                    (Some(if l.purged(now) { 0 } else { until }), until)
                } else {
                    (None, until)
                }
            }
        }
    }

    fn life(page: bool) -> u64 {
        if page {
            PAGE_MAX_TTL
        } else {
            MAX_TTL
        }
    }

    fn extend(l: &mut MLease, ttl: Option<u64>, now: u64) {
        let life = Self::life(l.page);
        let ttl = ttl.unwrap_or(TTL).min(life);
        l.expires = l.expires.max((now + ttl).min(l.created + life));
    }

    fn apply(&mut self, op: &Op, now: u64) -> Answer {
        match *op {
            Op::Allocate {
                session,
                listing,
                ttl_secs,
                page,
            } => {
                let ttl = ttl_secs.map(|s| s as u64 * 1000);
                if let Some(i) = self.leases.iter().rposition(|l| {
                    l.session == session
                        && l.listing == listing
                        && l.state(now) == LeaseState::Active
                }) {
                    Self::extend(&mut self.leases[i], ttl, now);
                    let l = &self.leases[i];
                    return Answer::Lease {
                        id: i as u64,
                        number: l.number,
                        expires: l.expires,
                        fresh: false,
                    };
                }
                let states: Vec<_> = (0..N).map(|n| self.number_state(n, now)).collect();
                // A number is held by its latest lease until its quarantine ends.
                let held_by_pages = (0..N)
                    .filter(|&n| states[n].0.is_none())
                    .filter(|&n| self.latest_on(n).is_some_and(|l| l.page))
                    .count();
                let pick = (0..N)
                    .filter(|_| !page || held_by_pages < PAGE_NUMBERS)
                    .filter_map(|n| states[n].0.map(|since| (since, n)))
                    .min();
                match pick {
                    None => {
                        let next = (0..N)
                            .filter(|&n| states[n].0.is_none())
                            .map(|n| states[n].1)
                            .min()
                            .unwrap();
                        Answer::Exhausted(((next - now).div_ceil(1000)).max(1))
                    }
                    Some((_, n)) => {
                        let expires = now + ttl.unwrap_or(TTL).min(Self::life(page));
                        self.leases.push(MLease {
                            number: n,
                            session,
                            listing,
                            created: now,
                            expires,
                            released: None,
                            page,
                        });
                        Answer::Lease {
                            id: self.leases.len() as u64 - 1,
                            number: n,
                            expires,
                            fresh: true,
                        }
                    }
                }
            }
            Op::Renew { lease, ttl_secs } => {
                let known = self.leases.len() as u64;
                let Some(l) = self.target(lease, now) else {
                    return Answer::Unknown;
                };
                match l.state(now) {
                    LeaseState::Active => {
                        Self::extend(l, ttl_secs.map(|s| s as u64 * 1000), now);
                        Answer::Lease {
                            id: lease as u64 % known,
                            number: l.number,
                            expires: l.expires,
                            fresh: false,
                        }
                    }
                    s => Answer::Ended(s),
                }
            }
            Op::Release { lease } => {
                let Some(l) = self.target(lease, now) else {
                    return Answer::Unknown;
                };
                if l.state(now) == LeaseState::Active {
                    l.released = Some(now);
                    Answer::Released(true)
                } else {
                    Answer::Released(false)
                }
            }
            Op::Advance { .. } => Answer::Nothing,
            // A restart or a snapshot changes nothing the model can see.
            Op::Restart | Op::Snapshot | Op::TornSnapshot => Answer::Nothing,
        }
    }

    fn target(&mut self, lease: u8, now: u64) -> Option<&mut MLease> {
        if self.leases.is_empty() {
            return None;
        }
        let i = lease as usize % self.leases.len();
        let l = &mut self.leases[i];
        (!l.purged(now)).then_some(l)
    }
}

// ---- the real thing: core + sled -------------------------------------------------------

struct Real {
    dir: tempfile::TempDir,
    store: Option<Store>,
    core: Allocator,
    /// What the core's operations left to persist since the last `persist`.
    out: Outbox,
}

fn id(i: u64) -> LeaseId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&i.to_be_bytes());
    LeaseId::from_bytes(b)
}

fn index(id: &LeaseId) -> u64 {
    u64::from_be_bytes(id.as_bytes()[8..].try_into().unwrap())
}

impl Real {
    fn new() -> Real {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(dir.path(), 8 << 20, Directory::new(vec![spec()]).unwrap()).unwrap();
        Real {
            dir,
            store: Some(store),
            core: Allocator::new(vec![spec()]).unwrap(),
            out: Outbox::new(),
        }
    }

    fn persist(&mut self) {
        let effects = std::mem::take(&mut self.out.effects);
        let store = self.store.as_ref().unwrap();
        store.apply(&effects).unwrap();
        store.flush().unwrap();
    }

    fn restart(&mut self) {
        self.store = None; // closes sled
                           // sled's background threads may hold the file lock a moment after the last handle.
        let mut tries = 0;
        let store = loop {
            match Store::open(
                self.dir.path(),
                8 << 20,
                Directory::new(vec![spec()]).unwrap(),
            ) {
                Ok(s) => break s,
                Err(e) if tries < 200 && e.to_string().contains("lock") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("reopen failed: {e}"),
            }
        };
        let r = store.load().unwrap();
        self.core = Allocator::restore(Directory::new(vec![spec()]).unwrap(), r.snapshot).unwrap();
        self.store = Some(store);
    }

    fn apply(&mut self, op: &Op, now: Timestamp, next_id: u64, known: usize) -> Answer {
        let answer = match *op {
            Op::Allocate {
                session,
                listing,
                ttl_secs,
                page,
            } => {
                let req = AllocateRequest {
                    tenant: TenantId::parse("t").unwrap(),
                    pool: PoolId(0),
                    session: SessionId::parse(&format!("s{session}")).unwrap(),
                    listing: listing.map(|l| ListingId::parse(&format!("l{l}")).unwrap()),
                    target: None,
                    caller: None,
                    ttl: ttl_secs.map(|s| Duration::from_secs(s as u64)),
                    calls_required: 1,
                    min_call_secs: 0,
                    amount: None,
                    with_code: false,
                    from_page: page,
                };
                match self.core.allocate(req, now, id(next_id), &mut self.out) {
                    Ok(a) => Answer::Lease {
                        id: index(&a.lease.id),
                        number: number_index(a.lease.number),
                        expires: a.lease.expires_at.as_millis(),
                        fresh: a.fresh,
                    },
                    Err(CoreError::Exhausted { retry_after_secs }) => {
                        Answer::Exhausted(retry_after_secs)
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Renew { lease, ttl_secs } if known > 0 => {
                let i = lease as u64 % known as u64;
                match self.core.renew(
                    &id(i),
                    ttl_secs.map(|s| Duration::from_secs(s as u64)),
                    now,
                    &mut self.out,
                ) {
                    Ok(l) => Answer::Lease {
                        id: i,
                        number: number_index(l.number),
                        expires: l.expires_at.as_millis(),
                        fresh: false,
                    },
                    Err(CoreError::UnknownLease) => Answer::Unknown,
                    Err(CoreError::LeaseEnded(s)) => Answer::Ended(s),
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Release { lease } if known > 0 => {
                match self
                    .core
                    .release(&id(lease as u64 % known as u64), now, &mut self.out)
                {
                    Ok(changed) => Answer::Released(changed),
                    Err(CoreError::UnknownLease) => Answer::Unknown,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Renew { .. } | Op::Release { .. } => Answer::Unknown,
            Op::Advance { .. } => Answer::Nothing,
            Op::Restart => {
                self.restart();
                Answer::Nothing
            }
            Op::Snapshot => {
                self.store.as_ref().unwrap().compact().unwrap();
                Answer::Nothing
            }
            Op::TornSnapshot => {
                self.store
                    .as_ref()
                    .unwrap()
                    .compact_torn_for_tests()
                    .unwrap();
                self.restart();
                Answer::Nothing
            }
        };
        // As the tick task would within the same tick.
        self.core.tick(now, &mut self.out);
        self.persist();
        answer
    }
}

fn number_index(n: PhoneNumber) -> usize {
    (n.digits() - 33_899_100_000) as usize
}

fn check(real: &Real, model: &Model, now: u64) -> Result<(), TestCaseError> {
    real.core.check_invariants().map_err(TestCaseError::fail)?;
    let (mut free, mut leased, mut cooling) = (0, 0, 0);
    for n in 0..N {
        match model.latest_on(n) {
            Some(l) if l.state(now) == LeaseState::Active => leased += 1,
            Some(l) if now < l.end(now).unwrap() + Q => cooling += 1,
            _ => free += 1,
        }
    }
    let s = real.core.pool_stats(PoolId(0));
    prop_assert_eq!((s.free, s.leased, s.cooling), (free, leased, cooling));
    for (i, m) in model.leases.iter().enumerate() {
        let r = real.core.lease(&id(i as u64));
        prop_assert_eq!(r.is_none(), m.purged(now), "lease {} presence", i);
        if let Some(r) = r {
            prop_assert_eq!(r.state(Timestamp::from_millis(now)), m.state(now));
            prop_assert_eq!(number_index(r.number), m.number);
            prop_assert_eq!(r.expires_at.as_millis(), m.expires);
            prop_assert_eq!(r.end.map(|e| e.at.as_millis()), m.end(now));
        }
    }
    Ok(())
}

/// Runs `ops` on both sides, checking after each, then after a final restart.
fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut real = Real::new();
    let mut model = Model::default();
    let mut now = START;
    for op in ops {
        if let Op::Advance { secs } = op {
            now += *secs as u64 * 1000;
        }
        let known = model.leases.len();
        let expected = model.apply(op, now);
        let got = real.apply(op, Timestamp::from_millis(now), known as u64, known);
        prop_assert_eq!(got, expected, "after {:?}", op);
        check(&real, &model, now)?;
    }
    // Whatever happened, a final restart loses nothing.
    real.restart();
    real.core.tick(Timestamp::from_millis(now), &mut real.out);
    check(&real, &model, now)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn core_and_store_agree_with_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }

    #[test]
    fn core_and_store_agree_with_the_model_across_snapshots_and_torn_snapshots(
        ops in prop::collection::vec(op_with_snapshots(), 1..60)
    ) {
        run(&ops)?;
    }
}

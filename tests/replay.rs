//! Invariant 4: attribution depends only on the stored state and the event's time. Two
//! copies of the core receive the same random leases and calls; one is persisted to sled and
//! restarted from disk at random moments, the other never stops. Every answer, and the answer
//! to every probe call at every step, must be the same.

use std::time::Duration;

use leaseline::core::{
    AllocateRequest, Allocator, CallEnd, CallId, CallStart, Code, Directory, Entropy, LeaseId,
    LeaseSettings, ListingId, OnExhausted, Outbox, PhoneNumber, PoolId, PoolSpec, SessionId,
    Target, TenantId, Timestamp,
};
use leaseline::store::Store;
use proptest::prelude::*;

const START: u64 = 1_800_000_000_000;
const SHARED: u64 = 33_899_199_999;

fn number(i: u64) -> PhoneNumber {
    PhoneNumber::from_digits(33_899_100_000 + i).unwrap()
}

fn caller(i: u8) -> PhoneNumber {
    PhoneNumber::from_digits(33_612_345_600 + i as u64).unwrap()
}

fn spec() -> PoolSpec {
    PoolSpec {
        name: "p".into(),
        numbers: (0..3).map(number).collect(),
        settings: LeaseSettings {
            ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(900),
            page_max_ttl: Duration::from_secs(900),
            grace: Duration::from_secs(60),
            quarantine: Duration::from_secs(120),
            retention: Duration::from_secs(1800),
        },
        on_exhausted: OnExhausted::Shared {
            number: PhoneNumber::from_digits(SHARED).unwrap(),
            code_ttl: Duration::from_secs(120),
        },
        return_window: Duration::from_secs(600),
        fallback: None,
        mode: leaseline::core::PoolMode::Dynamic,
        access_ttl: Duration::ZERO,
        limits: Default::default(),
        tariff: None,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        session: u8,
        listing: Option<u8>,
        caller: Option<u8>,
        calls: u32,
        min: u32,
    },
    Release {
        lease: u8,
    },
    Advance {
        secs: u16,
    },
    Start {
        line: u8,
        caller: Option<u8>,
        code_of: Option<u8>,
        back_secs: u16,
    },
    End {
        call: u8,
        duration: u16,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, prop::option::of(0u8..3), prop::option::of(0u8..4), 1u32..3, prop::sample::select(vec![0u32, 30]))
            .prop_map(|(session, listing, caller, calls, min)| Op::Allocate { session, listing, caller, calls, min }),
        1 => any::<u8>().prop_map(|lease| Op::Release { lease }),
        2 => (0u16..400).prop_map(|secs| Op::Advance { secs }),
        4 => (0u8..4, prop::option::of(0u8..4), prop::option::of(any::<u8>()), 0u16..600)
            .prop_map(|(line, caller, code_of, back_secs)| Op::Start { line, caller, code_of, back_secs }),
        2 => (any::<u8>(), 0u16..120).prop_map(|(call, duration)| Op::End { call, duration }),
        1 => Just(Op::Restart),
    ]
}

fn id(i: u64) -> LeaseId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&i.to_be_bytes());
    LeaseId::from_bytes(b)
}

struct Twin {
    core: Allocator,
    /// What the core's operations left to persist since the last `persist`.
    out: Outbox,
    store: Option<(tempfile::TempDir, Store)>,
}

impl Twin {
    fn new(persisted: bool) -> Twin {
        let store = persisted.then(|| {
            let dir = tempfile::tempdir().unwrap();
            let store =
                Store::open(dir.path(), 8 << 20, Directory::new(vec![spec()]).unwrap()).unwrap();
            (dir, store)
        });
        Twin {
            core: Allocator::new(vec![spec()]).unwrap(),
            out: Outbox::new(),
            store,
        }
    }

    fn persist(&mut self) {
        let Outbox { effects, .. } = std::mem::take(&mut self.out);
        if let Some((_, store)) = &self.store {
            store.apply(&effects).unwrap();
            store.flush().unwrap();
        }
    }

    fn restart(&mut self) {
        let Some((dir, store)) = self.store.take() else {
            return;
        };
        drop(store);
        let mut tries = 0;
        let store = loop {
            match Store::open(dir.path(), 8 << 20, Directory::new(vec![spec()]).unwrap()) {
                Ok(s) => break s,
                Err(e) if tries < 200 && e.to_string().contains("lock") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("reopen failed: {e}"),
            }
        };
        self.core = Allocator::restore(
            Directory::new(vec![spec()]).unwrap(),
            store.load().unwrap().snapshot,
        )
        .unwrap();
        self.store = Some((dir, store));
    }

    /// Applies one step; returns a printable answer to compare.
    fn apply(
        &mut self,
        op: &Op,
        now: u64,
        leases: &[(LeaseId, Option<Code>)],
        calls: usize,
    ) -> String {
        let t = Timestamp::from_millis(now);
        self.core.tick(t, &mut self.out);
        let answer = match *op {
            Op::Allocate {
                session,
                listing,
                caller: c,
                calls,
                min,
            } => {
                let req = AllocateRequest {
                    tenant: TenantId::parse("t").unwrap(),
                    pool: PoolId(0),
                    session: SessionId::parse(&format!("s{session}")).unwrap(),
                    listing: listing.map(|l| ListingId::parse(&format!("l{l}")).unwrap()),
                    target: Some(
                        Target::parse(&format!("+3360000000{}", listing.unwrap_or(9))).unwrap(),
                    ),
                    caller: c.map(caller),
                    ttl: None,
                    calls_required: calls,
                    min_call_secs: min,
                    amount: None,
                    with_code: false,
                    from_page: false,
                };
                format!(
                    "{:?}",
                    self.core
                        .allocate(req, t, id(leases.len() as u64), &mut self.out)
                        .map(|a| (a.lease, a.fresh))
                )
            }
            Op::Release { lease } if !leases.is_empty() => {
                format!(
                    "{:?}",
                    self.core
                        .release(&leases[lease as usize % leases.len()].0, t, &mut self.out)
                )
            }
            Op::Start {
                line,
                caller: c,
                code_of,
                back_secs,
            } => {
                let called = if line == 3 {
                    PhoneNumber::from_digits(SHARED).unwrap()
                } else {
                    number(line as u64)
                };
                let code = code_of
                    .and_then(|k| leases.get(k as usize % leases.len().max(1)))
                    .and_then(|l| l.1);
                let start = CallStart {
                    id: CallId::parse(&format!("call-{calls}")).unwrap(),
                    called,
                    caller: c.map(caller),
                    code,
                    at: Timestamp::from_millis(now.saturating_sub(back_secs as u64 * 1000)),
                    entropy: Entropy::default(),
                };
                format!("{:?}", self.core.call_start(start, t, &mut self.out))
            }
            Op::End { call, duration } if calls > 0 => {
                let cid = CallId::parse(&format!("call-{}", call as usize % calls)).unwrap();
                format!(
                    "{:?}",
                    self.core.call_end(
                        &cid,
                        CallEnd {
                            at: t,
                            duration_secs: duration as u32
                        },
                        t,
                        Entropy::default(),
                        &mut self.out,
                    )
                )
            }
            Op::Restart => {
                self.persist();
                self.restart();
                String::new()
            }
            _ => String::new(),
        };
        self.core.tick(t, &mut self.out);
        self.persist();
        answer
    }

    /// Answers to a grid of hypothetical calls, without recording them.
    fn probe(&self, now: u64, leases: &[(LeaseId, Option<Code>)]) -> Vec<String> {
        let mut out = Vec::new();
        for line in 0..4u64 {
            let called = if line == 3 {
                PhoneNumber::from_digits(SHARED).unwrap()
            } else {
                number(line)
            };
            for c in [None, Some(0u8), Some(2)] {
                for back in [0u64, 90, 400] {
                    let code = leases.last().and_then(|l| l.1);
                    let at = Timestamp::from_millis(now.saturating_sub(back * 1000));
                    out.push(format!(
                        "{:?}",
                        self.core.attribute(called, c.map(caller), code, at)
                    ));
                }
            }
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn the_same_state_and_calls_give_the_same_answers_across_restarts(ops in prop::collection::vec(op(), 1..50)) {
        let mut restarted = Twin::new(true);
        let mut steady = Twin::new(false);
        let mut now = START;
        let mut leases: Vec<(LeaseId, Option<Code>)> = Vec::new();
        let mut calls = 0usize;
        for op in &ops {
            if let Op::Advance { secs } = op {
                now += *secs as u64 * 1000;
            }
            let a = restarted.apply(op, now, &leases, calls);
            let b = steady.apply(op, now, &leases, calls);
            prop_assert_eq!(&a, &b, "answers differ after {:?}", op);
            if let Op::Allocate { .. } = op {
                let new = id(leases.len() as u64);
                if let Some(l) = steady.core.lease(&new) {
                    leases.push((new, l.code));
                }
            }
            if let Op::Start { .. } = op {
                calls += 1;
            }
            prop_assert_eq!(restarted.probe(now, &leases), steady.probe(now, &leases));
            restarted.core.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}

//! Unit tests of the core, driven by hand-set instants: no clock, no sleep.

use std::time::Duration;

use super::*;

/// The allocator with an outbox of its own, drained by `take_effects` / `take_notices`, as the
/// service holds one per operation. Reads go to the allocator itself.
struct Harness {
    a: Allocator,
    out: Outbox,
}

impl From<Allocator> for Harness {
    fn from(a: Allocator) -> Self {
        Harness {
            a,
            out: Outbox::new(),
        }
    }
}

impl std::ops::Deref for Harness {
    type Target = Allocator;
    fn deref(&self) -> &Allocator {
        &self.a
    }
}

impl Harness {
    fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out.effects)
    }

    fn allocate(
        &mut self,
        req: AllocateRequest,
        now: Timestamp,
        id: LeaseId,
    ) -> Result<Allocated, CoreError> {
        self.a.allocate(req, now, id, &mut self.out)
    }

    fn renew(
        &mut self,
        id: &LeaseId,
        ttl: Option<Duration>,
        now: Timestamp,
    ) -> Result<Lease, CoreError> {
        self.a.renew(id, ttl, now, &mut self.out)
    }

    fn release(&mut self, id: &LeaseId, now: Timestamp) -> Result<bool, CoreError> {
        self.a.release(id, now, &mut self.out)
    }

    fn tick(&mut self, now: Timestamp) {
        self.a.tick(now, &mut self.out)
    }

    fn rewind_to(&mut self, mark: Timestamp, now: Timestamp) -> usize {
        self.a.rewind_to(mark, now, &mut self.out)
    }
}

const MIN: u64 = 60_000;

fn settings() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(15 * 60),
        max_ttl: Duration::from_secs(2 * 3600),
        page_max_ttl: Duration::from_secs(2 * 3600),
        grace: Duration::from_secs(5 * 60),
        quarantine: Duration::from_secs(10 * 60),
        retention: Duration::from_secs(24 * 3600),
    }
}

fn numbers(n: u64) -> Vec<PhoneNumber> {
    (0..n)
        .map(|i| PhoneNumber::from_digits(33_899_100_000 + i).unwrap())
        .collect()
}

fn allocator(size: u64) -> Harness {
    Harness::from(
        Allocator::new(vec![PoolSpec {
            name: "fr".into(),
            numbers: numbers(size),
            settings: settings(),
            on_exhausted: OnExhausted::Reject,
            return_window: Duration::from_secs(30 * 86_400),
            fallback: None,
            mode: PoolMode::Dynamic,
            access_ttl: Duration::ZERO,
            limits: Default::default(),
            tariff: None,
        }])
        .unwrap(),
    )
}

fn at(min: u64) -> Timestamp {
    // Far from zero so that "free since the epoch" never ties with a real instant.
    Timestamp::from_millis(1_800_000_000_000 + min * MIN)
}

fn req(session: &str, listing: Option<&str>) -> AllocateRequest {
    AllocateRequest {
        tenant: TenantId::parse("site").unwrap(),
        pool: PoolId(0),
        session: SessionId::parse(session).unwrap(),
        listing: listing.map(|l| ListingId::parse(l).unwrap()),
        target: None,
        caller: None,
        ttl: None,
        calls_required: 1,
        min_call_secs: 0,
        amount: None,
        with_code: false,
        from_page: false,
    }
}

fn id(n: u8) -> LeaseId {
    LeaseId::from_bytes([n; 16])
}

fn stats(a: &Allocator) -> (usize, usize, usize) {
    let s = a.pool_stats(PoolId(0));
    (s.free, s.leased, s.cooling)
}

#[test]
fn a_number_goes_free_leased_cooling_free() {
    let mut a = allocator(1);
    let l = a.allocate(req("s1", None), at(0), id(1)).unwrap();
    assert!(l.fresh);
    assert_eq!(l.lease.expires_at, at(15));
    assert_eq!(stats(&a), (0, 1, 0));

    a.tick(at(14));
    assert_eq!(stats(&a), (0, 1, 0), "not expired before its deadline");
    a.tick(at(15));
    assert_eq!(stats(&a), (0, 0, 1), "cooling once expired");
    assert_eq!(a.lease(&id(1)).unwrap().state(at(15)), LeaseState::Expired);

    a.tick(at(24));
    assert_eq!(
        stats(&a),
        (0, 0, 1),
        "quarantine lasts 10 minutes from the end"
    );
    a.tick(at(25));
    assert_eq!(stats(&a), (1, 0, 0));
    a.check_invariants().unwrap();
}

#[test]
fn a_lease_reads_expired_at_its_deadline_even_before_the_wheel_fires() {
    let mut a = allocator(1);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    let lease = a.lease(&id(1)).unwrap();
    assert_eq!(
        lease.state(at(15).saturating_sub(Duration::from_millis(1))),
        LeaseState::Active
    );
    assert_eq!(lease.state(at(15)), LeaseState::Expired);
}

#[test]
fn same_session_and_listing_get_their_live_lease_back_extended() {
    let mut a = allocator(3);
    let first = a.allocate(req("s1", Some("car-1")), at(0), id(1)).unwrap();
    let again = a.allocate(req("s1", Some("car-1")), at(10), id(2)).unwrap();
    assert!(!again.fresh);
    assert_eq!(again.lease.id, first.lease.id);
    assert_eq!(again.lease.number, first.lease.number);
    assert_eq!(again.lease.expires_at, at(25));

    let other_listing = a.allocate(req("s1", Some("car-2")), at(10), id(3)).unwrap();
    assert!(other_listing.fresh);
    assert_ne!(other_listing.lease.number, first.lease.number);
    let other_session = a.allocate(req("s2", Some("car-1")), at(10), id(4)).unwrap();
    assert_ne!(other_session.lease.number, first.lease.number);
}

#[test]
fn an_ended_lease_is_not_handed_back_to_its_session() {
    let mut a = allocator(2);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    a.release(&id(1), at(1)).unwrap();
    let again = a.allocate(req("s1", None), at(2), id(2)).unwrap();
    assert!(again.fresh);
    assert_eq!(again.lease.id, id(2));
}

#[test]
fn renewals_never_outlive_max_ttl_from_creation() {
    let mut a = allocator(1);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    for m in (10..=110).step_by(10) {
        a.renew(&id(1), None, at(m)).unwrap();
        a.tick(at(m));
    }
    let lease = a.lease(&id(1)).unwrap();
    assert_eq!(lease.expires_at, at(120), "capped at created + 2h");
    let r = a
        .renew(&id(1), Some(Duration::from_secs(3600)), at(115))
        .unwrap();
    assert_eq!(r.expires_at, at(120));
    a.tick(at(120));
    assert_eq!(
        a.renew(&id(1), None, at(120)).unwrap_err(),
        CoreError::LeaseEnded(LeaseState::Expired)
    );
}

#[test]
fn renewal_never_shortens_a_lease() {
    let mut a = allocator(1);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    let r = a
        .renew(&id(1), Some(Duration::from_secs(60)), at(1))
        .unwrap();
    assert_eq!(r.expires_at, at(15));
}

#[test]
fn a_stale_wheel_entry_of_a_renewed_lease_does_nothing() {
    let mut a = allocator(1);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    a.renew(&id(1), None, at(10)).unwrap();
    a.tick(at(15));
    assert_eq!(stats(&a), (0, 1, 0));
    assert_eq!(a.lease(&id(1)).unwrap().state(at(15)), LeaseState::Active);
    a.tick(at(25));
    assert_eq!(stats(&a), (0, 0, 1));
}

#[test]
fn free_numbers_go_out_least_recently_used_first() {
    let mut a = allocator(3);
    let n: Vec<_> = (1..=3)
        .map(|i| {
            a.allocate(req(&format!("s{i}"), None), at(0), id(i))
                .unwrap()
                .lease
                .number
        })
        .collect();
    // Released in the order 2, 0, 1: they become free in that order after quarantine.
    a.release(&id(2), at(1)).unwrap();
    a.release(&id(3), at(3)).unwrap();
    a.release(&id(1), at(2)).unwrap();
    a.tick(at(20));
    assert_eq!(stats(&a), (3, 0, 0));
    let order: Vec<_> = (4..=6)
        .map(|i| {
            a.allocate(req(&format!("s{i}"), None), at(20), id(i))
                .unwrap()
                .lease
                .number
        })
        .collect();
    assert_eq!(order, vec![n[1], n[0], n[2]]);
}

#[test]
fn cooling_blocks_reuse_until_quarantine_ends() {
    let mut a = allocator(1);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    assert!(a.release(&id(1), at(1)).unwrap());
    a.tick(at(1));
    let err = a.allocate(req("s2", None), at(5), id(2)).unwrap_err();
    assert_eq!(
        err,
        CoreError::Exhausted {
            retry_after_secs: 6 * 60
        }
    );
    a.tick(at(11));
    assert!(a.allocate(req("s2", None), at(11), id(2)).is_ok());
}

#[test]
fn an_exhausted_pool_says_when_the_next_number_frees() {
    let mut a = allocator(2);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    a.allocate(req("s2", None), at(3), id(2)).unwrap();
    // Nothing cooling: the first lease expires at 15 and cools until 25.
    let err = a.allocate(req("s3", None), at(4), id(3)).unwrap_err();
    assert_eq!(
        err,
        CoreError::Exhausted {
            retry_after_secs: 21 * 60
        }
    );
    // Released lease 2 at 5 cools until 15, sooner.
    a.release(&id(2), at(5)).unwrap();
    let err = a.allocate(req("s3", None), at(5), id(3)).unwrap_err();
    assert_eq!(
        err,
        CoreError::Exhausted {
            retry_after_secs: 10 * 60
        }
    );
}

#[test]
fn release_is_idempotent_and_unknown_leases_are_reported() {
    let mut a = allocator(1);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    assert!(a.release(&id(1), at(1)).unwrap());
    assert!(!a.release(&id(1), at(2)).unwrap());
    assert_eq!(
        a.release(&id(9), at(2)).unwrap_err(),
        CoreError::UnknownLease
    );
    assert_eq!(
        a.renew(&id(1), None, at(2)).unwrap_err(),
        CoreError::LeaseEnded(LeaseState::Released)
    );
}

#[test]
fn ended_records_are_purged_after_retention() {
    let mut a = allocator(1);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    a.release(&id(1), at(0)).unwrap();
    a.tick(at(10));
    assert!(a.lease(&id(1)).is_some(), "kept after the number frees");
    a.tick(at(24 * 60));
    assert!(a.lease(&id(1)).is_none());
    assert!(a.take_effects().contains(&Effect::DelLease(id(1))));
}

#[test]
fn a_long_pause_settles_every_overdue_transition_at_once() {
    let mut a = allocator(2);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    a.allocate(req("s2", None), at(0), id(2)).unwrap();
    a.tick(at(60));
    assert_eq!(stats(&a), (2, 0, 0));
    let l = a.lease(&id(1)).unwrap();
    assert_eq!(
        l.end.unwrap().at,
        at(15),
        "ended at its deadline, not when noticed"
    );
    a.check_invariants().unwrap();
}

#[test]
fn ttl_requests_are_capped_by_max_ttl() {
    let mut a = allocator(1);
    let mut r = req("s1", None);
    r.ttl = Some(Duration::from_secs(10 * 3600));
    let l = a.allocate(r, at(0), id(1)).unwrap();
    assert_eq!(l.lease.expires_at, at(120));
}

/// Applies the effects to a map, as the store would, and rebuilds from it.
fn replay(
    a: &mut Harness,
    leases: &mut std::collections::BTreeMap<LeaseId, Lease>,
    wheel: &mut std::collections::BTreeSet<(u64, Due)>,
) {
    for e in a.take_effects() {
        match e {
            Effect::PutLease(l) => {
                leases.insert(l.id, l);
            }
            Effect::DelLease(id) => {
                leases.remove(&id);
            }
            Effect::PutWheel(t, id) => {
                wheel.insert((t, id));
            }
            Effect::DelWheel(t, id) => {
                wheel.remove(&(t, id));
            }
            _ => {}
        }
    }
}

#[test]
fn restoring_from_effects_gives_back_the_same_state() {
    let mut a = allocator(3);
    let (mut leases, mut wheel) = Default::default();
    a.allocate(req("s1", Some("l")), at(0), id(1)).unwrap();
    a.allocate(req("s2", None), at(1), id(2)).unwrap();
    a.release(&id(2), at(2)).unwrap();
    a.tick(at(2));
    replay(&mut a, &mut leases, &mut wheel);

    let specs = vec![a.pool_spec(PoolId(0)).clone()];
    let snapshot = Snapshot {
        leases: leases.values().cloned().collect(),
        wheel: wheel.iter().copied().collect(),
        ..Snapshot::default()
    };
    let mut b =
        Harness::from(Allocator::restore(Directory::new(specs).unwrap(), snapshot).unwrap());
    b.tick(at(2));
    b.check_invariants().unwrap();
    assert_eq!(b.pool_stats(PoolId(0)), a.pool_stats(PoolId(0)));
    // Stickiness survives.
    let again = b.allocate(req("s1", Some("l")), at(3), id(3)).unwrap();
    assert_eq!(again.lease.id, id(1));
    // And the wheel still expires what it must.
    b.tick(at(40));
    assert_eq!(b.pool_stats(PoolId(0)).free, 3);
}

#[test]
fn restore_refuses_two_live_leases_on_one_number() {
    let mut a = allocator(1);
    let l = a.allocate(req("s1", None), at(0), id(1)).unwrap().lease;
    let mut twin = l.clone();
    twin.id = id(2);
    let specs = vec![a.pool_spec(PoolId(0)).clone()];
    let snapshot = Snapshot {
        leases: vec![l, twin],
        ..Snapshot::default()
    };
    let err = Allocator::restore(Directory::new(specs).unwrap(), snapshot).unwrap_err();
    assert!(matches!(err, CoreError::Corrupt(_)));
}

#[test]
fn a_clock_rewind_revives_nothing_and_ends_leases_stamped_in_the_future() {
    let mut a = allocator(3);
    // Made while the clock was right: one expired before the last run's mark, one still live.
    let old = a.allocate(req("old", None), at(0), id(1)).unwrap().lease;
    a.renew(&id(1), None, at(0)).unwrap();
    let live = a
        .allocate(
            AllocateRequest {
                ttl: Some(Duration::from_secs(7200)),
                ..req("live", None)
            },
            at(10),
            id(2),
        )
        .unwrap()
        .lease;
    // Made while the clock was over an hour ahead; the last run's mark is later still.
    let future = a
        .allocate(req("future", None), at(90), id(3))
        .unwrap()
        .lease;
    let mark = at(100);
    let now = at(20);
    a.take_effects();

    assert_eq!(a.rewind_to(mark, now), 2);
    // Not revived: the lease over by the mark reads as ended, although `now` < its expiry.
    assert_eq!(a.lease(&old.id).unwrap().state(now), LeaseState::Expired);
    assert_eq!(a.lease(&future.id).unwrap().state(now), LeaseState::Expired);
    assert_eq!(a.lease(&live.id).unwrap().state(now), LeaseState::Active);
    // The lease stamped in the future now reads as made and ended now; its caller has grace.
    let f = a.lease(&future.id).unwrap();
    assert_eq!((f.created_at, f.expires_at), (now, now));
    let late = a.attribute(future.number, None, None, at(21));
    assert_eq!((late.reason, late.lease), (Reason::Grace, Some(future.id)));
    assert!(!a.take_effects().is_empty(), "the endings are persisted");
    let s = a.pool_stats(PoolId(0));
    assert_eq!((s.free, s.leased, s.cooling), (0, 1, 2));
    a.check_invariants().unwrap();

    // The ended numbers cool for the quarantine counted from now, then come back.
    a.tick(at(29));
    assert_eq!(a.pool_stats(PoolId(0)).free, 0);
    a.tick(at(31));
    assert_eq!(a.pool_stats(PoolId(0)).free, 2);
    a.check_invariants().unwrap();
}

// ---- pages' share of a pool ---------------------------------------------------------------

/// A pool of `size` numbers where pages may hold `permille` thousandths, with a shared
/// number when `shared`.
fn page_pool(size: u64, permille: u16, shared: bool) -> Harness {
    let on_exhausted = match shared {
        true => OnExhausted::Shared {
            number: PhoneNumber::from_digits(33_899_199_999).unwrap(),
            code_ttl: Duration::from_secs(3 * 60),
        },
        false => OnExhausted::Reject,
    };
    Harness::from(
        Allocator::new(vec![PoolSpec {
            name: "fr".into(),
            numbers: numbers(size),
            settings: LeaseSettings {
                page_max_ttl: Duration::from_secs(30 * 60),
                ..settings()
            },
            on_exhausted,
            return_window: Duration::from_secs(30 * 86_400),
            fallback: None,
            mode: PoolMode::Dynamic,
            access_ttl: Duration::ZERO,
            limits: PoolLimits {
                page_share: Share::from_permille(permille).unwrap(),
                ..Default::default()
            },
            tariff: None,
        }])
        .unwrap(),
    )
}

fn page(session: &str) -> AllocateRequest {
    AllocateRequest {
        with_code: false,
        from_page: true,
        ..req(session, None)
    }
}

/// Distinct ids beyond 255 leases.
fn wide_id(n: u32) -> LeaseId {
    let mut b = [0x5a; 16];
    b[..4].copy_from_slice(&n.to_le_bytes());
    LeaseId::from_bytes(b)
}

#[test]
fn pages_stop_at_their_share_and_servers_still_get_numbers() {
    let mut a = page_pool(10, 800, false);
    for i in 0..8 {
        a.allocate(page(&format!("p{i}")), at(0), wide_id(i))
            .unwrap();
    }
    let refused = a.allocate(page("p8"), at(1), wide_id(8)).unwrap_err();
    assert!(
        matches!(refused, CoreError::Exhausted { .. }),
        "a page past its share: {refused:?}"
    );
    assert_eq!(stats(&a), (2, 8, 0), "two numbers stay free for servers");
    let server = a.allocate(req("site", None), at(1), wide_id(9)).unwrap();
    assert!(server.lease.code.is_none() && !server.lease.from_page);
    a.allocate(req("site-2", None), at(1), wide_id(10)).unwrap();
    assert!(a.allocate(req("site-3", None), at(1), wide_id(11)).is_err());
    let s = a.pool_stats(PoolId(0));
    assert_eq!((s.page_numbers, s.page_codes), (8, 0));
    a.check_invariants().unwrap();
}

#[test]
fn a_page_refused_a_number_is_told_when_to_retry() {
    let mut a = page_pool(10, 800, false);
    for i in 0..8 {
        a.allocate(page(&format!("p{i}")), at(i as u64), wide_id(i))
            .unwrap();
    }
    // The first page lease expires at 15 and cools until 25: 25 minutes from 0.
    assert_eq!(
        a.allocate(page("late"), at(0), wide_id(99)).unwrap_err(),
        CoreError::Exhausted {
            retry_after_secs: 25 * 60
        }
    );
}

#[test]
fn a_page_past_its_share_of_numbers_gets_a_code_then_nothing_past_its_share_of_codes() {
    // 2 thousandths: of 1,000 numbers pages may hold 2, of 10,000 codes 20.
    let mut a = page_pool(1000, 2, true);
    let mut codes = 0;
    for i in 0..22 {
        let l = a
            .allocate(page(&format!("p{i}")), at(0), wide_id(i))
            .unwrap()
            .lease;
        if i < 2 {
            assert!(l.code.is_none(), "page {i} gets a number of its share");
        } else {
            assert!(l.code.is_some(), "page {i} gets the shared number");
            codes += 1;
        }
    }
    assert_eq!(codes, 20);
    let err = a.allocate(page("p22"), at(1), wide_id(22)).unwrap_err();
    assert!(matches!(err, CoreError::Exhausted { .. }), "{err:?}");
    // A server still gets a number while any is free, and a code once none is.
    let server = a.allocate(req("site", None), at(1), wide_id(23)).unwrap();
    assert!(server.lease.code.is_none());
    let s = a.pool_stats(PoolId(0));
    assert_eq!((s.page_numbers, s.page_codes, s.codes), (2, 20, 20));
    a.check_invariants().unwrap();
}

#[test]
fn a_page_number_counts_against_the_share_until_its_quarantine_ends() {
    let mut a = page_pool(5, 400, false);
    a.allocate(page("p0"), at(0), wide_id(0)).unwrap();
    a.allocate(page("p1"), at(0), wide_id(1)).unwrap();
    a.tick(at(15));
    assert_eq!(stats(&a), (3, 0, 2), "both expired, cooling");
    // Expired is not enough: cooling numbers are still unusable, so they still count.
    assert!(a.allocate(page("p2"), at(16), wide_id(2)).is_err());
    a.tick(at(25));
    assert_eq!(a.pool_stats(PoolId(0)).page_numbers, 0);
    a.allocate(page("p2"), at(25), wide_id(2)).unwrap();
    a.check_invariants().unwrap();
}

#[test]
fn a_page_lease_never_outlives_page_max_ttl_however_renewed() {
    let mut a = page_pool(2, 500, false);
    a.allocate(page("p"), at(0), wide_id(0)).unwrap();
    a.allocate(req("site", None), at(0), wide_id(1)).unwrap();
    for m in [10, 20, 25] {
        a.renew(&wide_id(0), None, at(m)).unwrap();
        a.renew(&wide_id(1), None, at(m)).unwrap();
    }
    assert_eq!(a.lease(&wide_id(0)).unwrap().expires_at, at(30));
    assert_eq!(a.lease(&wide_id(1)).unwrap().expires_at, at(40));
    // Asking again from the same page session extends nothing past the cap either.
    let again = a.allocate(page("p"), at(29), wide_id(2)).unwrap();
    assert_eq!(
        (again.lease.id, again.lease.expires_at),
        (wide_id(0), at(30))
    );
    a.tick(at(30));
    assert_eq!(
        a.renew(&wide_id(0), None, at(30)).unwrap_err(),
        CoreError::LeaseEnded(LeaseState::Expired)
    );
    assert!(a.renew(&wide_id(1), None, at(30)).is_ok());
}

#[test]
fn restore_counts_what_pages_hold_again() {
    let mut a = page_pool(1000, 2, true);
    let (mut leases, mut wheel) = Default::default();
    for i in 0..4 {
        a.allocate(page(&format!("p{i}")), at(0), wide_id(i))
            .unwrap();
    }
    a.allocate(req("site", None), at(0), wide_id(10)).unwrap();
    a.release(&wide_id(0), at(1)).unwrap();
    a.release(&wide_id(3), at(1)).unwrap();
    replay(&mut a, &mut leases, &mut wheel);

    let restore = |leases: &std::collections::BTreeMap<LeaseId, Lease>,
                   wheel: &std::collections::BTreeSet<(u64, Due)>| {
        let snapshot = Snapshot {
            leases: leases.values().cloned().collect(),
            wheel: wheel.iter().copied().collect(),
            ..Snapshot::default()
        };
        Harness::from(
            Allocator::restore(
                Directory::new(vec![a.pool_spec(PoolId(0)).clone()]).unwrap(),
                snapshot,
            )
            .unwrap(),
        )
    };
    let mut b = restore(&leases, &wheel);
    b.check_invariants().unwrap();
    let s = b.pool_stats(PoolId(0));
    assert_eq!(s, a.pool_stats(PoolId(0)));
    assert_eq!((s.page_numbers, s.page_codes), (2, 2), "cooling ones count");
    // Still at its share of numbers after the restart: the next page gets a code.
    let next = b.allocate(page("p9"), at(2), wide_id(9)).unwrap();
    assert!(next.lease.code.is_some());
    // Once cooled, the share is free again, and a restart knows it too.
    b.tick(at(11));
    replay(&mut b, &mut leases, &mut wheel);
    let c = restore(&leases, &wheel);
    c.check_invariants().unwrap();
    let s = c.pool_stats(PoolId(0));
    assert_eq!((s.page_numbers, s.page_codes), (1, 2));
}

#[test]
fn a_page_refused_a_code_is_told_when_the_first_code_frees() {
    let mut a = page_pool(1000, 2, true);
    for i in 0..22 {
        a.allocate(page(&format!("p{i}")), at(0), wide_id(i))
            .unwrap();
    }
    // Codes live 3 minutes and cool 10: the first frees at 13, before any number (25).
    let refused = |a: &mut Harness, m| a.allocate(page("late"), at(m), wide_id(99));
    assert_eq!(
        refused(&mut a, 1).unwrap_err(),
        CoreError::Exhausted {
            retry_after_secs: 12 * 60
        }
    );
    // Renewing codes moves their end; releasing one ends it now.
    for i in 2..22 {
        a.renew(&wide_id(i), None, at(2)).unwrap();
    }
    assert_eq!(
        refused(&mut a, 2).unwrap_err(),
        CoreError::Exhausted {
            retry_after_secs: 13 * 60
        }
    );
    a.release(&wide_id(7), at(3)).unwrap();
    assert_eq!(
        refused(&mut a, 3).unwrap_err(),
        CoreError::Exhausted {
            retry_after_secs: 10 * 60
        }
    );
    a.check_invariants().unwrap();
    a.tick(at(13));
    assert!(refused(&mut a, 13).unwrap().lease.code.is_some());
    a.check_invariants().unwrap();
}

// ---- the compact core: slots of purged leases ----------------------------------------------

#[test]
fn a_lease_purged_before_its_old_deadline_fires_still_has_that_entry_deleted_by_its_id() {
    // Records are purged as soon as the number frees, long before a 2-hour lease's deadline.
    let mut spec = allocator(2).pool_spec(PoolId(0)).clone();
    spec.settings.retention = spec.settings.quarantine;
    let mut a = Harness::from(Allocator::new(vec![spec]).unwrap());
    let (mut leases, mut wheel) = Default::default();
    let long = AllocateRequest {
        ttl: Some(Duration::from_secs(2 * 3600)),
        ..req("s1", None)
    };
    a.allocate(long, at(0), id(1)).unwrap();
    a.release(&id(1), at(1)).unwrap();
    a.tick(at(11));
    replay(&mut a, &mut leases, &mut wheel);
    assert!(
        a.lease(&id(1)).is_none(),
        "purged with its number's quarantine"
    );
    assert!(
        wheel.contains(&(at(120).tick_ceil(), Due::Lease(id(1)))),
        "its first deadline is still filed"
    );
    a.check_invariants().unwrap();

    // Other leases come and go meanwhile; none takes the purged lease's place in the wheel.
    for n in 2..6u8 {
        a.allocate(req(&format!("s{n}"), None), at(12), id(n)).ok();
        a.release(&id(n), at(13)).ok();
        a.check_invariants().unwrap();
    }
    a.tick(at(119));
    a.allocate(req("s9", None), at(119), id(9)).unwrap();
    a.check_invariants().unwrap();
    a.tick(at(120));
    replay(&mut a, &mut leases, &mut wheel);
    assert!(
        !wheel.iter().any(|(_, due)| *due == Due::Lease(id(1))),
        "the old deadline's entry was deleted under the purged lease's id"
    );
    assert_eq!(a.lease(&id(9)).unwrap().state(at(120)), LeaseState::Active);
    assert_eq!(a.lease_count(), 1);
    a.check_invariants().unwrap();
}

/// The spec of pool `name` with `numbers` (the `allocator` helper's settings).
fn spec_of(name: &str, numbers: Vec<PhoneNumber>) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        numbers,
        settings: settings(),
        on_exhausted: OnExhausted::Reject,
        return_window: Duration::from_secs(30 * 86_400),
        fallback: None,
        mode: PoolMode::Dynamic,
        access_ttl: Duration::ZERO,
        limits: Default::default(),
        tariff: None,
    }
}

/// `a` reloaded to `specs`, as the service does.
fn reload(a: &mut Harness, specs: Vec<PoolSpec>) -> Result<(), CoreError> {
    let next = a.a.directory().evolve(specs)?;
    a.a.reconfigure(next)
}

#[test]
fn a_reload_adds_numbers_and_pools_that_are_leased_at_once() {
    let mut a = allocator(1);
    let first = a.allocate(req("s1", None), at(0), id(1)).unwrap().lease;
    assert!(matches!(
        a.allocate(req("s2", None), at(0), id(2)),
        Err(CoreError::Exhausted { .. })
    ));
    reload(
        &mut a,
        vec![
            spec_of("fr", numbers(3)),
            spec_of(
                "be",
                vec![PhoneNumber::from_digits(32_900_000_000).unwrap()],
            ),
        ],
    )
    .unwrap();
    a.check_invariants().unwrap();
    assert_eq!(stats(&a), (2, 1, 0), "two numbers added, the lease kept");
    assert_eq!(a.lease(&id(1)).unwrap(), first);
    let second = a.allocate(req("s2", None), at(1), id(2)).unwrap().lease;
    assert_eq!(
        second.number,
        numbers(3)[1],
        "added numbers are first in line"
    );
    let be = a.directory().id("be").unwrap();
    let mut r = req("s3", None);
    r.pool = be;
    let third = a.allocate(r, at(1), id(3)).unwrap().lease;
    assert_eq!(third.number.digits(), 32_900_000_000);
    a.check_invariants().unwrap();
    // The new pool's traffic is counted too.
    let c = a.capacity(be, 0.01, at(2)).unwrap();
    assert_eq!(c.last_hour.counts.requests(), 1);
}

#[test]
fn a_removed_number_finishes_its_lease_and_quarantine_and_is_never_leased_again() {
    let mut a = allocator(2);
    let held = a.allocate(req("s1", None), at(0), id(1)).unwrap().lease;
    assert_eq!(held.number, numbers(2)[0]);
    // Both numbers removed: the free one at once, the leased one once it is over.
    reload(&mut a, vec![spec_of("fr", vec![numbers(3)[2]])]).unwrap();
    a.check_invariants().unwrap();
    assert_eq!(
        stats(&a),
        (1, 1, 0),
        "the free removed number left the pool"
    );
    assert_eq!(a.pool_stats(PoolId(0)).size, 2);
    // Its lease still takes its calls, and renews.
    let call = a.attribute(held.number, None, None, at(5));
    assert_eq!(call.lease, Some(held.id));
    a.renew(&held.id, None, at(5)).unwrap();
    // Nobody else gets it: the one configured number goes, then the pool is exhausted.
    let other = a.allocate(req("s2", None), at(6), id(2)).unwrap().lease;
    assert_eq!(other.number, numbers(3)[2]);
    assert!(matches!(
        a.allocate(req("s3", None), at(6), id(3)),
        Err(CoreError::Exhausted { .. })
    ));
    // Expired at 20, grace until 25 (late calls still reach it), quarantine until 30.
    a.tick(at(20));
    assert_eq!(
        a.attribute(held.number, None, None, at(22)).lease,
        Some(held.id),
        "grace still routes late calls to the last holder"
    );
    a.tick(at(30));
    a.check_invariants().unwrap();
    // The other lease expired at 21 and cools until 31; the removed number is gone.
    assert_eq!(stats(&a), (0, 0, 1), "retired once its quarantine is over");
    assert_eq!(a.pool_stats(PoolId(0)).size, 1);
    a.tick(at(60));
    let again = a.allocate(req("s4", None), at(60), id(4)).unwrap().lease;
    assert_eq!(
        again.number,
        numbers(3)[2],
        "only the configured number is leased"
    );
    assert!(matches!(
        a.allocate(req("s5", None), at(60), id(5)),
        Err(CoreError::Exhausted { .. })
    ));
    // Listed again, it is leased again.
    reload(&mut a, vec![spec_of("fr", numbers(3))]).unwrap();
    a.check_invariants().unwrap();
    assert_eq!(stats(&a), (2, 1, 0));
}

#[test]
fn a_pool_is_removed_only_once_nothing_holds_its_numbers() {
    let mut a = allocator(2);
    let held = a.allocate(req("s1", None), at(0), id(1)).unwrap().lease;
    let be = spec_of(
        "be",
        vec![PhoneNumber::from_digits(32_900_000_000).unwrap()],
    );
    // Its lease could not be served after a restart (the file no longer describes the pool).
    let err = reload(&mut a, vec![be.clone()]).unwrap_err();
    assert!(err.to_string().contains("still holds 1"), "{err}");
    assert_eq!(a.directory().id("fr"), Some(PoolId(0)));
    assert_eq!(
        a.attribute(held.number, None, None, at(1)).lease,
        Some(held.id)
    );
    // Expired at 15, cooling until 25: then it may go.
    a.tick(at(20));
    assert!(reload(&mut a, vec![be.clone()]).is_err(), "still cooling");
    a.tick(at(25));
    reload(&mut a, vec![be.clone()]).unwrap();
    a.check_invariants().unwrap();
    assert_eq!(a.directory().id("fr"), None);
    assert!(a.directory().removed(PoolId(0)));
    assert_eq!(a.directory().serving().collect::<Vec<_>>(), vec![PoolId(1)]);
    assert_eq!(
        stats(&a),
        (0, 0, 0),
        "every number of the removed pool retired"
    );
    // Its name cannot come back before a restart (its records still name it).
    let err = reload(&mut a, vec![be, spec_of("fr", numbers(2))]).unwrap_err();
    assert!(err.to_string().contains("after a restart"), "{err}");
}

#[test]
fn a_reload_that_the_state_forbids_changes_nothing() {
    let mut a = allocator(2);
    a.allocate(req("s1", None), at(0), id(1)).unwrap();
    let before = std::sync::Arc::clone(a.directory());
    // A number moving to another pool.
    let moved = reload(
        &mut a,
        vec![
            spec_of("fr", vec![numbers(2)[1]]),
            spec_of("be", vec![numbers(2)[0]]),
        ],
    )
    .unwrap_err();
    assert!(
        moved.to_string().contains("move a number between pools"),
        "{moved}"
    );
    // A pool switching to ticketing.
    let mut ticketing = spec_of("fr", numbers(2));
    ticketing.mode = PoolMode::Ticketing(Formula {
        calls_required: 1,
        min_call_secs: 0,
        window: Duration::from_secs(3600),
        code_ttl: Duration::from_secs(600),
        price: None,
    });
    let switched = reload(&mut a, vec![ticketing]).unwrap_err();
    assert!(
        switched.to_string().contains("dynamic and ticketing"),
        "{switched}"
    );
    assert!(std::sync::Arc::ptr_eq(&before, a.directory()));
    assert_eq!(stats(&a), (1, 1, 0));
    a.check_invariants().unwrap();
}

// ---- checkout: codes asked for while numbers are free -------------------------------------

fn checkout(session: &str) -> AllocateRequest {
    AllocateRequest {
        with_code: true,
        ..req(session, None)
    }
}

#[test]
fn with_code_gives_the_shared_number_and_a_code_while_numbers_are_free() {
    let mut a = page_pool(10, 1000, true);
    let l = a.allocate(checkout("buyer"), at(0), id(1)).unwrap().lease;
    assert_eq!(l.number, PhoneNumber::from_digits(33_899_199_999).unwrap());
    assert!(l.code.is_some());
    assert_eq!(l.expires_at, at(3), "a code lives code_ttl");
    assert_eq!(stats(&a), (10, 0, 0), "no number was taken");
    // The same visitor asking again gets the same code back; without with_code, a number.
    let again = a.allocate(checkout("buyer"), at(1), id(2)).unwrap();
    assert!(!again.fresh && again.lease.id == l.id);
    let plain = a.allocate(req("other", None), at(1), id(3)).unwrap().lease;
    assert!(plain.code.is_none());
    // A visitor holding a number who now asks for a code gets a new lease with one.
    let switched = a.allocate(checkout("other"), at(2), id(4)).unwrap();
    assert!(switched.fresh && switched.lease.code.is_some());
    a.check_invariants().unwrap();

    let mut no_shared = page_pool(10, 1000, false);
    assert!(matches!(
        no_shared.allocate(checkout("buyer"), at(0), id(1)),
        Err(CoreError::NoSharedNumber)
    ));
}

#[test]
fn pages_asking_for_codes_stop_at_their_share_of_codes() {
    // 1 thousandth: of 10,000 codes pages may hold 10, even with every number free.
    let mut a = page_pool(10, 1, true);
    for i in 0..10 {
        let req = AllocateRequest {
            with_code: true,
            ..page(&format!("bot{i}"))
        };
        assert!(a
            .allocate(req, at(0), wide_id(i))
            .unwrap()
            .lease
            .code
            .is_some());
    }
    let req = AllocateRequest {
        with_code: true,
        ..page("bot10")
    };
    assert!(matches!(
        a.allocate(req, at(0), wide_id(10)),
        Err(CoreError::Exhausted { .. })
    ));
    // The merchant's server still gets codes.
    let server = a
        .allocate(checkout("merchant"), at(0), wide_id(11))
        .unwrap();
    assert!(server.lease.code.is_some());
    let s = a.pool_stats(PoolId(0));
    assert_eq!((s.page_numbers, s.page_codes, s.codes), (0, 10, 11));
    a.check_invariants().unwrap();
}

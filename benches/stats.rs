//! Statistics at a month of a busy site: one million calls (and 200,000 leases) tallied into
//! the store's index through its own write path (group-commit rounds of 10,000 operations),
//! over 30 days, one pool and 2,000 listings; then `GET /v1/stats`'s service call, by day,
//! listing and pool, for the whole month. The index holds one key per (day, pool, currency,
//! listing) that saw anything, so what a query reads depends on the cells of its range, not on
//! the number of calls: the answer must stay under 200 ms.
//! `cargo bench --bench stats`. Under `cargo test --benches` it runs once, unoptimised, on
//! 20,000 calls: it checks every call is counted, not the time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use leaseline::clock::ManualClock;
use leaseline::config::Config;
use leaseline::core::{
    day_of, Counts, Directory, Effect, ListingId, PoolId, Tally, TenantId, Timestamp,
};
use leaseline::service::StatsBy;
use leaseline::store::Store;

const DAYS: u64 = 30;
const LISTINGS: u64 = 2_000;
/// Sites sharing the pool; each listing is one site's.
const TENANTS: u64 = 20;
const ROUND: usize = 10_000;
/// 2026-01-01T00:00:00Z.
const START_MS: u64 = 1_767_225_600_000;

fn config(dir: &std::path::Path) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[[pool]]
name = "fr"
numbers = ["+33899100000..=+33899100999"]
tariff = {{ per_minute = "3.13", currency = "EUR", increment = "20s" }}
"#,
        dir.join("data").display()
    );
    Config::parse(&text, dir).expect("a valid config")
}

/// Writes the month's tallies through the store, as the service's committer would.
fn fill(config: &Config, calls: u64) {
    let specs = config.pools.iter().map(|p| p.spec.clone()).collect();
    let dir = Directory::new(specs).unwrap();
    std::fs::create_dir_all(&config.server.data_dir).unwrap();
    let store = Store::open(&config.server.data_dir, 64 << 20, Arc::clone(&dir)).unwrap();
    let tariff = dir.spec(PoolId(0)).tariff.unwrap();
    let listings: Vec<ListingId> = (0..LISTINGS)
        .map(|i| ListingId::parse(&format!("listing-{i}")).unwrap())
        .collect();
    let tenants: Vec<TenantId> = (0..TENANTS)
        .map(|i| TenantId::parse(&format!("site-{i}")).unwrap())
        .collect();
    let mut round: Vec<Vec<Effect>> = Vec::with_capacity(ROUND);
    for i in 0..calls {
        let at = Timestamp::from_millis(START_MS + (i * DAYS * 86_400_000) / calls);
        let secs = (i % 300) as u32;
        let charge = tariff.charge(secs);
        let mut counts = Counts {
            calls: 1,
            attributed: u64::from(i % 10 != 0),
            answered: u64::from(secs >= 1),
            billed_secs: u64::from(charge.billed_secs),
            amount: charge.amount.cents(),
            ..Counts::default()
        };
        if i % 5 == 0 {
            counts.leases = 1;
            counts.paid_leases = u64::from(secs >= 1);
        }
        round.push(vec![Effect::Tally(Tally {
            day: day_of(at),
            pool: PoolId(0),
            currency: Some(charge.currency),
            // A call that reached no lease has no tenant.
            tenant: (counts.attributed == 1)
                .then(|| tenants[(i * 7919 % LISTINGS % TENANTS) as usize].clone()),
            listing: Some(listings[(i * 7919 % LISTINGS) as usize].clone()),
            counts,
        })]);
        if round.len() == ROUND {
            store.apply_groups(&round).unwrap();
            round.clear();
        }
    }
    store.apply_groups(&round).unwrap();
    store.flush().unwrap();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let benching = std::env::args().any(|a| a == "--bench");
    let calls = if benching { 1_000_000 } else { 20_000 };
    let t = Instant::now();
    fill(&config, calls);
    eprintln!("{calls} calls tallied in {:?}", t.elapsed());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(
        START_MS + DAYS * 86_400_000,
    )));
    let state = rt
        .block_on(leaseline::startup::build_state(&config, clock))
        .unwrap();
    let (from, to) = (
        day_of(Timestamp::from_millis(START_MS)),
        day_of(Timestamp::from_millis(START_MS)) + DAYS as u32 - 1,
    );
    for by in [StatsBy::Day, StatsBy::Listing, StatsBy::Pool] {
        let t = Instant::now();
        let rows = state.service.stats(from, to, None, None, by).unwrap();
        let took = t.elapsed();
        let counted: u64 = rows.iter().map(|r| r.counts.calls).sum();
        assert_eq!(counted, calls, "every call is counted");
        eprintln!("stats by {by:?}: {} rows in {took:?}", rows.len());
        assert!(
            !benching || took < Duration::from_millis(200),
            "a month's statistics by {by:?} took {took:?}, more than 200 ms"
        );
    }
    let mut g = c.benchmark_group("stats_month_1M_calls");
    g.sample_size(10);
    for (name, by) in [
        ("by_day", StatsBy::Day),
        ("by_listing", StatsBy::Listing),
        ("by_pool", StatsBy::Pool),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(state.service.stats(from, to, None, None, by).unwrap()))
        });
    }
    let site = TenantId::parse("site-7").unwrap();
    g.bench_function("one_site_by_day", |b| {
        b.iter(|| {
            black_box(
                state
                    .service
                    .stats(from, to, None, Some(&site), StatsBy::Day)
                    .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

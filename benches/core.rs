//! Micro-benchmarks of the pure core on a manual clock: allocate, renew, release, tick.
//! `cargo bench --bench core`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use leaseline::core::{
    AllocateRequest, Allocator, LeaseId, LeaseSettings, OnExhausted, PhoneNumber, PoolId, PoolSpec,
    SessionId, TenantId, Timestamp,
};

fn allocator(size: u64) -> Allocator {
    Allocator::new(vec![PoolSpec {
        name: "p".into(),
        numbers: (0..size)
            .map(|i| PhoneNumber::from_digits(33_800_000_000 + i).unwrap())
            .collect(),
        settings: LeaseSettings {
            ttl: Duration::from_secs(900),
            max_ttl: Duration::from_secs(7200),
            grace: Duration::from_secs(300),
            quarantine: Duration::from_secs(600),
            retention: Duration::from_secs(600),
        },
        on_exhausted: OnExhausted::Reject,
        return_window: Duration::from_secs(30 * 86_400),
        fallback: None,
        mode: leaseline::core::PoolMode::Dynamic,
        access_ttl: Duration::ZERO,
        limits: Default::default(),
    }])
    .unwrap()
}

fn id(i: u64) -> LeaseId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&i.to_le_bytes());
    LeaseId::from_bytes(b)
}

fn bench(c: &mut Criterion) {
    let tenant = TenantId::parse("t").unwrap();
    let sessions: Vec<SessionId> = (0..4096)
        .map(|i| SessionId::parse(&format!("session-{i}")).unwrap())
        .collect();
    let mut g = c.benchmark_group("core");
    for size in [1_000u64, 100_000] {
        // One visitor's whole life: allocate, renew, release, and the tick that frees it later.
        g.bench_with_input(
            BenchmarkId::new("allocate_renew_release_tick", size),
            &size,
            |b, &size| {
                let mut a = allocator(size);
                let mut i = 0u64;
                let mut now = Timestamp::from_millis(1_800_000_000_000);
                b.iter(|| {
                    i += 1;
                    now = now.saturating_add(Duration::from_secs(1));
                    let req = AllocateRequest {
                        tenant: tenant.clone(),
                        pool: PoolId(0),
                        session: sessions[(i % 4096) as usize].clone(),
                        listing: None,
                        target: None,
                        caller: None,
                        ttl: None,
                        calls_required: 1,
                        min_call_secs: 0,
                    };
                    let l = a.allocate(req, now, id(i)).unwrap().lease.id;
                    a.renew(&l, None, now).unwrap();
                    a.release(&l, now).unwrap();
                    a.tick(now);
                    black_box(a.take_effects());
                    a.take_notices();
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

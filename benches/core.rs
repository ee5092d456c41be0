//! Micro-benchmarks of the pure core on a manual clock, at pool sizes 1k, 100k and 1M:
//! allocate, renew, release, tick (expiry), attribution lookup, and a visitor's whole cycle.
//! First, what a live lease costs in memory (a counting allocator), how long the core alone
//! takes to rebuild from a snapshot of every lease, and how long a restart of the core takes
//! from the store's snapshot file of them (the file read and decoded, then the rebuild).
//! `cargo bench --bench core`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use leaseline::core::{
    AllocateRequest, Allocator, Effect, LeaseId, LeaseSettings, ListingId, OnExhausted, Outbox,
    PhoneNumber, PoolId, PoolMode, PoolSpec, SessionId, Snapshot, Target, TenantId, Timestamp,
};
use leaseline::store::Store;

/// The system allocator, counting the bytes held: what a lease costs is the difference.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Bytes per number of an empty pool, bytes per live lease (a site's allocation: its own
/// session, a listing and a target), the core's rebuild time from a snapshot of them all, and
/// the restart of the core from the store's snapshot file of them: the file read and decoded
/// (`Store::load`, no log after it) and the rebuild.
fn memory_and_restore(sizes: &[u64]) {
    println!("| pool size | bytes per number, empty | bytes per live lease | core restore from snapshot ms | snapshot file MiB | core restart from the snapshot file ms: read + restore |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let tenant = TenantId::parse("site-a").unwrap();
    let target = Target::parse("+33612345678").unwrap();
    let t0 = Timestamp::from_millis(START);
    let mut breakdown = Vec::new();
    for &n in sizes {
        let base = held();
        let mut a = allocator(n);
        let empty = held() - base;
        let empty_footprint = a.footprint();
        let mut out = Outbox::new();
        let mut wheel = Vec::with_capacity(n as usize);
        let before = held();
        for i in 0..n {
            let req = AllocateRequest {
                tenant: tenant.clone(),
                pool: PoolId(0),
                session: SessionId::parse(&format!("cookie-{i:016x}")).unwrap(),
                listing: Some(ListingId::parse(&format!("car-{}", i % 50_000)).unwrap()),
                target: Some(target.clone()),
                caller: None,
                ttl: None,
                calls_required: 1,
                min_call_secs: 0,
                amount: None,
                with_code: false,
                from_page: false,
            };
            a.allocate(req, t0, id(i), &mut out).unwrap();
            for e in out.effects.drain(..) {
                if let Effect::PutWheel(t, due) = e {
                    wheel.push((t, due));
                }
            }
            out.notices.clear();
        }
        let per_lease = (held() - before) / n as usize;
        breakdown = a
            .footprint()
            .into_iter()
            .zip(empty_footprint)
            .map(|((what, full), (_, empty))| (what, full.saturating_sub(empty) as f64 / n as f64))
            .collect();
        let snapshot = Snapshot {
            leases: (0..n).map(|i| a.lease(&id(i)).unwrap()).collect(),
            wheel,
            ..Snapshot::default()
        };
        let dir = std::sync::Arc::clone(a.directory());
        drop(a);
        let files = tempfile::tempdir().unwrap();
        let snapshot_bytes = write_snapshot(files.path(), &dir, &snapshot);
        let t = Instant::now();
        let b = Allocator::restore(std::sync::Arc::clone(&dir), snapshot).unwrap();
        let restore = t.elapsed();
        black_box(&b);
        drop(b);
        // From the file: what a restart of the core costs (sled's own opening aside).
        let store = reopen(files.path(), &dir);
        let t = Instant::now();
        let recovered = store.load().unwrap();
        let read = t.elapsed();
        assert_eq!(recovered.replayed, 0, "the snapshot covers everything");
        let b = Allocator::restore(dir, recovered.snapshot).unwrap();
        let restart = t.elapsed();
        assert_eq!(b.lease_count(), n as usize);
        black_box(&b);
        println!(
            "| {n} | {} | {per_lease} | {:.1} | {:.1} | {:.1}: {:.1} + {:.1} |",
            empty / n as usize,
            restore.as_secs_f64() * 1000.0,
            snapshot_bytes as f64 / 1048576.0,
            restart.as_secs_f64() * 1000.0,
            read.as_secs_f64() * 1000.0,
            (restart - read).as_secs_f64() * 1000.0
        );
    }
    // Where a live lease's bytes go, at the largest size (the core's own account of its
    // structures' capacities, so the total differs a little from the allocator's).
    println!();
    println!(
        "| structure, at {} leases | bytes per live lease |",
        sizes.last().unwrap()
    );
    println!("|---|---:|");
    for (what, bytes) in &breakdown {
        println!("| {what} | {bytes:.1} |");
    }
    let total: f64 = breakdown.iter().map(|(_, b)| b).sum();
    println!("| total | {total:.1} |");
    println!();
}

/// Writes `snapshot`'s leases and wheel entries through a store in `path` as the service
/// would, then compacts them into a snapshot file; returns its size.
fn write_snapshot(
    path: &std::path::Path,
    dir: &std::sync::Arc<leaseline::core::Directory>,
    snapshot: &Snapshot,
) -> u64 {
    let store = Store::open(path, 8 << 20, std::sync::Arc::clone(dir)).unwrap();
    let leases = snapshot.leases.iter().map(|l| Effect::PutLease(l.clone()));
    let wheel = snapshot
        .wheel
        .iter()
        .map(|&(t, due)| Effect::PutWheel(t, due));
    let effects: Vec<Effect> = leases.chain(wheel).collect();
    for round in effects.chunks(20_000) {
        let groups: Vec<Vec<Effect>> = round.chunks(2).map(<[Effect]>::to_vec).collect();
        store.apply_groups(&groups).unwrap();
        store.flush().unwrap();
    }
    store.compact().unwrap().expect("a snapshot");
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_str().unwrap().ends_with(".snap"))
        .map(|e| e.metadata().unwrap().len())
        .max()
        .unwrap()
}

/// Opens the store in `path` again; sled may hold its file lock a moment after the last handle.
fn reopen(path: &std::path::Path, dir: &std::sync::Arc<leaseline::core::Directory>) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(path, 8 << 20, std::sync::Arc::clone(dir)) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

const FIRST: u64 = 33_800_000_000;
const START: u64 = 1_800_000_000_000;

fn allocator(size: u64) -> Allocator {
    Allocator::new(vec![PoolSpec {
        name: "p".into(),
        numbers: (0..size)
            .map(|i| PhoneNumber::from_digits(FIRST + i).unwrap())
            .collect(),
        settings: LeaseSettings {
            ttl: Duration::from_secs(900),
            max_ttl: Duration::from_secs(7200),
            page_max_ttl: Duration::from_secs(7200),
            grace: Duration::from_secs(300),
            quarantine: Duration::from_secs(600),
            retention: Duration::from_secs(600),
        },
        on_exhausted: OnExhausted::Reject,
        return_window: Duration::from_secs(30 * 86_400),
        fallback: None,
        mode: PoolMode::Dynamic,
        access_ttl: Duration::ZERO,
        limits: Default::default(),
        tariff: None,
    }])
    .unwrap()
}

fn id(i: u64) -> LeaseId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&i.to_le_bytes());
    LeaseId::from_bytes(b)
}

struct Fixture {
    tenant: TenantId,
    sessions: Vec<SessionId>,
}

impl Fixture {
    fn req(&self, i: u64) -> AllocateRequest {
        AllocateRequest {
            tenant: self.tenant.clone(),
            pool: PoolId(0),
            session: self.sessions[(i % self.sessions.len() as u64) as usize].clone(),
            listing: None,
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

    /// A pool of `size` numbers with half of them leased.
    fn half_leased(&self, size: u64) -> Allocator {
        let mut a = allocator(size);
        let mut out = Outbox::new();
        for i in 0..size / 2 {
            a.allocate(self.req(i), Timestamp::from_millis(START), id(i), &mut out)
                .unwrap();
        }
        out.effects.clear();
        out.notices.clear();
        a
    }
}

fn bench(c: &mut Criterion) {
    // Under `cargo test --benches` each bench runs once, unoptimised: the small pool is enough.
    let sizes: &[u64] = if std::env::args().any(|a| a == "--bench") {
        &[1_000, 100_000, 1_000_000]
    } else {
        &[1_000]
    };
    memory_and_restore(sizes);
    // One session per visitor (the same session and listing would get its lease back).
    let f = Fixture {
        tenant: TenantId::parse("t").unwrap(),
        sessions: (0..*sizes.last().unwrap() * 2)
            .map(|i| SessionId::parse(&format!("session-{i}")).unwrap())
            .collect(),
    };
    let t0 = Timestamp::from_millis(START);
    let mut g = c.benchmark_group("core");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for &size in sizes {
        let half = size / 2;
        let base = f.half_leased(size);

        g.bench_with_input(BenchmarkId::new("allocate", size), &size, |b, _| {
            // On a fresh pool each round (built outside the timing).
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let mut a = allocator(size);
                    let mut out = Outbox::new();
                    let n = (iters - done).min(size);
                    let t = Instant::now();
                    for i in done..done + n {
                        black_box(a.allocate(f.req(i), t0, id(i), &mut out).unwrap());
                        out.effects.clear();
                    }
                    total += t.elapsed();
                    done += n;
                }
                total
            })
        });

        g.bench_with_input(BenchmarkId::new("renew", size), &size, |b, _| {
            let mut a = f.half_leased(size);
            let mut out = Outbox::new();
            let mut i = 0u64;
            b.iter(|| {
                let now = t0.saturating_add(Duration::from_millis(i % 600_000));
                black_box(a.renew(&id(i % half), None, now, &mut out).unwrap());
                out.effects.clear();
                i += 1;
            })
        });

        g.bench_with_input(BenchmarkId::new("release", size), &size, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = (iters - done).min(size.min(50_000));
                    let mut a = allocator(size);
                    let mut out = Outbox::new();
                    for i in 0..n {
                        a.allocate(f.req(i), t0, id(i), &mut out).unwrap();
                    }
                    out.effects.clear();
                    let t = Instant::now();
                    for i in 0..n {
                        black_box(a.release(&id(i), t0, &mut out).unwrap());
                    }
                    out.effects.clear();
                    total += t.elapsed();
                    done += n;
                }
                total
            })
        });

        g.bench_with_input(BenchmarkId::new("tick_per_expiry", size), &size, |b, _| {
            // One tick expiring n leases, timed per expired lease.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = (iters - done).min(size.min(50_000));
                    let mut a = allocator(size);
                    let mut out = Outbox::new();
                    for i in 0..n {
                        a.allocate(f.req(i), t0, id(i), &mut out).unwrap();
                    }
                    out.effects.clear();
                    a.tick(t0, &mut out);
                    let t = Instant::now();
                    a.tick(t0.saturating_add(Duration::from_secs(901)), &mut out);
                    black_box(std::mem::take(&mut out.effects));
                    total += t.elapsed();
                    done += n;
                }
                total
            })
        });

        g.bench_with_input(BenchmarkId::new("attribute", size), &size, |b, _| {
            let mut i = 0u64;
            b.iter(|| {
                let n = PhoneNumber::from_digits(FIRST + (i * 7919) % size).unwrap();
                i += 1;
                black_box(base.attribute(n, None, None, t0.saturating_add(Duration::from_secs(60))))
            })
        });

        // One visitor's whole life, in steady state: allocate, renew, a lookup, release, and
        // the tick that frees the number (a visitor every 2 s; numbers rest 10 min).
        g.bench_with_input(
            BenchmarkId::new("allocate_renew_release_tick", size),
            &size,
            |b, _| {
                let mut a = allocator(size);
                let mut out = Outbox::new();
                let mut i = size;
                let mut now = t0;
                b.iter(|| {
                    i += 1;
                    // Two seconds a visitor: numbers come back from quarantine as fast as they go.
                    now = now.saturating_add(Duration::from_secs(2));
                    let lease = a.allocate(f.req(i), now, id(i), &mut out).unwrap().lease;
                    a.renew(&lease.id, None, now, &mut out).unwrap();
                    black_box(a.attribute(lease.number, None, None, now));
                    a.release(&lease.id, now, &mut out).unwrap();
                    a.tick(now, &mut out);
                    black_box(std::mem::take(&mut out.effects));
                    out.notices.clear();
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

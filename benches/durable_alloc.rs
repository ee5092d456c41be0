//! Durable allocations per second through the real binary: group commit against a flush per
//! request, at 1 and 50 closed-loop clients on 127.0.0.1. Bounded: a few seconds per cell.
//!
//! `cargo bench --bench durable_alloc` (set `LEASELINE_BENCH_SECS` to change the duration).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SITE: &str = "bench-site-key";

fn sha(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

struct Cell {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn run(commit: &str, clients: usize, secs: u64) -> Cell {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pool.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
data_dir = "{}"
commit = "{commit}"
log_format = "json"
[lease]
ttl = "15m"
[[pool]]
name = "p"
numbers = ["+33800000000..=+33800999999"]
[[key]]
name = "site"
role = "site"
sha256 = "{}"
"#,
            dir.path().join("data").display(),
            sha(SITE)
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_leaseline"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("LEASELINE_LOG", "warn,leaseline::startup=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(&l).ok()?["fields"]["addr"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("server address");
    let url = format!("http://{addr}/v1/leases");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (url, stop) = (url.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let t = Instant::now();
                    let r = agent
                        .post(&url)
                        .set("authorization", &format!("Bearer {SITE}"))
                        .send_json(
                            serde_json::json!({"pool": "p", "session": format!("c{c}-{i}")}),
                        );
                    assert_eq!(r.map(|r| r.status()).unwrap_or(0), 201);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    lat.sort();
    let q =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    Cell {
        per_sec: lat.len() as f64 / elapsed,
        p50_ms: q(0.50),
        p99_ms: q(0.99),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run briefly then.
    let benching = std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("LEASELINE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 5 } else { 1 });
    println!("durable allocations through the real binary, {secs} s per cell, 127.0.0.1");
    println!("| clients | commit | allocations/s | p50 ms | p99 ms |");
    println!("|---:|---|---:|---:|---:|");
    for clients in [1, 50] {
        let group = run("group", clients, secs);
        let single = run("per_request", clients, secs);
        for (name, c) in [("group", &group), ("per_request", &single)] {
            println!(
                "| {clients} | {name} | {:.0} | {:.2} | {:.2} |",
                c.per_sec, c.p50_ms, c.p99_ms
            );
        }
        println!(
            "| {clients} | ratio group / per_request | {:.2}x | | |",
            group.per_sec / single.per_sec
        );
    }
}

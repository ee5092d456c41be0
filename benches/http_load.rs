//! Load through the real binary on 127.0.0.1, closed-loop clients, a few seconds per cell:
//! durable allocations with group commit against a flush per request (1 and 50 clients), and
//! `POST /v1/calls` start latency at 50 clients.
//!
//! `cargo bench --bench http_load` (`LEASELINE_BENCH_SECS` sets the seconds per cell).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SITE: &str = "bench-site-key";
const TEL: &str = "bench-telephony-key";

fn sha(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(commit: &str) -> Server {
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
[[pool]]
name = "p"
numbers = ["+33800000000..=+33800999999"]
[[key]]
name = "site"
role = "site"
sha256 = "{}"
[[key]]
name = "tel"
role = "telephony"
sha256 = "{}"
"#,
            dir.path().join("data").display(),
            sha(SITE),
            sha(TEL)
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
            serde_json::from_str::<Value>(&l).ok()?["fields"]["addr"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("server address");
    Server {
        child,
        base: format!("http://{addr}"),
        _dir: dir,
    }
}

struct Cell {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

/// Runs `clients` closed loops of `request(client, i)` for `secs`; each must return 2xx.
fn drive(
    clients: usize,
    secs: u64,
    request: impl Fn(&ureq::Agent, usize, u64) -> u16 + Send + Sync + 'static,
) -> Cell {
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, request) = (Arc::clone(&stop), Arc::clone(&request));
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let t = Instant::now();
                    let status = request(&agent, c, i);
                    assert!((200..300).contains(&status), "status {status}");
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
    lat.sort();
    let q =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    Cell {
        per_sec: lat.len() as f64 / elapsed,
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
    }
}

fn post(agent: &ureq::Agent, url: &str, key: &str, body: Value) -> u16 {
    match agent
        .post(url)
        .set("authorization", &format!("Bearer {key}"))
        .send_json(body)
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(_) => 0,
    }
}

fn allocations(commit: &str, clients: usize, secs: u64) -> Cell {
    let server = start(commit);
    let url = format!("{}/v1/leases", server.base);
    drive(clients, secs, move |agent, c, i| {
        post(
            agent,
            &url,
            SITE,
            json!({"pool": "p", "session": format!("c{c}-{i}")}),
        )
    })
}

fn call_starts(clients: usize, secs: u64) -> Cell {
    let server = start("group");
    let agent = ureq::agent();
    let numbers: Vec<String> = (0..1000)
        .map(|i| {
            let r: Value = agent
                .post(&format!("{}/v1/leases", server.base))
                .set("authorization", &format!("Bearer {SITE}"))
                .send_json(json!({"pool": "p", "session": format!("s{i}"), "listing": "l", "target": "+33600000000"}))
                .unwrap()
                .into_json()
                .unwrap();
            r["number"].as_str().unwrap().to_owned()
        })
        .collect();
    let url = format!("{}/v1/calls", server.base);
    let numbers = Arc::new(numbers);
    drive(clients, secs, move |agent, c, i| {
        let n = &numbers[(c * 7919 + i as usize) % numbers.len()];
        post(
            agent,
            &url,
            TEL,
            json!({"call_id": format!("c{c}-{i}"), "event": "start", "called": n, "caller": "+33612345678"}),
        )
    })
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: run briefly then.
    let benching = std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("LEASELINE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 5 } else { 1 });
    println!("load through the real binary on 127.0.0.1, {secs} s per cell, closed-loop clients");
    println!("| workload | clients | requests/s | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, clients: usize, c: &Cell| {
        println!(
            "| {name} | {clients} | {:.0} | {:.2} | {:.2} | {:.2} |",
            c.per_sec, c.p50_ms, c.p99_ms, c.p999_ms
        )
    };
    for clients in [1, 50] {
        let group = allocations("group", clients, secs);
        let single = allocations("per_request", clients, secs);
        row("durable allocation, group commit", clients, &group);
        row("durable allocation, flush per request", clients, &single);
        println!(
            "| ratio group / per request | {clients} | {:.2}x | | | |",
            group.per_sec / single.per_sec
        );
    }
    row(
        "call start (attribution, durable)",
        50,
        &call_starts(50, secs),
    );
}

//! Leaseline under load, through the real release binary, against the Redis allocator users
//! would otherwise build (Debian's redis-server: a free set, a lease hash and an expiry sorted
//! set changed by Lua scripts), measured in the same run on the same machine, 127.0.0.1 only.
//!
//! `cargo bench --bench load` prints, for 1 and 50 closed-loop clients: durable allocations/s
//! and latency, attribution lookups/s and latency, each with the ratio Leaseline / peer, the
//! peer with `appendfsync always` (the same durability) and `everysec` (the usual setting);
//! then group commit against a flush per request; then restart time, memory and disk with
//! 1M live leases; then durable allocations on one node (sled) against a cluster leader on a
//! 3-member etcd and etcd's own puts. Bounded: `LEASELINE_BENCH_SECS` per cell (default 5), `LEASELINE_BENCH_FILL`
//! live leases for the recovery part (default 1,000,000). Under `cargo test` it runs briefly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use leaseline::config::Config;
use leaseline::core::{
    AllocateRequest, Allocator, LeaseId, PoolId, SessionId, TenantId, Timestamp,
};
use leaseline::store::{Policy, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SITE: &str = "bench-site-key";
const TEL: &str = "bench-telephony-key";
const ADMIN: &str = "bench-admin-key";
/// Numbers in the throughput pool: more than any cell can allocate.
const POOL: u64 = 400_000;
const FIRST: u64 = 33_800_000_000;

fn sha(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The CPUs the servers run on: all but CPU 0, which the load generator (this process, one
/// thread) keeps for itself, so that client and server never take each other's core. `None`
/// on a single-CPU machine or without `taskset` (util-linux): nothing is pinned then.
/// Decided once, before this process pins itself (pinning narrows what it sees).
fn server_cpus() -> Option<String> {
    static CPUS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CPUS.get_or_init(|| {
        let n = cores();
        let taskset = Command::new("taskset").arg("-V").output().is_ok();
        (n >= 2 && taskset).then(|| format!("1-{}", n - 1))
    })
    .clone()
}

/// The machine's cores, as this process saw them at start.
fn cores() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `program` as a command, pinned to the servers' CPUs when the machine allows.
fn server_command(program: &str) -> Command {
    match server_cpus() {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpus, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Pins this process (the load generator) to CPU 0 when the servers are pinned apart.
fn pin_load_generator() -> bool {
    server_cpus().is_some()
        && Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// A child process killed when dropped.
struct Proc(Child);

impl Proc {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

// ---- Leaseline -------------------------------------------------------------------------

fn leaseline_config(data: &Path, numbers: u64, commit: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
data_dir = "{}"
commit = "{commit}"
log_format = "json"
[lease]
ttl = "1h"
max_ttl = "2h"
[[pool]]
name = "p"
numbers = ["+{FIRST}..=+{}"]
[[key]]
name = "site"
role = "site"
sha256 = "{}"
[[key]]
name = "tel"
role = "telephony"
sha256 = "{}"
[[key]]
name = "admin"
role = "admin"
sha256 = "{}"
"#,
        data.display(),
        FIRST + numbers - 1,
        sha(SITE),
        sha(TEL),
        sha(ADMIN)
    )
}

/// Starts the binary on `config`; returns it, its address, and how long it took to be ready.
fn start_leaseline(config: &Path) -> (Proc, String, Duration) {
    let started = Instant::now();
    let mut child = server_command(env!("CARGO_BIN_EXE_leaseline"))
        .args(["serve", "--config"])
        .arg(config)
        .env(
            "LEASELINE_LOG",
            "warn,leaseline::startup=info,leaseline::cluster=info",
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sent {
                continue;
            }
            if let Some(a) = serde_json::from_str::<serde_json::Value>(&l)
                .ok()
                .and_then(|v| v["fields"]["addr"].as_str().map(str::to_owned))
            {
                let _ = tx.send(a);
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("leaseline reports its address");
    let proc = Proc(child);
    loop {
        if ureq::get(&format!("http://{addr}/readyz")).call().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (proc, addr, started.elapsed())
}

/// A 3-member etcd on 127.0.0.1 (plain processes, killed when dropped) and its client URLs;
/// `None` when etcd is not installed and the run may skip it.
fn start_etcd(dir: &Path, benching: bool) -> Option<(Vec<Proc>, Vec<String>)> {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(
            !benching && std::env::var("LEASELINE_REQUIRE_EXTERNAL").is_err(),
            "etcd is not installed"
        );
        eprintln!("SKIPPED: etcd is not installed (scripts/test.sh installs it)");
        return None;
    }
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let url = format!("http://127.0.0.1:{client}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = server_command("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.join(format!("etcd-{i}")))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        procs.push(Proc(child));
        urls.push(url);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in &urls {
        while ureq::post(&format!("{url}/v3/kv/range"))
            .send_string(r#"{"key":"AA=="}"#)
            .is_err()
        {
            assert!(Instant::now() < deadline, "etcd member {url} not up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Some((procs, urls))
}

/// A keep-alive HTTP/1.1 connection that sends prepared requests and reads status + body.
struct Http {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: &str) -> Http {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Http {
            s,
            buf: Vec::with_capacity(4096),
        }
    }

    async fn send(&mut self, req: &[u8]) -> u16 {
        self.s.write_all(req).await.unwrap();
        self.buf.clear();
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap();
                let status: u16 = head[9..12].parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    self.read().await;
                }
                return status;
            }
            self.read().await;
        }
    }

    async fn read(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn post(path: &str, key: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str, key: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n").into_bytes()
}

// ---- Redis -----------------------------------------------------------------------------

/// Allocate: a random free number, its lease, its expiry. Expire: what is due goes back.
const ALLOCATE_LUA: &str = "local n = redis.call('SPOP', KEYS[1]) if not n then return false end \
redis.call('HSET', KEYS[2], n, ARGV[1]) redis.call('ZADD', KEYS[3], ARGV[2], n) return n";
const EXPIRE_LUA: &str = "local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, 1000) \
for _, n in ipairs(due) do redis.call('ZREM', KEYS[3], n) redis.call('HDEL', KEYS[2], n) redis.call('SADD', KEYS[1], n) end return #due";

struct Redis {
    s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

/// A RESP reply; values are read only when a failed assertion prints them.
#[derive(Debug)]
#[allow(dead_code)]
enum Reply {
    Ok,
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
    Err(String),
}

impl Redis {
    async fn connect(port: u16) -> Redis {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.set_nodelay(true).unwrap();
        Redis {
            s,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend(b"\r\n");
        }
        out
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        self.s.write_all(&Self::encode(args)).await.unwrap();
        self.reply().await
    }

    /// Sends many commands at once and reads all their replies.
    async fn pipeline(&mut self, cmds: &[Vec<u8>]) {
        let all: Vec<u8> = cmds.concat();
        self.s.write_all(&all).await.unwrap();
        for _ in cmds {
            if let Reply::Err(e) = self.reply().await {
                panic!("redis: {e}");
            }
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return l;
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "redis closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn reply(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send + '_>> {
        Box::pin(async move {
            let l = self.line().await;
            let (t, rest) = l.split_at(1);
            match t {
                "+" => Reply::Ok,
                "-" => Reply::Err(rest.to_owned()),
                ":" => Reply::Int(rest.parse().unwrap()),
                "$" => {
                    let n: i64 = rest.parse().unwrap();
                    if n < 0 {
                        return Reply::Bulk(None);
                    }
                    let n = n as usize;
                    while self.buf.len() - self.pos < n + 2 {
                        self.fill().await;
                    }
                    let v = self.buf[self.pos..self.pos + n].to_vec();
                    self.pos += n + 2;
                    Reply::Bulk(Some(v))
                }
                "*" => {
                    let n: i64 = rest.parse().unwrap();
                    let mut v = Vec::new();
                    for _ in 0..n.max(0) {
                        v.push(self.reply().await);
                    }
                    Reply::Array(v)
                }
                _ => panic!("bad RESP {l}"),
            }
        })
    }
}

fn start_redis(dir: &Path, port: u16, fsync: &str, aof: bool) -> Proc {
    let child = server_command("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--daemonize",
            "no",
        ])
        .args([
            "--appendonly",
            if aof { "yes" } else { "no" },
            "--appendfsync",
            fsync,
        ])
        .arg("--dir")
        .arg(dir)
        .args([
            "--dbfilename",
            "dump.rdb",
            "--protected-mode",
            "yes",
            "--logfile",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    Proc(child)
}

/// Waits until Redis answers PING (it answers -LOADING while it loads its RDB).
async fn redis_ready(port: u16) -> Redis {
    loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            s.set_nodelay(true).unwrap();
            let mut r = Redis {
                s,
                buf: Vec::new(),
                pos: 0,
            };
            loop {
                match r.cmd(&[b"PING"]).await {
                    Reply::Ok => return r,
                    _ => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn load_script(r: &mut Redis, lua: &str) -> Vec<u8> {
    match r.cmd(&[b"SCRIPT", b"LOAD", lua.as_bytes()]).await {
        Reply::Bulk(Some(sha)) => sha,
        other => panic!("SCRIPT LOAD: {other:?}"),
    }
}

async fn fill_free_set(r: &mut Redis, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut args: Vec<Vec<u8>> = vec![b"SADD".to_vec(), b"free".to_vec()];
        args.extend(chunk.iter().map(|i| format!("+{}", FIRST + i).into_bytes()));
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        r.pipeline(&[Redis::encode(&refs)]).await;
    }
}

// ---- the closed loop ---------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Cell {
    per_sec: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

/// Runs `clients` closed loops of `op` for `secs`; latencies in ms.
async fn drive<C, F>(clients: usize, secs: f64, connect: impl Fn(usize) -> C, op: F) -> Cell
where
    C: std::future::Future,
    C::Output: Send + 'static,
    F: Fn(
            &mut C::Output,
            usize,
            u64,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>
        + Send
        + Sync
        + Copy
        + 'static,
{
    let mut conns = Vec::new();
    for c in 0..clients {
        conns.push(connect(c).await);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut conn)| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op(&mut conn, c, i).await;
                    lat.push(t.elapsed().as_nanos() as u64);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    Cell {
        per_sec: lat.len() as f64 / elapsed,
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
    }
}

async fn leaseline_alloc(addr: &str, clients: usize, secs: f64, tag: &'static str) -> Cell {
    let addr = addr.to_owned();
    drive(
        clients,
        secs,
        |_| Http::connect(&addr),
        move |h: &mut Http, c, i| {
            Box::pin(async move {
                let body = format!("{{\"pool\":\"p\",\"session\":\"{tag}-{c}-{i}\"}}");
                let st = h.send(&post("/v1/leases", SITE, &body)).await;
                assert_eq!(st, 201);
            })
        },
    )
    .await
}

/// Allocate, then release: with an endpoint taking `lease.released`, every operation sends a
/// webhook.
async fn leaseline_alloc_release(addr: &str, clients: usize, secs: f64, tag: &'static str) -> Cell {
    let addr = addr.to_owned();
    drive(
        clients,
        secs,
        |_| Http::connect(&addr),
        move |h: &mut Http, c, i| {
            Box::pin(async move {
                let body = format!("{{\"pool\":\"p\",\"session\":\"{tag}-{c}-{i}\"}}");
                assert_eq!(h.send(&post("/v1/leases", SITE, &body)).await, 201);
                let at = find(&h.buf, b"\"lease_id\":\"").unwrap() + 12;
                let id = std::str::from_utf8(&h.buf[at..at + 32]).unwrap().to_owned();
                let release = format!(
                    "DELETE /v1/leases/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SITE}\r\n\r\n"
                );
                assert_eq!(h.send(release.as_bytes()).await, 204);
            })
        },
    )
    .await
}

async fn leaseline_lookup(addr: &str, clients: usize, secs: f64, leased: u64) -> Cell {
    let addr = addr.to_owned();
    drive(
        clients,
        secs,
        |_| Http::connect(&addr),
        move |h: &mut Http, c, i| {
            Box::pin(async move {
                let n = FIRST + (c as u64 * 7919 + i * 104_729) % leased;
                let st = h
                    .send(&get(&format!("/v1/attribution?called=%2B{n}"), TEL))
                    .await;
                assert_eq!(st, 200);
            })
        },
    )
    .await
}

async fn redis_alloc(port: u16, sha: Vec<u8>, clients: usize, secs: f64) -> Cell {
    let sha: &'static [u8] = Box::leak(sha.into_boxed_slice());
    drive(
        clients,
        secs,
        |_| Redis::connect(port),
        move |r: &mut Redis, c, i| {
            Box::pin(async move {
                let session = format!("s-{c}-{i}");
                let expires = (1_800_000_000_000u64 + i).to_string();
                let rep = r
                    .cmd(&[
                        b"EVALSHA",
                        sha,
                        b"3",
                        b"free",
                        b"leases",
                        b"expiry",
                        session.as_bytes(),
                        expires.as_bytes(),
                    ])
                    .await;
                assert!(matches!(rep, Reply::Bulk(Some(_))), "{rep:?}");
            })
        },
    )
    .await
}

async fn redis_lookup(port: u16, clients: usize, secs: f64, leased: u64) -> Cell {
    drive(
        clients,
        secs,
        |_| Redis::connect(port),
        move |r: &mut Redis, c, i| {
            Box::pin(async move {
                let n = format!("+{}", FIRST + (c as u64 * 7919 + i * 104_729) % leased);
                let rep = r.cmd(&[b"HGET", b"leases", n.as_bytes()]).await;
                assert!(matches!(rep, Reply::Bulk(_)), "{rep:?}");
            })
        },
    )
    .await
}

fn row(what: &str, clients: usize, c: Cell) {
    println!(
        "| {what} | {clients} | {:.0} | {:.3} | {:.3} | {:.3} |",
        c.per_sec, c.p50, c.p99, c.p999
    );
}

fn ratio(what: &str, clients: usize, ours: Cell, peer: Cell) {
    println!(
        "| **ratio Leaseline / {what}** | {clients} | **{:.2}x** | {:.2}x | {:.2}x | |",
        ours.per_sec / peer.per_sec,
        ours.p50 / peer.p50,
        ours.p99 / peer.p99
    );
}

/// (flushes, mean ms per flush, mean writes per flush) from the server's own metrics.
fn flush_stats(addr: &str) -> (f64, f64, f64) {
    let text = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let val = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    let n = val("leaseline_store_flush_duration_seconds_count");
    (
        n,
        val("leaseline_store_flush_duration_seconds_sum") / n.max(1.0) * 1000.0,
        val("leaseline_store_flush_batch_size_sum")
            / val("leaseline_store_flush_batch_size_count").max(1.0),
    )
}

// ---- recovery and memory -------------------------------------------------------------

/// Writes `n` live leases straight into a store, as a running Leaseline would have (in
/// batches of 1,000: sled's memory grows with batch size).
/// Fills the store with `n` live leases as the running service would have: each allocation's
/// effects one operation, written and flushed in rounds of a thousand through the store
/// (background compactions by the config's policy included), then the snapshot a clean stop
/// writes. A restart then reads that snapshot and the log after it.
fn fill_store(config_path: &Path, n: u64) {
    let config = Config::load(config_path).unwrap();
    let pools =
        leaseline::core::Directory::new(config.pools.iter().map(|p| p.spec.clone()).collect())
            .unwrap();
    std::fs::create_dir_all(&config.server.data_dir).unwrap();
    let store = Store::open_with(
        &config.server.data_dir,
        config.server.cache_capacity,
        std::sync::Arc::clone(&pools),
        Policy {
            after_changes: config.server.snapshot_after_changes,
            min_interval: config.server.snapshot_min_interval,
        },
    )
    .unwrap();
    let mut core = Allocator::with(pools).unwrap();
    let mut out = leaseline::core::Outbox::new();
    let mut round = Vec::with_capacity(1000);
    let tenant = TenantId::parse("site").unwrap();
    let now = Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_le_bytes());
        id[8..].copy_from_slice(&0x5eed_u64.to_le_bytes());
        let req = AllocateRequest {
            tenant: tenant.clone(),
            pool: PoolId(0),
            session: SessionId::parse(&format!("visitor-{i}")).unwrap(),
            listing: None,
            target: None,
            caller: None,
            ttl: None,
            calls_required: 1,
            min_call_secs: 0,
            amount: None,
            with_code: false,
            from_page: false,
        };
        core.allocate(req, now, LeaseId::from_bytes(id), &mut out)
            .unwrap();
        round.push(std::mem::take(&mut out.effects));
        out.notices.clear();
        if round.len() == 1000 || i == n - 1 {
            store.apply_groups(&round).unwrap();
            store.flush().unwrap();
            round.clear();
        }
    }
    store.compact().unwrap();
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("LEASELINE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 5.0 } else { 0.3 });
    let fill: u64 = std::env::var("LEASELINE_BENCH_FILL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 10_000 });
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !benching && std::env::var("LEASELINE_REQUIRE_EXTERNAL").is_err(),
            "redis-server is not installed"
        );
        eprintln!("SKIPPED: redis-server is not installed (scripts/test.sh installs it)");
        return;
    }
    let pinned = pin_load_generator();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        })
        .unwrap_or_default();
    println!(
        "Leaseline vs Redis {}, {} cores ({machine}), {secs} s per cell, closed-loop clients on 127.0.0.1, {}",
        String::from_utf8_lossy(&Command::new("redis-server").arg("--version").output().unwrap().stdout)
            .split_whitespace()
            .nth(2)
            .unwrap_or("?")
            .trim_start_matches("v="),
        cores(),
        match (pinned, server_cpus()) {
            (true, Some(cpus)) => format!("the load generator on CPU 0, the servers on CPUs {cpus}"),
            _ => "nothing pinned".to_owned(),
        }
    );
    println!();
    println!("| workload | clients | ops/s | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---:|---:|---:|---:|---:|");

    let dir = tempfile::tempdir().unwrap();
    // Leaseline, group commit.
    let lcfg = dir.path().join("leaseline.toml");
    std::fs::write(
        &lcfg,
        leaseline_config(&dir.path().join("ll"), POOL, "group"),
    )
    .unwrap();
    let (ll, addr, _) = start_leaseline(&lcfg);
    // Redis, both fsync settings, each fresh with the same free set.
    let mut results = Vec::new();
    for clients in [1usize, 50] {
        let ours_alloc = rt.block_on(leaseline_alloc(
            &addr,
            clients,
            secs,
            if clients == 1 { "a" } else { "b" },
        ));
        let mut peers = Vec::new();
        for fsync in ["always", "everysec"] {
            let rdir = dir.path().join(format!("redis-{fsync}-{clients}"));
            std::fs::create_dir_all(&rdir).unwrap();
            let port = free_port();
            let _redis = start_redis(&rdir, port, fsync, true);
            let cell = rt.block_on(async {
                let mut r = redis_ready(port).await;
                fill_free_set(&mut r, POOL).await;
                let sha = load_script(&mut r, ALLOCATE_LUA).await;
                load_script(&mut r, EXPIRE_LUA).await;
                let alloc = redis_alloc(port, sha, clients, secs).await;
                let lookup = redis_lookup(port, clients, secs, 10_000).await;
                (alloc, lookup)
            });
            peers.push((fsync, cell));
        }
        results.push((clients, ours_alloc, peers));
    }
    // Lookups on Leaseline: every number looked up is leased (the allocations above).
    let mut lookups = Vec::new();
    for clients in [1usize, 50] {
        lookups.push(rt.block_on(leaseline_lookup(&addr, clients, secs, 10_000)));
    }
    let flushes = flush_stats(&addr);
    drop(ll);
    for ((clients, ours, peers), ours_lookup) in results.iter().zip(&lookups) {
        let clients = *clients;
        row(
            "Leaseline durable allocation (group commit)",
            clients,
            *ours,
        );
        for (fsync, (alloc, _)) in peers {
            row(
                &format!("Redis allocation, appendfsync {fsync}"),
                clients,
                *alloc,
            );
        }
        for (fsync, (alloc, _)) in peers {
            ratio(&format!("Redis {fsync}"), clients, *ours, *alloc);
        }
        row(
            "Leaseline attribution lookup (GET /v1/attribution)",
            clients,
            *ours_lookup,
        );
        for (fsync, (_, lookup)) in peers {
            row(
                &format!("Redis HGET, appendfsync {fsync}"),
                clients,
                *lookup,
            );
        }
        for (fsync, (_, lookup)) in peers {
            ratio(
                &format!("Redis HGET {fsync}"),
                clients,
                *ours_lookup,
                *lookup,
            );
        }
    }

    println!();
    println!(
        "Leaseline's flushes over the allocation cells: {:.0} flushes, {:.2} ms each on average, {:.1} writes per flush.",
        flushes.0, flushes.1, flushes.2
    );

    // Group commit against a flush per request, 50 clients.
    println!();
    println!("| commit mode | clients | allocations/s | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut modes = Vec::new();
    for commit in ["group", "per_request"] {
        let cfg = dir.path().join(format!("{commit}.toml"));
        std::fs::write(
            &cfg,
            leaseline_config(&dir.path().join(commit), POOL, commit),
        )
        .unwrap();
        let (_p, addr, _) = start_leaseline(&cfg);
        let cell = rt.block_on(leaseline_alloc(&addr, 50, secs, "m"));
        row(commit, 50, cell);
        modes.push(cell);
    }
    println!(
        "| **ratio group / per_request** | 50 | **{:.2}x** | | | |",
        modes[0].per_sec / modes[1].per_sec
    );

    // Webhooks: the same allocations and releases with no endpoint, and with one receiver that
    // accepts connections and never answers (each release is an event for it). Deliveries run
    // on their own threads: the API's latency should not move.
    println!();
    println!("| webhook endpoints | clients | allocate+release/s | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_url = format!("http://{}/hook", hang.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming() {
            held.push(c);
        }
    });
    let mut hooks = Vec::new();
    for (what, extra) in [
        ("none", String::new()),
        (
            "one that hangs",
            format!(
                "[[webhook]]\nname = \"dead\"\nurl = \"{hang_url}\"\nsecret = \"whsec_bench_0123456789\"\nevents = [\"lease.released\"]\ntimeout = \"30s\"\n"
            ),
        ),
    ] {
        let name = if extra.is_empty() { "hooks-none" } else { "hooks-dead" };
        let cfg = dir.path().join(format!("{name}.toml"));
        let text = leaseline_config(&dir.path().join(name), POOL, "group") + &extra;
        std::fs::write(&cfg, text).unwrap();
        let (_p, addr, _) = start_leaseline(&cfg);
        let cell = rt.block_on(leaseline_alloc_release(&addr, 50, secs, "w"));
        row(what, 50, cell);
        hooks.push(cell);
    }
    println!(
        "| **ratio one that hangs / none** | 50 | **{:.2}x** | {:.2}x | {:.2}x | |",
        hooks[1].per_sec / hooks[0].per_sec,
        hooks[1].p50 / hooks[0].p50,
        hooks[1].p99 / hooks[0].p99
    );

    // High availability: durable allocations at 50 clients on one node with sled, on a cluster
    // leader writing to a 3-member etcd on this same machine, and etcd's own puts (through its
    // HTTP gateway, one key each) to that etcd: what HA costs, and how much of it is etcd.
    if let Some((_etcd, urls)) = start_etcd(dir.path(), benching) {
        println!();
        println!("| durable allocations | clients | ops/s | p50 ms | p99 ms | p99.9 ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        let mut cells = Vec::new();
        for (what, extra) in [
            ("one node, sled", String::new()),
            (
                "cluster leader, 3-member etcd",
                format!(
                    "[cluster]\netcd = [{}]\nnode = \"bench\"\nadvertise = \"http://127.0.0.1:1\"\nlease_ttl = \"5s\"\n",
                    urls.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", ")
                ),
            ),
        ] {
            let name = if extra.is_empty() { "ha-sled" } else { "ha-etcd" };
            let cfg = dir.path().join(format!("{name}.toml"));
            let text = leaseline_config(&dir.path().join(name), POOL, "group") + &extra;
            std::fs::write(&cfg, text).unwrap();
            let (_p, addr, _) = start_leaseline(&cfg);
            let cell = rt.block_on(leaseline_alloc(&addr, 50, secs, "h"));
            row(what, 50, cell);
            cells.push(cell);
        }
        let etcd_addr = urls[0].trim_start_matches("http://").to_owned();
        let puts = rt.block_on(drive(
            50,
            secs,
            |_| Http::connect(&etcd_addr),
            |h: &mut Http, c, i| {
                Box::pin(async move {
                    use base64::Engine;
                    let key =
                        base64::engine::general_purpose::STANDARD.encode(format!("/bench/{c}/{i}"));
                    let body = format!("{{\"key\":\"{key}\",\"value\":\"eA==\"}}");
                    // No Authorization header: etcd's gateway would take it for its own auth.
                    let req = format!(
                        "POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let st = h.send(req.as_bytes()).await;
                    assert_eq!(st, 200);
                })
            },
        ));
        row("etcd puts (its HTTP gateway)", 50, puts);
        println!(
            "| **ratio cluster / sled** | 50 | **{:.2}x** | {:.2}x | {:.2}x | |",
            cells[1].per_sec / cells[0].per_sec,
            cells[1].p50 / cells[0].p50,
            cells[1].p99 / cells[0].p99
        );
        println!(
            "| **ratio cluster / etcd puts** | 50 | **{:.2}x** | {:.2}x | {:.2}x | |",
            cells[1].per_sec / puts.per_sec,
            cells[1].p50 / puts.p50,
            cells[1].p99 / puts.p99
        );
    }

    // Restart, memory and disk with `fill` live leases.
    println!();
    println!("| {fill} live leases | restart to ready s | RSS MiB | disk MiB |");
    println!("|---|---:|---:|---:|");
    let cfg = dir.path().join("fill.toml");
    let data = dir.path().join("fill");
    std::fs::write(&cfg, leaseline_config(&data, fill, "group")).unwrap();
    let t = Instant::now();
    fill_store(&cfg, fill);
    let fill_secs = t.elapsed().as_secs_f64();
    let (p, addr, ready) = start_leaseline(&cfg);
    let pools: serde_json::Value = ureq::get(&format!("http://{addr}/v1/pools"))
        .set("authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(
        pools["pools"][0]["leased"].as_u64(),
        Some(fill),
        "every lease is served"
    );
    let (ll_rss, ll_disk) = (p.rss_kib(), dir_size(&data));
    drop(p);
    // Redis: the same leases as hash + sorted set, saved to RDB, then a restart from it.
    let rdir = dir.path().join("redis-fill");
    std::fs::create_dir_all(&rdir).unwrap();
    let port = free_port();
    let (r_ready, r_rss, r_disk) = {
        let redis = start_redis(&rdir, port, "everysec", false);
        rt.block_on(async {
            let mut r = redis_ready(port).await;
            let mut cmds = Vec::new();
            for i in 0..fill {
                let n = format!("+{}", FIRST + i);
                let v = format!("visitor-{i}|site|1800000000000");
                cmds.push(Redis::encode(&[
                    b"HSET",
                    b"leases",
                    n.as_bytes(),
                    v.as_bytes(),
                ]));
                cmds.push(Redis::encode(&[
                    b"ZADD",
                    b"expiry",
                    b"1800000000000",
                    n.as_bytes(),
                ]));
                if cmds.len() >= 2000 {
                    r.pipeline(&cmds).await;
                    cmds.clear();
                }
            }
            r.pipeline(&cmds).await;
            r.cmd(&[b"SAVE"]).await;
        });
        drop(redis);
        let started = Instant::now();
        let redis = start_redis(&rdir, port, "everysec", false);
        rt.block_on(redis_ready(port));
        let ready = started.elapsed();
        (ready, redis.rss_kib(), dir_size(&rdir))
    };
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "| Leaseline (sled) | {:.2} | {:.0} | {:.0} |",
        ready.as_secs_f64(),
        mib(ll_rss),
        ll_disk as f64 / 1048576.0
    );
    println!(
        "| Redis (RDB) | {:.2} | {:.0} | {:.0} |",
        r_ready.as_secs_f64(),
        mib(r_rss),
        r_disk as f64 / 1048576.0
    );
    println!(
        "| **ratio Leaseline / Redis** | **{:.2}x** | **{:.2}x** | {:.2}x |",
        ready.as_secs_f64() / r_ready.as_secs_f64(),
        ll_rss as f64 / r_rss.max(1) as f64,
        ll_disk as f64 / r_disk.max(1) as f64
    );
    println!();
    println!("(filling the store offline took {fill_secs:.1} s)");

    // The issue's scorecard: each axis against its target, in one table.
    let (_, ours_alloc, peers) = &results[1];
    let always = peers[0].1 .0;
    let ours_lookup = lookups[1];
    let best_hget = peers
        .iter()
        .map(|(_, (_, l))| *l)
        .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
        .expect("two peers");
    let restart = ready.as_secs_f64() / r_ready.as_secs_f64();
    let rss = ll_rss as f64 / r_rss.max(1) as f64;
    let disk = ll_disk as f64 / r_disk.max(1) as f64;
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    println!();
    println!("| axis | Leaseline | Redis peer | ratio | target | |");
    println!("|---|---:|---:|---:|---:|---|");
    println!(
        "| durable allocations/s, 50 clients | {:.0} | {:.0} (appendfsync always) | {:.2}x | >= 2x | {} |",
        ours_alloc.per_sec,
        always.per_sec,
        ours_alloc.per_sec / always.per_sec,
        verdict(ours_alloc.per_sec >= 2.0 * always.per_sec)
    );
    println!(
        "| attribution lookups/s, 50 clients (p99 ms) | {:.0} ({:.1}) | {:.0} HGET ({:.1}) | {:.2}x | >= 1x, p99 <= peer's | {} |",
        ours_lookup.per_sec,
        ours_lookup.p99,
        best_hget.per_sec,
        best_hget.p99,
        ours_lookup.per_sec / best_hget.per_sec,
        verdict(ours_lookup.per_sec >= best_hget.per_sec && ours_lookup.p99 <= best_hget.p99)
    );
    println!(
        "| restart to ready, {fill} live leases | {:.2} s | {:.2} s (RDB) | {restart:.2}x | <= 2x | {} |",
        ready.as_secs_f64(),
        r_ready.as_secs_f64(),
        verdict(restart <= 2.0)
    );
    println!(
        "| RSS, {fill} live leases | {:.0} MiB | {:.0} MiB | {rss:.2}x | <= 1x | {} |",
        mib(ll_rss),
        mib(r_rss),
        verdict(rss <= 1.0)
    );
    println!(
        "| disk, {fill} live leases | {:.0} MiB | {:.0} MiB | {disk:.2}x | <= 2x | {} |",
        ll_disk as f64 / 1048576.0,
        r_disk as f64 / 1048576.0,
        verdict(disk <= 2.0)
    );
}

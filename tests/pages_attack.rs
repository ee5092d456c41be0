//! The many-address attack on a pool, from outside, against the real binary on the shipped
//! `pool.toml`: bots in pages (the public publishable key) allocate from many loopback source
//! addresses (each client socket bound to its own 127.x.y.z, so the server sees them as
//! distinct clients) and renew what they got. The attack must stall, and the site's own
//! server key must still get a number.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Tokens of the shipped development keys (see the README).
const SHIPPED_SITE: &str = "dev-site-key";
const SHIPPED_PAGE: &str = "dev-publishable-key";
const SHIPPED_ADMIN: &str = "dev-admin-key";
/// An origin the shipped publishable key allows.
const ORIGIN: &str = "http://127.0.0.1:8080";
const POOL: &str = "fr-classifieds";

/// The shipped pool.toml, serving on a free port with its data in `dir`.
fn shipped_config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo("pool.toml"))
        .unwrap()
        .replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:0\"\nlog_format = \"json\"",
        )
        .replace(
            "data_dir = \"data\"",
            &format!("data_dir = \"{}\"", dir.join("data").display()),
        );
    assert!(
        text.contains("127.0.0.1:0"),
        "the shipped listen line moved"
    );
    let path = dir.join("pool.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A keep-alive HTTP/1.1 connection from one source address.
struct Client {
    from: Ipv4Addr,
    server: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

struct Answer {
    status: u16,
    retry_after: Option<u64>,
    json: Value,
}

impl Client {
    fn new(from: Ipv4Addr, server: SocketAddr) -> Client {
        Client {
            from,
            server,
            conn: None,
        }
    }

    async fn connect(&self) -> BufReader<TcpStream> {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(IpAddr::V4(self.from), 0))
            .unwrap();
        BufReader::new(socket.connect(self.server).await.unwrap())
    }

    async fn send(&mut self, method: &str, path: &str, key: Option<&str>, body: &Value) -> Answer {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nOrigin: {ORIGIN}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.server,
            body.len()
        );
        if self.conn.is_none() {
            self.conn = Some(self.connect().await);
        }
        let conn = self.conn.as_mut().unwrap();
        conn.get_mut().write_all(head.as_bytes()).await.unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {line:?}"));
        let (mut length, mut retry_after, mut close) = (0usize, None, false);
        loop {
            line.clear();
            conn.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (name, value) = l.split_once(':').unwrap();
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap(),
                "retry-after" => retry_after = value.parse().ok(),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut buf = vec![0; length];
        conn.read_exact(&mut buf).await.unwrap();
        if close {
            self.conn = None;
        }
        Answer {
            status,
            retry_after,
            json: serde_json::from_slice(&buf).unwrap_or(Value::Null),
        }
    }

    async fn allocate(&mut self, key: &str, session: &str) -> Answer {
        let body = json!({"pool": POOL, "session": session});
        self.send("POST", "/v1/leases", Some(key), &body).await
    }
}

/// What a wave of bots got: statuses counted, and the leases they hold.
#[derive(Default)]
struct Tally {
    created: u32,
    with_code: u32,
    limited: u32,
    exhausted: u32,
    other: Vec<u16>,
    leases: Vec<(String, String, String)>,
}

/// Every address sends `per_address` allocations, one after the other on its own connection,
/// all addresses at once.
async fn wave(server: SocketAddr, addresses: &[Ipv4Addr], per_address: u32) -> Tally {
    let tasks: Vec<_> = addresses
        .iter()
        .map(|&from| {
            tokio::spawn(async move {
                let mut c = Client::new(from, server);
                let mut answers = Vec::new();
                for i in 0..per_address {
                    let a = c.allocate(SHIPPED_PAGE, &format!("bot-{from}-{i}")).await;
                    if a.status == 503 || a.status == 429 {
                        assert!(
                            a.retry_after.is_some_and(|s| s >= 1),
                            "{} without Retry-After",
                            a.status
                        );
                    }
                    answers.push(a);
                }
                answers
            })
        })
        .collect();
    let mut t = Tally::default();
    for task in tasks {
        for a in task.await.unwrap() {
            match a.status {
                201 => {
                    t.created += 1;
                    t.with_code += u32::from(a.json["code"].is_string());
                    let field = |k: &str| a.json[k].as_str().unwrap().to_owned();
                    t.leases
                        .push((field("lease_id"), field("created_at"), field("expires_at")));
                }
                429 => t.limited += 1,
                503 => t.exhausted += 1,
                s => t.other.push(s),
            }
        }
    }
    t
}

async fn pool_counts(server: SocketAddr) -> Value {
    let mut admin = Client::new(Ipv4Addr::LOCALHOST, server);
    let pools = admin
        .send("GET", "/v1/pools", Some(SHIPPED_ADMIN), &Value::Null)
        .await;
    pools.json["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == POOL)
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_on_many_addresses_stall_and_the_sites_server_still_gets_a_number() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&shipped_config(dir.path()));
    let addr: SocketAddr = server.addr.parse().unwrap();
    let size = pool_counts(addr).await["size"].as_u64().unwrap();
    assert_eq!(size, 1001, "the shipped fr-classifieds pool");

    // 1. The reported attack: 190 addresses of one /24. Their block's allowance (240 a minute)
    //    runs out long before the pool does.
    let one_block: Vec<Ipv4Addr> = (1..=190).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let a = wave(addr, &one_block, 5).await;
    assert!(a.other.is_empty(), "unexpected statuses {:?}", a.other);
    assert_eq!(a.created, 240, "one /24 gets its prefix allowance, no more");
    assert_eq!(a.limited, 190 * 5 - 240);

    // 2. Spread over 190 networks (a /24 each), 60 allocations each: more than the pool holds.
    //    Pages stop at their share (800 numbers, 8000 codes) and are told the pool is full.
    let many_blocks: Vec<Ipv4Addr> = (0..190u32)
        .map(|i| Ipv4Addr::new(127, 10 + (i / 100) as u8, (i % 100) as u8, 1))
        .collect();
    let b = wave(addr, &many_blocks, 60).await;
    assert!(b.other.is_empty(), "unexpected statuses {:?}", b.other);
    assert_eq!(b.limited, 0, "each address stayed within its own minute");
    assert_eq!(
        a.created + b.created,
        800 + 8000,
        "exactly the pages' share"
    );
    assert_eq!(a.with_code + b.with_code, 8000);
    assert_eq!(b.exhausted, 190 * 60 - b.created);
    let counts = pool_counts(addr).await;
    assert_eq!(counts["free"], 201, "the servers' reserve: {counts}");

    // A fresh page is told to come back later; the site's server still gets a real number.
    let mut late = Client::new(Ipv4Addr::new(127, 99, 0, 1), addr);
    let refused = late.allocate(SHIPPED_PAGE, "late-visitor").await;
    assert_eq!(refused.status, 503, "{}", refused.json);
    assert_eq!(refused.json["type"], "urn:leaseline:problem:pool-exhausted");
    assert!(refused.retry_after.is_some());
    let mut site = Client::new(Ipv4Addr::new(127, 99, 0, 2), addr);
    let got = site.allocate(SHIPPED_SITE, "server-side-visitor").await;
    assert_eq!(got.status, 201, "{}", got.json);
    assert!(got.json["code"].is_null(), "a number, not the shared code");
    assert_ne!(got.json["number"], "+33899199999");

    // 3. Renewing to hold on: 1,500 renewals from one address over 20 leases. Each lease is
    //    renewed 10 times a minute at most, and the address 300 times in all.
    let mut renewer = Client::new(Ipv4Addr::new(127, 10, 0, 1), addr);
    let (mut renewed, mut limited) = (0, 0);
    for i in 0..1500 {
        let (id, created, _) = &b.leases[i % 20];
        let r = renewer
            .send(
                "POST",
                &format!("/v1/leases/{id}/renew"),
                None,
                &Value::Null,
            )
            .await;
        match r.status {
            200 => {
                renewed += 1;
                let created = chrono::DateTime::parse_from_rfc3339(created).unwrap();
                let expires =
                    chrono::DateTime::parse_from_rfc3339(r.json["expires_at"].as_str().unwrap())
                        .unwrap();
                assert!(expires - created <= chrono::Duration::minutes(30));
            }
            429 => limited += 1,
            s => panic!("renew answered {s}: {}", r.json),
        }
    }
    assert_eq!(renewed, 20 * 10, "ten a minute for each lease");
    assert_eq!(limited, 1500 - renewed);
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for line in [
        "leaseline_rejected_by_limits_total{limit=\"page_prefix\"} 710",
        "leaseline_rejected_by_limits_total{limit=\"renew_lease\"} 100",
        "leaseline_rejected_by_limits_total{limit=\"renew_ip\"} 1200",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn check_prints_what_pages_may_hold_on_the_shipped_config() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leaseline"))
        .args(["check", "--config"])
        .arg(repo("pool.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("pages may hold 800 numbers and 8000 codes, each for 30m at most"),
        "{text}"
    );
    assert!(
        text.contains("per address 60, per /24 or /56 240, per session 20"),
        "{text}"
    );
}

//! High availability on etcd, through the real binary: a 3-member etcd on 127.0.0.1 (plain
//! `etcd` processes, each with its own data folder and ports, torn down by PID) and two
//! Leaseline nodes. Under concurrent load: the leader killed with SIGKILL, the standby serves
//! within `lease_ttl` + 5 s with every acknowledged lease, renewal, release, call, call end and
//! redeem, and no
//! number held twice; the leader stopped (SIGSTOP) longer than `lease_ttl` and resumed answers
//! nothing but 503 once it lost the leadership. Bounded to well under a minute.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const LEASE_TTL_SECS: u64 = 3;
const POOL_SIZE: u64 = 1000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process this test started, killed by PID when dropped.
struct Proc(Child);

impl Proc {
    fn signal(&self, sig: libc::c_int) {
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, sig);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three etcd members on loopback, each killed or restarted on its own.
struct Etcd {
    dir: std::path::PathBuf,
    /// (client, peer) ports of each member.
    ports: Vec<(u16, u16)>,
    members: Vec<Option<Proc>>,
    urls: Vec<String>,
}

impl Etcd {
    /// Starts the three members and waits until each answers; `None` without etcd.
    fn start(dir: &Path) -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("LEASELINE_REQUIRE_EXTERNAL").is_none(),
                "etcd is missing (Debian: etcd-server)"
            );
            eprintln!("etcd not installed: skipped");
            return None;
        }
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let urls = ports
            .iter()
            .map(|(c, _)| format!("http://127.0.0.1:{c}"))
            .collect();
        let mut etcd = Etcd {
            dir: dir.to_owned(),
            ports,
            members: vec![None, None, None],
            urls,
        };
        for i in 0..3 {
            etcd.member_up(i);
        }
        for i in 0..3 {
            etcd.wait_answering(i);
        }
        Some(etcd)
    }

    /// Starts member `i` (again: its data folder is kept, so it rejoins).
    fn member_up(&mut self, i: usize) {
        let initial: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let (url, peer) = (&self.urls[i], self.ports[i].1);
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("e{i}")))
            .args(["--listen-client-urls", url, "--advertise-client-urls", url])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "t",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.members[i] = Some(Proc(child));
    }

    /// kill -9 member `i`.
    fn member_down(&mut self, i: usize) {
        drop(self.members[i].take());
    }

    fn wait_answering(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = &self.urls[i];
        while ureq::post(&format!("{url}/v3/kv/range"))
            .send_json(json!({"key": "AA=="}))
            .is_err()
        {
            assert!(Instant::now() < deadline, "etcd member {url} not up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn node_config(dir: &Path, name: &str, port: u16, etcd: &[String]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    let endpoints: Vec<String> = etcd.iter().map(|u| format!("{u:?}")).collect();
    binary_config(
        &dir.join(name),
        &format!(
            r#"
[lease]
ttl = "60s"
max_ttl = "2m"
grace = "1s"
quarantine = "2s"

[[pool]]
name = "p"
numbers = ["+33899100000..=+33899100999"]

# One number, leased only by the deadline check: its lease's expiry and quarantine fire on
# whichever node leads when they fall due.
[[pool]]
name = "q"
numbers = ["+33899200000"]

[cluster]
etcd = [{}]
node = "{name}"
advertise = "http://127.0.0.1:{port}"
lease_ttl = "{LEASE_TTL_SECS}s"
"#,
            endpoints.join(", ")
        ),
    )
}

/// A Leaseline node on a fixed port (its advertise URL).
fn start_node(config: &Path, port: u16) -> Proc {
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(config, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_leaseline"))
        .args(["serve", "--config"])
        .arg(config)
        .env("LEASELINE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    Proc(child)
}

fn ready(url: &str) -> bool {
    matches!(ureq::get(&format!("{url}/readyz")).timeout(Duration::from_secs(1)).call(), Ok(r) if r.status() == 200)
}

/// Waits until one of `urls` leads; its index.
fn leader_of(urls: &[String], within: Duration) -> Option<usize> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(i) = urls.iter().position(|u| ready(u)) {
            return Some(i);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[derive(Default)]
struct Acked {
    /// lease id → (number, latest acknowledged expires_at in ms)
    leases: HashMap<String, (String, u64)>,
    released: HashSet<String>,
    /// call id → lease id
    calls: HashMap<String, String>,
    /// Calls whose end was acknowledged.
    ended: HashSet<String>,
    /// Leases whose redeem was acknowledged.
    redeemed: HashSet<String>,
}

fn ms(v: &Value) -> u64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis() as u64
}

/// Sends requests to whichever node answers, recording every acknowledged write; a 503 (a
/// standby, or a leader between losing and stepping down) is retried elsewhere.
fn client(urls: Vec<String>, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>, tag: String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(3))
        .build();
    let mut mine: Vec<(String, String)> = Vec::new();
    let mut started: Vec<String> = Vec::new();
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let url = &urls[(i as usize) % urls.len()];
        let res = match (i % 5, mine.last().cloned()) {
            (0 | 1, _) | (_, None) => http(
                &agent,
                "POST",
                &format!("{url}/v1/leases"),
                Some(SITE),
                Some(&json!({"pool": "p", "session": format!("{tag}-{i}")})),
            )
            .map(|(s, v)| match s {
                201 => {
                    let id = v["lease_id"].as_str().unwrap().to_owned();
                    let number = v["number"].as_str().unwrap().to_owned();
                    acked
                        .lock()
                        .unwrap()
                        .leases
                        .insert(id.clone(), (number.clone(), ms(&v["expires_at"])));
                    mine.push((id, number));
                }
                409 | 503 => {}
                _ => panic!("allocate: {s} {v}"),
            }),
            (2, Some((id, _))) => http(
                &agent,
                "POST",
                &format!("{url}/v1/leases/{id}/renew"),
                Some(SITE),
                None,
            )
            .map(|(s, v)| match s {
                200 => {
                    let mut a = acked.lock().unwrap();
                    let e = a.leases.get_mut(&id).unwrap();
                    e.1 = e.1.max(ms(&v["expires_at"]));
                }
                410 | 503 => {}
                _ => panic!("renew: {s} {v}"),
            }),
            // One request in ten releases: most leases are live when the state is checked.
            (3, Some((id, _))) if i % 10 == 3 => http(
                &agent,
                "DELETE",
                &format!("{url}/v1/leases/{id}"),
                Some(SITE),
                None,
            )
            .map(|(s, v)| match s {
                204 => {
                    acked.lock().unwrap().released.insert(id.clone());
                    mine.pop();
                }
                503 => {}
                _ => panic!("release: {s} {v}"),
            }),
            // Every other fifth request ends a call started earlier (maybe on another leader).
            (_, Some(_)) if i % 10 == 9 && !started.is_empty() => {
                let call = started.pop().unwrap();
                http(
                    &agent,
                    "POST",
                    &format!("{url}/v1/calls"),
                    Some(TELEPHONY),
                    Some(&json!({"call_id": call, "event": "end", "duration_secs": 7})),
                )
                .map(|(s, v)| match s {
                    200 => {
                        acked.lock().unwrap().ended.insert(call);
                    }
                    503 => started.push(call),
                    _ => panic!("call end: {s} {v}"),
                })
            }
            (_, Some((id, number))) => {
                let call = format!("{tag}-call-{i}");
                http(
                    &agent,
                    "POST",
                    &format!("{url}/v1/calls"),
                    Some(TELEPHONY),
                    Some(&json!({"call_id": call, "event": "start", "called": number, "caller": "+33612345678"})),
                )
                .map(|(s, v)| match s {
                    200 => {
                        let lease = v["lease_id"].as_str().unwrap_or("").to_owned();
                        acked.lock().unwrap().calls.insert(call.clone(), lease.clone());
                        started.push(call);
                        // Its call paid the lease (one call required, no minimum length).
                        if lease == id {
                            let r = http(&agent, "POST", &format!("{url}/v1/leases/{id}/redeem"), Some(SITE), None);
                            match r {
                                Ok((200, v)) => {
                                    assert!(v["redeemed_at"].is_string(), "{v}");
                                    acked.lock().unwrap().redeemed.insert(id);
                                }
                                // Redeemed already (by an earlier call of this lease), or no leader.
                                Ok((409 | 503, _)) | Err(_) => {}
                                Ok((s, v)) => panic!("redeem: {s} {v}"),
                            }
                        }
                    }
                    503 => {}
                    _ => panic!("call: {s} {v}"),
                })
            }
        };
        if res.is_err() {
            // A node killed or stopped: try the other one next.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every acknowledged write is on the leader at `url`; no number is held by two live leases
/// (of which there are at least `min_live`, so that this says something).
fn verify(url: &str, acked: &Acked, min_live: usize) {
    let agent = agent();
    let mut live: HashSet<String> = HashSet::new();
    for (id, (number, expires)) in &acked.leases {
        let (s, v) = http(&agent, "GET", &format!("{url}/v1/leases/{id}"), None, None).unwrap();
        assert_eq!(s, 200, "acknowledged lease {id} lost: {v}");
        assert_eq!(v["number"].as_str().unwrap(), number);
        assert!(
            ms(&v["expires_at"]) >= *expires,
            "acknowledged renewal of {id} lost"
        );
        let state = v["state"].as_str().unwrap();
        if acked.released.contains(id) {
            assert_eq!(state, "released", "acknowledged release of {id} lost");
        }
        if acked.redeemed.contains(id) {
            assert!(
                v["redeemed_at"].is_string(),
                "acknowledged redeem of {id} lost: {v}"
            );
        }
        if state == "active" {
            assert!(live.insert(number.clone()), "number {number} held twice");
        }
    }
    assert!(
        live.len() >= min_live,
        "too few live leases to check: {}",
        live.len()
    );
    let (_, pools) = http(&agent, "GET", &format!("{url}/v1/pools"), Some(ADMIN), None).unwrap();
    let p = &pools["pools"][0];
    let sum = p["free"].as_u64().unwrap()
        + p["leased"].as_u64().unwrap()
        + p["cooling"].as_u64().unwrap();
    assert_eq!(sum, POOL_SIZE, "counts do not add up: {p}");
    // Small pages: the cursor crosses folded and not yet folded journal keys.
    assert_journal_holds_acknowledged_calls(&agent, url, 7, &acked.calls, &acked.ended);
}

fn load(
    urls: &[String],
    acked: &Arc<Mutex<Acked>>,
) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..4)
        .map(|c| {
            let (urls, acked, stop) = (urls.to_vec(), Arc::clone(acked), Arc::clone(&stop));
            std::thread::spawn(move || {
                client(urls, acked, stop, format!("c{c}-{}", rand::random::<u32>()))
            })
        })
        .collect();
    (stop, threads)
}

fn finish(stop: Arc<AtomicBool>, threads: Vec<std::thread::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a client saw an answer it should not have");
    }
}

#[test]
fn a_standby_takes_over_with_every_acknowledged_write_and_a_paused_leader_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = Etcd::start(dir.path()) else {
        return;
    };
    let etcd = cluster.urls.clone();
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let configs: Vec<_> = ["node-a", "node-b"]
        .iter()
        .zip(ports)
        .map(|(n, p)| node_config(dir.path(), n, p, &etcd))
        .collect();
    let mut nodes: Vec<Option<Proc>> = vec![Some(start_node(&configs[0], ports[0])), None];
    let first = leader_of(&urls, Duration::from_secs(30)).expect("a leader is elected");
    assert_eq!(first, 0);
    nodes[1] = Some(start_node(&configs[1], ports[1]));
    // The standby says who leads (once its first campaign read the leader key).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = http(
            &agent(),
            "GET",
            &format!("{}/v1/pools", urls[1]),
            Some(ADMIN),
            None,
        )
        .unwrap_or((0, Value::Null));
        if s == 503 {
            assert_eq!(v["type"], "urn:leaseline:problem:not-leader");
            let r = ureq::get(&format!("{}/readyz", urls[1])).call();
            let Err(ureq::Error::Status(503, r)) = r else {
                panic!("the standby is ready")
            };
            if r.header("leaseline-leader") == Some(urls[0].as_str()) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the standby never named the leader"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 1. kill -9 the leader under load.
    let acked = Arc::new(Mutex::new(Acked::default()));
    let (stop, threads) = load(&urls, &acked);
    std::thread::sleep(Duration::from_secs(2));
    drop(nodes[0].take());
    let killed = Instant::now();
    let next = leader_of(&urls[1..], Duration::from_secs(LEASE_TTL_SECS + 5))
        .expect("the standby serves within lease_ttl + 5 s");
    assert_eq!(next, 0);
    eprintln!("failover after kill -9: {:?}", killed.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    finish(stop, threads);
    {
        let a = acked.lock().unwrap();
        assert!(
            a.leases.len() > 10 && a.calls.len() > 5 && !a.ended.is_empty(),
            "too little load: {} leases, {} calls, {} ends",
            a.leases.len(),
            a.calls.len(),
            a.ended.len()
        );
        assert!(!a.redeemed.is_empty(), "no redeem acknowledged");
        eprintln!(
            "acknowledged: {} leases, {} releases, {} calls, {} ends, {} redeems",
            a.leases.len(),
            a.released.len(),
            a.calls.len(),
            a.ended.len(),
            a.redeemed.len()
        );
        verify(&urls[1], &a, 20);
    }

    // 2. SIGSTOP the leader (now node-b) longer than lease_ttl; node-a, restarted, takes over.
    nodes[0] = Some(start_node(&configs[0], ports[0]));
    let (stop, threads) = load(&urls, &acked);
    std::thread::sleep(Duration::from_secs(1));
    let b = nodes[1].as_ref().unwrap();
    b.signal(libc::SIGSTOP);
    let paused = Instant::now();
    assert_eq!(
        leader_of(&urls[..1], Duration::from_secs(LEASE_TTL_SECS + 5)),
        Some(0),
        "the restarted node takes over from the paused one"
    );
    while paused.elapsed() < Duration::from_secs(LEASE_TTL_SECS + 1) {
        std::thread::sleep(Duration::from_millis(100));
    }
    b.signal(libc::SIGCONT);
    // Resumed, it acknowledges nothing: writes and reads alike are 503.
    let agent = agent();
    let until = Instant::now() + Duration::from_secs(2);
    let mut answers = 0;
    while Instant::now() < until {
        let (s, v) = http(
            &agent,
            "POST",
            &format!("{}/v1/leases", urls[1]),
            Some(SITE),
            Some(&json!({"pool": "p", "session": "late"})),
        )
        .unwrap();
        assert_eq!(s, 503, "a deposed leader answered {v}");
        let (s, _) = http(
            &agent,
            "GET",
            &format!("{}/v1/pools", urls[1]),
            Some(ADMIN),
            None,
        )
        .unwrap();
        assert_eq!(s, 503);
        answers += 1;
    }
    assert!(answers > 0);
    finish(stop, threads);
    verify(&urls[0], &acked.lock().unwrap(), 20);
}

/// Allocates once on `url`: the status.
fn allocate(url: &str, session: &str, acked: &Mutex<Acked>) -> u16 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let body = json!({"pool": "p", "session": format!("{session}-{seq}")});
    match http(
        &agent(),
        "POST",
        &format!("{url}/v1/leases"),
        Some(SITE),
        Some(&body),
    ) {
        Ok((201, v)) => {
            let id = v["lease_id"].as_str().unwrap().to_owned();
            let number = v["number"].as_str().unwrap().to_owned();
            acked
                .lock()
                .unwrap()
                .leases
                .insert(id, (number, ms(&v["expires_at"])));
            201
        }
        Ok((s, v)) => {
            assert_eq!(s, 503, "{v}");
            s
        }
        Err(_) => 0,
    }
}

/// Waits until allocations on `url` answer `status`, for at most `within`.
fn until_allocations_answer(url: &str, status: u16, within: Duration, acked: &Mutex<Acked>) {
    let deadline = Instant::now() + within;
    let mut i = 0;
    while allocate(url, &format!("probe-{status}-{i}"), acked) != status {
        assert!(
            Instant::now() < deadline,
            "allocations never answered {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
        i += 1;
    }
}

#[test]
fn one_etcd_member_down_is_served_through_and_two_stop_writes_until_one_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut etcd) = Etcd::start(dir.path()) else {
        return;
    };
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = node_config(dir.path(), "node-a", port, &etcd.urls);
    let _node = start_node(&config, port);
    leader_of(std::slice::from_ref(&url), Duration::from_secs(30)).expect("a leader");
    let acked = Mutex::new(Acked::default());
    until_allocations_answer(&url, 201, Duration::from_secs(5), &acked);

    // The first member the node talks to, gone: served through the others.
    etcd.member_down(0);
    until_allocations_answer(&url, 201, Duration::from_secs(10), &acked);
    for i in 0..5 {
        assert_eq!(allocate(&url, &format!("one-down-{i}"), &acked), 201);
    }

    // A lease of one second on pool q's only number: it ends, and its number cools, while
    // no write can be made.
    let short = json!({"pool": "q", "session": "short", "ttl_secs": 1});
    let (s, v) = http(
        &agent(),
        "POST",
        &format!("{url}/v1/leases"),
        Some(SITE),
        Some(&short),
    )
    .unwrap();
    assert_eq!(s, 201, "{v}");
    let q = |url: &str| -> Value {
        let (_, pools) = http(
            &agent(),
            "GET",
            &format!("{url}/v1/pools"),
            Some(ADMIN),
            None,
        )
        .unwrap();
        pools["pools"][1].clone()
    };
    assert_eq!(q(&url)["leased"], 1);

    // Two gone: no quorum, every write refused (503), nothing acknowledged.
    etcd.member_down(1);
    until_allocations_answer(&url, 503, Duration::from_secs(LEASE_TTL_SECS + 5), &acked);
    let refused = Instant::now();
    while refused.elapsed() < Duration::from_secs(2) {
        assert_eq!(allocate(&url, "no-quorum", &acked), 503);
    }

    // One back: service resumes by itself, with everything acknowledged before.
    etcd.member_up(1);
    etcd.wait_answering(1);
    until_allocations_answer(&url, 201, Duration::from_secs(LEASE_TTL_SECS + 20), &acked);
    // The deadlines that fell due meanwhile fired when the node led again (the expiry, then
    // the end of the quarantine): the number is free.
    let pool = q(&url);
    assert_eq!(pool["name"], "q");
    assert_eq!(
        (
            pool["free"].as_u64(),
            pool["leased"].as_u64(),
            pool["cooling"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{pool}"
    );
    verify(&url, &acked.lock().unwrap(), 5);
}

//! Crash torture through the real binary: clients allocate, renew, release, start and end calls
//! concurrently and log every acknowledged answer; the server is SIGKILLed at a random moment,
//! restarted, and checked: every acknowledged write is there, no number is held twice, counts
//! add up, no call is attributed twice, and after the last cycle every lease ends on time.
//! `LEASELINE_CRASH_CYCLES` sets the number of cycles (default 50). Also: SIGTERM drains
//! in-flight requests, flushes and exits 0.

mod common;

use std::collections::{HashMap, HashSet};

use common::receiver::{verify as verify_signature, Receiver};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use rand::Rng;
use serde_json::{json, Value};

const POOL_SIZE: u64 = 300;
const CLIENTS: usize = 6;
/// Short leases, so expiries and quarantines happen during the torture.
const TTL_SECS: u64 = 4;

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    write_config_with(dir, "")
}

/// The torture's config, then `extra` (sections after the pool).
fn write_config_with(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    // The first two lines go to [server]: a snapshot every 100 changes under this load, so
    // kills land before, during and after compactions.
    binary_config(
        dir,
        &format!(
            r#"snapshot_after_changes = 100
snapshot_min_interval = "0s"

[lease]
ttl = "{TTL_SECS}s"
max_ttl = "30s"
grace = "1s"
quarantine = "2s"
retention = "1h"

[[pool]]
name = "p"
numbers = ["+33899100000..=+33899100299"]
{extra}"#
        ),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ms(rfc3339: &Value) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .timestamp_millis() as u64
}

/// What clients were told, across all cycles.
#[derive(Default)]
struct Acked {
    /// lease id -> (number, latest acknowledged expires_at in ms)
    leases: HashMap<String, (String, u64)>,
    released: HashSet<String>,
    /// call id -> lease id it was attributed to (or "" if none)
    calls: HashMap<String, String>,
    ended: HashSet<String>,
    ops: u64,
}

fn client(url: String, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>, tag: String) {
    let agent = agent();
    let mut rng = rand::thread_rng();
    let mut mine: Vec<(String, String)> = Vec::new();
    let mut calls: Vec<String> = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let roll: u8 = rng.gen_range(0..10);
        let res = match (roll, mine.last().cloned()) {
            (0..=3, _) | (_, None) => http(
                &agent,
                "POST",
                &format!("{url}/v1/leases"),
                Some(SITE),
                Some(&json!({"pool": "p", "session": format!("{tag}-{i}")})),
            )
            .map(|(s, v)| {
                if s == 201 {
                    let id = v["lease_id"].as_str().unwrap().to_owned();
                    let number = v["number"].as_str().unwrap().to_owned();
                    let mut a = acked.lock().unwrap();
                    a.leases
                        .insert(id.clone(), (number.clone(), ms(&v["expires_at"])));
                    a.ops += 1;
                    mine.push((id, number));
                } else {
                    assert!(s == 503, "allocate: {s} {v}");
                }
            }),
            // With the site's key, as its server would: renewals without one are rate-limited
            // per address, and all these clients share 127.0.0.1.
            (4, Some((id, _))) => http(
                &agent,
                "POST",
                &format!("{url}/v1/leases/{id}/renew"),
                Some(SITE),
                None,
            )
            .map(|(s, v)| {
                if s == 200 {
                    let mut a = acked.lock().unwrap();
                    let e = a.leases.get_mut(&id).unwrap();
                    e.1 = e.1.max(ms(&v["expires_at"]));
                    a.ops += 1;
                } else {
                    assert_eq!(s, 410, "renew: {v}");
                }
            }),
            (5, Some((id, _))) => http(
                &agent,
                "DELETE",
                &format!("{url}/v1/leases/{id}"),
                Some(SITE),
                None,
            )
            .map(|(s, _)| {
                assert_eq!(s, 204);
                let mut a = acked.lock().unwrap();
                a.released.insert(id.clone());
                a.ops += 1;
            }),
            (6..=7, Some((_, number))) => {
                let call = format!("{tag}-call-{i}");
                http(&agent, "POST", &format!("{url}/v1/calls"), Some(TELEPHONY), Some(&json!({"call_id": call, "event": "start", "called": number, "caller": "+33612345678"})))
                    .map(|(s, v)| {
                        assert_eq!(s, 200, "call start: {v}");
                        let mut a = acked.lock().unwrap();
                        a.calls.insert(call.clone(), v["lease_id"].as_str().unwrap_or("").to_owned());
                        a.ops += 1;
                        calls.push(call);
                    })
            }
            (_, Some(_)) => match calls.pop() {
                Some(call) => http(
                    &agent,
                    "POST",
                    &format!("{url}/v1/calls"),
                    Some(TELEPHONY),
                    Some(&json!({"call_id": call, "event": "end", "duration_secs": 7})),
                )
                .map(|(s, v)| {
                    assert!(s == 200 || s == 404, "call end: {s} {v}");
                    if s == 200 {
                        let mut a = acked.lock().unwrap();
                        a.ended.insert(call.clone());
                        a.ops += 1;
                    }
                }),
                None => Ok(()),
            },
        };
        if res.is_err() {
            return; // the server is gone
        }
    }
}

/// Every acknowledged write is there, nothing is held twice, counts add up, each call once.
fn verify(server: &Server, acked: &Acked) {
    let agent = agent();
    let now = now_ms();
    let mut active: HashSet<String> = HashSet::new();
    let mut calls_per_lease: HashMap<String, u64> = HashMap::new();
    for lease in acked.calls.values().filter(|l| !l.is_empty()) {
        *calls_per_lease.entry(lease.clone()).or_default() += 1;
    }
    for (id, (number, expires)) in &acked.leases {
        let (status, v) = http(
            &agent,
            "GET",
            &server.url(&format!("/v1/leases/{id}")),
            None,
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "acknowledged lease {id} lost: {v}");
        assert_eq!(v["number"].as_str().unwrap(), number);
        assert!(
            ms(&v["expires_at"]) >= *expires,
            "acknowledged renewal of {id} lost"
        );
        let state = v["state"].as_str().unwrap();
        if acked.released.contains(id) {
            assert_eq!(state, "released", "acknowledged release of {id} lost");
        }
        if state == "active" {
            assert!(ms(&v["expires_at"]) > now.saturating_sub(1000));
            assert!(
                active.insert(number.clone()),
                "number {number} held by two live leases"
            );
        }
        // No call counted twice: calls were counted at their start (min_call_secs 0).
        let counted = v["calls"].as_u64().unwrap();
        let acked_calls = calls_per_lease.get(id).copied().unwrap_or(0);
        assert!(
            counted >= acked_calls,
            "lease {id}: {counted} calls counted, {acked_calls} acknowledged"
        );
    }
    let (_, pools) = http(&agent, "GET", &server.url("/v1/pools"), Some(ADMIN), None).unwrap();
    let p = &pools["pools"][0];
    let sum = p["free"].as_u64().unwrap()
        + p["leased"].as_u64().unwrap()
        + p["cooling"].as_u64().unwrap();
    assert_eq!(sum, POOL_SIZE, "counts do not add up: {p}");
    // The journal holds each acknowledged call exactly once.
    assert_journal_holds_acknowledged_calls(
        &agent,
        &server.url(""),
        1000,
        &acked.calls,
        &acked.ended,
    );
}

#[test]
fn acknowledged_writes_survive_repeated_kill_9() {
    let cycles: usize = std::env::var("LEASELINE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut rng = rand::thread_rng();
    for cycle in 0..cycles {
        let server = Server::start(&config);
        verify(&server, &acked.lock().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (url, acked, stop) = (server.url(""), Arc::clone(&acked), Arc::clone(&stop));
                let tag = format!("c{cycle}-{c}");
                std::thread::spawn(move || client(url, acked, stop, tag))
            })
            .collect();
        // SIGKILL at a random moment of the load.
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..300)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
    }
    let server = Server::start(&config);
    let acked = acked.lock().unwrap();
    verify(&server, &acked);
    // Every lease ends on time: once the last acknowledged deadline plus quarantine has
    // passed, the wheel frees every number within a tick (and a little scheduling slack).
    let last = acked.leases.values().map(|(_, e)| *e).max().unwrap_or(0);
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, pools) = http(&agent, "GET", &server.url("/v1/pools"), Some(ADMIN), None).unwrap();
        let p = &pools["pools"][0];
        if p["leased"] == 0 && p["cooling"] == 0 {
            // Unacknowledged allocations may have survived too (crash after the flush, before
            // the answer), so the bound is on the last deadline of any lease: 30 s max_ttl.
            let late = now_ms().saturating_sub(last + 2_000);
            assert!(
                late < 35_000,
                "numbers freed {late} ms after the last acknowledged quarantine"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leases outlived their deadlines: {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{cycles} kill -9 cycles; checked {} acknowledged operations ({} leases, {} releases, {} calls, {} call ends)",
        acked.ops,
        acked.leases.len(),
        acked.released.len(),
        acked.calls.len(),
        acked.ended.len()
    );
    assert!(
        acked.ops as usize > cycles * 5,
        "too few operations to mean anything"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_flushes_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut server = Server::start(&config);
    let url = server.url("/v1/leases");
    let workers: Vec<_> = (0..20)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                http(
                    &agent(),
                    "POST",
                    &url,
                    Some(SITE),
                    Some(&json!({"pool": "p", "session": format!("t{i}")})),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(5));
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut ids = Vec::new();
    for w in workers {
        // A request either was answered in full, or never got in (connection refused).
        if let Ok((status, v)) = w.join().unwrap() {
            assert_eq!(status, 201, "{v}");
            ids.push(v["lease_id"].as_str().unwrap().to_owned());
        }
    }
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "SIGTERM exits 0, got {exit}");
    drop(server);
    let server = Server::start(&config);
    for id in &ids {
        let (status, _) = http(
            &agent(),
            "GET",
            &server.url(&format!("/v1/leases/{id}")),
            None,
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "lease {id} answered before SIGTERM was lost");
    }
}

/// Webhooks across kill -9: a receiver runs through every cycle; after the last restart,
/// every acknowledged release and attributed call start has reached it at least once, and
/// nothing it got describes a change the store does not hold. Bounded for CI:
/// `LEASELINE_WEBHOOK_CRASH_CYCLES` (default 6).
#[test]
fn webhook_events_of_acknowledged_changes_survive_kill_9() {
    const SECRET: &str = "whsec_crash_0123456789";
    let cycles: usize = std::env::var("LEASELINE_WEBHOOK_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let receiver = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        &format!(
            "\n[[webhook]]\nname = \"shop\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"lease.released\", \"call.started\"]\nbackoff = \"100ms\"\ntimeout = \"2s\"\n",
            receiver.url()
        ),
    );
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut rng = rand::thread_rng();
    for cycle in 0..cycles {
        let server = Server::start(&config);
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (url, acked, stop) = (server.url(""), Arc::clone(&acked), Arc::clone(&stop));
                let tag = format!("w{cycle}-{c}");
                std::thread::spawn(move || client(url, acked, stop, tag))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..400)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
    }
    let server = Server::start(&config);
    let acked = acked.lock().unwrap();
    let agent = agent();
    let state = |id: &str| {
        let (status, v) = http(
            &agent,
            "GET",
            &server.url(&format!("/v1/leases/{id}")),
            None,
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "lease {id}: {v}");
        v["state"].as_str().unwrap().to_owned()
    };
    let released: HashSet<String> = acked
        .released
        .iter()
        .filter(|id| state(id) == "released")
        .cloned()
        .collect();
    let started: HashMap<String, String> = acked
        .calls
        .iter()
        .filter(|(_, lease)| !lease.is_empty())
        .map(|(c, l)| (c.clone(), l.clone()))
        .collect();
    assert!(
        released.len() + started.len() > cycles,
        "too little happened to mean anything"
    );
    // Every event of every acknowledged change arrives (retries carry on after the restart).
    let events = || -> Vec<Value> {
        receiver
            .accepted()
            .iter()
            .map(|r| {
                verify_signature(SECRET, r).unwrap();
                r.json()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = events();
        let got_released: HashSet<&str> = got
            .iter()
            .filter(|e| e["type"] == "lease.released")
            .map(|e| e["data"]["lease_id"].as_str().unwrap())
            .collect();
        let got_started: HashSet<&str> = got
            .iter()
            .filter(|e| e["type"] == "call.started")
            .map(|e| e["data"]["call_id"].as_str().unwrap())
            .collect();
        let missing = released
            .iter()
            .filter(|l| !got_released.contains(l.as_str()))
            .count()
            + started
                .keys()
                .filter(|c| !got_started.contains(c.as_str()))
                .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged events never arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // None invented: every event describes what the store holds after the crashes (changes
    // made durable but unanswered may have events too: they are in the store as well).
    let mut journal: HashMap<String, String> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/calls?limit=1000".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (_, page) = http(&agent, "GET", &server.url(&path), Some(ADMIN), None).unwrap();
        for c in page["calls"].as_array().unwrap() {
            journal.insert(
                c["call_id"].as_str().unwrap().to_owned(),
                c["lease_id"].as_str().unwrap_or("").to_owned(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut ids: HashMap<String, Value> = HashMap::new();
    for e in events() {
        let data = &e["data"];
        match e["type"].as_str().unwrap() {
            "lease.released" => {
                let id = data["lease_id"].as_str().unwrap();
                assert_eq!(
                    state(id),
                    "released",
                    "an event for a release the store lost: {e}"
                );
            }
            "call.started" => {
                let call = data["call_id"].as_str().unwrap();
                assert_eq!(
                    journal.get(call).map(String::as_str),
                    data["lease_id"].as_str(),
                    "an event for a call the store does not hold so: {e}"
                );
            }
            other => panic!("not subscribed: {other}"),
        }
        let id = e["id"].as_str().unwrap().to_owned();
        if let Some(before) = ids.insert(id, e.clone()) {
            assert_eq!(before, e, "one id, two events");
        }
    }
    eprintln!(
        "{cycles} kill -9 cycles with a receiver: {} releases and {} call starts acknowledged, {} events received ({} distinct)",
        released.len(),
        started.len(),
        receiver.accepted().len(),
        ids.len()
    );
}

//! Kill -9 in the middle of concurrent allocations and releases, restart, and check that every
//! acknowledged write survived and no number is held twice. Runs the real binary.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const POOL_SIZE: usize = 200;
const CLIENTS: usize = 8;
const CYCLES: usize = 3;

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data}"
log_format = "json"

[lease]
ttl = "1h"
max_ttl = "2h"
grace = "1m"
quarantine = "1h"

[[pool]]
name = "p"
numbers = ["+33899100000..=+33899100199"]

[[key]]
name = "site"
role = "site"
sha256 = "{site}"

[[key]]
name = "admin"
role = "admin"
sha256 = "{admin}"
"#,
        data = dir.join("data").display(),
        site = sha(SITE),
        admin = sha(ADMIN),
    );
    let path = dir.join("pool.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[derive(Default)]
struct Acked {
    /// lease id -> number, for every 201 received.
    leases: HashMap<String, String>,
    /// lease ids whose release got a 204.
    released: HashSet<String>,
}

/// Drives allocations (and a release every few) from several clients until `stop`.
fn load(
    server: &Server,
    acked: &Arc<Mutex<Acked>>,
    stop: &Arc<AtomicBool>,
    cycle: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|c| {
            let url = server.url("/v1/leases");
            let acked = Arc::clone(acked);
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let agent = agent();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let body = json!({"pool": "p", "session": format!("c{cycle}-{c}-{i}")});
                    let Ok((status, v)) = http(&agent, "POST", &url, Some(SITE), Some(&body))
                    else {
                        return;
                    };
                    match status {
                        201 => {
                            let id = v["lease_id"].as_str().unwrap().to_owned();
                            acked
                                .lock()
                                .unwrap()
                                .leases
                                .insert(id.clone(), v["number"].as_str().unwrap().to_owned());
                            if i % 3 == 0 {
                                let Ok((s, _)) = http(
                                    &agent,
                                    "DELETE",
                                    &format!("{url}/{id}"),
                                    Some(SITE),
                                    None,
                                ) else {
                                    return;
                                };
                                if s == 204 {
                                    acked.lock().unwrap().released.insert(id);
                                }
                            }
                        }
                        503 => std::thread::sleep(Duration::from_millis(5)),
                        other => panic!("unexpected status {other}: {v}"),
                    }
                }
            })
        })
        .collect()
}

fn verify(server: &Server, acked: &Acked) {
    let agent = agent();
    let mut active_numbers = HashSet::new();
    for (id, number) in &acked.leases {
        let (status, v) = http(
            &agent,
            "GET",
            &server.url(&format!("/v1/leases/{id}")),
            None,
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "acknowledged lease {id} lost: {v}");
        assert_eq!(
            v["number"].as_str().unwrap(),
            number,
            "lease {id} changed number"
        );
        let state = v["state"].as_str().unwrap();
        if acked.released.contains(id) {
            assert_eq!(state, "released", "acknowledged release of {id} lost");
        }
        if state == "active" {
            assert!(
                active_numbers.insert(number.clone()),
                "number {number} held by two active leases"
            );
        }
    }
    let (_, pools) = http(&agent, "GET", &server.url("/v1/pools"), Some(ADMIN), None).unwrap();
    let p = &pools["pools"][0];
    let sum = p["free"].as_u64().unwrap()
        + p["leased"].as_u64().unwrap()
        + p["cooling"].as_u64().unwrap();
    assert_eq!(sum, POOL_SIZE as u64, "counts do not add up: {p}");
    assert!(p["leased"].as_u64().unwrap() >= active_numbers.len() as u64);
}

#[test]
fn acknowledged_leases_survive_kill_9_and_no_number_is_leased_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let acked = Arc::new(Mutex::new(Acked::default()));
    let total_acks = AtomicUsize::new(0);
    for cycle in 0..CYCLES {
        let server = Server::start(&config);
        verify(&server, &acked.lock().unwrap());
        let before = acked.lock().unwrap().leases.len();
        let stop = Arc::new(AtomicBool::new(false));
        let workers = load(&server, &acked, &stop, cycle);
        // Kill once this cycle has had some acknowledgements, mid-stream.
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.lock().unwrap().leases.len() < before + 40 && Instant::now() < deadline {
            std::thread::yield_now();
            std::thread::sleep(Duration::from_millis(2));
        }
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        let after = acked.lock().unwrap().leases.len();
        assert!(
            after > before,
            "no allocation acknowledged in cycle {cycle}"
        );
        total_acks.fetch_add(after - before, Ordering::Relaxed);
    }
    let server = Server::start(&config);
    let acked = acked.lock().unwrap();
    verify(&server, &acked);
    // New allocations never reuse a number held by a surviving active lease.
    let agent = agent();
    let mut held: HashSet<String> = HashSet::new();
    for (id, number) in acked.leases.iter() {
        let (_, v) = http(
            &agent,
            "GET",
            &server.url(&format!("/v1/leases/{id}")),
            None,
            None,
        )
        .unwrap();
        if v["state"] == "active" {
            held.insert(number.clone());
        }
    }
    for i in 0..10 {
        let (status, v): (u16, Value) = http(
            &agent,
            "POST",
            &server.url("/v1/leases"),
            Some(SITE),
            Some(&json!({"pool": "p", "session": format!("after-{i}")})),
        )
        .unwrap();
        if status == 201 {
            assert!(
                !held.contains(v["number"].as_str().unwrap()),
                "restart handed out a held number"
            );
        }
    }
    eprintln!(
        "checked {} acknowledged leases, {} releases",
        acked.leases.len(),
        acked.released.len()
    );
}

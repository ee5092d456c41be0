//! Runtime reload, from outside, on the real binary: `POST /v1/admin/reload` and `SIGHUP`
//! re-read pool.toml. New numbers, pools and keys serve at once (under load, losing no lease);
//! a removed number finishes its lease, across a restart too, and is never leased again; a
//! broken file, or a change the state forbids, is refused with the reason and nothing changes.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

const LATE: &str = "late-site-key";
const SCOPED_ADMIN: &str = "scoped-admin-key";

/// pool.toml for the binary: pool "fr" with `fr` numbers from +33899100000, then `more`.
fn write(dir: &Path, fr: u32, more: &str) -> std::path::PathBuf {
    let last = 33_899_100_000u64 + u64::from(fr) - 1;
    write_numbers(dir, &format!("\"+33899100000..=+{last}\""), more)
}

/// As [`write`], with pool "fr"'s numbers as written in the file.
fn write_numbers(dir: &Path, numbers: &str, more: &str) -> std::path::PathBuf {
    let body = format!(
        "[lease]\nttl = \"15m\"\nmax_ttl = \"2h\"\ngrace = \"5m\"\nquarantine = \"10m\"\n\n\
         [[pool]]\nname = \"fr\"\nnumbers = [{numbers}]\n{more}\n{}",
        key("scoped-admin", "admin", SCOPED_ADMIN) + "pools = [\"fr\"]\n"
    );
    binary_config(dir, &body)
}

fn allocate(s: &Server, key: &str, pool: &str, session: &str) -> (u16, Value) {
    s.post(
        "/v1/leases",
        Some(key),
        &json!({"pool": pool, "session": session, "target": "+33612345678"}),
    )
}

fn reload(s: &Server, key: Option<&str>) -> (u16, Value) {
    s.post("/v1/admin/reload", key, &json!({}))
}

fn lookup(s: &Server, number: &str) -> Value {
    let q = format!("/v1/attribution?called={}", number.replace('+', "%2B"));
    let (status, v) = s.get(&q, Some(TELEPHONY));
    assert_eq!(status, 200, "{v}");
    v
}

fn pool<'a>(pools: &'a Value, name: &str) -> &'a Value {
    pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {pools}"))
}

/// The value of a sample line of /metrics (`name{labels}`), 0 if absent.
fn metric(s: &Server, sample: &str) -> f64 {
    let text = ureq::get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn numbers_pools_and_keys_added_under_load_serve_at_once_and_no_lease_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), 40, "");
    let server = Arc::new(Server::start(&config));
    // Four clients allocate without pause while the pool grows.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut i = 0;
                let mut after = 0;
                while after < 15 {
                    after += usize::from(stop.load(Ordering::Relaxed));
                    let (status, v) = allocate(&server, SITE, "fr", &format!("c{c}-{i}"));
                    match status {
                        201 => got.push(v),
                        503 => assert_eq!(v["type"], "urn:leaseline:problem:pool-exhausted"),
                        _ => panic!("{status} {v}"),
                    }
                    i += 1;
                }
                got
            })
        })
        .collect();
    // The reload comes once the first 40 are all taken.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.get("/v1/pools", Some(ADMIN)).1["pools"][0]["free"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never filled"
        );
    }
    let more = format!(
        "\n[[pool]]\nname = \"be\"\nnumbers = [\"+32900000000\"]\n{}",
        key("late", "site", LATE)
    );
    write(dir.path(), 400, &more);
    let (status, report) = reload(&server, Some(ADMIN));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["pools_added"], json!(["be"]));
    assert_eq!(
        report["numbers"],
        json!([{"pool": "fr", "added": 360, "retired": 0}, {"pool": "be", "added": 1, "retired": 0}])
    );
    assert_eq!(report["needs_restart"], json!([]));
    stop.store(true, Ordering::Relaxed);
    let leases: Vec<Value> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(leases.len() >= 100, "40 before, 60 after: {}", leases.len());

    // Every acknowledged lease is there, each on a number of its own.
    let mut numbers = HashSet::new();
    for l in &leases {
        let (status, shown) = server.get(
            &format!("/v1/leases/{}", l["lease_id"].as_str().unwrap()),
            None,
        );
        assert_eq!(status, 200, "{shown}");
        assert_eq!(shown["state"], "active");
        assert!(numbers.insert(l["number"].as_str().unwrap().to_owned()));
    }
    let (_, pools) = server.get("/v1/pools", Some(ADMIN));
    assert_eq!(pool(&pools, "fr")["size"], 400);
    assert_eq!(pool(&pools, "fr")["leased"], leases.len());

    // The new key and the new pool work at once.
    let (status, v) = allocate(&server, LATE, "be", "late-1");
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["number"], "+32900000000");
    assert_eq!(
        metric(&server, "leaseline_config_reloads_total{outcome=\"ok\"}"),
        1.0
    );
}

#[test]
fn a_removed_number_finishes_its_lease_across_a_restart_and_is_never_leased_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), 2, "");
    let server = Server::start(&config);
    let (_, held) = allocate(&server, SITE, "fr", "s1");
    assert_eq!(held["number"], "+33899100000");

    // Both numbers leave the file; another comes.
    write_numbers(dir.path(), "\"+33899100002\"", "");
    let (status, report) = reload(&server, Some(ADMIN));
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["numbers"],
        json!([{"pool": "fr", "added": 1, "retired": 2}])
    );

    // The lease keeps its number and its calls; the removed free number is gone.
    let id = held["lease_id"].as_str().unwrap();
    let (status, shown) = server.get(&format!("/v1/leases/{id}"), None);
    assert_eq!((status, &shown["state"]), (200, &json!("active")));
    assert_eq!(lookup(&server, "+33899100000")["lease_id"], id);
    let (_, pools) = server.get("/v1/pools", Some(ADMIN));
    assert_eq!(
        pool(&pools, "fr")["size"],
        2,
        "the new number and the held one"
    );
    let (status, other) = allocate(&server, SITE, "fr", "s2");
    assert_eq!((status, &other["number"]), (201, &json!("+33899100002")));
    let (status, _) = allocate(&server, SITE, "fr", "s3");
    assert_eq!(status, 503, "the removed numbers are not leased");

    // Restarted on the new file, the lease still holds its number.
    server.kill9();
    let server = Server::start(&config);
    assert_eq!(lookup(&server, "+33899100000")["lease_id"], id);
    let (_, pools) = server.get("/v1/pools", Some(ADMIN));
    assert_eq!(pool(&pools, "fr")["leased"], 2);
    let (status, _) = allocate(&server, SITE, "fr", "s4");
    assert_eq!(status, 503, "still not leased after a restart");
}

#[test]
fn a_broken_file_or_a_forbidden_change_is_refused_and_the_running_configuration_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), 2, "");
    let good = std::fs::read_to_string(&config).unwrap();
    let server = Server::start(&config);
    let (_, held) = allocate(&server, SITE, "fr", "s1");

    std::fs::write(&config, good.replace("[[pool]]", "[[pool]")).unwrap();
    let (status, v) = reload(&server, Some(ADMIN));
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["type"], "urn:leaseline:problem:reload-refused");
    assert!(v["detail"].as_str().unwrap().contains("pool.toml"), "{v}");

    // The held number moved to another pool: refused, the lease may still run in the first.
    let moved = good.replace("+33899100000..=+33899100001", "+33899100001")
        + "\n[[pool]]\nname = \"be\"\nnumbers = [\"+33899100000\"]\n";
    std::fs::write(&config, moved).unwrap();
    let (status, v) = reload(&server, Some(ADMIN));
    assert_eq!(status, 422, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("between pools"),
        "{v}"
    );

    // Nothing changed: the lease, the pool, the keys.
    assert_eq!(
        lookup(&server, "+33899100000")["lease_id"],
        held["lease_id"]
    );
    let (_, pools) = server.get("/v1/pools", Some(ADMIN));
    assert_eq!(pools["pools"].as_array().unwrap().len(), 1);
    let (status, _) = allocate(&server, SITE, "fr", "s2");
    assert_eq!(status, 201);
    assert_eq!(
        metric(
            &server,
            "leaseline_config_reloads_total{outcome=\"refused\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(&server, "leaseline_config_reloads_total{outcome=\"ok\"}"),
        0.0
    );
}

#[test]
fn only_an_admin_key_for_every_pool_may_reload() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write(dir.path(), 2, ""));
    assert_eq!(reload(&server, None).0, 401);
    let (status, v) = reload(&server, Some(SITE));
    assert_eq!(status, 403, "{v}");
    let (status, v) = reload(&server, Some(SCOPED_ADMIN));
    assert_eq!(status, 403, "{v}");
    assert!(v["detail"]
        .as_str()
        .unwrap()
        .contains("not limited to pools"));
    assert_eq!(
        metric(&server, "leaseline_config_reloads_total{outcome=\"ok\"}"),
        0.0
    );
}

#[test]
fn sighup_reloads_and_a_removed_key_stops_working_on_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let more = key("late", "site", LATE);
    let config = write(dir.path(), 2, &more);
    let server = Server::start(&config);
    // One keep-alive connection, opened before the reload.
    let agent = agent();
    let url = server.url("/v1/leases");
    let body = json!({"pool": "fr", "session": "k1", "target": "+33612345678"});
    let (status, _) = http(&agent, "POST", &url, Some(LATE), Some(&body)).unwrap();
    assert_eq!(status, 201);

    write(dir.path(), 2, "");
    let pid = server.child.id().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    // The reload happens on the server's own time: wait for its metric, not a fixed sleep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while metric(&server, "leaseline_config_reloads_total{outcome=\"ok\"}") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload after SIGHUP"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let body = json!({"pool": "fr", "session": "k2", "target": "+33612345678"});
    let (status, v) = http(&agent, "POST", &url, Some(LATE), Some(&body)).unwrap();
    assert_eq!(status, 401, "a removed key is refused at once: {v}");
    let (status, _) = allocate(&server, SITE, "fr", "k3");
    assert_eq!(status, 201, "the process is still serving");
}

#[test]
fn a_changed_webhook_is_reported_as_needing_a_restart_not_as_applied() {
    let dir = tempfile::tempdir().unwrap();
    let hook = |tenant: &str| {
        format!(
            "[[webhook]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/hook\"\n\
             secret = \"whsec_0123456789abcdef\"\nevents = [\"lease.released\"]\n{tenant}\n"
        )
    };
    let config = write(dir.path(), 2, &hook(""));
    let server = Server::start(&config);
    let (status, report) = reload(&server, Some(ADMIN));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["needs_restart"], json!([]), "nothing changed");

    // The operator narrows the endpoint to one tenant: its lane, built at start, still sends
    // every tenant's events, so the reload must not read as if that took effect.
    write(dir.path(), 2, &hook("tenant = \"site\""));
    let (status, report) = reload(&server, Some(ADMIN));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["needs_restart"], json!(["webhook"]), "{report}");
}

#[test]
fn a_file_swapped_for_a_device_or_a_fifo_is_refused_without_holding_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), 2, "");
    let server = Server::start(&config);

    // A symbolic link to /dev/zero used to be read until memory ran out, with the reload
    // task (and every later reload) stuck behind it.
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    let (status, v) = reload(&server, Some(ADMIN));
    assert_eq!(status, 422, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("not a regular file"),
        "{v}"
    );

    // A FIFO blocked the open until someone wrote to it.
    std::fs::remove_file(&config).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&config)
        .status()
        .unwrap();
    assert!(made.success());
    let (status, v) = reload(&server, Some(ADMIN));
    assert_eq!(status, 422, "{v}");

    // The good file back: reloads work again, and the server never stopped serving.
    std::fs::remove_file(&config).unwrap();
    write(dir.path(), 3, "");
    let (status, v) = reload(&server, Some(ADMIN));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["numbers"],
        json!([{"pool": "fr", "added": 1, "retired": 0}])
    );
    let (status, _) = allocate(&server, SITE, "fr", "s1");
    assert_eq!(status, 201);
}

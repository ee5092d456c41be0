//! Upgrading in place from store format 2: the data folder the last format-2 build (7d8a755)
//! wrote (`tests/fixtures/upgrade/format-2.*`: its sled files as `make-format-2.sh` packed
//! them, and the manifest of what it held and answered; the config is release 1's `pool.toml`,
//! which that build served) opens with this build, which moves every state record into its log,
//! and every lease, call, return route, listing target, ticketing progress, ticket and pass is
//! served as that build left it, also from a snapshot after a clean stop; every deadline
//! fires; and a migration interrupted midway is carried on at the next open.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use leaseline::clock::Clock;
use leaseline::core::Timestamp;
use serde_json::{json, Value};

const POOL: &str = "fr-classifieds";
const SHARED: &str = "+33899199999";
const FALLBACK: &str = "+33100000000";
const TICKETING: &str = "+33897100000";
const TYPED_CALLER: &str = "+33633000002";
const RETURNING: &str = "+33644000001";
const HALFWAY: &str = "+33655000001";
const LEASES: [&str; 5] = ["paid", "progress", "released", "plain", "code"];

struct Fixture {
    tarball: PathBuf,
    config: String,
    manifest: Value,
}

/// Committed with the tests; missing, every test here fails (it must never be skipped).
fn fixture() -> Fixture {
    let dir = repo("tests/fixtures/upgrade");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
            panic!(
                "the upgrade fixture {} cannot be read ({e}); it is committed in \
                 tests/fixtures/upgrade (see its README)",
                dir.join(name).display()
            )
        })
    };
    let tarball = dir.join("format-2.tar.gz");
    assert!(tarball.is_file(), "{} is missing", tarball.display());
    let manifest: Value = serde_json::from_str(&read("format-2.json")).unwrap();
    assert_eq!(
        manifest["release"], "7d8a7557984ab9b27a9a2a1997f5dd2df3de529c",
        "the fixture must have been written by the last format-2 build"
    );
    Fixture {
        tarball,
        config: read("pool.toml"),
        manifest,
    }
}

impl Fixture {
    fn unpack(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(&self.tarball)
            .arg("-C")
            .arg(dir.path())
            .status()
            .expect("tar runs");
        assert!(status.success());
        let db = sled::open(dir.path().join("data")).unwrap();
        assert_eq!(
            db.get("Mformat").unwrap().as_deref(),
            Some(&b"leaseline-store-2"[..]),
            "the fixture holds store format 2"
        );
        drop(db);
        std::fs::write(dir.path().join("pool.toml"), &self.config).unwrap();
        dir
    }

    /// Opens `dir` with this build, the clock 5 s after the old build stopped.
    async fn open_dir(&self, dir: tempfile::TempDir) -> TestApp {
        let config = self.config.clone();
        let start = self.made_at().saturating_add(Duration::from_secs(5));
        TestApp::in_dir_at(dir, start, |_| config).await
    }

    async fn open(&self) -> TestApp {
        self.open_dir(self.unpack()).await
    }

    fn made_at(&self) -> Timestamp {
        Timestamp::from_millis(self.manifest["made_at_ms"].as_u64().unwrap())
    }

    fn lease(&self, name: &str) -> &Value {
        let l = &self.manifest["leases"][name];
        assert!(l.is_object(), "no lease {name} in the manifest");
        l
    }

    fn id(&self, name: &str) -> String {
        self.lease(name)["lease_id"].as_str().unwrap().to_owned()
    }

    fn number(&self, name: &str) -> String {
        self.lease(name)["number"].as_str().unwrap().to_owned()
    }

    fn ticket(&self, which: &str) -> String {
        self.manifest["ticketing"][which]["code"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn journal(&self) -> &[Value] {
        self.manifest["journal"].as_array().unwrap()
    }
}

/// Every field the old build answered is answered alike now (new fields may appear).
fn assert_keeps(what: &str, old: &Value, new: &Value) {
    let old = old.as_object().unwrap_or_else(|| panic!("{what}: {old}"));
    for (field, was) in old {
        let is = &new[field];
        let same = match (was.as_f64(), is.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => was == is,
        };
        assert!(
            same,
            "{what}: `{field}` was {was} under 7d8a755, is {is} now; whole answer: {new}"
        );
    }
}

async fn get(app: &TestApp, path: &str, key: &str) -> Reply {
    app.call("GET", path, Some(key), None).await
}

async fn lease(app: &TestApp, id: &str) -> Reply {
    get(app, &format!("/v1/leases/{id}"), SITE).await
}

async fn start(app: &TestApp, id: &str, called: &str, caller: &str, code: Option<&str>) -> Value {
    let mut body = json!({"call_id": id, "event": "start", "called": called, "caller": caller});
    if let Some(c) = code {
        body["code"] = json!(c);
    }
    call_event(app, body).await
}

async fn end(app: &TestApp, id: &str, secs: u32) -> Value {
    call_event(
        app,
        json!({"call_id": id, "event": "end", "duration_secs": secs}),
    )
    .await
}

async fn call_event(app: &TestApp, body: Value) -> Value {
    let text = body.to_string();
    let r = app
        .call("POST", "/v1/calls", Some(TELEPHONY), Some(&text))
        .await;
    assert_eq!(r.status, 200, "{text}: {}", r.text);
    r.json
}

async fn redeem_ticket(app: &TestApp, code: &str, client: &str) -> Reply {
    let body = json!({"code": code, "client": client}).to_string();
    app.call("POST", "/v1/tickets/redeem", Some(SITE), Some(&body))
        .await
}

async fn pools(app: &TestApp) -> Vec<Value> {
    let r = get(app, "/v1/pools", ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["pools"].as_array().unwrap().clone()
}

/// Everything the old build held, read through this build: every lease with every field,
/// the pools' counts, both passes, the whole journal.
async fn assert_served_as_left(app: &TestApp, fx: &Fixture, when: &str) {
    for name in LEASES {
        let r = lease(app, &fx.id(name)).await;
        assert_eq!(r.status, 200, "{when}: lease {name}: {}", r.text);
        assert_keeps(&format!("{when}: lease {name}"), fx.lease(name), &r.json);
    }
    let was = fx.manifest["pools"]["pools"].as_array().unwrap();
    let is = pools(app).await;
    assert_eq!(was.len(), is.len());
    for (was, is) in was.iter().zip(&is) {
        assert_keeps(&format!("{when}: pool"), was, is);
    }
    for which in ["lease", "ticket"] {
        let pass = &fx.manifest["passes"][which];
        let r = get(
            app,
            &format!("/v1/passes/{}", pass["pass_id"].as_str().unwrap()),
            SITE,
        )
        .await;
        assert_eq!(r.status, 200, "{when}: pass of the {which}: {}", r.text);
        assert_keeps(&format!("{when}: pass of the {which}"), pass, &r.json);
    }
    assert_journal_whole(app, fx, when).await;
}

async fn assert_journal_whole(app: &TestApp, fx: &Fixture, when: &str) {
    let r = get(app, "/v1/calls?limit=1000", ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rows = r.json["calls"].as_array().unwrap();
    let key = |row: &Value| {
        (
            row["kind"].clone(),
            row["call_id"].clone(),
            row["ticket_id"].clone(),
        )
    };
    for was in fx.journal() {
        let is = rows
            .iter()
            .find(|row| key(row) == key(was))
            .unwrap_or_else(|| panic!("{when}: journal row {was} is gone"));
        assert_keeps(&format!("{when}: journal row"), was, is);
    }
}

#[tokio::test]
async fn every_record_format_2_held_is_served_after_the_move_into_the_log() {
    let fx = fixture();
    let app = fx.open().await;
    assert_served_as_left(&app, &fx, "migrated").await;
    let data = app.dir.path().join("data");
    // Read back from the log (this build's format now), then from a snapshot after a clean
    // stop.
    let app = app.restart().await;
    assert_served_as_left(&app, &fx, "from the log").await;
    app.state.service.shutdown().unwrap();
    let snapshots = std::fs::read_dir(&data)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_str().unwrap();
            name.starts_with("state-") && name.ends_with(".snap")
        })
        .count();
    assert_eq!(snapshots, 1, "a clean stop writes a snapshot");
    let app = app.restart().await;
    assert_served_as_left(&app, &fx, "from the snapshot").await;
}

#[tokio::test]
async fn calls_codes_routes_tickets_and_listings_work_on_after_the_move() {
    let fx = fixture();
    let app = fx.open().await;
    let a = start(&app, "f3-return", &fx.number("paid"), RETURNING, None).await;
    assert_eq!(
        (&a["reason"], &a["listing"]),
        (&json!("return"), &json!("car-1")),
        "{a}"
    );
    let code = fx.lease("code")["code"].as_str().unwrap();
    let a = start(&app, "f3-code", SHARED, "+33644000015", Some(code)).await;
    assert_eq!(
        (&a["reason"], &a["lease_id"]),
        (&json!("code"), &json!(fx.id("code"))),
        "{a}"
    );
    let a = start(
        &app,
        "f3-grace",
        &fx.number("released"),
        "+33644000013",
        None,
    )
    .await;
    assert_eq!(
        (&a["reason"], &a["lease_id"]),
        (&json!("grace"), &json!(fx.id("released"))),
        "{a}"
    );
    let a = start(&app, "f3-claim", SHARED, TYPED_CALLER, None).await;
    assert_eq!(
        (&a["reason"], &a["lease_id"]),
        (&json!("caller"), &json!(fx.id("progress"))),
        "{a}"
    );
    // The call in progress when the old build stopped ends now: the second call of two.
    let a = end(&app, "f2-open", 45).await;
    assert_eq!(
        (&a["lease_id"], &a["counted"]),
        (&json!(fx.id("progress")), &json!(true)),
        "{a}"
    );

    let app = app.restart().await;
    let l = lease(&app, &fx.id("progress")).await.json;
    assert_eq!((&l["calls"], &l["paid"]), (&json!(2), &json!(true)), "{l}");
    // Ticketing: the halfway caller completes the formula; the completed ticket redeems once,
    // the redeemed one never again.
    let a = start(&app, "f3-tk", TICKETING, HALFWAY, None).await;
    assert_eq!(a["ticketing"]["calls_done"], 1, "{a}");
    let a = end(&app, "f3-tk", 60).await;
    assert!(a["ticketing"]["code"].is_string(), "{a}");
    let r = redeem_ticket(&app, &fx.ticket("completed"), "cookie-p2").await;
    assert_eq!(r.status, 200, "{}", r.text);
    redeem_ticket(&app, &fx.ticket("redeemed"), "cookie-p3")
        .await
        .assert_problem(409, "");
    // A listing target registered with the old build applies to a new lease.
    let r = app
        .call(
            "POST",
            "/v1/leases",
            Some(SITE),
            Some(&json!({"pool": POOL, "session": "s-new", "listing": "boat-6"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["target"], "+33622000006");
}

#[tokio::test]
async fn every_deadline_format_2_recorded_fires_and_every_number_comes_free() {
    let fx = fixture();
    let app = fx.open().await;
    let all_over = fx
        .made_at()
        .saturating_add(Duration::from_secs(32 * 86_400));
    app.advance(all_over.since(app.clock.now())).await;
    let app = app.restart().await;
    for p in pools(&app).await {
        assert_eq!(p["free"], p["size"], "every number is free: {p}");
    }
    for name in LEASES {
        let r = lease(&app, &fx.id(name)).await;
        assert_eq!(r.status, 404, "lease {name} purged: {}", r.text);
    }
    for which in ["completed", "redeemed"] {
        let r = redeem_ticket(&app, &fx.ticket(which), "cookie-late").await;
        assert_eq!(r.status, 404, "ticket {which} purged: {}", r.text);
    }
    let a = start(&app, "f3-late", &fx.number("paid"), RETURNING, None).await;
    assert_eq!(
        (&a["reason"], &a["target"]),
        (&json!("not_leased"), &json!(FALLBACK)),
        "the return route is over: {a}"
    );
    assert_journal_whole(&app, &fx, "all over").await;
}

/// Postcard's (and the log's) unsigned varint.
fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[tokio::test]
async fn a_migration_interrupted_midway_is_carried_on_at_the_next_open() {
    let fx = fixture();
    let dir = fx.unpack();
    {
        // What a migration killed after its first batch leaves: some state keys moved into log
        // entry 1 (in the batch that removed them), the rest still keys, the format still 2.
        let db = sled::open(dir.path().join("data")).unwrap();
        let mut entry = vec![1u8];
        let mut batch = sled::Batch::default();
        for item in db.scan_prefix(b"L").take(3) {
            let (k, v) = item.unwrap();
            entry.push(1);
            varint(k.len() as u64, &mut entry);
            entry.extend_from_slice(&k);
            varint(v.len() as u64, &mut entry);
            entry.extend_from_slice(&v);
            batch.remove(k);
        }
        let mut key = vec![b'X'];
        key.extend_from_slice(&1u64.to_be_bytes());
        batch.insert(key, entry);
        db.apply_batch(batch).unwrap();
        db.flush().unwrap();
    }
    let app = fx.open_dir(dir).await;
    assert_served_as_left(&app, &fx, "after an interrupted migration").await;
    let app = app.restart().await;
    assert_served_as_left(&app, &fx, "after an interrupted migration, restarted").await;
}

/// The real binary on the folder and config: it serves the journal whole, and after a clean
/// stop (a snapshot) and a start from it, still does.
#[test]
fn the_binary_serves_format_2_data_and_restarts_from_its_snapshot() {
    let fx = fixture();
    let dir = fx.unpack();
    let config = dir.path().join("pool.toml");
    for round in ["migrated", "from a snapshot"] {
        let server = Server::start(&config);
        let (status, journal) = server.get("/v1/calls?limit=1000", Some(ADMIN));
        assert_eq!(status, 200, "{journal}");
        let rows = journal["calls"].as_array().unwrap();
        for was in fx.journal() {
            let served = rows.iter().any(|row| {
                ["kind", "call_id", "ticket_id", "started_at"]
                    .iter()
                    .all(|f| row[f] == was[f])
            });
            assert!(served, "{round}: journal row {was} is served");
        }
        let status = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut server = server;
        let exit = server.child.wait().unwrap();
        assert!(exit.success(), "{round}: a clean stop: {exit}");
    }
    let snapshots = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_str().unwrap().starts_with("state-")
        })
        .count();
    assert!(snapshots >= 1, "clean stops write snapshots");
}

//! Upgrading in place from store format 2: the data folder the last format-2 build (7d8a755)
//! wrote (`tests/fixtures/upgrade/format-2.*`: its sled files as `make-format-2.sh` packed
//! them, and the manifest of what it held and answered; the config is release 1's `pool.toml`,
//! which that build served) opens with this build, which moves every state record into its log,
//! and every lease, call, return route, listing target, ticketing progress, ticket and pass is
//! served as that build left it, also from a snapshot after a clean stop; every deadline
//! fires; and a migration interrupted midway is carried on at the next open.

mod common;

use std::process::Command;
use std::time::Duration;

use common::upgrade::*;
use common::*;
use leaseline::clock::Clock;
use serde_json::{json, Value};

/// The data folder of the last build writing store format 2 (7d8a755), its config and the
/// manifest of what it holds.
fn fixture() -> Fixture {
    Fixture::load(
        "format-2",
        "7d8a7557984ab9b27a9a2a1997f5dd2df3de529c",
        "7d8a755",
        "leaseline-store-2",
    )
}

/// Everything the old build held, read through this build: every lease with every field,
/// the pools' counts, both passes, the whole journal.
async fn assert_served_as_left(app: &TestApp, fx: &Fixture, when: &str) {
    for name in LEASES {
        let r = lease(app, &fx.id(name)).await;
        assert_eq!(r.status, 200, "{when}: lease {name}: {}", r.text);
        fx.assert_keeps(&format!("{when}: lease {name}"), fx.lease(name), &r.json);
    }
    let was = fx.manifest["pools"]["pools"].as_array().unwrap();
    let is = pools(app).await;
    assert_eq!(was.len(), is.len());
    for (was, is) in was.iter().zip(&is) {
        fx.assert_keeps(&format!("{when}: pool"), was, is);
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
        fx.assert_keeps(&format!("{when}: pass of the {which}"), pass, &r.json);
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
        fx.assert_keeps_row(&format!("{when}: journal row"), was, is);
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
    let r = redeem_ticket(&app, &fx.ticket("completed").0, "cookie-p2").await;
    assert_eq!(r.status, 200, "{}", r.text);
    redeem_ticket(&app, &fx.ticket("redeemed").0, "cookie-p3")
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
        let r = redeem_ticket(&app, &fx.ticket(which).0, "cookie-late").await;
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

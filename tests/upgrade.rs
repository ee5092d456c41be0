//! Upgrading in place: the data folder release 1 wrote (`tests/fixtures/upgrade`: its sled files
//! as `make-release-1.sh` packed them, the config it served, and a manifest of what it held and
//! what it answered) opens with this build, and every lease, call, return route, listing target,
//! ticketing progress, ticket and pass in it is served as release 1 left it; every deadline it
//! recorded still fires, and every number comes free.

mod common;

use std::time::Duration;

use common::upgrade::*;
use common::*;
use leaseline::clock::Clock;
use leaseline::core::Timestamp;
use serde_json::{json, Value};

/// Release 1's data folder (store format 1), its config and the manifest of what it holds.
fn fixture() -> Fixture {
    Fixture::load(
        "release-1",
        "9322ced7e1a8c3d825b7f0d415ab192eac865cb5",
        "release 1",
        "leaseline-store-1",
    )
}

/// Moves the clock to `to` and fires what fell due.
async fn advance_to(app: &TestApp, to: Timestamp) {
    app.advance(to.since(app.clock.now())).await;
}

/// Every lease reads with the fields release 1 gave it: number, listing, target, state,
/// deadlines, calls, paid, redeemed, pass, code.
async fn assert_leases_as_release_1_left_them(app: &TestApp, fx: &Fixture) {
    for name in LEASES {
        let r = lease(app, &fx.id(name)).await;
        assert_eq!(r.status, 200, "lease {name}: {}", r.text);
        fx.assert_keeps(&format!("lease {name}"), fx.lease(name), &r.json);
    }
    // What the fixture is meant to hold, stated once, so a regenerated fixture cannot
    // silently hold less.
    let paid = lease(app, &fx.id("paid")).await.json;
    assert_eq!(paid["state"], "active");
    assert_eq!(paid["listing"], "car-1");
    assert_eq!(paid["target"], "+33622000001");
    assert_eq!(paid["paid"], true);
    assert!(paid["redeemed_at"].is_string() && paid["pass_id"].is_string());
    let progress = lease(app, &fx.id("progress")).await.json;
    assert_eq!(progress["listing"], "flat-2");
    assert_eq!(progress["target"], "+33622000002", "from the listing");
    assert_eq!(
        (&progress["calls"], &progress["calls_required"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(progress["min_call_secs"], 30);
    assert_eq!(progress["paid"], false);
    assert_eq!(
        lease(app, &fx.id("released")).await.json["state"],
        "released"
    );
    let plain = lease(app, &fx.id("plain")).await.json;
    assert_eq!(
        (&plain["state"], &plain["listing"]),
        (&json!("active"), &Value::Null)
    );
    let code = lease(app, &fx.id("code")).await.json;
    assert_eq!(code["number"], SHARED);
    assert!(code["code"].as_str().is_some_and(|c| c.len() == 4));
    assert_eq!(
        (&code["paid"], &code["redeemed_at"]),
        (&json!(true), &Value::Null)
    );
}

/// Every call and ticket event release 1 took is in the journal, as release 1 listed it.
async fn assert_journal_keeps_release_1(app: &TestApp, fx: &Fixture) {
    let r = get(app, "/v1/calls?limit=1000", ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let now = r.json["calls"].as_array().unwrap();
    let key = |row: &Value| {
        (
            row["kind"].clone(),
            row["call_id"].clone(),
            row["ticket_id"].clone(),
        )
    };
    for was in fx.journal() {
        let is = now
            .iter()
            .find(|row| key(row) == key(was))
            .unwrap_or_else(|| panic!("release 1's journal row {was} is gone"));
        fx.assert_keeps_row("journal row", was, is);
    }
    for (id, call) in fx.manifest["calls"].as_object().unwrap() {
        let row = now
            .iter()
            .find(|row| row["call_id"] == id.as_str())
            .unwrap_or_else(|| panic!("call {id} is not in the journal"));
        assert_eq!(row["reason"], call["reason"], "call {id}: {row}");
        assert_eq!(row["caller"], call["caller"], "call {id}: {row}");
        assert_eq!(
            row["duration_secs"], call["duration_secs"],
            "call {id}: {row}"
        );
        if let Some(l) = call["lease"].as_str() {
            assert_eq!(row["lease_id"], fx.id(l).as_str(), "call {id}: {row}");
        }
    }
    let reasons: Vec<&str> = fx.manifest["calls"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    for reason in ["active", "code", "grace", "ticketing"] {
        assert!(reasons.contains(&reason), "the fixture has a {reason} call");
    }
}

async fn assert_every_number_free(app: &TestApp) {
    for p in pools(app).await {
        assert_eq!(p["free"], p["size"], "every number is free: {p}");
        assert_eq!((&p["leased"], &p["cooling"]), (&json!(0), &json!(0)), "{p}");
    }
}

#[tokio::test]
async fn every_lease_reads_as_release_1_left_it_and_the_pools_count_alike() {
    let fx = fixture();
    let app = fx.open().await;
    assert_leases_as_release_1_left_them(&app, &fx).await;
    let counted = pools(&app).await;
    let was = fx.manifest["pools"]["pools"].as_array().unwrap();
    assert_eq!(counted.len(), was.len());
    for (was, is) in was.iter().zip(&counted) {
        fx.assert_keeps("pool", was, is);
    }
    let classifieds = &counted[0];
    assert_eq!(classifieds["name"], POOL);
    assert_eq!(
        (
            &classifieds["leased"],
            &classifieds["cooling"],
            &classifieds["free"]
        ),
        (&json!(3), &json!(1), &json!(0)),
        "paid, progress and plain leased, released cooling"
    );

    // Reopened by this build (its own format now), nothing moves.
    let app = app.restart().await;
    assert_leases_as_release_1_left_them(&app, &fx).await;
    for (was, is) in was.iter().zip(&pools(&app).await) {
        fx.assert_keeps("pool after a restart", was, is);
    }
}

#[tokio::test]
async fn redeemed_leases_stay_redeemed_and_paid_ones_redeem_once() {
    let fx = fixture();
    let app = fx.open().await;
    redeem_lease(&app, &fx.id("paid"))
        .await
        .assert_problem(409, "");
    let pass = fx.lease("paid")["pass_id"].as_str().unwrap();
    let r = get(&app, &format!("/v1/passes/{pass}"), SITE).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["valid"], true);
    fx.assert_keeps(
        "the paid lease's pass",
        &fx.manifest["passes"]["lease"],
        &r.json,
    );

    // Paid under release 1 by a code call, redeemed now.
    let r = redeem_lease(&app, &fx.id("code")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["redeemed_at"].is_string() && r.json["pass_id"].is_string());
    redeem_lease(&app, &fx.id("progress"))
        .await
        .assert_problem(402, "");

    let app = app.restart().await;
    redeem_lease(&app, &fx.id("paid"))
        .await
        .assert_problem(409, "");
    redeem_lease(&app, &fx.id("code"))
        .await
        .assert_problem(409, "");
}

#[tokio::test]
async fn the_call_journal_lists_every_call_release_1_took_with_its_reason() {
    let fx = fixture();
    let app = fx.open().await;
    assert_journal_keeps_release_1(&app, &fx).await;
    let app = app.restart().await;
    assert_journal_keeps_release_1(&app, &fx).await;
}

#[tokio::test]
async fn calls_still_reach_the_leases_codes_and_routes_release_1_gave_out() {
    let fx = fixture();
    let app = fx.open().await;

    let a = start(&app, "r2-return", &fx.number("paid"), RETURNING, None).await;
    assert_eq!(a["reason"], "return", "{a}");
    assert_eq!(
        (&a["listing"], &a["target"]),
        (&json!("car-1"), &json!("+33622000001"))
    );

    let code = fx.lease("code")["code"].as_str().unwrap();
    let a = start(&app, "r2-code", SHARED, "+33644000015", Some(code)).await;
    assert_eq!(a["reason"], "code", "{a}");
    assert_eq!(a["lease_id"], fx.id("code").as_str());
    assert_eq!(a["target"], "+33622000005");

    let a = start(
        &app,
        "r2-grace",
        &fx.number("released"),
        "+33644000013",
        None,
    )
    .await;
    assert_eq!(a["reason"], "grace", "{a}");
    assert_eq!(a["lease_id"], fx.id("released").as_str());

    let a = start(&app, "r2-active", &fx.number("plain"), "+33644000014", None).await;
    assert_eq!(a["reason"], "active", "{a}");
    assert_eq!(a["lease_id"], fx.id("plain").as_str());
    let plain = lease(&app, &fx.id("plain")).await.json;
    assert_eq!(
        (&plain["calls"], &plain["paid"]),
        (&json!(1), &json!(true)),
        "{plain}"
    );

    // A retried event of a call release 1 took gets release 1's answer; a contradicting one
    // is refused.
    let a = start(&app, "r1-active", &fx.number("paid"), RETURNING, None).await;
    assert_eq!(
        (&a["reason"], &a["lease_id"]),
        (&json!("active"), &json!(fx.id("paid"))),
        "{a}"
    );
    end(&app, "r1-active", 74).await;
    let body = json!({"call_id": "r1-active", "event": "end", "duration_secs": 75}).to_string();
    app.call("POST", "/v1/calls", Some(TELEPHONY), Some(&body))
        .await
        .assert_problem(409, "74");

    // The caller typed on lease "progress" claims the shared number dialled without a code.
    let a = start(&app, "r2-claim", SHARED, TYPED_CALLER, None).await;
    assert_eq!(a["reason"], "caller", "{a}");
    assert_eq!(a["lease_id"], fx.id("progress").as_str());
    end(&app, "r2-claim", 5).await;
    assert_eq!(
        lease(&app, &fx.id("progress")).await.json["calls"],
        1,
        "5 s is under min_call_secs"
    );

    // The call in progress while release 1 stopped ends now, long enough: the second call of
    // two, and the lease is paid.
    let a = end(&app, "r1-open", 45).await;
    assert_eq!(
        (&a["lease_id"], &a["counted"]),
        (&json!(fx.id("progress")), &json!(true)),
        "{a}"
    );
    let l = lease(&app, &fx.id("progress")).await.json;
    assert_eq!((&l["calls"], &l["paid"]), (&json!(2), &json!(true)), "{l}");
    let r = redeem_lease(&app, &fx.id("progress")).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let app = app.restart().await;
    let a = start(&app, "r2-return-again", &fx.number("paid"), RETURNING, None).await;
    assert_eq!(a["reason"], "return", "{a}");
    assert_eq!(a["listing"], "car-1");
}

#[tokio::test]
async fn ticketing_progress_tickets_and_passes_carry_over() {
    let fx = fixture();
    let app = fx.open().await;
    let (sold, sold_t) = fx.ticket("redeemed");
    redeem_ticket(&app, &sold, "cookie-p3")
        .await
        .assert_problem(409, "");
    let pass = sold_t["answer"]["pass_id"].as_str().unwrap();
    let r = get(&app, &format!("/v1/passes/{pass}"), SITE).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["valid"], true);
    fx.assert_keeps(
        "the ticket's pass",
        &fx.manifest["passes"]["ticket"],
        &r.json,
    );

    // Migrated on the first open; read back from this build's own format now.
    let app = app.restart().await;
    // One call of two under release 1: the second completes the formula and earns a code.
    let a = start(&app, "r2-tk-1b", TICKETING, HALFWAY, None).await;
    assert_eq!(a["reason"], "ticketing", "{a}");
    assert_eq!(
        a["ticketing"]["calls_done"], 1,
        "release 1's call is remembered: {a}"
    );
    let a = end(&app, "r2-tk-1b", 60).await;
    assert_eq!(
        (
            &a["ticketing"]["calls_done"],
            &a["ticketing"]["calls_missing"]
        ),
        (&json!(2), &json!(0)),
        "{a}"
    );
    let earned = a["ticketing"]["code"].as_str().expect("a code").to_owned();
    assert_eq!(earned.len(), 8);
    let r = redeem_ticket(&app, &earned, "cookie-p1").await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Completed under release 1, never redeemed: redeemed now, once.
    let (completed, completed_t) = fx.ticket("completed");
    let issued = fx
        .journal()
        .iter()
        .find(|r| r["kind"] == "ticket_issued" && r["caller"] == completed_t["caller"])
        .expect("release 1 journalled the ticket");
    let r = redeem_ticket(&app, &completed, "cookie-p2").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["ticket_id"], issued["ticket_id"]);
    assert_eq!(
        (&r.json["calls"], &r.json["amount"]),
        (&json!(2), &json!("5.98"))
    );
    assert!(r.json["pass_id"].is_string());

    let app = app.restart().await;
    for (code, client) in [
        (&sold, "cookie-p3"),
        (&completed, "cookie-p2"),
        (&earned, "cookie-p1"),
    ] {
        redeem_ticket(&app, code, client)
            .await
            .assert_problem(409, "");
    }
    let r = get(&app, &format!("/v1/passes/{pass}"), SITE).await;
    assert_eq!(r.json["valid"], true, "{}", r.text);
}

#[tokio::test]
async fn listing_targets_registered_with_release_1_apply_to_new_leases() {
    let fx = fixture();
    let app = fx.open().await;
    // The pool is still full: a code on the shared number, routed to the listing's target.
    let r = allocate(
        &app,
        json!({"pool": POOL, "session": "s-frank", "listing": "boat-6"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        (&r.json["number"], &r.json["target"]),
        (&json!(SHARED), &json!("+33622000006"))
    );
    assert!(r.json["code"].is_string());

    let app = app.restart().await;
    let r = allocate(
        &app,
        json!({"pool": POOL, "session": "s-gina", "listing": "van-5"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["target"], "+33622000005");
}

#[tokio::test]
async fn every_deadline_release_1_recorded_fires_and_every_number_comes_free() {
    let fx = fixture();
    let app = fx.open().await;

    // Past every lease's end and quarantine, within retention: ended, still readable.
    advance_to(
        &app,
        fx.made_at()
            .saturating_add(Duration::from_secs(2 * 3600 + 15 * 60)),
    )
    .await;
    for name in LEASES {
        let l = lease(&app, &fx.id(name)).await;
        assert_eq!(l.status, 200, "{name}: {}", l.text);
        let state = if name == "released" {
            "released"
        } else {
            "expired"
        };
        assert_eq!(l.json["state"], state, "{name}: {}", l.text);
        assert_eq!(l.json["calls"], fx.lease(name)["calls"], "{name}");
    }
    assert_every_number_free(&app).await;
    // The number is free; only the return route still sends this caller to car-1.
    let a = start(&app, "r2-return-free", &fx.number("paid"), RETURNING, None).await;
    assert_eq!(
        (&a["reason"], &a["listing"]),
        (&json!("return"), &json!("car-1")),
        "{a}"
    );
    // Every number leases again, listings' targets applied.
    let mut leased = Vec::new();
    for (session, listing, target) in [
        ("s-h", "flat-2", "+33622000002"),
        ("s-i", "van-5", "+33622000005"),
        ("s-j", "boat-6", "+33622000006"),
        ("s-k", "car-1", "+33622000001"),
    ] {
        let mut body = json!({"pool": POOL, "session": session, "listing": listing});
        if listing == "car-1" {
            body["target"] = json!(target);
        }
        let r = allocate(&app, body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.json["target"], target, "{}", r.text);
        assert!(r.json["code"].is_null(), "a number of its own: {}", r.text);
        leased.push(r.json["number"].as_str().unwrap().to_owned());
    }
    leased.sort();
    assert_eq!(leased, fx.pool_numbers());

    // Past every deadline release 1 wrote: tickets' codes and retention, passes, return
    // routes, ticketing windows.
    let all_over = fx
        .made_at()
        .saturating_add(Duration::from_secs(32 * 86_400));
    advance_to(&app, all_over).await;
    assert_all_over(&app, &fx, "r2-late").await;

    let app = app.restart().await;
    assert_all_over(&app, &fx, "r2-late-restarted").await;
}

/// Once every deadline has passed: numbers free, leases, tickets and passes purged, return
/// routes and progress gone, the journal whole.
async fn assert_all_over(app: &TestApp, fx: &Fixture, call: &str) {
    assert_every_number_free(app).await;
    for name in LEASES {
        let r = lease(app, &fx.id(name)).await;
        assert_eq!(r.status, 404, "lease {name} past retention: {}", r.text);
    }
    for which in ["completed", "redeemed"] {
        let (code, _) = fx.ticket(which);
        let r = redeem_ticket(app, &code, "cookie-late").await;
        assert_eq!(r.status, 404, "ticket {which} purged: {}", r.text);
    }
    for which in ["lease", "ticket"] {
        let pass = fx.manifest["passes"][which]["pass_id"].as_str().unwrap();
        let r = get(app, &format!("/v1/passes/{pass}"), SITE).await;
        assert_eq!(r.status, 404, "pass of the {which} purged: {}", r.text);
    }
    let a = start(
        app,
        &format!("{call}-return"),
        &fx.number("paid"),
        RETURNING,
        None,
    )
    .await;
    assert_eq!(
        (&a["reason"], &a["target"]),
        (&json!("not_leased"), &json!(FALLBACK)),
        "{a}"
    );
    let a = start(app, &format!("{call}-tk"), TICKETING, HALFWAY, None).await;
    assert_eq!(a["ticketing"]["calls_done"], 0, "the window is over: {a}");
    assert_journal_keeps_release_1(app, fx).await;
}

/// The real binary, on the real clock (the fixture's leases may be long over by now): it starts
/// on release 1's folder and config, and serves release 1's journal whole.
#[test]
fn the_binary_serves_release_1_data_with_release_1_config() {
    let fx = fixture();
    let dir = fx.unpack();
    let server = Server::start(&dir.path().join("pool.toml"));
    let agent = agent();
    let url = server.url("/v1/calls?limit=1000");
    let (status, journal) = http(&agent, "GET", &url, Some(ADMIN), None).unwrap();
    assert_eq!(status, 200, "{journal}");
    let rows = journal["calls"].as_array().unwrap();
    for was in fx.journal() {
        let served = rows.iter().any(|row| {
            ["kind", "call_id", "ticket_id", "started_at"]
                .iter()
                .all(|f| row[f] == was[f])
        });
        assert!(served, "release 1's journal row {was} is served");
    }
    let (status, pools) = http(&agent, "GET", &server.url("/v1/pools"), Some(ADMIN), None).unwrap();
    assert_eq!(status, 200, "{pools}");
    let names: Vec<&Value> = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert_eq!(names, [POOL, "videos"]);
}

async fn capacity(app: &TestApp) -> Value {
    let r = get(app, &format!("/v1/pools/{POOL}/capacity"), ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[tokio::test]
async fn release_1_data_starts_with_no_traffic_and_counts_from_the_upgrade_on() {
    let fx = fixture();
    let app = fx.open().await;
    // Release 1 kept no traffic counts: none, not an error.
    let c = capacity(&app).await;
    assert_eq!(c["busiest_hour"]["requests"], 0, "{c}");
    assert_eq!(c["recommended_size"], 0);
    // A request from now on is counted, and the count is kept across a restart.
    let r = app.allocate(POOL, "after-upgrade").await;
    assert!(r.status == 201 || r.status == 503, "{}", r.text);
    app.advance(Duration::from_secs(1)).await;
    let app = app.restart().await;
    let c = capacity(&app).await;
    assert_eq!(c["last_hour"]["requests"], 1, "{c}");
}

#[tokio::test]
async fn statistics_of_release_1_calls_are_built_from_its_journal() {
    let fx = fixture();
    let app = fx.open().await;
    let r = get(&app, "/v1/calls?limit=1000", ADMIN).await;
    let calls: Vec<&Value> = r.json["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "call" && c["pool"] == POOL)
        .collect();
    assert!(!calls.is_empty());
    let answered = calls
        .iter()
        .filter(|c| c["duration_secs"].as_u64().is_some_and(|d| d >= 1))
        .count();
    let s = get(
        &app,
        "/v1/stats?by=pool&since=2020-01-01T00:00:00Z&until=2030-01-01T00:00:00Z",
        ADMIN,
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.text);
    let row = s.json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == POOL)
        .unwrap_or_else(|| panic!("{}", s.text))
        .clone();
    assert_eq!(row["calls"], calls.len(), "{}", s.text);
    assert_eq!(row["answered"], answered, "{}", s.text);
    assert_eq!(row["currency"], "EUR");
    let cents = 299 * answered;
    assert_eq!(row["amount"], format!("{}.{:02}", cents / 100, cents % 100));
}

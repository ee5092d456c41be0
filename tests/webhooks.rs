//! Signed webhooks, from the receiver's side: a small HTTP server in the test takes the
//! deliveries (failing the first ones), checks every signature, and sees every event once
//! per id; tenants see only their objects; the admin API lists and retries deliveries;
//! deliveries pending at a restart are sent after it.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::receiver::{verify, Receiver};
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "whsec_test_0123456789";
const OTHER_SECRET: &str = "whsec_other_0123456789";

fn webhook(name: &str, url: &str, secret: &str, events: &[&str], extra: &str) -> String {
    let events: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    // Retries a second apart and 2 s per attempt, unless `extra` says otherwise.
    let mut settings = extra.to_owned();
    for (key, default) in [("backoff", "1s"), ("timeout", "2s")] {
        if !extra.contains(key) {
            settings.push_str(&format!("\n{key} = \"{default}\""));
        }
    }
    format!(
        "\n[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{secret}\"\nevents = [{}]\n{settings}\n",
        events.join(", "),
    )
}

async fn app_with(hooks: String) -> TestApp {
    TestApp::with_config(move |data: &Path| format!("{}{hooks}", config_text(data, ""))).await
}

/// Moves the clock a second at a time (so retries fall due) until `done` holds, for at most
/// 20 s of real time: the worker's threads post for real.
async fn until(app: &TestApp, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        app.advance(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> Reply {
    app.call("POST", path, Some(key), Some(&body.to_string()))
        .await
}

/// Events accepted by `r`, by id; asserts each copy of an id is the same event.
fn by_id(r: &Receiver, secret: &str) -> HashMap<String, Value> {
    let mut seen: HashMap<String, Value> = HashMap::new();
    for got in r.accepted() {
        verify(secret, &got).unwrap();
        let v = got.json();
        let id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(got.headers["leaseline-event-id"], id);
        if let Some(before) = seen.insert(id.clone(), v.clone()) {
            assert_eq!(before, v, "two different events share id {id}");
        }
    }
    seen
}

fn of_type<'a>(events: &'a HashMap<String, Value>, t: &str) -> Vec<&'a Value> {
    events.values().filter(|e| e["type"] == t).collect()
}

#[tokio::test]
async fn every_event_arrives_signed_despite_failures_with_one_id_each() {
    let receiver = Receiver::start(3);
    let all = [
        "lease.paid",
        "lease.redeemed",
        "lease.expired",
        "lease.released",
        "call.started",
        "call.ended",
        "pool.exhausted",
    ];
    let app = app_with(webhook("shop", &receiver.url(), SECRET, &all, "")).await;
    // A lease paid by one call, then redeemed.
    let paid = post(
        &app,
        "/v1/leases",
        SITE,
        json!({"pool": "small", "session": "a", "target": "+33612345678"}),
    )
    .await
    .json;
    let id = paid["lease_id"].as_str().unwrap().to_owned();
    let start = json!({"call_id": "c1", "event": "start", "called": paid["number"], "caller": "+33611111111"});
    assert_eq!(post(&app, "/v1/calls", TELEPHONY, start).await.status, 200);
    let end = json!({"call_id": "c1", "event": "end", "duration_secs": 42});
    assert_eq!(post(&app, "/v1/calls", TELEPHONY, end).await.status, 200);
    let r = post(&app, &format!("/v1/leases/{id}/redeem"), SITE, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // One released, one left to expire; then the 3-number pool is full: exhausted, twice
    // (rate-limited to one event).
    let released = app.allocate("small", "b").await.json;
    let released = released["lease_id"].as_str().unwrap().to_owned();
    let expiring = app.allocate("small", "c").await.json;
    let expiring = expiring["lease_id"].as_str().unwrap().to_owned();
    for s in ["d", "e"] {
        assert_eq!(app.allocate("small", s).await.status, 503);
    }
    let r = app
        .call(
            "DELETE",
            &format!("/v1/leases/{released}"),
            Some(SITE),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    app.advance(Duration::from_secs(16 * 60)).await;

    until(&app, "every event", || {
        let seen = by_id(&receiver, SECRET);
        all.iter().all(|t| !of_type(&seen, t).is_empty())
            && of_type(&seen, "lease.expired").len() >= 2
    })
    .await;
    // The first three attempts were refused; all were retried.
    assert!(receiver.all().iter().filter(|r| r.status == 500).count() >= 3);
    let seen = by_id(&receiver, SECRET);
    for e in seen.values() {
        assert!(e["created_at"].as_str().unwrap().starts_with("2026-01-01T"));
    }
    for r in receiver.accepted() {
        let body = String::from_utf8(r.body.clone()).unwrap();
        let at = |k: &str| body.find(&format!("\"{k}\":")).unwrap();
        assert!(
            at("id") < at("type") && at("type") < at("created_at") && at("created_at") < at("data"),
            "{body}"
        );
    }
    // Each event once per id, and no event twice under two ids.
    let one = |t: &str| {
        let v = of_type(&seen, t);
        assert_eq!(v.len(), 1, "{t}: {v:?}");
        v[0].clone()
    };
    let p = one("lease.paid");
    assert_eq!(p["data"]["lease_id"], id.as_str());
    assert_eq!(p["data"]["paid"], true);
    assert_eq!(p["data"]["target"], "+33612345678");
    let r = one("lease.redeemed");
    assert!(r["data"]["redeemed_at"].is_string());
    assert_eq!(one("lease.released")["data"]["lease_id"], released.as_str());
    assert_eq!(one("lease.released")["data"]["state"], "released");
    let s = one("call.started");
    assert_eq!(s["data"]["call_id"], "c1");
    assert_eq!(s["data"]["lease_id"], id.as_str());
    let e = one("call.ended");
    assert_eq!(e["data"]["duration_secs"], 42);
    assert_eq!(one("pool.exhausted")["data"]["name"], "small");
    let expired: HashSet<&str> = of_type(&seen, "lease.expired")
        .iter()
        .map(|e| e["data"]["lease_id"].as_str().unwrap())
        .collect();
    assert_eq!(expired, HashSet::from([id.as_str(), expiring.as_str()]));
    assert_eq!(seen.len(), 8, "nothing else was sent");

    // Delivered, as the admin API and the metrics say.
    let r = app
        .call(
            "GET",
            "/v1/webhooks/deliveries?status=delivered",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.json["deliveries"].as_array().unwrap();
    assert_eq!(list.len(), 8);
    assert!(list.iter().any(|d| d["attempts"].as_u64().unwrap() > 1));
    let metrics = app.call("GET", "/metrics", None, None).await.text;
    assert!(metrics
        .contains("leaseline_webhook_deliveries_total{endpoint=\"shop\",outcome=\"delivered\"} 8"));
    assert!(metrics.contains("leaseline_webhook_queue_depth{endpoint=\"shop\"} 0"));
}

#[tokio::test]
async fn a_tenants_endpoint_gets_only_its_tenants_objects() {
    let (mine, theirs, admin) = (Receiver::start(0), Receiver::start(0), Receiver::start(0));
    let hooks = [
        webhook(
            "mine",
            &mine.url(),
            SECRET,
            &["lease.released"],
            "tenant = \"site\"",
        ),
        webhook(
            "theirs",
            &theirs.url(),
            OTHER_SECRET,
            &["lease.released"],
            "tenant = \"other\"",
        ),
        webhook("ops", &admin.url(), SECRET, &["lease.released"], ""),
    ]
    .concat();
    let app = app_with(hooks).await;
    let mut ids = HashMap::new();
    for (key, who) in [(SITE, "site"), (OTHER_SITE, "other")] {
        let l = post(
            &app,
            "/v1/leases",
            key,
            json!({"pool": "ch", "session": who}),
        )
        .await
        .json;
        let id = l["lease_id"].as_str().unwrap().to_owned();
        let r = app
            .call("DELETE", &format!("/v1/leases/{id}"), Some(key), None)
            .await;
        assert_eq!(r.status, 204);
        ids.insert(who, id);
    }
    until(&app, "the operator's two events", || {
        by_id(&admin, SECRET).len() == 2
    })
    .await;
    until(&app, "each tenant's event", || {
        !mine.accepted().is_empty() && !theirs.accepted().is_empty()
    })
    .await;
    let lease_of = |r: &Receiver, secret: &str| -> Vec<String> {
        by_id(r, secret)
            .values()
            .map(|e| e["data"]["lease_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(lease_of(&mine, SECRET), [ids["site"].clone()]);
    assert_eq!(lease_of(&theirs, OTHER_SECRET), [ids["other"].clone()]);
    // Each endpoint signs with its own secret.
    assert!(verify(SECRET, &theirs.accepted()[0]).is_err());
}

#[tokio::test]
async fn failed_deliveries_are_listed_and_retried_by_an_admin() {
    let receiver = Receiver::start(0);
    receiver
        .failing
        .store(true, std::sync::atomic::Ordering::Release);
    let app = app_with(webhook(
        "shop",
        &receiver.url(),
        SECRET,
        &["lease.released"],
        "max_age = \"5s\"",
    ))
    .await;
    let l = app.allocate("ch", "a").await.json;
    let id = l["lease_id"].as_str().unwrap();
    app.call("DELETE", &format!("/v1/leases/{id}"), Some(SITE), None)
        .await;
    let list = |status: &'static str| {
        let app = &app;
        async move {
            let r = app
                .call(
                    "GET",
                    &format!("/v1/webhooks/deliveries?status={status}"),
                    Some(ADMIN),
                    None,
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.json["deliveries"].as_array().unwrap().clone()
        }
    };
    // Retried while max_age lasts, then failed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let f = list("failed").await;
        if !f.is_empty() {
            break f;
        }
        assert!(Instant::now() < deadline, "never failed");
        app.advance(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let d = &failed[0];
    assert_eq!(d["type"], "lease.released");
    assert_eq!(d["endpoint"], "shop");
    assert_eq!(d["last_error"], "HTTP 500");
    assert!(d["attempts"].as_u64().unwrap() >= 2, "{d}");
    assert!(list("pending").await.is_empty());
    let tries = receiver.all().len();
    assert!(tries >= 2);
    // Nothing more is sent on its own.
    app.advance(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.all().len(), tries);

    // The receiver is fixed; an operator sends it again.
    receiver
        .failing
        .store(false, std::sync::atomic::Ordering::Release);
    let did = d["id"].as_str().unwrap();
    let r = app
        .call(
            "POST",
            &format!("/v1/webhooks/deliveries/{did}/retry"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["status"], "pending");
    until(&app, "the retried delivery", || {
        !receiver.accepted().is_empty()
    })
    .await;
    let event = receiver.accepted()[0].json();
    assert_eq!(event["id"], d["event_id"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while list("delivered").await.is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Precise refusals.
    let unknown = "00".repeat(24);
    app.call(
        "POST",
        &format!("/v1/webhooks/deliveries/{unknown}/retry"),
        Some(ADMIN),
        None,
    )
    .await
    .assert_problem(404, "no webhook delivery");
    app.call(
        "POST",
        "/v1/webhooks/deliveries/not-an-id/retry",
        Some(ADMIN),
        None,
    )
    .await
    .assert_problem(404, "no webhook delivery");
    app.call(
        "GET",
        "/v1/webhooks/deliveries?status=lost",
        Some(ADMIN),
        None,
    )
    .await
    .assert_problem(422, "status");
    app.call(
        "GET",
        "/v1/webhooks/deliveries?cursor=zz",
        Some(ADMIN),
        None,
    )
    .await
    .assert_problem(400, "cursor");
    app.call("GET", "/v1/webhooks/deliveries", Some(SITE), None)
        .await
        .assert_problem(403, "admin");
    app.call("GET", "/v1/webhooks/deliveries", None, None)
        .await
        .assert_problem(401, "admin");
}

#[tokio::test]
async fn deliveries_pages_follow_their_cursor() {
    let receiver = Receiver::start(0);
    receiver
        .failing
        .store(true, std::sync::atomic::Ordering::Release);
    let app = app_with(webhook(
        "shop",
        &receiver.url(),
        SECRET,
        &["lease.released"],
        "backoff = \"1h\"",
    ))
    .await;
    for s in 0..5 {
        let l = app.allocate("ch", &format!("s{s}")).await.json;
        let id = l["lease_id"].as_str().unwrap();
        app.call("DELETE", &format!("/v1/leases/{id}"), Some(SITE), None)
            .await;
        app.advance(Duration::from_millis(10)).await;
    }
    let mut ids = Vec::new();
    let mut path = "/v1/webhooks/deliveries?status=pending&limit=2".to_owned();
    loop {
        let r = app.call("GET", &path, Some(ADMIN), None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        for d in r.json["deliveries"].as_array().unwrap() {
            ids.push(d["created_at"].as_str().unwrap().to_owned());
        }
        match r.json["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/webhooks/deliveries?status=pending&limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 5);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(ids, sorted, "newest first");
}

#[tokio::test]
async fn deliveries_pending_at_a_restart_are_sent_after_it() {
    // Nobody listens on this port yet.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let app = app_with(webhook("shop", &url, SECRET, &["lease.released"], "")).await;
    let l = app.allocate("ch", "a").await.json;
    let id = l["lease_id"].as_str().unwrap().to_owned();
    app.call("DELETE", &format!("/v1/leases/{id}"), Some(SITE), None)
        .await;
    let app = app.restart().await;
    let receiver = Receiver::start_on(port);
    until(&app, "the event written before the restart", || {
        !receiver.accepted().is_empty()
    })
    .await;
    let e = receiver.accepted()[0].json();
    assert_eq!(e["type"], "lease.released");
    assert_eq!(e["data"]["lease_id"], id.as_str());
}

#[test]
fn webhook_sections_are_checked_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let base = config_text(dir.path(), "");
    let bad = [
        (
            webhook("x", "https://h.example.com/", SECRET, &["lease.payed"], ""),
            "unknown event \"lease.payed\"",
        ),
        (
            webhook("x", "ftp://h.example.com/", SECRET, &["lease.paid"], ""),
            "url",
        ),
        (
            "\n[[webhook]]\nname = \"x\"\nurl = \"https://h.example.com/\"\nevents = [\"lease.paid\"]\n"
                .to_owned(),
            "needs secret",
        ),
    ];
    for (hook, needle) in bad {
        let e = leaseline::config::Config::parse(&format!("{base}{hook}"), dir.path()).unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
}

#[tokio::test]
async fn a_receiver_that_hangs_never_holds_up_the_api() {
    // Accepts connections and never answers; one delivery at a time, each allowed 60 s.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", hang.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in hang.incoming().take(1) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let app = app_with(webhook(
        "slow",
        &url,
        SECRET,
        &["lease.released"],
        "timeout = \"60s\"\nconcurrency = 1",
    ))
    .await;
    // If the API waited for deliveries, these 20 releases would take 20 minutes.
    let started = Instant::now();
    for s in 0..20 {
        let l = app.allocate("ch", &format!("s{s}")).await.json;
        let id = l["lease_id"].as_str().unwrap();
        let r = app
            .call("DELETE", &format!("/v1/leases/{id}"), Some(SITE), None)
            .await;
        assert_eq!(r.status, 204);
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the API waited for the receiver: {:?}",
        started.elapsed()
    );
    let r = app
        .call(
            "GET",
            "/v1/webhooks/deliveries?status=pending",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.json["deliveries"].as_array().unwrap().len(), 20);
    drop(held);
}

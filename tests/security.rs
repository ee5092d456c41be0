//! Abuse limits and isolation: caps on live leases per session and per tenant, per-key
//! allocation rates, admin keys scoped to pools, header limits, open event streams per lease
//! and per address, and tenants who cannot reach each other's leases.

mod common;

use std::path::Path;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use common::*;
use serde_json::json;
use tower::ServiceExt;

const SCOPED_ADMIN: &str = "scoped-admin-key";

fn config(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[[pool]]
name = "capped"
numbers = ["+33899100000..=+33899100099"]
max_live_per_session = 2
max_live_per_tenant = 5

[[pool]]
name = "slow"
numbers = ["+33899200000..=+33899200099"]
allocations_per_minute_per_key = 3

{}
{}
{}
[[key]]
name = "scoped"
role = "admin"
sha256 = "{}"
pools = ["slow"]
"#,
        data.display(),
        key("site", "site", SITE),
        key("other", "site", OTHER_SITE),
        key("tel", "telephony", TELEPHONY),
        sha(SCOPED_ADMIN)
    )
}

async fn alloc(app: &TestApp, key: &str, pool: &str, session: &str, listing: &str) -> Reply {
    let body = json!({"pool": pool, "session": session, "listing": listing}).to_string();
    app.call("POST", "/v1/leases", Some(key), Some(&body)).await
}

#[tokio::test]
async fn one_session_or_one_tenant_cannot_hold_more_than_its_cap() {
    let app = TestApp::with_config(config).await;
    assert_eq!(alloc(&app, SITE, "capped", "s1", "a").await.status, 201);
    assert_eq!(alloc(&app, SITE, "capped", "s1", "b").await.status, 201);
    assert_eq!(
        alloc(&app, SITE, "capped", "s1", "a").await.status,
        200,
        "its own lease back is not a new one"
    );
    let r = alloc(&app, SITE, "capped", "s1", "c").await;
    r.assert_problem(429, "this session already holds 2 live numbers");
    assert_eq!(r.headers["retry-after"], "60");
    for s in ["s2", "s3", "s4", "s5"] {
        let r = alloc(&app, SITE, "capped", s, "a").await;
        if s == "s5" {
            r.assert_problem(429, "this tenant already holds 5");
        } else {
            assert_eq!(r.status, 201);
        }
    }
    // Another tenant is not affected; releasing makes room.
    assert_eq!(
        alloc(&app, OTHER_SITE, "capped", "x", "a").await.status,
        201
    );
    let first = alloc(&app, SITE, "capped", "s1", "a").await.json["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.call("DELETE", &format!("/v1/leases/{first}"), Some(SITE), None)
        .await;
    assert_eq!(alloc(&app, SITE, "capped", "s1", "c").await.status, 201);
    let m = app.call("GET", "/metrics", None, None).await.text;
    assert!(
        m.contains("leaseline_allocations_total{outcome=\"limited\",pool=\"capped\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn a_key_allocating_too_fast_is_slowed_down() {
    let app = TestApp::with_config(config).await;
    for i in 0..3 {
        assert_eq!(
            alloc(&app, SITE, "slow", &format!("s{i}"), "a")
                .await
                .status,
            201
        );
    }
    let r = alloc(&app, SITE, "slow", "s9", "a").await;
    r.assert_problem(429, "allocates too fast");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        alloc(&app, OTHER_SITE, "slow", "s9", "a").await.status,
        201,
        "per key"
    );
    app.advance(std::time::Duration::from_secs(60)).await;
    assert_eq!(alloc(&app, SITE, "slow", "s9", "a").await.status, 201);
}

#[tokio::test]
async fn an_admin_key_scoped_to_pools_sees_only_their_calls() {
    let app = TestApp::with_config(config).await;
    for (id, called) in [
        ("c1", "+33899100000"),
        ("c2", "+33899200000"),
        ("c3", "+33100000000"),
    ] {
        let body = json!({"call_id": id, "event": "start", "called": called}).to_string();
        app.call("POST", "/v1/calls", Some(TELEPHONY), Some(&body))
            .await;
    }
    let r = app.call("GET", "/v1/calls", Some(SCOPED_ADMIN), None).await;
    let ids: Vec<_> = r.json["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["c2"]);
    app.call("GET", "/v1/calls?pool=capped", Some(SCOPED_ADMIN), None)
        .await
        .assert_problem(403, "may not use pool \"capped\"");
}

#[tokio::test]
async fn tenants_cannot_release_redeem_or_see_the_targets_of_each_other() {
    let app = TestApp::with_config(config).await;
    let body = json!({"pool": "capped", "session": "s", "target": "+33612345678"}).to_string();
    let lease = app
        .call("POST", "/v1/leases", Some(SITE), Some(&body))
        .await
        .json;
    let id = lease["lease_id"].as_str().unwrap();
    app.call(
        "DELETE",
        &format!("/v1/leases/{id}"),
        Some(OTHER_SITE),
        None,
    )
    .await
    .assert_problem(404, "no lease");
    app.call(
        "POST",
        &format!("/v1/leases/{id}/redeem"),
        Some(OTHER_SITE),
        None,
    )
    .await
    .assert_problem(404, "no lease");
    let seen = app
        .call("GET", &format!("/v1/leases/{id}"), Some(OTHER_SITE), None)
        .await;
    assert_eq!(seen.json["target"], serde_json::Value::Null);
    // Lease ids are 128 random bits: two leases never share a prefix worth guessing.
    let other = app
        .call(
            "POST",
            "/v1/leases",
            Some(SITE),
            Some(&json!({"pool": "capped", "session": "t"}).to_string()),
        )
        .await
        .json;
    assert_ne!(&id[..16], &other["lease_id"].as_str().unwrap()[..16]);
}

#[tokio::test]
async fn oversized_headers_are_refused_with_431() {
    let app = TestApp::with_config(config).await;
    let mut req = Request::builder().method("GET").uri("/healthz");
    for i in 0..80 {
        req = req.header(format!("x-filler-{i}"), "x");
    }
    app.send(req.body(Body::empty()).unwrap())
        .await
        .assert_problem(431, "at most 64 headers");
    let big = "y".repeat(20 * 1024);
    let req = Request::builder()
        .method("GET")
        .uri("/healthz")
        .header("x-big", big)
        .body(Body::empty())
        .unwrap();
    app.send(req).await.assert_problem(431, "KiB");
}

#[tokio::test]
async fn an_admin_key_scoped_to_pools_lists_only_those_pools() {
    let app =
        TestApp::with_config(|d| format!("{}{}", config(d), key("admin", "admin", ADMIN))).await;
    let names = |r: &Reply| -> Vec<String> {
        r.json["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let scoped = app.call("GET", "/v1/pools", Some(SCOPED_ADMIN), None).await;
    assert_eq!(scoped.status, 200, "{}", scoped.text);
    assert_eq!(names(&scoped), ["slow"]);
    let full = app.call("GET", "/v1/pools", Some(ADMIN), None).await;
    assert_eq!(names(&full), ["capped", "slow"]);
}

#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let app = TestApp::with_config(config).await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/leases")
            .header("authorization", format!("{scheme} {SITE}"))
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"pool": "capped", "session": scheme, "listing": "a"}).to_string(),
            ))
            .unwrap();
        let r = app.send(req).await;
        assert_eq!(r.status, 201, "{scheme}: {}", r.text);
    }
    let req = Request::builder()
        .uri("/v1/pools")
        .header("authorization", format!("Basic {SITE}"))
        .body(Body::empty())
        .unwrap();
    app.send(req).await.assert_problem(401, "Bearer <key>");
}

/// Opens `GET /v1/leases/{lease}/events` from `from` and keeps the stream (its response)
/// open for as long as the caller holds it.
async fn open_stream(app: &TestApp, lease: &str, from: &str) -> axum::response::Response {
    let mut req = Request::get(format!("/v1/leases/{lease}/events"))
        .body(Body::empty())
        .unwrap();
    let peer: std::net::SocketAddr = format!("{from}:40000").parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    app.router.clone().oneshot(req).await.unwrap()
}

async fn assert_stream_refused(res: axum::response::Response, needle: &str) {
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(needle), "{text}");
}

#[tokio::test]
async fn one_lease_or_one_address_cannot_hold_unbounded_event_streams() {
    // Every open stream is woken for every lease event of the process, and every stream of
    // a lease is written each of its events: streams are a cost, so they are capped.
    let app = TestApp::with_config(|data| {
        config(data) + "\n[limits]\nevent_streams_per_lease = 3\nevent_streams_per_ip = 5\n"
    })
    .await;
    let mut leases = Vec::new();
    for i in 0..8 {
        // "capped" holds 5 live leases per tenant: two tenants' leases.
        let key = if i < 5 { SITE } else { OTHER_SITE };
        let r = alloc(&app, key, "capped", &format!("streams-{i}"), "l").await;
        leases.push(r.json["lease_id"].as_str().unwrap().to_owned());
    }
    let mut held = Vec::new();
    for i in 1..=3 {
        let res = open_stream(&app, &leases[0], &format!("192.0.2.{i}")).await;
        assert_eq!(res.status(), 200);
        held.push(res);
    }
    assert_stream_refused(
        open_stream(&app, &leases[0], "192.0.2.4").await,
        "this lease",
    )
    .await;
    // A stream that ends makes room.
    held.pop();
    let res = open_stream(&app, &leases[0], "192.0.2.4").await;
    assert_eq!(res.status(), 200);
    held.push(res);

    // One address, on many leases: 5 streams, then 429; other addresses are not affected.
    for lease in &leases[1..6] {
        let res = open_stream(&app, lease, "198.51.100.9").await;
        assert_eq!(res.status(), 200);
        held.push(res);
    }
    assert_stream_refused(
        open_stream(&app, &leases[6], "198.51.100.9").await,
        "this address",
    )
    .await;
    assert_eq!(
        open_stream(&app, &leases[6], "198.51.100.10")
            .await
            .status(),
        200
    );
    // An unknown lease is 404 and counts nothing.
    let res = open_stream(&app, "0123456789abcdef0123456789abcdef", "198.51.100.11").await;
    assert_eq!(res.status(), 404);

    let m = app.call("GET", "/metrics", None, None).await.text;
    for limit in ["stream_lease", "stream_ip"] {
        let series = format!("leaseline_rejected_by_limits_total{{limit=\"{limit}\"}} 1");
        assert!(m.contains(&series), "{series} missing from\n{m}");
    }
}

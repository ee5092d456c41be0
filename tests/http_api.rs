//! The v1 lease API as a site uses it, and every way a request can be wrong: each gets a
//! precise status and a problem+json body, and none changes what is stored.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn allocating_returns_201_with_the_contract_fields() {
    let app = TestApp::new().await;
    let r = app.allocate("small", "visitor-1").await;
    assert_eq!(r.status, 201, "{}", r.text);
    let l = &r.json;
    for field in [
        "lease_id",
        "pool",
        "number",
        "display",
        "session",
        "listing",
        "target",
        "state",
        "created_at",
        "expires_at",
        "calls",
        "calls_required",
        "paid",
    ] {
        assert!(l.get(field).is_some(), "missing {field} in {l}");
    }
    assert_eq!(l["pool"], "small");
    assert_eq!(l["number"], "+33899100000");
    assert_eq!(l["display"], "08 99 10 00 00");
    assert_eq!(l["state"], "active");
    assert_eq!(l["created_at"], "2026-01-01T00:00:00.000Z");
    assert_eq!(l["expires_at"], "2026-01-01T00:15:00.000Z");
    assert_eq!(l["target"], "+33612345678");
    assert_eq!(l["lease_id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn asking_again_returns_the_live_lease_extended_with_200() {
    let app = TestApp::new().await;
    let first = app.allocate("small", "visitor-1").await.json;
    app.advance(Duration::from_secs(600)).await;
    let again = app.allocate("small", "visitor-1").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["lease_id"], first["lease_id"]);
    assert_eq!(again.json["expires_at"], "2026-01-01T00:25:00.000Z");
}

#[tokio::test]
async fn the_lease_id_alone_reads_and_renews_but_does_not_reveal_the_target() {
    let app = TestApp::new().await;
    let id = app.allocate("small", "v").await.json["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .call("GET", &format!("/v1/leases/{id}"), None, None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["number"], "+33899100000");
    assert_eq!(r.json["target"], Value::Null);
    let owner = app
        .call("GET", &format!("/v1/leases/{id}"), Some(SITE), None)
        .await;
    assert_eq!(owner.json["target"], "+33612345678");

    app.advance(Duration::from_secs(300)).await;
    let renewed = app
        .call("POST", &format!("/v1/leases/{id}/renew"), None, None)
        .await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    assert_eq!(renewed.json["expires_at"], "2026-01-01T00:20:00.000Z");
    let short = app
        .call(
            "POST",
            &format!("/v1/leases/{id}/renew"),
            None,
            Some(r#"{"ttl_secs": 3600}"#),
        )
        .await;
    assert_eq!(short.json["expires_at"], "2026-01-01T01:05:00.000Z");
}

#[tokio::test]
async fn release_answers_204_and_the_number_cools_before_reuse() {
    let app = TestApp::new().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.allocate("small", &format!("v{i}")).await.json["lease_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let r = app
        .call(
            "DELETE",
            &format!("/v1/leases/{}", ids[0]),
            Some(SITE),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let again = app
        .call(
            "DELETE",
            &format!("/v1/leases/{}", ids[0]),
            Some(SITE),
            None,
        )
        .await;
    assert_eq!(again.status, 204, "releasing twice is harmless");
    let shown = app
        .call("GET", &format!("/v1/leases/{}", ids[0]), None, None)
        .await;
    assert_eq!(shown.json["state"], "released");

    let pools = app.call("GET", "/v1/pools", Some(ADMIN), None).await;
    let small = &pools.json["pools"][0];
    assert_eq!(
        (
            small["free"].as_u64(),
            small["leased"].as_u64(),
            small["cooling"].as_u64()
        ),
        (Some(0), Some(2), Some(1))
    );
    app.allocate("small", "v9")
        .await
        .assert_problem(503, "next one frees in 600 s");
    app.advance(Duration::from_secs(600)).await;
    assert_eq!(app.allocate("small", "v9").await.status, 201);
}

#[tokio::test]
async fn an_exhausted_pool_answers_503_with_retry_after() {
    let app = TestApp::new().await;
    for i in 0..3 {
        assert_eq!(app.allocate("small", &format!("v{i}")).await.status, 201);
    }
    let r = app.allocate("small", "late").await;
    r.assert_problem(503, "every number of this pool is in use");
    // First lease expires at 15 min and cools 10 more.
    assert_eq!(r.headers["retry-after"], "1500");
    assert_eq!(r.json["type"], "urn:leaseline:problem:pool-exhausted");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::new().await;
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(r#"{"pool": "small","#),
    )
    .await
    .assert_problem(400, "not valid JSON");
}

#[tokio::test]
async fn missing_or_mistyped_fields_are_422_naming_the_field() {
    let app = TestApp::new().await;
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(r#"{"pool": "small"}"#),
    )
    .await
    .assert_problem(422, "missing field `session`");
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(r#"{"pool": "small", "session": 42}"#),
    )
    .await
    .assert_problem(422, "invalid type");
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(r#"{"pool": "small", "session": "s", "tll_secs": 5}"#),
    )
    .await
    .assert_problem(422, "unknown field `tll_secs`");
}

#[tokio::test]
async fn bad_phone_numbers_are_422() {
    let app = TestApp::new().await;
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(r#"{"pool":"small","session":"s","target":"06 12 34 56 78"}"#),
    )
    .await
    .assert_problem(422, "target: ");
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(r#"{"pool":"small","session":"s","caller":"+0612"}"#),
    )
    .await
    .assert_problem(422, "caller: ");
}

#[tokio::test]
async fn empty_or_overlong_sessions_are_422() {
    let app = TestApp::new().await;
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(r#"{"pool":"small","session":""}"#),
    )
    .await
    .assert_problem(422, "session must not be empty");
    let long = format!(r#"{{"pool":"small","session":"{}"}}"#, "x".repeat(129));
    app.call("POST", "/v1/leases", Some(SITE), Some(&long))
        .await
        .assert_problem(422, "at most 128");
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(r#"{"pool":"small","session":"s","ttl_secs":0}"#),
    )
    .await
    .assert_problem(422, "ttl_secs");
}

#[tokio::test]
async fn an_unknown_pool_is_404() {
    let app = TestApp::new().await;
    app.allocate("nope", "s")
        .await
        .assert_problem(404, "no pool named \"nope\"");
}

#[tokio::test]
async fn no_key_or_a_wrong_key_is_401() {
    let app = TestApp::new().await;
    let body = r#"{"pool":"small","session":"s"}"#;
    let r = app.call("POST", "/v1/leases", None, Some(body)).await;
    r.assert_problem(401, "needs a key of role \"site\"");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    app.call("POST", "/v1/leases", Some("guess"), Some(body))
        .await
        .assert_problem(401, "not known");
    app.call("GET", "/v1/pools", None, None)
        .await
        .assert_problem(401, "admin");
}

#[tokio::test]
async fn the_wrong_role_or_pool_is_403() {
    let app = TestApp::new().await;
    let body = r#"{"pool":"small","session":"s"}"#;
    app.call("POST", "/v1/leases", Some(TELEPHONY), Some(body))
        .await
        .assert_problem(403, "has role \"telephony\"");
    app.call("POST", "/v1/leases", Some(CH_ONLY), Some(body))
        .await
        .assert_problem(403, "may not use pool \"small\"");
    app.call("GET", "/v1/pools", Some(SITE), None)
        .await
        .assert_problem(403, "needs role \"admin\"");
}

#[tokio::test]
async fn another_tenant_cannot_release_a_lease() {
    let app = TestApp::new().await;
    let id = app.allocate("small", "v").await.json["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.call(
        "DELETE",
        &format!("/v1/leases/{id}"),
        Some(OTHER_SITE),
        None,
    )
    .await
    .assert_problem(404, "no lease");
    let still = app
        .call("GET", &format!("/v1/leases/{id}"), None, None)
        .await;
    assert_eq!(still.json["state"], "active");
}

#[tokio::test]
async fn unknown_leases_are_404_whatever_the_id_looks_like() {
    let app = TestApp::new().await;
    let zero = "0".repeat(32);
    app.call("GET", &format!("/v1/leases/{zero}"), None, None)
        .await
        .assert_problem(404, "no lease");
    app.call("GET", "/v1/leases/not-an-id", None, None)
        .await
        .assert_problem(404, "no lease");
    app.call("POST", &format!("/v1/leases/{zero}/renew"), None, None)
        .await
        .assert_problem(404, "no lease");
    app.call("DELETE", &format!("/v1/leases/{zero}"), Some(SITE), None)
        .await
        .assert_problem(404, "no lease");
}

#[tokio::test]
async fn renewing_an_ended_lease_is_410() {
    let app = TestApp::new().await;
    let id = app.allocate("small", "v").await.json["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.advance(Duration::from_secs(15 * 60)).await;
    let r = app
        .call("POST", &format!("/v1/leases/{id}/renew"), None, None)
        .await;
    r.assert_problem(410, "expired");
    let released = app.allocate("small", "w").await.json["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.call(
        "DELETE",
        &format!("/v1/leases/{released}"),
        Some(SITE),
        None,
    )
    .await;
    app.call("POST", &format!("/v1/leases/{released}/renew"), None, None)
        .await
        .assert_problem(410, "released");
}

#[tokio::test]
async fn a_body_over_64_kib_is_413_and_changes_nothing() {
    let app = TestApp::new().await;
    let body = format!(
        r#"{{"pool":"small","session":"s","listing":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    app.call("POST", "/v1/leases", Some(SITE), Some(&body))
        .await
        .assert_problem(413, "larger than 64 KiB");
    let pools = app.call("GET", "/v1/pools", Some(ADMIN), None).await;
    assert_eq!(pools.json["pools"][0]["free"], 3);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = TestApp::new().await;
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/leases")
        .header("authorization", format!("Bearer {SITE}"))
        .header("content-type", "text/plain")
        .body(axum::body::Body::from(r#"{"pool":"small","session":"s"}"#))
        .unwrap();
    app.send(req)
        .await
        .assert_problem(415, "Content-Type: application/json");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problems_too() {
    let app = TestApp::new().await;
    app.call("GET", "/v2/leases", None, None)
        .await
        .assert_problem(404, "no such endpoint");
    app.call("PUT", "/v1/leases", Some(SITE), None)
        .await
        .assert_problem(405, "method");
}

#[tokio::test]
async fn pools_report_counts_that_add_up() {
    let app = TestApp::new().await;
    app.allocate("ch", "a").await;
    app.allocate("ch", "b").await;
    let r = app.call("GET", "/v1/pools", Some(ADMIN), None).await;
    let ch = &r.json["pools"][1];
    assert_eq!(ch["name"], "ch");
    assert_eq!(ch["size"], 50);
    assert_eq!(ch["leased"], 2);
    assert_eq!(ch["free"], 48);
    assert_eq!(ch["saturation"], 0.04);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = TestApp::new().await;
    assert_eq!(app.call("GET", "/healthz", None, None).await.status, 200);
    assert_eq!(app.call("GET", "/readyz", None, None).await.status, 200);
    app.allocate("small", "v").await;
    let m = app.call("GET", "/metrics", None, None).await;
    assert_eq!(m.status, 200);
    assert!(
        m.text
            .contains("leaseline_pool_numbers{pool=\"small\",state=\"leased\"} 1"),
        "{}",
        m.text
    );
    assert!(m
        .text
        .contains("leaseline_allocations_total{outcome=\"new\",pool=\"small\"} 1"));
}

#[tokio::test]
async fn readiness_fails_when_the_wheel_falls_behind() {
    let app = TestApp::new().await;
    app.clock.advance(Duration::from_secs(10));
    app.call("GET", "/readyz", None, None)
        .await
        .assert_problem(503, "behind");
    app.state.service.tick().await.unwrap();
    assert_eq!(app.call("GET", "/readyz", None, None).await.status, 200);
}

//! What pages use, from the outside: publishable keys only from their origins, CORS, limits
//! on allocations from pages, listing targets, the script and the demo page.

mod common;

use std::path::Path;

use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::json;

const PAGE: &str = "page-key";
const SITE_ORIGIN: &str = "https://www.annonces.example";

fn config(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[limits]
publishable_per_ip = 100
publishable_per_session = 3

[[pool]]
name = "fr"
numbers = ["+33899100000..=+33899100009"]

{}
[[key]]
name = "page"
role = "publishable"
tenant = "site"
sha256 = "{}"
origins = ["{SITE_ORIGIN}"]

[demo]
enabled = true
key = "{PAGE}"
pool = "fr"
"#,
        data.display(),
        key("site", "site", SITE),
        sha(PAGE)
    )
}

async fn from_page(
    app: &TestApp,
    origin: Option<&str>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {PAGE}"));
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map_or_else(String::new, |b| b.to_string());
    app.send(req.body(Body::from(body)).unwrap()).await
}

#[tokio::test]
async fn a_page_allocates_from_its_origin_and_gets_cors_headers_but_no_target() {
    let app = TestApp::with_config(config).await;
    let put = app
        .call(
            "PUT",
            "/v1/listings/car-1",
            Some(SITE),
            Some(r#"{"target":"+33612345678"}"#),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let r = from_page(
        &app,
        Some(SITE_ORIGIN),
        "POST",
        "/v1/leases",
        Some(json!({"pool": "fr", "session": "s1", "listing": "car-1"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.headers["access-control-allow-origin"], SITE_ORIGIN);
    assert_eq!(
        r.json["target"],
        serde_json::Value::Null,
        "the page never sees the advertiser's number"
    );
    // The site's server sees the registered target on the lease.
    let id = r.json["lease_id"].as_str().unwrap();
    let owner = app
        .call("GET", &format!("/v1/leases/{id}"), Some(SITE), None)
        .await;
    assert_eq!(owner.json["target"], "+33612345678");
    // Renewing from the page works too; releasing does not.
    let renew = from_page(
        &app,
        Some(SITE_ORIGIN),
        "POST",
        &format!("/v1/leases/{id}/renew"),
        None,
    )
    .await;
    assert_eq!(renew.status, 200, "{}", renew.text);
    from_page(
        &app,
        Some(SITE_ORIGIN),
        "DELETE",
        &format!("/v1/leases/{id}"),
        None,
    )
    .await
    .assert_problem(403, "has role \"publishable\"");
}

#[tokio::test]
async fn a_foreign_origin_or_no_origin_is_refused() {
    let app = TestApp::with_config(config).await;
    let body = json!({"pool": "fr", "session": "s1"});
    let r = from_page(
        &app,
        Some("https://evil.example"),
        "POST",
        "/v1/leases",
        Some(body.clone()),
    )
    .await;
    r.assert_problem(403, "may not be used from origin \"https://evil.example\"");
    assert!(r.headers.get("access-control-allow-origin").is_none());
    from_page(&app, None, "POST", "/v1/leases", Some(body))
        .await
        .assert_problem(403, "(none)");
    let pre = app
        .send(
            Request::builder()
                .method("OPTIONS")
                .uri("/v1/leases")
                .header("origin", "https://evil.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    pre.assert_problem(403, "origin");
}

#[tokio::test]
async fn preflights_from_the_site_are_answered() {
    let app = TestApp::with_config(config).await;
    let r = app
        .send(
            Request::builder()
                .method("OPTIONS")
                .uri("/v1/leases")
                .header("origin", SITE_ORIGIN)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.headers["access-control-allow-origin"], SITE_ORIGIN);
    assert!(r.headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    assert!(r.headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
}

#[tokio::test]
async fn a_page_may_not_choose_the_target_nor_drain_the_pool() {
    let app = TestApp::with_config(config).await;
    from_page(
        &app,
        Some(SITE_ORIGIN),
        "POST",
        "/v1/leases",
        Some(json!({"pool": "fr", "session": "s", "target": "+33600000000"})),
    )
    .await
    .assert_problem(422, "a page may not choose where calls go");
    for i in 0..3 {
        let r = from_page(
            &app,
            Some(SITE_ORIGIN),
            "POST",
            "/v1/leases",
            Some(json!({"pool": "fr", "session": "bot", "listing": format!("l{i}")})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = from_page(
        &app,
        Some(SITE_ORIGIN),
        "POST",
        "/v1/leases",
        Some(json!({"pool": "fr", "session": "bot", "listing": "l9"})),
    )
    .await;
    r.assert_problem(429, "too many numbers");
    assert!(r.headers.contains_key("retry-after"));
    let pools = app.call("GET", "/metrics", None, None).await.text;
    assert!(
        pools.contains("leaseline_rejected_by_limits_total{limit=\"page_session\"} 1"),
        "{pools}"
    );
}

#[tokio::test]
async fn the_script_and_the_demo_are_served() {
    let app = TestApp::with_config(config).await;
    let js = app.call("GET", "/embed.js", None, None).await;
    assert_eq!(js.status, 200);
    assert_eq!(
        js.headers["content-type"],
        "application/javascript; charset=utf-8"
    );
    assert!(
        js.text.len() < 6 * 1024,
        "embed.js is {} bytes",
        js.text.len()
    );
    assert!(js.text.contains("data-leaseline-pool"));
    let demo = app.call("GET", "/demo", None, None).await;
    assert_eq!(demo.status, 200);
    assert!(demo
        .text
        .contains(&format!("data-leaseline-key=\"{PAGE}\"")));
    assert!(demo.text.contains("data-leaseline-pool=\"fr\""));
    let off = TestApp::new().await;
    off.call("GET", "/demo", None, None)
        .await
        .assert_problem(404, "[demo] enabled = true");
}

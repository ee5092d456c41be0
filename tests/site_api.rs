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

const OTHER_PAGE: &str = "other-page-key";
const OTHER_ORIGIN: &str = "https://www.rencontres.example";

/// Tight limits, two tenants with a page each, and a trusted proxy block.
fn tight(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"
trusted_proxies = ["10.9.0.0/16"]

[limits]
publishable_per_ip = 3
publishable_per_prefix = 5
publishable_per_session = 2
renews_per_lease = 3
renews_per_ip = 5

[[pool]]
name = "fr"
numbers = ["+33899100000..=+33899100099"]

{}{}
[[key]]
name = "page"
role = "publishable"
tenant = "site"
sha256 = "{}"
origins = ["{SITE_ORIGIN}"]

[[key]]
name = "other-page"
role = "publishable"
tenant = "other"
sha256 = "{}"
origins = ["{OTHER_ORIGIN}"]
"#,
        data.display(),
        key("site", "site", SITE),
        key("other", "site", OTHER_SITE),
        sha(PAGE),
        sha(OTHER_PAGE)
    )
}

/// A request as the socket at `peer` sends it, with `key` (a page key comes from its origin).
async fn from_addr(
    app: &TestApp,
    peer: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    forwarded_for: Option<&str>,
) -> Reply {
    let origin = if key == OTHER_PAGE {
        OTHER_ORIGIN
    } else {
        SITE_ORIGIN
    };
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .header("origin", origin);
    if let Some(f) = forwarded_for {
        req = req.header("x-forwarded-for", f);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map_or_else(String::new, |b| b.to_string());
    let mut req = req.body(Body::from(body)).unwrap();
    let addr: std::net::SocketAddr = format!("{peer}:40000")
        .parse()
        .or_else(|_| format!("[{peer}]:40000").parse())
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    app.send(req).await
}

async fn page_alloc(app: &TestApp, peer: &str, key: &str, session: &str) -> Reply {
    let body = json!({"pool": "fr", "session": session});
    from_addr(app, peer, key, "POST", "/v1/leases", Some(body), None).await
}

#[tokio::test]
async fn pages_are_limited_per_address_and_per_whole_prefix() {
    let app = TestApp::with_config(tight).await;
    for i in 0..3 {
        let r = page_alloc(&app, "203.0.113.1", PAGE, &format!("a{i}")).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    page_alloc(&app, "203.0.113.1", PAGE, "a3")
        .await
        .assert_problem(429, "from this address");
    // Its neighbours share the /24: two more, then the whole block waits.
    for (i, peer) in ["203.0.113.2", "203.0.113.3"].iter().enumerate() {
        let r = page_alloc(&app, peer, PAGE, &format!("b{i}")).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = page_alloc(&app, "203.0.113.200", PAGE, "c").await;
    r.assert_problem(429, "from this network (/24 or /56)");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        page_alloc(&app, "198.51.100.1", PAGE, "d").await.status,
        201,
        "another /24 is not affected"
    );
    // IPv6: a /56 is one block.
    for i in 0..5 {
        let peer = format!("2001:db8:0:1{i:02x}::1");
        let r = page_alloc(&app, &peer, PAGE, &format!("v6-{i}")).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    page_alloc(&app, "2001:db8:0:1ff::9", PAGE, "v6-9")
        .await
        .assert_problem(429, "network");
    assert_eq!(
        page_alloc(&app, "2001:db8:0:200::1", PAGE, "v6-x")
            .await
            .status,
        201
    );
    let m = app.call("GET", "/metrics", None, None).await.text;
    assert!(
        m.contains("leaseline_rejected_by_limits_total{limit=\"page_prefix\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn another_tenant_using_the_same_session_does_not_use_up_its_allowance() {
    let app = TestApp::with_config(tight).await;
    // Tenant "other" burns the session's allowance from its own pages...
    for (i, peer) in ["192.0.2.1", "192.0.2.2"].iter().enumerate() {
        let body = json!({"pool": "fr", "session": "victim", "listing": format!("l{i}")});
        let r = from_addr(
            &app,
            peer,
            OTHER_PAGE,
            "POST",
            "/v1/leases",
            Some(body),
            None,
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let body = json!({"pool": "fr", "session": "victim", "listing": "l9"});
    from_addr(
        &app,
        "192.0.2.3",
        OTHER_PAGE,
        "POST",
        "/v1/leases",
        Some(body),
        None,
    )
    .await
    .assert_problem(429, "from this session");
    // ...and the site's own visitor with that session still gets a number.
    let r = page_alloc(&app, "198.51.100.7", PAGE, "victim").await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn renewals_without_a_site_key_are_limited_per_lease_and_per_address() {
    let app = TestApp::with_config(tight).await;
    let mut ids = Vec::new();
    for (i, peer) in ["192.0.2.10", "198.51.100.10", "203.0.113.10"]
        .iter()
        .enumerate()
    {
        let r = page_alloc(&app, peer, PAGE, &format!("s{i}")).await;
        ids.push(r.json["lease_id"].as_str().unwrap().to_owned());
    }
    let renew = |peer: &'static str, key: &'static str, id: String| {
        let app = &app;
        async move {
            let path = format!("/v1/leases/{id}/renew");
            from_addr(app, peer, key, "POST", &path, None, None).await
        }
    };
    // Per lease: three a minute, from wherever.
    for peer in ["192.0.2.10", "192.0.2.11", "192.0.2.12"] {
        assert_eq!(renew(peer, PAGE, ids[0].clone()).await.status, 200);
    }
    let r = renew("192.0.2.13", PAGE, ids[0].clone()).await;
    r.assert_problem(429, "this lease is renewed too often");
    assert!(r.headers.contains_key("retry-after"));
    // Per address: five a minute, whatever the lease.
    let peer = "198.51.100.10";
    assert_eq!(renew(peer, PAGE, ids[1].clone()).await.status, 200);
    assert_eq!(renew(peer, PAGE, ids[1].clone()).await.status, 200);
    assert_eq!(renew(peer, PAGE, ids[2].clone()).await.status, 200);
    assert_eq!(renew(peer, PAGE, ids[2].clone()).await.status, 200);
    assert_eq!(renew(peer, PAGE, ids[2].clone()).await.status, 200);
    renew(peer, PAGE, ids[2].clone())
        .await
        .assert_problem(429, "too many renewals from this address");
    // The site's server renews for all its visitors from one address: not limited.
    for _ in 0..10 {
        assert_eq!(renew(peer, SITE, ids[0].clone()).await.status, 200);
    }
    // A minute later the page's heartbeat goes through again.
    app.advance(std::time::Duration::from_secs(60)).await;
    assert_eq!(renew(peer, PAGE, ids[0].clone()).await.status, 200);
    let m = app.call("GET", "/metrics", None, None).await.text;
    assert!(
        m.contains("leaseline_rejected_by_limits_total{limit=\"renew_lease\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_one_limited() {
    let app = TestApp::with_config(tight).await;
    let alloc = |peer: &'static str, forwarded: &'static str, session: String| {
        let app = &app;
        async move {
            let body = json!({"pool": "fr", "session": session});
            from_addr(
                app,
                peer,
                PAGE,
                "POST",
                "/v1/leases",
                Some(body),
                Some(forwarded),
            )
            .await
        }
    };
    // Through the proxy, visitors from different networks each get their own allowance.
    for i in 0..3 {
        let r = alloc("10.9.0.1", "192.0.2.50", format!("x{i}")).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    alloc("10.9.0.1", "192.0.2.50", "x3".into())
        .await
        .assert_problem(429, "from this address");
    assert_eq!(
        alloc("10.9.0.1", "198.51.100.50", "y".into()).await.status,
        201
    );
    // A client that is not a trusted proxy cannot pick its address with the header.
    for i in 0..3 {
        let forged = ["1.1.1.1", "2.2.2.2", "3.3.3.3"][i];
        let r = alloc("203.0.113.50", forged, format!("z{i}")).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    alloc("203.0.113.50", "4.4.4.4", "z3".into())
        .await
        .assert_problem(429, "from this address");
}

#[tokio::test]
async fn a_page_lease_ends_at_page_max_ttl_however_often_renewed() {
    let app = TestApp::with_config(tight).await;
    let r = page_alloc(&app, "192.0.2.20", PAGE, "s").await;
    let id = r.json["lease_id"].as_str().unwrap().to_owned();
    let created = r.json["created_at"].as_str().unwrap().to_owned();
    let server = app.allocate("fr", "server-side").await;
    let server_id = server.json["lease_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/leases/{id}/renew");
    let mut last = String::new();
    for _ in 0..5 {
        app.advance(std::time::Duration::from_secs(5 * 60)).await;
        let r = from_addr(&app, "192.0.2.20", PAGE, "POST", &path, None, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        last = r.json["expires_at"].as_str().unwrap().to_owned();
        let server = app
            .call(
                "POST",
                &format!("/v1/leases/{server_id}/renew"),
                Some(SITE),
                None,
            )
            .await;
        assert_eq!(server.status, 200, "{}", server.text);
    }
    let cap =
        chrono::DateTime::parse_from_rfc3339(&created).unwrap() + chrono::Duration::minutes(30);
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&last).unwrap(),
        cap,
        "renewed at 25 min for 15 more, still ends 30 min after creation"
    );
    app.advance(std::time::Duration::from_secs(5 * 60)).await;
    from_addr(&app, "192.0.2.20", PAGE, "POST", &path, None, None)
        .await
        .assert_problem(410, "expired");
    let server = app
        .call(
            "POST",
            &format!("/v1/leases/{server_id}/renew"),
            Some(SITE),
            None,
        )
        .await;
    assert_eq!(server.status, 200, "a server's lease lives up to max_ttl");
}

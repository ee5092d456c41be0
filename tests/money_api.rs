//! Money from the outside: amounts asked on leases and what calls pay them, the tariff in lease
//! answers, refunds, the transactions list and the statistics, on a manual clock.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::{json, Value};

const PAGE: &str = "page-key";
const ORIGIN: &str = "https://shop.example";

/// "eur": 2.99 EUR per call; "chf": 3.13 CHF a minute by 20 s pulses; "free": no tariff.
fn config(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[[pool]]
name = "eur"
numbers = ["+33899100000..=+33899100009"]
tariff = {{ per_call = "2.99", currency = "EUR" }}
access_ttl = "1d"

[[pool]]
name = "chf"
numbers = ["+41900100000..=+41900100009"]
tariff = {{ per_minute = "3.13", currency = "CHF", increment = "20s" }}

[[pool]]
name = "free"
numbers = ["+33899200000..=+33899200009"]

{}{}{}{}{}
[[key]]
name = "page"
role = "publishable"
tenant = "site"
sha256 = "{}"
origins = ["{ORIGIN}"]

[[key]]
name = "eur-admin"
role = "admin"
sha256 = "{}"
pools = ["eur"]
"#,
        data.display(),
        key("site", "site", SITE),
        key("other", "site", OTHER_SITE),
        key("tel", "telephony", TELEPHONY),
        key("admin", "admin", ADMIN),
        "",
        sha(PAGE),
        sha(CH_ONLY),
    )
}

/// An admin key of the "eur" pool only.
const EUR_ADMIN: &str = CH_ONLY;

async fn allocate(app: &TestApp, key: &str, body: Value) -> Reply {
    app.call("POST", "/v1/leases", Some(key), Some(&body.to_string()))
        .await
}

async fn call(app: &TestApp, id: &str, called: &str, secs: u32) {
    let start =
        json!({"call_id": id, "event": "start", "called": called, "caller": "+33612345678"});
    let r = app
        .call(
            "POST",
            "/v1/calls",
            Some(TELEPHONY),
            Some(&start.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    app.advance(Duration::from_secs(u64::from(secs))).await;
    let end = json!({"call_id": id, "event": "end", "duration_secs": secs});
    let r = app
        .call("POST", "/v1/calls", Some(TELEPHONY), Some(&end.to_string()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

async fn lease(app: &TestApp, id: &str) -> Value {
    let r = app
        .call("GET", &format!("/v1/leases/{id}"), Some(SITE), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[tokio::test]
async fn lease_answers_carry_the_pools_tariff_and_what_was_paid() {
    let app = TestApp::with_config(config).await;
    let eur = allocate(&app, SITE, json!({"pool": "eur", "session": "a"})).await;
    assert_eq!(eur.status, 201, "{}", eur.text);
    assert_eq!(
        eur.json["tariff"],
        json!({"per_call": "2.99", "currency": "EUR"})
    );
    assert_eq!(eur.json["amount_paid"], "0.00");
    assert_eq!(eur.json["refunded"], "0.00");
    assert_eq!(eur.json["currency"], "EUR");
    assert!(eur.json.get("amount").is_none(), "{}", eur.text);

    let chf = allocate(
        &app,
        SITE,
        json!({"pool": "chf", "session": "a", "amount": "5"}),
    )
    .await;
    assert_eq!(chf.status, 201, "{}", chf.text);
    assert_eq!(
        chf.json["tariff"],
        json!({"per_minute": "3.13", "currency": "CHF", "increment_secs": 20})
    );
    assert_eq!(chf.json["amount"], "5.00");
    assert_eq!(chf.json["paid"], false);

    let free = allocate(&app, SITE, json!({"pool": "free", "session": "a"})).await;
    assert_eq!(free.json["tariff"], Value::Null);
    assert_eq!(free.json["currency"], Value::Null);

    // A page sees the price too (French rules want it beside the number).
    let page = app
        .send(
            Request::post("/v1/leases")
                .header("authorization", format!("Bearer {PAGE}"))
                .header("origin", ORIGIN)
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"pool": "eur", "session": "p"}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(page.status, 201, "{}", page.text);
    assert_eq!(page.json["tariff"]["per_call"], "2.99");
}

#[tokio::test]
async fn bad_amounts_are_refused_precisely() {
    let app = TestApp::with_config(config).await;
    for (amount, status, needle) in [
        (json!("2,99"), 422, "amount: \"2,99\" is not an amount"),
        (json!("-1"), 422, "is not an amount"),
        (json!("1.999"), 422, "at most two decimals"),
        (json!("1e3"), 422, "is not an amount"),
        (json!("99999999999"), 422, "at most 10000000"),
        (json!("0.00"), 422, "must be more than 0.00"),
        (json!(""), 422, "is not an amount"),
        (json!(2.99), 422, "amount"),
    ] {
        let r = allocate(
            &app,
            SITE,
            json!({"pool": "eur", "session": "a", "amount": amount}),
        )
        .await;
        r.assert_problem(status, needle);
    }
    allocate(
        &app,
        SITE,
        json!({"pool": "free", "session": "a", "amount": "1.00"}),
    )
    .await
    .assert_problem(422, "pool \"free\" has no tariff");
    // A page's key is public: it may not lower the price a merchant's server checks.
    let page = app
        .send(
            Request::post("/v1/leases")
                .header("authorization", format!("Bearer {PAGE}"))
                .header("origin", ORIGIN)
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"pool": "eur", "session": "p", "amount": "0.01"}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    page.assert_problem(422, "a page may not set the price");
}

#[tokio::test]
async fn a_lease_paid_by_amount_survives_a_restart_and_redeems_once() {
    let app = TestApp::with_config(config).await;
    let l = allocate(
        &app,
        SITE,
        json!({"pool": "chf", "session": "a", "amount": "4.00"}),
    )
    .await;
    let (id, number) = (
        l.json["lease_id"].as_str().unwrap().to_owned(),
        l.json["number"].as_str().unwrap().to_owned(),
    );
    // 41 s bill three pulses of 20 s: 3.13
    call(&app, "c1", &number, 41).await;
    let r = app
        .call("POST", &format!("/v1/leases/{id}/redeem"), Some(SITE), None)
        .await;
    r.assert_problem(402, "3.13 of 4.00 paid");
    let app = app.restart().await;
    let l = lease(&app, &id).await;
    assert_eq!(
        (l["amount_paid"].as_str(), l["paid"].as_bool()),
        (Some("3.13"), Some(false))
    );
    // one pulse more: 1.04; 4.17 ≥ 4.00
    call(&app, "c2", &number, 5).await;
    let l = lease(&app, &id).await;
    assert_eq!(
        (l["amount_paid"].as_str(), l["paid"].as_bool()),
        (Some("4.17"), Some(true))
    );
    let r = app
        .call("POST", &format!("/v1/leases/{id}/redeem"), Some(SITE), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

async fn journal(app: &TestApp) -> Vec<Value> {
    let r = app.call("GET", "/v1/calls", Some(ADMIN), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["calls"].as_array().unwrap().clone()
}

async fn refund(app: &TestApp, key: &str, id: &str, body: Value) -> Reply {
    app.call(
        "POST",
        &format!("/v1/leases/{id}/refund"),
        Some(key),
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test]
async fn refunds_are_bounded_by_what_was_paid_revoke_the_pass_and_are_journalled() {
    let app = TestApp::with_config(config).await;
    let l = allocate(
        &app,
        SITE,
        json!({"pool": "eur", "session": "a", "listing": "film-7"}),
    )
    .await;
    let (id, number) = (
        l.json["lease_id"].as_str().unwrap().to_owned(),
        l.json["number"].as_str().unwrap().to_owned(),
    );
    let body = json!({"amount": "1.00", "reason": "too early"});
    refund(&app, SITE, &id, body.clone())
        .await
        .assert_problem(409, "only a paid lease can be refunded");

    call(&app, "c1", &number, 30).await;
    let r = app
        .call("POST", &format!("/v1/leases/{id}/redeem"), Some(SITE), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let pass = r.json["pass_id"].as_str().unwrap().to_owned();

    refund(&app, OTHER_SITE, &id, body.clone())
        .await
        .assert_problem(404, "no lease");
    refund(&app, TELEPHONY, &id, body.clone())
        .await
        .assert_problem(403, "site");
    for (bad, needle) in [
        (json!({"amount": 1.0, "reason": "x"}), "decimal string"),
        (json!({"amount": "-1", "reason": "x"}), "is not an amount"),
        (json!({"amount": "0", "reason": "x"}), "more than 0.00"),
        (json!({"amount": "1.00", "reason": "  "}), "reason"),
        (json!({"amount": "1.00", "reason": "a\u{0}b"}), "control"),
        (
            json!({"amount": "1.00", "reason": "x".repeat(501)}),
            "reason",
        ),
    ] {
        refund(&app, SITE, &id, bad)
            .await
            .assert_problem(422, needle);
    }
    refund(&app, SITE, &id, json!({"amount": "3.00", "reason": "x"}))
        .await
        .assert_problem(
            409,
            "a refund of 3.00 is more than the 2.99 paid and not yet refunded",
        );

    app.advance(Duration::from_secs(60)).await;
    let r = refund(
        &app,
        SITE,
        &id,
        json!({"amount": "1.00", "reason": "customer complaint"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["refunded"], "1.00");
    let p = app
        .call("GET", &format!("/v1/passes/{pass}"), None, None)
        .await;
    assert_eq!(p.json["valid"], false, "{}", p.text);

    let app = app.restart().await;
    app.advance(Duration::from_secs(60)).await;
    refund(&app, SITE, &id, json!({"amount": "2.00", "reason": "x"}))
        .await
        .assert_problem(409, "more than the 1.99 paid and not yet refunded");
    let r = refund(
        &app,
        SITE,
        &id,
        json!({"amount": "1.99", "reason": "the rest"}),
    )
    .await;
    assert_eq!(r.json["refunded"], "2.99", "{}", r.text);

    // The journal alone settles a dispute: the call, the redeem, each refund, the pass.
    let rows = journal(&app).await;
    // Newest first; the first refund and the revocation it caused share an instant.
    let kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "lease_refunded", "{rows:?}");
    let mut same_instant = [kinds[1], kinds[2]];
    same_instant.sort();
    assert_eq!(same_instant, ["lease_refunded", "pass_revoked"], "{rows:?}");
    assert_eq!(&kinds[3..], ["lease_redeemed", "call"], "{rows:?}");
    let (second, redeemed) = (&rows[0], &rows[3]);
    let first = &rows[1 + usize::from(kinds[1] == "pass_revoked")];
    let revoked = &rows[1 + usize::from(kinds[1] != "pass_revoked")];
    assert_eq!(
        (redeemed["amount"].as_str(), redeemed["currency"].as_str()),
        (Some("2.99"), Some("EUR"))
    );
    assert_eq!(redeemed["lease_id"], id.as_str());
    assert_eq!(redeemed["listing"], "film-7");
    assert_eq!(redeemed["pass_id"], pass.as_str());
    assert_eq!(
        (first["amount"].as_str(), first["note"].as_str()),
        (Some("1.00"), Some("customer complaint"))
    );
    assert_eq!(second["amount"], "1.99");
    assert_eq!(revoked["pass_id"], pass.as_str());
    assert_eq!(revoked["lease_id"], id.as_str());
    let csv = app
        .call("GET", "/v1/calls?format=csv", Some(ADMIN), None)
        .await;
    assert!(
        csv.text
            .lines()
            .any(|l| l.contains(",lease_refunded,") && l.ends_with(",1.00,EUR")),
        "{}",
        csv.text
    );
}

async fn list(app: &TestApp, key: &str, query: &str) -> Reply {
    app.call("GET", &format!("/v1/leases{query}"), Some(key), None)
        .await
}

fn ids(r: &Reply) -> Vec<String> {
    r.json["leases"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.text))
        .iter()
        .map(|l| l["lease_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn transactions_list_a_tenants_leases_newest_first_and_never_anothers() {
    let app = TestApp::with_config(config).await;
    let mut mine = Vec::new();
    for (pool, session, listing) in [
        ("eur", "a", "film-1"),
        ("eur", "b", "film-2"),
        ("chf", "c", "film-1"),
        ("eur", "d", "film-1"),
    ] {
        let r = allocate(
            &app,
            SITE,
            json!({"pool": pool, "session": session, "listing": listing}),
        )
        .await;
        mine.push(r.json["lease_id"].as_str().unwrap().to_owned());
        app.advance(Duration::from_secs(1)).await;
    }
    let mut theirs = Vec::new();
    for session in ["x", "y"] {
        let r = allocate(&app, OTHER_SITE, json!({"pool": "eur", "session": session})).await;
        theirs.push(r.json["lease_id"].as_str().unwrap().to_owned());
        app.advance(Duration::from_secs(1)).await;
    }
    let newest_first = |v: &[String]| v.iter().rev().cloned().collect::<Vec<_>>();

    let r = list(&app, SITE, "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ids(&r), newest_first(&mine));
    assert_eq!(r.json["next_cursor"], Value::Null);
    assert_eq!(r.json["leases"][0]["tariff"]["per_call"], "2.99");
    assert_eq!(
        ids(&list(&app, OTHER_SITE, "").await),
        newest_first(&theirs)
    );

    // Pages of two, by cursor.
    let first = list(&app, SITE, "?limit=2").await;
    assert_eq!(ids(&first), newest_first(&mine)[..2]);
    let cursor = first.json["next_cursor"].as_str().unwrap().to_owned();
    let second = list(&app, SITE, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&second), newest_first(&mine)[2..]);
    assert_eq!(second.json["next_cursor"], Value::Null);

    // Filters.
    assert_eq!(ids(&list(&app, SITE, "?pool=chf").await), [mine[2].clone()]);
    assert_eq!(
        ids(&list(&app, SITE, "?listing=film-1").await),
        [mine[3].clone(), mine[2].clone(), mine[0].clone()]
    );
    let r = app
        .call(
            "DELETE",
            &format!("/v1/leases/{}", mine[1]),
            Some(SITE),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        ids(&list(&app, SITE, "?state=released").await),
        [mine[1].clone()]
    );
    assert_eq!(ids(&list(&app, SITE, "?state=active").await).len(), 3);
    let since = leaseline::http::rfc3339(T0.saturating_add(Duration::from_secs(1)));
    let until = leaseline::http::rfc3339(T0.saturating_add(Duration::from_secs(3)));
    assert_eq!(
        ids(&list(&app, SITE, &format!("?since={since}&until={until}")).await),
        [mine[2].clone(), mine[1].clone()]
    );

    // An admin of the "eur" pool sees every tenant's leases there, and nothing else.
    let r = list(&app, EUR_ADMIN, "").await;
    let mut want: Vec<String> = newest_first(&theirs);
    want.extend([mine[3].clone(), mine[1].clone(), mine[0].clone()]);
    assert_eq!(ids(&r), want);
    list(&app, EUR_ADMIN, "?pool=chf")
        .await
        .assert_problem(403, "may not use pool");
    assert_eq!(ids(&list(&app, ADMIN, "").await).len(), 6);

    // CSV, with the same rows.
    let csv = list(&app, SITE, "?format=csv").await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let lines: Vec<&str> = csv.text.lines().collect();
    assert!(
        lines[0].starts_with("lease_id,pool,number,session,listing,state"),
        "{}",
        csv.text
    );
    assert_eq!(lines.len(), 5, "{}", csv.text);
    assert!(
        lines[1].starts_with(&format!("{},eur,+33899100", mine[3])),
        "{}",
        csv.text
    );
    assert!(lines[1].contains(",0.00,0.00,EUR,"), "{}", csv.text);

    // Refusals.
    list(&app, TELEPHONY, "").await.assert_problem(403, "site");
    let page = app
        .send(
            Request::get("/v1/leases")
                .header("authorization", format!("Bearer {PAGE}"))
                .header("origin", ORIGIN)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(page.status, 403, "{}", page.text);
    list(&app, SITE, "?cursor=zz")
        .await
        .assert_problem(400, "cursor");
    list(&app, SITE, "?state=paid")
        .await
        .assert_problem(422, "state");
    list(&app, SITE, "?limit=0")
        .await
        .assert_problem(422, "limit");
    list(&app, SITE, "?pool=nope")
        .await
        .assert_problem(404, "no pool");
    list(&app, SITE, "?format=xml")
        .await
        .assert_problem(422, "format");
}

async fn stats(app: &TestApp, key: &str, query: &str) -> Reply {
    app.call("GET", &format!("/v1/stats{query}"), Some(key), None)
        .await
}

fn row(r: &Reply, key: Value, currency: &str) -> Value {
    r.json["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.text))
        .iter()
        .find(|x| x["key"] == key && x["currency"] == currency)
        .unwrap_or_else(|| panic!("no row {key} {currency}: {}", r.text))
        .clone()
}

#[tokio::test]
async fn statistics_count_calls_amounts_and_leases_by_day_listing_and_pool() {
    let app = TestApp::with_config(config).await;
    let a = allocate(
        &app,
        SITE,
        json!({"pool": "eur", "session": "a", "listing": "film-1"}),
    )
    .await;
    call(&app, "a1", a.json["number"].as_str().unwrap(), 30).await;
    call(&app, "nobody", "+33899100009", 0).await;
    let b = allocate(
        &app,
        SITE,
        json!({"pool": "chf", "session": "b", "listing": "film-2"}),
    )
    .await;
    call(&app, "b1", b.json["number"].as_str().unwrap(), 41).await;
    allocate(&app, OTHER_SITE, json!({"pool": "eur", "session": "x"})).await;
    app.advance(Duration::from_secs(86_400)).await;
    let c = allocate(
        &app,
        SITE,
        json!({"pool": "eur", "session": "c", "listing": "film-1"}),
    )
    .await;
    call(&app, "c1", c.json["number"].as_str().unwrap(), 10).await;

    let range = "since=2026-01-01T00:00:00Z&until=2026-01-03T00:00:00Z";
    let by_day = stats(&app, ADMIN, &format!("?by=day&{range}")).await;
    assert_eq!(by_day.status, 200, "{}", by_day.text);
    assert_eq!(
        by_day.json["rows"].as_array().unwrap().len(),
        3,
        "{}",
        by_day.text
    );
    assert_eq!(
        row(&by_day, json!("2026-01-01"), "EUR"),
        json!({"key": "2026-01-01", "calls": 2, "attributed": 1, "answered": 1,
               "billed_seconds": 30, "amount": "2.99", "currency": "EUR",
               "leases": 2, "paid_leases": 1})
    );
    assert_eq!(
        row(&by_day, json!("2026-01-01"), "CHF"),
        json!({"key": "2026-01-01", "calls": 1, "attributed": 1, "answered": 1,
               "billed_seconds": 60, "amount": "3.13", "currency": "CHF",
               "leases": 1, "paid_leases": 1})
    );
    let day2 = row(&by_day, json!("2026-01-02"), "EUR");
    assert_eq!(
        (day2["calls"].as_u64(), day2["amount"].as_str()),
        (Some(1), Some("2.99"))
    );

    let by_pool = stats(&app, ADMIN, &format!("?by=pool&{range}")).await;
    let eur = row(&by_pool, json!("eur"), "EUR");
    assert_eq!(
        (
            eur["calls"].as_u64(),
            eur["amount"].as_str(),
            eur["leases"].as_u64()
        ),
        (Some(3), Some("5.98"), Some(3))
    );
    let by_listing = stats(&app, ADMIN, &format!("?by=listing&{range}")).await;
    let film = row(&by_listing, json!("film-1"), "EUR");
    assert_eq!(
        (
            film["calls"].as_u64(),
            film["amount"].as_str(),
            film["paid_leases"].as_u64()
        ),
        (Some(2), Some("5.98"), Some(2))
    );
    let none = row(&by_listing, Value::Null, "EUR");
    assert_eq!(
        (none["calls"].as_u64(), none["attributed"].as_u64()),
        (Some(1), Some(0))
    );

    // One day only; the default range (the last 30 days) holds everything.
    let one = stats(
        &app,
        ADMIN,
        "?since=2026-01-02T00:00:00Z&until=2026-01-03T00:00:00Z",
    )
    .await;
    assert_eq!(
        one.json["rows"].as_array().unwrap().len(),
        1,
        "{}",
        one.text
    );
    let default = stats(&app, ADMIN, "?by=pool").await;
    assert_eq!(
        row(&default, json!("eur"), "EUR")["calls"],
        3,
        "{}",
        default.text
    );

    // The statistics are on disk: a restart keeps them.
    let app = app.restart().await;
    assert_eq!(
        stats(&app, ADMIN, &format!("?by=day&{range}")).await.json,
        by_day.json
    );

    // An admin of one pool sees its pool only.
    let scoped = stats(&app, EUR_ADMIN, &format!("?by=pool&{range}")).await;
    assert_eq!(
        scoped.json["rows"].as_array().unwrap().len(),
        1,
        "{}",
        scoped.text
    );
    stats(&app, EUR_ADMIN, "?pool=chf")
        .await
        .assert_problem(403, "may not use pool");
    // A site sees its own leases and the calls they took, nothing of the others' nor of calls
    // that reached no lease.
    let mine = stats(&app, SITE, &format!("?by=pool&{range}")).await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    let eur = row(&mine, json!("eur"), "EUR");
    assert_eq!(
        (
            eur["calls"].as_u64(),
            eur["attributed"].as_u64(),
            eur["leases"].as_u64(),
            eur["amount"].as_str()
        ),
        (Some(2), Some(2), Some(2), Some("5.98")),
        "{}",
        mine.text
    );
    let theirs = stats(&app, OTHER_SITE, &format!("?by=pool&{range}")).await;
    let eur = row(&theirs, json!("eur"), "EUR");
    assert_eq!(
        (eur["calls"].as_u64(), eur["leases"].as_u64()),
        (Some(0), Some(1))
    );
    stats(&app, TELEPHONY, "").await.assert_problem(403, "site");
    stats(&app, ADMIN, "?by=week")
        .await
        .assert_problem(422, "by");
    stats(
        &app,
        ADMIN,
        "?since=2026-01-03T00:00:00Z&until=2026-01-01T00:00:00Z",
    )
    .await
    .assert_problem(422, "before until");
    stats(&app, ADMIN, "?pool=nope")
        .await
        .assert_problem(404, "no pool");
}

#[tokio::test]
async fn revenue_metrics_count_cents_and_billed_seconds() {
    let app = TestApp::with_config(config).await;
    let text = app.call("GET", "/metrics", None, None).await.text;
    assert!(
        text.contains("leaseline_amount_total{currency=\"EUR\",pool=\"eur\"} 0"),
        "{text}"
    );
    let a = allocate(&app, SITE, json!({"pool": "eur", "session": "a"})).await;
    call(&app, "a1", a.json["number"].as_str().unwrap(), 30).await;
    let b = allocate(&app, SITE, json!({"pool": "chf", "session": "b"})).await;
    call(&app, "b1", b.json["number"].as_str().unwrap(), 41).await;
    let text = app.call("GET", "/metrics", None, None).await.text;
    for line in [
        "leaseline_amount_total{currency=\"EUR\",pool=\"eur\"} 299",
        "leaseline_amount_total{currency=\"CHF\",pool=\"chf\"} 313",
        "leaseline_billed_seconds_total{pool=\"eur\"} 30",
        "leaseline_billed_seconds_total{pool=\"chf\"} 60",
        "leaseline_billed_seconds_total{pool=\"free\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    assert!(
        !text.contains("leaseline_amount_total{currency=\"\""),
        "{text}"
    );
}

#[tokio::test]
async fn past_journal_retention_callers_become_pseudonyms_and_amounts_stay() {
    let app = TestApp::with_config(|d| {
        config(d).replace("data_dir = ", "journal_retention = \"2d\"\ndata_dir = ")
    })
    .await;
    let a = allocate(&app, SITE, json!({"pool": "eur", "session": "a"})).await;
    let number = a.json["number"].as_str().unwrap().to_owned();
    let start = |id: &str, caller: &str| {
        json!({"call_id": id, "event": "start", "called": number, "caller": caller}).to_string()
    };
    for (id, caller) in [
        ("c1", "+33611111111"),
        ("c2", "+33611111111"),
        ("c3", "+33622222222"),
    ] {
        app.call(
            "POST",
            "/v1/calls",
            Some(TELEPHONY),
            Some(&start(id, caller)),
        )
        .await;
        let end = json!({"call_id": id, "event": "end", "duration_secs": 20}).to_string();
        app.call("POST", "/v1/calls", Some(TELEPHONY), Some(&end))
            .await;
    }
    let before = journal(&app).await;
    assert!(before
        .iter()
        .all(|r| r["caller"].as_str().unwrap().starts_with("+336")));

    // A day later, still within retention: numbers stay.
    app.advance(Duration::from_secs(86_400)).await;
    let rows = journal(&app).await;
    assert_eq!(rows, before);
    // Past two days: every old caller is a pseudonym; a new call keeps its number.
    app.advance(Duration::from_secs(86_400 + 60)).await;
    app.call(
        "POST",
        "/v1/calls",
        Some(TELEPHONY),
        Some(&start("c4", "+33633333333")),
    )
    .await;
    let app = app.restart().await;
    app.advance(Duration::from_secs(1)).await;
    let rows = journal(&app).await;
    let caller = |id: &str| {
        let r = rows.iter().find(|r| r["call_id"] == id).unwrap();
        (
            r["caller"].as_str().unwrap().to_owned(),
            r["amount"].clone(),
        )
    };
    let (c1, c2, c3, c4) = (caller("c1"), caller("c2"), caller("c3"), caller("c4"));
    assert!(c1.0.starts_with("anon:") && c1.0.len() == 5 + 24, "{c1:?}");
    assert_eq!(c1.0, c2.0, "one caller, one pseudonym: rows still group");
    assert_ne!(c1.0, c3.0);
    assert_eq!((c1.1, c3.1), (json!("2.99"), json!("2.99")), "amounts stay");
    assert_eq!(c4.0, "+33633333333");
    let csv = app
        .call("GET", "/v1/calls?format=csv", Some(ADMIN), None)
        .await;
    assert!(!csv.text.contains("+33611111111"), "{}", csv.text);
    assert!(csv.text.contains(&c1.0), "{}", csv.text);
    // Statistics are untouched.
    let s = stats(&app, ADMIN, "?by=pool").await;
    assert_eq!(row(&s, json!("eur"), "EUR")["amount"], "8.97", "{}", s.text);
}

#[test]
fn journal_retention_must_outlast_the_calls_memory() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(&dir.path().join("data"));
    let with = |r: &str| {
        leaseline::config::Config::parse(
            &text.replace(
                "data_dir = ",
                &format!("journal_retention = \"{r}\"\ndata_dir = "),
            ),
            dir.path(),
        )
    };
    assert_eq!(
        with("1y").unwrap().server.journal_retention,
        Duration::from_secs(365 * 86_400)
    );
    let e = with("1d").unwrap_err().to_string();
    assert!(
        e.contains("must be longer than pool \"eur\"'s retention"),
        "{e}"
    );
    let e = with("1h").unwrap_err().to_string();
    assert!(e.contains("journal_retention"), "{e}");
}

#[tokio::test]
async fn the_back_office_page_is_served_locked_down_with_pools_numbers_and_settings() {
    let app = TestApp::with_config(config).await;
    let page = app.call("GET", "/admin", None, None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(
        csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    let text = page.text.replace("http://www.w3.org/2000/svg", "");
    assert!(
        !text.contains("http://") && !text.contains("https://") && !text.contains("<script src"),
        "no CDN, nothing loaded from elsewhere"
    );

    let l = allocate(
        &app,
        SITE,
        json!({"pool": "eur", "session": "a", "listing": "film-1"}),
    )
    .await;
    let pools = app.call("GET", "/v1/pools", Some(ADMIN), None).await;
    let eur = &pools.json["pools"][0];
    assert_eq!(
        eur["settings"]["tariff"]["per_call"], "2.99",
        "{}",
        pools.text
    );
    assert_eq!(eur["settings"]["ttl_secs"], 900);
    assert_eq!(eur["settings"]["on_exhausted"], "reject");

    let n = app
        .call("GET", "/v1/pools/eur/numbers?limit=3", Some(ADMIN), None)
        .await;
    assert_eq!(n.status, 200, "{}", n.text);
    assert_eq!(n.json["size"], 10);
    let numbers = n.json["numbers"].as_array().unwrap();
    assert_eq!(numbers.len(), 3);
    let held = numbers
        .iter()
        .find(|x| x["number"] == l.json["number"])
        .unwrap();
    assert_eq!(held["state"], "leased");
    assert_eq!(held["lease_id"], l.json["lease_id"]);
    assert_eq!(held["listing"], "film-1");
    assert!(numbers
        .iter()
        .filter(|x| x["state"] == "free")
        .all(|x| x["lease_id"].is_null()));
    let last = app
        .call("GET", "/v1/pools/eur/numbers?offset=9", Some(ADMIN), None)
        .await;
    assert_eq!(last.json["numbers"].as_array().unwrap().len(), 1);
    app.call("GET", "/v1/pools/eur/numbers?limit=0", Some(ADMIN), None)
        .await
        .assert_problem(422, "limit");
    app.call("GET", "/v1/pools/nope/numbers", Some(ADMIN), None)
        .await
        .assert_problem(404, "no pool");
    app.call("GET", "/v1/pools/chf/numbers", Some(EUR_ADMIN), None)
        .await
        .assert_problem(403, "may not use pool");
    app.call("GET", "/v1/pools/eur/numbers", Some(SITE), None)
        .await
        .assert_problem(403, "admin");
}

#[tokio::test]
async fn ended_transactions_stay_listed_after_their_records_are_purged() {
    let app = TestApp::with_config(config).await;
    let mut made = Vec::new();
    for (key, session) in [(SITE, "a"), (OTHER_SITE, "x"), (SITE, "b")] {
        let r = allocate(
            &app,
            key,
            json!({"pool": "eur", "session": session, "listing": "film-1"}),
        )
        .await;
        made.push(r.json["lease_id"].as_str().unwrap().to_owned());
        app.advance(Duration::from_secs(1)).await;
    }
    let first_number = lease(&app, &made[0]).await["number"].clone();
    call(&app, "p1", first_number.as_str().unwrap(), 30).await;
    // Past expiry, quarantine and the pool's retention (1 day): the core forgets them.
    app.advance(Duration::from_secs(2 * 86_400)).await;
    app.call("GET", &format!("/v1/leases/{}", made[0]), Some(SITE), None)
        .await
        .assert_problem(404, "no lease");
    let app = app.restart().await;
    // A new one, live, among them.
    let live = allocate(&app, SITE, json!({"pool": "eur", "session": "c"})).await;
    let live = live.json["lease_id"].as_str().unwrap().to_owned();

    let r = list(&app, SITE, "").await;
    assert_eq!(
        ids(&r),
        [live.clone(), made[2].clone(), made[0].clone()],
        "{}",
        r.text
    );
    let old = &r.json["leases"][2];
    assert_eq!(
        (&old["state"], &old["amount_paid"], &old["paid"]),
        (&json!("expired"), &json!("2.99"), &json!(true)),
        "{}",
        r.text
    );
    assert_eq!(ids(&list(&app, OTHER_SITE, "").await), [made[1].clone()]);
    let active = ids(&list(&app, SITE, "?state=active").await);
    assert_eq!(active, [live.as_str()]);
    assert_eq!(
        ids(&list(&app, SITE, "?state=expired&listing=film-1").await),
        [made[2].clone(), made[0].clone()]
    );
    // Paging runs on from the live leases into the history.
    let first = list(&app, SITE, "?limit=2").await;
    assert_eq!(ids(&first), [live, made[2].clone()]);
    let cursor = first.json["next_cursor"].as_str().unwrap().to_owned();
    let second = list(&app, SITE, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&second), [made[0].clone()]);
    assert_eq!(second.json["next_cursor"], Value::Null);
}

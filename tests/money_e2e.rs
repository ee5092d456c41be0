//! Money through the real binary, across kill -9: what a lease was paid and refunded, the
//! priced calls, the refund's journal row and the statistics all survive a crash, since each
//! was acknowledged only once durable.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn amounts_refunds_and_statistics_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(
        dir.path(),
        r#"[[pool]]
name = "ch"
numbers = ["+41900100000..=+41900100009"]
tariff = { per_minute = "3.13", currency = "CHF", increment = "20s" }"#,
    );
    let server = Server::start(&config);
    let (status, l) = server.post(
        "/v1/leases",
        Some(SITE),
        &json!({"pool": "ch", "session": "s", "listing": "l-1", "amount": "4.00"}),
    );
    assert_eq!(status, 201, "{l}");
    let id = l["lease_id"].as_str().unwrap().to_owned();
    for (call, secs) in [("k1", 41), ("k2", 5)] {
        let start = json!({"call_id": call, "event": "start", "called": l["number"], "caller": "+41791111111"});
        assert_eq!(server.post("/v1/calls", Some(TELEPHONY), &start).0, 200);
        let end = json!({"call_id": call, "event": "end", "duration_secs": secs});
        let (status, e) = server.post("/v1/calls", Some(TELEPHONY), &end);
        assert_eq!(status, 200, "{e}");
    }
    let (status, r) = server.post(
        &format!("/v1/leases/{id}/refund"),
        Some(SITE),
        &json!({"amount": "1.17", "reason": "goodwill"}),
    );
    assert_eq!(status, 200, "{r}");
    server.kill9();

    let server = Server::start(&config);
    let (_, l) = server.get(&format!("/v1/leases/{id}"), Some(SITE));
    assert_eq!(
        (&l["amount"], &l["amount_paid"], &l["refunded"], &l["paid"]),
        (&json!("4.00"), &json!("4.17"), &json!("1.17"), &json!(true)),
        "{l}"
    );
    let (_, j) = server.get("/v1/calls", Some(ADMIN));
    let rows = j["calls"].as_array().unwrap();
    let amount = |kind: &str| -> Vec<Value> {
        rows.iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["amount"].clone())
            .collect()
    };
    assert_eq!(amount("call"), [json!("1.04"), json!("3.13")], "{j}");
    assert_eq!(amount("lease_refunded"), [json!("1.17")], "{j}");
    let (_, s) = server.get("/v1/stats?by=listing", Some(ADMIN));
    assert_eq!(
        s["rows"],
        json!([{"key": "l-1", "calls": 2, "attributed": 2, "answered": 2, "billed_seconds": 80,
                "amount": "4.17", "currency": "CHF", "leases": 1, "paid_leases": 1}]),
        "{s}"
    );
}

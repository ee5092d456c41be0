//! The call modes end to end through the real binary: shared number + code, caller
//! recognition, multi-call to paid to redeem (and 409 after a restart), live events with
//! reconnection, the journal and its CSV export.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    binary_config(
        dir,
        r#"[[pool]]
name = "p"
numbers = ["+33899100000"]
on_exhausted = "shared"
shared_number = "+33899199999"
code_ttl = "10m""#,
    )
}

fn allocate(s: &Server, body: Value) -> Value {
    let (status, v) = http(
        &agent(),
        "POST",
        &s.url("/v1/leases"),
        Some(SITE),
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 201, "{v}");
    v
}

fn call(s: &Server, body: Value) -> Value {
    let (status, v) = http(
        &agent(),
        "POST",
        &s.url("/v1/calls"),
        Some(TELEPHONY),
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

/// Reads Server-Sent Events as (id, event, data) until `n` have arrived.
fn read_events(url: &str, last_id: Option<&str>, n: usize) -> Vec<(Option<String>, String, Value)> {
    let agent = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(10))
        .build();
    let mut req = agent.get(url);
    if let Some(id) = last_id {
        req = req.set("last-event-id", id);
    }
    let res = req.call().unwrap();
    assert_eq!(res.header("content-type"), Some("text/event-stream"));
    let mut out = Vec::new();
    let (mut id, mut event, mut data) = (None, String::new(), String::new());
    for line in BufReader::new(res.into_reader()).lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim());
        } else if line.is_empty() && !event.is_empty() {
            out.push((
                id.take(),
                std::mem::take(&mut event),
                serde_json::from_str(&data).unwrap(),
            ));
            data.clear();
            if out.len() == n {
                break;
            }
        }
    }
    out
}

#[test]
fn the_call_modes_work_end_to_end_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let server = Server::start(&config);

    // The only number goes to A; B gets the shared number and a code.
    let a = allocate(
        &server,
        json!({"pool": "p", "session": "a", "listing": "car-1", "target": "+33600000001"}),
    );
    assert_eq!(a["number"], "+33899100000");
    let b = allocate(
        &server,
        json!({"pool": "p", "session": "b", "listing": "car-2", "target": "+33600000002"}),
    );
    assert_eq!(b["number"], "+33899199999");
    assert_eq!(b["display"], "08 99 19 99 99");
    let code = b["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 4);

    let r = call(
        &server,
        json!({"call_id": "k1", "event": "start", "called": "+33899199999", "caller": "+33611111111", "code": code}),
    );
    assert_eq!(
        (r["reason"].as_str(), r["target"].as_str()),
        (Some("code"), Some("+33600000002"))
    );

    // Caller recognition: C typed their number on the page, then calls the shared number
    // without typing the code; the same caller dialling A's number still reaches A.
    let c = allocate(
        &server,
        json!({"pool": "p", "session": "c", "listing": "car-3", "target": "+33600000003", "caller": "+33622222222"}),
    );
    let r = call(
        &server,
        json!({"call_id": "k2", "event": "start", "called": "+33899199999", "caller": "+33622222222"}),
    );
    assert_eq!(r["reason"], "caller");
    assert_eq!(r["lease_id"], c["lease_id"]);
    let r = call(
        &server,
        json!({"call_id": "k2a", "event": "start", "called": "+33899100000", "caller": "+33622222222"}),
    );
    assert_eq!(r["reason"], "active");
    assert_eq!(r["lease_id"], a["lease_id"]);

    // Multi-call: D needs two calls of at least 10 s; a page follows it live.
    let d = allocate(
        &server,
        json!({"pool": "p", "session": "d", "listing": "video", "calls_required": 2, "min_call_secs": 10}),
    );
    let d_id = d["lease_id"].as_str().unwrap().to_owned();
    let d_code = d["code"].as_str().unwrap().to_owned();
    let events_url = server.url(&format!("/v1/leases/{d_id}/events"));
    let watcher = {
        let url = events_url.clone();
        std::thread::spawn(move || read_events(&url, None, 6))
    };
    std::thread::sleep(Duration::from_millis(300)); // let the page connect before the calls
    for (i, secs) in [(1, 15), (2, 12)] {
        let id = format!("d{i}");
        call(
            &server,
            json!({"call_id": id, "event": "start", "called": "+33899199999", "caller": format!("+3363333333{i}"), "code": d_code}),
        );
        let end = call(
            &server,
            json!({"call_id": id, "event": "end", "duration_secs": secs}),
        );
        assert_eq!(end["counted"], true);
    }
    let events = watcher.join().unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "lease",
            "call_started",
            "call_ended",
            "call_started",
            "call_ended",
            "paid"
        ]
    );
    assert_eq!(events[0].2["calls_missing"], 2);
    assert_eq!(events[2].2["calls_missing"], 1);
    assert_eq!(events[5].2["paid"], true);

    // A page that reconnects after the first call_ended gets what it missed.
    let missed = read_events(&events_url, events[2].0.as_deref(), 4);
    let kinds: Vec<_> = missed.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(kinds, ["lease", "call_started", "call_ended", "paid"]);

    let redeem = server.url(&format!("/v1/leases/{d_id}/redeem"));
    let (status, v) = http(&agent(), "POST", &redeem, Some(SITE), None).unwrap();
    assert_eq!(status, 200, "{v}");

    // SIGTERM: ends open event streams, drains, flushes, exits 0.
    let open_page = {
        let url = events_url.clone();
        std::thread::spawn(move || read_events(&url, None, 100).len())
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut server = server;
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        server.child.wait().unwrap().success(),
        "graceful shutdown exits 0"
    );
    assert_eq!(
        open_page.join().unwrap(),
        1,
        "the open stream got its snapshot, then ended"
    );
    drop(server);

    let server = Server::start(&config);
    let redeem = server.url(&format!("/v1/leases/{d_id}/redeem"));
    let (status, v) = http(&agent(), "POST", &redeem, Some(SITE), None).unwrap();
    assert_eq!(status, 409, "redeem is refused after a restart too: {v}");

    // The journal holds every call, and the redeem after them; the export writes it as CSV.
    let (_, j) = http(&agent(), "GET", &server.url("/v1/calls"), Some(ADMIN), None).unwrap();
    let rows = j["calls"].as_array().unwrap();
    assert_eq!(rows[0]["kind"], "lease_redeemed", "{j}");
    assert_eq!(rows[0]["lease_id"], d_id.as_str(), "{j}");
    let ids: Vec<_> = rows[1..]
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["d2", "d1", "k2a", "k2", "k1"]);
    let out = Command::new(env!("CARGO_BIN_EXE_leaseline"))
        .args([
            "export",
            "calls",
            "--url",
            &format!("http://{}", server.addr),
            "--format",
            "csv",
        ])
        .env("LEASELINE_ADMIN_KEY", ADMIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = csv.lines().collect();
    assert_eq!(lines.len(), 7, "{csv}");
    assert!(lines[1].contains(",lease_redeemed,"), "{csv}");
    assert!(
        lines[2].starts_with("d2,p,+33899199999,+33633333332,"),
        "{csv}"
    );
    assert!(lines[2].ends_with(",12,true,call,,,"), "{csv}");
}

#[test]
fn ticketing_codes_are_earned_by_phone_redeemed_once_and_let_the_buyer_back_in() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(
        dir.path(),
        r#"[[pool]]
name = "videos"
numbers = ["+33899300000"]
mode = "ticketing"
calls_required = 2
access_ttl = "30d"
price = { amount = "5.98", currency = "EUR" }"#,
    );
    let server = Server::start(&config);
    let first = call(
        &server,
        json!({"call_id": "t1", "event": "start", "called": "+33899300000", "caller": "+33612345678"}),
    );
    assert_eq!(first["reason"], "ticketing");
    assert_eq!(
        first["ticketing"],
        json!({"calls_done": 1, "calls_missing": 1})
    );
    let second = call(
        &server,
        json!({"call_id": "t2", "event": "start", "called": "+33899300000", "caller": "+33612345678"}),
    );
    let code = second["ticketing"]["code"].as_str().unwrap().to_owned();

    let (status, ticket) = http(
        &agent(),
        "POST",
        &server.url("/v1/tickets/redeem"),
        Some(SITE),
        Some(&json!({"code": code})),
    )
    .unwrap();
    assert_eq!(status, 200, "{ticket}");
    assert_eq!(
        (ticket["amount"].as_str(), ticket["currency"].as_str()),
        (Some("5.98"), Some("EUR"))
    );
    assert_eq!(ticket["formula"]["calls_required"], 2);
    let pass = ticket["pass_id"].as_str().unwrap().to_owned();
    let (_, p) = http(
        &agent(),
        "GET",
        &server.url(&format!("/v1/passes/{pass}")),
        None,
        None,
    )
    .unwrap();
    assert_eq!(p["valid"], true);
    assert_eq!(p["access_until"], ticket["access_until"]);

    server.kill9();
    let server = Server::start(&config);
    let (status, _) = http(
        &agent(),
        "POST",
        &server.url("/v1/tickets/redeem"),
        Some(SITE),
        Some(&json!({"code": code})),
    )
    .unwrap();
    assert_eq!(status, 409, "a code redeems once, restart or not");
    let (_, p) = http(
        &agent(),
        "GET",
        &server.url(&format!("/v1/passes/{pass}")),
        None,
        None,
    )
    .unwrap();
    assert_eq!(p["valid"], true, "the pass survives the restart");

    let (_, j) = http(
        &agent(),
        "GET",
        &server.url("/v1/calls?pool=videos"),
        Some(ADMIN),
        None,
    )
    .unwrap();
    let rows = j["calls"].as_array().unwrap();
    let mut kinds: Vec<_> = rows
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds[0], "ticket_redeemed", "newest first: {j}");
    kinds.sort();
    assert_eq!(
        kinds,
        ["call", "call", "ticket_issued", "ticket_redeemed"],
        "{j}"
    );
    let issued = rows.iter().find(|r| r["kind"] == "ticket_issued").unwrap();
    assert_eq!(
        (issued["amount"].as_str(), issued["currency"].as_str()),
        (Some("5.98"), Some("EUR"))
    );
    let completing = rows.iter().find(|r| r["call_id"] == "t2").unwrap();
    assert_eq!(
        completing["ticket_id"], issued["ticket_id"],
        "the journal ties the code to its call"
    );
}

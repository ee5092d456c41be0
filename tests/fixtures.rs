//! Fixture-driven tests: each file in `tests/fixtures/attribution/` and
//! `tests/fixtures/ticketing/` is a timeline of leases, calls, redeems and restarts with the
//! answer expected at each step, played through the HTTP API on a manual clock. See
//! `README.md` in those folders for the format.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use leaseline::config::parse_duration;
use serde::Deserialize;
use serde_json::{json, Value};

/// Two numbers, a shared number with codes, a fallback target.
fn fixture_config(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[[pool]]
name = "fx"
numbers = ["+33899100000", "+33899100001"]
ttl = "15m"
max_ttl = "2h"
grace = "5m"
quarantine = "10m"
on_exhausted = "shared"
shared_number = "+33899199999"
code_ttl = "3m"
return_window = "30d"
fallback_target = "+33100000000"

{}
{}
{}"#,
        data.display(),
        key("site", "site", SITE),
        key("other", "site", OTHER_SITE),
        key("tel", "telephony", TELEPHONY)
    )
}

/// Ticketing pools: "tk" sells 3 calls of at least 60 s within an hour (8.97 EUR, codes live
/// a day, access for 30 days); "tk1" sells one call (codes live 10 minutes, access 7 days).
fn ticketing_config(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[[pool]]
name = "tk"
numbers = ["+33899300000", "+33899300001"]
mode = "ticketing"
calls_required = 3
min_call_secs = 60
window = "1h"
code_ttl = "1d"
access_ttl = "30d"
price = {{ amount = "8.97", currency = "EUR" }}

[[pool]]
name = "tk1"
numbers = ["+33899310000"]
mode = "ticketing"
calls_required = 1
code_ttl = "10m"
access_ttl = "7d"

{}
{}
{}"#,
        data.display(),
        key("site", "site", SITE),
        key("other", "site", OTHER_SITE),
        key("tel", "telephony", TELEPHONY)
    )
}

/// Priced pools: "eur" charges 2.99 EUR per answered call; "chf" 3.13 CHF a minute by the
/// second; "chf20" the same by 20-second pulses; "min" 1.00 EUR a minute by whole minutes;
/// "half" 0.30 EUR a minute by the second (one second is exactly half a cent).
fn money_config(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[[pool]]
name = "eur"
numbers = ["+33899100000", "+33899100001"]
tariff = {{ per_call = "2.99", currency = "EUR" }}

[[pool]]
name = "chf"
numbers = ["+41900100000"]
tariff = {{ per_minute = "3.13", currency = "CHF" }}

[[pool]]
name = "chf20"
numbers = ["+41900200000"]
tariff = {{ per_minute = "3.13", currency = "CHF", increment = "20s" }}

[[pool]]
name = "min"
numbers = ["+33899400000"]
tariff = {{ per_minute = "1.00", currency = "EUR", increment = "60s" }}

[[pool]]
name = "half"
numbers = ["+33899500000"]
tariff = {{ per_minute = "0.30", currency = "EUR" }}

{}
{}
{}
{}"#,
        data.display(),
        key("site", "site", SITE),
        key("other", "site", OTHER_SITE),
        key("tel", "telephony", TELEPHONY),
        key("admin", "admin", ADMIN)
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[allow(dead_code)]
    description: String,
    step: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// When the step happens, from the start of the fixture.
    at: String,
    name: Option<String>,
    allocate: Option<Allocate>,
    release: Option<String>,
    call: Option<CallStep>,
    end: Option<EndStep>,
    lease: Option<LeaseCheck>,
    redeem: Option<RedeemStep>,
    pass: Option<PassCheck>,
    revoke: Option<String>,
    restart: Option<bool>,
    expect: Option<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemStep {
    /// The code issued to this call id, or eight literal digits.
    code_of: Option<String>,
    code: Option<String>,
    /// "site" (default) or "other" (another tenant).
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PassCheck {
    /// The redeem step's name.
    name: String,
    valid: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketingExpect {
    calls_done: u64,
    calls_missing: u64,
    code: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Allocate {
    /// "site" (default) or "other" (another tenant's site key).
    key: Option<String>,
    /// The pool ("fx" unless named).
    pool: Option<String>,
    /// What the merchant asks, a decimal string.
    amount: Option<String>,
    session: String,
    listing: Option<String>,
    target: Option<String>,
    caller: Option<String>,
    calls_required: Option<u32>,
    min_call_secs: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallStep {
    id: String,
    /// A lease's name (its number), `shared`, or an E.164 number.
    called: String,
    caller: Option<String>,
    /// A lease's name (its code) or four digits.
    code: Option<String>,
    /// When the call really started, if the event arrives late.
    event_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndStep {
    id: String,
    duration_secs: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseCheck {
    name: String,
    calls: Option<u64>,
    paid: Option<bool>,
    state: Option<String>,
    amount_paid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    reason: Option<String>,
    /// A lease's name, or "none".
    lease: Option<String>,
    target: Option<String>,
    listing: Option<String>,
    counted: Option<bool>,
    /// For allocations: "shared" when a code on the shared number is expected.
    number: Option<String>,
    status: Option<u16>,
    ticketing: Option<TicketingExpect>,
    /// A redeem's price, or what an ended call cost (checked in its answer and its journal
    /// row, JSON and CSV).
    amount: Option<String>,
    currency: Option<String>,
    billed_secs: Option<u32>,
}

fn offset(s: &str) -> Duration {
    parse_duration(s).unwrap_or_else(|e| panic!("bad duration {s:?}: {e}"))
}

async fn play(path: &Path, config: fn(&Path) -> String) {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let fx: Fixture = toml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut app = TestApp::with_config(config).await;
    let mut leases: HashMap<String, Value> = HashMap::new();
    let mut codes: HashMap<String, String> = HashMap::new();
    let mut redeemed: HashMap<String, Value> = HashMap::new();
    let mut elapsed = Duration::ZERO;
    for (i, step) in fx.step.iter().enumerate() {
        let ctx = format!("{file} step {} (at {})", i + 1, step.at);
        let at = offset(&step.at);
        assert!(at >= elapsed, "{ctx}: steps must be in time order");
        app.advance(at - elapsed).await;
        elapsed = at;
        let expect = step.expect.as_ref();

        if let Some(a) = &step.allocate {
            let body = json!({
                "pool": a.pool.as_deref().unwrap_or("fx"), "amount": a.amount, "session": a.session, "listing": a.listing, "target": a.target,
                "caller": a.caller, "calls_required": a.calls_required, "min_call_secs": a.min_call_secs,
            });
            let key = tenant_key(a.key.as_deref());
            let r = app
                .call("POST", "/v1/leases", Some(key), Some(&body.to_string()))
                .await;
            let want = expect.and_then(|e| e.status).unwrap_or(201);
            assert_eq!(r.status.as_u16(), want, "{ctx}: {}", r.text);
            if let Some(n) = expect.and_then(|e| e.number.as_deref()) {
                let shared = r.json["code"].is_string();
                assert_eq!(n == "shared", shared, "{ctx}: {}", r.text);
            }
            if let Some(name) = &step.name {
                let mut lease = r.json.clone();
                lease["_key"] = json!(a.key);
                leases.insert(name.clone(), lease);
            }
        }
        if let Some(name) = &step.release {
            let id = leases[name]["lease_id"].as_str().unwrap();
            let key = tenant_key(leases[name]["_key"].as_str());
            let r = app
                .call("DELETE", &format!("/v1/leases/{id}"), Some(key), None)
                .await;
            assert_eq!(r.status, 204, "{ctx}");
        }
        if let Some(c) = &step.call {
            let called = match c.called.as_str() {
                "shared" => "+33899199999".to_owned(),
                n if n.starts_with('+') => n.to_owned(),
                name => leases[name]["number"].as_str().unwrap().to_owned(),
            };
            let code = c.code.as_ref().map(|c| match leases.get(c) {
                Some(l) => l["code"].as_str().expect("lease has a code").to_owned(),
                None => c.clone(),
            });
            let mut body = json!({"call_id": c.id, "event": "start", "called": called, "caller": c.caller, "code": code});
            if let Some(e) = &c.event_at {
                let t = leaseline::core::Timestamp::from_millis(
                    T0.as_millis() + offset(e).as_millis() as u64,
                );
                body["at"] = json!(leaseline::http::rfc3339(t));
            }
            let r = app
                .call(
                    "POST",
                    "/v1/calls",
                    Some(TELEPHONY),
                    Some(&body.to_string()),
                )
                .await;
            assert_eq!(r.status, 200, "{ctx}: {}", r.text);
            check(&ctx, &r.json, expect, &leases);
            remember_code(&mut codes, &c.id, &r.json);
        }
        if let Some(e) = &step.end {
            let body = json!({"call_id": e.id, "event": "end", "duration_secs": e.duration_secs});
            let r = app
                .call(
                    "POST",
                    "/v1/calls",
                    Some(TELEPHONY),
                    Some(&body.to_string()),
                )
                .await;
            assert_eq!(r.status, 200, "{ctx}: {}", r.text);
            if let Some(counted) = expect.and_then(|x| x.counted) {
                assert_eq!(r.json["counted"], counted, "{ctx}: {}", r.text);
            }
            check(&ctx, &r.json, expect, &leases);
            remember_code(&mut codes, &e.id, &r.json);
            if let Some(x) = expect.filter(|x| x.amount.is_some() || x.billed_secs.is_some()) {
                check_charge(&ctx, &app, &e.id, &r.json, x).await;
            }
        }
        if let Some(rd) = &step.redeem {
            let code = match (&rd.code_of, &rd.code) {
                (Some(call), _) => codes
                    .get(call)
                    .unwrap_or_else(|| panic!("{ctx}: no code for {call}"))
                    .clone(),
                (None, Some(c)) => c.clone(),
                _ => panic!("{ctx}: redeem needs code_of or code"),
            };
            let key = tenant_key(rd.key.as_deref());
            let body = json!({"code": code, "client": "visitor-1"});
            let r = app
                .call(
                    "POST",
                    "/v1/tickets/redeem",
                    Some(key),
                    Some(&body.to_string()),
                )
                .await;
            let want = expect.and_then(|e| e.status).unwrap_or(200);
            assert_eq!(r.status.as_u16(), want, "{ctx}: {}", r.text);
            if let Some(amount) = expect.and_then(|e| e.amount.as_deref()) {
                assert_eq!(r.json["amount"], amount, "{ctx}: {}", r.text);
            }
            if let Some(name) = &step.name {
                redeemed.insert(name.clone(), r.json.clone());
            }
        }
        if let Some(p) = &step.pass {
            let id = redeemed[&p.name]["pass_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{ctx}: no pass"));
            let r = app
                .call("GET", &format!("/v1/passes/{id}"), None, None)
                .await;
            assert_eq!(r.status, 200, "{ctx}: {}", r.text);
            assert_eq!(r.json["valid"], p.valid, "{ctx}: {}", r.text);
        }
        if let Some(name) = &step.revoke {
            let id = redeemed[name]["pass_id"].as_str().unwrap();
            let r = app
                .call("DELETE", &format!("/v1/passes/{id}"), Some(SITE), None)
                .await;
            assert_eq!(r.status, 200, "{ctx}: {}", r.text);
            assert_eq!(r.json["valid"], false, "{ctx}: {}", r.text);
        }
        if step.restart == Some(true) {
            app = app.restart().await;
        }
        if let Some(l) = &step.lease {
            let id = leases[&l.name]["lease_id"].as_str().unwrap();
            let r = app
                .call("GET", &format!("/v1/leases/{id}"), None, None)
                .await;
            if let Some(calls) = l.calls {
                assert_eq!(r.json["calls"], calls, "{ctx}: {}", r.text);
            }
            if let Some(paid) = l.paid {
                assert_eq!(r.json["paid"], paid, "{ctx}: {}", r.text);
            }
            if let Some(state) = &l.state {
                assert_eq!(r.json["state"], state.as_str(), "{ctx}: {}", r.text);
            }
            if let Some(a) = &l.amount_paid {
                assert_eq!(r.json["amount_paid"], a.as_str(), "{ctx}: {}", r.text);
            }
        }
    }
}

/// An ended call's cost, in the end event's answer and in its journal row (JSON and CSV).
async fn check_charge(ctx: &str, app: &TestApp, call: &str, answer: &Value, e: &Expect) {
    let journal = app.call("GET", "/v1/calls", Some(ADMIN), None).await;
    assert_eq!(journal.status, 200, "{ctx}: {}", journal.text);
    let row = journal.json["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["call_id"] == call)
        .unwrap_or_else(|| panic!("{ctx}: {call} not in the journal"))
        .clone();
    let csv = app
        .call("GET", "/v1/calls?format=csv", Some(ADMIN), None)
        .await;
    let line = csv
        .text
        .lines()
        .find(|l| l.starts_with(&format!("{call},")))
        .unwrap_or_else(|| panic!("{ctx}: {call} not in the CSV"));
    for got in [answer, &row] {
        if let Some(a) = &e.amount {
            assert_eq!(got["amount"], a.as_str(), "{ctx}: {got}");
        }
        if let Some(c) = &e.currency {
            assert_eq!(got["currency"], c.as_str(), "{ctx}: {got}");
        }
        if let Some(b) = e.billed_secs {
            assert_eq!(got["billed_secs"], b, "{ctx}: {got}");
        }
    }
    let tail = format!(
        ",{},{}",
        e.amount.as_deref().unwrap_or_default(),
        e.currency.as_deref().unwrap_or_default()
    );
    assert!(
        line.ends_with(&tail),
        "{ctx}: {line} should end with {tail}"
    );
}

/// The site key of a tenant named in a fixture: "other", or the site's own.
fn tenant_key(name: Option<&str>) -> &'static str {
    match name {
        Some("other") => OTHER_SITE,
        None | Some("site") => SITE,
        Some(n) => panic!("unknown key {n:?} in a fixture"),
    }
}

fn remember_code(codes: &mut HashMap<String, String>, call: &str, answer: &Value) {
    if let Some(code) = answer["ticketing"]["code"].as_str() {
        assert_eq!(code.len(), 8, "codes are eight digits: {answer}");
        codes.insert(call.to_owned(), code.to_owned());
    }
}

fn check(ctx: &str, got: &Value, expect: Option<&Expect>, leases: &HashMap<String, Value>) {
    let Some(e) = expect else { return };
    if let Some(t) = &e.ticketing {
        let g = &got["ticketing"];
        assert_eq!(g["calls_done"], t.calls_done, "{ctx}: {got}");
        assert_eq!(g["calls_missing"], t.calls_missing, "{ctx}: {got}");
        assert_eq!(g["code"].is_string(), t.code, "{ctx}: {got}");
    }
    if let Some(reason) = &e.reason {
        assert_eq!(got["reason"], reason.as_str(), "{ctx}: {got}");
        let attributed = !matches!(reason.as_str(), "not_leased" | "unknown_number");
        assert_eq!(got["attributed"], attributed, "{ctx}: {got}");
    }
    if let Some(lease) = &e.lease {
        let want = match lease.as_str() {
            "none" => Value::Null,
            name => leases[name]["lease_id"].clone(),
        };
        assert_eq!(got["lease_id"], want, "{ctx}: {got}");
    }
    if let Some(t) = &e.target {
        let want = if t == "none" { Value::Null } else { json!(t) };
        assert_eq!(got["target"], want, "{ctx}: {got}");
    }
    if let Some(l) = &e.listing {
        assert_eq!(got["listing"], l.as_str(), "{ctx}: {got}");
    }
}

async fn play_all(folder: &str, at_least: usize, config: fn(&Path) -> String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= at_least,
        "fixtures missing from {}",
        dir.display()
    );
    for f in files {
        play(&f, config).await;
    }
}

#[tokio::test]
async fn every_attribution_fixture_gives_the_expected_answers() {
    play_all("attribution", 8, fixture_config).await;
}

#[tokio::test]
async fn every_money_fixture_gives_the_expected_amounts() {
    play_all("money", 5, money_config).await;
}

#[tokio::test]
async fn every_ticketing_fixture_gives_the_expected_answers() {
    play_all("ticketing", 6, ticketing_config).await;
}

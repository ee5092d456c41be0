//! Ticketing from the outside: guessing codes is slowed down per visitor address, prefix and
//! client without ever stopping other visitors, ticketing pools lease nothing, and the Twilio
//! voice webhook reads out what the caller must hear.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use leaseline::clock::Clock;
use leaseline::telephony::twilio::signature;
use serde_json::json;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn config(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[twilio]
auth_token = "{TOKEN}"
public_url = "https://calls.example.com"

[[pool]]
name = "one"
numbers = ["+33899310000"]
mode = "ticketing"
calls_required = 1
access_ttl = "31d"

[[pool]]
name = "long"
numbers = ["+33899320000"]
mode = "ticketing"
calls_required = 2
min_call_secs = 60

{}
{}"#,
        data.display(),
        key("site", "site", SITE),
        key("tel", "telephony", TELEPHONY)
    )
}

async fn redeem(app: &TestApp, code: &str, client: &str) -> Reply {
    let body = json!({"code": code, "client": client}).to_string();
    app.call("POST", "/v1/tickets/redeem", Some(SITE), Some(&body))
        .await
}

async fn issue(app: &TestApp, id: &str) -> String {
    let body = json!({"call_id": id, "event": "start", "called": "+33899310000", "caller": "+33612345678"});
    let r = app
        .call(
            "POST",
            "/v1/calls",
            Some(TELEPHONY),
            Some(&body.to_string()),
        )
        .await;
    r.json["ticketing"]["code"].as_str().unwrap().to_owned()
}

async fn redeem_from(app: &TestApp, code: &str, client: &str, ip: &str) -> Reply {
    let body = json!({"code": code, "client": client, "client_ip": ip}).to_string();
    app.call("POST", "/v1/tickets/redeem", Some(SITE), Some(&body))
        .await
}

/// A code that is not `real`, the `i`-th of a guesser's tries.
fn wrong(real: &str, i: u32) -> String {
    let n = (real.parse::<u32>().unwrap() + 1 + i) % 100_000_000;
    format!("{n:08}")
}

#[tokio::test]
async fn a_guessers_wrong_codes_slow_it_down_but_never_stop_another_visitor() {
    let app = TestApp::with_config(config).await;
    let real = issue(&app, "c1").await;
    let bot = "203.0.113.5";
    // Five wrong codes are free, whatever client the bot claims to be.
    for i in 0..5 {
        redeem_from(&app, &wrong(&real, i), &format!("bot-{i}"), bot)
            .await
            .assert_problem(404, "no access code");
    }
    // Past them, each wrong code makes the bot wait, twice as long each time.
    for (tried, wait) in (5..).zip([1, 2, 4, 8]) {
        redeem_from(&app, &wrong(&real, tried), &format!("bot-{tried}"), bot)
            .await
            .assert_problem(404, "no access code");
        let r = redeem_from(&app, &real, "bot-right", bot).await;
        r.assert_problem(429, "too many wrong codes from this address");
        assert_eq!(r.headers["retry-after"], wait.to_string().as_str());
        app.clock.advance(Duration::from_secs(wait));
    }
    // Meanwhile a visitor elsewhere redeems at once, and so would every other.
    let ok = redeem_from(&app, &real, "honest-visitor", "198.51.100.7").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(ok.json["access_until"].is_string());
    let m = app.call("GET", "/metrics", None, None).await.text;
    assert!(
        m.contains("leaseline_rejected_by_limits_total{limit=\"redeem_ip\"} 4"),
        "{m}"
    );
}

#[tokio::test]
async fn fifty_wrong_codes_from_fifty_clients_do_not_lock_anyone_else_out() {
    let app = TestApp::with_config(config).await;
    let real = issue(&app, "c1").await;
    for i in 0..60 {
        let ip = format!("10.{}.{}.1", i / 200, i % 200);
        redeem_from(&app, &wrong(&real, i), &format!("bot-{i}"), &ip)
            .await
            .assert_problem(404, "no access code");
    }
    let ok = redeem_from(&app, &real, "visitor", "198.51.100.7").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

#[tokio::test]
async fn a_guessing_network_is_slowed_as_one_and_its_neighbours_are_not() {
    let app = TestApp::with_config(config).await;
    let real = issue(&app, "c1").await;
    // One wrong code from each of 21 addresses of a /24, as 21 clients: 20 free, then a wait.
    for i in 0..21 {
        let ip = format!("203.0.113.{}", i + 1);
        redeem_from(&app, &wrong(&real, i), &format!("bot-{i}"), &ip)
            .await
            .assert_problem(404, "no access code");
    }
    let r = redeem_from(&app, &wrong(&real, 99), "bot-99", "203.0.113.200").await;
    r.assert_problem(429, "from this network (/24 or /56)");
    assert_eq!(r.headers["retry-after"], "1");
    // A visitor of another network is not slowed.
    let ok = redeem_from(&app, &real, "visitor", "198.51.100.7").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

/// Wrong codes a bot gets answered in a day, trying as soon as it may, from `address(i)` and
/// a fresh client each time.
async fn tries_in_a_day(app: &TestApp, real: &str, address: impl Fn(u32) -> String) -> u32 {
    let (start, day) = (app.clock.now(), Duration::from_secs(86_400));
    let mut tries = 0u32;
    while app.clock.now().since(start) < day {
        let r = redeem_from(
            app,
            &wrong(real, tries),
            &format!("c{tries}"),
            &address(tries),
        )
        .await;
        match r.status.as_u16() {
            404 => tries += 1,
            429 => {
                let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
                app.clock.advance(Duration::from_secs(wait));
            }
            s => panic!("{s}: {}", r.text),
        }
    }
    tries
}

#[tokio::test]
async fn a_network_guessing_all_day_gets_a_few_dozen_tries() {
    let app = TestApp::with_config(config).await;
    let real = issue(&app, "c1").await;
    // Every address of a /24 in turn: 20 free, 12 doublings from 1 s to 34 min, then one an
    // hour (23). One address alone: 5 free instead of 20. SECURITY.md's figures.
    let network = tries_in_a_day(&app, &real, |i| format!("203.0.113.{}", i % 250 + 1)).await;
    assert_eq!(network, 55, "tries a day from a /24");
    let alone = tries_in_a_day(&app, &real, |_| "198.51.100.9".into()).await;
    assert_eq!(alone, 40, "tries a day from one address");
}

#[tokio::test]
async fn malformed_codes_and_ticketing_allocations_are_refused() {
    let app = TestApp::with_config(config).await;
    redeem(&app, "1234", "v")
        .await
        .assert_problem(422, "eight digits");
    redeem_from(&app, "12345678", "v", "not-an-address")
        .await
        .assert_problem(
            422,
            "client_ip: \"not-an-address\" is not an IPv4 or IPv6 address",
        );
    app.call(
        "POST",
        "/v1/tickets/redeem",
        Some(SITE),
        Some(r#"{"client":"v"}"#),
    )
    .await
    .assert_problem(422, "missing field `code`");
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(r#"{"pool":"one","session":"s"}"#),
    )
    .await
    .assert_problem(422, "access codes by phone");
    app.call("GET", &format!("/v1/passes/{}", "0".repeat(32)), None, None)
        .await
        .assert_problem(404, "no pass");
}

async fn twilio(app: &TestApp, path: &str, params: &[(&str, &str)]) -> Reply {
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let url = format!("https://calls.example.com{path}");
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature(TOKEN, &url, &owned))
        .body(Body::from(body))
        .unwrap();
    app.send(req).await
}

fn says(xml: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("Say"))
        .map(|n| n.text().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn the_voice_server_reads_the_code_digit_by_digit_twice() {
    let app = TestApp::with_config(config).await;
    let r = twilio(
        &app,
        "/v1/telephony/twilio/voice",
        &[
            ("CallSid", "CA1"),
            ("To", "+33899310000"),
            ("From", "+33612345678"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let said = says(&r.text);
    assert_eq!(said.len(), 2, "{}", r.text);
    assert_eq!(said[0], said[1]);
    let digits: String = said[0].chars().filter(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 8);
    assert!(said[0].contains(
        &digits
            .chars()
            .map(String::from)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let ok = redeem(&app, &digits, "v").await;
    assert_eq!(
        ok.status, 200,
        "the code read out is the one issued: {}",
        ok.text
    );
}

#[tokio::test]
async fn a_formula_with_a_minimum_holds_the_caller_then_tells_the_outcome() {
    let app = TestApp::with_config(config).await;
    let voice = "/v1/telephony/twilio/voice";
    for (i, sid) in ["CA1", "CA2"].iter().enumerate() {
        let r = twilio(
            &app,
            voice,
            &[
                ("CallSid", sid),
                ("To", "+33899320000"),
                ("From", "+33612345678"),
            ],
        )
        .await;
        let doc = roxmltree::Document::parse(&r.text).unwrap();
        let pause = doc
            .descendants()
            .find(|n| n.has_tag_name("Pause"))
            .expect("a hold");
        assert_eq!(pause.attribute("length"), Some("60"));
        let redirect = doc
            .descendants()
            .find(|n| n.has_tag_name("Redirect"))
            .unwrap();
        assert_eq!(
            redirect.text(),
            Some("/v1/telephony/twilio/voice?step=done")
        );
        // The caller held for the minute; Twilio follows the redirect.
        app.clock.advance(Duration::from_secs(61));
        let done = twilio(
            &app,
            "/v1/telephony/twilio/voice?step=done",
            &[
                ("CallSid", sid),
                ("To", "+33899320000"),
                ("From", "+33612345678"),
            ],
        )
        .await;
        assert_eq!(done.status, 200, "{}", done.text);
        let said = says(&done.text).join(" ");
        if i == 0 {
            assert!(said.contains("Il vous reste 1 appel"), "{said}");
        } else {
            assert!(said.contains("Votre code d'accès est"), "{said}");
        }
        // Twilio's status callback arrives later with the real duration: accepted, first end kept.
        let st = twilio(
            &app,
            "/v1/telephony/twilio/status",
            &[
                ("CallSid", sid),
                ("CallStatus", "completed"),
                ("CallDuration", "75"),
            ],
        )
        .await;
        assert_eq!(st.status, 204);
    }
}

#[tokio::test]
async fn a_client_cut_inside_a_utf8_character_is_refused_not_a_panic() {
    let app = TestApp::with_config(config).await;
    let real = issue(&app, "c1").await;
    // Byte 128 falls inside "é" (two bytes): slicing there used to panic (500).
    let straddling = format!("{}é", "a".repeat(127));
    redeem(&app, &real, &straddling)
        .await
        .assert_problem(422, "client: at most 128 bytes");
    // 128 bytes of two-byte characters are fine.
    let ok = redeem(&app, &real, &"é".repeat(64)).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

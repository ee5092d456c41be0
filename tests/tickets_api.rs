//! Ticketing from the outside: guessing codes is locked out, ticketing pools lease nothing,
//! and the Twilio voice webhook reads out what the caller must hear.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
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

[limits]
redeem_failures_per_client = 5
redeem_failures_per_key = 50
redeem_window = "10m"
redeem_lockout = "15m"

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

#[tokio::test]
async fn guessing_codes_is_locked_out_long_before_it_could_pay() {
    let app = TestApp::with_config(config).await;
    let real = issue(&app, "c1").await;
    let wrong = |i: u32| {
        let n = (real.parse::<u32>().unwrap() + 1 + i) % 100_000_000;
        format!("{n:08}")
    };
    // One visitor: five wrong codes, then locked out (even for the right one).
    for i in 0..5 {
        redeem(&app, &wrong(i), "bot-1")
            .await
            .assert_problem(404, "no access code");
    }
    let r = redeem(&app, &real, "bot-1").await;
    r.assert_problem(429, "too many wrong codes");
    assert_eq!(r.headers["retry-after"], "900");

    // A bot rotating client ids hits the per-key limit: 50 failures in all.
    let mut tried = 5u32;
    for c in 0.. {
        let r = redeem(&app, &wrong(tried), &format!("rotating-{c}")).await;
        if r.status == 429 {
            break;
        }
        r.assert_problem(404, "no access code");
        tried += 1;
        assert!(tried <= 50, "the key was never locked out");
    }
    assert_eq!(tried, 50);
    redeem(&app, &real, "honest-visitor")
        .await
        .assert_problem(429, "too many");
    // At 50 guesses per 25 minutes (window + lockout), a day holds under 3,000 guesses:
    // 0.003% of the code space, for each code alive.
    let per_day = 50.0 * (24.0 * 60.0 / 25.0);
    assert!(per_day / 100_000_000.0 < 0.0001);

    // The lockout ends; the right code still works.
    app.advance(Duration::from_secs(15 * 60)).await;
    let ok = redeem(&app, &real, "honest-visitor").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(ok.json["access_until"].is_string());
    let m = app.call("GET", "/metrics", None, None).await.text;
    assert!(
        m.contains("leaseline_rejected_by_limits_total{limit=\"redeem_key\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn malformed_codes_and_ticketing_allocations_are_refused() {
    let app = TestApp::with_config(config).await;
    redeem(&app, "1234", "v")
        .await
        .assert_problem(422, "eight digits");
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

//! Checkout by phone (Phone2Pay style), as a merchant and Twilio see it: a lease asked with
//! `with_code` and an `amount`, a caller typing the code (three tries, then a goodbye, never a
//! transfer), held on the line until the call has paid, then a confirmation; the spent code;
//! prompts in each shipped language; withheld callers on multi-call formulas. Twilio's
//! requests are signed as Twilio signs them and its TwiML is parsed as XML. The clock is the
//! test's: a hold lasts exactly as long as the test says.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use leaseline::telephony::twilio::signature;
use serde_json::{json, Value};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const BASE: &str = "https://calls.example.com";
const VOICE: &str = "/v1/telephony/twilio/voice";
const STATUS: &str = "/v1/telephony/twilio/status";

fn config(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[twilio]
auth_token = "{TOKEN}"
public_url = "{BASE}"

# 60.00 a minute: 1.00 a second, so 5.00 is paid by 5 s on the line.
[[pool]]
name = "shop"
numbers = ["+33899100000"]
on_exhausted = "shared"
shared_number = "+33899199999"
code_ttl = "10m"
fallback_target = "sip:switchboard@pbx.example"
tariff = {{ per_minute = "60.00", currency = "EUR" }}

[[pool]]
name = "shop-de"
numbers = ["+41900100000"]
on_exhausted = "shared"
shared_number = "+41900199999"
tariff = {{ per_minute = "60.00", currency = "CHF" }}
language = "de-CH"

[[pool]]
name = "shop-it"
numbers = ["+41900200000"]
on_exhausted = "shared"
shared_number = "+41900299999"
tariff = {{ per_minute = "60.00", currency = "CHF" }}
language = "it-CH"

[[pool]]
name = "shop-en"
numbers = ["+442079460000"]
on_exhausted = "shared"
shared_number = "+442079460999"
tariff = {{ per_minute = "60.00", currency = "GBP" }}
language = "en"
prompts = {{ paid = "Payment received. Thank you for your purchase." }}

[[pool]]
name = "plain"
numbers = ["+33899400000"]

[[pool]]
name = "club"
numbers = ["+33899320000"]
mode = "ticketing"
calls_required = 2

{}
{}"#,
        data.display(),
        key("site", "site", SITE),
        key("tel", "telephony", TELEPHONY)
    )
}

async fn twilio(app: &TestApp, path: &str, params: &[(&str, &str)]) -> Reply {
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let url = format!("{BASE}{path}");
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature(TOKEN, &url, &owned))
        .body(Body::from(body))
        .unwrap();
    app.send(req).await
}

/// What a TwiML answer does, in order: (verb, its text or action/URL, its language).
fn verbs(r: &Reply) -> Vec<(String, String, String)> {
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["content-type"], "text/xml; charset=utf-8");
    let doc =
        roxmltree::Document::parse(&r.text).unwrap_or_else(|e| panic!("not XML: {e}: {}", r.text));
    assert_eq!(doc.root_element().tag_name().name(), "Response");
    let mut out = Vec::new();
    for n in doc
        .root_element()
        .descendants()
        .skip(1)
        .filter(|n| n.is_element())
    {
        let name = n.tag_name().name().to_owned();
        let what = match name.as_str() {
            "Gather" => n.attribute("action").unwrap_or("").to_owned(),
            "Pause" => n.attribute("length").unwrap_or("").to_owned(),
            _ => n.text().unwrap_or("").to_owned(),
        };
        out.push((name, what, n.attribute("language").unwrap_or("").to_owned()));
    }
    out
}

fn said(v: &[(String, String, String)]) -> String {
    let s: Vec<&str> = v
        .iter()
        .filter(|(n, ..)| n == "Say")
        .map(|(_, t, _)| t.as_str())
        .collect();
    s.join(" | ")
}

fn has(v: &[(String, String, String)], verb: &str) -> bool {
    v.iter().any(|(n, ..)| n == verb)
}

async fn checkout(app: &TestApp, pool: &str, session: &str, amount: &str) -> Value {
    let body = json!({"pool": pool, "session": session, "with_code": true, "amount": amount});
    let r = app
        .call("POST", "/v1/leases", Some(SITE), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json
}

async fn lease(app: &TestApp, id: &str) -> Value {
    app.call("GET", &format!("/v1/leases/{id}"), Some(SITE), None)
        .await
        .json
}

/// A voice request's form: the call, and what was typed if anything.
fn form<'a>(
    sid: &'a str,
    to: &'a str,
    from: &'a str,
    digits: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut p = vec![("CallSid", sid), ("To", to), ("From", from)];
    if let Some(d) = digits {
        p.push(("Digits", d));
    }
    p
}

fn other_code(code: &str, n: u16) -> String {
    let c: u16 = code.parse().unwrap();
    format!("{:04}", (c + n) % 10_000)
}

#[tokio::test]
async fn with_code_answers_the_shared_number_and_a_code_while_numbers_are_free() {
    let app = TestApp::with_config(config).await;
    let l = checkout(&app, "shop", "order-1", "5.00").await;
    assert_eq!(l["number"], "+33899199999");
    let code = l["code"].as_str().unwrap();
    assert!(code.len() == 4 && code.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(
        (l["amount"].as_str(), l["amount_paid"].as_str()),
        (Some("5.00"), Some("0.00"))
    );
    // The pool's own number is still free for the next visitor.
    let n = app.allocate("shop", "visitor").await;
    assert_eq!(n.json["number"], "+33899100000", "{}", n.text);
    // A pool without a shared number cannot give codes.
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(&json!({"pool": "plain", "session": "s", "with_code": true}).to_string()),
    )
    .await
    .assert_problem(422, "with_code: this pool has no shared_number");
    app.call(
        "POST",
        "/v1/leases",
        Some(SITE),
        Some(&json!({"pool": "shop", "session": "s", "with_code": "yes"}).to_string()),
    )
    .await
    .assert_problem(422, "expected a boolean");
}

#[tokio::test]
async fn a_caller_types_a_wrong_code_twice_then_the_right_one_and_is_held_until_paid() {
    let app = TestApp::with_config(config).await;
    let l = checkout(&app, "shop", "order-1", "5.00").await;
    let (id, code) = (l["lease_id"].as_str().unwrap(), l["code"].as_str().unwrap());
    let call = |digits| form("CA1", "+33899199999", "+33612345678", digits);

    // 1. Asked for the code: three tries in one answer (silence falls through to the next),
    //    each posting back how many failed before it, then a goodbye. Never a Dial.
    let ask = verbs(&twilio(&app, VOICE, &call(None)).await);
    let gathers: Vec<&str> = ask
        .iter()
        .filter(|(n, ..)| n == "Gather")
        .map(|(_, a, _)| a.as_str())
        .collect();
    assert_eq!(
        gathers,
        [
            VOICE,
            "/v1/telephony/twilio/voice?tries=1",
            "/v1/telephony/twilio/voice?tries=2"
        ]
    );
    assert!(
        said(&ask).contains("Tapez le code à quatre chiffres"),
        "{ask:?}"
    );
    assert!(
        said(&ask).contains("Nous n'avons pas reçu de code"),
        "{ask:?}"
    );
    assert_eq!(ask.last().unwrap().0, "Hangup");
    assert!(!has(&ask, "Dial"));
    assert!(ask.iter().all(|(n, _, lang)| n != "Say" || lang == "fr-FR"));

    // 2. A wrong code: told so, asked again for the two tries left.
    let wrong_code = other_code(code, 1);
    let wrong = verbs(&twilio(&app, VOICE, &call(Some(&wrong_code))).await);
    assert!(
        said(&wrong).starts_with("Ce code n'est pas valable."),
        "{wrong:?}"
    );
    let gathers: Vec<&str> = wrong
        .iter()
        .filter(|(n, ..)| n == "Gather")
        .map(|(_, a, _)| a.as_str())
        .collect();
    assert_eq!(
        gathers,
        [
            "/v1/telephony/twilio/voice?tries=1",
            "/v1/telephony/twilio/voice?tries=2"
        ]
    );
    // 3. A second wrong try (not even digits), posted where the second Gather posts.
    let wrong = verbs(&twilio(&app, &format!("{VOICE}?tries=1"), &call(Some("12#"))).await);
    let gathers: Vec<&str> = wrong
        .iter()
        .filter(|(n, ..)| n == "Gather")
        .map(|(_, a, _)| a.as_str())
        .collect();
    assert_eq!(gathers, ["/v1/telephony/twilio/voice?tries=2"]);
    assert_eq!(
        lease(&app, id).await["calls"],
        0,
        "wrong tries record nothing"
    );

    // 4. The right code on the last try: held, 5 s being what 5.00 costs at 1.00 a second.
    let held = verbs(&twilio(&app, &format!("{VOICE}?tries=2"), &call(Some(code))).await);
    assert!(said(&held).contains("rester en ligne"), "{held:?}");
    assert!(
        held.contains(&("Pause".into(), "5".into(), String::new())),
        "{held:?}"
    );
    let back = "/v1/telephony/twilio/voice?step=done";
    assert_eq!(held.last().unwrap().0, "Redirect");
    assert_eq!(held.last().unwrap().1, back);
    assert!(!has(&held, "Dial") && !has(&held, "Hangup"));
    let shown = lease(&app, id).await;
    assert_eq!(
        (shown["calls"].as_u64(), shown["paid"].as_bool()),
        (Some(1), Some(false))
    );

    // 5. Back early (3 s): another turn for the 2 s left.
    app.advance(Duration::from_secs(3)).await;
    let again = verbs(&twilio(&app, back, &call(None)).await);
    assert!(said(&again).contains("rester en ligne"));
    assert!(
        again.contains(&("Pause".into(), "2".into(), String::new())),
        "{again:?}"
    );
    assert_eq!(lease(&app, id).await["paid"], false);

    // 6. Back after 5 s: the call's end is recorded, the lease is paid, the caller hears it.
    app.advance(Duration::from_secs(2)).await;
    let done = verbs(&twilio(&app, back, &call(None)).await);
    assert!(
        said(&done).contains("Votre paiement est confirmé"),
        "{done:?}"
    );
    assert_eq!(done.last().unwrap().0, "Hangup");
    let shown = lease(&app, id).await;
    assert_eq!(
        (shown["paid"].as_bool(), shown["amount_paid"].as_str()),
        (Some(true), Some("5.00")),
        "{shown}"
    );
    // Twilio retrying that request gets the same outcome, nothing counted twice.
    let retried = verbs(&twilio(&app, back, &call(None)).await);
    assert!(said(&retried).contains("Votre paiement est confirmé"));

    // 7. Twilio's status callback arrives with the whole call: the first end is kept.
    let st = twilio(
        &app,
        STATUS,
        &[
            ("CallSid", "CA1"),
            ("CallStatus", "completed"),
            ("CallDuration", "9"),
        ],
    )
    .await;
    assert_eq!(st.status, 204);
    assert_eq!(lease(&app, id).await["amount_paid"], "5.00");

    // 8. The merchant checks the purchase: once.
    let redeem = format!("/v1/leases/{id}/redeem");
    assert_eq!(
        app.call("POST", &redeem, Some(SITE), None).await.status,
        200
    );
    assert_eq!(
        app.call("POST", &redeem, Some(SITE), None).await.status,
        409
    );

    // 9. The code is spent: a later caller typing it is asked again, then told goodbye.
    let p = form("CA2", "+33899199999", "+33698765432", Some(code));
    let spent = verbs(&twilio(&app, VOICE, &p).await);
    assert!(
        said(&spent).starts_with("Ce code n'est pas valable."),
        "{spent:?}"
    );
    let last = verbs(&twilio(&app, &format!("{VOICE}?tries=2"), &p).await);
    assert!(!has(&last, "Gather") && !has(&last, "Dial"), "{last:?}");
    assert!(said(&last).contains("Au revoir"));
    // Reported by a platform directly, it is not attributed either.
    let r = app
        .call(
            "POST",
            "/v1/calls",
            Some(TELEPHONY),
            Some(
                &json!({"call_id": "sip-3", "event": "start", "called": "+33899199999", "caller": "+33698765432", "code": code})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["reason"], "not_leased");
    assert!(r.json["lease_id"].is_null());
    assert_eq!(
        lease(&app, id).await["calls"],
        1,
        "the spent code counts nobody"
    );
}

#[tokio::test]
async fn three_wrong_codes_end_in_a_goodbye_never_the_pools_fallback() {
    let app = TestApp::with_config(config).await;
    let l = checkout(&app, "shop", "order-1", "5.00").await;
    let wrong = other_code(l["code"].as_str().unwrap(), 7);
    let p = [
        ("CallSid", "CA9"),
        ("To", "+33899199999"),
        ("From", "+33612345678"),
        ("Digits", wrong.as_str()),
    ];
    for (path, left) in [(VOICE.to_owned(), 2), (format!("{VOICE}?tries=1"), 1)] {
        let v = verbs(&twilio(&app, &path, &p).await);
        assert_eq!(
            v.iter().filter(|(n, ..)| n == "Gather").count(),
            left,
            "{v:?}"
        );
        assert!(!has(&v, "Dial"));
    }
    let last = verbs(&twilio(&app, &format!("{VOICE}?tries=2"), &p).await);
    assert_eq!(
        last.iter().map(|(n, ..)| n.as_str()).collect::<Vec<_>>(),
        ["Say", "Hangup"],
        "a goodbye, no transfer to sip:switchboard"
    );
    assert!(said(&last).contains("Au revoir"));
    // A URL claiming more tries than there are is still the last one (Twilio signs the URL,
    // so only a misconfiguration could send it).
    let beyond = verbs(&twilio(&app, &format!("{VOICE}?tries=9"), &p).await);
    assert!(!has(&beyond, "Dial") && !has(&beyond, "Gather"));
    // Nothing was recorded: the journal has no call.
    let j = app.call("GET", "/v1/calls", Some(TELEPHONY), None).await;
    let calls = j.json["calls"].as_array().map_or(0, Vec::len);
    assert_eq!(calls, 0, "{}", j.text);
}

#[tokio::test]
async fn each_shipped_language_speaks_its_own_prompts_and_tag() {
    let app = TestApp::with_config(config).await;
    // (pool, shared number, Say tag, a word of the code prompt, of the hold, of the confirmation)
    let cases = [
        (
            "shop",
            "+33899199999",
            "fr-FR",
            "chiffres",
            "rester en ligne",
            "confirmé",
        ),
        (
            "shop-de",
            "+41900199999",
            "de-CH",
            "vierstelligen",
            "Leitung",
            "bestätigt",
        ),
        (
            "shop-it",
            "+41900299999",
            "it-CH",
            "cifre",
            "linea",
            "confermato",
        ),
        (
            "shop-en",
            "+442079460999",
            "en-GB",
            "four-digit",
            "stay on the line",
            "Payment received",
        ),
    ];
    for (i, (pool, shared, tag, ask_word, hold_word, paid_word)) in cases.into_iter().enumerate() {
        let l = checkout(&app, pool, "buyer", "2.00").await;
        let code = l["code"].as_str().unwrap();
        let sid = format!("CA-{pool}");
        let base = form(&sid, shared, "+41791234567", None);
        let with = |d| form(&sid, shared, "+41791234567", Some(d));
        let ask = verbs(&twilio(&app, VOICE, &base).await);
        assert!(said(&ask).contains(ask_word), "{pool}: {ask:?}");
        assert!(
            ask.iter().all(|(n, _, l)| n != "Say" || l == tag),
            "{pool}: {ask:?}"
        );
        let wrong = other_code(code, 1);
        let retry = verbs(&twilio(&app, VOICE, &with(&wrong)).await);
        assert_ne!(said(&retry), said(&ask), "{pool}");
        let held = verbs(&twilio(&app, VOICE, &with(code)).await);
        assert!(said(&held).contains(hold_word), "{pool}: {held:?}");
        assert!(held.iter().all(|(n, _, l)| n != "Say" || l == tag));
        app.advance(Duration::from_secs(2)).await;
        let done = verbs(&twilio(&app, &format!("{VOICE}?step=done"), &base).await);
        assert!(said(&done).contains(paid_word), "{pool}: {done:?}");
        let shown = lease(&app, l["lease_id"].as_str().unwrap()).await;
        assert_eq!(shown["paid"], true, "{pool} ({i}): {shown}");
    }
}

#[tokio::test]
async fn a_withheld_caller_on_a_multi_call_formula_is_told_to_show_their_number() {
    let app = TestApp::with_config(config).await;
    let call = |sid: &'static str, from: &'static str| {
        [("CallSid", sid), ("To", "+33899320000"), ("From", from)]
    };
    // Withheld: each call stands alone, so they hear why, not "1 call left" forever.
    for sid in ["CA1", "CA2", "CA3"] {
        let v = verbs(&twilio(&app, VOICE, &call(sid, "anonymous")).await);
        let s = said(&v);
        assert!(s.contains("rappelez sans masquer votre numéro"), "{s}");
        assert!(!s.contains("Il vous reste"), "{s}");
    }
    // A visible number adds up: 1 call left, then the code.
    let v = verbs(&twilio(&app, VOICE, &call("CA4", "+33612345678")).await);
    assert!(said(&v).contains("Il vous reste 1 appel"), "{v:?}");
    let v = verbs(&twilio(&app, VOICE, &call("CA5", "+33612345678")).await);
    assert!(said(&v).contains("Votre code d'accès est"), "{v:?}");
}

#[test]
fn check_refuses_an_unknown_prompt_and_prints_each_pools_voice() {
    let dir = tempfile::tempdir().unwrap();
    let run = |pool_extra: &str| {
        let path = binary_config(
            dir.path(),
            &format!("[[pool]]\nname = \"shop\"\nnumbers = [\"+33899100000\"]\n{pool_extra}\n"),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_leaseline"))
            .args(["check", "--config"])
            .arg(path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = run("language = \"it-CH\"\nprompts = { paid = \"Grazie!\" }");
    assert!(ok, "{text}");
    assert!(text.contains("voice it-CH (1 prompt of its own)"), "{text}");
    let (ok, text) = run("prompts = { hold_on = \"Un attimo.\" }");
    assert!(!ok);
    assert!(
        text.contains("pool \"shop\": prompts: unknown prompt \"hold_on\""),
        "{text}"
    );
    let (ok, text) = run("language = \"es\"");
    assert!(!ok);
    assert!(text.contains("shipped in fr, de, it and en"), "{text}");
}

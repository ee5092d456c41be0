//! The Twilio voice webhook as Twilio calls it: form posts signed with the account's auth
//! token (the documented HMAC-SHA1 algorithm), answered with TwiML that parses as XML.

mod common;

use std::path::Path;

use axum::body::Body;
use axum::http::Request;
use common::*;
use leaseline::telephony::twilio::signature;
use serde_json::json;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const BASE: &str = "https://calls.example.com";

fn config(data: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[twilio]
auth_token = "{TOKEN}"
public_url = "{BASE}"
language = "fr-FR"

[[pool]]
name = "fr"
numbers = ["+33899100000"]
on_exhausted = "shared"
shared_number = "+33899199999"

[[pool]]
name = "ch"
numbers = ["+41900100000"]
fallback_target = "sip:switchboard@pbx.example"

{}"#,
        data.display(),
        key("site", "site", SITE)
    )
}

async fn post(
    app: &TestApp,
    path: &str,
    params: &[(&str, &str)],
    sign_with: Option<(&str, &str)>,
) -> Reply {
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some((token, url)) = sign_with {
        req = req.header("x-twilio-signature", signature(token, url, &owned));
    }
    app.send(req.body(Body::from(body)).unwrap()).await
}

/// Signed exactly as Twilio signs: the public URL it called, and the form.
async fn twilio(app: &TestApp, path: &str, params: &[(&str, &str)]) -> Reply {
    let url = format!("{BASE}{path}");
    post(app, path, params, Some((TOKEN, &url))).await
}

fn xml(r: &Reply) -> roxmltree::Document<'_> {
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["content-type"], "text/xml; charset=utf-8");
    let doc =
        roxmltree::Document::parse(&r.text).unwrap_or_else(|e| panic!("not XML: {e}: {}", r.text));
    assert_eq!(doc.root_element().tag_name().name(), "Response");
    doc
}

fn child<'a>(doc: &'a roxmltree::Document, path: &[&str]) -> Option<roxmltree::Node<'a, 'a>> {
    let mut node = doc.root_element();
    for name in path {
        node = node.children().find(|c| c.tag_name().name() == *name)?;
    }
    Some(node)
}

async fn allocate(
    app: &TestApp,
    pool: &str,
    session: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut body = json!({"pool": pool, "session": session, "target": "+33600000001"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = app
        .call("POST", "/v1/leases", Some(SITE), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json
}

const VOICE: &str = "/v1/telephony/twilio/voice";

#[tokio::test]
async fn a_signed_call_to_a_leased_number_is_dialled_to_its_target() {
    let app = TestApp::with_config(config).await;
    let lease = allocate(&app, "fr", "v1", json!({})).await;
    let r = twilio(
        &app,
        VOICE,
        &[
            ("CallSid", "CA1"),
            ("To", "+33899100000"),
            ("From", "+33612345678"),
            ("CallStatus", "ringing"),
        ],
    )
    .await;
    let doc = xml(&r);
    assert_eq!(
        child(&doc, &["Dial", "Number"]).unwrap().text(),
        Some("+33600000001")
    );
    let shown = app
        .call(
            "GET",
            &format!("/v1/leases/{}", lease["lease_id"].as_str().unwrap()),
            None,
            None,
        )
        .await;
    assert_eq!(
        shown.json["calls"], 1,
        "the call was recorded and attributed"
    );
}

#[tokio::test]
async fn badly_signed_requests_are_refused_with_403() {
    let app = TestApp::with_config(config).await;
    let params = [
        ("CallSid", "CA1"),
        ("To", "+33899100000"),
        ("From", "+33612345678"),
    ];
    post(&app, VOICE, &params, None)
        .await
        .assert_problem(403, "X-Twilio-Signature");
    let url = format!("{BASE}{VOICE}");
    post(
        &app,
        VOICE,
        &params,
        Some(("wrong-token-wrong-token-wrong", &url)),
    )
    .await
    .assert_problem(403, "does not match");
    post(
        &app,
        VOICE,
        &params,
        Some((
            TOKEN,
            "https://elsewhere.example.com/v1/telephony/twilio/voice",
        )),
    )
    .await
    .assert_problem(403, "does not match");
    // A tampered parameter breaks the signature too.
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sig = signature(TOKEN, &url, &owned);
    let req = Request::builder()
        .method("POST")
        .uri(VOICE)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", sig)
        .body(Body::from(
            "CallSid=CA1&To=%2B33899100001&From=%2B33612345678",
        ))
        .unwrap();
    app.send(req).await.assert_problem(403, "does not match");
}

#[tokio::test]
async fn the_shared_number_asks_for_the_code_then_dials_or_refuses() {
    let app = TestApp::with_config(config).await;
    allocate(&app, "fr", "holder", json!({})).await;
    let coded = allocate(&app, "fr", "visitor", json!({"target": "+33600000002"})).await;
    let code = coded["code"].as_str().unwrap();

    let ask = twilio(
        &app,
        VOICE,
        &[
            ("CallSid", "CA2"),
            ("To", "+33899199999"),
            ("From", "+33612345678"),
        ],
    )
    .await;
    let doc = xml(&ask);
    let gather = child(&doc, &["Gather"]).unwrap();
    assert_eq!(gather.attribute("numDigits"), Some("4"));
    assert_eq!(gather.attribute("action"), Some(VOICE));
    assert!(child(&doc, &["Gather", "Say"])
        .unwrap()
        .text()
        .unwrap()
        .contains("code"));

    let ok = twilio(
        &app,
        VOICE,
        &[
            ("CallSid", "CA2"),
            ("To", "+33899199999"),
            ("From", "+33612345678"),
            ("Digits", code),
        ],
    )
    .await;
    assert_eq!(
        child(&xml(&ok), &["Dial", "Number"]).unwrap().text(),
        Some("+33600000002")
    );

    let wrong = if code == "0000" { "0001" } else { "0000" };
    let no = twilio(
        &app,
        VOICE,
        &[
            ("CallSid", "CA3"),
            ("To", "+33899199999"),
            ("From", "+33612345678"),
            ("Digits", wrong),
        ],
    )
    .await;
    let doc = xml(&no);
    assert!(child(&doc, &["Dial"]).is_none());
    assert!(child(&doc, &["Say"])
        .unwrap()
        .text()
        .unwrap()
        .contains("code"));
    assert!(child(&doc, &["Hangup"]).is_some());
}

#[tokio::test]
async fn unleased_numbers_go_to_the_fallback_or_get_a_polite_refusal() {
    let app = TestApp::with_config(config).await;
    let fb = twilio(
        &app,
        VOICE,
        &[
            ("CallSid", "CA4"),
            ("To", "+41900100000"),
            ("From", "anonymous"),
        ],
    )
    .await;
    assert_eq!(
        child(&xml(&fb), &["Dial", "Sip"]).unwrap().text(),
        Some("sip:switchboard@pbx.example")
    );
    let none = twilio(
        &app,
        VOICE,
        &[
            ("CallSid", "CA5"),
            ("To", "+33899100000"),
            ("From", "+33612345678"),
        ],
    )
    .await;
    let doc = xml(&none);
    assert!(child(&doc, &["Say"])
        .unwrap()
        .text()
        .unwrap()
        .contains("plus attribué"));
    assert_eq!(
        child(&doc, &["Say"]).unwrap().attribute("language"),
        Some("fr-FR")
    );
}

#[tokio::test]
async fn the_status_callback_records_the_real_duration() {
    let app = TestApp::with_config(config).await;
    let lease = allocate(
        &app,
        "fr",
        "v1",
        json!({"calls_required": 1, "min_call_secs": 60}),
    )
    .await;
    twilio(
        &app,
        VOICE,
        &[
            ("CallSid", "CA6"),
            ("To", "+33899100000"),
            ("From", "+33612345678"),
        ],
    )
    .await;
    let id = lease["lease_id"].as_str().unwrap();
    let before = app
        .call("GET", &format!("/v1/leases/{id}"), None, None)
        .await;
    assert_eq!(before.json["paid"], false);
    let status = "/v1/telephony/twilio/status";
    let r = twilio(
        &app,
        status,
        &[("CallSid", "CA6"), ("CallStatus", "in-progress")],
    )
    .await;
    assert_eq!(r.status, 204);
    let r = twilio(
        &app,
        status,
        &[
            ("CallSid", "CA6"),
            ("CallStatus", "completed"),
            ("CallDuration", "75"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    let after = app
        .call("GET", &format!("/v1/leases/{id}"), None, None)
        .await;
    assert_eq!(after.json["paid"], true, "{}", after.text);
    // A call that hung up at the code prompt never started here: nothing to end, still 204.
    let r = twilio(
        &app,
        status,
        &[
            ("CallSid", "CA-never"),
            ("CallStatus", "completed"),
            ("CallDuration", "3"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn without_a_twilio_section_the_webhook_is_404() {
    let app = TestApp::new().await;
    post(
        &app,
        VOICE,
        &[("CallSid", "CA1"), ("To", "+33899100000")],
        None,
    )
    .await
    .assert_problem(404, "[twilio]");
}

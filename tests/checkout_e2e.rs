//! Checkout by phone end to end through the real binary and its Twilio webhook, on the wall
//! clock: a merchant creates a lease with `with_code` and an `amount`; the buyer calls the
//! shared number, types a wrong code twice then the right one, is held on the line until the
//! call has paid (real seconds: the hold is what bills), hears the confirmation; the page
//! watching the lease sees `paid`; the merchant redeems once; a later call typing the same
//! code reaches nobody. Twilio's requests are signed, its TwiML parsed as XML.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::*;
use leaseline::telephony::twilio::signature;
use serde_json::{json, Value};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Posts a form as Twilio does, signed over the URL it calls; returns the status and body.
fn twilio(server: &Server, path: &str, params: &[(&str, &str)]) -> (u16, String) {
    let url = server.url(path);
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let res = agent()
        .post(&url)
        .set("x-twilio-signature", &signature(TOKEN, &url, &owned))
        .send_form(params);
    match res {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

/// The TwiML's verbs in order, as (name, text or action or length).
fn verbs(text: &str) -> Vec<(String, String)> {
    let doc = roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("not XML: {e}: {text}"));
    assert_eq!(doc.root_element().tag_name().name(), "Response");
    doc.root_element()
        .descendants()
        .skip(1)
        .filter(|n| n.is_element())
        .map(|n| {
            let what = n
                .attribute("action")
                .or(n.attribute("length"))
                .or(n.text())
                .unwrap_or("");
            (n.tag_name().name().to_owned(), what.to_owned())
        })
        .collect()
}

fn said(v: &[(String, String)]) -> String {
    v.iter()
        .filter(|(n, _)| n == "Say")
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A voice request's form for a call to the shared number, with what was typed if anything.
fn form<'a>(sid: &'a str, from: &'a str, digits: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut p = vec![("CallSid", sid), ("To", "+33899199999"), ("From", from)];
    p.extend(digits.map(|d| ("Digits", d)));
    p
}

/// Reads the lease's event stream until `last` arrives; returns the events' names. `connected`
/// hears when the first event (the lease as it stands) has arrived.
fn events_until(url: &str, last: &str, connected: std::sync::mpsc::Sender<()>) -> Vec<String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(20))
        .build();
    let res = agent.get(url).call().unwrap();
    let mut out = Vec::new();
    for line in BufReader::new(res.into_reader()).lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("event:") {
            out.push(v.trim().to_owned());
            let _ = connected.send(());
            if v.trim() == last {
                break;
            }
        }
    }
    out
}

#[test]
fn a_buyer_pays_by_phone_with_a_code_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(
        dir.path(),
        &format!(
            r#"[twilio]
auth_token = "{TOKEN}"

[[pool]]
name = "shop"
numbers = ["+33899100000"]
on_exhausted = "shared"
shared_number = "+33899199999"
code_ttl = "10m"
fallback_target = "sip:switchboard@pbx.example"
tariff = {{ per_minute = "60.00", currency = "EUR" }}"#
        ),
    );
    let server = Server::start(&config);
    let voice = "/v1/telephony/twilio/voice";

    // The merchant: 2.00 to pay by phone (2 s at 1.00 a second), while the number is free.
    let (status, l) = server.post(
        "/v1/leases",
        Some(SITE),
        &json!({"pool": "shop", "session": "order-4711", "with_code": true, "amount": "2.00"}),
    );
    assert_eq!(status, 201, "{l}");
    assert_eq!(l["number"], "+33899199999");
    let id = l["lease_id"].as_str().unwrap().to_owned();
    let code = l["code"].as_str().unwrap().to_owned();
    let wrong = format!("{:04}", (code.parse::<u16>().unwrap() + 1) % 10_000);

    // The page follows the lease live.
    let (tx, connected) = std::sync::mpsc::channel();
    let watcher = {
        let url = server.url(&format!("/v1/leases/{id}/events"));
        std::thread::spawn(move || events_until(&url, "paid", tx))
    };
    connected.recv_timeout(Duration::from_secs(10)).unwrap();

    let call = |digits| form("CA-e2e", "+33612345678", digits);

    // Asked for the code; wrong twice (told so each time), then right on the third try.
    let (s, ask) = twilio(&server, voice, &call(None));
    assert_eq!(s, 200, "{ask}");
    assert!(said(&verbs(&ask)).contains("Tapez le code"));
    let (_, t1) = twilio(&server, voice, &call(Some(&wrong)));
    assert!(
        said(&verbs(&t1)).starts_with("Ce code n'est pas valable."),
        "{t1}"
    );
    let (_, t2) = twilio(&server, &format!("{voice}?tries=1"), &call(Some("9")));
    let t2 = verbs(&t2);
    assert!(said(&t2).starts_with("Ce code n'est pas valable."));
    assert!(
        t2.contains(&("Gather".into(), format!("{voice}?tries=2"))),
        "{t2:?}"
    );
    let (_, held) = twilio(&server, &format!("{voice}?tries=2"), &call(Some(&code)));
    let held = verbs(&held);
    assert!(said(&held).contains("rester en ligne"), "{held:?}");
    assert!(held.contains(&("Pause".into(), "2".into())), "{held:?}");
    assert!(held.iter().all(|(n, _)| n != "Dial" && n != "Hangup"));

    // Twilio pauses 2 s, then follows the redirect: the call has paid.
    std::thread::sleep(Duration::from_millis(2100));
    let (_, done) = twilio(&server, &format!("{voice}?step=done"), &call(None));
    let done = verbs(&done);
    assert!(
        said(&done).contains("Votre paiement est confirmé"),
        "{done:?}"
    );
    assert_eq!(done.last().unwrap().0, "Hangup");
    let (_, shown) = server.get(&format!("/v1/leases/{id}"), Some(SITE));
    assert_eq!(
        (shown["paid"].as_bool(), shown["amount_paid"].as_str()),
        (Some(true), Some("2.00")),
        "{shown}"
    );
    // Twilio's status callback reports the whole call; accepted.
    let (s, _) = twilio(
        &server,
        "/v1/telephony/twilio/status",
        &[
            ("CallSid", "CA-e2e"),
            ("CallStatus", "completed"),
            ("CallDuration", "6"),
        ],
    );
    assert_eq!(s, 204);

    // The page saw the lease, the call and the payment.
    let events = watcher.join().unwrap();
    assert_eq!(events, ["lease", "call_started", "call_ended", "paid"]);

    // The merchant checks the purchase is real, once.
    let redeem = format!("/v1/leases/{id}/redeem");
    assert_eq!(server.post(&redeem, Some(SITE), &json!({})).0, 200);
    assert_eq!(server.post(&redeem, Some(SITE), &json!({})).0, 409);

    // The buyer comes back later with the same code: it is spent, so nobody is reached,
    // and the call is not recorded against the lease.
    let later = form("CA-later", "+33698765432", Some(&code));
    let (_, again) = twilio(&server, voice, &later);
    let again = verbs(&again);
    assert!(
        said(&again).starts_with("Ce code n'est pas valable."),
        "{again:?}"
    );
    assert!(again.iter().all(|(n, _)| n != "Dial"));
    let (_, shown) = server.get(&format!("/v1/leases/{id}"), Some(SITE));
    assert_eq!(shown["calls"], 1, "{shown}");
    let (_, journal) = server.get("/v1/calls", Some(ADMIN));
    let calls: Vec<&Value> = journal["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "call")
        .collect();
    assert_eq!(calls.len(), 1, "{journal}");
    assert_eq!(calls[0]["reason"], "code");
    assert_eq!(calls[0]["duration_secs"], 2);
}

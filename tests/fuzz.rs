//! Property-based fuzzing of everything that takes input from outside: pool.toml, phone
//! numbers, every JSON request body, and streams of call events. Nothing may panic, answer a
//! 5xx other than an exhausted pool, or break an invariant. Bounded for CI; set
//! `LEASELINE_FUZZ_CASES` for longer runs. Each run prints how many inputs it tried.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use leaseline::config::Config;
use leaseline::core::{PhoneNumber, Target};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{json, Value};

fn cases(default: u32) -> u32 {
    std::env::var("LEASELINE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(n: u32) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: n,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// JSON values biased toward the fields the API reads, with wrong types and odd strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "fr",
            "ch",
            "small",
            "",
            "+33899100000",
            "+41900100000",
            "+0",
            "sip:a@b",
            "0000",
            "12345678",
            "start",
            "end",
            "x\u{0}y",
            "2026-01-01T00:00:00Z",
            "🙂",
        ])
        .prop_map(|s| json!(s)),
        ".{0,40}".prop_map(Value::String),
    ];
    let keys = prop::sample::select(vec![
        "pool",
        "session",
        "listing",
        "target",
        "caller",
        "ttl_secs",
        "calls_required",
        "min_call_secs",
        "call_id",
        "event",
        "called",
        "at",
        "code",
        "duration_secs",
        "client",
        "other",
    ]);
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone().prop_map(str::to_owned), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn pool_toml_parsing_never_panics() {
    let base = config_text(std::path::Path::new("/tmp/x"), "");
    let tried = AtomicU64::new(0);
    let lines: Vec<String> = base.lines().map(str::to_owned).collect();
    let strategy = (
        prop::collection::vec((0..lines.len(), ".{0,30}"), 0..4),
        ".{0,200}",
        any::<bool>(),
    );
    runner(cases(400))
        .run(&strategy, |(edits, noise, raw)| {
            tried.fetch_add(1, Ordering::Relaxed);
            let text = if raw {
                noise
            } else {
                let mut l = lines.clone();
                for (i, s) in edits {
                    l[i] = s;
                }
                l.join("\n")
            };
            let _ = Config::parse(&text, std::path::Path::new("/tmp"));
            Ok(())
        })
        .unwrap();
    eprintln!("fuzz: {} pool.toml inputs", tried.into_inner());
}

#[test]
fn number_and_target_parsing_never_panics_and_round_trips() {
    let tried = AtomicU64::new(0);
    runner(cases(2000))
        .run(&prop_oneof![".{0,24}", "\\+[0-9]{0,17}"], |s| {
            tried.fetch_add(1, Ordering::Relaxed);
            if let Ok(n) = PhoneNumber::parse(&s) {
                prop_assert_eq!(PhoneNumber::parse(&n.to_string()).unwrap(), n);
            }
            let _ = Target::parse(&s);
            Ok(())
        })
        .unwrap();
    eprintln!("fuzz: {} number inputs", tried.into_inner());
}

#[test]
fn every_json_body_gets_an_answer_never_a_crash() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestApp::new());
    let lease = rt.block_on(app.allocate("ch", "fuzz-owner")).json["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let routes: Vec<(&str, String, &str)> = vec![
        ("POST", "/v1/leases".into(), SITE),
        ("POST", format!("/v1/leases/{lease}/renew"), SITE),
        ("POST", "/v1/calls".into(), TELEPHONY),
        ("POST", "/v1/tickets/redeem".into(), SITE),
        ("PUT", "/v1/listings/fuzz".into(), SITE),
    ];
    let tried = AtomicU64::new(0);
    runner(cases(1500))
        .run(
            &(0..routes.len(), json_value(), any::<bool>()),
            |(r, body, garble)| {
                tried.fetch_add(1, Ordering::Relaxed);
                let (method, path, key) = &routes[r];
                let mut text = body.to_string();
                if garble && !text.is_empty() {
                    let mut cut = text.len() / 2;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                let reply = rt.block_on(app.call(method, path, Some(key), Some(&text)));
                let s = reply.status.as_u16();
                prop_assert!(
                    s < 500 || s == 503,
                    "{method} {path} {text} -> {s} {}",
                    reply.text
                );
                if s >= 400 {
                    prop_assert_eq!(
                        reply.headers["content-type"].to_str().unwrap(),
                        "application/problem+json"
                    );
                }
                Ok(())
            },
        )
        .unwrap();
    app.state.service.check_invariants().unwrap();
    eprintln!("fuzz: {} JSON bodies", tried.into_inner());
}

#[derive(Debug, Clone)]
enum Event {
    Allocate(u8),
    Start {
        call: u8,
        number: u8,
        caller: Option<u8>,
        back_secs: u16,
    },
    End {
        call: u8,
        duration: u16,
    },
    Advance(u16),
}

#[test]
fn call_event_streams_keep_every_invariant() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tried = AtomicU64::new(0);
    let event = prop_oneof![
        (0u8..8).prop_map(Event::Allocate),
        (0u8..20, 0u8..6, prop::option::of(0u8..3), 0u16..2000).prop_map(
            |(call, number, caller, back_secs)| Event::Start {
                call,
                number,
                caller,
                back_secs
            }
        ),
        (0u8..20, 0u16..500).prop_map(|(call, duration)| Event::End { call, duration }),
        (0u16..1200).prop_map(Event::Advance),
    ];
    runner(cases(60))
        .run(&prop::collection::vec(event, 1..40), |events| {
            rt.block_on(async {
                let app = TestApp::new().await;
                let mut started = std::collections::HashSet::new();
                for e in &events {
                    tried.fetch_add(1, Ordering::Relaxed);
                    let reply = match e {
                        Event::Allocate(s) => app.allocate("ch", &format!("v{s}")).await,
                        Event::Start { call, number, caller, back_secs } => {
                            let at = leaseline::core::Timestamp::from_millis(
                                app.state.service.now().as_millis().saturating_sub(*back_secs as u64 * 1000),
                            );
                            let mut body = json!({
                                "call_id": format!("c{call}"), "event": "start",
                                "called": format!("+4190010000{number}"),
                                "at": leaseline::http::rfc3339(at),
                            });
                            if let Some(c) = caller {
                                body["caller"] = json!(format!("+4179000000{c}"));
                            }
                            let r = app.call("POST", "/v1/calls", Some(TELEPHONY), Some(&body.to_string())).await;
                            if r.status == 200 {
                                started.insert(*call);
                            }
                            r
                        }
                        Event::End { call, duration } => {
                            let body = json!({"call_id": format!("c{call}"), "event": "end", "duration_secs": duration});
                            let r = app.call("POST", "/v1/calls", Some(TELEPHONY), Some(&body.to_string())).await;
                            assert!(r.status == 200 || (r.status == 404 && !started.contains(call)) || r.status == 409, "{}", r.text);
                            r
                        }
                        Event::Advance(s) => {
                            app.advance(std::time::Duration::from_secs(*s as u64)).await;
                            continue;
                        }
                    };
                    assert!(reply.status.as_u16() < 500 || reply.status == 503, "{e:?}: {}", reply.text);
                    app.state.service.check_invariants().unwrap();
                }
                // Each started call is in the journal exactly once.
                let j = app.call("GET", "/v1/calls?limit=1000", Some(ADMIN), None).await;
                let ids: Vec<_> = j.json["calls"].as_array().unwrap().iter().map(|c| c["call_id"].clone()).collect();
                let unique: std::collections::HashSet<_> = ids.iter().collect();
                assert_eq!(ids.len(), unique.len());
                assert_eq!(unique.len(), started.len());
            });
            Ok(())
        })
        .unwrap();
    eprintln!("fuzz: {} call events", tried.into_inner());
}

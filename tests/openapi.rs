//! `GET /openapi.json` (docs/openapi.json) against what it describes: the router's own routes,
//! methods and answers, the OpenAPI 3.1 schema, and the README's examples.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::*;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// (path, methods) of every `.route(…)` in `routes()` of src/http/mod.rs, read from the source:
/// axum cannot list a router's routes.
fn router_routes() -> BTreeMap<String, BTreeSet<String>> {
    let source = std::fs::read_to_string(repo("src/http/mod.rs")).unwrap();
    let body = source
        .split_once("fn routes() -> Router<AppState> {")
        .unwrap()
        .1
        .split_once(".fallback(")
        .unwrap()
        .0;
    let mut routes = BTreeMap::new();
    for chunk in body.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap().to_owned();
        let handlers = chunk.split_once(',').unwrap().1;
        // A method is named by `get(…)`, `.delete(…)`, `routing::put(…)`: its name right
        // after a character that cannot be part of an identifier.
        let named = |m: &str| {
            handlers.match_indices(&format!("{m}(")).any(|(i, _)| {
                !handlers[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        };
        let methods: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| named(m))
            .map(|m| m.to_string())
            .collect();
        assert!(!methods.is_empty(), "no method read for {path}");
        assert!(
            routes.insert(path.clone(), methods).is_none(),
            "{path} twice"
        );
    }
    routes
}

async fn document(app: &TestApp) -> Value {
    let reply = app.call("GET", "/openapi.json", None, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    reply.json
}

#[tokio::test]
async fn the_router_and_the_document_list_the_same_paths_and_methods() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect();
    let routes = router_routes();
    assert!(routes.len() >= 19, "{routes:?}");
    assert_eq!(documented, routes);
}

#[tokio::test]
async fn every_documented_operation_is_served_and_answers_a_documented_status() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    // Answers any endpoint may give, stated once in info.description.
    let anywhere = ["405", "408", "414", "431", "500"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        // Path parameters filled with values that exist nowhere.
        let concrete = path
            .replace("{id}", "no-such-id")
            .replace("{listing}", "no-such-listing");
        for method in METHODS {
            let op = &item[method];
            let keys = [None, Some(SITE), Some(ADMIN)];
            for key in keys {
                let body = (method == "post" || method == "put").then_some("{}");
                let reply = app.call(&method.to_uppercase(), &concrete, key, body).await;
                let status = reply.status.as_u16().to_string();
                if op.is_null() {
                    assert_eq!(
                        status, "405",
                        "{method} {path} is not documented but served"
                    );
                    continue;
                }
                assert!(
                    reply.json["type"] != "urn:leaseline:problem:no-route" && status != "405",
                    "{method} {path} is documented but not routed: {}",
                    reply.text
                );
                assert!(
                    op["responses"][&status].is_object() || anywhere.contains(&status.as_str()),
                    "{method} {path} with {key:?} answered {status}, not in the document: {}",
                    reply.text
                );
            }
        }
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_and_the_readme_examples_follow_it() {
    // Debian's python3 with python3-jsonschema (scripts/test.sh installs it).
    let python = std::path::Path::new("/usr/bin/python3");
    let has_jsonschema = python.is_file()
        && Command::new(python)
            .args(["-c", "import jsonschema"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_jsonschema {
        assert!(
            std::env::var("LEASELINE_REQUIRE_EXTERNAL").is_err(),
            "python3-jsonschema is not installed; scripts/test.sh installs it"
        );
        eprintln!("SKIPPED: python3-jsonschema is not installed");
        return;
    }
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = Command::new(python)
        .arg(repo("tests/openapi_check.py"))
        .arg(&file)
        .arg(repo("README.md"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every curl of the README is an operation of the document (15 today), the answers shown
    // right after a request (allocate, a call, the pools) follow their schemas.
    assert!(
        summary["readme_requests"].as_u64().unwrap() >= 15,
        "{summary}"
    );
    assert!(
        summary["readme_answers"].as_u64().unwrap() >= 3,
        "{summary}"
    );
    assert!(
        summary["document_examples"].as_u64().unwrap() >= 10,
        "{summary}"
    );
}

/// The document's schemas describe what the server really answers: a lease, a call's
/// attribution and the pools, checked field by field.
#[tokio::test]
async fn real_answers_have_exactly_the_documented_fields() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    let fields =
        |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let check = |name: &str, answer: &Value| {
        let s = schema(name);
        let known: BTreeSet<String> = fields(&s["properties"]);
        let required: BTreeSet<String> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        let given = fields(answer);
        assert!(
            given.is_subset(&known),
            "{name}: {given:?} beyond {known:?}"
        );
        assert!(
            required.is_subset(&given),
            "{name}: {required:?} not all in {given:?}"
        );
    };
    let lease = app.allocate("small", "s1").await;
    assert_eq!(lease.status, 201);
    check("Lease", &lease.json);
    let body = serde_json::json!({"call_id": "c1", "event": "start",
        "called": lease.json["number"], "caller": "+33612345678"})
    .to_string();
    let call = app
        .call("POST", "/v1/calls", Some(TELEPHONY), Some(&body))
        .await;
    check("CallStartAnswer", &call.json);
    let body = r#"{"call_id": "c1", "event": "end", "duration_secs": 30}"#;
    let end = app
        .call("POST", "/v1/calls", Some(TELEPHONY), Some(body))
        .await;
    check("CallEndAnswer", &end.json);
    let pools = app.call("GET", "/v1/pools", Some(ADMIN), None).await;
    check("Pools", &pools.json);
    check("Pool", &pools.json["pools"][0]);
    let journal = app.call("GET", "/v1/calls", Some(ADMIN), None).await;
    check("Journal", &journal.json);
    check("JournalRow", &journal.json["calls"][0]);
    let missing = app.call("GET", "/v1/leases/nope", None, None).await;
    check("Problem", &missing.json);
}

/// docs/api.md, the reference a reader without tools reads, lists every operation.
#[tokio::test]
async fn the_api_reference_in_docs_lists_every_operation() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let reference = std::fs::read_to_string(repo("docs/api.md")).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let entry = format!("`{} {path}`", method.to_uppercase());
            assert!(reference.contains(&entry), "docs/api.md lacks {entry}");
        }
    }
}

/// A clone holds the whole contract: no file points to a design document outside it.
#[test]
fn the_repository_points_to_nothing_outside_it() {
    let outside = [["..", "/shared"].concat(), ["DESIGN", ".md"].concat()];
    let mut stack = vec![repo("")];
    let mut read = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !["target", "node_modules", ".git", "data", "upgrade"].contains(&name.as_str()) {
                    stack.push(path);
                }
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue; // not text
            };
            read += 1;
            for needle in &outside {
                assert!(
                    !text.contains(needle.as_str()),
                    "{} names {needle}",
                    path.display()
                );
            }
        }
    }
    assert!(read > 50, "only {read} files read");
}

//! Fault injection: writes and flushes that fail, stall or find the disk full. The service
//! answers 503 with a clear problem, turns unready, serves nothing that might not be on disk,
//! and recovers by itself once the fault clears. Bad data directories stop it at start-up
//! with a clear message.

mod common;

use std::time::{Duration, Instant};

use common::*;
use leaseline::store::Fault;

async fn free(app: &TestApp) -> u64 {
    let r = app.call("GET", "/v1/pools", Some(ADMIN), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let p = &r.json["pools"][1];
    let sum = p["free"].as_u64().unwrap()
        + p["leased"].as_u64().unwrap()
        + p["cooling"].as_u64().unwrap();
    assert_eq!(sum, 50, "counts add up: {p}");
    p["free"].as_u64().unwrap()
}

#[tokio::test]
async fn failed_writes_answer_503_serve_nothing_and_heal_when_the_disk_is_back() {
    for fault in [Fault::FailWrites, Fault::FailFlushes, Fault::NoSpace] {
        let (app, faults) = TestApp::with_faults().await;
        let kept = app.allocate("ch", "before").await;
        assert_eq!(kept.status, 201);
        faults.set(fault);
        app.allocate("ch", "during")
            .await
            .assert_problem(503, "cannot make this change durable");
        // Nothing is served while memory may be ahead of the disk.
        app.call("GET", "/readyz", None, None)
            .await
            .assert_problem(503, "storage");
        let id = kept.json["lease_id"].as_str().unwrap();
        app.call("GET", &format!("/v1/leases/{id}"), None, None)
            .await
            .assert_problem(503, "durable");
        // Still failing: the tick cannot heal yet.
        assert!(app.state.service.tick().await.is_err());
        faults.set(Fault::None);
        app.state.service.tick().await.unwrap();
        assert_eq!(
            app.call("GET", "/readyz", None, None).await.status,
            200,
            "{fault:?}"
        );
        let shown = app
            .call("GET", &format!("/v1/leases/{id}"), None, None)
            .await;
        assert_eq!(
            shown.json["state"], "active",
            "the acknowledged lease is intact"
        );
        let left = free(&app).await;
        // A failed write is gone; a write whose flush failed may or may not be (it was never
        // acknowledged): either way the counts add up and allocation works again.
        match fault {
            Fault::FailWrites | Fault::NoSpace => assert_eq!(left, 49),
            _ => assert!(left == 48 || left == 49),
        }
        assert_eq!(app.allocate("ch", "after").await.status, 201);
        assert!(faults.injected() > 0);
        let m = app.call("GET", "/metrics", None, None).await.text;
        assert!(
            !m.contains("leaseline_store_failures_total{op=\"flush\"} 0"),
            "failures are counted"
        );
    }
}

#[tokio::test]
async fn a_stalled_disk_makes_the_service_unready_until_it_moves() {
    let (app, faults) = TestApp::with_faults().await;
    faults.set(Fault::Stall(Duration::from_millis(2500)));
    let service = app.state.service.clone();
    let router = app.router.clone();
    let pending = tokio::spawn(async move {
        let _keep = service;
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/v1/leases")
            .header("authorization", format!("Bearer {SITE}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(r#"{"pool":"ch","session":"slow"}"#))
            .unwrap();
        tower::ServiceExt::oneshot(router, req)
            .await
            .unwrap()
            .status()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.call("GET", "/readyz", None, None).await;
        if r.status == 503 {
            r.assert_problem(503, "stuck");
            break;
        }
        assert!(Instant::now() < deadline, "never unready during a stall");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    faults.set(Fault::None);
    assert_eq!(pending.await.unwrap(), 201, "the stalled write completes");
    assert_eq!(app.call("GET", "/readyz", None, None).await.status, 200);
}

fn start_failure(dir: &std::path::Path) -> String {
    let config = dir.join("pool.toml");
    std::fs::write(
        &config,
        config_text(&dir.join("data"), "log_format = \"json\""),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leaseline"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started on a bad data directory");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_foreign_or_corrupted_data_directory_stops_start_up_with_a_clear_error() {
    // Another program's sled database.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("data")).unwrap();
        db.insert(b"someone", b"else").unwrap();
        db.flush().unwrap();
    }
    let err = start_failure(dir.path());
    assert!(
        err.contains("holds data that Leaseline did not write"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Garbage where the store should be.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("conf"),
        b"\x00\x01garbage that is not a sled config",
    )
    .unwrap();
    std::fs::write(data.join("db"), vec![0xA5u8; 4096]).unwrap();
    let err = start_failure(dir.path());
    assert!(err.contains("cannot open the store"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

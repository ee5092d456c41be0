//! What is stored survives changes around it: pools reordered or removed in `pool.toml`, and a
//! data folder written by an earlier store format.

mod common;

use std::path::Path;
use std::time::Duration;

use common::upgrade::varint;
use common::*;
use serde_json::json;

/// Ticketing pools `a` and `b` (three calls each within an hour), in the order given; `None`
/// leaves a pool out.
fn pools(data: &Path, order: &[&str]) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n",
        data.display()
    );
    for name in order {
        let number = match *name {
            "a" => "+33899310000",
            "b" => "+33899320000",
            _ => "+33899330000",
        };
        text += &format!(
            "[[pool]]\nname = \"{name}\"\nnumbers = [\"{number}\"]\nmode = \"ticketing\"\ncalls_required = 3\nwindow = \"1h\"\n\n"
        );
    }
    text + &key("site", "site", SITE) + &key("tel", "telephony", TELEPHONY)
}

async fn call(app: &TestApp, id: &str, called: &str) -> serde_json::Value {
    let body = json!({"call_id": id, "event": "start", "called": called, "caller": "+33612345678"});
    let r = app
        .call(
            "POST",
            "/v1/calls",
            Some(TELEPHONY),
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[tokio::test]
async fn progress_follows_its_pool_by_name_when_pools_are_reordered_or_removed() {
    let app = TestApp::with_config(|d| pools(d, &["a", "b", "c"])).await;
    // The caller is one call into pool a, two into pool b.
    call(&app, "a1", "+33899310000").await;
    call(&app, "b1", "+33899320000").await;
    let r = call(&app, "b2", "+33899320000").await;
    assert_eq!(r["ticketing"]["calls_done"], 2);

    // b moves to the front, a is removed: b's progress goes on, nothing lands elsewhere.
    let app = app.restart_with(|d| pools(d, &["b", "c"])).await;
    let r = call(&app, "b3", "+33899320000").await;
    assert_eq!(r["ticketing"]["calls_done"], 3, "{r}");
    assert!(
        r["ticketing"]["code"].is_string(),
        "the third call completes b: {r}"
    );
    let r = call(&app, "c1", "+33899330000").await;
    assert_eq!(
        r["ticketing"]["calls_done"], 1,
        "c starts from nothing: {r}"
    );

    // The window passes with a's progress on disk but unserved: the wheel fires, nothing panics.
    app.advance(Duration::from_secs(30 * 60)).await;

    // a comes back (last in the order now) within its window: its progress was kept.
    let app = app.restart_with(|d| pools(d, &["c", "b", "a"])).await;
    let r = call(&app, "a2", "+33899310000").await;
    assert_eq!(r["ticketing"]["calls_done"], 2, "{r}");

    // Past the window, a's progress is purged by the wheel like any other.
    app.advance(Duration::from_secs(31 * 60)).await;
    let r = call(&app, "a3", "+33899310000").await;
    assert_eq!(r["ticketing"]["calls_done"], 1, "{r}");
}

#[tokio::test]
async fn a_format_1_store_has_its_progress_rekeyed_by_pool_name_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        // What format 1 wrote: progress of the pool at index 1 (b) for the caller, two calls
        // done from T0, and its wheel entry an hour later; and progress of an index beyond the
        // configured pools.
        let db = sled::open(&data).unwrap();
        db.insert("Mformat", "leaseline-store-1").unwrap();
        let caller = 33612345678u64.to_be_bytes();
        for (index, calls) in [(1u32, 2u64), (7, 1)] {
            let mut key = vec![b'G'];
            key.extend_from_slice(&index.to_be_bytes());
            key.extend_from_slice(&caller);
            let mut value = vec![1u8];
            varint(calls, &mut value);
            varint(T0.as_millis(), &mut value);
            db.insert(&key, value).unwrap();
            let mut wheel = vec![b'W'];
            wheel.extend_from_slice(&((T0.as_millis() + 3_600_000) / 1000).to_be_bytes());
            wheel.push(b'G');
            wheel.extend_from_slice(&key[1..]);
            wheel.extend_from_slice(&[0; 4]);
            db.insert(wheel, &[][..]).unwrap();
        }
        db.flush().unwrap();
    }
    let app = TestApp::in_dir(dir, |d| pools(d, &["a", "b"])).await;
    let r = call(&app, "b3", "+33899320000").await;
    assert_eq!(
        r["ticketing"]["calls_done"], 3,
        "two calls carried over, under b's name: {r}"
    );
    let r = call(&app, "a1", "+33899310000").await;
    assert_eq!(r["ticketing"]["calls_done"], 1, "{r}");

    // The migrated wheel entry still purges the progress when its window ends.
    app.advance(Duration::from_secs(3601)).await;
    let app = app.restart().await;
    let r = call(&app, "b4", "+33899320000").await;
    assert_eq!(r["ticketing"]["calls_done"], 1, "{r}");
}

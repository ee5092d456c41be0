//! Upgrade fixtures: a data folder written by an older build (`tests/fixtures/upgrade/`, never
//! regenerated), its `pool.toml` and a manifest of what that build answered, with the calls the
//! upgrade tests make on it. `tests/upgrade.rs` (release 1, store format 1) and
//! `tests/upgrade_format_2.rs` (store format 2) both use them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use leaseline::core::Timestamp;
use serde_json::{json, Value};

use super::{repo, Reply, TestApp, ADMIN, SITE, TELEPHONY};

pub const POOL: &str = "fr-classifieds";
pub const SHARED: &str = "+33899199999";
pub const FALLBACK: &str = "+33100000000";
pub const TICKETING: &str = "+33897100000";
/// The caller typed on lease "progress" when the old build created it.
pub const TYPED_CALLER: &str = "+33633000002";
/// Called lease "paid"'s number for listing car-1 under the old build: a return route.
pub const RETURNING: &str = "+33644000001";
/// One ticketing call of two under the old build.
pub const HALFWAY: &str = "+33655000001";
pub const LEASES: [&str; 5] = ["paid", "progress", "released", "plain", "code"];

/// An old build's data folder, its config and the manifest of what it holds.
pub struct Fixture {
    tarball: PathBuf,
    config: String,
    pub manifest: Value,
    /// Who wrote it, for messages ("release 1").
    written_by: &'static str,
    /// The store format its data folder must hold.
    format: &'static str,
}

impl Fixture {
    /// Loads `<name>.tar.gz` and `<name>.json`, checking the manifest names `commit`. The
    /// fixture is committed with the tests: missing, every test fails. It is the proof that
    /// users keep their data across the upgrade, and must never be skipped.
    pub fn load(
        name: &str,
        commit: &str,
        written_by: &'static str,
        format: &'static str,
    ) -> Fixture {
        let dir = repo("tests/fixtures/upgrade");
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| {
                panic!(
                    "the upgrade fixture {} cannot be read ({e}); it is committed in \
                     tests/fixtures/upgrade (see its README) and must never be left out",
                    dir.join(file).display()
                )
            })
        };
        let tarball = dir.join(format!("{name}.tar.gz"));
        assert!(
            tarball.is_file(),
            "the upgrade fixture {} is missing; it is committed (see tests/fixtures/upgrade/README.md)",
            tarball.display()
        );
        let manifest: Value = serde_json::from_str(&read(&format!("{name}.json"))).unwrap();
        assert_eq!(
            manifest["release"], commit,
            "the fixture must have been written by {written_by}"
        );
        Fixture {
            tarball,
            config: read("pool.toml"),
            manifest,
            written_by,
            format,
        }
    }

    /// A fresh folder holding the old build's `data` folder and its `pool.toml`.
    pub fn unpack(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(&self.tarball)
            .arg("-C")
            .arg(dir.path())
            .status()
            .expect("tar runs");
        assert!(
            status.success(),
            "tar -xzf {} failed",
            self.tarball.display()
        );
        assert!(
            dir.path().join("data/db").is_file(),
            "the tarball holds data/"
        );
        let db = sled::open(dir.path().join("data")).unwrap();
        assert_eq!(
            db.get("Mformat").unwrap().as_deref(),
            Some(self.format.as_bytes()),
            "the fixture holds {}",
            self.format
        );
        drop(db);
        std::fs::write(dir.path().join("pool.toml"), &self.config).unwrap();
        dir
    }

    /// Opens `dir` with this build and the old build's config, the clock 5 s after the old
    /// build stopped.
    pub async fn open_dir(&self, dir: tempfile::TempDir) -> TestApp {
        let config = self.config.clone();
        let start = self.made_at().saturating_add(Duration::from_secs(5));
        TestApp::in_dir_at(dir, start, |_| config).await
    }

    /// [`Fixture::open_dir`] on a fresh copy of the fixture.
    pub async fn open(&self) -> TestApp {
        self.open_dir(self.unpack()).await
    }

    /// When the old build had stopped.
    pub fn made_at(&self) -> Timestamp {
        Timestamp::from_millis(self.manifest["made_at_ms"].as_u64().unwrap())
    }

    /// The old build's answer for one of its leases: paid, progress, released, plain or code.
    pub fn lease(&self, name: &str) -> &Value {
        let l = &self.manifest["leases"][name];
        assert!(l.is_object(), "no lease {name} in the manifest");
        l
    }

    pub fn id(&self, name: &str) -> String {
        self.lease(name)["lease_id"].as_str().unwrap().to_owned()
    }

    pub fn number(&self, name: &str) -> String {
        self.lease(name)["number"].as_str().unwrap().to_owned()
    }

    /// A ticket's code and the old build's record of it.
    pub fn ticket(&self, which: &str) -> (String, Value) {
        let t = &self.manifest["ticketing"][which];
        (t["code"].as_str().unwrap().to_owned(), t.clone())
    }

    /// The pool's own numbers (the shared number aside), from the old build's leases of them.
    pub fn pool_numbers(&self) -> Vec<String> {
        let mut n: Vec<String> = ["paid", "progress", "released", "plain"]
            .iter()
            .map(|l| self.number(l))
            .collect();
        n.sort();
        n
    }

    /// The old build's journal: every call and ticket event it took, newest first.
    pub fn journal(&self) -> &[Value] {
        self.manifest["journal"].as_array().unwrap()
    }

    /// As [`Fixture::assert_keeps`] for a journal row, where one thing changed on purpose: a
    /// call the old build journalled with no `amount` now reads priced by its pool's tariff
    /// (2.99 EUR per answered call in `fr-classifieds`, 0.00 unanswered; none elsewhere).
    pub fn assert_keeps_row(&self, what: &str, old: &Value, new: &Value) {
        let mut old = old.clone();
        if old["kind"] == "call" && old["amount"].is_null() {
            let priced = old["pool"] == POOL;
            let (amount, currency) = match old["duration_secs"].as_u64() {
                Some(0) if priced => (json!("0.00"), json!("EUR")),
                Some(_) if priced => (json!("2.99"), json!("EUR")),
                _ => (Value::Null, Value::Null),
            };
            assert_eq!(
                (&new["amount"], &new["currency"]),
                (&amount, &currency),
                "{what}: a call journalled without an amount is priced by its tariff: {new}"
            );
            let o = old.as_object_mut().unwrap();
            o.remove("amount");
            o.remove("currency");
        }
        self.assert_keeps(what, &old, new);
    }

    /// Asserts that every field the old build answered is answered alike now (new fields may
    /// appear). Numbers compare by value: the manifest went through jq, which writes 1.0 as 1.
    pub fn assert_keeps(&self, what: &str, old: &Value, new: &Value) {
        let old = old.as_object().unwrap_or_else(|| panic!("{what}: {old}"));
        for (field, was) in old {
            let is = &new[field];
            let same = match (was.as_f64(), is.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => was == is,
            };
            assert!(
                same,
                "{what}: `{field}` was {was} under {}, is {is} now; whole answer: {new}",
                self.written_by
            );
        }
    }
}

pub async fn get(app: &TestApp, path: &str, key: &str) -> Reply {
    app.call("GET", path, Some(key), None).await
}

pub async fn lease(app: &TestApp, id: &str) -> Reply {
    get(app, &format!("/v1/leases/{id}"), SITE).await
}

pub async fn allocate(app: &TestApp, body: Value) -> Reply {
    app.call("POST", "/v1/leases", Some(SITE), Some(&body.to_string()))
        .await
}

/// A call's start; `code` is what the caller typed on a shared number.
pub async fn start(
    app: &TestApp,
    id: &str,
    called: &str,
    caller: &str,
    code: Option<&str>,
) -> Value {
    let mut body = json!({"call_id": id, "event": "start", "called": called, "caller": caller});
    if let Some(c) = code {
        body["code"] = json!(c);
    }
    call_event(app, body).await
}

pub async fn end(app: &TestApp, id: &str, secs: u32) -> Value {
    call_event(
        app,
        json!({"call_id": id, "event": "end", "duration_secs": secs}),
    )
    .await
}

/// Reports a call event as telephony does; the answer must be 200.
pub async fn call_event(app: &TestApp, body: Value) -> Value {
    let text = body.to_string();
    let r = app
        .call("POST", "/v1/calls", Some(TELEPHONY), Some(&text))
        .await;
    assert_eq!(r.status, 200, "{text}: {}", r.text);
    r.json
}

pub async fn redeem_lease(app: &TestApp, id: &str) -> Reply {
    app.call("POST", &format!("/v1/leases/{id}/redeem"), Some(SITE), None)
        .await
}

pub async fn redeem_ticket(app: &TestApp, code: &str, client: &str) -> Reply {
    let body = json!({"code": code, "client": client}).to_string();
    app.call("POST", "/v1/tickets/redeem", Some(SITE), Some(&body))
        .await
}

/// The pools' answers; their counts must add up.
pub async fn pools(app: &TestApp) -> Vec<Value> {
    let r = get(app, "/v1/pools", ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let pools = r.json["pools"].as_array().unwrap().clone();
    for p in &pools {
        assert_eq!(
            p["size"].as_u64().unwrap(),
            p["free"].as_u64().unwrap()
                + p["leased"].as_u64().unwrap()
                + p["cooling"].as_u64().unwrap(),
            "counts add up: {p}"
        );
    }
    pools
}

/// Postcard's (and the store log's) unsigned varint, written here apart from the store's own
/// so the tests that forge old records do not depend on the code they check.
pub fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

//! The wall clock against the store's last recorded instant, with the real binary under
//! libfaketime (an LD_PRELOAD shim from Debian's `faketime`, installed by scripts/test.sh):
//! a clock stuck ahead in one run does not leave every later run in the future, a clock found
//! far behind stops start-up with a clear message, and accepting it revives nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};

const SHIM: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that shifts the binary's wall clock by `offset` (e.g. "+3h"), leaving the
/// monotonic clock (timers) alone.
fn shifted(offset: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", SHIM.to_owned()),
        ("FAKETIME", offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("FAKETIME_DONT_RESET", "1".to_owned()),
    ]
}

fn shim() -> Option<PathBuf> {
    let found = Path::new(SHIM).is_file();
    if !found {
        assert!(
            std::env::var("LEASELINE_REQUIRE_EXTERNAL").is_err(),
            "libfaketime is not installed; scripts/test.sh installs it"
        );
        eprintln!("SKIPPED: libfaketime is not installed (run scripts/test.sh to install it)");
    }
    found.then(|| PathBuf::from(SHIM))
}

fn start(config: &Path, args: &[&str], env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(config, args, &env)
}

/// Starts the binary expecting it to refuse; returns its stderr.
fn refused(config: &Path, env: &[(&'static str, String)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_leaseline"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the start must be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stop(mut server: Server) {
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        server.child.wait().unwrap().success(),
        "graceful stop exits 0"
    );
}

fn allocate(server: &Server, session: &str) -> Value {
    let body = json!({"pool": "p", "session": session});
    let (status, v) = server.post("/v1/leases", Some(SITE), &body);
    assert_eq!(status, 201, "{v}");
    v
}

fn seconds(v: &Value, field: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v[field].as_str().unwrap())
        .unwrap()
        .timestamp()
}

fn real_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn config(dir: &Path) -> PathBuf {
    binary_config(
        dir,
        "[[pool]]\nname = \"p\"\nnumbers = [\"+33899100000..=+33899100009\"]\n",
    )
}

#[test]
fn a_run_with_the_clock_ahead_does_not_leave_later_runs_in_the_future() {
    if shim().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());

    // One run with the wall clock three hours fast.
    let server = start(&config, &[], &shifted("+3h"));
    let ahead = allocate(&server, "while-ahead");
    assert!(
        seconds(&ahead, "created_at") > real_now() + 3 * 3600 - 120,
        "{ahead}"
    );
    stop(server);

    // The clock is right again: far behind the last run. Refused, with what to do.
    let err = refused(&config, &[]);
    assert!(err.contains("behind the last time Leaseline ran"), "{err}");
    assert!(err.contains("--accept-wall-clock"), "{err}");

    // The operator accepts the wall clock: new leases are stamped now, calls with the real
    // time are attributed, and the lease stamped in the future is not left live.
    let server = start(&config, &["--accept-wall-clock"], &[]);
    let lease = allocate(&server, "after");
    assert!(
        (seconds(&lease, "created_at") - real_now()).abs() < 120,
        "{lease}"
    );
    let id = ahead["lease_id"].as_str().unwrap();
    let (_, old) = server.get(&format!("/v1/leases/{id}"), Some(SITE));
    assert_eq!(old["state"], "expired", "{old}");
    // Its number is in grace from now: a late caller still reaches the lease they were shown.
    let body = json!({"call_id": "late", "event": "start", "called": ahead["number"], "caller": "+33699999999"});
    let (_, late) = server.post("/v1/calls", Some(TELEPHONY), &body);
    assert_eq!(late["reason"], "grace", "{late}");
    assert_eq!(late["lease_id"], ahead["lease_id"], "{late}");
    let body = json!({"call_id": "c1", "event": "start", "called": lease["number"], "caller": "+33612345678",
                      "at": chrono::Utc::now().to_rfc3339()});
    let (status, call) = server.post("/v1/calls", Some(TELEPHONY), &body);
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["reason"], "active", "{call}");
    stop(server);

    // From now on an ordinary restart starts on the wall clock, without the flag.
    let server = start(&config, &[], &[]);
    let lease = allocate(&server, "later");
    assert!(
        (seconds(&lease, "created_at") - real_now()).abs() < 120,
        "{lease}"
    );
    stop(server);
}

#[test]
fn a_clock_found_behind_is_refused_beyond_the_bound_and_raised_within_it() {
    if shim().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let server = start(&config, &[], &[]);
    let first = allocate(&server, "a");
    stop(server);

    // Three hours slow: refused; nothing is served in the past.
    let err = refused(&config, &shifted("-3h"));
    assert!(err.contains("behind the last time Leaseline ran"), "{err}");

    // A few seconds slow (within max_clock_rewind, 1 min by default): time is raised to the
    // last run's, never backwards, and the lease made before is still there, still live.
    let server = start(&config, &[], &shifted("-20s"));
    let lease = allocate(&server, "b");
    assert!(
        seconds(&lease, "created_at") >= seconds(&first, "created_at"),
        "{lease} vs {first}"
    );
    let id = first["lease_id"].as_str().unwrap();
    let (_, again) = server.get(&format!("/v1/leases/{id}"), Some(SITE));
    assert_eq!(again["state"], "active", "{again}");
    stop(server);
}

//! Helpers shared by the integration tests: an in-process app on a manual clock, and the
//! real binary started on a free loopback port.
#![allow(dead_code)]

pub mod receiver;
pub mod upgrade;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use leaseline::clock::ManualClock;
use leaseline::config::Config;
use leaseline::core::Timestamp;
use leaseline::http::{router, AppState};
use leaseline::startup::build_state;
use serde_json::Value;
use tower::ServiceExt;

pub const SITE: &str = "dev-site-key";
pub const TELEPHONY: &str = "dev-telephony-key";
pub const ADMIN: &str = "dev-admin-key";
pub const OTHER_SITE: &str = "other-site-key";
pub const CH_ONLY: &str = "ch-only-key";

/// A config with a 3-number pool "small", a 50-number pool "ch", and keys of every role.
pub fn config_text(data_dir: &Path, extra_server: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{dir}"
{extra_server}

[lease]
ttl = "15m"
max_ttl = "2h"
grace = "5m"
quarantine = "10m"

[[pool]]
name = "small"
numbers = ["+33899100000..=+33899100002"]

[[pool]]
name = "ch"
numbers = ["+41900100000..=+41900100049"]

[[key]]
name = "site"
role = "site"
sha256 = "{site}"

[[key]]
name = "other"
role = "site"
sha256 = "{other}"

[[key]]
name = "ch-only"
role = "site"
tenant = "site"
sha256 = "{ch_only}"
pools = ["ch"]

[[key]]
name = "tel"
role = "telephony"
sha256 = "{tel}"

[[key]]
name = "admin"
role = "admin"
sha256 = "{admin}"
"#,
        dir = data_dir.display(),
        site = sha(SITE),
        other = sha(OTHER_SITE),
        ch_only = sha(CH_ONLY),
        tel = sha(TELEPHONY),
        admin = sha(ADMIN),
    )
}

pub fn sha(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 2026-01-01T00:00:00Z: tests start here and move the clock by hand.
pub const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);

pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    config: Config,
}

impl TestApp {
    pub async fn new() -> TestApp {
        Self::with_config(|data| config_text(data, "")).await
    }

    /// An app on a config made for its data folder.
    pub async fn with_config(text: impl FnOnce(&Path) -> String) -> TestApp {
        Self::with_backend(text, |s| s).await
    }

    /// An app whose writes go through a fault-injecting backend.
    pub async fn with_faults() -> (TestApp, Arc<leaseline::store::Faulty>) {
        let mut faulty = None;
        let app = Self::with_backend(
            |data| config_text(data, ""),
            |store| {
                let f = Arc::new(leaseline::store::Faulty::new(store));
                faulty = Some(Arc::clone(&f));
                f
            },
        )
        .await;
        (app, faulty.unwrap())
    }

    pub async fn with_backend(
        text: impl FnOnce(&Path) -> String,
        wrap: impl FnOnce(Arc<leaseline::store::Store>) -> Arc<dyn leaseline::store::Backend>,
    ) -> TestApp {
        Self::in_dir_with_backend(tempfile::tempdir().unwrap(), T0, text, wrap).await
    }

    /// An app on data already in `dir` (its `data` folder).
    pub async fn in_dir(dir: tempfile::TempDir, text: impl FnOnce(&Path) -> String) -> TestApp {
        Self::in_dir_at(dir, T0, text).await
    }

    /// As [`TestApp::in_dir`], on a clock starting at `start`: data written at another time
    /// than [`T0`] (start-up refuses a clock far behind the store's last run).
    pub async fn in_dir_at(
        dir: tempfile::TempDir,
        start: Timestamp,
        text: impl FnOnce(&Path) -> String,
    ) -> TestApp {
        Self::in_dir_with_backend(dir, start, text, |s| s).await
    }

    async fn in_dir_with_backend(
        dir: tempfile::TempDir,
        start: Timestamp,
        text: impl FnOnce(&Path) -> String,
        wrap: impl FnOnce(Arc<leaseline::store::Store>) -> Arc<dyn leaseline::store::Backend>,
    ) -> TestApp {
        let config = Config::parse(&text(&dir.path().join("data")), dir.path()).unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let state = leaseline::startup::build_state_with(&config, clock.clone(), wrap)
            .await
            .unwrap();
        TestApp {
            router: router(state.clone()),
            state,
            clock,
            dir,
            config,
        }
    }

    /// Stops this app (its store closes) and builds a new one on the same data and clock, as a
    /// restart would.
    pub async fn restart(self) -> TestApp {
        let TestApp {
            router: r,
            state,
            clock,
            dir,
            config,
        } = self;
        drop(r);
        drop(state);
        // The flusher task and sled's threads let go of the store a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let state = loop {
            match build_state(&config, clock.clone()).await {
                Ok(s) => break s,
                Err(e)
                    if format!("{e:#}").contains("lock")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("restart failed: {e:#}"),
            }
        };
        TestApp {
            router: router(state.clone()),
            state,
            clock,
            dir,
            config,
        }
    }

    /// As [`TestApp::restart`], with another configuration on the same data folder (pools
    /// reordered, added or removed).
    pub async fn restart_with(mut self, text: impl FnOnce(&Path) -> String) -> TestApp {
        self.config = Config::parse(&text(&self.dir.path().join("data")), self.dir.path()).unwrap();
        self.restart().await
    }

    /// Moves the clock and fires what fell due, as the tick task would.
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.state.service.tick().await.unwrap();
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn allocate(&self, pool: &str, session: &str) -> Reply {
        let body = format!(r#"{{"pool":"{pool}","session":"{session}","target":"+33612345678"}}"#);
        self.call("POST", "/v1/leases", Some(SITE), Some(&body))
            .await
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Reply {
    /// Asserts this is a problem+json answer with `status` and a detail containing `needle`.
    pub fn assert_problem(&self, status: u16, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "body: {}",
            self.text
        );
        assert_eq!(self.json["status"], status);
        assert!(self.json["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:leaseline:problem:"));
        assert!(self.json["title"].is_string());
        let detail = self.json["detail"].as_str().unwrap();
        assert!(
            detail.contains(needle),
            "detail {detail:?} lacks {needle:?}"
        );
    }
}

/// The real `leaseline` binary, serving a config in a temporary folder.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub config: PathBuf,
    /// Every line the server has written to stderr so far.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the binary on `config` and waits until it says where it listens and is ready.
    pub fn start(config: &Path) -> Server {
        Self::start_with(config, &[], &[])
    }

    /// As [`Server::start`], with more arguments to `serve` and more environment variables.
    pub fn start_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_leaseline"));
        cmd.args(["serve", "--config"])
            .arg(config)
            .args(args)
            .envs(env.iter().copied());
        Self::launch(cmd, config)
    }

    /// Runs `cmd` (the binary, with whatever arguments and environment a test chose), which
    /// must serve `config` with JSON logs, and waits until it is ready.
    pub fn launch(mut cmd: Command, config: &Path) -> Server {
        let mut child = cmd
            .env("LEASELINE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if let Some(addr) = v["fields"]["addr"].as_str() {
                            let _ = tx.send(addr.to_owned());
                            sent = true;
                        }
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server reports its address");
        let server = Server {
            child,
            addr,
            config: config.to_owned(),
            log,
        };
        server.wait_ready();
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path` with an optional key: the status and the JSON body.
    pub fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        http(&agent(), "GET", &self.url(path), key, None).unwrap()
    }

    /// `POST path` with a JSON body and an optional key: the status and the JSON body.
    pub fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        http(&agent(), "POST", &self.url(path), key, Some(body)).unwrap()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = ureq::get(&self.url("/readyz")).call() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server not ready within 60 s");
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

/// POST/GET with a bearer key; returns status and JSON (errors included, never panics on 4xx).
pub fn http(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let mut req = agent.request(method, url);
    if let Some(k) = key {
        req = req.set("authorization", &format!("Bearer {k}"));
    }
    let res = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    match res {
        Ok(r) => {
            let status = r.status();
            let v = r.into_json().unwrap_or(Value::Null);
            Ok((status, v))
        }
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_json().unwrap_or(Value::Null))),
        Err(e) => Err(e.to_string()),
    }
}

/// A path inside the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free on 127.0.0.1 right now.
pub fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An external program the test command installs. Missing outside it, the test is skipped
/// loudly; scripts/test.sh sets LEASELINE_REQUIRE_EXTERNAL=1, so CI never skips.
pub fn external(bin: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = dirs
        .iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")].iter())
        .map(|d| d.join(bin))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("LEASELINE_REQUIRE_EXTERNAL").is_err(),
            "{bin} is not installed; scripts/test.sh installs it"
        );
        eprintln!("SKIPPED: {bin} is not installed (run scripts/test.sh to install it)");
    }
    found
}

/// A child process, killed and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child started in a process group of its own (see [`in_own_group`]), with everything it
/// forked: dropped, the whole group gets SIGTERM, then SIGKILL for whatever is left.
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill").args([sig, "--", &group]).status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("-KILL");
        let _ = self.0.wait();
    }
}

/// Makes a command start its own process group, so [`Group`] can end all it forks.
pub fn in_own_group(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}

/// A `[[key]]` section of pool.toml for `token`.
pub fn key(name: &str, role: &str, token: &str) -> String {
    format!(
        "\n[[key]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
        sha(token)
    )
}

/// Writes `dir/pool.toml` for the real binary: loopback on a free port, data in `dir/data`,
/// JSON logs (so [`Server::start`] can read its address), then `body` (pools, leases…) and
/// the standard keys.
pub fn binary_config(dir: &Path, body: &str) -> PathBuf {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nlog_format = \"json\"\n\n{body}\n{}",
        dir.join("data").display(),
        standard_keys()
    );
    let path = dir.join("pool.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The site, telephony and admin keys most tests use.
pub fn standard_keys() -> String {
    [
        key("site", "site", SITE),
        key("tel", "telephony", TELEPHONY),
        key("admin", "admin", ADMIN),
    ]
    .concat()
}

/// Reads the whole call journal of the server at `base` (pages of `page` rows, so the cursor is
/// exercised) and checks it against what clients were told: each acknowledged call once, with
/// the lease it was attributed to (`calls`: call id -> lease id, "" for none), and a duration
/// for each acknowledged end. Journal rows of other kinds (redeems, refunds…) are skipped.
pub fn assert_journal_holds_acknowledged_calls(
    agent: &ureq::Agent,
    base: &str,
    page: usize,
    calls: &std::collections::HashMap<String, String>,
    ended: &std::collections::HashSet<String>,
) {
    let mut seen: std::collections::HashMap<String, u32> = Default::default();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("{base}/v1/calls?limit={page}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, rows) = http(agent, "GET", &path, Some(ADMIN), None).unwrap();
        assert_eq!(status, 200, "{rows}");
        for c in rows["calls"].as_array().unwrap() {
            if c["kind"] != "call" {
                continue;
            }
            let id = c["call_id"].as_str().unwrap().to_owned();
            if let Some(lease) = calls.get(&id) {
                assert_eq!(
                    c["lease_id"].as_str().unwrap_or(""),
                    lease,
                    "call {id} attributed differently after the crash or failover"
                );
            }
            if ended.contains(&id) {
                assert!(c["duration_secs"].is_u64(), "acknowledged end of {id} lost");
            }
            *seen.entry(id).or_default() += 1;
        }
        match rows["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    for id in calls.keys() {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "acknowledged call {id} is in the journal {:?} times",
            seen.get(id)
        );
    }
}

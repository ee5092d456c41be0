//! The public edge against the real binary, with raw sockets: slow or silent request heads
//! and idle keep-alive connections are cut at their deadlines, connections over the cap are
//! answered at once, SIGTERM drains for a bounded time, and requests hyper cannot read still
//! get problem+json answers. Deadlines are configured short (1–2 s) to keep the tests fast.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A config whose `[server]` section also holds `server_lines`.
fn edge_config(dir: &std::path::Path, server_lines: &str) -> PathBuf {
    binary_config(
        dir,
        &format!(
            "{server_lines}\n\n[[pool]]\nname = \"p\"\nnumbers = [\"+33899100000..=+33899100009\"]\n"
        ),
    )
}

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// An HTTP/1.1 answer read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts a problem+json answer with `status`, as the connection layer or the router
    /// gives it: with an `X-Request-Id`.
    fn assert_problem(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        assert!(self.header("x-request-id").is_some(), "{self:?}");
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:leaseline:problem:"));
        assert!(!p["detail"].as_str().unwrap().is_empty());
    }
}

/// Reads one answer (head, then a `content-length` body).
fn read_answer(c: &mut TcpStream) -> Answer {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the connection ended before an answer ({other:?}); got {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    Answer {
        status: status.parse().unwrap(),
        headers,
        body,
    }
}

fn ask(c: &mut TcpStream, request: &[u8]) -> Answer {
    c.write_all(request).unwrap();
    read_answer(c)
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: leaseline\r\n\r\n";

/// Waits for the server to close `c` (end of stream or reset), sending nothing more; fails
/// if it is still open after `limit`. Returns how long it took from `since`.
fn closed_by_server(c: &mut TcpStream, since: Instant, limit: Duration) -> Duration {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    match c.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "expected the connection to be closed, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("the connection is still open after {limit:?}")
        }
        Err(_) => {} // reset: closed too
    }
    since.elapsed()
}

#[test]
fn a_request_head_sent_one_byte_at_a_time_is_cut_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&edge_config(dir.path(), "header_timeout = \"1s\""));
    let mut c = connect(&server);
    let opened = Instant::now();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let drip = b"GET /healthz HTTP/1.1\r\nHost: leaseline\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = None;
    for b in drip {
        // A byte every 200 ms: the head keeps growing, but never in time.
        if c.write_all(&[*b]).is_err() {
            closed = Some(opened.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => {
                closed = Some(opened.elapsed());
                break;
            }
            Ok(n) => panic!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = Some(opened.elapsed());
                break;
            }
        }
    }
    let took = closed.expect("the slow head was never cut");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );
}

#[test]
fn a_request_head_left_unfinished_is_cut_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&edge_config(dir.path(), "header_timeout = \"1s\""));
    let mut c = connect(&server);
    let opened = Instant::now();
    // Headers, then silence: the blank line that ends the head never comes.
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: leaseline\r\n")
        .unwrap();
    let took = closed_by_server(&mut c, opened, Duration::from_secs(4));
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout_not_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&edge_config(
        dir.path(),
        "header_timeout = \"1s\"\nidle_timeout = \"2s\"",
    ));
    let mut c = connect(&server);
    assert_eq!(ask(&mut c, HEALTHZ).status, 200);
    // Idle for longer than the header timeout: still open, and serves the next request.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ask(&mut c, HEALTHZ).status, 200);
    let answered = Instant::now();
    let took = closed_by_server(&mut c, answered, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(1800),
        "closed after {took:?}, before the idle timeout"
    );
}

#[test]
fn over_the_connection_cap_a_new_connection_gets_503_at_once_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&edge_config(dir.path(), "max_connections = 4"));
    // Fill the cap with connections that each got an answer and stay open (keep-alive).
    // The harness's own readiness probe may hold one slot too, so count until refused.
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() <= 4, "more connections served than the cap");
        let mut c = connect(&server);
        let started = Instant::now();
        let a = ask(&mut c, HEALTHZ);
        if a.status == 503 {
            break (a, started.elapsed(), c);
        }
        assert_eq!(a.status, 200, "{a:?}");
        held.push(c);
    };
    let (answer, took, mut c) = refused;
    assert!(held.len() >= 3, "only {} connections served", held.len());
    answer.assert_problem(503);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    closed_by_server(&mut c, Instant::now(), Duration::from_secs(3));
    let m = ureq_free_metrics(&mut held[0]);
    assert!(
        m.contains("leaseline_http_connections_dropped_total{reason=\"over_capacity\"} 1"),
        "{m}"
    );
    // One leaves: a newcomer is served again.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = connect(&server);
        let a = ask(&mut c, HEALTHZ);
        if a.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {a:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/metrics` over a connection already held (a new one would be over the cap).
fn ureq_free_metrics(c: &mut TcpStream) -> String {
    let a = ask(c, b"GET /metrics HTTP/1.1\r\nHost: leaseline\r\n\r\n");
    assert_eq!(a.status, 200);
    String::from_utf8(a.body).unwrap()
}

#[test]
fn sigterm_with_slow_clients_open_exits_0_within_the_drain_timeout_and_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let config = edge_config(dir.path(), "drain_timeout = \"1s\"");
    let mut server = Server::start(&config);
    let (status, lease) = server.post(
        "/v1/leases",
        Some(SITE),
        &json!({"pool": "p", "session": "before-sigterm"}),
    );
    assert_eq!(status, 201, "{lease}");
    // One client dribbles a head; another is inside a request, its body half sent (the
    // 100 Continue says the handler is reading it).
    let mut slow_head = connect(&server);
    slow_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: lease")
        .unwrap();
    let mut slow_body = connect(&server);
    let body = json!({"pool": "p", "session": "slow"}).to_string();
    slow_body
        .write_all(
            format!(
                "POST /v1/leases HTTP/1.1\r\nHost: leaseline\r\nAuthorization: Bearer {SITE}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                body.len() + 10
            )
            .as_bytes(),
        )
        .unwrap();
    assert_eq!(read_answer(&mut slow_body).status, 100);
    slow_body.write_all(body.as_bytes()).unwrap();

    let asked = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM with a drain timeout of 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = asked.elapsed();
    assert!(exit.success(), "exit {exit}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}: the request in progress got no time to finish"
    );
    closed_by_server(&mut slow_head, asked, Duration::from_secs(1));
    drop(server);

    let server = Server::start(&config);
    let id = lease["lease_id"].as_str().unwrap();
    let (status, v) = server.get(&format!("/v1/leases/{id}"), None);
    assert_eq!(status, 200, "the lease acknowledged before SIGTERM: {v}");
}

#[test]
fn requests_the_server_cannot_read_get_problem_json_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&edge_config(dir.path(), ""));
    let once = |request: &[u8]| {
        let mut c = connect(&server);
        ask(&mut c, request)
    };
    // A URL over 8 KiB: the router's 414. One over 64 KiB never reaches the router: hyper
    // answers 414 if the head arrived in one read, 431 if it outgrew the 64 KiB buffer first.
    let long = |len: usize| {
        let url = format!("/v1/leases/{}", "a".repeat(len));
        once(format!("GET {url} HTTP/1.1\r\nHost: leaseline\r\n\r\n").as_bytes())
    };
    let a = long(20_000);
    a.assert_problem(414);
    assert!(
        a.json()["detail"].as_str().unwrap().contains("8 KiB"),
        "{a:?}"
    );
    let a = long(70_000);
    assert!(matches!(a.status, 414 | 431), "{a:?}");
    a.assert_problem(a.status);
    assert!(
        a.json()["detail"].as_str().unwrap().contains("8 KiB"),
        "{a:?}"
    );
    let huge = a.status.to_string();
    // More headers than hyper parses at all (100): its 431, as a problem.
    let many: String = (0..120).map(|i| format!("X-H{i}: x\r\n")).collect();
    once(format!("GET /healthz HTTP/1.1\r\nHost: leaseline\r\n{many}\r\n").as_bytes())
        .assert_problem(431);
    // A raw byte that is not ASCII in the request line, and a %-encoded one that is not UTF-8.
    once(b"GET /v1/leases/\xff\xfe HTTP/1.1\r\nHost: leaseline\r\n\r\n").assert_problem(400);
    let a = once(b"GET /v1/leases/%FF HTTP/1.1\r\nHost: leaseline\r\n\r\n");
    a.assert_problem(400);
    assert!(a.json()["detail"].as_str().unwrap().contains("UTF-8"));
    // Not HTTP at all.
    once(b"HELLO\r\n\r\n").assert_problem(400);

    let m = once(b"GET /metrics HTTP/1.1\r\nHost: leaseline\r\n\r\n");
    let m = String::from_utf8(m.body).unwrap();
    let (n414, n431) = if huge == "414" { (1, 1) } else { (0, 2) };
    for (status, n) in [("400", 2), ("414", n414), ("431", n431)] {
        if n == 0 {
            continue;
        }
        let series = format!(
            "leaseline_http_request_duration_seconds_count{{method=\"-\",route=\"unparsed\",status=\"{status}\"}} {n}"
        );
        assert!(m.contains(&series), "{series} missing from\n{m}");
    }
}

#[test]
fn unknown_methods_share_one_metric_label() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&edge_config(dir.path(), ""));
    let mut c = connect(&server);
    for method in ["BREW", "PROPFIND1", "X"] {
        let a = ask(
            &mut c,
            format!("{method} /healthz HTTP/1.1\r\nHost: leaseline\r\n\r\n").as_bytes(),
        );
        a.assert_problem(405);
    }
    let m =
        String::from_utf8(ask(&mut c, b"GET /metrics HTTP/1.1\r\nHost: leaseline\r\n\r\n").body)
            .unwrap();
    assert!(
        m.contains("leaseline_http_request_duration_seconds_count{method=\"other\",route=\"/healthz\",status=\"405\"} 3"),
        "{m}"
    );
    assert!(!m.contains("BREW"), "a client's method became a label");
}

/// A connection to `s` from the loopback address `from` (any of 127.0.0.0/8).
fn connect_from(s: &Server, from: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let c = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(s.addr.parse().unwrap()).await.unwrap()
    });
    let c = c.into_std().unwrap();
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

#[test]
fn handlers_still_see_the_clients_address() {
    let dir = tempfile::tempdir().unwrap();
    let origin = "https://www.example.com";
    let page_key = "page-key";
    let config = binary_config(
        dir.path(),
        &format!(
            "[[pool]]\nname = \"p\"\nnumbers = [\"+33899100000..=+33899100009\"]\n\n[limits]\npublishable_per_ip = 1\npublishable_per_session = 100\n{}origins = [\"{origin}\"]\ntenant = \"site\"\n",
            key("page", "publishable", page_key)
        ),
    );
    let server = Server::start(&config);
    let allocate = |from: &str, session: &str| {
        let body = json!({"pool": "p", "session": session}).to_string();
        let mut c = connect_from(&server, from);
        ask(
            &mut c,
            format!(
                "POST /v1/leases HTTP/1.1\r\nHost: leaseline\r\nOrigin: {origin}\r\nAuthorization: Bearer {page_key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    assert_eq!(allocate("127.0.0.1", "a").status, 201);
    allocate("127.0.0.1", "b").assert_problem(429);
    // Another address has its own allowance: the limit saw each client's address.
    let other = allocate("127.1.2.3", "c");
    assert_eq!(other.status, 201, "{:?}", other.json());
}

#[test]
fn a_body_declared_over_the_limit_is_refused_at_once_and_never_invited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&edge_config(dir.path(), ""));
    for (length, expect) in [("99999999999", true), ("70000", false)] {
        let mut c = connect(&server);
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let expect = if expect {
            "Expect: 100-continue\r\n"
        } else {
            ""
        };
        c.write_all(
            format!(
                "POST /v1/leases HTTP/1.1\r\nHost: leaseline\r\nAuthorization: Bearer {SITE}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{expect}\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        // No body is sent: the length alone says it is too large. Neither a `100 Continue`
        // (inviting gigabytes) nor a 503 after the request timeout.
        let started = Instant::now();
        let a = read_answer(&mut c);
        a.assert_problem(413);
        assert!(started.elapsed() < Duration::from_secs(2), "{length}");
        assert!(
            a.json()["detail"].as_str().unwrap().contains("64 KiB"),
            "{a:?}"
        );
    }
}

#[test]
fn a_body_sent_too_slowly_is_answered_408_not_503() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&edge_config(dir.path(), "request_timeout = \"1s\""));
    let mut c = connect(&server);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        format!(
            "POST /v1/leases HTTP/1.1\r\nHost: leaseline\r\nAuthorization: Bearer {SITE}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"pool\""
        )
        .as_bytes(),
    )
    .unwrap();
    let started = Instant::now();
    let a = read_answer(&mut c);
    // The client's fault, said as such: 408, not "the server took too long, retry" (503).
    a.assert_problem(408);
    assert!(
        started.elapsed() >= Duration::from_millis(900)
            && started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.header("connection"), Some("close"), "{a:?}");
}

#[test]
fn one_address_or_network_cannot_hold_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&edge_config(
        dir.path(),
        "max_connections = 50\nmax_connections_per_ip = 3\nmax_connections_per_prefix = 4\ntrusted_proxies = [\"127.0.3.3\"]",
    ));
    let refused = |from: &str, reason: &str| {
        let mut c = connect_from(&server, from);
        let started = Instant::now();
        let a = read_answer(&mut c);
        a.assert_problem(429);
        assert_eq!(a.header("retry-after"), Some("1"));
        assert!(
            a.json()["detail"].as_str().unwrap().contains(reason),
            "{a:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        closed_by_server(&mut c, Instant::now(), Duration::from_secs(3));
    };
    // One address opens connections and keeps them.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect_from(&server, "127.0.1.2");
        assert_eq!(ask(&mut c, HEALTHZ).status, 200);
        held.push(c);
    }
    refused("127.0.1.2", "this address");
    // Its neighbours in the same /24 share the network's allowance.
    let mut c = connect_from(&server, "127.0.1.5");
    assert_eq!(ask(&mut c, HEALTHZ).status, 200);
    held.push(c);
    refused("127.0.1.6", "this network");
    // Everyone else is still served, /healthz first.
    let mut other = connect_from(&server, "127.0.2.4");
    assert_eq!(ask(&mut other, HEALTHZ).status, 200);
    // A trusted proxy carries many clients: it is not held to one client's share.
    let mut proxied = Vec::new();
    for _ in 0..6 {
        let mut c = connect_from(&server, "127.0.3.3");
        assert_eq!(ask(&mut c, HEALTHZ).status, 200);
        proxied.push(c);
    }
    // When one of the address's connections closes, it may open another.
    held.remove(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = connect_from(&server, "127.0.1.2");
        let a = ask(&mut c, HEALTHZ);
        if a.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {a:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = ureq_free_metrics(&mut other);
    for reason in ["per_ip", "per_prefix"] {
        let series = format!("leaseline_http_connections_dropped_total{{reason=\"{reason}\"}} ");
        let count: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("{series} missing from\n{m}"))
            .parse()
            .unwrap();
        assert!(count >= 1, "{series}{count}");
    }
}

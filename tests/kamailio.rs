//! The shipped Kamailio route, end to end with real SIP software on 127.0.0.1 (Debian's
//! kamailio and sipp, installed by scripts/test.sh): a sipp caller dials through Kamailio,
//! which asks the real Leaseline binary and relays to a sipp gateway standing in for the
//! advertiser's carrier; the dialog's end reports the real duration.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Rig {
    dir: tempfile::TempDir,
    kamailio_port: u16,
    sipp: PathBuf,
}

impl Rig {
    /// Runs a sipp caller scenario to completion (bounded); returns its exit status and the
    /// messages it saw.
    fn call(
        &self,
        scenario: &str,
        number: &str,
        caller: &str,
        extra: &[&str],
    ) -> (bool, String, Duration) {
        let msgs = self.dir.path().join(format!("caller-{}.msg", udp_port()));
        let started = Instant::now();
        let mut child = Command::new(&self.sipp)
            .arg(format!("127.0.0.1:{}", self.kamailio_port))
            .arg("-sf")
            .arg(repo(&format!("telephony/kamailio/sipp/{scenario}")))
            .args([
                "-s",
                number,
                "-key",
                "caller",
                caller,
                "-i",
                "127.0.0.1",
                "-p",
            ])
            .arg(udp_port().to_string())
            .args([
                "-nostdin",
                "-timeout",
                "60s",
                "-timeout_error",
                "-trace_err",
                "-trace_screen",
                "-trace_msg",
                "-message_file",
            ])
            .arg(&msgs)
            .args(extra)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let status = child.wait().unwrap();
        let elapsed = started.elapsed();
        if !status.success() {
            let stem = scenario.trim_end_matches(".xml");
            for kind in ["errors", "screen"] {
                let path = self.dir.path().join(format!("{stem}_{pid}_{kind}.log"));
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                let tail = &log[log.len().saturating_sub(4000)..];
                eprintln!("sipp {kind} log ({}):\n{tail}", path.display());
            }
        }
        (
            status.success(),
            std::fs::read_to_string(&msgs).unwrap_or_default(),
            elapsed,
        )
    }
}

fn journal(server: &Server) -> Vec<Value> {
    let (_, v) = http(
        &agent(),
        "GET",
        &server.url("/v1/calls?limit=1000"),
        Some(ADMIN),
        None,
    )
    .unwrap();
    v["calls"].as_array().unwrap().clone()
}

fn lease(server: &Server, body: Value) -> Value {
    let (status, v) = http(
        &agent(),
        "POST",
        &server.url("/v1/leases"),
        Some(SITE),
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 201, "{v}");
    v
}

/// Waits until the journal shows `call_id` ended (the dialog's end is reported asynchronously).
fn ended(server: &Server, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(c) = journal(server)
            .into_iter()
            .find(|c| pred(c) && !c["duration_secs"].is_null())
        {
            return c;
        }
        assert!(Instant::now() < deadline, "no ended call matched");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn calls_through_kamailio_reach_the_leased_target_and_report_their_duration() {
    let (Some(kamailio), Some(sipp)) = (external("kamailio"), external("sipp")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Kamailio's own telephony key, which it reads from leaseline-local.cfg beside its
    // config (as the README tells operators), not from its command line.
    let kamailio_key = "kamailio-key-from-a-file";
    let config = binary_config(
        dir.path(),
        &format!(
            r#"[[pool]]
name = "p"
numbers = ["+33899100000..=+33899100009"]

[[pool]]
name = "s"
numbers = ["+33899200000"]
on_exhausted = "shared"
shared_number = "+33899299999"
code_ttl = "10m"
fallback_target = "sip:switchboard@127.0.0.1:9"
{}"#,
            key("kamailio", "telephony", kamailio_key)
        ),
    );
    let kam_dir = dir.path().join("kamailio");
    std::fs::create_dir_all(&kam_dir).unwrap();
    std::fs::copy(
        repo("telephony/kamailio/kamailio.cfg"),
        kam_dir.join("kamailio.cfg"),
    )
    .unwrap();
    std::fs::write(
        kam_dir.join("leaseline-local.cfg"),
        format!("#!define LEASELINE_KEY \"{kamailio_key}\"\n"),
    )
    .unwrap();
    let server = Server::start(&config);
    let gateway_port = udp_port();
    let kamailio_port = udp_port();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let kam_log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
    let mut cmd = Command::new(kamailio);
    cmd.arg("-f")
        .arg(kam_dir.join("kamailio.cfg"))
        .args(["-DD", "-E", "-m", "128", "-Y"])
        .arg(&run)
        .arg("-A")
        .arg(format!("LISTEN=udp:127.0.0.1:{kamailio_port}"))
        .arg("-A")
        .arg(format!("LEASELINE_URL=\"http://{}\"", server.addr))
        .arg("-A")
        .arg(format!("GATEWAY=\"127.0.0.1:{gateway_port}\""))
        .stdout(Stdio::null())
        .stderr(kam_log);
    // Kamailio forks its workers: they all go when the group is ended.
    let _kamailio = Group(in_own_group(&mut cmd).spawn().unwrap());
    let gateway_msgs = dir.path().join("gateway.msg");
    let _gateway = Killed(
        Command::new(&sipp)
            .arg("-sf")
            .arg(repo("telephony/kamailio/sipp/gateway.xml"))
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &gateway_port.to_string(),
                "-nostdin",
                "-timeout",
                "300s",
                "-trace_msg",
                "-message_file",
            ])
            .arg(&gateway_msgs)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rig = Rig {
        dir,
        kamailio_port,
        sipp,
    };
    // Kamailio is up once it answers; the unleased number (404) is the probe.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, msgs, _) = rig.call("refused.xml", "33899100009", "+33600000009", &["-m", "1"]);
        if ok && msgs.contains("SIP/2.0 404") {
            break;
        }
        assert!(Instant::now() < deadline, "kamailio never answered: {msgs}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // 1. A leased number: the call reaches the gateway with the lease's target, is attributed
    //    to the lease, and its end carries the real duration (2 s of talk).
    let a = lease(
        &server,
        json!({"pool": "p", "session": "a", "listing": "car-1", "target": "+33600000001"}),
    );
    let (ok, _, _) = rig.call(
        "caller.xml",
        a["number"].as_str().unwrap().trim_start_matches('+'),
        "+33612345678",
        &["-m", "1", "-d", "2000"],
    );
    assert!(ok, "the call through Kamailio failed");
    let gw = std::fs::read_to_string(&gateway_msgs).unwrap();
    assert!(
        gw.contains("INVITE sip:+33600000001@127.0.0.1"),
        "the gateway got no INVITE for the target"
    );
    let c = ended(&server, |c| c["lease_id"] == a["lease_id"]);
    assert_eq!(c["reason"], "active");
    assert_eq!(c["caller"], "+33612345678");
    let d = c["duration_secs"].as_u64().unwrap();
    assert!((1..=3).contains(&d), "duration {d} s for a 2 s call");

    // 2. A number nobody holds, with no fallback: refused with 404.
    let (ok, msgs, _) = rig.call("refused.xml", "33899100008", "+33612345678", &["-m", "1"]);
    assert!(ok && msgs.contains("SIP/2.0 404 Not Found"), "{msgs}");

    // 3. Multi-call over real SIP: two calls of at least 1 s make the lease paid.
    let b = lease(
        &server,
        json!({"pool": "p", "session": "b", "listing": "video", "target": "sip:adv@127.0.0.1:{}".replace("{}", &gateway_port.to_string()), "calls_required": 2, "min_call_secs": 1}),
    );
    let b_number = b["number"]
        .as_str()
        .unwrap()
        .trim_start_matches('+')
        .to_owned();
    let b_id = b["lease_id"].as_str().unwrap().to_owned();
    for caller in ["+33611111111", "+33622222222"] {
        let (ok, _, _) = rig.call("caller.xml", &b_number, caller, &["-m", "1", "-d", "1500"]);
        assert!(ok);
        ended(&server, |c| {
            c["lease_id"] == b["lease_id"] && c["caller"] == caller
        });
    }
    let (_, shown) = http(
        &agent(),
        "GET",
        &server.url(&format!("/v1/leases/{b_id}")),
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        (shown["calls"].as_u64(), shown["paid"].as_bool()),
        (Some(2), Some(true)),
        "{shown}"
    );
    assert!(
        std::fs::read_to_string(&gateway_msgs)
            .unwrap()
            .contains("INVITE sip:adv@127.0.0.1"),
        "SIP targets are relayed directly"
    );

    // 4. The shared number's code reaches Leaseline three ways: dialled after the number
    //    (`*1234`, `;postd=1234`), or in the X-Leaseline-Code header of an IVR in front.
    //    Each call is attributed by its code to its own lease and relayed to its target.
    let gw_target = format!("sip:adv@127.0.0.1:{gateway_port}");
    let ways: [(&str, &str); 3] = [
        ("star", "caller.xml"),
        ("postd", "caller.xml"),
        ("header", "caller_code_header.xml"),
    ];
    let mut codes_used = Vec::new();
    for (i, (way, scenario)) in ways.into_iter().enumerate() {
        let l = lease(
            &server,
            json!({"pool": "s", "session": format!("buyer-{i}"), "with_code": true, "target": gw_target}),
        );
        assert_eq!(l["number"], "+33899299999", "{l}");
        let code = l["code"].as_str().unwrap();
        codes_used.push(code.to_owned());
        let (service, extra) = match way {
            "star" => (format!("33899299999*{code}"), vec![]),
            "postd" => (format!("33899299999;postd={code}"), vec![]),
            _ => ("33899299999".to_owned(), vec!["-key", "code", code]),
        };
        let mut args = vec!["-m", "1", "-d", "500"];
        args.extend(extra);
        let caller = format!("+3364444444{i}");
        let (ok, msgs, _) = rig.call(scenario, &service, &caller, &args);
        assert!(ok, "the call with the code {way} failed: {msgs}");
        let c = ended(&server, |c| c["caller"] == caller.as_str());
        assert_eq!(
            (
                c["reason"].as_str(),
                c["lease_id"].as_str(),
                c["code"].as_str()
            ),
            (Some("code"), l["lease_id"].as_str(), Some(code)),
            "{way}: {c}"
        );
        assert_eq!(
            c["called"], "+33899299999",
            "{way}: the number alone, without the digits"
        );
    }
    // A code matching no live lease reaches nobody: 404, not the pool's fallback.
    let wrong = (0..4)
        .map(|n| format!("{n:04}"))
        .find(|c| !codes_used.contains(c))
        .unwrap();
    let (ok, msgs, _) = rig.call(
        "refused.xml",
        &format!("33899299999*{wrong}"),
        "+33612345678",
        &["-m", "1"],
    );
    assert!(ok && msgs.contains("SIP/2.0 404"), "{msgs}");
    // A code that is not four digits is refused with 484, never guessed at.
    let (ok, msgs, _) = rig.call(
        "refused.xml",
        "33899299999*12",
        "+33612345678",
        &["-m", "1"],
    );
    assert!(ok && msgs.contains("SIP/2.0 484"), "{msgs}");

    // 5. A bounded load run: every call of a burst succeeds.
    let calls: u64 = std::env::var("LEASELINE_SIP_LOAD_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rate: u64 = std::env::var("LEASELINE_SIP_LOAD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let (ok, _, took) = rig.call(
        "caller.xml",
        a["number"].as_str().unwrap().trim_start_matches('+'),
        "+33633333333",
        &[
            "-m",
            &calls.to_string(),
            "-r",
            &rate.to_string(),
            "-l",
            "200",
            "-d",
            "0",
        ],
    );
    assert!(ok, "some calls of the load run failed");
    println!(
        "load: {calls} calls offered at {rate}/s through Kamailio -> Leaseline, 0 failed, {:.0} calls/s completed",
        calls as f64 / took.as_secs_f64()
    );
    // Every call of the burst was attributed to A (a call counts at its start here).
    let a_id = a["lease_id"].as_str().unwrap();
    let (_, shown) = http(
        &agent(),
        "GET",
        &server.url(&format!("/v1/leases/{a_id}")),
        None,
        None,
    )
    .unwrap();
    assert_eq!(shown["calls"].as_u64(), Some(1 + calls), "{shown}");

    // 6. Leaseline stopped: Kamailio answers 503, quickly.
    server.kill9();
    let (ok, msgs, took) = rig.call("refused.xml", "33899100000", "+33612345678", &["-m", "1"]);
    assert!(ok && msgs.contains("SIP/2.0 503"), "{msgs}");
    assert!(took < Duration::from_secs(3), "503 took {took:?}");
}

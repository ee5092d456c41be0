//! Ops: the shipped dashboard and alert rules, proven against what the binary exports and a
//! real Prometheus (Debian's package, installed by scripts/test.sh) scraping the real binary.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A webhook endpoint nobody listens on (`PORT`: a free one): its series exist and its
/// deliveries fail and are retried.
const DEAD_WEBHOOK: &str = "
[[webhook]]
name = \"shop\"
url = \"http://127.0.0.1:PORT/hook\"
secret = \"whsec_observability_0123\"
events = [\"lease.released\", \"call.started\"]
backoff = \"1s\"
";

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo("grafana/dashboards/leaseline.json")).unwrap(),
    )
    .unwrap()
}

/// Every (panel title, expr) of the dashboard.
fn exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    let vars: Vec<_> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"pool"),
        "variables: {vars:?}"
    );
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title} has no datasource"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no target");
        for t in targets {
            assert!(
                !t["expr"].as_str().unwrap().is_empty(),
                "{title} has an empty expr"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}");
        }
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{title} gridPos.{k}");
        }
    }
    assert!(ids.len() >= 15, "only {} panels", ids.len());
}

/// The dashboard and the alerts use exactly the metric names the binary exports.
#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metric_names() {
    // With a webhook endpoint, so its series exist; and a priced pool, so that the revenue
    // counter has a series.
    let app = TestApp::with_config(|data| {
        format!(
            "{}{}",
            config_text(data, "").replace(
                "name = \"ch\"\n",
                "name = \"ch\"\ntariff = { per_minute = \"3.13\", currency = \"CHF\" }\n",
            ),
            DEAD_WEBHOOK.replace("PORT", &free_port().to_string())
        )
    })
    .await;
    app.call("GET", "/healthz", None, None).await; // so the HTTP histogram has a series
    let text = app.call("GET", "/metrics", None, None).await.text;
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let alerts = std::fs::read_to_string(repo("grafana/alerts.yml")).unwrap();
    let dash = std::fs::read_to_string(repo("grafana/dashboards/leaseline.json")).unwrap();
    let mut used = BTreeSet::new();
    for src in [alerts.as_str(), dash.as_str()] {
        for (i, _) in src.match_indices("leaseline_") {
            let name: String = src[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "leaseline_" || src[..i].ends_with('-') {
                continue;
            }
            used.insert(name);
        }
    }
    assert!(used.len() > 10);
    for name in &used {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
            .unwrap_or(name);
        assert!(exported.contains(family), "{name} is used but not exported");
    }
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let Some(promtool) = external("promtool") else {
        return;
    };
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(repo("grafana"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn try_query(prom: &str, expr: &str) -> Result<Value, String> {
    match ureq::get(&format!("{prom}/api/v1/query"))
        .query("query", expr)
        .call()
    {
        Ok(r) => Ok(r.into_json().unwrap()),
        Err(ureq::Error::Status(_, r)) => Ok(r.into_json().unwrap_or(Value::Null)),
        Err(e) => Err(e.to_string()),
    }
}

fn query(prom: &str, expr: &str) -> Value {
    try_query(prom, expr).unwrap_or_else(|e| panic!("prometheus unreachable: {e}"))
}

/// Polls Prometheus until `expr` returns a sample above zero.
fn wait_for(prom: &str, expr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Connection refused while Prometheus starts counts as "not yet".
        let v = try_query(prom, expr).unwrap_or(Value::Null);
        let positive = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse::<f64>().ok())
                    .is_some_and(|x| x > 0.0)
            });
        if positive {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never saw {expr}: {v}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn every_dashboard_panel_returns_series_from_a_real_prometheus() {
    let Some(prometheus) = external("prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(
        dir.path(),
        &format!(
            r#"[[pool]]
name = "ex"
numbers = ["+33899100000", "+33899100001"]
tariff = {{ per_call = "2.99", currency = "EUR" }}
grace = "1s"
quarantine = "1s"
[[pool]]
name = "sh"
numbers = ["+41900100000"]
on_exhausted = "shared"
shared_number = "+41900199999"
{webhook}"#,
            webhook = DEAD_WEBHOOK.replace("PORT", &free_port().to_string())
        ),
    );
    let server = Server::start(&config);
    let port = free_port();
    let prom = format!("http://127.0.0.1:{port}");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: leaseline\n    static_configs:\n      - targets: [\"{addr}\"]\n",
            rules = repo("grafana/alerts.yml").display(),
            addr = server.addr
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // Traffic of every kind: new, sticky, rejected and shared allocations; renewals and
    // releases; attributed, unattributed and unknown calls with their ends.
    let a = agent();
    let post = |path: &str, key: &str, body: Value| {
        http(&a, "POST", &server.url(path), Some(key), Some(&body)).unwrap()
    };
    let traffic = |round: usize| {
        let mut leases = Vec::new();
        for s in 0..3 {
            let (status, l) = post(
                "/v1/leases",
                SITE,
                json!({"pool": "ex", "session": format!("r{round}-{s}"), "listing": "car"}),
            );
            if status == 201 {
                leases.push(l);
            }
        }
        post(
            "/v1/leases",
            SITE,
            json!({"pool": "sh", "session": format!("r{round}-a")}),
        );
        post(
            "/v1/leases",
            SITE,
            json!({"pool": "sh", "session": format!("r{round}-b")}),
        );
        for (i, l) in leases.iter().enumerate() {
            let id = l["lease_id"].as_str().unwrap();
            post(&format!("/v1/leases/{id}/renew"), SITE, json!({}));
            let call = format!("r{round}-{i}");
            post(
                "/v1/calls",
                TELEPHONY,
                json!({"call_id": call, "event": "start", "called": l["number"], "caller": "+33612345678"}),
            );
            post(
                "/v1/calls",
                TELEPHONY,
                json!({"call_id": call, "event": "end", "duration_secs": 30}),
            );
            http(
                &a,
                "DELETE",
                &server.url(&format!("/v1/leases/{id}")),
                Some(SITE),
                None,
            )
            .unwrap();
        }
        post(
            "/v1/calls",
            TELEPHONY,
            json!({"call_id": format!("r{round}-x"), "event": "start", "called": "+41900100000"}),
        );
        post(
            "/v1/calls",
            TELEPHONY,
            json!({"call_id": format!("r{round}-u"), "event": "start", "called": "+33100000000"}),
        );
    };
    traffic(0);
    wait_for(&prom, "leaseline_allocations_total{outcome=\"rejected\"}");
    traffic(1);
    wait_for(
        &prom,
        "sum(rate(leaseline_calls_total{reason=\"unknown_number\"}[10s]))",
    );
    wait_for(
        &prom,
        "sum(rate(leaseline_lease_lifetime_seconds_count[30s]))",
    );

    let d = dashboard();
    let all = exprs(&d);
    assert!(all.len() >= 20);
    for (title, expr) in all {
        let q = expr
            .replace("$__rate_interval", "10s")
            .replace("$pool", ".*")
            .replace("${datasource}", "prometheus");
        let v = query(&prom, &q);
        assert_eq!(
            v["status"], "success",
            "{title}: {q} does not evaluate: {v}"
        );
        let n = v["data"]["result"].as_array().map_or(0, Vec::len);
        assert!(n > 0, "{title}: {q} returned no series");
    }
    // The pool variable's own query lists the pools.
    let pools = query(&prom, "group by (pool) (leaseline_pool_size)");
    assert_eq!(pools["data"]["result"].as_array().unwrap().len(), 2);
    // The rules loaded into the real server too.
    let rules: Value = ureq::get(&format!("{prom}/api/v1/rules"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 10, "{rules}");
}

/// A panel whose axis is in seconds shows every count on a second axis of its own, on the
/// right, so a count (pending entries, writes per flush) never reads as a latency.
#[test]
fn counts_never_share_a_seconds_axis_with_latencies() {
    let d = dashboard();
    let mut checked = 0;
    for p in d["panels"].as_array().unwrap() {
        if p["fieldConfig"]["defaults"]["unit"] != "s" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            if expr.contains("_seconds") {
                continue;
            }
            let reference = &t["refId"];
            let override_ = p["fieldConfig"]["overrides"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|o| {
                    o["matcher"]["id"] == "byFrameRefID" && o["matcher"]["options"] == *reference
                })
                .unwrap_or_else(|| panic!("{title}: the count {expr} is on the seconds axis"));
            let property = |id: &str| {
                override_["properties"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["id"] == id)
                    .map(|x| x["value"].clone())
                    .unwrap_or(Value::Null)
            };
            let unit = property("unit");
            assert!(
                unit.is_string() && unit != "s",
                "{title}: {expr} has unit {unit}"
            );
            assert_eq!(property("custom.axisPlacement"), "right", "{title}: {expr}");
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "the wheel and flush panels each chart a count"
    );
}

/// A first call a few seconds after the lease lands in a bucket a few seconds wide, not in
/// one bucket holding every call.
#[tokio::test]
async fn the_first_call_histogram_resolves_calls_made_within_seconds() {
    let app = TestApp::new().await;
    let lease = app.allocate("small", "s1").await;
    assert_eq!(lease.status, 201, "{}", lease.text);
    app.advance(Duration::from_secs(3)).await;
    let body = json!({"call_id": "c1", "event": "start",
                      "called": lease.json["number"], "caller": "+33612345678"})
    .to_string();
    let call = app
        .call("POST", "/v1/calls", Some(TELEPHONY), Some(&body))
        .await;
    assert_eq!(call.json["reason"], "active", "{}", call.text);
    let metrics = app.call("GET", "/metrics", None, None).await.text;
    // (le, count) of the pool's first-call buckets, in order.
    let buckets: Vec<(f64, u64)> = metrics
        .lines()
        .filter(|l| l.starts_with("leaseline_lease_first_call_seconds_bucket{"))
        .filter(|l| l.contains("pool=\"small\""))
        .map(|l| {
            let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, l.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect();
    let (i, &(upper, _)) = buckets
        .iter()
        .enumerate()
        .find(|(_, &(_, n))| n == 1)
        .unwrap_or_else(|| panic!("no bucket holds the call: {buckets:?}"));
    assert!(i > 0, "the lowest bucket holds a call 3 s in: {buckets:?}");
    let lower = buckets[i - 1].0;
    assert!(
        lower < 3.0 && upper >= 3.0 && upper - lower <= 2.0,
        "the call at 3 s lies in ({lower}, {upper}]"
    );
}

//! Capacity planning: the pure core, driven on a manual clock by random traffic of a known
//! load, measures that load and blocks as Erlang-B says; and `GET /v1/pools/{pool}/capacity`
//! as an operator's tooling reads it.

mod common;

use std::time::Duration;

use common::*;
use leaseline::clock::{Clock, ManualClock};
use leaseline::core::{
    erlang_b, servers_for, AllocateRequest, Allocator, CoreError, LeaseId, LeaseSettings,
    OnExhausted, Outbox, PhoneNumber, PoolId, PoolMode, PoolSpec, SessionId, TenantId, Timestamp,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn pool(size: u64, quarantine: Duration) -> Allocator {
    Allocator::new(vec![PoolSpec {
        name: "sim".into(),
        numbers: (0..size)
            .map(|i| PhoneNumber::from_digits(33_899_100_000 + i).unwrap())
            .collect(),
        settings: LeaseSettings {
            ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(86_400),
            page_max_ttl: Duration::from_secs(86_400),
            grace: Duration::ZERO,
            quarantine,
            retention: quarantine.max(Duration::from_secs(60)),
        },
        on_exhausted: OnExhausted::Reject,
        return_window: Duration::from_secs(86_400),
        fallback: None,
        mode: PoolMode::Dynamic,
        access_ttl: Duration::ZERO,
        limits: Default::default(),
        tariff: None,
    }])
    .unwrap()
}

/// What a simulated run saw.
struct Run {
    core: Allocator,
    clock: ManualClock,
    /// Requests after the warm-up, and those refused.
    asked: u64,
    refused: u64,
}

/// Requests arriving as a Poisson process of `rate` a second for `hours`, each lease living an
/// exponentially distributed time of mean `mean_life` (asked for as its ttl), on a pool of
/// `size` numbers; the tick runs every second as the service's does. The first ten minutes
/// (the pool filling up from empty) are not counted.
fn simulate(
    size: u64,
    quarantine: Duration,
    rate: f64,
    mean_life: f64,
    hours: u64,
    seed: u64,
) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Timestamp::from_millis(1_800_000_000_000);
    let clock = ManualClock::new(start);
    let mut core = pool(size, quarantine);
    let mut out = Outbox::new();
    let end = start.as_millis() + hours * 3_600_000;
    let warm = start.as_millis() + 600_000;
    let (mut asked, mut refused, mut n) = (0, 0, 0u64);
    let mut next = start.as_millis() as f64;
    loop {
        // Exponential gaps: -ln(U) / rate, U in (0, 1].
        next += -(1.0 - rng.gen::<f64>()).ln() / rate * 1000.0;
        let arrival = next as u64;
        if arrival >= end {
            break;
        }
        // The ticks of every second up to the arrival, then the arrival itself.
        let mut t = clock.now().as_millis();
        while (t / 1000 + 1) * 1000 <= arrival {
            t = (t / 1000 + 1) * 1000;
            clock.set(Timestamp::from_millis(t));
            core.tick(clock.now(), &mut out);
        }
        clock.set(Timestamp::from_millis(arrival));
        let now = clock.now();
        core.tick(now, &mut out);
        let life = -(1.0 - rng.gen::<f64>()).ln() * mean_life;
        n += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        let req = AllocateRequest {
            tenant: TenantId::parse("site").unwrap(),
            pool: PoolId(0),
            session: SessionId::parse(&format!("v{n}")).unwrap(),
            listing: None,
            target: None,
            caller: None,
            ttl: Some(Duration::from_millis((life * 1000.0).max(1.0) as u64)),
            calls_required: 1,
            min_call_secs: 0,
            from_page: false,
            amount: None,
            with_code: false,
        };
        let res = core.allocate(req, now, LeaseId::from_bytes(id), &mut out);
        if arrival >= warm {
            asked += 1;
            refused += u64::from(matches!(res, Err(CoreError::Exhausted { .. })));
        }
        if let Err(e) = &res {
            assert!(matches!(e, CoreError::Exhausted { .. }), "{e}");
        }
        // What the service would persist, dropped: only the core's behaviour is under test.
        out.effects.clear();
        out.notices.clear();
    }
    core.check_invariants().unwrap();
    Run {
        core,
        clock,
        asked,
        refused,
    }
}

#[test]
fn the_core_measures_the_offered_load_and_blocks_as_erlang_b_says_at_the_recommended_size() {
    // 1 request a second, each lease living 60 s on average: 60 Erlangs offered.
    let (rate, life) = (1.0, 60.0);
    let offered = rate * life;

    // First, a pool too big to refuse anyone: what does the core measure?
    let big = simulate(200, Duration::ZERO, rate, life, 2, 7);
    assert_eq!(big.refused, 0);
    let c = big.core.capacity(PoolId(0), 0.01, big.clock.now()).unwrap();
    let measured = c.last_hour.erlangs;
    assert!(
        (measured - offered).abs() / offered < 0.08,
        "measured {measured} Erlangs, offered {offered}"
    );
    assert!(c.busiest_hour.erlangs >= measured);
    let recommended = servers_for(measured, 0.01);
    // About 75 numbers for 60 Erlangs at 1%.
    assert!((72..=78).contains(&recommended), "{recommended}");
    assert!(c.last_hour.counts.peak_in_use < 100);

    // At the recommended size, requests are refused about as often as the formula says.
    let sized = simulate(recommended, Duration::ZERO, rate, life, 4, 11);
    let blocked = sized.refused as f64 / sized.asked as f64;
    let formula = erlang_b(recommended, offered);
    assert!(
        (blocked - formula).abs() < 0.01,
        "{recommended} numbers: {blocked:.4} refused, Erlang-B says {formula:.4}"
    );
    assert!(blocked < 0.025, "{blocked}");
}

#[test]
fn an_undersized_pool_blocks_as_erlang_b_says_and_the_core_sees_it() {
    // 1 request a second, each lease living 45 s on average then resting 15 s: 60 Erlangs,
    // on 50 numbers. (Erlang-B depends on the holding time's mean only: the fixed quarantine
    // after an exponential lifetime changes nothing.)
    let (size, rate, life, quarantine) = (50, 1.0, 45.0, Duration::from_secs(15));
    let run = simulate(size, quarantine, rate, life, 4, 23);
    let blocked = run.refused as f64 / run.asked as f64;
    let formula = erlang_b(size, 60.0);
    assert!(
        (blocked - formula).abs() < 0.03,
        "{blocked:.4} refused, Erlang-B says {formula:.4}"
    );
    // The core counted the refusals too, and its own estimate of the blocking agrees.
    let c = run.core.capacity(PoolId(0), 0.01, run.clock.now()).unwrap();
    let l = c.last_hour;
    let refused_share = f64::from(l.counts.refused) / l.counts.requests() as f64;
    assert!((refused_share - formula).abs() < 0.04, "{refused_share}");
    assert!(
        (c.blocking_now - formula).abs() < 0.04,
        "{}",
        c.blocking_now
    );
    assert_eq!(l.holding, l.lifetime + quarantine);
    assert_eq!(u64::from(l.counts.peak_in_use), size, "the pool ran full");
    assert!(c.recommended > size);
    // With no quarantine beyond grace (zero here), fewer numbers would do.
    assert_eq!(c.shortest_quarantine, Duration::ZERO);
    assert!(c.with_shortest_quarantine < c.recommended);
}

// ---- the endpoint, from outside ---------------------------------------------------------

async fn capacity(app: &TestApp, query: &str) -> Reply {
    app.call("GET", &format!("/v1/pools/{query}"), Some(ADMIN), None)
        .await
}

#[tokio::test]
async fn the_capacity_answer_counts_requests_refusals_and_the_peak() {
    let app = TestApp::new().await;
    // Four visitors on the 3 numbers of "small": the fourth is refused.
    for s in 0..4 {
        app.allocate("small", &format!("s{s}")).await;
    }
    // A sticky re-ask is not a new request.
    app.allocate("small", "s0").await;
    let r = capacity(&app, "small/capacity").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let j = &r.json;
    assert_eq!(j["pool"], "small");
    assert_eq!(j["size"], 3);
    assert_eq!(j["blocking_target"], 0.01);
    let h = &j["last_hour"];
    assert_eq!(h["requests"], 4);
    assert_eq!(h["granted"], 3);
    assert_eq!(h["refused"], 1);
    assert_eq!(h["shared_code"], 0);
    assert_eq!(h["peak_in_use"], 3);
    // Nothing ended yet: held for the ttl (15 min) plus the quarantine (10 min).
    assert_eq!(h["holding_secs"], 1500.0);
    // 4 requests in the hour's window so far, each holding a number 25 minutes.
    let window = app.clock.now().as_millis() - parse_ms(&h["from"]);
    let expected = 4.0 / (window as f64 / 1000.0) * 1500.0;
    let got = h["offered_erlangs"].as_f64().unwrap();
    assert!((got - expected).abs() < 0.002, "{got} vs {expected}");
    assert_eq!(j["busiest_hour"]["requests"], 4);
    let recommended = j["recommended_size"].as_u64().unwrap();
    assert_eq!(recommended, servers_for(got, 0.01));
    // A looser target needs no more numbers.
    let loose = capacity(&app, "small/capacity?blocking=0.2").await;
    assert_eq!(loose.status, 200, "{}", loose.text);
    assert!(loose.json["recommended_size"].as_u64().unwrap() <= recommended);
    assert_eq!(loose.json["blocking_target"], 0.2);
    // A percentage reads too (`%` escaped in a URL).
    let percent = capacity(&app, "small/capacity?blocking=20%25").await;
    assert_eq!(percent.json["blocking_target"], 0.2, "{}", percent.text);

    // The levers: none of these leases has had a call, and grace is 5 of quarantine's 10 min.
    app.advance(Duration::from_secs(16 * 60)).await;
    let r = capacity(&app, "small/capacity").await;
    let levers = &r.json["levers"];
    assert_eq!(levers["click_to_reveal"]["never_called_share"], 1.0);
    assert_eq!(levers["click_to_reveal"]["recommended_size"], 0);
    assert_eq!(levers["shorter_quarantine"]["quarantine_secs"], 300);
    assert_eq!(levers["cheapest"], "click_to_reveal");
    // The leases lived their 15 minutes.
    assert_eq!(r.json["last_hour"]["lifetime_secs"], 900.0);

    // `GET /v1/pools` shows the same recommendation.
    let pools = app.call("GET", "/v1/pools", Some(ADMIN), None).await;
    let small = pools.json["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "small")
        .unwrap()
        .clone();
    assert_eq!(small["recommended_size"], r.json["recommended_size"]);
    // And the gauges.
    let metrics = app.call("GET", "/metrics", None, None).await.text;
    let line = format!(
        "leaseline_pool_recommended_size{{pool=\"small\"}} {}",
        r.json["recommended_size"]
    );
    assert!(metrics.contains(&line), "{line} not in the metrics");
    assert!(
        metrics.contains("leaseline_pool_offered_erlangs{pool=\"small\",window=\"busiest_hour\"}")
    );
}

fn parse_ms(v: &serde_json::Value) -> u64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis() as u64
}

#[tokio::test]
async fn traffic_counts_survive_a_restart_and_the_busiest_hour_is_remembered() {
    let app = TestApp::new().await;
    for s in 0..5 {
        app.allocate("small", &format!("s{s}")).await;
    }
    // The tick writes what changed; then a restart.
    app.advance(Duration::from_secs(1)).await;
    let before = capacity(&app, "small/capacity").await.json;
    let app = app.restart().await;
    let after = capacity(&app, "small/capacity").await.json;
    assert_eq!(after["last_hour"]["requests"], 5);
    assert_eq!(after["last_hour"]["refused"], 2);
    assert_eq!(after["recommended_size"], before["recommended_size"]);

    // Two days later the burst is the busiest hour still, the last hour is quiet.
    app.advance(Duration::from_secs(2 * 86_400)).await;
    app.allocate("small", "later").await;
    let r = capacity(&app, "small/capacity").await.json;
    assert_eq!(r["last_hour"]["requests"], 1);
    assert_eq!(r["busiest_hour"]["requests"], 5);
    assert_eq!(r["busiest_hour"]["refused"], 2);
    assert_eq!(r["recommended_size"], before["recommended_size"]);
    // And another restart keeps it (after the tick writes the new bucket), from a snapshot
    // this time (a clean shutdown writes one).
    app.advance(Duration::from_secs(1)).await;
    app.state.service.shutdown().unwrap();
    let app = app.restart().await;
    let again = capacity(&app, "small/capacity").await.json;
    assert_eq!(again["busiest_hour"], r["busiest_hour"]);
    assert_eq!(again["last_hour"]["requests"], 1);

    // Eight days on, the week has forgotten the burst.
    app.advance(Duration::from_secs(8 * 86_400)).await;
    let r = capacity(&app, "small/capacity").await.json;
    assert_eq!(r["busiest_hour"]["requests"], 0);
    assert_eq!(r["recommended_size"], 0);
}

#[tokio::test]
async fn shared_codes_are_counted_as_blocked_requests() {
    let app = TestApp::with_config(|d| {
        format!(
            "{}\n[[pool]]\nname = \"sh\"\nnumbers = [\"+41900100100\"]\non_exhausted = \"shared\"\nshared_number = \"+41900199999\"\n",
            config_text(d, "")
        )
    })
    .await;
    for s in 0..3 {
        assert_eq!(app.allocate("sh", &format!("s{s}")).await.status, 201);
    }
    let r = capacity(&app, "sh/capacity").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let h = &r.json["last_hour"];
    assert_eq!(
        (h["granted"].as_u64(), h["shared_code"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(h["requests"], 3);
}

#[tokio::test]
async fn bad_blocking_values_unknown_pools_and_wrong_keys_are_problems() {
    let app = TestApp::new().await;
    for bad in [
        "0", "1", "0.0", "1.0", "-0.01", "100%25", "abc", "NaN", "inf", "1e-2", "", "0x1", "2",
        "0.01.0",
    ] {
        let r = capacity(&app, &format!("small/capacity?blocking={bad}")).await;
        r.assert_problem(422, "blocking");
    }
    capacity(&app, "nope/capacity")
        .await
        .assert_problem(404, "nope");
    let r = app
        .call("GET", "/v1/pools/small/capacity", None, None)
        .await;
    r.assert_problem(401, "admin");
    let r = app
        .call("GET", "/v1/pools/small/capacity", Some(SITE), None)
        .await;
    r.assert_problem(403, "admin");
    let r = app
        .call("POST", "/v1/pools/small/capacity", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 405);
    // A name no pool could have, and one with characters a path carries escaped.
    let long = "x".repeat(2000);
    capacity(&app, &format!("{long}/capacity"))
        .await
        .assert_problem(404, "no pool");
    capacity(&app, "%C3%A9t%C3%A9/capacity")
        .await
        .assert_problem(404, "été");
}

#[tokio::test]
async fn an_admin_key_scoped_to_other_pools_is_refused() {
    const SCOPED: &str = "scoped-admin-key";
    let app = TestApp::with_config(|d| {
        format!(
            "{}\n[[key]]\nname = \"ch-admin\"\nrole = \"admin\"\nsha256 = \"{}\"\npools = [\"ch\"]\n",
            config_text(d, ""),
            sha(SCOPED)
        )
    })
    .await;
    let r = app
        .call("GET", "/v1/pools/small/capacity", Some(SCOPED), None)
        .await;
    r.assert_problem(403, "small");
    let r = app
        .call("GET", "/v1/pools/ch/capacity", Some(SCOPED), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn a_ticketing_pool_has_no_capacity_answer() {
    let app = TestApp::with_config(|d| {
        format!(
            "{}\n[[pool]]\nname = \"tix\"\nnumbers = [\"+33899200000\"]\nmode = \"ticketing\"\ncalls_required = 1\n",
            config_text(d, "")
        )
    })
    .await;
    capacity(&app, "tix/capacity")
        .await
        .assert_problem(422, "access codes");
    let pools = app.call("GET", "/v1/pools", Some(ADMIN), None).await;
    let tix = pools.json["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tix")
        .unwrap()
        .clone();
    assert!(tix["recommended_size"].is_null(), "{tix}");
}

#[test]
fn the_plan_command_sizes_a_pool_offline_and_refuses_nonsense() {
    let plan = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_leaseline"))
            .arg("plan")
            .args(args)
            .output()
            .unwrap()
    };
    let out = plan(&["--rate", "120/min", "--ttl", "15m", "--quarantine", "10m"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("offered load: 3000.0 Erlangs"), "{text}");
    let needed = servers_for(3000.0, 0.01);
    assert!(
        text.contains(&format!("numbers needed for 1% blocking: {needed}\n")),
        "{text}"
    );
    let out = plan(&[
        "--rate",
        "1/min",
        "--ttl",
        "6m",
        "--quarantine",
        "4m",
        "--blocking",
        "0.01",
        "--numbers",
        "18",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    // 10 Erlangs: the table's 18 numbers, which block 0.714%.
    assert!(
        text.contains("numbers needed for 1% blocking: 18\n"),
        "{text}"
    );
    assert!(
        text.contains("with 18 numbers: 0.714% of requests find none"),
        "{text}"
    );
    for bad in [
        &["--rate", "lots", "--ttl", "15m", "--quarantine", "10m"][..],
        &[
            "--rate",
            "2/s",
            "--ttl",
            "15m",
            "--quarantine",
            "10m",
            "--blocking",
            "150%",
        ],
        &["--rate", "2/s", "--ttl", "soon", "--quarantine", "10m"],
        &["--rate", "1000000/s", "--ttl", "1d", "--quarantine", "0s"],
    ] {
        let out = plan(bad);
        assert!(!out.status.success(), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error"),
            "{bad:?}"
        );
    }
}

//! What the repository ships for installing Leaseline: the systemd unit (checked by
//! `systemd-analyze verify`, which scripts/test.sh installs) and the Dockerfile (built only where
//! a Docker daemon answers and LEASELINE_DOCKER=1 asks for it: the suite does not prove it).

mod common;

use std::process::Command;

use common::{external, repo};

fn unit() -> String {
    std::fs::read_to_string(repo("packaging/leaseline.service")).unwrap()
}

/// The values of `key=` lines of the unit, in order.
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_systemd_unit_runs_as_its_own_user_with_hardening_reload_and_state_directory() {
    let unit = unit();
    let one = |key: &str| {
        let v = values(&unit, key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("User"), "leaseline");
    assert_eq!(one("StateDirectory"), "leaseline");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("ExecStart"), "/usr/local/bin/leaseline serve");
    assert_eq!(
        one("Environment"),
        "LEASELINE_CONFIG=/etc/leaseline/pool.toml"
    );
    // An invalid config exits 78 (tests/cli.rs): no restart loop on it.
    assert_eq!(one("RestartPreventExitStatus"), "78");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    // The open-file limit is raised at start-up: setrlimit must not be filtered out.
    for filter in values(&unit, "SystemCallFilter") {
        assert!(!filter.contains("@resources"), "{filter}");
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(analyze) = external("systemd-analyze") else {
        return;
    };
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("leaseline.service");
    std::fs::write(
        &copy,
        unit().replace("/usr/local/bin/leaseline", env!("CARGO_BIN_EXE_leaseline")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warnings (an unknown or misplaced key) exit 0 too: none may be printed.
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_with_a_data_volume() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let from: Vec<_> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "multi-stage: {from:?}");
    assert!(from[0].ends_with(" AS build"), "{from:?}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("RUN cargo build --release --locked")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("COPY --from=build ") && l.contains("target/release/leaseline")));
    let user = lines.iter().rev().find_map(|l| l.strip_prefix("USER "));
    assert_eq!(user, Some("leaseline"), "the last USER is not root");
    assert!(lines.contains(&"VOLUME /var/lib/leaseline"), "{text}");
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == "target/"),
        "the build context skips target/"
    );

    // Built and run only on request, where a Docker daemon answers (not in scripts/test.sh:
    // a release build inside a container takes long on a small machine).
    if std::env::var("LEASELINE_DOCKER").as_deref() != Ok("1") {
        eprintln!(
            "NOT BUILT: set LEASELINE_DOCKER=1 (with a Docker daemon) to build and run the image"
        );
        return;
    }
    let built = Command::new("docker")
        .args(["build", "-t", "leaseline-test", "."])
        .current_dir(repo(""))
        .status()
        .unwrap();
    assert!(built.success());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pool.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(repo("pool.toml"))
            .unwrap()
            .replace("127.0.0.1:8080", "0.0.0.0:8080")
            .replace("data_dir = \"data\"", "data_dir = \"/var/lib/leaseline\""),
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["run", "--rm", "-v"])
        .arg(format!("{}:/etc/leaseline/pool.toml:ro", config.display()))
        .args(["leaseline-test", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("data in /var/lib/leaseline"), "{stdout}");
}

/// The cluster's routing example sends traffic only to the node whose `/readyz` is 200 (the
/// leader; a standby answers 503), checked often enough for a failover of a few seconds.
#[test]
fn the_cluster_load_balancer_example_routes_to_the_ready_node_only() {
    let cfg = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/haproxy-cluster.cfg"),
    )
    .unwrap();
    let lines: Vec<&str> = cfg.lines().map(str::trim).collect();
    assert!(lines.contains(&"option httpchk GET /readyz"));
    assert!(lines.contains(&"http-check expect status 200"));
    assert!(lines.contains(&"default-server inter 500ms fall 2 rise 1"));
    let servers = lines.iter().filter(|l| l.starts_with("server ")).count();
    assert!(servers >= 2, "a cluster has two nodes or more");
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("server "))
            .all(|l| l.ends_with(" check")),
        "every node is health-checked"
    );
}

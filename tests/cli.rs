//! The command line as an operator meets it, through the real binary: where the config comes
//! from, what bare `leaseline` does, help, the start-up log, colours, fatal errors, exit codes.

mod common;

use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{binary_config, free_port, repo, Server, ADMIN};
use serde_json::Value;

fn leaseline() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leaseline"));
    // The variables under test start unset, whatever the environment running the tests.
    cmd.env_remove("LEASELINE_CONFIG")
        .env_remove("NO_COLOR")
        .env_remove("LEASELINE_ADMIN_KEY");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config serving on a port known in advance, so `export` can find it from `listen`.
fn config_on_a_port(dir: &Path) -> PathBuf {
    let path = binary_config(
        dir,
        "[[pool]]\nname = \"p\"\nnumbers = [\"+33899100000\"]\n",
    );
    let port = free_port();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A config whose data_dir is a file: start-up fails after logging is set up.
fn config_that_fails_at_start(dir: &Path, log_format: &str) -> PathBuf {
    std::fs::write(dir.join("not-a-dir"), "").unwrap();
    let path = dir.join("pool.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"not-a-dir/data\"\nlog_format = \"{log_format}\"\n\n\
             [[pool]]\nname = \"p\"\nnumbers = [\"+33899100000\"]\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn leaseline_config_names_the_file_for_every_subcommand_and_the_option_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_on_a_port(dir.path());
    // Run from a folder with no pool.toml: only the variable can point at the file.
    let elsewhere = tempfile::tempdir().unwrap();

    let out = run(leaseline()
        .arg("check")
        .env("LEASELINE_CONFIG", &config)
        .current_dir(elsewhere.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("{}: OK", config.display())),
        "{}",
        text(&out.stdout)
    );

    // --config beats the variable, before or after the subcommand.
    for (before, after) in [
        (&["check", "--config"][..], None),
        (&["--config"], Some("check")),
    ] {
        let mut cmd = leaseline();
        cmd.args(before)
            .arg(&config)
            .args(after)
            .env("LEASELINE_CONFIG", "/nonexistent/pool.toml")
            .current_dir(elsewhere.path());
        let out = run(&mut cmd);
        assert!(out.status.success(), "{before:?}: {}", text(&out.stderr));
    }

    // Bare `leaseline` serves the file the variable names; `export` finds it there too.
    let mut serve = leaseline();
    serve
        .env("LEASELINE_CONFIG", &config)
        .current_dir(elsewhere.path());
    let server = Server::launch(serve, &config);
    assert_eq!(server.get("/healthz", None).0, 200);
    let out = run(leaseline()
        .args(["export", "calls"])
        .env("LEASELINE_CONFIG", &config)
        .env("LEASELINE_ADMIN_KEY", ADMIN)
        .current_dir(elsewhere.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("call_id,"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(text(&out.stderr).trim(), "exported 0 calls");
}

#[test]
fn leaseline_with_only_a_config_serves_and_logs_its_version_and_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(
        dir.path(),
        "[[pool]]\nname = \"p\"\nnumbers = [\"+33899100000\"]\n",
    );
    let mut cmd = leaseline();
    cmd.arg("--config").arg(&config);
    let server = Server::launch(cmd, &config);
    assert_eq!(server.get("/healthz", None).0, 200);

    let log = server.log.lock().unwrap().clone();
    let start: Value = log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "leaseline starting")
        .unwrap_or_else(|| panic!("no start-up line in {log:#?}"));
    assert_eq!(
        start["fields"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{start}"
    );
    let named = PathBuf::from(start["fields"]["config"].as_str().unwrap());
    assert!(named.is_absolute(), "{start}");
    assert_eq!(
        named.canonicalize().unwrap(),
        config.canonicalize().unwrap()
    );
}

#[test]
fn every_option_of_every_command_has_help() {
    for command in [&[][..], &["serve"], &["check"], &["export", "calls"]] {
        let out = run(leaseline().args(command).arg("--help"));
        assert!(out.status.success(), "{command:?}");
        let help = text(&out.stdout);
        let options = help
            .split_once("Options:\n")
            .unwrap_or_else(|| panic!("{command:?} has no options section: {help}"))
            .1;
        let mut seen = 0;
        for line in options.lines().take_while(|l| !l.is_empty()) {
            let line = line.trim_start();
            assert!(line.starts_with('-'), "{command:?}: {line:?}");
            let (flag, about) = line.split_once("  ").unwrap_or((line, ""));
            assert!(
                !about.trim().is_empty(),
                "{command:?}: {flag} has no help text"
            );
            seen += 1;
        }
        assert!(seen >= 2, "{command:?}: {help}");
        assert!(help.contains("--config <FILE>"), "{command:?}: {help}");
        assert!(help.contains("LEASELINE_CONFIG"), "{command:?}: {help}");
    }
}

#[test]
fn a_fatal_error_is_reported_once_and_exit_statuses_say_what_failed() {
    let dir = tempfile::tempdir().unwrap();

    // A start-up failure after logging began: one line, status 1.
    let config = config_that_fails_at_start(dir.path(), "text");
    let out = run(leaseline().args(["serve", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("cannot create data_dir").count(),
        1,
        "{stderr}"
    );

    // An unreadable or invalid configuration: one line, status 78 (EX_CONFIG), for serve
    // and check alike.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = 42\n").unwrap();
    for (args, file) in [
        (["serve", "--config"], &bad),
        (["check", "--config"], &bad),
        (["check", "--config"], &dir.path().join("missing.toml")),
    ] {
        let out = run(leaseline().args(args).arg(file));
        assert_eq!(out.status.code(), Some(78), "{args:?} {file:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with("error: "), "{stderr}");
        let reports = stderr.lines().filter(|l| l.starts_with("error:")).count();
        assert_eq!(reports, 1, "{stderr}");
    }

    // A mistake on the command line: status 2.
    let out = run(leaseline().arg("--no-such-option"));
    assert_eq!(out.status.code(), Some(2));
    let out = run(leaseline().args(["check", "--accept-wall-clock"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(leaseline().args(["--accept-wall-clock", "check"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // The README documents each status.
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let section = readme
        .split_once("## Command line")
        .unwrap()
        .1
        .split_once("\n## ")
        .unwrap()
        .0;
    for status in ["`0`", "`1`", "`2`", "`78`"] {
        assert!(
            section.contains(status),
            "README lacks exit status {status}"
        );
    }
}

/// Runs the binary with stderr on a new pseudo-terminal; returns what it wrote there.
fn on_a_terminal(cmd: &mut Command) -> String {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new descriptors into the integers it is given.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(slave)
        .spawn()
        .unwrap();
    // Drop the command's copy of the terminal's end, so reading ends (EIO) once the child
    // has exited.
    cmd.stderr(Stdio::null());
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });
    child.wait().unwrap();
    text(&reader.join().unwrap())
}

#[test]
fn colours_only_on_a_terminal_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_that_fails_at_start(dir.path(), "text");
    let serve = || {
        let mut cmd = leaseline();
        cmd.args(["serve", "--config"]).arg(&config);
        cmd
    };

    let piped = text(&run(&mut serve()).stderr);
    assert!(piped.contains("cannot create data_dir"), "{piped}");
    assert!(!piped.contains('\x1b'), "colours on a pipe: {piped:?}");

    let terminal = on_a_terminal(&mut serve());
    assert!(terminal.contains("cannot create data_dir"), "{terminal}");
    assert!(
        terminal.contains("\x1b["),
        "no colours on a terminal: {terminal:?}"
    );

    let mut cmd = serve();
    cmd.env("NO_COLOR", "1");
    let plain = on_a_terminal(&mut cmd);
    assert!(plain.contains("cannot create data_dir"), "{plain}");
    assert!(
        !plain.contains('\x1b'),
        "colours despite NO_COLOR: {plain:?}"
    );
}

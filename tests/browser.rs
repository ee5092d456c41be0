//! The drop-in script and the back-office in a real browser: headless Chromium (Debian's
//! package) driven by playwright-core (npm), against the real binary on 127.0.0.1. The
//! scenarios live in `tests/browser/embed.test.mjs` and `tests/browser/admin.test.mjs`; this
//! test starts Leaseline and runs them. Screenshots of the demo page and the back-office are
//! left in `artifacts/demo.png` and `artifacts/admin.png` (not committed; `docs/admin.png` is
//! a copy of the latter for the README).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const PAGE: &str = "browser-page-key";

#[test]
fn the_embed_script_works_in_headless_chromium() {
    let ready = Path::new("/usr/bin/chromium").is_file()
        && repo("tests/browser/node_modules/playwright-core").is_dir()
        && Command::new("node").arg("--version").output().is_ok();
    if !ready {
        assert!(
            std::env::var("LEASELINE_REQUIRE_EXTERNAL").is_err(),
            "chromium, node or playwright-core is missing; scripts/test.sh installs them"
        );
        eprintln!("SKIPPED: chromium / playwright-core not installed (run scripts/test.sh)");
        return;
    }
    let (site, evil, dead) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pool.toml");
    // The demo is served by Leaseline itself, so its own origin is allowed too; the port is
    // only known once it listens, hence a fixed free port here.
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data}"
log_format = "json"

[[pool]]
name = "fr"
numbers = ["+33899100000..=+33899100099"]
fallback_target = "+33100000000"
tariff = {{ per_call = "2.99", currency = "EUR" }}

[[pool]]
name = "ch"
numbers = ["+41900100000..=+41900100009"]
tariff = {{ per_minute = "3.13", currency = "CHF", increment = "20s" }}

[[pool]]
name = "tiny"
numbers = ["+33899200000"]
on_exhausted = "shared"
shared_number = "+33899199999"
page_share = 1.0             # pages may take its one number, so the next page sees a code

[[pool]]
name = "brief"
numbers = ["+33899300000..=+33899300009"]
page_max_ttl = "2s"          # a page's lease ends while the tab is open

[[key]]
name = "site"
role = "site"
sha256 = "{site_key}"

[[key]]
name = "page"
role = "publishable"
tenant = "site"
sha256 = "{page_key}"
origins = ["http://127.0.0.1:{site}", "http://127.0.0.1:{port}"]

[[key]]
name = "tel"
role = "telephony"
sha256 = "{tel_key}"

[[key]]
name = "admin"
role = "admin"
sha256 = "{admin_key}"

[demo]
enabled = true
key = "{PAGE}"
pool = "fr"
"#,
            data = dir.path().join("data").display(),
            site_key = sha(SITE),
            page_key = sha(PAGE),
            tel_key = sha(TELEPHONY),
            admin_key = sha(ADMIN),
        ),
    )
    .unwrap();
    let server = Server::start(&config);
    let out = Command::new("node")
        .args([
            "--test",
            "--test-reporter=spec",
            "embed.test.mjs",
            "admin.test.mjs",
        ])
        .current_dir(repo("tests/browser"))
        .env("LEASELINE_URL", format!("http://{}", server.addr))
        .env("PAGE_KEY", PAGE)
        .env("TEL_KEY", TELEPHONY)
        .env("SITE_KEY", SITE)
        .env("ADMIN_KEY", ADMIN)
        .env("SITE_PORT", site.to_string())
        .env("EVIL_PORT", evil.to_string())
        .env("DEAD_PORT", dead.to_string())
        .env("ARTIFACTS", repo("artifacts"))
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "browser scenarios failed:\n{report}");
    assert!(
        repo("artifacts/demo.png").is_file(),
        "no screenshot of the demo"
    );
    assert!(
        repo("artifacts/admin.png").is_file(),
        "no screenshot of the back-office"
    );
}

//! A real full disk: sled on a small tmpfs that fills up, then gets space back. The service
//! answers 503 while it cannot write, and serves again by itself once space is freed, with
//! every acknowledged lease intact. Needs permission to mount a tmpfs (root, as in CI).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap().keep();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("LEASELINE_REQUIRE_EXTERNAL").is_err(),
                "cannot mount a tmpfs (the test needs root)"
            );
            eprintln!("SKIPPED: cannot mount a tmpfs here");
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the file system holding `path` with a file there, until it is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn config(data: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncache_capacity_mb = 8\n\n\
         [[pool]]\nname = \"p\"\nnumbers = [\"+33899100000..=+33899199999\"]\nmax_live_per_session = 0\n\n{}",
        data.display(),
        standard_keys()
    )
}

#[tokio::test]
async fn a_real_full_disk_answers_503_then_heals_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount("24m") else {
        return;
    };
    let dir = tempfile::tempdir_in(&fs.0).unwrap();
    let app = TestApp::in_dir(dir, config).await;
    let filler = fs.0.join("filler");
    fill(&filler);

    // Allocate until the disk refuses; every 201 is an acknowledged lease.
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..20_000 {
        let r = app.allocate("p", &format!("s{i}")).await;
        match r.status.as_u16() {
            201 => acknowledged.push(r.json["lease_id"].as_str().unwrap().to_owned()),
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("a full disk refuses writes");
    refused.assert_problem(503, "durable");
    assert_eq!(app.call("GET", "/readyz", None, None).await.status, 503);
    assert!(
        app.state.service.tick().await.is_err(),
        "still full: no healing yet"
    );

    // Space comes back: the next ticks heal without a restart.
    std::fs::remove_file(&filler).unwrap();
    let mut healed = false;
    for _ in 0..10 {
        app.clock.advance(Duration::from_secs(1));
        let _ = app.state.service.tick().await;
        if app.call("GET", "/readyz", None, None).await.status == 200 {
            healed = true;
            break;
        }
    }
    assert!(healed, "ready again once the disk has space");
    assert_eq!(app.allocate("p", "after").await.status, 201);
    for id in &acknowledged {
        let r = app
            .call("GET", &format!("/v1/leases/{id}"), None, None)
            .await;
        assert_eq!(
            r.json["state"], "active",
            "acknowledged lease {id} kept: {}",
            r.text
        );
    }

    // And all of it survives a restart.
    let app = app.restart().await;
    let id = acknowledged.last().unwrap();
    let r = app
        .call("GET", &format!("/v1/leases/{id}"), None, None)
        .await;
    assert_eq!(r.json["state"], "active", "{}", r.text);
}

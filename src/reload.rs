//! Runtime reload: `SIGHUP` or `POST /v1/admin/reload` re-reads the configuration file. New
//! pools, numbers and keys take effect at once; a removed number finishes its lease and
//! quarantine and is never leased again, and a pool goes once nothing holds its numbers (the
//! core's [`Directory::evolve`]); a file that does not check out, or a change the state
//! forbids, is refused with the reason and the running configuration is kept. `[server]` settings (addresses, folders, timeouts) and
//! `[[webhook]]` endpoints (their lanes and threads are made at start) need a restart: a
//! reload that changes them says so and leaves them as they are.
//!
//! One task owns the reload, so reloads never overlap; the HTTP handler asks it through a
//! channel (`http::reload::Handle`: no reference cycle between the router and what rebuilds
//! it, and no import circle: this module uses the edge, the edge knows only the channel).
//!
//! [`Directory::evolve`]: crate::core::Directory::evolve

use std::path::PathBuf;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::http::reload::{Ask, PoolNumbers, Report};
use crate::http::{router, AppState};
use crate::server::Routes;

pub struct Reloader {
    path: PathBuf,
    current: Config,
    state: AppState,
    routes: Routes,
}

impl Reloader {
    /// Reloads of `path` for the service behind `state`, whose router `routes` serves; `current`
    /// is the configuration it runs.
    pub fn new(path: PathBuf, current: Config, state: AppState, routes: Routes) -> Self {
        Reloader {
            path,
            current,
            state,
            routes,
        }
    }

    /// Reads the file again and applies it, or keeps everything and says why not.
    pub fn reload(&mut self) -> Result<Report, String> {
        let mut next = Config::load(&self.path).map_err(|e| e.to_string())?;
        // Given on the command line, not in the file.
        next.server.accept_wall_clock = self.current.server.accept_wall_clock;
        let changes = self
            .state
            .service
            .reconfigure(next.pools.iter().map(|p| p.spec.clone()).collect())
            .map_err(|e| e.to_string())?;
        let mut needs_restart = Vec::new();
        if format!("{:?}", next.server) != format!("{:?}", self.current.server) {
            needs_restart.push("server");
            // Keep what runs, so that the next reload compares against it too.
            next.server = self.current.server.clone();
        }
        // An endpoint's url, secret and tenant live in its lane, built at start: a changed
        // one must not read as applied (an operator revoking a leaked secret or narrowing a
        // tenant would believe it done while every event still went out the old way).
        if format!("{:?}", next.webhooks) != format!("{:?}", self.current.webhooks) {
            needs_restart.push("webhook");
            next.webhooks = self.current.webhooks.clone();
        }
        let limits_changed = format!("{:?}", next.limits) != format!("{:?}", self.current.limits);
        let state = self.state.rebuilt(&next, limits_changed);
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = router(state.clone());
        self.state = state;
        self.current = next;
        Ok(Report {
            pools_added: changes.pools_added,
            pools_removed: changes.pools_removed,
            numbers: (changes.numbers.into_iter())
                .map(|(pool, added, retired)| PoolNumbers {
                    pool,
                    added,
                    retired,
                })
                .collect(),
            keys: self.current.keys.len(),
            needs_restart,
        })
    }

    /// Serves reloads until `stop` turns true: on `SIGHUP`, and when the edge asks.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let (tx, mut asks) = mpsc::channel::<Ask>(4);
        self.state.reload.connect(tx);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let reply = tokio::select! {
                _ = stop.changed() => return,
                Some(_) = hangup => None,
                Some(reply) = asks.recv() => Some(reply),
            };
            let outcome = self.reload_logged(if reply.is_some() { "api" } else { "sighup" });
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    }

    fn reload_logged(&mut self, by: &'static str) -> Result<Report, String> {
        let outcome = self.reload();
        let metrics = &self.state.metrics;
        match &outcome {
            Ok(r) => {
                metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(
                    by,
                    file = %self.path.display(),
                    pools_added = ?r.pools_added,
                    pools_removed = ?r.pools_removed,
                    numbers = ?r.numbers.iter().map(|n| (&n.pool, n.added, n.retired)).collect::<Vec<_>>(),
                    keys = r.keys,
                    "configuration reloaded"
                );
                if !r.needs_restart.is_empty() {
                    tracing::warn!(
                        sections = ?r.needs_restart,
                        "changed settings that take effect only after a restart: the running ones are kept"
                    );
                }
            }
            Err(why) => {
                metrics.reloads.with_label_values(&["refused"]).inc();
                tracing::error!(
                    by,
                    file = %self.path.display(),
                    reason = %why,
                    "configuration reload refused: the running configuration is kept"
                );
            }
        }
        outcome
    }
}

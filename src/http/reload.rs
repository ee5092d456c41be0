//! `POST /v1/admin/reload`, and what the edge keeps to ask for one: a channel to the reload
//! task (`crate::reload`), which answers with a [`Report`]. The edge knows the channel only, so
//! the task may rebuild the edge without the two importing each other.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::auth::{Admin, Need};
use super::error::ApiError;
use super::AppState;

/// What a reload did, as `POST /v1/admin/reload` answers it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub numbers: Vec<PoolNumbers>,
    pub keys: usize,
    /// Sections whose changes wait for a restart.
    pub needs_restart: Vec<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PoolNumbers {
    pub pool: String,
    pub added: usize,
    pub retired: usize,
}

/// A reload asked for, and where its outcome goes.
pub type Ask = oneshot::Sender<Result<Report, String>>;

/// The handle the HTTP edge keeps: asks the reload task, if there is one.
#[derive(Clone, Default)]
pub struct Handle(Arc<std::sync::OnceLock<mpsc::Sender<Ask>>>);

impl Handle {
    /// Sends reloads asked from now on to `tx` (the reload task, once it runs).
    pub fn connect(&self, tx: mpsc::Sender<Ask>) {
        let _ = self.0.set(tx);
    }

    /// Asks for a reload and waits for its outcome; `None` when this process has no file to
    /// reload from (embedded in tests).
    pub async fn reload(&self) -> Option<Result<Report, String>> {
        let tx = self.0.get()?;
        let (reply, outcome) = oneshot::channel();
        tx.send(reply).await.ok()?;
        outcome.await.ok()
    }
}

/// Re-reads the configuration file (as `SIGHUP` does) and says what changed; a file that does
/// not check out, or a change the state forbids, is refused (422) and nothing changes. Only an
/// admin key for every pool may: a reload changes every pool and key.
pub async fn reload(
    State(s): State<AppState>,
    Need(key, _): Need<Admin>,
) -> Result<Json<Report>, ApiError> {
    if key.pools.is_some() {
        return Err(ApiError::forbidden(
            "a reload changes every pool and key: it needs an admin key not limited to pools",
        ));
    }
    match s.reload.reload().await {
        Some(Ok(report)) => Ok(Json(report)),
        Some(Err(why)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload-refused",
            format!("{why}; the running configuration is kept"),
        )),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload-unavailable",
            "this process was not started from a configuration file it can read again",
        )),
    }
}

//! Operator endpoints: pool counts, liveness, readiness, Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::auth::{check_pool, Admin, Need};
use super::error::ApiError;
use super::wire::{PoolBody, PoolsBody};
use super::AppState;

/// Every pool's counts; an admin key scoped with `pools` sees only those.
pub async fn pools(
    State(s): State<AppState>,
    Need(key, _): Need<Admin>,
) -> Result<Json<PoolsBody>, ApiError> {
    let pools = s.service.pools()?;
    Ok(Json(PoolsBody {
        pools: pools
            .iter()
            .filter(|p| check_pool(&key, &p.name).is_ok())
            .map(PoolBody::from)
            .collect(),
    }))
}

/// Re-reads the configuration file (as `SIGHUP` does) and says what changed; a file that does
/// not check out, or a change the state forbids, is refused (422) and nothing changes. Only an
/// admin key for every pool may: a reload changes every pool and key.
pub async fn reload(
    State(s): State<AppState>,
    Need(key, _): Need<Admin>,
) -> Result<Json<crate::reload::Report>, ApiError> {
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

pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

pub async fn readyz(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    s.service
        .ready()
        .map_err(|why| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", why))?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    s.service.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

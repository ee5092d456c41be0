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

/// The OpenAPI 3.1 description of every endpoint: `docs/openapi.json`, kept by hand and held
/// to the router, to the README's examples and to the OpenAPI schema by `tests/openapi.rs`.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../docs/openapi.json"),
    )
}

//! Operator endpoints: pool counts, liveness, readiness, Prometheus metrics.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::auth::{check_pool, Admin, Need};
use super::error::ApiError;
use super::wire::{CapacityBody, NumberBody, NumbersBody, NumbersParams, PoolBody, PoolsBody};
use super::AppState;
use crate::core::DEFAULT_BLOCKING;
use crate::plan::parse_blocking;

/// Every pool's counts; an admin key scoped with `pools` sees only those.
pub async fn pools(
    State(s): State<AppState>,
    Need(key, _): Need<Admin>,
) -> Result<Json<PoolsBody>, ApiError> {
    let pools = s.service.pools()?;
    let dir = s.service.directory();
    Ok(Json(PoolsBody {
        pools: pools
            .iter()
            .filter(|p| check_pool(&key, &p.name).is_ok())
            .filter_map(|p| Some(PoolBody::new(p, dir.spec(dir.id(&p.name)?))))
            .collect(),
    }))
}

#[derive(serde::Deserialize)]
pub struct CapacityParams {
    blocking: Option<String>,
}

/// What a pool's traffic says of its size: load now and at the busiest hour of the week, the
/// Erlang-B recommendation for `blocking` (default 0.01), and the levers besides buying.
pub async fn capacity(
    State(s): State<AppState>,
    Need(key, _): Need<Admin>,
    Path(name): Path<String>,
    params: Result<Query<CapacityParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CapacityBody>, ApiError> {
    let Query(p) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-query", e.body_text()))?;
    let pool = s
        .service
        .pool_id(&name)
        .ok_or_else(|| ApiError::unknown_pool(&name))?;
    check_pool(&key, &name)?;
    let blocking = match p.blocking.as_deref() {
        None => DEFAULT_BLOCKING,
        Some(b) => parse_blocking(b).map_err(|e| ApiError::invalid(format!("blocking: {e}")))?,
    };
    let c = s.service.capacity(pool, blocking)?;
    Ok(Json(CapacityBody::new(name, &c)))
}

const MAX_NUMBERS: usize = 1000;

/// A page of a pool's numbers (in the configured order) with their state and the lease
/// holding each: `offset` (default 0), `limit` 1–1000 (default 100).
pub async fn numbers(
    State(s): State<AppState>,
    Need(key, _): Need<Admin>,
    Path(pool): Path<String>,
    params: Result<Query<NumbersParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<NumbersBody>, ApiError> {
    let Query(p) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-query", e.body_text()))?;
    let dir = s.service.directory();
    let id = dir.id(&pool).ok_or_else(|| ApiError::unknown_pool(&pool))?;
    check_pool(&key, &pool)?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=MAX_NUMBERS).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit: must be 1 to {MAX_NUMBERS}"
        )));
    }
    let offset = p.offset.unwrap_or(0);
    let numbers = s.service.numbers(id, offset, limit)?;
    Ok(Json(NumbersBody {
        size: dir.spec(id).numbers.len(),
        pool,
        offset,
        numbers: numbers.iter().map(NumberBody::from).collect(),
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

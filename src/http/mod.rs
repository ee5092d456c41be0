//! The HTTP edge: the axum router of the v1 contract, request logging and metrics.
//! Handlers parse and authorise, call the [`Service`], and turn its answer into JSON.

mod auth;
mod calls;
mod error;
mod events;
mod json;
mod leases;
mod ops;
mod site;
mod tickets;
mod twilio;
mod wire;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rand::Rng;
use tower_http::catch_panic::CatchPanicLayer;

pub use auth::Keys;
pub use error::ApiError;
pub use wire::rfc3339;

use crate::metrics::Metrics;
use crate::service::Service;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub keys: Arc<Keys>,
    pub metrics: Arc<Metrics>,
    pub twilio: Option<Arc<crate::config::TwilioConfig>>,
    pub limits: Arc<tickets::RedeemLimits>,
    pub pages: Arc<site::PageLimits>,
    /// Page origins allowed by publishable keys: these get CORS headers.
    pub origins: Arc<HashSet<String>>,
    /// Proxies whose `X-Forwarded-For` names the client (`[server] trusted_proxies`).
    pub trusted_proxies: Arc<Vec<crate::limits::Cidr>>,
    pub demo: Option<Arc<crate::config::DemoConfig>>,
}

impl AppState {
    /// The HTTP edge's state around a built service.
    pub fn new(
        service: Arc<Service>,
        metrics: Arc<Metrics>,
        config: &crate::config::Config,
    ) -> Self {
        AppState {
            service,
            keys: Arc::new(Keys::new(&config.keys)),
            metrics,
            twilio: config.twilio.clone().map(Arc::new),
            limits: Arc::new(tickets::RedeemLimits::new(&config.limits)),
            pages: Arc::new(site::PageLimits::new(&config.limits, &config.pools)),
            origins: Arc::new(
                config
                    .keys
                    .iter()
                    .flat_map(|k| k.origins.iter().cloned())
                    .collect(),
            ),
            demo: config.demo.clone().map(Arc::new),
            trusted_proxies: Arc::new(config.server.trusted_proxies.clone()),
        }
    }
}

impl AppState {
    /// Refuses a request over the abuse limit `limit` (counted in the metrics) with a 429.
    pub fn limited(
        &self,
        limit: crate::limits::Limit,
        kind: &'static str,
        retry_after: u64,
        detail: String,
    ) -> ApiError {
        self.metrics
            .limited
            .with_label_values(&[limit.as_str()])
            .inc();
        ApiError::too_many(kind, retry_after, detail)
    }
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/leases", post(leases::create))
        .route("/v1/leases/{id}", get(leases::show).delete(leases::release))
        .route("/v1/leases/{id}/renew", post(leases::renew))
        .route("/v1/leases/{id}/redeem", post(leases::redeem))
        .route("/v1/leases/{id}/events", get(events::stream))
        .route("/v1/calls", post(calls::event).get(calls::journal))
        .route("/v1/attribution", get(calls::lookup))
        .route(
            "/v1/listings/{listing}",
            axum::routing::put(leases::put_listing).delete(leases::delete_listing),
        )
        .route("/v1/telephony/twilio/voice", post(twilio::voice))
        .route("/v1/telephony/twilio/status", post(twilio::status))
        .route("/v1/tickets/redeem", post(tickets::redeem))
        .route(
            "/v1/passes/{id}",
            get(tickets::show_pass).delete(tickets::revoke_pass),
        )
        .route("/v1/pools", get(ops::pools))
        .route("/embed.js", get(site::embed_js))
        .route("/demo", get(site::demo))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), site::cors))
        .layer(middleware::from_fn(guard))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(json::MAX_BODY))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an internal error occurred; it has been logged",
            )
            .into_response()
        }))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-route",
        "no such endpoint; see the README for the v1 API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this endpoint does not take that method",
    )
}

/// Most headers, and header bytes, a request may carry.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A request (but an event stream) that takes longer is answered 503: a slow client or a
/// stuck disk cannot hold a connection forever.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn guard(req: Request, next: Next) -> Response {
    let h = req.headers();
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if h.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!(
                "at most {MAX_HEADERS} headers and {} KiB of them",
                MAX_HEADER_BYTES / 1024
            ),
        )
        .into_response();
    }
    let streaming = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|m| m.as_str().ends_with("/events"));
    if streaming {
        return next.run(req).await;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; it may or may not have been done: retrying is safe (allocations are sticky per session, calls idempotent by call_id)",
        )
        .into_response(),
    }
}

/// One log line and one histogram sample per request, by matched route (never the raw path,
/// which holds lease ids); echoes or assigns an `X-Request-Id`.
async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().clone();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(
            || format!("{:016x}", rand::thread_rng().gen::<u64>()),
            str::to_owned,
        );
    let mut res = next.run(req).await;
    let status = res.status();
    let elapsed = started.elapsed();
    s.metrics
        .http_duration
        .with_label_values(&[&route, method.as_str(), status.as_str()])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "leaseline::http",
        request_id = %request_id,
        method = %method,
        route = %route,
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

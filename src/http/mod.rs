//! The HTTP edge: the axum router of the v1 contract, request logging and metrics.
//! Handlers parse and authorise, call the [`Service`], and turn its answer into JSON.

mod admin;
mod auth;
mod calls;
mod error;
mod events;
mod json;
mod leases;
mod money;
mod ops;
pub mod reload;
mod site;
mod tickets;
mod twilio;
mod webhooks;
pub(crate) mod wire;

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
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
use crate::telephony::prompts::Voice;

/// What every handler and layer reaches: one `Arc`, so the clones axum makes per request and
/// per layer cost one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Edge>);

impl std::ops::Deref for AppState {
    type Target = Edge;
    fn deref(&self) -> &Edge {
        &self.0
    }
}

/// The HTTP edge's shared state.
pub struct Edge {
    pub service: Arc<Service>,
    pub keys: Arc<Keys>,
    pub metrics: Arc<Metrics>,
    pub twilio: Option<Arc<crate::config::TwilioConfig>>,
    /// Each pool's voice (language and prompts), by name; `[twilio] language`'s for numbers of
    /// no pool.
    pub voices: Arc<(HashMap<String, Voice>, Voice)>,
    pub limits: Arc<tickets::RedeemLimits>,
    pub pages: Arc<site::PageLimits>,
    /// Open event streams per lease and per client address.
    pub streams: Arc<events::StreamLimits>,
    /// Page origins allowed by publishable keys: these get CORS headers.
    pub origins: Arc<HashSet<String>>,
    /// Proxies whose `X-Forwarded-For` names the client (`[server] trusted_proxies`).
    pub trusted_proxies: Arc<Vec<crate::limits::Cidr>>,
    pub demo: Option<Arc<crate::config::DemoConfig>>,
    /// A request (but an event stream) not answered within this gets 408 or 503 (`guard`).
    pub request_timeout: std::time::Duration,
    /// Asks the reload task, when the process runs from a configuration file.
    pub reload: reload::Handle,
}

impl AppState {
    /// The HTTP edge's state around a built service.
    pub fn new(
        service: Arc<Service>,
        metrics: Arc<Metrics>,
        config: &crate::config::Config,
    ) -> Self {
        AppState(Arc::new(Edge {
            service,
            keys: Arc::new(Keys::new(&config.keys)),
            metrics,
            twilio: config.twilio.clone().map(Arc::new),
            voices: Arc::new((
                config
                    .pools
                    .iter()
                    .map(|p| (p.spec.name.clone(), p.voice.clone()))
                    .collect(),
                config
                    .twilio
                    .as_ref()
                    .map(|t| t.voice.clone())
                    .unwrap_or_default(),
            )),
            limits: Arc::new(tickets::RedeemLimits::new(&config.limits)),
            pages: Arc::new(site::PageLimits::new(&config.limits, &config.pools)),
            streams: Arc::new(events::StreamLimits::new(&config.limits)),
            origins: Arc::new(
                config
                    .keys
                    .iter()
                    .flat_map(|k| k.origins.iter().cloned())
                    .collect(),
            ),
            demo: config.demo.clone().map(Arc::new),
            trusted_proxies: Arc::new(config.server.trusted_proxies.clone()),
            request_timeout: config.server.connections.request_timeout,
            reload: reload::Handle::default(),
        }))
    }

    /// The edge for `config` after a reload, around the same service: keys, origins, Twilio, voices
    /// and the pages' limits are `config`'s. The abuse limiters' counts carry over unless
    /// `[limits]` changed; `[server]` settings (proxies, timeouts) are the running ones.
    pub fn rebuilt(&self, config: &crate::config::Config, limits_changed: bool) -> Self {
        let fresh = AppState::new(Arc::clone(&self.service), Arc::clone(&self.metrics), config);
        let keep = !limits_changed;
        AppState(Arc::new(Edge {
            service: Arc::clone(&self.service),
            keys: Arc::clone(&fresh.keys),
            metrics: Arc::clone(&self.metrics),
            twilio: fresh.twilio.clone(),
            limits: Arc::clone(if keep { &self.limits } else { &fresh.limits }),
            pages: Arc::clone(&fresh.pages),
            streams: Arc::clone(if keep { &self.streams } else { &fresh.streams }),
            origins: Arc::clone(&fresh.origins),
            trusted_proxies: Arc::clone(&self.trusted_proxies),
            demo: fresh.demo.clone(),
            voices: Arc::clone(&fresh.voices),
            request_timeout: self.request_timeout,
            reload: self.reload.clone(),
        }))
    }
}

impl AppState {
    /// The voice calls to `called` hear: its pool's.
    pub fn voice_of(&self, called: crate::core::PhoneNumber) -> &Voice {
        let (pools, default) = &*self.voices;
        self.service
            .pool_of_number(called)
            .and_then(|p| pools.get(&p))
            .unwrap_or(default)
    }

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
    with_layers(routes(), state)
}

fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/leases", post(leases::create).get(money::transactions))
        .route("/v1/leases/{id}", get(leases::show).delete(leases::release))
        .route("/v1/leases/{id}/renew", post(leases::renew))
        .route("/v1/leases/{id}/redeem", post(leases::redeem))
        .route("/v1/leases/{id}/refund", post(leases::refund))
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
        .route("/v1/admin/reload", post(reload::reload))
        .route("/v1/pools/{pool}/capacity", get(ops::capacity))
        .route("/v1/webhooks/deliveries", get(webhooks::list))
        .route("/v1/webhooks/deliveries/{id}/retry", post(webhooks::retry))
        .route("/v1/pools/{pool}/numbers", get(ops::numbers))
        .route("/v1/stats", get(money::stats))
        .route("/embed.js", get(site::embed_js))
        .route("/demo", get(site::demo))
        .route("/admin", get(admin::page))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The layers every route gets, from the outside in: `track` sees every answer, panics
/// included (a log line, a metric, an `X-Request-Id`); `problems` turns any error answer not
/// made by [`ApiError`] (axum's own rejections) into problem+json; `CatchPanicLayer` turns a
/// panic into a 500 problem *inside* both, so it is logged and counted like any answer; then
/// the body limit, `guard` (head size, URL length, time) and CORS.
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .layer(middleware::from_fn_with_state(state.clone(), site::cors))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(json::MAX_BODY))
        .layer(CatchPanicLayer::custom(|_| {
            // The panic's message and place are already on stderr (the panic hook); the
            // request's own line follows, from `track`.
            tracing::error!("a handler panicked");
            ApiError::internal().into_response()
        }))
        .layer(middleware::from_fn(problems))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-route",
        "no such endpoint; GET /openapi.json lists them (docs/api.md explains them)",
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
/// Longest URL (path and query) accepted; no route needs a tenth of it.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// How far a request's body has been read, for `guard` to say whose fault a timeout is.
#[derive(Default)]
struct BodyProgress {
    started: AtomicBool,
    finished: AtomicBool,
}

/// A request body that reports to [`BodyProgress`] when a handler starts reading it and when
/// it has all arrived (or failed).
struct TrackedBody {
    body: Body,
    progress: Arc<BodyProgress>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.progress.started.store(true, Ordering::Relaxed);
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.body.is_end_stream() {
            self.progress.finished.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Bounds what a request may ask before it reaches a handler: URL length, header count and
/// size, a declared body over the limit (413 at once: nothing is read, and no
/// `100 Continue` invites it), and time — a request not answered within `request_timeout`
/// gets 408 if its body was still arriving (the client is slow), else 503.
async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return ApiError::from_status(
            StatusCode::URI_TOO_LONG,
            format!("the URL is longer than {} KiB", MAX_URI_BYTES / 1024),
        )
        .into_response();
    }
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
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > json::MAX_BODY as u64) {
        return json::too_large().into_response();
    }
    let streaming = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|m| m.as_str().ends_with("/events"));
    if streaming {
        return next.run(req).await;
    }
    let progress = Arc::new(BodyProgress::default());
    let req = req.map(|body| {
        Body::new(TrackedBody {
            body,
            progress: Arc::clone(&progress),
        })
    });
    match tokio::time::timeout(s.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) if progress.started.load(Ordering::Relaxed)
            && !progress.finished.load(Ordering::Relaxed) =>
        {
            let mut res = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                format!(
                    "the request body did not arrive within {} s; send it whole, then retry",
                    s.request_timeout.as_secs()
                ),
            )
            .into_response();
            // The rest of the body may still be on its way: this connection is done.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            res
        }
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; it may or may not have been done: retrying is safe (allocations are sticky per session, calls idempotent by call_id)",
        )
        .into_response(),
    }
}

/// Makes every error answer a problem+json body. Handlers' errors already are ([`ApiError`]);
/// this catches the rest, such as axum's path rejections (`/v1/leases/%FF` is not UTF-8),
/// keeping their status and their message as the detail.
async fn problems(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t == error::PROBLEM_JSON);
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 1024)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|t| !t.trim().is_empty() && status.is_client_error());
    let problem = match text {
        Some(detail) => ApiError::from_status(status, detail),
        None => ApiError::from_status(status, status.canonical_reason().unwrap_or("error")),
    };
    let mut out = problem.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

/// One log line and one histogram sample per request, by matched route (never the raw path,
/// which holds lease ids); echoes or assigns an `X-Request-Id`.
async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Both are reference-counted: cloning them costs no allocation per request.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let request_id = req
        .headers()
        .get("x-request-id")
        .filter(|v| v.len() <= 64 && v.as_bytes().iter().all(u8::is_ascii_graphic))
        .cloned()
        .unwrap_or_else(new_request_id);
    let mut res = next.run(req).await;
    record(
        &s.metrics,
        request_id.to_str().unwrap_or("-"),
        method.as_str(),
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        res.status(),
        started.elapsed(),
    );
    res.headers_mut().insert("x-request-id", request_id);
    res
}

/// A fresh request id: 64 random bits in hex, formatted without a heap string.
pub fn new_request_id() -> HeaderValue {
    let bits: u64 = rand::thread_rng().gen();
    let mut hex = [0u8; 16];
    for (i, b) in hex.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[(bits >> (60 - 4 * i)) as usize & 0xf];
    }
    HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
}

/// The request log line and its histogram sample. `route` is a matched route or a fixed
/// word (`unmatched`, `unparsed`, `over_capacity`, `per_ip`), never a raw path; `method` is `-` when
/// the request could not be read.
pub fn record(
    metrics: &Metrics,
    request_id: &str,
    method: &str,
    route: &str,
    status: StatusCode,
    elapsed: std::time::Duration,
) {
    // Methods are any token a client sends: only the standard ones become labels.
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH" | "-" => method,
        _ => "other",
    };
    metrics
        .http_duration
        .with_label_values(&[route, method, status.as_str()])
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
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::core::Timestamp;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    /// Every log line of this test binary, as JSON. One global subscriber: a thread-local
    /// one misses lines when tests running beside it hit the same call sites first.
    fn captured_logs() -> &'static Captured {
        static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Captured::default();
            let sink = logs.clone();
            tracing::subscriber::set_global_default(
                tracing_subscriber::fmt()
                    .json()
                    .with_writer(move || sink.clone())
                    .finish(),
            )
            .expect("no other subscriber in unit tests");
            logs
        })
    }

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn state(dir: &std::path::Path) -> AppState {
        let text = format!(
            "[server]\ndata_dir = \"{}\"\n[[pool]]\nname = \"p\"\nnumbers = [\"+33899100000\"]\n",
            dir.display()
        );
        let config = Config::parse(&text, dir).unwrap();
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_767_225_600_000)));
        crate::startup::build_state(&config, clock).await.unwrap()
    }

    async fn boom() -> StatusCode {
        panic!("boom")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_problem_that_is_logged_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        let app = with_layers(routes().route("/boom", get(boom)), state.clone());
        let logs = captured_logs();

        let res = app
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();

        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()[header::CONTENT_TYPE], error::PROBLEM_JSON);
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["type"], "urn:leaseline:problem:internal");
        let count = state
            .metrics
            .http_duration
            .with_label_values(&["/boom", "GET", "500"])
            .get_sample_count();
        assert_eq!(count, 1, "the 500 is counted");
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let line = logs
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_else(|| panic!("no request line with id {id} in:\n{logs}"));
        assert!(line.contains("\"status\":500"), "{line}");
        assert!(line.contains("\"route\":\"/boom\""), "{line}");
    }

    #[tokio::test]
    async fn errors_axum_makes_itself_are_problems_too() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(state(dir.path()).await);
        let res = app
            .oneshot(Request::get("/v1/leases/%FF").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()[header::CONTENT_TYPE], error::PROBLEM_JSON);
        assert!(res.headers().contains_key("x-request-id"));
        let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["status"], 400);
        assert!(
            problem["detail"].as_str().unwrap().contains("UTF-8"),
            "{problem}"
        );
    }
}

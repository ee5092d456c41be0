//! What web pages use: CORS for the origins of publishable keys, per-IP and per-session limits
//! on their allocations, the drop-in script (`/embed.js`) and the demo page (`/demo`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::config::{LimitsConfig, PoolConfig};
use crate::limits::RateLimiter;

/// The drop-in script, embedded in the binary.
const EMBED_JS: &str = include_str!("../../web/embed.js");
const DEMO_HTML: &str = include_str!("../../web/demo.html");

/// Allocation rate limits: for publishable keys per client address and session (a bot in a
/// page cannot drain a pool), and per key in pools that set `allocations_per_minute_per_key`.
pub struct PageLimits {
    per_ip: Mutex<RateLimiter>,
    per_session: Mutex<RateLimiter>,
    /// Pool name -> per-key limiter.
    per_key: HashMap<String, Mutex<RateLimiter>>,
}

impl PageLimits {
    pub fn new(c: &LimitsConfig, pools: &[PoolConfig]) -> Self {
        let minute = Duration::from_secs(60);
        PageLimits {
            per_ip: Mutex::new(RateLimiter::new(c.publishable_per_ip, minute)),
            per_session: Mutex::new(RateLimiter::new(c.publishable_per_session, minute)),
            per_key: pools
                .iter()
                .filter(|p| p.allocations_per_minute_per_key > 0)
                .map(|p| {
                    let l = RateLimiter::new(p.allocations_per_minute_per_key, minute);
                    (p.spec.name.clone(), Mutex::new(l))
                })
                .collect(),
        }
    }

    /// Counts an allocation by `key` in `pool`; 429 over the pool's per-key rate.
    pub fn check_key(&self, s: &AppState, pool: &str, key: &str) -> Result<(), ApiError> {
        let Some(l) = self.per_key.get(pool) else {
            return Ok(());
        };
        l.lock()
            .expect("limiter lock")
            .hit(key, s.service.now())
            .map_err(|retry| {
                s.limited(
                    "key_rate",
                    "rate-limited",
                    retry,
                    format!("this key allocates too fast in pool {pool:?}: try again in {retry} s"),
                )
            })
    }

    /// Counts an allocation from a page; 429 with `Retry-After` over either limit.
    pub fn check(&self, s: &AppState, ip: &str, session: &str) -> Result<(), ApiError> {
        let now = s.service.now();
        let over = |limit: &'static str, retry: u64| {
            let who = if limit == "page_ip" {
                "address"
            } else {
                "session"
            };
            s.limited(
                limit,
                "rate-limited",
                retry,
                format!("too many numbers asked for from this {who}: try again in {retry} s"),
            )
        };
        self.per_ip
            .lock()
            .expect("limiter lock")
            .hit(ip, now)
            .map_err(|r| over("page_ip", r))?;
        self.per_session
            .lock()
            .expect("limiter lock")
            .hit(session, now)
            .map_err(|r| over("page_session", r))
    }
}

/// The client's address as the socket saw it ("unknown" when served without one, in tests).
pub struct ClientIp(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".into(), |c| c.0.ip().to_string()),
        ))
    }
}

/// CORS for the origins of publishable keys: preflights answered, responses marked. Other
/// origins get no CORS headers, so browsers refuse to hand them the answers.
pub async fn cors(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let allowed = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| s.origins.contains(*o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    if req.method() == Method::OPTIONS {
        let Some(origin) = allowed else {
            return ApiError::forbidden("this origin may not call Leaseline from a page")
                .into_response();
        };
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        return res;
    }
    let mut res = next.run(req).await;
    if let Some(origin) = allowed {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after, x-request-id"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

pub async fn embed_js() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        EMBED_JS,
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub async fn demo(State(s): State<AppState>) -> Result<Html<String>, ApiError> {
    let demo = s.demo.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "demo-off",
            "the demo page is off: set [demo] enabled = true in pool.toml",
        )
    })?;
    Ok(Html(
        DEMO_HTML
            .replace("{{KEY}}", &escape(&demo.key))
            .replace("{{POOL}}", &escape(&demo.pool)),
    ))
}

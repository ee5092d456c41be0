//! What web pages use: CORS for the origins of publishable keys, limits on what pages ask for
//! (allocations per address, prefix and session; renewals per lease and address), the client's
//! address behind trusted proxies, the drop-in script (`/embed.js`) and the demo page (`/demo`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::config::{LimitsConfig, PoolConfig};
use crate::core::{LeaseId, SessionId, TenantId};
use crate::limits::{prefix_of, Cidr, Limit, RateLimiter};

/// The drop-in script, embedded in the binary as written (commented, indented).
const EMBED_JS: &str = include_str!("../../web/embed.js");

/// The script as served: every page of a site downloads it, so its indentation and
/// comment-only lines are left out (the file keeps them for readers). Nothing else changes:
/// no line of the script starts a string or a regular expression with `//`.
static EMBED_JS_SERVED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    EMBED_JS
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//") && !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
});
const DEMO_HTML: &str = include_str!("../../web/demo.html");

/// Rate limits on what pages ask for. Allocations with publishable keys per client address,
/// per address prefix and per (tenant, session): a bot in a page slows down long before the
/// pool's page share is gone, and many addresses of one block count as one. Renewals without
/// a site key per lease and per address. And allocations per key in pools that set
/// `allocations_per_minute_per_key`.
pub struct PageLimits {
    per_ip: Mutex<RateLimiter>,
    per_prefix: Mutex<RateLimiter>,
    per_session: Mutex<RateLimiter>,
    renew_per_lease: Mutex<RateLimiter>,
    renew_per_ip: Mutex<RateLimiter>,
    /// Pool name -> per-key limiter.
    per_key: HashMap<String, Mutex<RateLimiter>>,
}

/// Counts one request of `who` on `limiter`; the 429 for `limit` if it is over.
fn hit(
    s: &AppState,
    limiter: &Mutex<RateLimiter>,
    limit: Limit,
    who: &str,
    detail: impl FnOnce(u64) -> String,
) -> Result<(), ApiError> {
    let now = s.service.now();
    limiter
        .lock()
        .expect("limiter lock")
        .hit(who, now)
        .map_err(|retry| s.limited(limit, "rate-limited", retry, detail(retry)))
}

impl PageLimits {
    pub fn new(c: &LimitsConfig, pools: &[PoolConfig]) -> Self {
        let minute = Duration::from_secs(60);
        let per_minute = |n| Mutex::new(RateLimiter::new(n, minute));
        PageLimits {
            per_ip: per_minute(c.publishable_per_ip),
            per_prefix: per_minute(c.publishable_per_prefix),
            per_session: per_minute(c.publishable_per_session),
            renew_per_lease: per_minute(c.renews_per_lease),
            renew_per_ip: per_minute(c.renews_per_ip),
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
        hit(s, l, Limit::KeyRate, key, |retry| {
            format!("this key allocates too fast in pool {pool:?}: try again in {retry} s")
        })
    }

    /// Counts an allocation from a page; 429 with `Retry-After` over any limit. Sessions are
    /// the tenant's own: another tenant's page sending the same session uses its own count.
    pub fn check(
        &self,
        s: &AppState,
        ip: &ClientIp,
        tenant: &TenantId,
        session: &SessionId,
    ) -> Result<(), ApiError> {
        let over = |who: &'static str| {
            move |retry| {
                format!("too many numbers asked for from this {who}: try again in {retry} s")
            }
        };
        hit(
            s,
            &self.per_ip,
            Limit::PageIp,
            &ip.address(),
            over("address"),
        )?;
        hit(
            s,
            &self.per_prefix,
            Limit::PagePrefix,
            &ip.prefix(),
            over("network (/24 or /56)"),
        )?;
        let session = format!("{}\u{0}{}", tenant.as_str(), session.as_str());
        hit(
            s,
            &self.per_session,
            Limit::PageSession,
            &session,
            over("session"),
        )
    }

    /// Counts a renewal from the client's address; 429 over the rate.
    pub fn check_renew_ip(&self, s: &AppState, ip: &ClientIp) -> Result<(), ApiError> {
        hit(s, &self.renew_per_ip, Limit::RenewIp, &ip.address(), |r| {
            format!("too many renewals from this address: try again in {r} s")
        })
    }

    /// Counts a renewal of `lease` (which exists: unknown ids are not remembered).
    pub fn check_renew_lease(&self, s: &AppState, lease: &LeaseId) -> Result<(), ApiError> {
        let who = lease.to_string();
        hit(s, &self.renew_per_lease, Limit::RenewLease, &who, |r| {
            format!("this lease is renewed too often: try again in {r} s")
        })
    }
}

/// The client's address: the socket's peer, or, when the peer is a trusted proxy, the last
/// `X-Forwarded-For` address that no trusted proxy added. `None` when served without a socket
/// (tests calling the router directly): such requests share one allowance.
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    /// Who the per-address limits count.
    pub fn address(&self) -> String {
        self.0
            .map_or_else(|| "unknown".into(), |ip| ip.to_canonical().to_string())
    }

    /// Who the per-prefix limits count: the address's /24 or /56.
    pub fn prefix(&self) -> String {
        self.0
            .map_or_else(|| "unknown".into(), |ip| prefix_of(ip).to_string())
    }

    /// The client behind `peer`: proxies in `trusted` are believed about who they forward for,
    /// right to left, and nobody else is (the header is the client's to forge).
    pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
        let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
        let mut client = peer;
        if !is_trusted(client) {
            return client;
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => client = ip,
                // A hop a proxy wrote that is no address: stop at the proxy that passed it on.
                Err(_) => break,
            }
            if !is_trusted(client) {
                break;
            }
        }
        client
    }
}

impl axum::extract::FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| ClientIp::resolve(c.0.ip(), &parts.headers, &s.trusted_proxies)),
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
        EMBED_JS_SERVED.as_str(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for x in v {
            h.append("x-forwarded-for", HeaderValue::from_str(x).unwrap());
        }
        h
    }

    #[test]
    fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = forwarded(&["198.51.100.7, 203.0.113.9"]);
        assert_eq!(
            ClientIp::resolve(ip("192.0.2.1"), &h, &proxies),
            ip("192.0.2.1"),
            "a client cannot name itself someone else"
        );
        assert_eq!(
            ClientIp::resolve(ip("10.1.1.1"), &h, &proxies),
            ip("203.0.113.9"),
            "the hop the proxy saw, not what the client claimed before it"
        );
        let chain = forwarded(&["198.51.100.7", "203.0.113.9, 10.2.2.2"]);
        assert_eq!(
            ClientIp::resolve(ip("10.1.1.1"), &chain, &proxies),
            ip("203.0.113.9"),
            "proxies in a chain are skipped"
        );
        let junk = forwarded(&["203.0.113.9, unknown"]);
        assert_eq!(
            ClientIp::resolve(ip("10.1.1.1"), &junk, &proxies),
            ip("10.1.1.1")
        );
        assert_eq!(
            ClientIp::resolve(ip("10.1.1.1"), &HeaderMap::new(), &proxies),
            ip("10.1.1.1")
        );
        assert_eq!(
            ClientIp::resolve(ip("10.1.1.1"), &h, &[]),
            ip("10.1.1.1"),
            "no proxy configured, nothing believed"
        );
    }
}

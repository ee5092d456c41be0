//! Ticketing for sites: redeem an access code once (`POST /v1/tickets/redeem`), check and
//! revoke access passes (`/v1/passes/{id}`). Wrong codes are slowed down per visitor address,
//! per address prefix and per `client`, with a wait that doubles with each failure: guessing
//! an eight-digit code stays hopeless, and one visitor's guesses never stop another's redeem.

use std::net::IpAddr;
use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Need, Site};
use super::error::ApiError;
use super::json::ApiJson;
use super::site::ClientIp;
use super::wire::{PassBody, TicketBody, TicketRedeemBody};
use super::AppState;
use crate::config::LimitsConfig;
use crate::core::{CoreError, PassId, TicketCode, Timestamp};
use crate::limits::{Backoff, Limit};
use crate::service::ServiceError;

/// Longest `client` accepted, in bytes, like a session.
const MAX_CLIENT: usize = 128;

/// Wrong-code counters: each subject pays for its own failures, none for a key as a whole
/// (that let one visitor lock every visitor of a site out).
pub struct RedeemLimits {
    subjects: Mutex<Subjects>,
}

struct Subjects {
    ip: Backoff,
    prefix: Backoff,
    client: Backoff,
}

/// Who a redeem is counted against.
struct Who {
    ip: String,
    prefix: String,
    /// The site's `client`, within its tenant.
    client: Option<String>,
}

impl RedeemLimits {
    pub fn new(c: &LimitsConfig) -> Self {
        RedeemLimits {
            subjects: Mutex::new(Subjects {
                ip: Backoff::new(c.redeem_per_client),
                prefix: Backoff::new(c.redeem_per_prefix),
                client: Backoff::new(c.redeem_per_client),
            }),
        }
    }

    /// Lets an attempt through unless one of its subjects must wait, and counts it as a
    /// failure at once: parallel guesses are all counted before any is answered. A right code
    /// takes its failure back ([`RedeemLimits::succeeded`]).
    fn begin(&self, who: &Who, now: Timestamp) -> Result<(), (Limit, u64)> {
        let mut b = self.subjects.lock().expect("limiter lock");
        b.ip.check(&who.ip, now).map_err(|r| (Limit::RedeemIp, r))?;
        b.prefix
            .check(&who.prefix, now)
            .map_err(|r| (Limit::RedeemPrefix, r))?;
        if let Some(c) = &who.client {
            b.client
                .check(c, now)
                .map_err(|r| (Limit::RedeemClient, r))?;
        }
        b.ip.fail(&who.ip, now);
        b.prefix.fail(&who.prefix, now);
        if let Some(c) = &who.client {
            b.client.fail(c, now);
        }
        Ok(())
    }

    fn succeeded(&self, who: &Who) {
        let mut b = self.subjects.lock().expect("limiter lock");
        b.ip.forgive(&who.ip);
        b.prefix.forgive(&who.prefix);
        if let Some(c) = &who.client {
            b.client.forgive(c);
        }
    }
}

fn limited(s: &AppState, (limit, retry_after): (Limit, u64)) -> ApiError {
    let from = match limit {
        Limit::RedeemPrefix => "from this network (/24 or /56)",
        Limit::RedeemClient => "for this client",
        _ => "from this address",
    };
    s.limited(
        limit,
        "too-many-failures",
        retry_after,
        format!("too many wrong codes {from}: try again in {retry_after} s"),
    )
}

pub async fn redeem(
    State(s): State<AppState>,
    Need(key, _): Need<Site>,
    ip: ClientIp,
    ApiJson(b): ApiJson<TicketRedeemBody>,
) -> Result<Json<TicketBody>, ApiError> {
    let now = s.service.now();
    // Refused rather than cut: a cut could fall inside a UTF-8 character (and two clients
    // sharing a long prefix would count as one).
    if let Some(c) = b.client.as_deref().filter(|c| c.len() > MAX_CLIENT) {
        return Err(ApiError::invalid(format!(
            "client: at most {MAX_CLIENT} bytes, got {}",
            c.len()
        )));
    }
    // The site's server calls this for its visitors: the visitor's address is the one the
    // site passes; without it, the request's own.
    let visitor = match b.client_ip.as_deref() {
        Some(a) => ClientIp(Some(a.trim().parse::<IpAddr>().map_err(|_| {
            ApiError::invalid(format!("client_ip: {a:?} is not an IPv4 or IPv6 address"))
        })?)),
        None => ip,
    };
    let who = Who {
        ip: visitor.address(),
        prefix: visitor.prefix(),
        client: b
            .client
            .as_deref()
            .map(|c| format!("{}\u{0}{c}", key.tenant.as_str())),
    };
    s.limits.begin(&who, now).map_err(|l| limited(&s, l))?;
    let code =
        TicketCode::parse(b.code.trim()).map_err(|e| ApiError::invalid(format!("code: {e}")))?;
    let res = s
        .service
        .redeem_ticket(code, &key.tenant, key.pools.as_deref())
        .await;
    // Only a code that matches nothing is a wrong guess; expired or spent codes are real.
    if !matches!(res, Err(ServiceError::Core(CoreError::UnknownTicket))) {
        s.limits.succeeded(&who);
    }
    Ok(Json(TicketBody::from(&res?)))
}

fn pass_id(s: &str) -> Result<PassId, ApiError> {
    PassId::parse(s).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-pass",
            "no pass with this id",
        )
    })
}

/// Anyone holding the pass id (128 random bits) may check it: the returning buyer's browser,
/// or the site's server.
pub async fn show_pass(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PassBody>, ApiError> {
    Ok(Json(PassBody::from(&s.service.pass(&pass_id(&id)?)?)))
}

/// Revokes a pass (refund, abuse): only a site key of the pass's tenant.
pub async fn revoke_pass(
    State(s): State<AppState>,
    Need(key, _): Need<Site>,
    Path(id): Path<String>,
) -> Result<Json<PassBody>, ApiError> {
    let v = s.service.revoke_pass(pass_id(&id)?, &key.tenant).await?;
    Ok(Json(PassBody::from(&v)))
}

//! Ticketing for sites: redeem an access code once (`POST /v1/tickets/redeem`), check and
//! revoke access passes (`/v1/passes/{id}`). Failed redeems are limited per client and per
//! key, so guessing codes is locked out long before it could pay.

use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Need, Site};
use super::error::ApiError;
use super::json::ApiJson;
use super::wire::{PassBody, TicketBody, TicketRedeemBody};
use super::AppState;
use crate::config::LimitsConfig;
use crate::core::{CoreError, PassId, TicketCode};
use crate::limits::{FailureLimiter, Limit};
use crate::service::ServiceError;

/// Longest `client` accepted, in bytes, like a session.
const MAX_CLIENT: usize = 128;

/// Failed-redeem counters, per client and per key.
pub struct RedeemLimits {
    per_client: Mutex<FailureLimiter>,
    per_key: Mutex<FailureLimiter>,
}

impl RedeemLimits {
    pub fn new(c: &LimitsConfig) -> Self {
        RedeemLimits {
            per_client: Mutex::new(FailureLimiter::new(c.redeem_per_client)),
            per_key: Mutex::new(FailureLimiter::new(c.redeem_per_key)),
        }
    }
}

fn limited(s: &AppState, limit: Limit, retry_after: u64) -> ApiError {
    s.limited(
        limit,
        "too-many-failures",
        retry_after,
        format!("too many wrong codes: try again in {retry_after} s"),
    )
}

pub async fn redeem(
    State(s): State<AppState>,
    Need(key, _): Need<Site>,
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
    let client = b.client.as_deref().map(|c| format!("{}\u{0}{c}", key.name));
    {
        let per_key = s.limits.per_key.lock().expect("limiter lock");
        per_key
            .check(&key.name, now)
            .map_err(|r| limited(&s, Limit::RedeemKey, r))?;
        let per_client = s.limits.per_client.lock().expect("limiter lock");
        if let Some(c) = &client {
            per_client
                .check(c, now)
                .map_err(|r| limited(&s, Limit::RedeemClient, r))?;
        }
    }
    let fail = |s: &AppState| {
        s.limits
            .per_key
            .lock()
            .expect("limiter lock")
            .fail(&key.name, now);
        if let Some(c) = &client {
            s.limits
                .per_client
                .lock()
                .expect("limiter lock")
                .fail(c, now);
        }
    };
    let code = match TicketCode::parse(b.code.trim()) {
        Ok(c) => c,
        Err(e) => {
            fail(&s);
            return Err(ApiError::invalid(format!("code: {e}")));
        }
    };
    match s
        .service
        .redeem_ticket(code, &key.tenant, key.pools.as_deref())
        .await
    {
        Ok(v) => Ok(Json(TicketBody::from(&v))),
        Err(e @ ServiceError::Core(CoreError::UnknownTicket)) => {
            fail(&s);
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
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

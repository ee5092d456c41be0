//! `/v1/leases`: allocate, read, renew, release.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{check_pool, Auth, Need, Site, SiteOrPage};
use super::error::ApiError;
use super::json::{ApiJson, OptionalJson};
use super::site::ClientIp;
use super::wire::{AllocateBody, LeaseBody, ListingBody, RefundBody, RenewBody};
use super::AppState;
use crate::config::Role;
use crate::core::{
    AllocateRequest, CoreError, LeaseId, ListingId, Money, PhoneNumber, SessionId, Target,
};
use crate::service::ServiceError;

/// Bounds on what a site may ask for; beyond them the request is refused, not clamped.
const MAX_CALLS_REQUIRED: u32 = 100;
const MAX_MIN_CALL_SECS: u32 = 24 * 3600;

fn field<T, E: std::fmt::Display>(name: &str, r: Result<T, E>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::invalid(format!("{name}: {e}")))
}

fn ttl(secs: Option<u64>) -> Result<Option<Duration>, ApiError> {
    match secs {
        Some(0) => Err(ApiError::invalid("ttl_secs: must be at least 1")),
        s => Ok(s.map(Duration::from_secs)),
    }
}

fn lease_id(s: &str) -> Result<LeaseId, ApiError> {
    LeaseId::parse(s).map_err(|_| ApiError::unknown_lease())
}

pub async fn create(
    State(s): State<AppState>,
    Need(key, _): Need<SiteOrPage>,
    ip: ClientIp,
    ApiJson(b): ApiJson<AllocateBody>,
) -> Result<(StatusCode, Json<LeaseBody>), ApiError> {
    let pool = s
        .service
        .pool_id(&b.pool)
        .ok_or_else(|| ApiError::unknown_pool(&b.pool))?;
    check_pool(&key, &b.pool)?;
    if key.role == Role::Publishable && b.target.is_some() {
        return Err(ApiError::invalid(
            "target: a page may not choose where calls go; register the listing's target with PUT /v1/listings/{listing}",
        ));
    }
    let calls_required = b.calls_required.unwrap_or(1);
    if !(1..=MAX_CALLS_REQUIRED).contains(&calls_required) {
        return Err(ApiError::invalid(format!(
            "calls_required: must be 1 to {MAX_CALLS_REQUIRED}"
        )));
    }
    let amount = match &b.amount {
        None => None,
        Some(_) if key.role == Role::Publishable => {
            return Err(ApiError::invalid(
                "amount: a page may not set the price; the site's server asks for an amount",
            ))
        }
        Some(a) => {
            if s.service.directory().spec(pool).tariff.is_none() {
                return Err(ApiError::invalid(format!(
                    "amount: pool {:?} has no tariff, so its calls pay no amount",
                    b.pool
                )));
            }
            Some(money_field("amount", a)?)
        }
    };
    let min_call_secs = b.min_call_secs.unwrap_or(0);
    if min_call_secs > MAX_MIN_CALL_SECS {
        return Err(ApiError::invalid(format!(
            "min_call_secs: must be at most {MAX_MIN_CALL_SECS}"
        )));
    }
    // A page's key is public: what it may take is bounded by address, session, and the pool's
    // page share, which the core enforces.
    let page = key.role == Role::Publishable;
    let req = AllocateRequest {
        tenant: key.tenant.clone(),
        pool,
        session: field("session", SessionId::parse(&b.session))?,
        listing: field(
            "listing",
            b.listing.as_deref().map(ListingId::parse).transpose(),
        )?,
        target: field("target", b.target.as_deref().map(Target::parse).transpose())?,
        caller: field(
            "caller",
            b.caller.as_deref().map(PhoneNumber::parse).transpose(),
        )?,
        ttl: ttl(b.ttl_secs)?,
        calls_required,
        min_call_secs,
        amount,
        with_code: b.with_code.unwrap_or(false),
        from_page: page,
    };
    if page {
        s.pages.check(&s, &ip, &req.tenant, &req.session)?;
    }
    s.pages.check_key(&s, &b.pool, &key.name)?;
    let (view, fresh) = s.service.allocate(req).await?;
    let status = if fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // A page never learns the advertiser's real number.
    Ok((status, Json(LeaseBody::new(&view, !page))))
}

/// Readable by anyone holding the id; the advertiser's target only by the owning tenant.
pub async fn show(
    State(s): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
) -> Result<Json<LeaseBody>, ApiError> {
    let view = s.service.get(&lease_id(&id)?)?;
    let owner = key.is_some_and(|k| k.tenant == view.lease.tenant && k.role != Role::Publishable);
    Ok(Json(LeaseBody::new(&view, owner)))
}

/// Renewing needs only the lease id, so pages (and anyone holding an id) are limited per
/// address and per lease; a site's server, renewing for all its visitors from one address, is
/// not. A page's lease never outlives `page_max_ttl` however renewed (the core's bound).
pub async fn renew(
    State(s): State<AppState>,
    Auth(key): Auth,
    ip: ClientIp,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<RenewBody>,
) -> Result<Json<LeaseBody>, ApiError> {
    let id = lease_id(&id)?;
    let ttl = ttl(b.ttl_secs)?;
    if !key.as_ref().is_some_and(|k| k.role == Role::Site) {
        s.pages.check_renew_ip(&s, &ip)?;
        // Only leases that exist are counted, so made-up ids cannot fill the limiter.
        s.service.get(&id)?;
        s.pages.check_renew_lease(&s, &id)?;
    }
    let view = s.service.renew(id, ttl).await?;
    let owner = key.is_some_and(|k| k.tenant == view.lease.tenant && k.role != Role::Publishable);
    Ok(Json(LeaseBody::new(&view, owner)))
}

pub async fn release(
    State(s): State<AppState>,
    Need(key, _): Need<Site>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = lease_id(&id)?;
    let view = s.service.get(&id)?;
    if view.lease.tenant != key.tenant {
        return Err(ApiError::unknown_lease());
    }
    check_pool(&key, &view.pool)?;
    s.service.release(id, &key.tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Redeems a paid lease once: 200 the first time, 402 not paid yet, 409 already redeemed.
pub async fn redeem(
    State(s): State<AppState>,
    Need(key, _): Need<Site>,
    Path(id): Path<String>,
) -> Result<Json<LeaseBody>, ApiError> {
    let id = lease_id(&id)?;
    let view = s.service.get(&id)?;
    if view.lease.tenant != key.tenant {
        return Err(ApiError::unknown_lease());
    }
    check_pool(&key, &view.pool)?;
    let view = s.service.redeem(id, &key.tenant).await?;
    Ok(Json(LeaseBody::new(&view, true)))
}

/// Longest refund reason kept in the journal, in bytes.
const MAX_REASON: usize = 500;

/// A decimal string of money, more than zero; a JSON number is refused (it would have gone
/// through floating point).
fn money_field(name: &str, v: &serde_json::Value) -> Result<Money, ApiError> {
    let serde_json::Value::String(a) = v else {
        return Err(ApiError::invalid(format!(
            "{name}: must be a decimal string such as \"2.99\"; a JSON number would pass through floating point"
        )));
    };
    let a = field(name, Money::parse(a))?;
    if a == Money::ZERO {
        return Err(ApiError::invalid(format!("{name}: must be more than 0.00")));
    }
    Ok(a)
}

/// Records a refund of a paid lease (part or all of what its calls paid) and revokes the pass
/// its redeem granted: 200 with the lease, 409 when it is not paid or the refund is more than
/// what was paid and not yet refunded.
pub async fn refund(
    State(s): State<AppState>,
    Need(key, _): Need<Site>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<RefundBody>,
) -> Result<Json<LeaseBody>, ApiError> {
    let id = lease_id(&id)?;
    let amount = money_field("amount", &b.amount)?;
    let reason = b.reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "reason: 1 to {MAX_REASON} bytes of text without control characters"
        )));
    }
    let view = s.service.get(&id)?;
    if view.lease.tenant != key.tenant {
        return Err(ApiError::unknown_lease());
    }
    check_pool(&key, &view.pool)?;
    let view = s
        .service
        .refund(id, &key.tenant, amount, reason.to_owned())
        .await
        .map_err(|e| match e {
            ServiceError::Core(e @ CoreError::NotPaid { .. }) => ApiError::new(
                StatusCode::CONFLICT,
                "lease-not-paid",
                format!("only a paid lease can be refunded: {e}"),
            ),
            e => e.into(),
        })?;
    Ok(Json(LeaseBody::new(&view, true)))
}

/// Registers where a listing's calls go, for allocations that name no target (those from
/// pages): `PUT /v1/listings/{listing}` with `{"target": "+33612345678"}`.
pub async fn put_listing(
    State(s): State<AppState>,
    Need(key, _): Need<Site>,
    Path(listing): Path<String>,
    ApiJson(b): ApiJson<ListingBody>,
) -> Result<Json<ListingBody>, ApiError> {
    let id = field("listing", ListingId::parse(&listing))?;
    let target = field("target", Target::parse(&b.target))?;
    s.service
        .set_listing(key.tenant.clone(), id, Some(target.clone()))
        .await?;
    Ok(Json(ListingBody {
        target: target.to_string(),
    }))
}

pub async fn delete_listing(
    State(s): State<AppState>,
    Need(key, _): Need<Site>,
    Path(listing): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = field("listing", ListingId::parse(&listing))?;
    s.service.set_listing(key.tenant.clone(), id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

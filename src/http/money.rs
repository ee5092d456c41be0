//! What a merchant reads about money: `GET /v1/leases` (transactions, newest first, paged like
//! the call journal) and `GET /v1/stats`.

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{check_pool, Need, SiteOrAdmin};
use super::error::ApiError;
use super::wire::{
    parse_time, rfc3339, LeaseBody, LeasesBody, LeasesParams, StatRowBody, StatsBody, StatsParams,
};
use super::AppState;
use crate::config::Role;
use crate::core::{day_of, LeaseId, LeaseQuery, LeaseState, ListingId, Timestamp};
use crate::service::StatsBy;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad-query", e.body_text())
}

fn time(field: &str, v: &Option<String>) -> Result<Option<Timestamp>, ApiError> {
    v.as_deref()
        .map(|t| parse_time(field, t))
        .transpose()
        .map_err(ApiError::invalid)
}

/// A transactions cursor: the creation time (ms) and id of the last lease of a page, in hex.
fn cursor(s: &str) -> Result<(Timestamp, LeaseId), ApiError> {
    let mut b = [0u8; 24];
    if s.len() != 48 || hex::decode_to_slice(s, &mut b).is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-cursor",
            "cursor is not one this list gave; start again without it",
        ));
    }
    let (t, id) = b.split_at(8);
    Ok((
        Timestamp::from_millis(u64::from_be_bytes(t.try_into().expect("8 bytes"))),
        LeaseId::from_bytes(id.try_into().expect("16 bytes")),
    ))
}

fn cursor_of(l: &crate::core::Lease) -> String {
    let mut b = l.created_at.as_millis().to_be_bytes().to_vec();
    b.extend_from_slice(l.id.as_bytes());
    hex::encode(b)
}

/// Transactions: leases newest first (by creation), live and ended ones the service still
/// holds (for their pool's `retention`). A site key sees its tenant's leases, an admin key
/// those of its pools; `format=csv` answers CSV with the next cursor in `X-Next-Cursor`.
pub async fn transactions(
    State(s): State<AppState>,
    Need(key, _): Need<SiteOrAdmin>,
    params: Result<Query<LeasesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(bad_query)?;
    let dir = s.service.directory();
    let pools = match &p.pool {
        Some(name) => {
            let id = dir.id(name).ok_or_else(|| ApiError::unknown_pool(name))?;
            check_pool(&key, name)?;
            Some(vec![id])
        }
        None => key
            .pools
            .as_ref()
            .map(|names| names.iter().filter_map(|n| dir.id(n)).collect()),
    };
    let state = match p.state.as_deref() {
        None => None,
        Some("active") => Some(LeaseState::Active),
        Some("expired") => Some(LeaseState::Expired),
        Some("released") => Some(LeaseState::Released),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "state: {other:?}; expected \"active\", \"expired\" or \"released\""
            )))
        }
    };
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: must be 1 to {MAX_PAGE}")));
    }
    let site = key.role == Role::Site;
    let q = LeaseQuery {
        tenant: site.then(|| key.tenant.clone()),
        pools,
        state,
        listing: p
            .listing
            .as_deref()
            .map(ListingId::parse)
            .transpose()
            .map_err(|e| ApiError::invalid(format!("listing: {e}")))?,
        since: time("since", &p.since)?,
        until: time("until", &p.until)?,
        before: p.cursor.as_deref().map(cursor).transpose()?,
        limit,
    };
    let (views, more) = s.service.leases(&q)?;
    let next = more
        .then(|| views.last().map(|v| cursor_of(&v.lease)))
        .flatten();
    let leases: Vec<LeaseBody> = views.iter().map(|v| LeaseBody::new(v, true)).collect();
    match p.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(LeasesBody {
            leases,
            next_cursor: next,
        })
        .into_response()),
        "csv" => {
            let mut body = String::from(LeaseBody::CSV_HEADER);
            body.push('\n');
            for l in &leases {
                body.push_str(&l.csv());
                body.push('\n');
            }
            let mut res =
                ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response();
            if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
                res.headers_mut().insert("x-next-cursor", next);
            }
            Ok(res)
        }
        other => Err(ApiError::invalid(format!(
            "format: {other:?}; expected \"json\" or \"csv\""
        ))),
    }
}

/// How far back statistics go when `since` is not given.
const DEFAULT_STATS_DAYS: u64 = 30;

/// Statistics (admin: its pools'; site: its own leases' and their calls): calls, attributed, answered, billed seconds, amount, leases and paid
/// leases, by UTC day, listing or pool (and currency), over whole UTC days from `since`'s to
/// the one before `until` (default: the last 30 days, today included), for the key's pools.
pub async fn stats(
    State(s): State<AppState>,
    Need(key, _): Need<SiteOrAdmin>,
    params: Result<Query<StatsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<StatsBody>, ApiError> {
    let Query(p) = params.map_err(bad_query)?;
    let dir = s.service.directory();
    let pools: Option<Vec<_>> = match &p.pool {
        Some(name) => {
            let id = dir.id(name).ok_or_else(|| ApiError::unknown_pool(name))?;
            check_pool(&key, name)?;
            Some(vec![id])
        }
        None => key
            .pools
            .as_ref()
            .map(|names| names.iter().filter_map(|n| dir.id(n)).collect()),
    };
    let (by, by_name) = match p.by.as_deref().unwrap_or("day") {
        "day" => (StatsBy::Day, "day"),
        "listing" => (StatsBy::Listing, "listing"),
        "pool" => (StatsBy::Pool, "pool"),
        other => {
            return Err(ApiError::invalid(format!(
                "by: {other:?}; expected \"day\", \"listing\" or \"pool\""
            )))
        }
    };
    let now = s.service.now();
    let until =
        time("until", &p.until)?.unwrap_or(now.saturating_add(std::time::Duration::from_millis(1)));
    let since = time("since", &p.since)?.unwrap_or_else(|| {
        crate::core::day_start(day_of(now).saturating_sub(DEFAULT_STATS_DAYS as u32 - 1))
    });
    if since >= until {
        return Err(ApiError::invalid("since: must be before until"));
    }
    let (from, to) = (
        day_of(since),
        day_of(Timestamp::from_millis(until.as_millis() - 1)),
    );
    // A site sees the calls and leases of its own leases.
    let tenant = (key.role == Role::Site).then_some(&key.tenant);
    let rows = s.service.stats(from, to, pools.as_deref(), tenant, by)?;
    Ok(Json(StatsBody {
        by: by_name,
        since: rfc3339(crate::core::day_start(from)),
        until: rfc3339(crate::core::day_start(to.saturating_add(1))),
        rows: rows.iter().map(StatRowBody::from).collect(),
    }))
}

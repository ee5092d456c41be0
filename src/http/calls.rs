//! `/v1/calls`: telephony reports call starts and ends; operators read the journal.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{check_pool, Admin, Need, Telephony};
use super::error::ApiError;
use super::json::ApiJson;
use super::wire::{
    parse_time, CallEndAnswer, CallEventBody, CallStartAnswer, JournalBody, JournalParams,
    JournalRow, LookupParams,
};
use super::AppState;
use crate::config::KeyConfig;
use crate::core::{CallId, CallStart, Code, Entropy, PhoneNumber, Timestamp};
use crate::store::JournalQuery;

/// How far in the future an event's `at` may be (clock skew between platforms).
const MAX_SKEW: Duration = Duration::from_secs(300);
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::invalid(m)
}

/// Parses an optional field, naming it in the 422 if it is wrong.
fn optional<T, E: std::fmt::Display>(
    name: &str,
    v: Option<&str>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<T>, ApiError> {
    v.map(parse)
        .transpose()
        .map_err(|e| invalid(format!("{name}: {e}")))
}

/// The numbers and code of a call, checked against what the key may use.
fn call_parties(
    s: &AppState,
    key: &KeyConfig,
    called: &str,
    caller: Option<&str>,
    code: Option<&str>,
) -> Result<(PhoneNumber, Option<PhoneNumber>, Option<Code>), ApiError> {
    let called = PhoneNumber::parse(called).map_err(|e| invalid(format!("called: {e}")))?;
    let caller = optional("caller", caller, PhoneNumber::parse)?;
    let code = optional("code", code, Code::parse)?;
    if let Some(pool) = s.service.pool_of_number(called) {
        check_pool(key, &pool)?;
    }
    Ok((called, caller, code))
}

pub async fn event(
    State(s): State<AppState>,
    Need(key, _): Need<Telephony>,
    ApiJson(b): ApiJson<CallEventBody>,
) -> Result<Response, ApiError> {
    let id = CallId::parse(&b.call_id).map_err(|e| invalid(format!("call_id: {e}")))?;
    let at =
        b.at.as_deref()
            .map(|t| parse_time("at", t))
            .transpose()
            .map_err(invalid)?;
    if let Some(at) = at {
        if at > s.service.now().saturating_add(MAX_SKEW) {
            return Err(invalid(
                "at: the event is more than 5 minutes in the future",
            ));
        }
    }
    match b.event.as_str() {
        "start" => {
            if b.duration_secs.is_some() {
                return Err(invalid(
                    "duration_secs: only an \"end\" event has a duration",
                ));
            }
            let called = b
                .called
                .as_deref()
                .ok_or_else(|| invalid("called: required on a \"start\" event"))?;
            let (called, caller, code) =
                call_parties(&s, &key, called, b.caller.as_deref(), b.code.as_deref())?;
            let start = CallStart {
                id,
                called,
                caller,
                code,
                at: at.unwrap_or(Timestamp::ZERO),
                entropy: Entropy::default(),
            };
            let (call, pool) = s.service.call_start(start, at.is_some()).await?;
            tracing::info!(
                call_id = %call.id.as_str(),
                called = %call.called,
                caller = %call.caller.map_or("-".into(), |c| c.masked()),
                reason = call.attribution.reason.as_str(),
                "call started"
            );
            Ok(Json(CallStartAnswer::new(&call, pool)).into_response())
        }
        "end" => {
            if b.code.is_some() {
                return Err(invalid("code: only a \"start\" event carries a code"));
            }
            let duration = b
                .duration_secs
                .ok_or_else(|| invalid("duration_secs: required on an \"end\" event"))?;
            let call = s.service.call_end(id, duration, at).await?;
            Ok(Json(CallEndAnswer {
                call_id: call.id.as_str().to_owned(),
                duration_secs: duration,
                counted: call.counted,
                lease_id: call.attribution.lease.map(|l| l.to_string()),
                ticketing: call.ticketing.map(Into::into),
                amount: call.charge.map(|c| c.amount.to_string()),
                currency: call.charge.map(|c| c.currency.to_string()),
                billed_secs: call.charge.map(|c| c.billed_secs),
            })
            .into_response())
        }
        other => Err(invalid(format!(
            "event: {other:?} is not an event; expected \"start\" or \"end\""
        ))),
    }
}

/// The call journal, newest first, as JSON pages or CSV (`format=csv`). The next page's
/// cursor is in `next_cursor` (JSON) or the `X-Next-Cursor` header (CSV).
pub async fn journal(
    State(s): State<AppState>,
    Need(key, _): Need<Admin>,
    params: Result<Query<JournalParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-query", e.body_text()))?;
    if let Some(pool) = &p.pool {
        if s.service.pool_id(pool).is_none() {
            return Err(ApiError::unknown_pool(pool));
        }
        check_pool(&key, pool)?;
    }
    let time = |f: &str, v: &Option<String>| {
        v.as_deref()
            .map(|t| parse_time(f, t))
            .transpose()
            .map_err(invalid)
    };
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(format!("limit: must be 1 to {MAX_PAGE}")));
    }
    // An admin key scoped to some pools sees only their calls.
    let pools = match (&p.pool, &key.pools) {
        (Some(one), _) => Some(vec![one.clone()]),
        (None, scoped) => scoped.clone(),
    };
    let q = JournalQuery {
        pools,
        since: time("since", &p.since)?,
        until: time("until", &p.until)?,
        cursor: p.cursor.clone(),
        limit,
    };
    let page = s.service.journal(&q)?;
    let rows: Vec<JournalRow> = page.rows.iter().map(JournalRow::new).collect();
    match p.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(JournalBody {
            calls: rows,
            next_cursor: page.next,
        })
        .into_response()),
        "csv" => {
            let mut body = String::from(JournalRow::CSV_HEADER);
            body.push('\n');
            for r in &rows {
                body.push_str(&r.csv());
                body.push('\n');
            }
            let mut res =
                ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response();
            if let Some(next) = page.next.and_then(|n| HeaderValue::from_str(&n).ok()) {
                res.headers_mut().insert("x-next-cursor", next);
            }
            Ok(res)
        }
        other => Err(invalid(format!(
            "format: {other:?}; expected \"json\" or \"csv\""
        ))),
    }
}

/// Who a call placed now (or at `at`) would reach, without recording anything: for platforms
/// that route first and report later, and for monitoring. Same answer as a `start`.
pub async fn lookup(
    State(s): State<AppState>,
    Need(key, _): Need<Telephony>,
    params: Result<Query<LookupParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CallStartAnswer>, ApiError> {
    let Query(p) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-query", e.body_text()))?;
    let (called, caller, code) =
        call_parties(&s, &key, &p.called, p.caller.as_deref(), p.code.as_deref())?;
    let at =
        p.at.as_deref()
            .map(|t| parse_time("at", t))
            .transpose()
            .map_err(invalid)?;
    let (a, pool) = s.service.attribute(called, caller, code, at)?;
    Ok(Json(CallStartAnswer::from_attribution(
        String::new(),
        &a,
        pool,
    )))
}

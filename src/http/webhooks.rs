//! The webhook deliveries, for operators: list them by status, send one again. Admin keys not
//! limited to pools only (a delivery may concern any pool, or none).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::{Admin, Need};
use super::error::ApiError;
use super::wire::rfc3339;
use super::AppState;
use crate::config::KeyConfig;
use crate::store::{Delivery, DeliveryId, DeliveryStatus};
use crate::webhooks::worker::RetryError;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesParams {
    pub status: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// A delivery as operators see it (the payload itself is not repeated).
#[derive(Serialize)]
pub struct DeliveryBody {
    pub id: String,
    pub event_id: String,
    pub endpoint: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: &'static str,
    pub attempts: u32,
    pub created_at: String,
    /// Pending only: when the next attempt is due.
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    /// Why the last attempt failed (`HTTP 500`, a timeout…).
    pub last_error: Option<String>,
    /// When it was delivered or given up.
    pub finished_at: Option<String>,
}

impl From<&Delivery> for DeliveryBody {
    fn from(d: &Delivery) -> Self {
        DeliveryBody {
            id: d.id.to_string(),
            event_id: hex::encode(d.id.event()),
            endpoint: d.endpoint.clone(),
            kind: d.kind.clone(),
            status: d.status.as_str(),
            attempts: d.attempts,
            created_at: rfc3339(d.created_at),
            next_attempt_at: (d.status == DeliveryStatus::Pending).then(|| rfc3339(d.next_at)),
            last_attempt_at: d.last_attempt_at.map(rfc3339),
            last_error: d.last_error.clone(),
            finished_at: d.done_at.map(rfc3339),
        }
    }
}

#[derive(Serialize)]
pub struct DeliveriesBody {
    pub deliveries: Vec<DeliveryBody>,
    pub next_cursor: Option<String>,
}

fn whole_admin(key: &KeyConfig) -> Result<(), ApiError> {
    match key.pools {
        Some(_) => Err(ApiError::forbidden(
            "webhook deliveries concern every pool: this needs an admin key not limited to pools",
        )),
        None => Ok(()),
    }
}

fn unknown_delivery() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown-delivery",
        "no webhook delivery with this id",
    )
}

/// `GET /v1/webhooks/deliveries?status=pending|failed|delivered&cursor=&limit=`: newest first.
pub async fn list(
    State(s): State<AppState>,
    Need(key, _): Need<Admin>,
    params: Result<Query<DeliveriesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeliveriesBody>, ApiError> {
    whole_admin(&key)?;
    let Query(p) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-query", e.body_text()))?;
    let status_s = p.status.as_deref().unwrap_or("pending");
    let status = DeliveryStatus::parse(status_s).ok_or_else(|| {
        ApiError::invalid(format!(
            "status: {status_s:?} is not one of pending, failed, delivered"
        ))
    })?;
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: must be 1 to {MAX_PAGE}")));
    }
    let cursor = match &p.cursor {
        Some(c) => Some(DeliveryId::parse(c).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-cursor",
                "cursor is not one this list gave; start again without it",
            )
        })?),
        None => None,
    };
    let Some(hooks) = s.service.webhooks() else {
        return Ok(Json(DeliveriesBody {
            deliveries: Vec::new(),
            next_cursor: None,
        }));
    };
    let (rows, next) = hooks.page(status, cursor, limit).map_err(|e| {
        tracing::error!(error = %e, "webhook deliveries unreadable");
        ApiError::internal()
    })?;
    Ok(Json(DeliveriesBody {
        deliveries: rows.iter().map(DeliveryBody::from).collect(),
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// `POST /v1/webhooks/deliveries/{id}/retry`: sends it again at once, whatever its status,
/// with a fresh `max_age` (202).
pub async fn retry(
    State(s): State<AppState>,
    Need(key, _): Need<Admin>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeliveryBody>), ApiError> {
    whole_admin(&key)?;
    let id = DeliveryId::parse(&id).ok_or_else(unknown_delivery)?;
    let hooks = s.service.webhooks().ok_or_else(unknown_delivery)?;
    match hooks.retry(&id) {
        Ok(d) => Ok((StatusCode::ACCEPTED, Json(DeliveryBody::from(&d)))),
        Err(RetryError::Unknown) => Err(unknown_delivery()),
        Err(RetryError::NoEndpoint(name)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "webhook-not-configured",
            format!("webhook {name:?} is no longer in the configuration: nothing to send it to"),
        )),
        Err(RetryError::Store(e)) => {
            tracing::error!(error = %e, "webhook delivery not retried");
            Err(ApiError::internal())
        }
    }
}

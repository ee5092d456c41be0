//! The one error type handlers return, and the one place errors become HTTP statuses and
//! `application/problem+json` bodies (RFC 9457). 5xx bodies stay generic; the cause is logged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::core::{CoreError, LeaseState};
use crate::service::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short stable slug; the problem `type` is `urn:leaseline:problem:<kind>`.
    pub kind: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 429 with `Retry-After`: a limit was reached.
    pub fn too_many(kind: &'static str, retry_after: u64, detail: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, kind, detail)
        }
    }

    pub fn unknown_lease() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown-lease",
            "no lease with this id",
        )
    }

    pub fn unknown_pool(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown-pool",
            format!("no pool named {name:?}"),
        )
    }

    /// A problem for a status that no handler chose: axum's own rejections, the URL
    /// limit, and what the connection layer answers itself (a request hyper could not read,
    /// a connection over the cap).
    pub fn from_status(status: StatusCode, detail: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            400 => "bad-request",
            404 => "no-route",
            405 => "method-not-allowed",
            408 => "request-timeout",
            413 => "body-too-large",
            414 => "uri-too-long",
            415 => "not-json",
            422 => "invalid-field",
            431 => "headers-too-large",
            503 => "unavailable",
            s if s >= 500 => "internal",
            _ => "error",
        };
        Self::new(status, kind, detail)
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }

    fn storage() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-unavailable",
            "the store cannot make this change durable right now; nothing was changed that will be kept",
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Core(CoreError::UnknownPool) => {
                Self::new(StatusCode::NOT_FOUND, "unknown-pool", "no such pool")
            }
            ServiceError::Core(CoreError::UnknownLease) => Self::unknown_lease(),
            ServiceError::Core(CoreError::LeaseEnded(state)) => Self::new(
                StatusCode::GONE,
                "lease-ended",
                match state {
                    LeaseState::Released => "the lease was released; allocate a new one",
                    _ => "the lease has expired; allocate a new one",
                },
            ),
            ServiceError::Core(CoreError::Exhausted { retry_after_secs }) => ApiError {
                retry_after: Some(retry_after_secs),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "pool-exhausted",
                    format!("every number of this pool is in use; the next one frees in {retry_after_secs} s"),
                )
            },
            ServiceError::Core(e @ CoreError::NotPaid { .. }) => {
                Self::new(StatusCode::PAYMENT_REQUIRED, "not-paid", e.to_string())
            }
            ServiceError::Core(e @ CoreError::RefundTooLarge { .. }) => {
                Self::new(StatusCode::CONFLICT, "refund-too-large", e.to_string())
            }
            ServiceError::Core(CoreError::AlreadyRedeemed) => Self::new(
                StatusCode::CONFLICT,
                "already-redeemed",
                "this was already redeemed: it can be redeemed only once",
            ),
            ServiceError::Core(CoreError::UnknownCall) => Self::new(
                StatusCode::NOT_FOUND,
                "unknown-call",
                "no call with this call_id has started (or it is too old to end)",
            ),
            ServiceError::Core(CoreError::CallConflict(m)) => {
                Self::new(StatusCode::CONFLICT, "call-conflict", m)
            }
            ServiceError::Core(e @ CoreError::EndBeforeStart) => {
                Self::new(StatusCode::CONFLICT, "end-before-start", e.to_string())
            }
            ServiceError::Store(crate::store::StoreError::BadCursor) => Self::new(
                StatusCode::BAD_REQUEST,
                "bad-cursor",
                "cursor is not one this journal gave; start again without it",
            ),
            ServiceError::Core(e @ CoreError::TooManyLeases { .. }) => Self::too_many(
                "too-many-leases",
                60,
                format!("{e}: release one, or retry when one expires"),
            ),
            ServiceError::Core(e @ CoreError::TicketingPool) => Self::invalid(format!("pool: {e}")),
            ServiceError::Core(e @ CoreError::NoSharedNumber) => {
                Self::invalid(format!("with_code: {e}"))
            }
            ServiceError::Core(CoreError::UnknownTicket) => Self::new(
                StatusCode::NOT_FOUND,
                "unknown-code",
                "no access code like this one (check the eight digits)",
            ),
            ServiceError::Core(e @ CoreError::TicketExpired) => Self::new(
                StatusCode::GONE,
                "code-expired",
                format!("{e}: call again to get a new one"),
            ),
            ServiceError::Core(CoreError::UnknownPass) => {
                Self::new(StatusCode::NOT_FOUND, "unknown-pass", "no pass with this id")
            }
            ServiceError::Core(e @ (CoreError::DuplicateId | CoreError::Corrupt(_))) => {
                tracing::error!(error = %e, "internal error");
                Self::internal()
            }
            ServiceError::Store(e) => {
                tracing::error!(error = %e, "storage error");
                Self::storage()
            }
            ServiceError::Unavailable => Self::storage(),
        }
    }
}

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl ApiError {
    fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Problem {
            kind: format!("urn:leaseline:problem:{}", self.kind),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
        })
        .expect("a problem always serialises")
    }

    /// This problem as a whole HTTP/1.1 response that closes the connection, for the
    /// connection layer, which answers with raw bytes where no router runs.
    pub fn to_http1(&self, request_id: &str) -> Vec<u8> {
        let body = self.body();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {PROBLEM_JSON}\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {request_id}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("Error"),
            body.len(),
        );
        if let Some(secs) = self.retry_after {
            head.push_str(&format!("retry-after: {secs}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, self.body()).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

//! What travels over HTTP: request and response bodies of the v1 contract, kept apart from
//! core types and converted explicitly.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::core::Timestamp;
use crate::service::{LeaseView, PoolView};

/// RFC 3339, UTC, millisecond precision: `2026-11-22T11:00:00.000Z`.
pub fn rfc3339(t: Timestamp) -> String {
    DateTime::<Utc>::from_timestamp_millis(t.as_millis() as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocateBody {
    pub pool: String,
    pub session: String,
    pub listing: Option<String>,
    pub target: Option<String>,
    pub caller: Option<String>,
    pub ttl_secs: Option<u64>,
    pub calls_required: Option<u32>,
    pub min_call_secs: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    pub ttl_secs: Option<u64>,
}

#[derive(Serialize)]
pub struct LeaseBody {
    pub lease_id: String,
    pub pool: String,
    /// E.164, for `tel:` links.
    pub number: String,
    /// The number as a person in its country writes it.
    pub display: String,
    pub session: String,
    pub listing: Option<String>,
    /// Shown only to a key of the lease's tenant: a browser holding just the lease id must not
    /// learn the advertiser's real number (it would bypass the surcharged one).
    pub target: Option<String>,
    pub state: &'static str,
    pub created_at: String,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub calls: u32,
    pub calls_required: u32,
    pub calls_missing: u32,
    pub paid: bool,
}

impl LeaseBody {
    pub fn new(v: &LeaseView, show_target: bool) -> LeaseBody {
        let l = &v.lease;
        LeaseBody {
            lease_id: l.id.to_string(),
            pool: v.pool.clone(),
            number: l.number.to_string(),
            display: l.number.display(),
            session: l.session.as_str().to_owned(),
            listing: l.listing.as_ref().map(|x| x.as_str().to_owned()),
            target: show_target
                .then(|| l.target.as_ref().map(ToString::to_string))
                .flatten(),
            state: v.state.as_str(),
            created_at: rfc3339(l.created_at),
            expires_at: rfc3339(l.expires_at),
            code: None,
            calls: l.calls,
            calls_required: l.calls_required,
            calls_missing: l.calls_required.saturating_sub(l.calls),
            paid: l.paid(),
        }
    }
}

#[derive(Serialize)]
pub struct PoolBody {
    pub name: String,
    pub size: usize,
    pub free: usize,
    pub leased: usize,
    pub cooling: usize,
    /// Share of numbers not free (leased or cooling), 0 to 1.
    pub saturation: f64,
}

impl From<&PoolView> for PoolBody {
    fn from(p: &PoolView) -> Self {
        let s = p.stats;
        PoolBody {
            name: p.name.clone(),
            size: s.size,
            free: s.free,
            leased: s.leased,
            cooling: s.cooling,
            saturation: (s.leased + s.cooling) as f64 / s.size.max(1) as f64,
        }
    }
}

#[derive(Serialize)]
pub struct PoolsBody {
    pub pools: Vec<PoolBody>,
}

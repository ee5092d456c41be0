//! What travels over HTTP: request and response bodies of the v1 contract, kept apart from
//! core types and converted explicitly.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::core::{Call, Timestamp};
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
    /// On a shared number: the four digits the caller types.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub calls: u32,
    pub calls_required: u32,
    pub calls_missing: u32,
    pub min_call_secs: u32,
    pub paid: bool,
    pub redeemed_at: Option<String>,
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
            code: l.code.map(|c| c.to_string()),
            calls: l.calls,
            calls_required: l.calls_required,
            calls_missing: l.calls_required.saturating_sub(l.calls),
            min_call_secs: l.min_call_secs,
            paid: l.paid(),
            redeemed_at: l.redeemed_at.map(rfc3339),
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

/// A call event from telephony.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallEventBody {
    pub call_id: String,
    pub event: String,
    pub called: Option<String>,
    pub caller: Option<String>,
    /// RFC 3339; defaults to the time the event is received.
    pub at: Option<String>,
    pub code: Option<String>,
    pub duration_secs: Option<u32>,
}

/// The answer to a call's start: where it goes and who gets the credit.
#[derive(Serialize)]
pub struct CallStartAnswer {
    pub call_id: String,
    pub attributed: bool,
    pub reason: &'static str,
    pub pool: Option<String>,
    pub lease_id: Option<String>,
    pub target: Option<String>,
    pub listing: Option<String>,
}

impl CallStartAnswer {
    pub fn new(c: &Call, pool: Option<String>) -> Self {
        let a = &c.attribution;
        CallStartAnswer {
            call_id: c.id.as_str().to_owned(),
            attributed: a.reason.attributed(),
            reason: a.reason.as_str(),
            pool,
            lease_id: a.lease.map(|l| l.to_string()),
            target: a.target.as_ref().map(ToString::to_string),
            listing: a.listing.as_ref().map(|l| l.as_str().to_owned()),
        }
    }
}

#[derive(Serialize)]
pub struct CallEndAnswer {
    pub call_id: String,
    pub duration_secs: u32,
    /// The call counted toward its lease's `calls`.
    pub counted: bool,
    pub lease_id: Option<String>,
}

/// One row of the call journal.
#[derive(Serialize)]
pub struct JournalRow {
    pub call_id: String,
    pub pool: Option<String>,
    pub called: String,
    pub caller: Option<String>,
    pub code: Option<String>,
    pub started_at: String,
    pub reason: &'static str,
    pub attributed: bool,
    pub lease_id: Option<String>,
    pub listing: Option<String>,
    pub target: Option<String>,
    pub ended_at: Option<String>,
    pub duration_secs: Option<u32>,
    pub counted: bool,
}

impl JournalRow {
    pub fn new(row: &crate::store::CallRow) -> Self {
        let c = &row.call;
        let a = &c.attribution;
        JournalRow {
            call_id: c.id.as_str().to_owned(),
            pool: row.pool.clone(),
            called: c.called.to_string(),
            caller: c.caller.map(|n| n.to_string()),
            code: c.code.map(|x| x.to_string()),
            started_at: rfc3339(c.started_at),
            reason: a.reason.as_str(),
            attributed: a.reason.attributed(),
            lease_id: a.lease.map(|l| l.to_string()),
            listing: a.listing.as_ref().map(|l| l.as_str().to_owned()),
            target: a.target.as_ref().map(ToString::to_string),
            ended_at: c.end.map(|e| rfc3339(e.at)),
            duration_secs: c.end.map(|e| e.duration_secs),
            counted: c.counted,
        }
    }

    pub const CSV_HEADER: &'static str = "call_id,pool,called,caller,code,started_at,reason,attributed,lease_id,listing,target,ended_at,duration_secs,counted";

    /// One CSV line (RFC 4180 quoting where a field needs it).
    pub fn csv(&self) -> String {
        fn q(s: &str) -> String {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_owned()
            }
        }
        let o = |v: &Option<String>| v.as_deref().map(q).unwrap_or_default();
        [
            q(&self.call_id),
            o(&self.pool),
            q(&self.called),
            o(&self.caller),
            o(&self.code),
            q(&self.started_at),
            self.reason.to_owned(),
            self.attributed.to_string(),
            o(&self.lease_id),
            o(&self.listing),
            o(&self.target),
            o(&self.ended_at),
            self.duration_secs
                .map(|d| d.to_string())
                .unwrap_or_default(),
            self.counted.to_string(),
        ]
        .join(",")
    }
}

#[derive(Serialize)]
pub struct JournalBody {
    pub calls: Vec<JournalRow>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalParams {
    pub pool: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    pub format: Option<String>,
}

/// Parses an RFC 3339 instant from a client.
pub fn parse_time(field: &str, s: &str) -> Result<Timestamp, String> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .map(Timestamp::from_millis)
        .ok_or_else(|| {
            format!("{field}: {s:?} is not an RFC 3339 time such as \"2026-11-22T11:00:00Z\"")
        })
}

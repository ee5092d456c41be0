//! What travels over HTTP: request and response bodies of the v1 contract, kept apart from
//! core types and converted explicitly.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::core::{
    erlang_b, Attribution, Call, Capacity, Load, NumberView, OnExhausted, PoolMode, PoolSpec,
    Tariff, TariffUnit, TicketingAnswer, Timestamp,
};
use crate::service::{LeaseView, PoolView, StatRow};
use crate::service::{PassView, TicketView};
use crate::store::JournalRow as StoredRow;

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
    /// What the merchant asks, a decimal string in the pool's currency (`"4.50"`); read as a
    /// JSON value so that a number gets a precise 422 rather than a parser's message.
    pub amount: Option<serde_json::Value>,
    /// The pool's shared number and a four-digit code even while numbers are free (a
    /// checkout paid by phone).
    pub with_code: Option<bool>,
}

/// `POST /v1/leases/{id}/refund`: how much (a decimal string) and why.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    pub amount: serde_json::Value,
    pub reason: String,
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
    /// Set once redeemed, when the pool grants access for a period (`access_ttl`).
    pub pass_id: Option<String>,
    pub access_until: Option<String>,
    /// What the merchant asked, when the lease was created with an amount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// The sum of the amounts of the calls counted for it.
    pub amount_paid: String,
    /// The sum of the refunds recorded on it.
    pub refunded: String,
    /// The pool's currency (`null` when the pool has no tariff).
    pub currency: Option<String>,
    /// The pool's tariff, to show the price beside the number.
    pub tariff: Option<TariffBody>,
}

impl LeaseBody {
    pub const CSV_HEADER: &'static str = "lease_id,pool,number,session,listing,state,created_at,expires_at,calls,calls_required,paid,amount,amount_paid,refunded,currency,redeemed_at";

    /// One CSV line of a transactions export; text cells through [`csv_cell`].
    pub fn csv(&self) -> String {
        let q = csv_cell;
        let o = |v: &Option<String>| v.as_deref().map(q).unwrap_or_default();
        [
            q(&self.lease_id),
            q(&self.pool),
            q(&self.number),
            q(&self.session),
            o(&self.listing),
            self.state.to_owned(),
            q(&self.created_at),
            q(&self.expires_at),
            self.calls.to_string(),
            self.calls_required.to_string(),
            self.paid.to_string(),
            o(&self.amount),
            q(&self.amount_paid),
            q(&self.refunded),
            o(&self.currency),
            o(&self.redeemed_at),
        ]
        .join(",")
    }
}

/// `GET /v1/stats`: one row per group and currency.
#[derive(Serialize)]
pub struct StatsBody {
    pub by: &'static str,
    pub since: String,
    pub until: String,
    pub rows: Vec<StatRowBody>,
}

#[derive(Serialize)]
pub struct StatRowBody {
    pub key: Option<String>,
    pub calls: u64,
    pub attributed: u64,
    pub answered: u64,
    pub billed_seconds: u64,
    pub amount: String,
    pub currency: Option<String>,
    pub leases: u64,
    pub paid_leases: u64,
}

impl From<&StatRow> for StatRowBody {
    fn from(r: &StatRow) -> Self {
        let c = &r.counts;
        StatRowBody {
            key: r.key.clone(),
            calls: c.calls,
            attributed: c.attributed,
            answered: c.answered,
            billed_seconds: c.billed_secs,
            amount: c.amount().to_string(),
            currency: r.currency.map(|c| c.to_string()),
            leases: c.leases,
            paid_leases: c.paid_leases,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    pub pool: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub by: Option<String>,
}

/// `GET /v1/leases`: a page of transactions.
#[derive(Serialize)]
pub struct LeasesBody {
    pub leases: Vec<LeaseBody>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasesParams {
    pub pool: Option<String>,
    pub state: Option<String>,
    pub listing: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    pub format: Option<String>,
}

/// A pool's tariff as `pool.toml` writes it: `{"per_call": "2.99", "currency": "EUR"}` or
/// `{"per_minute": "3.13", "currency": "CHF", "increment_secs": 20}`.
#[derive(Serialize)]
pub struct TariffBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_call: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<String>,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub increment_secs: Option<u32>,
}

impl From<&Tariff> for TariffBody {
    fn from(t: &Tariff) -> Self {
        let (per_call, per_minute, increment_secs) = match t.unit {
            TariffUnit::PerCall => (Some(t.rate.to_string()), None, None),
            TariffUnit::PerMinute { increment_secs } => {
                (None, Some(t.rate.to_string()), Some(increment_secs))
            }
        };
        TariffBody {
            per_call,
            per_minute,
            currency: t.currency.to_string(),
            increment_secs,
        }
    }
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
            pass_id: v.pass.as_ref().map(|p| p.pass.id.to_string()),
            access_until: v.pass.as_ref().map(|p| rfc3339(p.pass.access_until)),
            amount: l.amount.map(|a| a.to_string()),
            amount_paid: l.amount_paid.to_string(),
            refunded: l.refunded.to_string(),
            currency: v.tariff.map(|t| t.currency.to_string()),
            tariff: v.tariff.as_ref().map(TariffBody::from),
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
    /// Fewest numbers keeping blocking under 1% at the busiest hour of the last 7 days (see
    /// `GET /v1/pools/{pool}/capacity`); null for a ticketing pool.
    pub recommended_size: Option<u64>,
    /// The pool's settings, for the back-office.
    pub settings: PoolSettingsBody,
}

#[derive(Serialize)]
pub struct PoolSettingsBody {
    pub tariff: Option<TariffBody>,
    /// `dynamic` or `ticketing`.
    pub mode: &'static str,
    /// `reject` or `shared`.
    pub on_exhausted: &'static str,
    pub shared_number: Option<String>,
    pub ttl_secs: u64,
    pub max_ttl_secs: u64,
    pub grace_secs: u64,
    pub quarantine_secs: u64,
    pub retention_secs: u64,
}

impl PoolBody {
    pub fn new(p: &PoolView, spec: &PoolSpec) -> Self {
        let s = p.stats;
        let t = &spec.settings;
        PoolBody {
            name: p.name.clone(),
            size: s.size,
            free: s.free,
            leased: s.leased,
            cooling: s.cooling,
            saturation: (s.leased + s.cooling) as f64 / s.size.max(1) as f64,
            recommended_size: p.capacity.as_ref().map(|c| c.recommended),
            settings: PoolSettingsBody {
                tariff: spec.tariff.as_ref().map(TariffBody::from),
                mode: match spec.mode {
                    PoolMode::Dynamic => "dynamic",
                    PoolMode::Ticketing(_) => "ticketing",
                },
                on_exhausted: match spec.on_exhausted {
                    OnExhausted::Reject => "reject",
                    OnExhausted::Shared { .. } => "shared",
                },
                shared_number: spec.shared_number().map(|n| n.to_string()),
                ttl_secs: t.ttl.as_secs(),
                max_ttl_secs: t.max_ttl.as_secs(),
                grace_secs: t.grace.as_secs(),
                quarantine_secs: t.quarantine.as_secs(),
                retention_secs: t.retention.as_secs(),
            },
        }
    }
}

/// `GET /v1/pools/{pool}/capacity`: what a pool's traffic says of its size.
#[derive(Serialize)]
pub struct CapacityBody {
    pub pool: String,
    pub size: u64,
    /// The blocking aimed at (the `blocking` parameter, default 0.01).
    pub blocking_target: f64,
    /// Numbers that keep blocking at the busiest hour under the target (Erlang-B).
    pub recommended_size: u64,
    pub last_hour: LoadBody,
    pub busiest_hour: LoadBody,
    pub levers: LeversBody,
}

/// A window's traffic: the load offered, what Erlang-B says the pool's size blocks of it, and
/// what happened to the requests.
#[derive(Serialize)]
pub struct LoadBody {
    pub from: String,
    pub to: String,
    /// Requests for a new number a second times `holding_secs`.
    pub offered_erlangs: f64,
    /// Erlang-B blocking of the pool's size at this load.
    pub blocking: f64,
    /// Numbers that keep blocking at this load under the target.
    pub recommended_size: u64,
    /// Requests for a new number (sticky re-asks are not new numbers), and how they ended.
    pub requests: u64,
    pub granted: u64,
    pub shared_code: u64,
    pub refused: u64,
    /// The most numbers held (leased or cooling) seen at a request in the window.
    pub peak_in_use: u32,
    /// Mean lease lifetime (of the leases that ended in the window, else in the week, else
    /// the pool's ttl) plus the quarantine: how long a number is held per lease.
    pub lifetime_secs: f64,
    pub holding_secs: f64,
}

impl LoadBody {
    fn new(l: &Load, size: u64, target: f64) -> Self {
        LoadBody {
            from: rfc3339(l.from),
            to: rfc3339(l.to),
            offered_erlangs: round(l.erlangs, 1e3),
            blocking: round(erlang_b(size, l.erlangs), 1e6),
            recommended_size: crate::core::servers_for(l.erlangs, target),
            requests: l.counts.requests(),
            granted: u64::from(l.counts.granted),
            shared_code: u64::from(l.counts.shared),
            refused: u64::from(l.counts.refused),
            peak_in_use: l.counts.peak_in_use,
            lifetime_secs: round(l.lifetime.as_secs_f64(), 1e3),
            holding_secs: round(l.holding.as_secs_f64(), 1e3),
        }
    }
}

/// `GET /v1/pools/{pool}/numbers`: a page of a pool's numbers.
#[derive(Serialize)]
pub struct NumbersBody {
    pub pool: String,
    pub size: usize,
    pub offset: usize,
    pub numbers: Vec<NumberBody>,
}

#[derive(Serialize)]
pub struct NumberBody {
    pub number: String,
    pub display: String,
    /// `free`, `leased` or `cooling`.
    pub state: &'static str,
    pub lease_id: Option<String>,
    pub listing: Option<String>,
    pub expires_at: Option<String>,
}

impl From<&NumberView> for NumberBody {
    fn from(n: &NumberView) -> Self {
        let h = n.holder.as_ref();
        NumberBody {
            number: n.number.to_string(),
            display: n.number.display(),
            state: n.state.as_str(),
            lease_id: h.map(|l| l.id.to_string()),
            listing: h.and_then(|l| l.listing.as_ref().map(|x| x.as_str().to_owned())),
            expires_at: h.map(|l| rfc3339(l.expires_at)),
        }
    }
}

/// What would lower the recommendation besides buying numbers, at the busiest hour's load.
#[derive(Serialize)]
pub struct LeversBody {
    /// `click_to_reveal`, `shorter_quarantine`, or `none` (neither saves a number).
    pub cheapest: &'static str,
    pub click_to_reveal: RevealBody,
    pub shorter_quarantine: QuarantineBody,
}

#[derive(Serialize)]
pub struct RevealBody {
    /// Of the week's leases on pool numbers, the share that had no call by their end (null:
    /// none ended yet). Allocating only when a visitor clicks to reveal the number would
    /// spare those leases.
    pub never_called_share: Option<f64>,
    pub recommended_size: u64,
}

#[derive(Serialize)]
pub struct QuarantineBody {
    /// The shortest quarantine allowed: the pool's grace.
    pub quarantine_secs: u64,
    pub recommended_size: u64,
}

impl CapacityBody {
    pub fn new(pool: String, c: &Capacity) -> Self {
        CapacityBody {
            pool,
            size: c.size,
            blocking_target: c.target,
            recommended_size: c.recommended,
            last_hour: LoadBody::new(&c.last_hour, c.size, c.target),
            busiest_hour: LoadBody::new(&c.busiest_hour, c.size, c.target),
            levers: LeversBody {
                cheapest: c.cheapest().as_str(),
                click_to_reveal: RevealBody {
                    never_called_share: c.never_called_share.map(|s| round(s, 1e4)),
                    recommended_size: c.with_click_to_reveal,
                },
                shorter_quarantine: QuarantineBody {
                    quarantine_secs: c.shortest_quarantine.as_secs(),
                    recommended_size: c.with_shortest_quarantine,
                },
            },
        }
    }
}

/// `x` to the nearest 1/`scale`: estimates read better without 17 digits.
fn round(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumbersParams {
    pub offset: Option<usize>,
    pub limit: Option<usize>,
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
    /// On a ticketing number: what the voice server should say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticketing: Option<TicketingBody>,
}

/// The formula's progress after a call on a ticketing number, and the code once issued.
#[derive(Serialize)]
pub struct TicketingBody {
    pub calls_done: u32,
    pub calls_missing: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl From<TicketingAnswer> for TicketingBody {
    fn from(t: TicketingAnswer) -> Self {
        TicketingBody {
            calls_done: t.calls_done,
            calls_missing: t.calls_missing,
            code: t.code.map(|c| c.to_string()),
        }
    }
}

impl CallStartAnswer {
    pub fn new(c: &Call, pool: Option<String>) -> Self {
        CallStartAnswer {
            ticketing: c.ticketing.map(TicketingBody::from),
            ..Self::from_attribution(c.id.as_str().to_owned(), &c.attribution, pool)
        }
    }

    pub fn from_attribution(call_id: String, a: &Attribution, pool: Option<String>) -> Self {
        CallStartAnswer {
            call_id,
            attributed: a.reason.attributed(),
            reason: a.reason.as_str(),
            pool,
            lease_id: a.lease.map(|l| l.to_string()),
            target: a.target.as_ref().map(ToString::to_string),
            listing: a.listing.as_ref().map(|l| l.as_str().to_owned()),
            ticketing: None,
        }
    }
}

#[derive(Serialize)]
pub struct CallEndAnswer {
    pub call_id: String,
    pub duration_secs: u32,
    /// The call counted toward its lease's `calls` (or its caller's ticketing formula).
    pub counted: bool,
    pub lease_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticketing: Option<TicketingBody>,
    /// What the call cost under its pool's tariff (absent without a tariff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billed_secs: Option<u32>,
}

/// One row of the journal: a call (`kind` = call) or a ticket event (`ticket_issued`,
/// `ticket_redeemed`, `ticket_expired`, with the formula's price).
#[derive(Serialize, Default)]
pub struct JournalRow {
    pub kind: &'static str,
    pub call_id: Option<String>,
    pub pool: Option<String>,
    pub called: Option<String>,
    pub caller: Option<String>,
    pub code: Option<String>,
    pub started_at: String,
    pub reason: Option<&'static str>,
    pub attributed: bool,
    pub lease_id: Option<String>,
    pub listing: Option<String>,
    pub target: Option<String>,
    pub ended_at: Option<String>,
    pub duration_secs: Option<u32>,
    pub counted: bool,
    pub ticket_id: Option<String>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    /// A call's duration rounded up to its tariff's increment (JSON only, like `pass_id` and
    /// `note`: the CSV's columns are kept as they were).
    pub billed_secs: Option<u32>,
    /// The pass a lease or pass event concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_id: Option<String>,
    /// Why: a refund's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl JournalRow {
    pub fn new(row: &StoredRow) -> Self {
        match row {
            StoredRow::Call(row) => {
                let c = &row.call;
                let a = &c.attribution;
                JournalRow {
                    kind: "call",
                    call_id: Some(c.id.as_str().to_owned()),
                    pool: row.pool.clone(),
                    called: Some(c.called.to_string()),
                    caller: c
                        .caller
                        .map(|n| n.to_string())
                        .or(row.caller_hash.map(pseudonym)),
                    code: c.code.map(|x| x.to_string()),
                    started_at: rfc3339(c.started_at),
                    reason: Some(a.reason.as_str()),
                    attributed: a.reason.attributed(),
                    lease_id: a.lease.map(|l| l.to_string()),
                    listing: a.listing.as_ref().map(|l| l.as_str().to_owned()),
                    target: a.target.as_ref().map(ToString::to_string),
                    ended_at: c.end.map(|e| rfc3339(e.at)),
                    duration_secs: c.end.map(|e| e.duration_secs),
                    counted: c.counted,
                    ticket_id: c.ticketing.and_then(|t| t.ticket).map(|t| t.to_string()),
                    billed_secs: c.charge.map(|x| x.billed_secs),
                    amount: c.charge.map(|x| x.amount.to_string()),
                    currency: c.charge.map(|x| x.currency.to_string()),
                    ..JournalRow::default()
                }
            }
            StoredRow::Event(row) => {
                let e = &row.event;
                JournalRow {
                    kind: e.kind.as_str(),
                    pool: Some(row.pool.clone()),
                    started_at: rfc3339(e.at),
                    lease_id: e.lease.map(|l| l.to_string()),
                    listing: e.listing.as_ref().map(|l| l.as_str().to_owned()),
                    amount: e.amount.map(|a| a.to_string()),
                    currency: e.currency.map(|c| c.to_string()),
                    pass_id: e.pass.map(|p| p.to_string()),
                    note: e.note.clone(),
                    ..JournalRow::default()
                }
            }
            StoredRow::Ticket(t) => {
                let e = &t.event;
                let (amount, currency) = e.ticket.price.clone().unzip();
                JournalRow {
                    kind: e.kind.as_str(),
                    pool: Some(t.pool.clone()),
                    caller: e
                        .ticket
                        .caller
                        .map(|n| n.to_string())
                        .or(t.caller_hash.map(pseudonym)),
                    started_at: rfc3339(e.at),
                    ticket_id: Some(e.ticket.id.to_string()),
                    amount,
                    currency,
                    ..JournalRow::default()
                }
            }
        }
    }

    pub const CSV_HEADER: &'static str = "call_id,pool,called,caller,code,started_at,reason,attributed,lease_id,listing,target,ended_at,duration_secs,counted,kind,ticket_id,amount,currency";

    /// One CSV line (RFC 4180 quoting where a field needs it). New columns go at the end.
    /// Every text cell goes through [`csv_cell`], so no cell opens as a formula in a
    /// spreadsheet.
    pub fn csv(&self) -> String {
        let q = csv_cell;
        let o = |v: &Option<String>| v.as_deref().map(q).unwrap_or_default();
        [
            o(&self.call_id),
            o(&self.pool),
            o(&self.called),
            o(&self.caller),
            o(&self.code),
            q(&self.started_at),
            self.reason.unwrap_or_default().to_owned(),
            self.attributed.to_string(),
            o(&self.lease_id),
            o(&self.listing),
            o(&self.target),
            o(&self.ended_at),
            self.duration_secs
                .map(|d| d.to_string())
                .unwrap_or_default(),
            self.counted.to_string(),
            self.kind.to_owned(),
            o(&self.ticket_id),
            o(&self.amount),
            o(&self.currency),
        ]
        .join(",")
    }
}

/// A caller's number replaced by the journal's retention: `anon:` and the keyed hash in hex.
fn pseudonym(h: crate::store::Pseudonym) -> String {
    format!("anon:{}", hex::encode(h))
}

/// One CSV cell, safe to open in a spreadsheet: a cell that starts with `=`, `+`, `-`, `@`,
/// a tab or a carriage return would be read as a formula (`=HYPERLINK(…)` in a listing sent
/// by a page), so it gets a leading `'` (OWASP's advice). A plain E.164 number (`+` and
/// digits only) is left as it is: it cannot call anything, and billing needs the callers'
/// numbers as they are. Then RFC 4180 quoting where the cell needs it.
pub fn csv_cell(s: &str) -> String {
    let plain_number = s
        .strip_prefix('+')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']) && !plain_number;
    let s = if formula {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
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

#[derive(Serialize)]
pub struct PassBody {
    pub pass_id: String,
    pub pool: String,
    /// Whether access is granted now.
    pub valid: bool,
    pub created_at: String,
    pub access_until: String,
    pub revoked_at: Option<String>,
}

impl From<&PassView> for PassBody {
    fn from(v: &PassView) -> Self {
        PassBody {
            pass_id: v.pass.id.to_string(),
            pool: v.pool.clone(),
            valid: v.valid,
            created_at: rfc3339(v.pass.created_at),
            access_until: rfc3339(v.pass.access_until),
            revoked_at: v.pass.revoked_at.map(rfc3339),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketRedeemBody {
    pub code: String,
    /// Who is typing the code (the visitor's session, as the site knows it; at most 128
    /// bytes): wrong codes are slowed per client.
    pub client: Option<String>,
    /// The visitor's address as the site saw it: wrong codes are slowed per address and per
    /// prefix. Without it, the request's own address counts (the site's server, so one
    /// visitor's wrong codes would slow every visitor of the site).
    pub client_ip: Option<String>,
}

#[derive(Serialize)]
pub struct FormulaBody {
    pub calls_required: u32,
    pub min_call_secs: u32,
    pub window_secs: u64,
}

#[derive(Serialize)]
pub struct TicketBody {
    pub ticket_id: String,
    pub pool: String,
    pub formula: Option<FormulaBody>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub calls: u32,
    pub issued_at: String,
    pub redeemed_at: Option<String>,
    pub pass_id: Option<String>,
    pub access_until: Option<String>,
}

impl From<&TicketView> for TicketBody {
    fn from(v: &TicketView) -> Self {
        let t = &v.ticket;
        let (amount, currency) = t.price.clone().unzip();
        TicketBody {
            ticket_id: t.id.to_string(),
            pool: v.pool.clone(),
            formula: v.formula.as_ref().map(|f| FormulaBody {
                calls_required: f.calls_required,
                min_call_secs: f.min_call_secs,
                window_secs: f.window.as_secs(),
            }),
            amount,
            currency,
            calls: t.calls,
            issued_at: rfc3339(t.issued_at),
            redeemed_at: t.redeemed_at.map(rfc3339),
            pass_id: v.pass.as_ref().map(|p| p.pass.id.to_string()),
            access_until: v.pass.as_ref().map(|p| rfc3339(p.pass.access_until)),
        }
    }
}

/// Where a listing's calls go.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListingBody {
    pub target: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupParams {
    pub called: String,
    pub caller: Option<String>,
    pub code: Option<String>,
    pub at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn csv_cells_never_open_as_formulas_but_numbers_stay_numbers() {
        assert_eq!(
            csv_cell("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        for (cell, safe) in [
            ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "\"'\rx\""),
            ("+", "'+"),
            ("+33 6", "'+33 6"),
            ("+33612345678", "+33612345678"),
            ("car-1234", "car-1234"),
            ("sip:desk@example.com", "sip:desk@example.com"),
            ("", ""),
        ] {
            assert_eq!(csv_cell(cell), safe, "{cell:?}");
        }
    }
}

//! On-disk forms: versioned records, converted explicitly from and to core types. Pools are
//! stored by name (ids are per process), numbers and times as integers.

use serde::{Deserialize, Serialize};

use crate::core::{
    Attribution, Bucket, Call, CallEnd, CallId, Charge, Code, Currency, EndReason, EventKind,
    JournalEvent, Lease, LeaseEnd, LeaseId, ListingId, Money, Pass, PassId, PassSource,
    PhoneNumber, PoolId, Progress, ProgressKey, Reason, ReturnKey, ReturnRoute, SessionId, Target,
    TenantId, Ticket, TicketCode, TicketEvent, TicketEventKind, TicketId, TicketingAnswer,
    Timestamp,
};

/// First byte of every value: bump it (and keep a reader for the old one) when a record
/// changes shape. Records that never changed are at 1; see each record for its own.
const VERSION: u8 = 1;

/// Why a stored record could not be read back.
#[derive(Debug)]
pub enum DecodeError {
    /// The record names a pool that is no longer configured.
    UnknownPool,
    Invalid(String),
}

fn wrap<T: Serialize>(r: &T) -> Vec<u8> {
    wrap_as(VERSION, r)
}

fn wrap_as<T: Serialize>(version: u8, r: &T) -> Vec<u8> {
    let mut out = vec![version];
    out.extend(postcard::to_allocvec(r).expect("a record always serialises"));
    out
}

/// The version byte and the body after it.
fn split<'a>(what: &str, bytes: &'a [u8]) -> Result<(u8, &'a [u8]), DecodeError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| invalid(what, "empty record"))?;
    Ok((version, body))
}

fn body<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(body).map_err(|e| invalid(what, e))
}

fn unknown_version(what: &str, version: u8) -> DecodeError {
    invalid(
        what,
        format!("record version {version} is not one this build reads"),
    )
}

fn unwrap<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, DecodeError> {
    match split(what, bytes)? {
        (VERSION, b) => body(what, b),
        (v, _) => Err(unknown_version(what, v)),
    }
}

fn invalid(what: &str, m: impl std::fmt::Display) -> DecodeError {
    DecodeError::Invalid(format!("{what}: {m}"))
}

fn number(what: &str, d: u64) -> Result<PhoneNumber, DecodeError> {
    PhoneNumber::from_digits(d).ok_or_else(|| invalid(what, "bad number"))
}

fn target(what: &str, t: Option<String>) -> Result<Option<Target>, DecodeError> {
    t.as_deref()
        .map(Target::parse)
        .transpose()
        .map_err(|e| invalid(what, e))
}

fn listing(what: &str, l: Option<String>) -> Result<Option<ListingId>, DecodeError> {
    l.as_deref()
        .map(ListingId::parse)
        .transpose()
        .map_err(|e| invalid(what, e))
}

// ---- leases ----------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct LeaseRecordV1 {
    tenant: String,
    pool: String,
    number: u64,
    session: String,
    listing: Option<String>,
    target: Option<String>,
    caller: Option<u64>,
    created_at: u64,
    expires_at: u64,
    /// (when, 0 = expired / 1 = released)
    end: Option<(u64, u8)>,
    freed: bool,
    calls_required: u32,
    min_call_secs: u32,
    calls: u32,
    redeemed_at: Option<u64>,
    code: Option<u16>,
    first_call_at: Option<u64>,
    pass: Option<[u8; 16]>,
}

/// Version 2 of a lease: version 1's fields, then whether a page made it. Version 1 records
/// (written before pages had a share) read as made by a server.
#[derive(Serialize, Deserialize)]
struct LeaseRecordV2 {
    v1: LeaseRecordV1,
    from_page: bool,
}

/// Version 3 of a lease: version 2's, then money: the amount asked (cents), the amount its
/// counted calls paid and the refunds recorded. Older records read as asking no amount,
/// nothing paid or refunded.
#[derive(Serialize, Deserialize)]
struct LeaseRecordV3 {
    v2: LeaseRecordV2,
    amount: Option<i64>,
    amount_paid: i64,
    refunded: i64,
}

const LEASE_VERSION: u8 = 3;

pub fn encode_lease(lease: &Lease, pool_name: &str) -> Vec<u8> {
    let v1 = LeaseRecordV1 {
        tenant: lease.tenant.as_str().to_owned(),
        pool: pool_name.to_owned(),
        number: lease.number.digits(),
        session: lease.session.as_str().to_owned(),
        listing: lease.listing.as_ref().map(|l| l.as_str().to_owned()),
        target: lease.target.as_ref().map(Target::to_string),
        caller: lease.caller.map(PhoneNumber::digits),
        created_at: lease.created_at.as_millis(),
        expires_at: lease.expires_at.as_millis(),
        end: lease.end.map(|e| {
            let reason = match e.reason {
                EndReason::Expired => 0,
                EndReason::Released => 1,
            };
            (e.at.as_millis(), reason)
        }),
        freed: lease.freed,
        calls_required: lease.calls_required,
        min_call_secs: lease.min_call_secs,
        calls: lease.calls,
        redeemed_at: lease.redeemed_at.map(Timestamp::as_millis),
        code: lease.code.map(Code::value),
        first_call_at: lease.first_call_at.map(Timestamp::as_millis),
        pass: lease.pass.map(|p| p.0),
    };
    wrap_as(
        LEASE_VERSION,
        &LeaseRecordV3 {
            v2: LeaseRecordV2 {
                v1,
                from_page: lease.from_page,
            },
            amount: lease.amount.map(Money::cents),
            amount_paid: lease.amount_paid.cents(),
            refunded: lease.refunded.cents(),
        },
    )
}

pub fn decode_lease(
    id: LeaseId,
    bytes: &[u8],
    pool_id: impl Fn(&str) -> Option<PoolId>,
) -> Result<Lease, DecodeError> {
    let what = format!("lease {id}");
    let what = what.as_str();
    let money = |v2| LeaseRecordV3 {
        v2,
        amount: None,
        amount_paid: 0,
        refunded: 0,
    };
    let LeaseRecordV3 {
        v2: LeaseRecordV2 { v1: r, from_page },
        amount,
        amount_paid,
        refunded,
    } = match split(what, bytes)? {
        (1, b) => money(LeaseRecordV2 {
            v1: body(what, b)?,
            from_page: false,
        }),
        (2, b) => money(body(what, b)?),
        (LEASE_VERSION, b) => body(what, b)?,
        (v, _) => return Err(unknown_version(what, v)),
    };
    let pool = pool_id(&r.pool).ok_or(DecodeError::UnknownPool)?;
    let label = |e: crate::core::ParseError| invalid(what, e);
    Ok(Lease {
        id,
        tenant: TenantId::parse(&r.tenant).map_err(label)?,
        pool,
        number: number(what, r.number)?,
        session: SessionId::parse(&r.session).map_err(label)?,
        listing: listing(what, r.listing)?,
        target: target(what, r.target)?,
        caller: r.caller.map(|c| number(what, c)).transpose()?,
        created_at: Timestamp::from_millis(r.created_at),
        expires_at: Timestamp::from_millis(r.expires_at),
        end: r
            .end
            .map(|(at, reason)| {
                let reason = match reason {
                    0 => EndReason::Expired,
                    1 => EndReason::Released,
                    _ => return Err(invalid(what, "bad end reason")),
                };
                Ok(LeaseEnd {
                    at: Timestamp::from_millis(at),
                    reason,
                })
            })
            .transpose()?,
        freed: r.freed,
        calls_required: r.calls_required,
        min_call_secs: r.min_call_secs,
        calls: r.calls,
        amount: amount.map(Money::from_cents),
        amount_paid: Money::from_cents(amount_paid),
        refunded: Money::from_cents(refunded),
        redeemed_at: r.redeemed_at.map(Timestamp::from_millis),
        code: r
            .code
            .map(|c| Code::new(c).ok_or_else(|| invalid(what, "bad code")))
            .transpose()?,
        first_call_at: r.first_call_at.map(Timestamp::from_millis),
        pass: r.pass.map(PassId),
        from_page,
    })
}

// ---- calls -----------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct CallRecordV1 {
    id: String,
    pool: Option<String>,
    called: u64,
    caller: Option<u64>,
    code: Option<u16>,
    started_at: u64,
    reason: String,
    lease: Option<[u8; 16]>,
    target: Option<String>,
    listing: Option<String>,
    /// (at, duration_secs)
    end: Option<(u64, u32)>,
    counted: bool,
    ticketing: Option<TicketingRecordV1>,
}

/// (calls_done, calls_missing, code, ticket id)
type TicketingRecordV1 = (u32, u32, Option<u32>, Option<[u8; 16]>);

/// Version 2 of a call: version 1's fields, then what it cost once ended, as (billed
/// seconds, cents, currency), and the caller's pseudonym once the journal's retention has
/// replaced the caller's number (then `v1.caller` is `None`). Version 1 records (written
/// before amounts) read with no charge: the journal computes theirs from the pool's tariff
/// where it can.
#[derive(Serialize, Deserialize)]
struct CallRecordV2 {
    v1: CallRecordV1,
    charge: Option<(u32, i64, [u8; 3])>,
    caller_hash: Option<Pseudonym>,
}

const CALL_VERSION: u8 = 2;

/// A caller's number once the journal's retention is over: a keyed hash (HMAC-SHA256 under
/// the store's own key, first 12 bytes): the same caller always gets the same pseudonym, so
/// rows still group by caller, but the number cannot be read back from it.
pub type Pseudonym = [u8; 12];

/// A journal row: a call as stored, with its pool by name (it may no longer be configured).
#[derive(Clone, Debug)]
pub struct CallRow {
    pub pool: Option<String>,
    pub call: Call,
    /// The caller's pseudonym, when retention replaced the number (`call.caller` is `None`).
    pub caller_hash: Option<Pseudonym>,
}

fn call_record(bytes: &[u8]) -> Result<CallRecordV2, DecodeError> {
    match split("call", bytes)? {
        (1, b) => Ok(CallRecordV2 {
            v1: body("call", b)?,
            charge: None,
            caller_hash: None,
        }),
        (CALL_VERSION, b) => body("call", b),
        (v, _) => Err(unknown_version("call", v)),
    }
}

/// The call record `bytes` with its caller's number replaced by `hash(number)`; `None` when
/// it holds no number (none given, or already replaced).
pub fn pseudonymize_call(
    bytes: &[u8],
    hash: impl Fn(u64) -> Pseudonym,
) -> Result<Option<Vec<u8>>, DecodeError> {
    let mut r = call_record(bytes)?;
    let Some(caller) = r.v1.caller.take() else {
        return Ok(None);
    };
    r.caller_hash = Some(hash(caller));
    Ok(Some(wrap_as(CALL_VERSION, &r)))
}

pub fn encode_call(call: &Call, pool_name: Option<&str>) -> Vec<u8> {
    let a = &call.attribution;
    let v1 = CallRecordV1 {
        id: call.id.as_str().to_owned(),
        pool: pool_name.map(str::to_owned),
        called: call.called.digits(),
        caller: call.caller.map(PhoneNumber::digits),
        code: call.code.map(Code::value),
        started_at: call.started_at.as_millis(),
        reason: a.reason.as_str().to_owned(),
        lease: a.lease.map(|l| *l.as_bytes()),
        target: a.target.as_ref().map(Target::to_string),
        listing: a.listing.as_ref().map(|l| l.as_str().to_owned()),
        end: call.end.map(|e| (e.at.as_millis(), e.duration_secs)),
        counted: call.counted,
        ticketing: call.ticketing.map(|t| {
            (
                t.calls_done,
                t.calls_missing,
                t.code.map(TicketCode::value),
                t.ticket.map(|x| x.0),
            )
        }),
    };
    let charge = call
        .charge
        .map(|c| (c.billed_secs, c.amount.cents(), currency_bytes(c.currency)));
    wrap_as(
        CALL_VERSION,
        &CallRecordV2 {
            v1,
            charge,
            caller_hash: None,
        },
    )
}

/// Decodes a call; its attribution's pool id is `None` if the pool is no longer configured.
pub fn decode_call(
    bytes: &[u8],
    pool_id: impl Fn(&str) -> Option<PoolId>,
) -> Result<CallRow, DecodeError> {
    let CallRecordV2 {
        v1: r,
        charge,
        caller_hash,
    } = call_record(bytes)?;
    let what = format!("call {:?}", r.id);
    let what = what.as_str();
    let charge = charge
        .map(|(billed_secs, cents, cur)| {
            let currency = currency_from(what, cur)?;
            Ok::<_, DecodeError>(Charge {
                billed_secs,
                amount: Money::from_cents(cents),
                currency,
            })
        })
        .transpose()?;
    Ok(CallRow {
        caller_hash,
        call: Call {
            id: CallId::parse(&r.id).map_err(|e| invalid(what, e))?,
            called: number(what, r.called)?,
            caller: r.caller.map(|c| number(what, c)).transpose()?,
            code: r
                .code
                .map(|c| Code::new(c).ok_or_else(|| invalid(what, "bad code")))
                .transpose()?,
            started_at: Timestamp::from_millis(r.started_at),
            attribution: Attribution {
                reason: Reason::parse(&r.reason).ok_or_else(|| invalid(what, "bad reason"))?,
                pool: r.pool.as_deref().and_then(&pool_id),
                lease: r.lease.map(LeaseId::from_bytes),
                target: target(what, r.target)?,
                listing: listing(what, r.listing)?,
            },
            end: r.end.map(|(at, d)| CallEnd {
                at: Timestamp::from_millis(at),
                duration_secs: d,
            }),
            charge,
            counted: r.counted,
            ticketing: r
                .ticketing
                .map(|(done, missing, code, ticket)| {
                    Ok::<_, DecodeError>(TicketingAnswer {
                        calls_done: done,
                        calls_missing: missing,
                        code: code
                            .map(|c| TicketCode::new(c).ok_or_else(|| invalid(what, "bad code")))
                            .transpose()?,
                        ticket: ticket.map(TicketId),
                    })
                })
                .transpose()?,
        },
        pool: r.pool,
    })
}

// ---- return routes ---------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct ReturnRecordV1 {
    lease: [u8; 16],
    listing: String,
    target: Option<String>,
    first_at: u64,
    until: u64,
}

pub fn encode_return(r: &ReturnRoute) -> Vec<u8> {
    wrap(&ReturnRecordV1 {
        lease: *r.lease.as_bytes(),
        listing: r.listing.as_str().to_owned(),
        target: r.target.as_ref().map(Target::to_string),
        first_at: r.first_at.as_millis(),
        until: r.until.as_millis(),
    })
}

pub fn decode_return(key: ReturnKey, bytes: &[u8]) -> Result<ReturnRoute, DecodeError> {
    let what = "return route";
    let r: ReturnRecordV1 = unwrap(what, bytes)?;
    Ok(ReturnRoute {
        key,
        lease: LeaseId::from_bytes(r.lease),
        listing: ListingId::parse(&r.listing).map_err(|e| invalid(what, e))?,
        target: target(what, r.target)?,
        first_at: Timestamp::from_millis(r.first_at),
        until: Timestamp::from_millis(r.until),
    })
}

// ---- tickets, passes, progress ---------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct TicketRecordV1 {
    code: u32,
    pool: String,
    caller: Option<u64>,
    issued_at: u64,
    expires_at: u64,
    calls: u32,
    redeemed_at: Option<u64>,
    pass: Option<[u8; 16]>,
    expiry_noted: bool,
    price: Option<(String, String)>,
}

fn ticket_record(t: &Ticket, pool: &str) -> TicketRecordV1 {
    TicketRecordV1 {
        code: t.code.value(),
        pool: pool.to_owned(),
        caller: t.caller.map(PhoneNumber::digits),
        issued_at: t.issued_at.as_millis(),
        expires_at: t.expires_at.as_millis(),
        calls: t.calls,
        redeemed_at: t.redeemed_at.map(Timestamp::as_millis),
        pass: t.pass.map(|p| p.0),
        expiry_noted: t.expiry_noted,
        price: t.price.clone(),
    }
}

fn ticket_from(
    id: TicketId,
    r: TicketRecordV1,
    pool_id: impl Fn(&str) -> Option<PoolId>,
) -> Result<Ticket, DecodeError> {
    let what = "ticket";
    Ok(Ticket {
        id,
        code: TicketCode::new(r.code).ok_or_else(|| invalid(what, "bad code"))?,
        pool: pool_id(&r.pool).ok_or(DecodeError::UnknownPool)?,
        caller: r.caller.map(|c| number(what, c)).transpose()?,
        issued_at: Timestamp::from_millis(r.issued_at),
        expires_at: Timestamp::from_millis(r.expires_at),
        calls: r.calls,
        redeemed_at: r.redeemed_at.map(Timestamp::from_millis),
        pass: r.pass.map(PassId),
        expiry_noted: r.expiry_noted,
        price: r.price,
    })
}

pub fn encode_ticket(t: &Ticket, pool: &str) -> Vec<u8> {
    wrap(&ticket_record(t, pool))
}

pub fn decode_ticket(
    id: TicketId,
    bytes: &[u8],
    pool_id: impl Fn(&str) -> Option<PoolId>,
) -> Result<Ticket, DecodeError> {
    ticket_from(id, unwrap("ticket", bytes)?, pool_id)
}

#[derive(Serialize, Deserialize)]
struct PassRecordV1 {
    pool: String,
    tenant: String,
    /// (0 = ticket / 1 = lease, id)
    source: (u8, [u8; 16]),
    created_at: u64,
    access_until: u64,
    revoked_at: Option<u64>,
}

pub fn encode_pass(p: &Pass, pool: &str) -> Vec<u8> {
    wrap(&PassRecordV1 {
        pool: pool.to_owned(),
        tenant: p.tenant.as_str().to_owned(),
        source: match p.source {
            PassSource::Ticket(t) => (0, t.0),
            PassSource::Lease(l) => (1, *l.as_bytes()),
        },
        created_at: p.created_at.as_millis(),
        access_until: p.access_until.as_millis(),
        revoked_at: p.revoked_at.map(Timestamp::as_millis),
    })
}

pub fn decode_pass(
    id: PassId,
    bytes: &[u8],
    pool_id: impl Fn(&str) -> Option<PoolId>,
) -> Result<Pass, DecodeError> {
    let what = "pass";
    let r: PassRecordV1 = unwrap(what, bytes)?;
    Ok(Pass {
        id,
        pool: pool_id(&r.pool).ok_or(DecodeError::UnknownPool)?,
        tenant: TenantId::parse(&r.tenant).map_err(|e| invalid(what, e))?,
        source: match r.source {
            (0, t) => PassSource::Ticket(TicketId(t)),
            (1, l) => PassSource::Lease(LeaseId::from_bytes(l)),
            _ => return Err(invalid(what, "bad source")),
        },
        created_at: Timestamp::from_millis(r.created_at),
        access_until: Timestamp::from_millis(r.access_until),
        revoked_at: r.revoked_at.map(Timestamp::from_millis),
    })
}

#[derive(Serialize, Deserialize)]
struct ProgressRecordV1 {
    calls_done: u32,
    window_start: u64,
}

pub fn encode_progress(p: &Progress) -> Vec<u8> {
    wrap(&ProgressRecordV1 {
        calls_done: p.calls_done,
        window_start: p.window_start.as_millis(),
    })
}

pub fn decode_progress(key: ProgressKey, bytes: &[u8]) -> Result<Progress, DecodeError> {
    let r: ProgressRecordV1 = unwrap("progress", bytes)?;
    Ok(Progress {
        key,
        calls_done: r.calls_done,
        window_start: Timestamp::from_millis(r.window_start),
    })
}

// ---- traffic -----------------------------------------------------------------------------

/// A pool's traffic counts in one bucket (the key names the pool and the bucket).
#[derive(Serialize, Deserialize)]
struct TrafficRecordV1 {
    granted: u32,
    shared: u32,
    refused: u32,
    ended: u32,
    held_ms: u64,
    never_called: u32,
    peak_in_use: u32,
}

pub fn encode_traffic(b: &Bucket) -> Vec<u8> {
    wrap(&TrafficRecordV1 {
        granted: b.granted,
        shared: b.shared,
        refused: b.refused,
        ended: b.ended,
        held_ms: b.held_ms,
        never_called: b.never_called,
        peak_in_use: b.peak_in_use,
    })
}

pub fn decode_traffic(bytes: &[u8]) -> Result<Bucket, DecodeError> {
    let r: TrafficRecordV1 = unwrap("traffic", bytes)?;
    Ok(Bucket {
        granted: r.granted,
        shared: r.shared,
        refused: r.refused,
        ended: r.ended,
        held_ms: r.held_ms,
        never_called: r.never_called,
        peak_in_use: r.peak_in_use,
    })
}

#[derive(Serialize, Deserialize)]
struct TicketEventRecordV1 {
    kind: u8,
    at: u64,
    ticket_id: [u8; 16],
    ticket: TicketRecordV1,
}

/// Version 2 of a ticket event: version 1's, then the caller's pseudonym once the journal's
/// retention has replaced the number (then `ticket.caller` is `None`).
#[derive(Serialize, Deserialize)]
struct TicketEventRecordV2 {
    v1: TicketEventRecordV1,
    caller_hash: Option<Pseudonym>,
}

fn ticket_event_record(bytes: &[u8]) -> Result<TicketEventRecordV2, DecodeError> {
    match split("ticket event", bytes)? {
        (1, b) => Ok(TicketEventRecordV2 {
            v1: body("ticket event", b)?,
            caller_hash: None,
        }),
        (2, b) => body("ticket event", b),
        (v, _) => Err(unknown_version("ticket event", v)),
    }
}

/// As [`pseudonymize_call`], for a ticket event.
pub fn pseudonymize_ticket_event(
    bytes: &[u8],
    hash: impl Fn(u64) -> Pseudonym,
) -> Result<Option<Vec<u8>>, DecodeError> {
    let mut r = ticket_event_record(bytes)?;
    let Some(caller) = r.v1.ticket.caller.take() else {
        return Ok(None);
    };
    r.caller_hash = Some(hash(caller));
    Ok(Some(wrap_as(2, &r)))
}

/// A journal row about a ticket, with its pool by name.
#[derive(Clone, Debug)]
pub struct TicketRow {
    pub pool: String,
    pub event: TicketEvent,
    /// The caller's pseudonym, when retention replaced the number.
    pub caller_hash: Option<Pseudonym>,
}

pub fn encode_ticket_event(e: &TicketEvent, pool: &str) -> Vec<u8> {
    wrap(&TicketEventRecordV1 {
        kind: match e.kind {
            TicketEventKind::Issued => 0,
            TicketEventKind::Redeemed => 1,
            TicketEventKind::Expired => 2,
        },
        at: e.at.as_millis(),
        ticket_id: e.ticket.id.0,
        ticket: ticket_record(&e.ticket, pool),
    })
}

/// Decodes a ticket event; its pool may no longer be configured (it is kept by name, and
/// the ticket's pool id is then meaningless: `PoolId(u32::MAX)`).
pub fn decode_ticket_event(
    bytes: &[u8],
    pool_id: impl Fn(&str) -> Option<PoolId>,
) -> Result<TicketRow, DecodeError> {
    let TicketEventRecordV2 { v1: r, caller_hash } = ticket_event_record(bytes)?;
    let pool = r.ticket.pool.clone();
    let kind = match r.kind {
        0 => TicketEventKind::Issued,
        1 => TicketEventKind::Redeemed,
        2 => TicketEventKind::Expired,
        _ => return Err(invalid("ticket event", "bad kind")),
    };
    let ticket = ticket_from(TicketId(r.ticket_id), r.ticket, |n| {
        Some(pool_id(n).unwrap_or(PoolId(u32::MAX)))
    })?;
    Ok(TicketRow {
        pool,
        caller_hash,
        event: TicketEvent {
            kind,
            at: Timestamp::from_millis(r.at),
            ticket,
        },
    })
}

// ---- lease and pass events -------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct JournalEventRecordV1 {
    kind: u8,
    at: u64,
    pool: String,
    tenant: String,
    lease: Option<[u8; 16]>,
    pass: Option<[u8; 16]>,
    listing: Option<String>,
    amount: Option<i64>,
    currency: Option<[u8; 3]>,
    note: Option<String>,
}

/// A journal row about a lease or a pass, with its pool by name.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub pool: String,
    pub event: JournalEvent,
}

fn currency_bytes(c: Currency) -> [u8; 3] {
    let b = c.as_str().as_bytes();
    [b[0], b[1], b[2]]
}

fn currency_from(what: &str, b: [u8; 3]) -> Result<Currency, DecodeError> {
    std::str::from_utf8(&b)
        .ok()
        .and_then(|c| Currency::parse(c).ok())
        .ok_or_else(|| invalid(what, "bad currency"))
}

pub fn encode_journal_event(e: &JournalEvent, pool: &str) -> Vec<u8> {
    wrap(&JournalEventRecordV1 {
        kind: e.kind.code(),
        at: e.at.as_millis(),
        pool: pool.to_owned(),
        tenant: e.tenant.as_str().to_owned(),
        lease: e.lease.map(|l| *l.as_bytes()),
        pass: e.pass.map(|p| p.0),
        listing: e.listing.as_ref().map(|l| l.as_str().to_owned()),
        amount: e.amount.map(Money::cents),
        currency: e.currency.map(currency_bytes),
        note: e.note.clone(),
    })
}

/// Decodes a lease or pass event, under its journal id; its pool may no longer be configured
/// (then its id is `PoolId(u32::MAX)`; the row names it by `pool`).
pub fn decode_journal_event(
    id: [u8; 16],
    bytes: &[u8],
    pool_id: impl Fn(&str) -> Option<PoolId>,
) -> Result<EventRow, DecodeError> {
    let what = "journal event";
    let r: JournalEventRecordV1 = unwrap(what, bytes)?;
    Ok(EventRow {
        event: JournalEvent {
            id,
            kind: EventKind::from_code(r.kind).ok_or_else(|| invalid(what, "bad kind"))?,
            at: Timestamp::from_millis(r.at),
            pool: pool_id(&r.pool).unwrap_or(PoolId(u32::MAX)),
            tenant: TenantId::parse(&r.tenant).map_err(|e| invalid(what, e))?,
            lease: r.lease.map(LeaseId::from_bytes),
            pass: r.pass.map(PassId),
            listing: listing(what, r.listing)?,
            amount: r.amount.map(Money::from_cents),
            currency: r.currency.map(|c| currency_from(what, c)).transpose()?,
            note: r.note,
        },
        pool: r.pool,
    })
}

// ---- listing targets -------------------------------------------------------------------

pub fn encode_target(t: &Target) -> Vec<u8> {
    wrap(&t.to_string())
}

pub fn decode_target(bytes: &[u8]) -> Result<Target, DecodeError> {
    let s: String = unwrap("listing target", bytes)?;
    Target::parse(&s).map_err(|e| invalid("listing target", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(from_page: bool) -> Lease {
        Lease {
            id: LeaseId::from_bytes([7; 16]),
            tenant: TenantId::parse("site").unwrap(),
            pool: PoolId(0),
            number: PhoneNumber::parse("+33899100042").unwrap(),
            session: SessionId::parse("s").unwrap(),
            listing: None,
            target: None,
            caller: None,
            created_at: Timestamp::from_millis(1_000),
            expires_at: Timestamp::from_millis(2_000),
            end: None,
            freed: false,
            calls_required: 1,
            min_call_secs: 0,
            calls: 0,
            amount: None,
            amount_paid: crate::core::Money::ZERO,
            refunded: crate::core::Money::ZERO,
            redeemed_at: None,
            code: None,
            first_call_at: None,
            pass: None,
            from_page,
        }
    }

    fn pool(name: &str) -> Option<PoolId> {
        (name == "fr").then_some(PoolId(0))
    }

    #[test]
    fn a_lease_keeps_whether_a_page_made_it() {
        for from_page in [false, true] {
            let l = lease(from_page);
            assert_eq!(
                decode_lease(l.id, &encode_lease(&l, "fr"), pool).unwrap(),
                l
            );
        }
    }

    #[test]
    fn a_version_1_lease_still_reads_as_made_by_a_server() {
        let l = lease(true);
        let v2 = encode_lease(&l, "fr");
        let LeaseRecordV2 { v1, .. } = postcard::from_bytes(&v2[1..]).unwrap();
        let old = wrap_as(1, &v1);
        let read = decode_lease(l.id, &old, pool).unwrap();
        assert!(!read.from_page);
        assert_eq!(
            read,
            Lease {
                from_page: false,
                ..l
            }
        );
        let future = [&[9u8][..], &v2[1..]].concat();
        assert!(matches!(
            decode_lease(l.id, &future, pool),
            Err(DecodeError::Invalid(m)) if m.contains("version 9")
        ));
    }

    #[test]
    fn a_lease_keeps_its_money_and_older_versions_read_as_owing_none() {
        let l = Lease {
            amount: Some(Money::from_cents(500)),
            amount_paid: Money::from_cents(522),
            refunded: Money::from_cents(100),
            ..lease(false)
        };
        let v3 = encode_lease(&l, "fr");
        assert_eq!(v3[0], 3);
        assert_eq!(decode_lease(l.id, &v3, pool).unwrap(), l);
        let LeaseRecordV3 { v2, .. } = postcard::from_bytes(&v3[1..]).unwrap();
        let read = decode_lease(l.id, &wrap_as(2, &v2), pool).unwrap();
        assert_eq!(
            read,
            Lease {
                amount: None,
                amount_paid: Money::ZERO,
                refunded: Money::ZERO,
                ..l
            }
        );
    }

    fn call(charge: Option<Charge>) -> Call {
        Call {
            id: CallId::parse("c-1").unwrap(),
            called: PhoneNumber::parse("+33899100042").unwrap(),
            caller: PhoneNumber::parse("+33612345678").ok(),
            code: None,
            started_at: Timestamp::from_millis(1_000),
            attribution: Attribution {
                reason: Reason::NotLeased,
                pool: Some(PoolId(0)),
                lease: None,
                target: None,
                listing: None,
            },
            end: Some(CallEnd {
                at: Timestamp::from_millis(61_000),
                duration_secs: 60,
            }),
            charge,
            counted: false,
            ticketing: None,
        }
    }

    #[test]
    fn a_call_keeps_its_charge_and_version_1_calls_read_without_one() {
        let priced = call(Some(Charge {
            billed_secs: 60,
            amount: Money::from_cents(313),
            currency: Currency::parse("CHF").unwrap(),
        }));
        let v2 = encode_call(&priced, Some("fr"));
        assert_eq!(v2[0], 2);
        assert_eq!(decode_call(&v2, pool).unwrap().call, priced);
        let CallRecordV2 { v1, .. } = postcard::from_bytes(&v2[1..]).unwrap();
        let read = decode_call(&wrap_as(1, &v1), pool).unwrap();
        assert_eq!(read.call, call(None));
        // Retention replaces the number by its pseudonym, once; the rest stays.
        let hidden = pseudonymize_call(&v2, |d| {
            assert_eq!(d, 33612345678);
            [7; 12]
        })
        .unwrap()
        .unwrap();
        let read = decode_call(&hidden, pool).unwrap();
        assert_eq!((read.call.caller, read.caller_hash), (None, Some([7; 12])));
        assert_eq!(read.call.charge, priced.charge);
        assert_eq!(pseudonymize_call(&hidden, |_| [8; 12]).unwrap(), None);
        assert!(pseudonymize_call(&wrap_as(1, &v1), |_| [9; 12])
            .unwrap()
            .is_some());
        let mut bad = v2.clone();
        let n = bad.len();
        // the currency's three bytes, before the (absent) pseudonym's one
        bad[n - 4..n - 1].copy_from_slice(b"e\x00r");
        assert!(decode_call(&bad, pool).is_err());
    }
}

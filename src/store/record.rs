//! The on-disk form of a lease: a versioned record, converted explicitly from and to the core's
//! [`Lease`]. Pools are stored by name (ids are per process), numbers and times as integers.

use serde::{Deserialize, Serialize};

use crate::core::{
    EndReason, Lease, LeaseEnd, LeaseId, ListingId, PhoneNumber, PoolId, SessionId, Target,
    TenantId, Timestamp,
};

/// First byte of every lease value: bump it (and keep a reader for the old one) when the
/// record changes shape.
const VERSION: u8 = 1;

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
}

pub fn encode(lease: &Lease, pool_name: &str) -> Vec<u8> {
    let r = LeaseRecordV1 {
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
    };
    let mut out = vec![VERSION];
    out.extend(postcard::to_allocvec(&r).expect("a record always serialises"));
    out
}

/// Why a stored record could not be read back.
#[derive(Debug)]
pub enum DecodeError {
    /// The record names a pool that is no longer configured.
    UnknownPool,
    Invalid(String),
}

pub fn decode(
    id: LeaseId,
    bytes: &[u8],
    pool_id: impl Fn(&str) -> Option<PoolId>,
) -> Result<Lease, DecodeError> {
    let bad = |m: &str| DecodeError::Invalid(format!("lease {id}: {m}"));
    let (&version, body) = bytes.split_first().ok_or_else(|| bad("empty record"))?;
    if version != VERSION {
        return Err(bad(&format!(
            "record version {version} is not one this build reads"
        )));
    }
    let r: LeaseRecordV1 = postcard::from_bytes(body).map_err(|e| bad(&e.to_string()))?;
    let pool = pool_id(&r.pool).ok_or(DecodeError::UnknownPool)?;
    let label = |e: crate::core::ParseError| bad(&e.0);
    let number = |d: u64| PhoneNumber::from_digits(d).ok_or_else(|| bad("bad number"));
    Ok(Lease {
        id,
        tenant: TenantId::parse(&r.tenant).map_err(label)?,
        pool,
        number: number(r.number)?,
        session: SessionId::parse(&r.session).map_err(label)?,
        listing: r
            .listing
            .as_deref()
            .map(ListingId::parse)
            .transpose()
            .map_err(label)?,
        target: r
            .target
            .as_deref()
            .map(Target::parse)
            .transpose()
            .map_err(label)?,
        caller: r.caller.map(number).transpose()?,
        created_at: Timestamp::from_millis(r.created_at),
        expires_at: Timestamp::from_millis(r.expires_at),
        end: r
            .end
            .map(|(at, reason)| {
                let reason = match reason {
                    0 => EndReason::Expired,
                    1 => EndReason::Released,
                    _ => return Err(bad("bad end reason")),
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
        redeemed_at: r.redeemed_at.map(Timestamp::from_millis),
    })
}

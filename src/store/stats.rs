//! The statistics' index: counters per (UTC day, pool, currency, tenant, listing), sled keys
//! beside the journal (`S` + day + pool tag + currency + tenant tag + listing), added to in the same batch as the
//! journal rows they count, so they always agree with it; a query reads one key per cell of
//! the range asked, never the journal itself. Stores written before the index existed get it
//! built from their calls on first open (`Mstats` marks it done).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{pool_tag, record, StoreError};
use crate::core::{day_of, Counts, Currency, Directory, ListingId, PoolId, Tally, TenantId};

pub(super) const STATS: u8 = b'A';
pub(super) const BUILT_KEY: &[u8] = b"Mstats";
const NO_CURRENCY: [u8; 3] = [0; 3];
/// The tenant tag of calls that reached no lease.
const NO_TENANT: [u8; 8] = [0; 8];

/// A tenant's 8-byte tag in keys (the first bytes of SHA-256 of its name, as pools').
pub fn tenant_tag(t: &TenantId) -> [u8; 8] {
    pool_tag(t.as_str())
}

/// What the store accumulates in a batch before adding it to the index: key → counts.
pub(super) type Pending = HashMap<Vec<u8>, Counts>;

pub(super) fn key(
    day: u32,
    tag: [u8; 8],
    currency: Option<Currency>,
    tenant: Option<&TenantId>,
    listing: Option<&str>,
) -> Vec<u8> {
    let mut k = Vec::with_capacity(24 + listing.map_or(0, str::len));
    k.push(STATS);
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(&tag);
    k.extend_from_slice(
        currency
            .as_ref()
            .map_or(&NO_CURRENCY[..], |c| c.as_str().as_bytes()),
    );
    k.extend_from_slice(&tenant.map_or(NO_TENANT, tenant_tag));
    k.extend_from_slice(listing.unwrap_or_default().as_bytes());
    k
}

pub(super) fn add(pending: &mut Pending, t: &Tally, pool_name: &str) {
    let k = key(
        t.day,
        pool_tag(pool_name),
        t.currency,
        t.tenant.as_ref(),
        t.listing.as_ref().map(ListingId::as_str),
    );
    pending.entry(k).or_default().add(&t.counts);
}

#[derive(Serialize, Deserialize)]
struct CountsV1(u64, u64, u64, u64, i64, u64, u64);

pub(super) fn encode(c: &Counts) -> Vec<u8> {
    let mut out = vec![1u8];
    let r = CountsV1(
        c.calls,
        c.attributed,
        c.answered,
        c.billed_secs,
        c.amount,
        c.leases,
        c.paid_leases,
    );
    out.extend(postcard::to_allocvec(&r).expect("counts serialise"));
    out
}

pub(super) fn decode(b: &[u8]) -> Result<Counts, StoreError> {
    match b.split_first() {
        Some((1, body)) => {
            let CountsV1(calls, attributed, answered, billed_secs, amount, leases, paid_leases) =
                postcard::from_bytes(body)
                    .map_err(|e| StoreError::Corrupt(format!("statistics: {e}")))?;
            Ok(Counts {
                calls,
                attributed,
                answered,
                billed_secs,
                amount,
                leases,
                paid_leases,
            })
        }
        _ => Err(StoreError::Corrupt(
            "statistics: unknown record version".into(),
        )),
    }
}

/// Adds what a batch accumulated to the index, in the batch: read, sum, write. Only the one
/// writer (under the store's seq lock) does this, so no sum is lost between the read and the
/// write.
pub(super) fn merge_into(
    db: &sled::Db,
    batch: &mut sled::Batch,
    pending: Pending,
) -> Result<(), StoreError> {
    for (k, c) in pending {
        let mut sum = match db.get(&k)? {
            Some(v) => decode(&v)?,
            None => Counts::default(),
        };
        sum.add(&c);
        batch.insert(k, encode(&sum));
    }
    Ok(())
}

/// One cell of the index as read back.
#[derive(Clone, Debug)]
pub struct Cell {
    pub day: u32,
    /// `None` when the pool is no longer configured.
    pub pool: Option<PoolId>,
    pub currency: Option<Currency>,
    /// The tenant's tag (see [`tenant_tag`]); `None`: calls that reached no lease.
    pub tenant: Option<[u8; 8]>,
    pub listing: Option<String>,
    pub counts: Counts,
}

pub(super) fn cell(
    k: &[u8],
    v: &[u8],
    pool_by_tag: &HashMap<[u8; 8], PoolId>,
) -> Result<Cell, StoreError> {
    let bad = || StoreError::Corrupt("statistics: bad key".into());
    if k.len() < 24 {
        return Err(bad());
    }
    let day = u32::from_be_bytes(k[1..5].try_into().map_err(|_| bad())?);
    let tag: [u8; 8] = k[5..13].try_into().map_err(|_| bad())?;
    let currency = match &k[13..16] {
        c if c == NO_CURRENCY => None,
        c => Some(
            std::str::from_utf8(c)
                .ok()
                .and_then(|c| Currency::parse(c).ok())
                .ok_or_else(bad)?,
        ),
    };
    let tenant: [u8; 8] = k[16..24].try_into().map_err(|_| bad())?;
    let listing = match &k[24..] {
        [] => None,
        l => Some(String::from_utf8(l.to_vec()).map_err(|_| bad())?),
    };
    Ok(Cell {
        day,
        pool: pool_by_tag.get(&tag).copied(),
        currency,
        tenant: (tenant != NO_TENANT).then_some(tenant),
        listing,
        counts: decode(v)?,
    })
}

/// Builds the index from the calls of a store written before it existed (their leases are not
/// in the journal, so only calls are counted), then marks it built. Once, at open.
pub(super) fn build(db: &sled::Db, pools: &Directory) -> Result<usize, StoreError> {
    if db.get(BUILT_KEY)?.is_some() {
        return Ok(0);
    }
    let mut pending = Pending::new();
    let mut calls = 0;
    for item in db.scan_prefix([super::CALL]) {
        let (_, v) = item?;
        let Ok(row) = record::decode_call(&v, |n| pools.id(n)) else {
            continue;
        };
        let (Some(name), Some(pool)) = (row.pool.as_deref(), row.call.attribution.pool) else {
            continue;
        };
        let c = &row.call;
        let tariff = pools.spec(pool).tariff;
        let charge = c
            .charge
            .or_else(|| Some(tariff?.charge(c.end?.duration_secs)));
        let mut counts = Counts {
            calls: 1,
            attributed: u64::from(c.attribution.reason.attributed()),
            ..Counts::default()
        };
        if let Some(end) = c.end {
            counts.answered = u64::from(end.duration_secs >= 1);
            counts.billed_secs =
                charge.map_or(u64::from(end.duration_secs), |x| u64::from(x.billed_secs));
            counts.amount = charge.map_or(0, |x| x.amount.cents());
        }
        let t = Tally {
            day: day_of(c.started_at),
            pool,
            currency: charge.map(|x| x.currency).or(tariff.map(|t| t.currency)),
            // An older store's calls count for admins only: their leases' tenants are not
            // read at open.
            tenant: None,
            listing: c.attribution.listing.clone(),
            counts,
        };
        add(&mut pending, &t, name);
        calls += 1;
    }
    let mut batch = sled::Batch::default();
    merge_into(db, &mut batch, pending)?;
    batch.insert(BUILT_KEY, &[1u8][..]);
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(calls)
}

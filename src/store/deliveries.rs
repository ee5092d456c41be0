//! The webhook outbox on disk: one sled key per delivery (an event for one endpoint), written
//! in the same batch as the change that caused it, then moved between statuses by the
//! delivery worker. Not state: never in the log or snapshots, never loaded into the core.
//!
//! Key: `H` + status (`p` pending, `f` failed, `d` delivered) + delivery id (24 bytes: the
//! event id, whose first 8 bytes are its creation time in ms, big-endian, then the endpoint's
//! tag), so a status is one prefix scan, oldest first. Value: version byte + postcard body.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::core::{Effect, Timestamp};

pub(super) const DELIVERY: u8 = b'H';
const VERSION: u8 = 1;

/// An event id (16 bytes: creation ms, big-endian, then 8 random bytes) and an endpoint's tag
/// (the first 8 bytes of SHA-256 of its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId(pub [u8; 24]);

impl DeliveryId {
    pub fn new(event: [u8; 16], endpoint_tag: [u8; 8]) -> DeliveryId {
        let mut id = [0; 24];
        id[..16].copy_from_slice(&event);
        id[16..].copy_from_slice(&endpoint_tag);
        DeliveryId(id)
    }

    pub fn event(&self) -> [u8; 16] {
        self.0[..16].try_into().expect("16 bytes")
    }

    pub fn endpoint_tag(&self) -> [u8; 8] {
        self.0[16..].try_into().expect("8 bytes")
    }

    /// 48 hex digits, as the admin API shows it.
    pub fn parse(s: &str) -> Option<DeliveryId> {
        let mut id = [0; 24];
        (s.len() == 48 && hex::decode_to_slice(s, &mut id).is_ok()).then_some(DeliveryId(id))
    }
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Pending,
    Failed,
    Delivered,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Failed,
        DeliveryStatus::Delivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Delivered => "delivered",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    fn byte(self) -> u8 {
        match self {
            DeliveryStatus::Pending => b'p',
            DeliveryStatus::Failed => b'f',
            DeliveryStatus::Delivered => b'd',
        }
    }
}

/// One event on its way to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: DeliveryId,
    pub endpoint: String,
    /// The event's type (`lease.paid`…).
    pub kind: String,
    pub created_at: Timestamp,
    /// The JSON posted, byte for byte (the signature covers it).
    pub body: Vec<u8>,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_at: Timestamp,
    /// Retries stop `max_age` after this: the event's creation, or the last manual retry.
    pub window_from: Timestamp,
    pub last_attempt_at: Option<Timestamp>,
    /// The last failure: an HTTP status or a connection error, briefly.
    pub last_error: Option<String>,
    /// When it was delivered or given up.
    pub done_at: Option<Timestamp>,
}

impl Delivery {
    /// A new pending delivery of `body`, due at once.
    pub fn new(id: DeliveryId, endpoint: &str, kind: &str, at: Timestamp, body: Vec<u8>) -> Self {
        Delivery {
            id,
            endpoint: endpoint.to_owned(),
            kind: kind.to_owned(),
            created_at: at,
            body,
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_at: at,
            window_from: at,
            last_attempt_at: None,
            last_error: None,
            done_at: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct DeliveryRecordV1 {
    endpoint: String,
    kind: String,
    created_at: u64,
    body: Vec<u8>,
    attempts: u32,
    next_at: u64,
    window_from: u64,
    last_attempt_at: Option<u64>,
    last_error: Option<String>,
    done_at: Option<u64>,
}

fn key(status: DeliveryStatus, id: &DeliveryId) -> [u8; 26] {
    let mut k = [0; 26];
    k[0] = DELIVERY;
    k[1] = status.byte();
    k[2..].copy_from_slice(&id.0);
    k
}

fn encode(d: &Delivery) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend(
        postcard::to_allocvec(&DeliveryRecordV1 {
            endpoint: d.endpoint.clone(),
            kind: d.kind.clone(),
            created_at: d.created_at.as_millis(),
            body: d.body.clone(),
            attempts: d.attempts,
            next_at: d.next_at.as_millis(),
            window_from: d.window_from.as_millis(),
            last_attempt_at: d.last_attempt_at.map(Timestamp::as_millis),
            last_error: d.last_error.clone(),
            done_at: d.done_at.map(Timestamp::as_millis),
        })
        .expect("a record always serialises"),
    );
    out
}

fn decode(k: &[u8], v: &[u8]) -> Result<Delivery, StoreError> {
    let bad = |m: String| StoreError::Corrupt(format!("webhook delivery: {m}"));
    let status = match k.get(1) {
        Some(b'p') => DeliveryStatus::Pending,
        Some(b'f') => DeliveryStatus::Failed,
        Some(b'd') => DeliveryStatus::Delivered,
        _ => return Err(bad("unknown status".into())),
    };
    let id = DeliveryId(
        k.get(2..26)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("short key".into()))?,
    );
    let r: DeliveryRecordV1 = match v.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body).map_err(|e| bad(e.to_string()))?,
        _ => return Err(bad("unknown record version".into())),
    };
    let t = Timestamp::from_millis;
    Ok(Delivery {
        id,
        endpoint: r.endpoint,
        kind: r.kind,
        created_at: t(r.created_at),
        body: r.body,
        status,
        attempts: r.attempts,
        next_at: t(r.next_at),
        window_from: t(r.window_from),
        last_attempt_at: r.last_attempt_at.map(t),
        last_error: r.last_error,
        done_at: r.done_at.map(t),
    })
}

/// One operation's writes: the core's effects, and the webhook deliveries they caused, written
/// in one batch (so an event is on disk exactly when its change is).
#[derive(Debug, Default)]
pub struct Group {
    pub effects: Vec<Effect>,
    pub deliveries: Vec<Delivery>,
}

impl From<Vec<Effect>> for Group {
    fn from(effects: Vec<Effect>) -> Group {
        Group {
            effects,
            deliveries: Vec::new(),
        }
    }
}

/// Adds new deliveries to a round's batch; returns how many keys it added.
pub(super) fn add_to(batch: &mut sled::Batch, deliveries: &[Delivery]) -> usize {
    for d in deliveries {
        batch.insert(&key(d.status, &d.id)[..], encode(d));
    }
    deliveries.len()
}

/// What the delivery worker and the admin API ask of the outbox.
pub trait DeliveryLog: Send + Sync + 'static {
    /// Every delivery with `status`, oldest first.
    fn deliveries(&self, status: DeliveryStatus) -> Result<Vec<Delivery>, StoreError>;
    /// The delivery `id`, whatever its status.
    fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError>;
    /// Writes `d` under its status, removing it from `was` (one batch); durable with the next
    /// flush (see [`DeliveryLog::flush_deliveries`]).
    fn update_delivery(&self, was: DeliveryStatus, d: &Delivery) -> Result<(), StoreError>;
    /// A page of deliveries with `status`, newest first, after `cursor`; and the cursor of
    /// the next page.
    fn delivery_page(
        &self,
        status: DeliveryStatus,
        cursor: Option<DeliveryId>,
        limit: usize,
    ) -> Result<(Vec<Delivery>, Option<DeliveryId>), StoreError>;
    /// Deletes delivered and failed deliveries finished before `before`; returns how many.
    fn purge_deliveries(&self, before: Timestamp) -> Result<usize, StoreError>;
    fn flush_deliveries(&self) -> Result<(), StoreError>;
}

impl DeliveryLog for Store {
    fn deliveries(&self, status: DeliveryStatus) -> Result<Vec<Delivery>, StoreError> {
        let db = self.disk.db()?;
        db.scan_prefix([DELIVERY, status.byte()])
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, StoreError> {
        let db = self.disk.db()?;
        for s in DeliveryStatus::ALL {
            let k = key(s, id);
            if let Some(v) = db.get(k)? {
                return decode(&k, &v).map(Some);
            }
        }
        Ok(None)
    }

    fn update_delivery(&self, was: DeliveryStatus, d: &Delivery) -> Result<(), StoreError> {
        let db = self.disk.db()?;
        let mut batch = sled::Batch::default();
        if was != d.status {
            batch.remove(&key(was, &d.id)[..]);
        }
        batch.insert(&key(d.status, &d.id)[..], encode(d));
        db.apply_batch(batch)?;
        Ok(())
    }

    fn delivery_page(
        &self,
        status: DeliveryStatus,
        cursor: Option<DeliveryId>,
        limit: usize,
    ) -> Result<(Vec<Delivery>, Option<DeliveryId>), StoreError> {
        let db = self.disk.db()?;
        let lo = [DELIVERY, status.byte()].to_vec();
        let hi = match cursor {
            Some(c) => key(status, &c).to_vec(),
            None => [DELIVERY, status.byte() + 1].to_vec(),
        };
        let mut rows = Vec::new();
        for item in db.range(lo..hi).rev() {
            let (k, v) = item?;
            if rows.len() == limit {
                let next = rows.last().map(|d: &Delivery| d.id);
                return Ok((rows, next));
            }
            rows.push(decode(&k, &v)?);
        }
        Ok((rows, None))
    }

    fn purge_deliveries(&self, before: Timestamp) -> Result<usize, StoreError> {
        let db = self.disk.db()?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for s in [DeliveryStatus::Delivered, DeliveryStatus::Failed] {
            for item in db.scan_prefix([DELIVERY, s.byte()]) {
                let (k, v) = item?;
                let d = decode(&k, &v)?;
                if d.done_at.is_some_and(|t| t < before) {
                    batch.remove(k);
                    n += 1;
                }
            }
        }
        if n > 0 {
            db.apply_batch(batch)?;
        }
        Ok(n)
    }

    fn flush_deliveries(&self) -> Result<(), StoreError> {
        self.disk.db()?.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_reads_back_as_written_under_its_status() {
        let id = DeliveryId::new([7; 16], [9; 8]);
        let mut d = Delivery::new(
            id,
            "shop",
            "lease.paid",
            Timestamp::from_millis(5),
            b"{}".to_vec(),
        );
        d.status = DeliveryStatus::Failed;
        d.last_error = Some("HTTP 500".into());
        d.done_at = Some(Timestamp::from_millis(9));
        let k = key(d.status, &id);
        assert_eq!(decode(&k, &encode(&d)).unwrap(), d);
        assert_eq!(DeliveryId::parse(&id.to_string()), Some(id));
        assert_eq!(DeliveryId::parse("zz"), None);
    }
}

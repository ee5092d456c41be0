//! Durable state in sled: lease records and the timing wheel's entries, in one tree so that
//! the effects of one core operation land in one atomic batch. Recovery reads them back.
//!
//! Key layout (one tree, first byte = record kind):
//! - `L` + lease id (16 bytes) → versioned lease record ([`record`]).
//! - `W` + due tick (8 bytes, big-endian) + lease id (16 bytes) → empty. Big-endian ticks make
//!   byte order time order: a range scan from `W` yields entries earliest first.
//! - `M` + name → metadata (`Mformat` = the store format, checked on open).

mod commit;
mod record;

pub use commit::Committer;

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

use crate::core::{Effect, Lease, LeaseId, PoolId, PoolSpec};

const LEASE: u8 = b'L';
const WHEEL: u8 = b'W';
const FORMAT_KEY: &[u8] = b"Mformat";
const FORMAT: &[u8] = b"leaseline-store-1";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("{0}")]
    Corrupt(String),
    #[error("storage is failing: {0}")]
    Failed(String),
}

/// What was on disk at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    pub leases: Vec<Lease>,
    pub wheel: Vec<(u64, LeaseId)>,
    /// Records of pools no longer configured: left on disk untouched, not served.
    pub orphans: usize,
}

pub struct Store {
    db: sled::Db,
    pool_names: Vec<String>,
    pool_ids: HashMap<String, PoolId>,
}

impl Store {
    /// Opens (or creates) the store in `dir`. `pools` gives the names records are stored under.
    pub fn open(dir: &Path, cache_capacity: u64, pools: &[PoolSpec]) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        match db.get(FORMAT_KEY)? {
            Some(v) if v == FORMAT => {}
            Some(v) => {
                return Err(StoreError::Corrupt(format!(
                    "{} holds store format {:?}, not {:?}: is it another program's data?",
                    dir.display(),
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )))
            }
            None if db.is_empty() => {
                db.insert(FORMAT_KEY, FORMAT)?;
                db.flush()?;
            }
            None => {
                return Err(StoreError::Corrupt(format!(
                    "{} holds data that Leaseline did not write",
                    dir.display()
                )))
            }
        }
        let pool_names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
        let pool_ids = pool_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), PoolId(i as u32)))
            .collect();
        Ok(Store {
            db,
            pool_names,
            pool_ids,
        })
    }

    /// Reads every lease record and wheel entry back.
    pub fn load(&self) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        for item in self.db.scan_prefix([LEASE]) {
            let (k, v) = item?;
            let id = lease_id(&k[1..])?;
            match record::decode(id, &v, |name| self.pool_ids.get(name).copied()) {
                Ok(lease) => out.leases.push(lease),
                Err(record::DecodeError::UnknownPool) => out.orphans += 1,
                Err(record::DecodeError::Invalid(m)) => return Err(StoreError::Corrupt(m)),
            }
        }
        for item in self.db.scan_prefix([WHEEL]) {
            let (k, _) = item?;
            if k.len() != 25 {
                return Err(StoreError::Corrupt("malformed wheel key".into()));
            }
            let tick = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
            out.wheel.push((tick, lease_id(&k[9..])?));
        }
        Ok(out)
    }

    /// Writes the effects of one core operation as one atomic batch (not yet durable: see
    /// [`Committer`]).
    pub fn apply(&self, effects: &[Effect]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for e in effects {
            match e {
                Effect::PutLease(l) => batch.insert(
                    &lease_key(&l.id),
                    record::encode(l, &self.pool_names[l.pool.0 as usize]),
                ),
                Effect::DelLease(id) => batch.remove(&lease_key(id)),
                Effect::PutWheel(t, id) => batch.insert(&wheel_key(*t, id), &[]),
                Effect::DelWheel(t, id) => batch.remove(&wheel_key(*t, id)),
            }
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Makes every write applied so far durable; returns the bytes flushed.
    pub fn flush(&self) -> Result<usize, StoreError> {
        Ok(self.db.flush()?)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn lease_key(id: &LeaseId) -> [u8; 17] {
    let mut k = [LEASE; 17];
    k[1..].copy_from_slice(id.as_bytes());
    k
}

fn wheel_key(tick: u64, id: &LeaseId) -> [u8; 25] {
    let mut k = [WHEEL; 25];
    k[1..9].copy_from_slice(&tick.to_be_bytes());
    k[9..].copy_from_slice(id.as_bytes());
    k
}

fn lease_id(b: &[u8]) -> Result<LeaseId, StoreError> {
    b.try_into()
        .map(LeaseId::from_bytes)
        .map_err(|_| StoreError::Corrupt("malformed lease key".into()))
}

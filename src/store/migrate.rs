//! Older store formats, brought to this one on open. Each step is crash-safe and idempotent:
//! it is made of atomic sled batches, and the format key changes only in (or after) the last,
//! so a crash midway leaves the old format marked and the next open carries on.
//!
//! - Format 1 keyed progress by the pool's position in `pool.toml`: rekeyed by the pool's
//!   name tag (format 2), in one batch.
//! - Format 2 kept every state record as its own sled key: moved into the log (format 3), a
//!   chunk of keys per log entry, each entry written in the batch that removes its keys.

use super::log;
use super::{
    fixed, pool_tag, prefixed, wheel_key_of, StoreError, FORMAT, FORMAT_KEY, PROGRESS, STATE_KINDS,
    WHEEL,
};

/// Format 1 keyed progress by the pool's index in `pool.toml` instead of its name.
pub const FORMAT_1: &[u8] = b"leaseline-store-1";
/// Format 2: every state record its own sled key.
pub const FORMAT_2: &[u8] = b"leaseline-store-2";

/// State keys moved per log entry.
const CHUNK: usize = 8192;

/// Rewrites a format-1 store's progress records and their wheel entries, keyed by the pool's
/// index in the config, under the pool's tag instead. The index is read against the pools as
/// configured now (format 1 had no better knowledge); records of an index beyond them are
/// dropped, as format 1 could not serve them either. One atomic batch, then format 2.
pub fn from_1(db: &sled::Db, pool_names: &[&str]) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let (mut moved, mut dropped) = (0usize, 0usize);
    let retag = |old: &[u8]| -> Option<[u8; 16]> {
        let index = u32::from_be_bytes(old[..4].try_into().ok()?) as usize;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&pool_tag(pool_names.get(index)?));
        id[8..].copy_from_slice(&old[4..12]);
        Some(id)
    };
    for item in db.scan_prefix([PROGRESS]) {
        let (k, v) = item?;
        if k.len() != 13 {
            return Err(StoreError::Corrupt(
                "malformed format-1 progress key".into(),
            ));
        }
        batch.remove(k.clone());
        match retag(&k[1..]) {
            Some(id) => {
                batch.insert(prefixed(PROGRESS, &id), v);
                moved += 1;
            }
            None => dropped += 1,
        }
    }
    for item in db.scan_prefix([WHEEL]) {
        let (k, _) = item?;
        if k.len() != 26 || k[9] != PROGRESS {
            continue;
        }
        batch.remove(k.clone());
        if let Some(id) = retag(&k[10..]) {
            let tick = u64::from_be_bytes(fixed(&k[1..9])?);
            batch.insert(&wheel_key_of(tick, PROGRESS, &id)[..], &[][..]);
        }
    }
    batch.insert(FORMAT_KEY, FORMAT_2);
    db.apply_batch(batch)?;
    db.flush()?;
    tracing::info!(
        moved,
        dropped,
        "store migrated from format 1: progress keyed by pool name"
    );
    Ok(())
}

/// Moves a format-2 store's state keys into the log: each chunk of keys becomes one log entry
/// of puts, written in the batch that removes them. Entries an interrupted run already wrote
/// stay (the keys they hold are gone from the old layout, so nothing is logged twice); the
/// next entries follow them. Then format 3, and the log holds the whole state from seq 1.
pub fn from_2(db: &sled::Db) -> Result<(), StoreError> {
    let mut next = match db.scan_prefix([log::LOG]).next_back() {
        Some(item) => log::seq_of(&item?.0)? + 1,
        None => 1,
    };
    let first = next;
    let mut moved = 0usize;
    for kind in STATE_KINDS {
        loop {
            let mut entry = log::Entry::default();
            let mut batch = sled::Batch::default();
            for item in db.scan_prefix([kind]).take(CHUNK) {
                let (k, v) = item?;
                entry.put(&k, &v);
                batch.remove(k);
            }
            if entry.ops() == 0 {
                break;
            }
            moved += entry.ops();
            batch.insert(&log::key(next)[..], entry.bytes());
            db.apply_batch(batch)?;
            next += 1;
        }
    }
    db.insert(FORMAT_KEY, FORMAT)?;
    db.flush()?;
    tracing::info!(
        records = moved,
        entries = next - first,
        "store migrated from format 2: state records moved into the log"
    );
    Ok(())
}

//! A standby's warm copy of the state records: read once, then kept up to date by reading the
//! log entries the leader adds (polled, one small range a time), so that taking over reads
//! only what is new. The leader deletes folded entries one fold late, so a standby polling
//! more often than the leader folds sees every entry; one that fell further behind (or started
//! while the log moved) reads everything again.

use std::collections::BTreeMap;

use super::{log, Space, StoreError, STATE_KINDS, TRAFFIC};

pub struct Mirror {
    space: Space,
    /// State records by key, as the log up to `seq` leaves them.
    pub(super) state: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The last log entry applied.
    pub(super) seq: u64,
    /// Whether the copy has been read once.
    pub(super) synced: bool,
}

/// Reading everything again, at most this many times in a row when the log moves under it.
const SYNC_TRIES: usize = 10;

fn is_state(k: &[u8]) -> bool {
    k.first()
        .is_some_and(|c| STATE_KINDS.contains(c) || *c == TRAFFIC)
}

impl Mirror {
    pub fn new(space: Space) -> Mirror {
        Mirror {
            space,
            state: BTreeMap::new(),
            seq: 0,
            synced: false,
        }
    }

    /// How many records the copy holds.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Brings the copy up to the log's end: the new entries, or everything again after a gap.
    /// Returns the changes applied.
    pub fn refresh(&mut self) -> Result<u64, StoreError> {
        if self.synced {
            if let Some(n) = self.poll()? {
                return Ok(n);
            }
            tracing::info!("the warm copy fell behind the log: reading the state again");
        }
        self.sync()
    }

    /// Applies the entries after `seq`; `None` when some were folded and deleted unseen.
    fn poll(&mut self) -> Result<Option<u64>, StoreError> {
        let entries = self.space.log_after(self.seq)?;
        if !contiguous(self.seq, &entries) {
            return Ok(None);
        }
        let mut changes = 0;
        for (seq, e) in entries {
            changes += self.apply(&e)?;
            self.seq = seq;
        }
        Ok(Some(changes))
    }

    /// Reads the folded records and the log after them.
    fn sync(&mut self) -> Result<u64, StoreError> {
        for _ in 0..SYNC_TRIES {
            let applied = self.space.get_u64(b"applied")?.unwrap_or(0);
            let entries = self.space.log_after(applied)?;
            if !contiguous(applied, &entries) {
                continue; // a fold deleted them meanwhile
            }
            let mut state = BTreeMap::new();
            let skip = self.space.prefix.len() + 2;
            for kind in STATE_KINDS.iter().chain([&TRAFFIC]) {
                self.space
                    .client
                    .range_prefix(&self.space.key(&[b"s/", &[*kind]]), |kv| {
                        state.insert(kv.key[skip..].to_vec(), kv.value);
                    })
                    .map_err(super::etcd)?;
            }
            // Records read may be newer than `entries` (a fold ran meanwhile): replaying the
            // entries, then the ones after them, leaves each key at its last value.
            self.state = state;
            self.seq = applied;
            let mut changes = 0;
            for (seq, e) in entries {
                changes += self.apply(&e)?;
                self.seq = seq;
            }
            self.synced = true;
            return Ok(changes);
        }
        Err(StoreError::Failed(
            "the log in etcd kept moving while the state was read: try again".into(),
        ))
    }

    fn apply(&mut self, entry: &[u8]) -> Result<u64, StoreError> {
        let mut tail = log::Tail::new();
        let n = log::replay(entry, &mut tail)?;
        for (k, v) in tail.into_iter().filter(|(k, _)| is_state(k)) {
            match v {
                Some(v) => self.state.insert(k, v),
                None => self.state.remove(&k),
            };
        }
        Ok(n)
    }
}

/// Whether `entries` follow `after` without a gap.
fn contiguous(after: u64, entries: &[(u64, Vec<u8>)]) -> bool {
    entries
        .iter()
        .enumerate()
        .all(|(i, (seq, _))| *seq == after + 1 + i as u64)
}

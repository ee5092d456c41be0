//! The log of state changes, in sled: one entry per commit round (or per slice of a huge one),
//! keyed `X` + sequence number (u64 big-endian, so byte order is log order), holding that
//! round's state changes in order, each a put or a delete of one state key (`L`, `R`, `T`,
//! `P`, `G`, `Q`, `W`) with the value encodings of [`super::record`]. Replaying entries in
//! order, the latest change of a key wins.

use std::collections::BTreeMap;

use super::StoreError;

pub const LOG: u8 = b'X';

/// First byte of every entry: bump it (and keep a reader) if the encoding changes.
const ENTRY_VERSION: u8 = 1;
const PUT: u8 = 1;
const DEL: u8 = 0;

/// The state as a log tail leaves it: each key changed, and its last value (`None`: deleted).
pub type Tail = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub fn key(seq: u64) -> [u8; 9] {
    let mut k = [LOG; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    match key {
        [LOG, seq @ ..] if seq.len() == 8 => Ok(u64::from_be_bytes(seq.try_into().expect("8"))),
        _ => Err(StoreError::Corrupt("malformed log key".into())),
    }
}

/// One entry being built from whole operations' changes.
pub struct Entry {
    buf: Vec<u8>,
    ops: usize,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            buf: vec![ENTRY_VERSION],
            ops: 0,
        }
    }
}

impl Entry {
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.buf.push(PUT);
        put_bytes(&mut self.buf, key);
        put_bytes(&mut self.buf, value);
        self.ops += 1;
    }

    pub fn del(&mut self, key: &[u8]) {
        self.buf.push(DEL);
        put_bytes(&mut self.buf, key);
        self.ops += 1;
    }

    /// Adds `other`'s changes after this entry's.
    pub fn append(&mut self, other: &Entry) {
        self.buf.extend_from_slice(&other.buf[1..]);
        self.ops += other.ops;
    }

    pub fn ops(&self) -> usize {
        self.ops
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Applies an entry's changes, in order, to `tail`; returns how many there were.
pub fn replay(entry: &[u8], tail: &mut Tail) -> Result<u64, StoreError> {
    let bad = |m: &str| StoreError::Corrupt(format!("log entry: {m}"));
    let (&version, mut rest) = entry.split_first().ok_or_else(|| bad("empty"))?;
    if version != ENTRY_VERSION {
        return Err(bad(&format!(
            "version {version} is not one this build reads"
        )));
    }
    let mut ops = 0;
    while let Some((&kind, r)) = rest.split_first() {
        let (key, r) = take_bytes(r).ok_or_else(|| bad("truncated key"))?;
        let (value, r) = match kind {
            PUT => {
                let (v, r) = take_bytes(r).ok_or_else(|| bad("truncated value"))?;
                (Some(v.to_vec()), r)
            }
            DEL => (None, r),
            _ => return Err(bad("unknown change kind")),
        };
        tail.insert(key.to_vec(), value);
        ops += 1;
        rest = r;
    }
    Ok(ops)
}

/// A length (LEB128) then the bytes.
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn take_bytes(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = take_varint(b)?;
    let len = usize::try_from(len).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Unsigned LEB128, as postcard writes its lengths.
pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn take_varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((n, &b[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_change_of_a_key_wins_in_replay() {
        let mut e = Entry::default();
        e.put(b"La", b"1");
        e.put(b"Lb", &[7u8; 300]);
        e.del(b"La");
        e.put(b"Wc", b"");
        let mut tail = Tail::new();
        tail.insert(b"Lz".to_vec(), Some(b"old".to_vec()));
        assert_eq!(replay(e.bytes(), &mut tail).unwrap(), 4);
        assert_eq!(tail[&b"La"[..]], None);
        assert_eq!(tail[&b"Lb"[..]].as_deref(), Some(&[7u8; 300][..]));
        assert_eq!(tail[&b"Wc"[..]].as_deref(), Some(&b""[..]));
        assert_eq!(tail.len(), 4);
    }

    #[test]
    fn a_truncated_entry_is_refused() {
        let mut e = Entry::default();
        e.put(b"La", b"value");
        let b = e.bytes();
        assert!(replay(&b[..b.len() - 1], &mut Tail::new()).is_err());
        assert!(replay(&[9], &mut Tail::new()).is_err());
        assert_eq!(seq_of(&key(42)).unwrap(), 42);
    }
}

//! Snapshot files: the whole state (every state key and its value, as the log would leave it)
//! after log entry `seq`, in the data folder beside sled's own files, named
//! `state-<seq, 20 digits>.snap` (sled's own snapshots are `snap.*`: no collision).
//!
//! Layout (integers big-endian):
//! - header: magic `LLSNAP\r\n`, format version (u32), the log seq covered (u64), the entry
//!   count (u64);
//! - the entries, sorted by key, each unique: key length (LEB128), key, value length
//!   (LEB128), value;
//! - CRC-32 (u32) of everything before it; then the end of the file.
//!
//! Written as `<name>.tmp`, synced, renamed, and the folder synced: a crash leaves either the
//! whole file or a `.tmp` (removed at open). Read back, a file whose checksum, count, order or
//! length is wrong is refused as a whole.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::log::put_varint;
use super::StoreError;

const MAGIC: &[u8; 8] = b"LLSNAP\r\n";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 8;
/// Bounds on what a length may say, so a damaged one fails fast instead of allocating.
const MAX_KEY: u64 = 64 << 10;
const MAX_VALUE: u64 = 64 << 20;
const BUFFER: usize = 1 << 20;

const PREFIX: &str = "state-";
const SUFFIX: &str = ".snap";
const TMP: &str = ".tmp";

/// A snapshot file found in the data folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The last log entry folded into it.
    pub seq: u64,
    pub path: PathBuf,
}

pub fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{seq:020}{SUFFIX}"))
}

fn seq_of_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The snapshot files in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<SnapshotFile>, StoreError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(seq) = e.file_name().to_str().and_then(seq_of_name) {
            out.push(SnapshotFile {
                seq,
                path: e.path(),
            });
        }
    }
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

/// Removes the `.tmp` files a crash (or a torn write) left behind; returns how many.
pub fn remove_stale(dir: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let stale = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(TMP))
            .and_then(seq_of_name)
            .is_some();
        if stale {
            std::fs::remove_file(e.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Makes a rename or a removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn header(seq: u64, count: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_be_bytes());
    h[12..20].copy_from_slice(&seq.to_be_bytes());
    h[20..].copy_from_slice(&count.to_be_bytes());
    h
}

/// Writes a snapshot, entry by entry in key order. Dropped unfinished, it removes its file.
pub struct Writer {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    dir: PathBuf,
    seq: u64,
    count: u64,
    /// CRC-32 of the entries (the header, known only at the end, is folded in then).
    body: crc32fast::Hasher,
    last: Vec<u8>,
    scratch: Vec<u8>,
    done: bool,
}

impl Writer {
    pub fn create(dir: &Path, seq: u64) -> Result<Writer, StoreError> {
        let tmp = tmp_path(dir, seq);
        let mut out = BufWriter::with_capacity(BUFFER, File::create(&tmp)?);
        out.write_all(&header(seq, 0))?;
        Ok(Writer {
            out: Some(out),
            tmp,
            dir: dir.to_owned(),
            seq,
            count: 0,
            body: crc32fast::Hasher::new(),
            last: Vec::new(),
            scratch: Vec::with_capacity(20),
            done: false,
        })
    }

    /// Appends an entry; keys must come in strictly increasing order.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if self.count > 0 && key <= self.last.as_slice() {
            return Err(StoreError::Corrupt(
                "snapshot entries out of order (a bug: the merge must be sorted)".into(),
            ));
        }
        self.last.clear();
        self.last.extend_from_slice(key);
        let out = self.out.as_mut().expect("open until finished");
        for part in [key, value] {
            self.scratch.clear();
            put_varint(&mut self.scratch, part.len() as u64);
            out.write_all(&self.scratch)?;
            out.write_all(part)?;
            self.body.update(&self.scratch);
            self.body.update(part);
        }
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Completes the file and syncs it; then, unless `rename` is false (a crash between the
    /// write and the rename, for tests), renames it into place and syncs the folder.
    pub fn finish(mut self, rename: bool) -> Result<SnapshotFile, StoreError> {
        let mut out = self.out.take().expect("open until finished");
        let head = header(self.seq, self.count);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.combine(&self.body);
        out.write_all(&crc.finalize().to_be_bytes())?;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&head)?;
        file.sync_all()?;
        drop(file);
        self.done = true;
        if !rename {
            return Ok(SnapshotFile {
                seq: self.seq,
                path: self.tmp.clone(),
            });
        }
        let path = path(&self.dir, self.seq);
        std::fs::rename(&self.tmp, &path)?;
        sync_dir(&self.dir)?;
        Ok(SnapshotFile {
            seq: self.seq,
            path,
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.done {
            drop(self.out.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn tmp_path(dir: &Path, seq: u64) -> PathBuf {
    let mut p = path(dir, seq).into_os_string();
    p.push(TMP);
    p.into()
}

/// Reads a snapshot back entry by entry, checking as it goes; only once [`Reader::next`] has
/// returned `false` is the whole file known to be good (count, checksum, end of file).
pub struct Reader {
    input: BufReader<File>,
    seq: u64,
    count: u64,
    read: u64,
    crc: crc32fast::Hasher,
    last: Vec<u8>,
    name: String,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        let name = path.display().to_string();
        let mut input = BufReader::with_capacity(BUFFER, File::open(path)?);
        let mut h = [0u8; HEADER];
        input.read_exact(&mut h).map_err(|e| bad_io(&name, e))?;
        if &h[..8] != MAGIC {
            return Err(bad(&name, "not a snapshot file (bad magic)"));
        }
        let version = u32::from_be_bytes(h[8..12].try_into().expect("4"));
        if version != VERSION {
            return Err(bad(
                &name,
                &format!("snapshot format {version} is not one this build reads"),
            ));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h);
        Ok(Reader {
            input,
            seq: u64::from_be_bytes(h[12..20].try_into().expect("8")),
            count: u64::from_be_bytes(h[20..].try_into().expect("8")),
            read: 0,
            crc,
            last: Vec::new(),
            name,
        })
    }

    /// The last log entry the snapshot covers.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Reads the next entry into `key` and `value`; `false` at the end, once the file has
    /// checked out whole.
    pub fn next(&mut self, key: &mut Vec<u8>, value: &mut Vec<u8>) -> Result<bool, StoreError> {
        if self.read == self.count {
            self.check_end()?;
            return Ok(false);
        }
        self.field(key, MAX_KEY)?;
        if self.read > 0 && key.as_slice() <= self.last.as_slice() {
            return Err(bad(&self.name, "entries out of order"));
        }
        self.field(value, MAX_VALUE)?;
        self.last.clear();
        self.last.extend_from_slice(key);
        self.read += 1;
        Ok(true)
    }

    fn field(&mut self, into: &mut Vec<u8>, max: u64) -> Result<(), StoreError> {
        let mut len = 0u64;
        for i in 0..10 {
            let mut b = [0u8; 1];
            self.input
                .read_exact(&mut b)
                .map_err(|e| bad_io(&self.name, e))?;
            self.crc.update(&b);
            len |= u64::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
            if i == 9 {
                return Err(bad(&self.name, "malformed length"));
            }
        }
        if len > max {
            return Err(bad(&self.name, "implausible length"));
        }
        into.clear();
        into.resize(len as usize, 0);
        self.input
            .read_exact(into)
            .map_err(|e| bad_io(&self.name, e))?;
        self.crc.update(into);
        Ok(())
    }

    fn check_end(&mut self) -> Result<(), StoreError> {
        let mut stored = [0u8; 4];
        self.input
            .read_exact(&mut stored)
            .map_err(|e| bad_io(&self.name, e))?;
        let computed = std::mem::take(&mut self.crc).finalize();
        if u32::from_be_bytes(stored) != computed {
            return Err(bad(&self.name, "checksum mismatch"));
        }
        let mut more = [0u8; 1];
        if self.input.read(&mut more)? != 0 {
            return Err(bad(&self.name, "bytes after the checksum"));
        }
        Ok(())
    }
}

fn bad(name: &str, what: &str) -> StoreError {
    StoreError::BadSnapshot(format!("{name}: {what}"))
}

fn bad_io(name: &str, e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(name, "truncated"),
        _ => StoreError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, seq: u64, entries: &[(&[u8], &[u8])]) -> SnapshotFile {
        let mut w = Writer::create(dir, seq).unwrap();
        for (k, v) in entries {
            w.push(k, v).unwrap();
        }
        w.finish(true).unwrap()
    }

    type Entries = Vec<(Vec<u8>, Vec<u8>)>;

    fn read_all(path: &Path) -> Result<Entries, StoreError> {
        let mut r = Reader::open(path)?;
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while r.next(&mut k, &mut v)? {
            out.push((k.clone(), v.clone()));
        }
        Ok(out)
    }

    #[test]
    fn a_snapshot_reads_back_as_written_and_any_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![3u8; 1000];
        let entries: [(&[u8], &[u8]); 3] = [(b"La", b"1"), (b"Lb", &big), (b"W", b"")];
        let f = write(dir.path(), 7, &entries);
        assert_eq!(
            f.path.file_name().unwrap(),
            "state-00000000000000000007.snap"
        );
        assert_eq!(list(dir.path()).unwrap(), vec![f.clone()]);
        let back = read_all(&f.path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].1, big);
        assert_eq!(Reader::open(&f.path).unwrap().seq(), 7);

        let good = std::fs::read(&f.path).unwrap();
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x10;
            std::fs::write(&f.path, &flipped).unwrap();
            assert!(read_all(&f.path).is_err(), "a flip at byte {i} is caught");
        }
        for len in 0..good.len() {
            std::fs::write(&f.path, &good[..len]).unwrap();
            assert!(read_all(&f.path).is_err(), "truncated to {len} is caught");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&f.path, &longer).unwrap();
        assert!(read_all(&f.path).is_err());
    }

    #[test]
    fn an_unfinished_or_torn_write_leaves_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 3).unwrap();
        w.push(b"La", b"1").unwrap();
        assert!(w.push(b"La", b"2").is_err(), "keys must increase");
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut w = Writer::create(dir.path(), 4).unwrap();
        w.push(b"La", b"1").unwrap();
        let torn = w.finish(false).unwrap();
        assert!(torn.path.to_str().unwrap().ends_with(".snap.tmp"));
        assert!(list(dir.path()).unwrap().is_empty());
        assert_eq!(remove_stale(dir.path()).unwrap(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

//! Snapshot files: the whole state (every state key and its value, as the log would leave it)
//! after log entry `seq`, in the data folder beside sled's own files, named
//! `state-<seq, 20 digits>.snap` (sled's own snapshots are `snap.*`: no collision).
//!
//! Layout (integers big-endian):
//! - header: magic `LLSNAP\r\n`, format version (u32), the log seq covered (u64), the entry
//!   count (u64);
//! - one LZ4 frame holding the entries, sorted by key, each unique: key length (LEB128), key,
//!   value length (LEB128), value;
//! - CRC-32 (u32) of every byte before it, as on disk; then the end of the file.
//!
//! Records repeat what leases share (tenant, pool, target, instants a few days apart): LZ4
//! makes a snapshot a fraction of its raw size for a few milliseconds per million entries.
//! The checksum covers the compressed bytes, and is checked before anything is decoded, so a
//! flipped bit the decoder would not notice (in the frame's own header, say) is caught too.
//! Version 1 files (entries unframed, the checksum after them over what they say) still read.
//!
//! Written as `<name>.tmp`, synced, renamed, and the folder synced: a crash leaves either the
//! whole file or a `.tmp` (removed at open). Read back, a file whose checksum, count, order or
//! length is wrong is refused as a whole.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::log::put_varint;
use super::StoreError;

const MAGIC: &[u8; 8] = b"LLSNAP\r\n";
/// Written now: entries in an LZ4 frame.
const VERSION: u32 = 2;
/// Entries as they are, still read.
const VERSION_RAW: u32 = 1;
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
    out: Option<lz4_flex::frame::FrameEncoder<Hashed<BufWriter<File>>>>,
    tmp: PathBuf,
    dir: PathBuf,
    seq: u64,
    count: u64,
    last: Vec<u8>,
    scratch: Vec<u8>,
    done: bool,
}

impl Writer {
    pub fn create(dir: &Path, seq: u64) -> Result<Writer, StoreError> {
        let tmp = tmp_path(dir, seq);
        let mut out = BufWriter::with_capacity(BUFFER, File::create(&tmp)?);
        out.write_all(&header(seq, 0))?;
        let mut frame = lz4_flex::frame::FrameInfo::new();
        frame.block_size = lz4_flex::frame::BlockSize::Max4MB;
        let out = Hashed {
            inner: out,
            crc: crc32fast::Hasher::new(),
        };
        Ok(Writer {
            out: Some(lz4_flex::frame::FrameEncoder::with_frame_info(frame, out)),
            tmp,
            dir: dir.to_owned(),
            seq,
            count: 0,
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
        let frame = self.out.take().expect("open until finished");
        let Hashed {
            inner: mut out,
            crc: body,
        } = frame.finish().map_err(std::io::Error::from)?;
        // The header, rewritten now that the count is known, then the frame as written.
        let head = header(self.seq, self.count);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.combine(&body);
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

/// A writer that keeps the CRC-32 of what goes through it.
struct Hashed<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a version 2 file's checksum over its bytes (all but the last four), reading it once
/// from `file`, positioned after the header `h`; returns the length of the frame.
fn check_file(file: &mut BufReader<File>, h: &[u8], name: &str) -> Result<u64, StoreError> {
    let len = file.get_ref().metadata()?.len();
    let frame = len
        .checked_sub((HEADER + 4) as u64)
        .ok_or_else(|| bad(name, "truncated"))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(h);
    let mut left = frame;
    while left > 0 {
        let buf = file.fill_buf()?;
        if buf.is_empty() {
            return Err(bad(name, "truncated"));
        }
        let n = buf.len().min(left as usize);
        crc.update(&buf[..n]);
        file.consume(n);
        left -= n as u64;
    }
    let mut stored = [0u8; 4];
    file.read_exact(&mut stored).map_err(|e| bad_io(name, e))?;
    if u32::from_be_bytes(stored) != crc.finalize() {
        return Err(bad(name, "checksum mismatch"));
    }
    file.seek(SeekFrom::Start(HEADER as u64))?;
    Ok(frame)
}

fn tmp_path(dir: &Path, seq: u64) -> PathBuf {
    let mut p = path(dir, seq).into_os_string();
    p.push(TMP);
    p.into()
}

/// Reads a snapshot back entry by entry, checking as it goes; only once [`Reader::next`] has
/// returned `false` is the whole file known to be good (count, checksum, end of file).
pub struct Reader {
    /// The entries and checksum: the file after its header, through the LZ4 frame's decoder
    /// (version 2) or as they are (version 1).
    input: BufReader<Box<dyn Read + Send>>,
    /// Version 2: a decoder's error means damage, not a failing disk (the file's bytes were
    /// checked whole at open). Version 1 checks its checksum as it reads (`crc`).
    framed: bool,
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
        let mut file = BufReader::with_capacity(BUFFER, File::open(path)?);
        let mut h = [0u8; HEADER];
        file.read_exact(&mut h).map_err(|e| bad_io(&name, e))?;
        if &h[..8] != MAGIC {
            return Err(bad(&name, "not a snapshot file (bad magic)"));
        }
        let version = u32::from_be_bytes(h[8..12].try_into().expect("4"));
        let input: Box<dyn Read + Send> = match version {
            VERSION => {
                let frame = check_file(&mut file, &h, &name)?;
                Box::new(lz4_flex::frame::FrameDecoder::new(file.take(frame)))
            }
            VERSION_RAW => Box::new(file),
            _ => {
                return Err(bad(
                    &name,
                    &format!("snapshot format {version} is not one this build reads"),
                ))
            }
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h);
        Ok(Reader {
            input: BufReader::with_capacity(64 << 10, input),
            framed: version == VERSION,
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
            self.input.read_exact(&mut b).map_err(|e| self.damage(e))?;
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
        self.input.read_exact(into).map_err(|e| self.damage(e))?;
        self.crc.update(into);
        Ok(())
    }

    fn check_end(&mut self) -> Result<(), StoreError> {
        if self.framed {
            let mut more = [0u8; 1];
            return match self.input.read(&mut more) {
                Ok(0) => Ok(()),
                Ok(_) => Err(bad(&self.name, "more entries than its count")),
                Err(e) => Err(self.damage(e)),
            };
        }
        let mut stored = [0u8; 4];
        self.input
            .read_exact(&mut stored)
            .map_err(|e| self.damage(e))?;
        let computed = std::mem::take(&mut self.crc).finalize();
        if u32::from_be_bytes(stored) != computed {
            return Err(bad(&self.name, "checksum mismatch"));
        }
        let mut more = [0u8; 1];
        match self.input.read(&mut more) {
            Ok(0) => Ok(()),
            Ok(_) => Err(bad(&self.name, "bytes after the checksum")),
            Err(e) => Err(self.damage(e)),
        }
    }

    /// What a read error means: the end too soon is a truncated file, anything a version 2
    /// file's decoder refuses is damage (either way the snapshot is skipped for an older one);
    /// otherwise the disk failed.
    fn damage(&self, e: std::io::Error) -> StoreError {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad(&self.name, "truncated"),
            _ if self.framed => bad(&self.name, &format!("damaged ({e})")),
            _ => StoreError::Io(e),
        }
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
            // Damage, never a disk error: load skips the file for an older one.
            let err = read_all(&f.path).unwrap_err();
            assert!(
                matches!(err, StoreError::BadSnapshot(_)),
                "a flip at byte {i}: {err}"
            );
        }
        for len in 0..good.len() {
            std::fs::write(&f.path, &good[..len]).unwrap();
            let err = read_all(&f.path).unwrap_err();
            assert!(
                matches!(err, StoreError::BadSnapshot(_)),
                "truncated to {len}: {err}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&f.path, &longer).unwrap();
        assert!(matches!(read_all(&f.path), Err(StoreError::BadSnapshot(_))));
    }

    #[test]
    fn entries_are_compressed_and_a_version_1_file_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        // Lease-like records: what they share compresses.
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..2000u32)
            .map(|i| {
                let k = [b"L".as_slice(), &i.to_be_bytes()].concat();
                let v = format!("site|p|visitor-{i}|+33612345678|1800000000000|1800000900000");
                (k, v.into_bytes())
            })
            .collect();
        let raw: usize = entries.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let mut w = Writer::create(dir.path(), 1).unwrap();
        for (k, v) in &entries {
            w.push(k, v).unwrap();
        }
        let f = w.finish(true).unwrap();
        let size = std::fs::metadata(&f.path).unwrap().len() as usize;
        assert!(size * 2 < raw, "{size} bytes for {raw} raw");
        assert_eq!(read_all(&f.path).unwrap(), entries);

        // Version 1, as the previous release wrote it: the same entries, unframed.
        let mut body = Vec::new();
        for (k, v) in &entries {
            for part in [k, v] {
                put_varint(&mut body, part.len() as u64);
                body.extend_from_slice(part);
            }
        }
        let mut head = header(2, entries.len() as u64);
        head[8..12].copy_from_slice(&VERSION_RAW.to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(&body);
        let file = [&head[..], &body, &crc.finalize().to_be_bytes()].concat();
        let old = path(dir.path(), 2);
        std::fs::write(&old, &file).unwrap();
        assert_eq!(read_all(&old).unwrap(), entries);
        let mut flipped = file.clone();
        flipped[HEADER + 5] ^= 1;
        std::fs::write(&old, &flipped).unwrap();
        assert!(matches!(read_all(&old), Err(StoreError::BadSnapshot(_))));
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

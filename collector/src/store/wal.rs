//! Write-ahead log segments: the on-disk format of the store.
//!
//! A segment is `wal-{seq:08}.log`: the 8-byte magic `HWAL0001`, then
//! records. A record is
//!
//! ```text
//! len: u32 LE | crc32(body): u32 LE | body (len bytes)
//! body = signal: u8 | min_time: u64 LE | max_time: u64 LE | payload
//! ```
//!
//! where the payload is the OTLP export request as protobuf. A short or
//! mismatching record ends the readable part of a segment: recovery cuts the
//! file there (a torn tail after a crash), keeping everything before it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, IoSlice, Read, Seek, SeekFrom, Write};

use bytes::Bytes;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"HWAL0001";
const RECORD_HEADER: usize = 8;
const BODY_HEADER: usize = 17;
/// A record larger than this is treated as corruption.
pub const MAX_RECORD: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Signal {
    Traces = 1,
    Metrics = 2,
    Logs = 3,
}

impl Signal {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Traces),
            2 => Some(Self::Metrics),
            3 => Some(Self::Logs),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Metrics => "metrics",
            Self::Logs => "logs",
        }
    }
}

/// One record read back.
#[derive(Debug)]
pub struct Record {
    pub signal: Signal,
    pub min_time: u64,
    pub max_time: u64,
    pub payload: Vec<u8>,
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:08}.log"))
}

/// Sequence numbers of the segments in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse().ok())
        {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Append-only writer of one segment.
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    pub seq: u64,
    pub bytes: u64,
    /// Records pushed but not yet written: each record's headers and its
    /// payload, which is written from where it is (no copy into a buffer).
    pending: Vec<([u8; RECORD_HEADER + BODY_HEADER], Bytes)>,
}

/// Slices per `writev`: the kernel's `IOV_MAX` is 1024.
const IOVECS_PER_WRITE: usize = 1024;

impl SegmentWriter {
    pub fn create(dir: &Path, seq: u64) -> io::Result<Self> {
        let path = segment_path(dir, seq);
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        // Make the new file's directory entry durable too.
        File::open(dir)?.sync_all()?;
        Ok(Self {
            file,
            seq,
            bytes: MAGIC.len() as u64,
            pending: Vec::new(),
        })
    }

    /// Re-open an existing, already validated segment for appending.
    pub fn reopen(dir: &Path, seq: u64, valid_len: u64) -> io::Result<Self> {
        let path = segment_path(dir, seq);
        let mut file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(valid_len)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Self {
            file,
            seq,
            bytes: valid_len,
            pending: Vec::new(),
        })
    }

    /// Queue a record for the next [`SegmentWriter::flush`].
    pub fn push(&mut self, signal: Signal, min_time: u64, max_time: u64, payload: Bytes) {
        let len = (BODY_HEADER + payload.len()) as u32;
        let mut head = [0u8; RECORD_HEADER + BODY_HEADER];
        head[8] = signal as u8;
        head[9..17].copy_from_slice(&min_time.to_le_bytes());
        head[17..25].copy_from_slice(&max_time.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head[RECORD_HEADER..]);
        hasher.update(&payload);
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
        self.pending.push((head, payload));
    }

    /// Write what was pushed; with `sync`, also make it durable.
    pub fn flush(&mut self, sync: bool) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for records in pending.chunks(IOVECS_PER_WRITE / 2) {
            let mut slices: Vec<IoSlice<'_>> = records
                .iter()
                .flat_map(|(head, payload)| [IoSlice::new(head), IoSlice::new(payload)])
                .collect();
            let total: usize = slices.iter().map(|s| s.len()).sum();
            write_all_vectored(&mut self.file, &mut slices)?;
            self.bytes += total as u64;
        }
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// `Write::write_all_vectored`, which is not stable yet.
fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sequential reader of one segment's records.
pub struct SegmentReader {
    reader: BufReader<File>,
    /// Offset just past the last good record.
    pub valid_len: u64,
    /// Set when reading stopped at a bad or short record.
    pub corruption: Option<String>,
}

impl SegmentReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 8];
        let corruption = match reader.read_exact(&mut magic) {
            Ok(()) if &magic == MAGIC => None,
            Ok(()) => Some("bad segment magic".to_string()),
            Err(_) => Some("segment shorter than its header".to_string()),
        };
        let valid_len = if corruption.is_some() {
            0
        } else {
            MAGIC.len() as u64
        };
        Ok(Self {
            reader,
            valid_len,
            corruption,
        })
    }

    /// The next good record, or `None` at the end or at the first bad one.
    pub fn next_record(&mut self) -> Option<Record> {
        if self.corruption.is_some() {
            return None;
        }
        let mut head = [0u8; RECORD_HEADER];
        match read_full(&mut self.reader, &mut head) {
            Ok(0) => return None,
            Ok(n) if n < RECORD_HEADER => {
                self.corruption = Some(format!("torn record header at byte {}", self.valid_len));
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                self.corruption = Some(format!("read error at byte {}: {e}", self.valid_len));
                return None;
            }
        }
        let len = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
        if !(BODY_HEADER..=MAX_RECORD).contains(&len) {
            self.corruption = Some(format!(
                "bad record length {len} at byte {}",
                self.valid_len
            ));
            return None;
        }
        let mut body = vec![0u8; len];
        match read_full(&mut self.reader, &mut body) {
            Ok(n) if n == len => {}
            Ok(_) => {
                self.corruption = Some(format!("torn record at byte {}", self.valid_len));
                return None;
            }
            Err(e) => {
                self.corruption = Some(format!("read error at byte {}: {e}", self.valid_len));
                return None;
            }
        }
        if crc32fast::hash(&body) != crc {
            self.corruption = Some(format!("checksum mismatch at byte {}", self.valid_len));
            return None;
        }
        let Some(signal) = Signal::from_u8(body[0]) else {
            self.corruption = Some(format!(
                "unknown signal {} at byte {}",
                body[0], self.valid_len
            ));
            return None;
        };
        let min_time = u64::from_le_bytes(body[1..9].try_into().unwrap_or_default());
        let max_time = u64::from_le_bytes(body[9..17].try_into().unwrap_or_default());
        self.valid_len += (RECORD_HEADER + len) as u64;
        body.drain(..BODY_HEADER);
        Some(Record {
            signal,
            min_time,
            max_time,
            payload: body,
        })
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hw-wal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut() {
        let dir = tmp("torn");
        let mut w = SegmentWriter::create(&dir, 1).unwrap();
        w.push(Signal::Traces, 1, 2, Bytes::from_static(b"first"));
        w.push(Signal::Metrics, 3, 4, Bytes::from_static(b"second"));
        w.flush(true).unwrap();
        let good = w.bytes;
        drop(w);
        // A torn third record: header says 100 bytes, only 5 follow.
        let mut f = OpenOptions::new()
            .append(true)
            .open(segment_path(&dir, 1))
            .unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[0, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
        drop(f);

        let mut r = SegmentReader::open(&segment_path(&dir, 1)).unwrap();
        let a = r.next_record().unwrap();
        assert_eq!(
            (a.signal, a.min_time, a.payload.as_slice()),
            (Signal::Traces, 1, &b"first"[..])
        );
        let b = r.next_record().unwrap();
        assert_eq!(b.payload, b"second");
        assert!(r.next_record().is_none());
        assert!(r.corruption.as_deref().unwrap().contains("torn"));
        assert_eq!(r.valid_len, good);
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let dir = tmp("crc");
        let mut w = SegmentWriter::create(&dir, 7).unwrap();
        w.push(Signal::Logs, 0, 0, Bytes::from_static(b"payload"));
        w.flush(true).unwrap();
        drop(w);
        let path = segment_path(&dir, 7);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let mut r = SegmentReader::open(&path).unwrap();
        assert!(r.next_record().is_none());
        assert!(r.corruption.unwrap().contains("checksum"));
        assert_eq!(list_segments(&dir).unwrap(), vec![7]);
    }

    #[test]
    fn a_group_bigger_than_one_writev_is_written_whole_and_in_order() {
        let dir = tmp("many");
        let mut w = SegmentWriter::create(&dir, 3).unwrap();
        let n = IOVECS_PER_WRITE * 3 / 2 + 7;
        for i in 0..n {
            let payload = Bytes::from(vec![(i % 251) as u8; i % 300]);
            w.push(Signal::Traces, i as u64, i as u64 + 1, payload);
        }
        w.flush(true).unwrap();
        let on_disk = fs::metadata(segment_path(&dir, 3)).unwrap().len();
        assert_eq!(w.bytes, on_disk);
        let mut r = SegmentReader::open(&segment_path(&dir, 3)).unwrap();
        for i in 0..n {
            let rec = r
                .next_record()
                .unwrap_or_else(|| panic!("record {i}: {:?}", r.corruption));
            assert_eq!((rec.min_time, rec.payload.len()), (i as u64, i % 300));
            assert!(rec.payload.iter().all(|&b| b == (i % 251) as u8));
        }
        assert!(r.next_record().is_none());
        assert_eq!((r.corruption, r.valid_len), (None, on_disk));
    }
}

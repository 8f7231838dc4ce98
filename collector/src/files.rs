//! File readers for batch analysis (SPEC §5): OTLP/JSON lines (the
//! Collector file exporter: one export request per line), single OTLP/JSON
//! documents, OTLP protobuf (length-delimited, or one message per file),
//! each optionally gzip- or zstd-compressed; traces, metrics and logs mixed.
//! Lines and frames are streamed one at a time.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use herdwatch_analyzer::model::Batch;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;
use serde::Deserialize;

use crate::decode::Decoder;

/// Largest single JSON document or protobuf message read whole.
const MAX_DOCUMENT: u64 = 1 << 30;
/// Longest JSON line.
const MAX_LINE: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: at byte {offset}: {message}")]
    Offset {
        path: PathBuf,
        offset: u64,
        message: String,
    },
}

/// What reading a file found.
#[derive(Debug, Default, Clone)]
pub struct ReadStats {
    pub requests: u64,
    pub bad: u64,
    /// The first bad line or frame, with its location.
    pub first_error: Option<String>,
    pub rejected_items: u64,
}

/// A line or document holding any of the three signals.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct AnyExport {
    resource_spans: Vec<ResourceSpans>,
    resource_metrics: Vec<ResourceMetrics>,
    resource_logs: Vec<ResourceLogs>,
}

impl AnyExport {
    fn decode(self, d: &Decoder) -> Batch {
        let mut b = d.traces(&ExportTraceServiceRequest {
            resource_spans: self.resource_spans,
        });
        if !self.resource_metrics.is_empty() {
            b.extend(d.metrics(&ExportMetricsServiceRequest {
                resource_metrics: self.resource_metrics,
            }));
        }
        if !self.resource_logs.is_empty() {
            b.extend(d.logs(&ExportLogsServiceRequest {
                resource_logs: self.resource_logs,
            }));
        }
        b
    }
}

fn open(path: &Path) -> Result<Box<dyn BufRead + Send>, FileError> {
    let io = |source| FileError::Io {
        path: path.into(),
        source,
    };
    let mut file = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let magic = file.fill_buf().map_err(io)?;
    let reader: Box<dyn BufRead + Send> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(file),
        ))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            zstd::stream::read::Decoder::with_buffer(file).map_err(io)?,
        ))
    } else {
        Box::new(file)
    };
    Ok(reader)
}

/// Which signal a protobuf file probably holds, from a word of its name
/// (`traces.pb`, `2026-12-04-metrics.bin`; not `catalog.pb`).
fn signal_hint(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .find_map(|word| match word {
            "metric" | "metrics" => Some("metrics"),
            "log" | "logs" => Some("logs"),
            "trace" | "traces" | "span" | "spans" => Some("traces"),
            _ => None,
        })
}

/// Decode one protobuf message: the hinted signal first; when the hint is
/// wrong (the message does not decode as it, or holds nothing), the
/// message's content decides. The error is the hinted signal's.
fn decode_proto(bytes: &[u8], hint: Option<&str>, d: &Decoder) -> Result<Batch, String> {
    let traces = || {
        d.traces_protobuf(bytes)
            .map_err(|e| format!("invalid ExportTraceServiceRequest: {e}"))
    };
    let metrics = || {
        ExportMetricsServiceRequest::decode(bytes)
            .map(|r| d.metrics(&r))
            .map_err(|e| format!("invalid ExportMetricsServiceRequest: {e}"))
    };
    let logs = || {
        ExportLogsServiceRequest::decode(bytes)
            .map(|r| d.logs(&r))
            .map_err(|e| format!("invalid ExportLogsServiceRequest: {e}"))
    };
    let hinted = match hint {
        Some("traces") => Some(traces()),
        Some("metrics") => Some(metrics()),
        Some("logs") => Some(logs()),
        _ => None,
    };
    let hint_err = match hinted {
        Some(Ok(b)) if !b.is_empty() => return Ok(b),
        Some(Err(e)) => Some(e),
        _ => None,
    };
    // The three messages share field numbers; a trace request whose spans
    // carry 16-byte trace ids is a trace request.
    if let Ok(b) = traces()
        && !b.spans.is_empty()
    {
        return Ok(b);
    }
    if let Ok(b) = metrics()
        && !b.points.is_empty()
    {
        return Ok(b);
    }
    match (logs(), hint_err) {
        (Ok(b), None) => Ok(b),
        (Ok(b), Some(_)) if !b.is_empty() => Ok(b),
        (_, Some(e)) | (Err(e), None) => Err(e),
    }
}

/// Leading whitespace then `{`: JSON.
fn looks_like_json(buf: &[u8]) -> bool {
    buf.iter().copied().find(|b| !b.is_ascii_whitespace()) == Some(b'{')
}

fn read_varint(r: &mut dyn BufRead) -> io::Result<Option<(u64, u64)>> {
    let mut value = 0u64;
    let mut shift = 0;
    let mut read = 0;
    loop {
        let mut byte = [0u8; 1];
        match r.read(&mut byte)? {
            0 if read == 0 => return Ok(None),
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated length prefix",
                ));
            }
            _ => {}
        }
        read += 1;
        value |= ((byte[0] & 0x7f) as u64) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(Some((value, read)));
        }
        shift += 7;
        if shift > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "length prefix too long",
            ));
        }
    }
}

/// Read one file, handing each decoded request to `sink`. Bad lines or
/// frames are skipped and counted, or fail the read when `strict`.
pub fn read_file(
    path: &Path,
    decoder: &Decoder,
    strict: bool,
    sink: &mut dyn FnMut(Batch),
) -> Result<ReadStats, FileError> {
    read_file_with(path, decoder, strict, 1, sink)
}

/// Files [`read_files`] reads at once; more are merged a group at a time,
/// in the order given.
pub const MERGE_FILES: usize = 16;

/// Decoded batches each file reads ahead while the merge waits on another.
const READ_AHEAD: usize = 4;

/// Read several files as one stream in time order: each file on a thread
/// of its own, and at every step the batch with the earliest time among
/// each file's next one goes to `sink` (on this thread). Files that cover
/// the same hours (one per service, per collector, per day's rotation)
/// then interleave as the telemetry happened, and the spans of a trace
/// split across them meet, as they would have in one file. `workers`
/// decoding threads are shared out among the files. The statistics come
/// per file, in the order given; a failed file (`strict`) fails the read
/// after the others are read.
pub fn read_files(
    paths: &[PathBuf],
    decoder: &Decoder,
    strict: bool,
    workers: usize,
    sink: &mut dyn FnMut(Batch),
) -> Result<Vec<ReadStats>, FileError> {
    if let [path] = paths {
        return Ok(vec![read_file_with(path, decoder, strict, workers, sink)?]);
    }
    let mut all = Vec::with_capacity(paths.len());
    for group in paths.chunks(MERGE_FILES) {
        let each = (workers / group.len()).max(1);
        let read = std::thread::scope(|scope| {
            let (readers, queues): (Vec<_>, Vec<_>) = group
                .iter()
                .map(|path| {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(READ_AHEAD);
                    let reader = std::thread::Builder::new()
                        .name("herdwatch-read".into())
                        .spawn_scoped(scope, move || {
                            read_file_with(path, decoder, strict, each, &mut |b| {
                                // The merge only stops once every queue is closed.
                                let _ = tx.send(b);
                            })
                        })
                        .expect("spawn a file reader");
                    (reader, rx)
                })
                .unzip();
            let next = |i: usize| {
                queues[i]
                    .recv()
                    .ok()
                    .map(|b| (b.earliest().unwrap_or(0), b))
            };
            let mut heads: Vec<Option<(u64, Batch)>> = (0..queues.len()).map(next).collect();
            while let Some(i) = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|(t, _)| (*t, i)))
                .min()
                .map(|(_, i)| i)
            {
                if let Some((_, batch)) = heads[i].take() {
                    sink(batch);
                }
                heads[i] = next(i);
            }
            readers
                .into_iter()
                .map(|r| {
                    r.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect::<Vec<_>>()
        });
        for stats in read {
            all.push(stats?);
        }
    }
    Ok(all)
}

/// [`read_file`] with the lines or frames decoded on `workers` threads
/// (one: on this one); `sink` still gets them in file order, on this
/// thread, and errors are the same.
pub fn read_file_with(
    path: &Path,
    decoder: &Decoder,
    strict: bool,
    workers: usize,
    sink: &mut dyn FnMut(Batch),
) -> Result<ReadStats, FileError> {
    let io = |source| FileError::Io {
        path: path.into(),
        source,
    };
    let mut reader = open(path)?;
    let mut stats = ReadStats::default();
    let first = {
        let buf = reader.fill_buf().map_err(io)?;
        match buf.first() {
            // Field 1, length-delimited: a single protobuf message (0x0a is
            // also a newline, so look at it before skipping whitespace).
            Some(0x0a) if buf.iter().any(|b| !b.is_ascii_whitespace()) && !looks_like_json(buf) => {
                Some(0x0a)
            }
            _ => buf.iter().copied().find(|b| !b.is_ascii_whitespace()),
        }
    };
    let mut deliver = |stats: &mut ReadStats, b: Batch| {
        stats.requests += 1;
        stats.rejected_items += b.rejected;
        sink(b);
    };
    match first {
        None => Ok(stats),
        Some(b'{') => {
            let mut lines = Lines { reader, path, n: 0 };
            // The first line decides between lines and one document.
            let Some((loc, Unit::Line(line))) = lines.next_unit()? else {
                return Ok(stats);
            };
            if let Some(batch) = crate::decode::json::traces(decoder, &line) {
                deliver(&mut stats, batch);
            } else {
                let mut de = serde_json::Deserializer::from_str(&line);
                match serde_path_to_error::deserialize::<_, AnyExport>(&mut de) {
                    Ok(doc) => deliver(&mut stats, doc.decode(decoder)),
                    Err(e) if e.inner().is_eof() => {
                        // Not one request per line: a single document.
                        let mut rest = String::new();
                        (&mut lines.reader)
                            .take(MAX_DOCUMENT)
                            .read_to_string(&mut rest)
                            .map_err(io)?;
                        let doc = format!("{line}\n{rest}");
                        let mut de = serde_json::Deserializer::from_str(&doc);
                        let parsed: AnyExport =
                            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                                FileError::Line {
                                    path: path.into(),
                                    line: e.inner().line() as u64,
                                    message: format!(
                                        "invalid OTLP/JSON at `{}`: {}",
                                        e.path(),
                                        e.inner()
                                    ),
                                }
                            })?;
                        deliver(&mut stats, parsed.decode(decoder));
                        return Ok(stats);
                    }
                    Err(e) => {
                        let message = json_error(&e);
                        if strict {
                            return Err(loc.error(path, message));
                        }
                        stats.bad += 1;
                        stats.first_error = Some(loc.describe(path, &message));
                    }
                }
            }
            let decode = |u: &Unit| decode_unit(u, decoder, None);
            drain(
                lines,
                workers,
                &decode,
                strict,
                path,
                &mut stats,
                &mut deliver,
            )?;
            Ok(stats)
        }
        Some(0x0a) => {
            // One protobuf message for the whole file.
            let mut bytes = Vec::new();
            reader
                .take(MAX_DOCUMENT)
                .read_to_end(&mut bytes)
                .map_err(io)?;
            let batch = decode_proto(&bytes, signal_hint(path), decoder).map_err(|message| {
                FileError::Offset {
                    path: path.into(),
                    offset: 0,
                    message,
                }
            })?;
            deliver(&mut stats, batch);
            Ok(stats)
        }
        Some(_) => {
            // Length-delimited protobuf messages.
            let hint = signal_hint(path);
            let frames = Frames {
                reader,
                path,
                offset: 0,
            };
            let decode = |u: &Unit| decode_unit(u, decoder, hint);
            drain(
                frames,
                workers,
                &decode,
                strict,
                path,
                &mut stats,
                &mut deliver,
            )?;
            Ok(stats)
        }
    }
}

/// Where a line or frame is, for its error.
#[derive(Debug, Clone, Copy)]
enum Loc {
    Line(u64),
    Byte(u64),
}

impl Loc {
    fn error(self, path: &Path, message: String) -> FileError {
        match self {
            Loc::Line(line) => FileError::Line {
                path: path.into(),
                line,
                message,
            },
            Loc::Byte(offset) => FileError::Offset {
                path: path.into(),
                offset,
                message,
            },
        }
    }

    fn describe(self, path: &Path, message: &str) -> String {
        match self {
            Loc::Line(n) => format!("{}:{n}: {message}", path.display()),
            Loc::Byte(offset) => format!("{}: at byte {offset}: {message}", path.display()),
        }
    }
}

/// One JSON line or one protobuf frame, read but not decoded.
enum Unit {
    Line(String),
    Frame(Vec<u8>),
}

fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    format!("invalid OTLP/JSON at `{}`: {}", e.path(), e.inner())
}

fn decode_unit(unit: &Unit, decoder: &Decoder, hint: Option<&str>) -> Result<Batch, String> {
    match unit {
        Unit::Frame(bytes) => decode_proto(bytes, hint, decoder),
        Unit::Line(text) => {
            // Trace lines take the borrowing reader; anything it leaves
            // (other signals, odd forms, errors) the generated types.
            if let Some(batch) = crate::decode::json::traces(decoder, text) {
                return Ok(batch);
            }
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize::<_, AnyExport>(&mut de)
                .map(|doc| doc.decode(decoder))
                .map_err(|e| json_error(&e))
        }
    }
}

/// The lines or frames of a file, in order.
trait Units: Send {
    fn next_unit(&mut self) -> Result<Option<(Loc, Unit)>, FileError>;
}

/// Non-empty JSON lines, trimmed.
struct Lines<'p> {
    reader: Box<dyn BufRead + Send>,
    path: &'p Path,
    n: u64,
}

impl Units for Lines<'_> {
    fn next_unit(&mut self) -> Result<Option<(Loc, Unit)>, FileError> {
        loop {
            let mut line = String::new();
            let read = (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_line(&mut line)
                .map_err(|e| {
                    Loc::Line(self.n + 1).error(self.path, format!("cannot read line: {e}"))
                })?;
            if read == 0 {
                return Ok(None);
            }
            self.n += 1;
            if read > MAX_LINE {
                let message = format!("line longer than {MAX_LINE} bytes");
                return Err(Loc::Line(self.n).error(self.path, message));
            }
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            if text.len() != line.len() {
                line = text.to_string();
            }
            return Ok(Some((Loc::Line(self.n), Unit::Line(line))));
        }
    }
}

/// Length-delimited protobuf frames.
struct Frames<'p> {
    reader: Box<dyn BufRead + Send>,
    path: &'p Path,
    offset: u64,
}

impl Units for Frames<'_> {
    fn next_unit(&mut self) -> Result<Option<(Loc, Unit)>, FileError> {
        let offset = self.offset;
        let err = |message: String| Loc::Byte(offset).error(self.path, message);
        let Some((len, prefix)) = read_varint(&mut self.reader).map_err(|e| err(e.to_string()))?
        else {
            return Ok(None);
        };
        if len > MAX_DOCUMENT {
            return Err(err(format!(
                "frame length {len} is not plausible: not a length-delimited OTLP file?"
            )));
        }
        let mut frame = vec![0; len as usize];
        self.reader
            .read_exact(&mut frame)
            .map_err(|e| err(format!("truncated frame of {len} bytes: {e}")))?;
        self.offset += prefix + len;
        Ok(Some((Loc::Byte(offset), Unit::Frame(frame))))
    }
}

/// Decode `units` (on `workers` threads when more than one) and deliver
/// them in order: a bad one is counted, or ends the read when `strict`.
fn drain(
    mut units: impl Units,
    workers: usize,
    decode: &(dyn Fn(&Unit) -> Result<Batch, String> + Sync),
    strict: bool,
    path: &Path,
    stats: &mut ReadStats,
    deliver: &mut dyn FnMut(&mut ReadStats, Batch),
) -> Result<(), FileError> {
    let mut handle = |stats: &mut ReadStats, loc: Loc, decoded: Result<Batch, String>| {
        match decoded {
            Ok(b) => deliver(stats, b),
            Err(message) if strict => return Err(loc.error(path, message)),
            Err(message) => {
                stats.bad += 1;
                stats
                    .first_error
                    .get_or_insert_with(|| loc.describe(path, &message));
            }
        }
        Ok(())
    };
    if workers <= 1 {
        while let Some((loc, unit)) = units.next_unit()? {
            handle(stats, loc, decode(&unit))?;
        }
        return Ok(());
    }
    let stop = AtomicBool::new(false);
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<(u64, Loc, Unit)>(2 * workers);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(2 * workers);
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        let stop = &stop;
        let job_rx = &job_rx;
        let reader = scope.spawn(move || -> Result<(), FileError> {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Some((loc, unit)) = units.next_unit()? else {
                    break;
                };
                if job_tx.send((seq, loc, unit)).is_err() {
                    break;
                }
                seq += 1;
            }
            Ok(())
        });
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((seq, loc, unit)) = job else { break };
                    if done_tx.send((seq, loc, decode(&unit))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        // Results come back out of order: hold them until their turn.
        let mut next = 0u64;
        let mut early = std::collections::BTreeMap::new();
        let mut failed = None;
        for (seq, loc, decoded) in done_rx {
            if failed.is_some() {
                continue; // let the workers finish what was read
            }
            early.insert(seq, (loc, decoded));
            while let Some((loc, decoded)) = early.remove(&next) {
                next += 1;
                if let Err(e) = handle(stats, loc, decoded) {
                    stop.store(true, Ordering::Relaxed);
                    failed = Some(e);
                    break;
                }
            }
        }
        let read = reader.join().expect("the file reader panicked");
        match failed {
            Some(e) => Err(e),
            None => read,
        }
    })
}

pub fn write_delimited(out: &mut impl io::Write, message: &impl Message) -> io::Result<()> {
    out.write_all(&message.encode_length_delimited_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("hw-files-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    const LINE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"shop"}}]},"scopeSpans":[{"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000}]}]}]}"#;

    #[test]
    fn json_lines_with_a_bad_line_in_the_middle() {
        let text = format!("{LINE}\nnot json\n{LINE}\n");
        let p = tmp("lines.jsonl", text.as_bytes());
        let mut spans = 0;
        let stats = read_file(&p, &Decoder::default(), false, &mut |b| {
            spans += b.spans.len()
        })
        .unwrap();
        assert_eq!((stats.requests, stats.bad, spans), (2, 1, 2));
        assert!(stats.first_error.unwrap().contains(":2:"));
        let err = read_file(&p, &Decoder::default(), true, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains(":2:"), "{err}");
    }

    /// Lines and frames decoded on several threads reach the sink in file
    /// order, with the same counts and the same first error, strict or not.
    #[test]
    fn parallel_decoding_keeps_file_order_and_errors() {
        // Each line a span of its own start time; line 40 is bad.
        let line = |i: u64| {
            LINE.replace(
                "1544712660000000000",
                &(1544712660000000000 + i).to_string(),
            )
        };
        let mut text = String::new();
        let mut frames = Vec::new();
        for i in 0..200u64 {
            text.push_str(&if i == 40 {
                "{\"resourceSpans\": 7}".into()
            } else {
                line(i)
            });
            text.push('\n');
            let doc: ExportTraceServiceRequest = serde_json::from_str(&line(i)).unwrap();
            if i == 40 {
                // A frame of bytes that are no OTLP message.
                write_delimited(&mut frames, &doc).unwrap();
                let at = frames.len() - doc.encoded_len();
                frames[at..].fill(0xff);
            } else {
                write_delimited(&mut frames, &doc).unwrap();
            }
        }
        let lines = tmp("order.jsonl", text.as_bytes());
        let pb = tmp("order.pb", &frames);
        for p in [&lines, &pb] {
            let read = |workers: usize, strict: bool| {
                let mut starts = Vec::new();
                let r = read_file_with(p, &Decoder::default(), strict, workers, &mut |b| {
                    starts.extend(b.spans.iter().map(|s| s.start_unix_nano))
                });
                (
                    r.map(|s| (s.requests, s.bad, s.first_error))
                        .map_err(|e| e.to_string()),
                    starts,
                )
            };
            let (one, starts) = read(1, false);
            assert_eq!(starts.len(), 199);
            assert!(starts.windows(2).all(|w| w[0] < w[1]), "file order");
            assert_eq!(read(3, false), (one.clone(), starts.clone()));
            let (strict_one, before) = read(1, true);
            assert!(strict_one.is_err());
            assert_eq!(before.len(), 40, "what came before the bad one");
            assert_eq!(read(3, true), (strict_one, before));
        }
    }

    /// Files that cover the same hours reach the sink as one stream in
    /// time order, with their statistics in the order given; a bad file
    /// fails a strict read, and the good one is still read to the end.
    #[test]
    fn files_over_the_same_hours_are_merged_in_time_order() {
        let line = |t: u64| LINE.replace("1544712660000000000", &t.to_string());
        let t0 = 1544712660000000000u64;
        // Even milliseconds in one file (with a bad line), odd in the other, as
        // two collectors would have written them.
        let mut even = String::new();
        let mut odd = String::new();
        for i in 0..100u64 {
            let text = if i % 2 == 0 { &mut even } else { &mut odd };
            text.push_str(&line(t0 + i * 1_000_000));
            text.push('\n');
            if i == 50 {
                even.push_str("not json\n");
            }
        }
        let a = tmp("merge-even.jsonl", even.as_bytes());
        let b = tmp("merge-odd.jsonl", odd.as_bytes());
        for workers in [1, 4] {
            let mut starts = Vec::new();
            let stats = read_files(
                &[a.clone(), b.clone()],
                &Decoder::default(),
                false,
                workers,
                &mut |batch| starts.extend(batch.spans.iter().map(|s| s.start_unix_nano)),
            )
            .unwrap();
            assert_eq!(starts.len(), 100);
            assert!(starts.windows(2).all(|w| w[0] < w[1]), "time order");
            let counts: Vec<_> = stats.iter().map(|s| (s.requests, s.bad)).collect();
            assert_eq!(counts, [(50, 1), (50, 0)], "per file, in order");
        }
        let mut spans = 0;
        let err = read_files(
            &[b.clone(), a.clone()],
            &Decoder::default(),
            true,
            2,
            &mut |batch| spans += batch.spans.len(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("merge-even.jsonl:27:"), "{err}");
        assert_eq!(
            spans,
            50 + 26,
            "the good file whole, the bad one up to its bad line"
        );
    }

    #[test]
    fn a_pretty_printed_document_and_gzip_and_delimited_protobuf() {
        let v: serde_json::Value = serde_json::from_str(LINE).unwrap();
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let p = tmp("doc.json", pretty.as_bytes());
        let mut spans = 0;
        read_file(&p, &Decoder::default(), true, &mut |b| {
            spans += b.spans.len()
        })
        .unwrap();
        assert_eq!(spans, 1);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(LINE.as_bytes()).unwrap();
        let p = tmp("lines.jsonl.gz", &gz.finish().unwrap());
        let mut spans = 0;
        read_file(&p, &Decoder::default(), true, &mut |b| {
            spans += b.spans.len()
        })
        .unwrap();
        assert_eq!(spans, 1);

        let req: ExportTraceServiceRequest = serde_json::from_str(LINE).unwrap();
        let mut buf = Vec::new();
        write_delimited(&mut buf, &req).unwrap();
        write_delimited(&mut buf, &req).unwrap();
        let p = tmp("traces.pb", &zstd::encode_all(&buf[..], 3).unwrap());
        let mut spans = 0;
        let stats = read_file(&p, &Decoder::default(), true, &mut |b| {
            spans += b.spans.len()
        })
        .unwrap();
        assert_eq!((stats.requests, spans), (2, 2));

        let p = tmp("single-traces.pb", &req.encode_to_vec());
        let mut spans = 0;
        read_file(&p, &Decoder::default(), true, &mut |b| {
            spans += b.spans.len()
        })
        .unwrap();
        assert_eq!(spans, 1);
    }

    #[test]
    fn a_file_name_is_a_hint_and_the_content_decides_when_it_is_wrong() {
        assert_eq!(signal_hint(Path::new("a/traces.pb")), Some("traces"));
        assert_eq!(signal_hint(Path::new("2026-metrics.bin")), Some("metrics"));
        assert_eq!(signal_hint(Path::new("app-logs.pb.gz")), Some("logs"));
        assert_eq!(signal_hint(Path::new("catalog.pb")), None, "not a word");
        let req: ExportTraceServiceRequest = serde_json::from_str(LINE).unwrap();
        let mut buf = Vec::new();
        write_delimited(&mut buf, &req).unwrap();
        for name in ["catalog.pb", "logs.pb", "metrics.pb"] {
            let p = tmp(name, &buf);
            let mut spans = 0;
            read_file(&p, &Decoder::default(), true, &mut |b| {
                spans += b.spans.len()
            })
            .unwrap();
            assert_eq!(spans, 1, "{name}");
        }
    }

    #[test]
    fn truncated_protobuf_names_the_offset() {
        let req: ExportTraceServiceRequest = serde_json::from_str(LINE).unwrap();
        let mut buf = Vec::new();
        write_delimited(&mut buf, &req).unwrap();
        let first = buf.len();
        write_delimited(&mut buf, &req).unwrap();
        buf.truncate(buf.len() - 5);
        let p = tmp("torn-traces.pb", &buf);
        let err = read_file(&p, &Decoder::default(), false, &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().contains(&format!("at byte {first}")),
            "{err}"
        );
    }
}

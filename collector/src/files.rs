//! File readers for batch analysis (SPEC §5): OTLP/JSON lines (the
//! Collector file exporter: one export request per line), single OTLP/JSON
//! documents, OTLP protobuf (length-delimited, or one message per file),
//! each optionally gzip- or zstd-compressed; traces, metrics and logs mixed.
//! Lines and frames are streamed one at a time.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

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

fn open(path: &Path) -> Result<Box<dyn BufRead>, FileError> {
    let io = |source| FileError::Io {
        path: path.into(),
        source,
    };
    let mut file = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let magic = file.fill_buf().map_err(io)?;
    let reader: Box<dyn BufRead> = if magic.starts_with(&[0x1f, 0x8b]) {
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
            let mut line = String::new();
            let mut n = 0u64;
            let mut whole: Option<String> = None;
            loop {
                line.clear();
                let read = (&mut reader)
                    .take(MAX_LINE as u64 + 1)
                    .read_line(&mut line)
                    .map_err(|e| FileError::Line {
                        path: path.into(),
                        line: n + 1,
                        message: format!("cannot read line: {e}"),
                    })?;
                if read == 0 {
                    break;
                }
                n += 1;
                if read > MAX_LINE {
                    return Err(FileError::Line {
                        path: path.into(),
                        line: n,
                        message: format!("line longer than {MAX_LINE} bytes"),
                    });
                }
                let text = line.trim();
                if text.is_empty() {
                    continue;
                }
                // Trace lines take the borrowing reader; anything it leaves
                // (other signals, odd forms, errors) the generated types.
                if let Some(batch) = crate::decode::json::traces(decoder, text) {
                    deliver(&mut stats, batch);
                    continue;
                }
                let mut de = serde_json::Deserializer::from_str(text);
                match serde_path_to_error::deserialize::<_, AnyExport>(&mut de) {
                    Ok(doc) => deliver(&mut stats, doc.decode(decoder)),
                    Err(e) if n == 1 && e.inner().is_eof() => {
                        // Not one request per line: a single document.
                        let mut rest = String::new();
                        (&mut reader)
                            .take(MAX_DOCUMENT)
                            .read_to_string(&mut rest)
                            .map_err(io)?;
                        whole = Some(format!("{line}{rest}"));
                        break;
                    }
                    Err(e) => {
                        let message = format!("invalid OTLP/JSON at `{}`: {}", e.path(), e.inner());
                        if strict {
                            return Err(FileError::Line {
                                path: path.into(),
                                line: n,
                                message,
                            });
                        }
                        stats.bad += 1;
                        stats
                            .first_error
                            .get_or_insert_with(|| format!("{}:{n}: {message}", path.display()));
                    }
                }
            }
            if let Some(doc) = whole {
                let mut de = serde_json::Deserializer::from_str(&doc);
                let parsed: AnyExport =
                    serde_path_to_error::deserialize(&mut de).map_err(|e| FileError::Line {
                        path: path.into(),
                        line: e.inner().line() as u64,
                        message: format!("invalid OTLP/JSON at `{}`: {}", e.path(), e.inner()),
                    })?;
                deliver(&mut stats, parsed.decode(decoder));
            }
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
            let mut offset = 0u64;
            let mut frame = Vec::new();
            while let Some((len, prefix)) =
                read_varint(&mut reader).map_err(|e| FileError::Offset {
                    path: path.into(),
                    offset,
                    message: e.to_string(),
                })?
            {
                if len > MAX_DOCUMENT {
                    return Err(FileError::Offset {
                        path: path.into(),
                        offset,
                        message: format!(
                            "frame length {len} is not plausible: not a length-delimited OTLP file?"
                        ),
                    });
                }
                frame.resize(len as usize, 0);
                reader
                    .read_exact(&mut frame)
                    .map_err(|e| FileError::Offset {
                        path: path.into(),
                        offset,
                        message: format!("truncated frame of {len} bytes: {e}"),
                    })?;
                match decode_proto(&frame, hint, decoder) {
                    Ok(b) => deliver(&mut stats, b),
                    Err(message) if strict => {
                        return Err(FileError::Offset {
                            path: path.into(),
                            offset,
                            message,
                        });
                    }
                    Err(message) => {
                        stats.bad += 1;
                        stats.first_error.get_or_insert_with(|| {
                            format!("{}: at byte {offset}: {message}", path.display())
                        });
                    }
                }
                offset += prefix + len;
            }
            Ok(stats)
        }
    }
}

/// Write requests as length-delimited protobuf (the reader's inverse).
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

//! OTLP/HTTP receiver: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`.
//!
//! Protobuf and JSON bodies (media-type parameters allowed), identity, gzip
//! and zstd content encodings, the size limit applied to the decompressed
//! bytes with a bounded inflater (a bomb is cut off, not inflated), responses
//! in the request's encoding, and `google.rpc.Status` error bodies.

use std::io::Read;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use axum::routing::post;
use http_body_util::{BodyExt, Limited};
use prost::Message;

use super::{Encoding, ErrorCode, Ingest, IngestError, RpcStatus};
use crate::store::wal::Signal;
use crate::telemetry::Transport;

/// The OTLP/HTTP routes. Other methods on these paths get 405 with `Allow`.
pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        .layer(DefaultBodyLimit::disable())
        .with_state(ingest)
}

async fn traces(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response<Body> {
    handle(ingest, Signal::Traces, headers, body).await
}

async fn metrics(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response<Body> {
    handle(ingest, Signal::Metrics, headers, body).await
}

async fn logs(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response<Body> {
    handle(ingest, Signal::Logs, headers, body).await
}

/// The media type of a `Content-Type` value, parameters removed.
pub fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn content_type(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Protobuf => "application/x-protobuf",
        Encoding::Json => "application/json",
    }
}

async fn handle(ingest: Ingest, signal: Signal, headers: HeaderMap, body: Body) -> Response<Body> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(media_type)
        .unwrap_or_default();
    let encoding = match ct.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            let e = IngestError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "unsupported content type {:?}: use application/x-protobuf or application/json",
                    if ct.is_empty() { "(none)" } else { ct.as_str() }
                ),
            );
            return error_response(&e, Encoding::Json);
        }
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = ingest.check_auth(auth) {
        return error_response(&e, encoding);
    }
    let result = async {
        let compression = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let limit = ingest.limits.max_message_bytes;
        // The wire body may not exceed the limit either (compression makes
        // things smaller, never bigger, for real payloads).
        let raw = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    IngestError::new(
                        ErrorCode::TooLarge,
                        format!("request body exceeds the limit of {limit} bytes"),
                    )
                } else {
                    IngestError::new(
                        ErrorCode::InvalidArgument,
                        format!("cannot read the request body: {e}"),
                    )
                }
            })?
            .to_bytes();
        ingest.metrics.bytes_in(Transport::Http, raw.len() as u64);
        let body = decompress(&compression, raw, limit)?;
        ingest.export(signal, Transport::Http, encoding, body).await
    }
    .await;
    match result {
        Ok(body) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type(encoding))
            .body(Body::from(body))
            .unwrap_or_default(),
        Err(e) => error_response(&e, encoding),
    }
}

/// Inflate `raw` per `Content-Encoding`, refusing to produce more than
/// `limit` bytes.
pub fn decompress(encoding: &str, raw: Bytes, limit: usize) -> Result<Bytes, IngestError> {
    let bounded = |reader: &mut dyn Read, name: &str| -> Result<Bytes, IngestError> {
        let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
        let read = reader
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                IngestError::new(
                    ErrorCode::InvalidArgument,
                    format!("invalid {name} body: {e}"),
                )
            })?;
        if read > limit {
            return Err(IngestError::new(
                ErrorCode::TooLarge,
                format!("decompressed body exceeds the limit of {limit} bytes"),
            ));
        }
        Ok(Bytes::from(out))
    };
    match encoding {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => bounded(&mut flate2::read::MultiGzDecoder::new(&raw[..]), "gzip"),
        "deflate" => bounded(&mut flate2::read::ZlibDecoder::new(&raw[..]), "deflate"),
        "zstd" => {
            let mut decoder = zstd::stream::read::Decoder::new(&raw[..]).map_err(|e| {
                IngestError::new(
                    ErrorCode::InvalidArgument,
                    format!("invalid zstd body: {e}"),
                )
            })?;
            bounded(&mut decoder, "zstd")
        }
        other => Err(IngestError::new(
            ErrorCode::UnsupportedMediaType,
            format!("unsupported content encoding {other:?}: use gzip, zstd or none"),
        )),
    }
}

/// A `google.rpc.Status` body in the request's encoding, with `Retry-After`
/// on retryable refusals.
pub fn error_response(e: &IngestError, encoding: Encoding) -> Response<Body> {
    let status = RpcStatus {
        code: e.code.grpc() as i32,
        message: e.message.clone(),
    };
    let body = match encoding {
        Encoding::Protobuf => status.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&status).unwrap_or_default(),
    };
    let mut resp = Response::builder()
        .status(e.code.http())
        .header(header::CONTENT_TYPE, content_type(encoding))
        .body(Body::from(body))
        .unwrap_or_default();
    if let Some(secs) = e.code.retry_after_secs() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn media_type_ignores_parameters_and_case() {
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "application/json"
        );
    }

    #[test]
    fn a_gzip_bomb_is_cut_off() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 8 << 20]).unwrap();
        let bomb = Bytes::from(enc.finish().unwrap());
        assert!(bomb.len() < 64 << 10);
        let err = decompress("gzip", bomb, 1 << 20).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
    }

    #[test]
    fn zstd_round_trips() {
        let raw = zstd::encode_all(&b"hello"[..], 3).unwrap();
        assert_eq!(
            &decompress("zstd", Bytes::from(raw), 100).unwrap()[..],
            b"hello"
        );
        assert_eq!(
            decompress("br", Bytes::new(), 10).unwrap_err().code,
            ErrorCode::UnsupportedMediaType
        );
    }
}

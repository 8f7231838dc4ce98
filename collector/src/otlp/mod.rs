//! OTLP receivers. Both transports funnel into [`Ingest::export`]: admission
//! against the memory budget, decoding (off the runtime for big payloads),
//! the durable append, and the export response with `partial_success` when
//! items were rejected.

pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::decode::Decoder;
use crate::store::wal::Signal;
use crate::store::{Store, StoreError};
use crate::telemetry::{Metrics, Transport};
use herdwatch_analyzer::model::Batch;

/// Payloads at least this big are decoded on the blocking pool.
const BLOCKING_DECODE_BYTES: usize = 256 << 10;

/// One error vocabulary for both transports (gRPC code and HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed payload.
    InvalidArgument,
    /// Over the size limit (after decompression).
    TooLarge,
    /// Memory budget spent: retry later.
    Overloaded,
    /// Write queue full or store unavailable: retry later.
    Unavailable,
    UnsupportedMediaType,
    Unauthenticated,
    Internal,
}

impl ErrorCode {
    pub fn grpc(self) -> tonic::Code {
        match self {
            Self::InvalidArgument | Self::UnsupportedMediaType => tonic::Code::InvalidArgument,
            Self::TooLarge => tonic::Code::ResourceExhausted,
            Self::Overloaded | Self::Unavailable => tonic::Code::Unavailable,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::Internal => tonic::Code::Internal,
        }
    }

    pub fn http(self) -> ::http::StatusCode {
        use ::http::StatusCode as S;
        match self {
            Self::InvalidArgument => S::BAD_REQUEST,
            Self::TooLarge => S::PAYLOAD_TOO_LARGE,
            Self::Overloaded => S::TOO_MANY_REQUESTS,
            Self::Unavailable => S::SERVICE_UNAVAILABLE,
            Self::UnsupportedMediaType => S::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthenticated => S::UNAUTHORIZED,
            Self::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait before retrying, for retryable codes.
    pub fn retry_after_secs(self) -> Option<u64> {
        match self {
            Self::Overloaded | Self::Unavailable => Some(1),
            _ => None,
        }
    }
}

/// An export that failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct IngestError {
    pub code: ErrorCode,
    pub message: String,
}

impl IngestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for IngestError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::Overloaded("in-flight memory limit reached") => ErrorCode::Overloaded,
            StoreError::Overloaded(_) | StoreError::Closed => ErrorCode::Unavailable,
            StoreError::Write(_) => ErrorCode::Unavailable,
            StoreError::Dir { .. } | StoreError::Recover { .. } => ErrorCode::Internal,
        };
        Self::new(code, e.to_string())
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Wire encoding of a request and its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Limits that apply to every transport.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted message, after decompression.
    pub max_message_bytes: usize,
    /// Bearer token required on every export, if set.
    pub auth_token: Option<Arc<str>>,
}

/// The ingest core shared by the receivers.
#[derive(Clone)]
pub struct Ingest {
    pub store: Store,
    pub decoder: Decoder,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

/// The decoded request: the analyzer's rows plus the protobuf to store.
struct Decoded {
    batch: Batch,
    /// The request as protobuf, for the write-ahead log: the body itself
    /// when it came as protobuf (shared, not copied).
    protobuf: Bytes,
}

fn decode_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, IngestError> {
    // Tracking the path costs on every field: only a body that fails is
    // read again to say where.
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        IngestError::new(
            ErrorCode::InvalidArgument,
            format!("invalid OTLP/JSON {what} at `{path}`: {}", e.into_inner()),
        )
    })
}

fn decode_proto<T: Message + Default>(body: &[u8], what: &str) -> Result<T, IngestError> {
    T::decode(body).map_err(|e| {
        IngestError::new(
            ErrorCode::InvalidArgument,
            format!("invalid protobuf {what}: {e}"),
        )
    })
}

impl Ingest {
    pub fn check_auth(&self, header: Option<&str>) -> Result<(), IngestError> {
        let Some(token) = &self.limits.auth_token else {
            return Ok(());
        };
        if crate::auth::authorized(header, token) {
            Ok(())
        } else {
            Err(IngestError::new(
                ErrorCode::Unauthenticated,
                "missing or wrong bearer token",
            ))
        }
    }

    fn decode(
        &self,
        signal: Signal,
        encoding: Encoding,
        body: &Bytes,
    ) -> Result<Decoded, IngestError> {
        let d = &self.decoder;
        let (batch, protobuf) = match (signal, encoding) {
            (Signal::Traces, Encoding::Protobuf) => {
                let batch = d.traces_protobuf(body).map_err(|e| {
                    IngestError::new(
                        ErrorCode::InvalidArgument,
                        format!("invalid protobuf ExportTraceServiceRequest: {e}"),
                    )
                })?;
                (batch, body.clone())
            }
            (Signal::Traces, Encoding::Json) => {
                let r: ExportTraceServiceRequest = decode_json(body, "trace export")?;
                (d.traces(&r), r.encode_to_vec().into())
            }
            (Signal::Metrics, Encoding::Protobuf) => {
                let r: ExportMetricsServiceRequest =
                    decode_proto(body, "ExportMetricsServiceRequest")?;
                (d.metrics(&r), body.clone())
            }
            (Signal::Metrics, Encoding::Json) => {
                let r: ExportMetricsServiceRequest = decode_json(body, "metrics export")?;
                (d.metrics(&r), r.encode_to_vec().into())
            }
            (Signal::Logs, Encoding::Protobuf) => {
                let r: ExportLogsServiceRequest = decode_proto(body, "ExportLogsServiceRequest")?;
                (d.logs(&r), body.clone())
            }
            (Signal::Logs, Encoding::Json) => {
                let r: ExportLogsServiceRequest = decode_json(body, "logs export")?;
                (d.logs(&r), r.encode_to_vec().into())
            }
        };
        Ok(Decoded { batch, protobuf })
    }

    /// Handle one export whose body is already decompressed; returns the
    /// encoded export response.
    pub async fn export(
        &self,
        signal: Signal,
        transport: Transport,
        encoding: Encoding,
        body: Bytes,
    ) -> Result<Vec<u8>, IngestError> {
        let started = Instant::now();
        let result = self.export_inner(signal, transport, encoding, body).await;
        self.metrics.request_duration(transport, started.elapsed());
        if let Err(e) = &result {
            if e.code.retry_after_secs().is_some() {
                self.metrics.refused(transport);
            }
            tracing::debug!(signal = signal.as_str(), transport = transport.as_str(), error = %e, "export refused");
        }
        result
    }

    async fn export_inner(
        &self,
        signal: Signal,
        transport: Transport,
        encoding: Encoding,
        body: Bytes,
    ) -> Result<Vec<u8>, IngestError> {
        if body.len() > self.limits.max_message_bytes {
            return Err(IngestError::new(
                ErrorCode::TooLarge,
                format!(
                    "message of {} bytes exceeds the limit of {} bytes",
                    body.len(),
                    self.limits.max_message_bytes
                ),
            ));
        }
        // Decoded rows take roughly twice the protobuf size.
        let _admission = self.store.admit(body.len() * 2)?;
        let decoded = if body.len() >= BLOCKING_DECODE_BYTES {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.decode(signal, encoding, &body))
                .await
                .map_err(|e| {
                    IngestError::new(ErrorCode::Internal, format!("decoder task failed: {e}"))
                })??
        } else {
            self.decode(signal, encoding, &body)?
        };
        let Decoded { batch, protobuf } = decoded;
        let rejected = batch.rejected;
        let reason = batch.reject_reason.clone().unwrap_or_default();
        let accepted = (batch.spans.len() + batch.points.len() + batch.markers.len()) as u64
            + batch.other_logs;
        self.metrics
            .dropped_attributes
            .add(batch.dropped_attributes);
        if accepted > 0 {
            self.store.append(signal, protobuf, batch).await?;
        }
        self.metrics.accepted(signal, transport, accepted);
        self.metrics.rejected(signal, transport, rejected);
        self.metrics
            .interned_overflow
            .set(self.decoder.interner().overflowed());
        if rejected > 0 {
            tracing::info!(signal = signal.as_str(), transport = transport.as_str(), rejected, reason = %reason, "items rejected");
        }
        Ok(response(signal, encoding, rejected, reason))
    }
}

/// The export response, `partial_success` set only when items were rejected.
pub fn response(signal: Signal, encoding: Encoding, rejected: u64, reason: String) -> Vec<u8> {
    let rejected = rejected as i64;
    let partial = rejected > 0;
    if !partial && encoding == Encoding::Json {
        // Unset means absent: the serde form would write `null`.
        return b"{}".to_vec();
    }
    macro_rules! encode {
        ($msg:expr) => {
            match encoding {
                Encoding::Protobuf => $msg.encode_to_vec(),
                Encoding::Json => serde_json::to_vec(&$msg).unwrap_or_else(|_| b"{}".to_vec()),
            }
        };
    }
    match signal {
        Signal::Traces => encode!(ExportTraceServiceResponse {
            partial_success: partial.then_some(ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: reason,
            }),
        }),
        Signal::Metrics => encode!(ExportMetricsServiceResponse {
            partial_success: partial.then_some(ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: reason,
            }),
        }),
        Signal::Logs => encode!(ExportLogsServiceResponse {
            partial_success: partial.then_some(ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: reason,
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_both_transports() {
        assert_eq!(ErrorCode::TooLarge.grpc(), tonic::Code::ResourceExhausted);
        assert_eq!(
            ErrorCode::TooLarge.http(),
            ::http::StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(ErrorCode::Overloaded.grpc(), tonic::Code::Unavailable);
        assert_eq!(
            ErrorCode::Overloaded.http(),
            ::http::StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            ErrorCode::Unavailable.http(),
            ::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ErrorCode::InvalidArgument.grpc(),
            tonic::Code::InvalidArgument
        );
        assert!(ErrorCode::InvalidArgument.retry_after_secs().is_none());
    }

    #[test]
    fn full_success_leaves_partial_success_unset() {
        let ok = response(Signal::Traces, Encoding::Json, 0, String::new());
        assert_eq!(ok, b"{}");
        let partial = response(Signal::Traces, Encoding::Json, 2, "bad id".into());
        let v: serde_json::Value = serde_json::from_slice(&partial).unwrap();
        assert_eq!(v["partialSuccess"]["rejectedSpans"], serde_json::json!(2));
    }
}

//! OTLP/gRPC receiver: `TraceService`, `MetricsService`, `LogsService`.
//!
//! The services are written against tonic's server machinery with a raw
//! codec: the request message reaches [`Ingest::export`] as the exact
//! protobuf bytes (already inflated by tonic within the size limit), so the
//! store keeps them without re-encoding and a malformed message maps to
//! `INVALID_ARGUMENT` rather than tonic's default `INTERNAL`.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{
    BoxFuture, CompressionEncoding, EnabledCompressionEncodings, Service, StdError,
};
use tonic::server::{NamedService, UnaryService};

use super::{Encoding, Ingest};
use crate::store::wal::Signal;
use crate::telemetry::Transport;

/// Passes message bytes through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// Which OTLP service a [`ExportService`] is.
pub trait OtlpSignal: Send + Sync + 'static {
    const SIGNAL: Signal;
    const NAME: &'static str;
    const PATH: &'static str;
}

pub struct Traces;
pub struct Metrics;
pub struct Logs;

impl OtlpSignal for Traces {
    const SIGNAL: Signal = Signal::Traces;
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
}

impl OtlpSignal for Metrics {
    const SIGNAL: Signal = Signal::Metrics;
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
}

impl OtlpSignal for Logs {
    const SIGNAL: Signal = Signal::Logs;
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
}

/// One OTLP export service.
pub struct ExportService<S> {
    ingest: Ingest,
    _signal: PhantomData<fn() -> S>,
}

impl<S> Clone for ExportService<S> {
    fn clone(&self) -> Self {
        Self {
            ingest: self.ingest.clone(),
            _signal: PhantomData,
        }
    }
}

impl<S: OtlpSignal> ExportService<S> {
    pub fn new(ingest: Ingest) -> Self {
        Self {
            ingest,
            _signal: PhantomData,
        }
    }
}

impl<S: OtlpSignal> NamedService for ExportService<S> {
    const NAME: &'static str = S::NAME;
}

struct Unary<S> {
    ingest: Ingest,
    _signal: PhantomData<fn() -> S>,
}

impl<S: OtlpSignal> UnaryService<Bytes> for Unary<S> {
    type Response = Vec<u8>;
    type Future = BoxFuture<tonic::Response<Vec<u8>>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        Box::pin(async move {
            let auth = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            ingest
                .check_auth(auth)
                .map_err(|e| Status::new(e.code.grpc(), e.message))?;
            let body = request.into_inner();
            ingest.metrics.bytes_in(Transport::Grpc, body.len() as u64);
            ingest
                .export(S::SIGNAL, Transport::Grpc, Encoding::Protobuf, body)
                .await
                .map(tonic::Response::new)
                .map_err(|e| Status::new(e.code.grpc(), e.message))
        })
    }
}

impl<S, B> Service<http::Request<B>> for ExportService<S>
where
    S: OtlpSignal,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ingest = self.ingest.clone();
        if req.uri().path() != S::PATH {
            return Box::pin(
                async move { Ok(Status::unimplemented("unknown method").into_http()) },
            );
        }
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            accept.enable(CompressionEncoding::Zstd);
            let mut send = EnabledCompressionEncodings::default();
            send.enable(CompressionEncoding::Gzip);
            send.enable(CompressionEncoding::Zstd);
            let limit = ingest.limits.max_message_bytes;
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_compression_config(accept, send)
                .apply_max_message_size_config(Some(limit), None);
            let unary = Unary::<S> {
                ingest,
                _signal: PhantomData,
            };
            let mut response = grpc.unary(unary, req).await;
            remap_size_status(&mut response);
            Ok(response)
        })
    }
}

/// tonic reports an oversized uncompressed message as `OUT_OF_RANGE`; OTLP
/// wants `RESOURCE_EXHAUSTED` for every size-limit refusal.
fn remap_size_status(response: &mut http::Response<tonic::body::Body>) {
    let headers = response.headers_mut();
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == out_of_range.as_bytes())
    {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
}

/// Serve the three OTLP services on `listener` until `shutdown` resolves.
pub async fn serve(
    ingest: Ingest,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "otlp grpc receiver listening");
    tonic::transport::Server::builder()
        .add_service(ExportService::<Traces>::new(ingest.clone()))
        .add_service(ExportService::<Metrics>::new(ingest.clone()))
        .add_service(ExportService::<Logs>::new(ingest))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}

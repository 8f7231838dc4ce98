//! OTLP conformance through the real servers on loopback: the Rust
//! OpenTelemetry SDK's own exporters (gRPC, HTTP/protobuf, HTTP/JSON), the
//! protocol's example vectors, bad input, partial success, backpressure.

use std::io::Write;
use std::time::Duration;

use herdwatch_collector::otlp::RpcStatus;
use herdwatch_collector::store::Query;
use herdwatch_collector::testsuite;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter as _};
use prost::Message;

fn vector(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/otlp-examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Spans made by the SDK: a server request with a Redis lookup (stable
/// conventions) and a PostgreSQL query (legacy conventions) under it.
fn sdk_spans(service: &str) -> (Vec<opentelemetry_sdk::trace::SpanData>, Resource) {
    let collect = herdwatch_samples::emit::Collect::default();
    let resource = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", service.to_string()),
            KeyValue::new("service.version", "2.1.0"),
            KeyValue::new("service.instance.id", "pod-7"),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_simple_exporter(collect.clone())
        .build();
    let tracer = provider.tracer("it");
    let mut req = tracer
        .span_builder("GET /product/{id}")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.route", "/product/{id}"),
            KeyValue::new("url.path", "/product/42"),
            KeyValue::new("http.response.status_code", 503),
            KeyValue::new("cache.hit", false),
        ])
        .start(&tracer);
    opentelemetry::trace::Span::set_status(&mut req, Status::error("boom"));
    let cx = Context::current_with_span(req);
    let mut get = tracer
        .span_builder("GET")
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("db.system.name", "redis"),
            KeyValue::new("db.operation.name", "GET"),
            KeyValue::new("db.query.text", "GET product:42"),
            KeyValue::new("server.address", "cache-1"),
            KeyValue::new("cache.key", "product:42"),
        ])
        .start_with_context(&tracer, &cx);
    opentelemetry::trace::Span::end(&mut get);
    let mut sql = tracer
        .span_builder("SELECT shop")
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("db.system", "postgresql"),
            KeyValue::new("db.statement", "SELECT * FROM product WHERE id = $1"),
            KeyValue::new("db.operation", "SELECT"),
            KeyValue::new("db.name", "shop"),
        ])
        .start_with_context(&tracer, &cx);
    opentelemetry::trace::Span::end(&mut sql);
    cx.span().end();
    let spans = std::mem::take(&mut *collect.0.lock().unwrap());
    (spans, resource)
}

async fn export_with(protocol: &str, endpoint: String, service: &str) -> usize {
    let (spans, resource) = sdk_spans(service);
    let n = spans.len();
    let mut exporter = match protocol {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .unwrap(),
        "http-proto" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()
            .unwrap(),
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()
            .unwrap(),
    };
    exporter.set_resource(&resource);
    exporter.export(spans).await.expect("export succeeds");
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_deliver_every_field_over_grpc_and_http() {
    let app = testsuite::start("sdk", "").await;
    let grpc = format!("http://{}", app.grpc_addr);
    let http = format!("http://{}", app.http_addr);
    for (protocol, endpoint, service) in [
        ("grpc", grpc.clone(), "via-grpc"),
        ("http-proto", http.clone(), "via-http-proto"),
        ("http-json", http.clone(), "via-http-json"),
    ] {
        assert_eq!(export_with(protocol, endpoint, service).await, 3);
        let spans = app.store.spans(&Query {
            service: Some(service.into()),
            ..Query::all()
        });
        assert_eq!(spans.len(), 3, "{protocol}");
        let req = spans
            .iter()
            .find(|s| &*s.http_route == "/product/{id}")
            .unwrap();
        assert_eq!(req.kind, herdwatch_analyzer::model::SpanKind::Server);
        assert_eq!(
            (&*req.resource.version, &*req.resource.instance),
            ("2.1.0", "pod-7")
        );
        assert_eq!(
            (req.http_status, &*req.http_method, &*req.url_path),
            (503, "GET", "/product/42")
        );
        assert_eq!(req.status, herdwatch_analyzer::model::StatusCode::Error);
        assert_eq!(req.cache_hit, Some(false));
        assert!(req.is_root());
        let get = spans.iter().find(|s| &*s.db_system == "redis").unwrap();
        assert_eq!(
            (&*get.db_operation, &*get.db_query, &*get.cache_key),
            ("GET", "GET product:42", "product:42")
        );
        assert_eq!(&*get.server_address, "cache-1");
        assert_eq!(get.parent_span_id, req.span_id);
        assert_eq!(get.trace_id, req.trace_id);
        let sql = spans
            .iter()
            .find(|s| &*s.db_system == "postgresql")
            .unwrap();
        assert_eq!(
            (&*sql.db_query, &*sql.db_operation, &*sql.db_namespace),
            ("SELECT * FROM product WHERE id = $1", "SELECT", "shop")
        );
        assert!(sql.end_unix_nano >= sql.start_unix_nano && sql.start_unix_nano > 0);
    }
    let stats = stats(app.dashboard_addr).await;
    assert_eq!(stats["services"]["via-grpc"]["spans"], 3);
    assert_eq!(stats["totals"]["spans"], 9);
    app.shutdown().await;
}

/// What the collector says it holds (`GET /api/v1/stats`).
async fn stats(dashboard: std::net::SocketAddr) -> serde_json::Value {
    reqwest::get(format!("http://{dashboard}/api/v1/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(
    url: &str,
    ct: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<String>, Vec<u8>, Option<String>) {
    let mut r = client().post(url).header("content-type", ct).body(body);
    if let Some(e) = encoding {
        r = r.header("content-encoding", e);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, ct, resp.bytes().await.unwrap().to_vec(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_vectors_are_accepted_as_json_and_as_protobuf() {
    let app = testsuite::start("vectors", "").await;
    let base = format!("http://{}", app.http_addr);
    for (path, file) in [
        ("traces", "trace.json"),
        ("metrics", "metrics.json"),
        ("logs", "logs.json"),
    ] {
        let (status, ct, body, _) = post(
            &format!("{base}/v1/{path}"),
            "application/json; charset=utf-8",
            None,
            vector(file).into_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{file}: {}", String::from_utf8_lossy(&body));
        assert_eq!(ct.as_deref(), Some("application/json"));
        assert_eq!(
            body, b"{}",
            "a fully accepted request leaves partial_success unset"
        );
    }
    // Their protobuf encodings, over HTTP (gzip) and gRPC.
    let traces: ExportTraceServiceRequest = serde_json::from_str(&vector("trace.json")).unwrap();
    let metrics: ExportMetricsServiceRequest =
        serde_json::from_str(&vector("metrics.json")).unwrap();
    let logs: ExportLogsServiceRequest = serde_json::from_str(&vector("logs.json")).unwrap();
    for (path, bytes) in [
        ("traces", traces.encode_to_vec()),
        ("metrics", metrics.encode_to_vec()),
        ("logs", logs.encode_to_vec()),
    ] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        let (status, ct, body, _) = post(
            &format!("{base}/v1/{path}"),
            "application/x-protobuf",
            Some("gzip"),
            gz.finish().unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(ct.as_deref(), Some("application/x-protobuf"));
        assert!(body.is_empty(), "empty protobuf response for full success");
    }
    let mut grpc = TraceServiceClient::connect(format!("http://{}", app.grpc_addr))
        .await
        .unwrap();
    let resp = grpc.export(traces.clone()).await.unwrap().into_inner();
    assert_eq!(
        resp,
        ExportTraceServiceResponse {
            partial_success: None
        }
    );
    // The trace vector's span was sent three times: stored once.
    let spans = app.store.spans(&Query::all());
    assert_eq!(spans.iter().filter(|s| s.trace_id[0] == 0x5b).count(), 1);
    let stats = app.store.stats();
    assert_eq!(stats.duplicates, 2);
    assert!(stats.totals.metric_points >= 3, "{stats:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_edge_cases_and_partial_success() {
    let app = testsuite::start("json", "").await;
    let url = format!("http://{}/v1/traces", app.http_addr);
    let span = |tid: &str, sid: &str| {
        format!(
            r#"{{"traceId":"{tid}","spanId":"{sid}","name":"x","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":1700000000100000000,"someFutureField":{{"a":1}}}}"#
        )
    };
    let doc = |spans: &[String]| {
        format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"edge"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}],"unknownTopLevel":true}}"#,
            spans.join(",")
        )
    };
    // Lower and upper case hex, 64-bit ints as strings and numbers, unknown fields.
    let ok = doc(&[
        span("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
        span("0AF7651916CD43DD8448EB211C80319D", "B7AD6B7169203332"),
    ]);
    let (status, _, body, _) = post(&url, "application/json", None, ok.into_bytes()).await;
    assert_eq!((status, body.as_slice()), (200, &b"{}"[..]));
    // Empty envelopes and missing optional fields.
    for empty in [
        r#"{}"#,
        r#"{"resourceSpans":[]}"#,
        r#"{"resourceSpans":[{"scopeSpans":[{}]}]}"#,
    ] {
        let (status, _, _, _) =
            post(&url, "application/json", None, empty.as_bytes().to_vec()).await;
        assert_eq!(status, 200, "{empty}");
    }
    // One wrong-length id among good spans: partial success naming it.
    let partial = doc(&[
        span("0af7651916cd43dd8448eb211c80319e", "b7ad6b7169203333"),
        span("0af7651916cd43dd8448eb211c8031", "b7ad6b7169203334"),
    ]);
    let (status, _, body, _) = post(&url, "application/json", None, partial.into_bytes()).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let rejected = &v["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 1 || rejected == "1", "{v}");
    let msg = v["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(msg.contains("spans[1]") && msg.contains("traceId"), "{msg}");
    // A base64 id is not hex: 400 naming the field.
    let bad = doc(&[span("CvdlGRbNQ92ESOshHIAxnA==", "b7ad6b7169203335")]);
    let (status, ct, body, _) = post(&url, "application/json", None, bad.into_bytes()).await;
    assert_eq!(status, 400);
    assert_eq!(ct.as_deref(), Some("application/json"));
    let st: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(st["code"], 3);
    assert!(st["message"].as_str().unwrap().contains("traceId"), "{st}");
    let edge = app.store.spans(&Query {
        service: Some("edge".into()),
        ..Query::all()
    });
    assert_eq!(edge.len(), 3, "2 good + 1 good of the partial request");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_spec_status_and_the_server_keeps_serving() {
    let app = testsuite::start("bad", "[server]\nmax_message_bytes = 65536\n").await;
    let url = format!("http://{}/v1/traces", app.http_addr);
    let good: ExportTraceServiceRequest = serde_json::from_str(&vector("trace.json")).unwrap();
    let good = good.encode_to_vec();
    let status_of = |b: &[u8]| RpcStatus::decode(b).expect("google.rpc.Status body");
    // Truncated protobuf.
    let (s, _, b, _) = post(
        &url,
        "application/x-protobuf",
        None,
        good[..good.len() - 7].to_vec(),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(status_of(&b).code, 3);
    // Random bytes.
    let noise: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (s, _, _, _) = post(&url, "application/x-protobuf", None, noise).await;
    assert_eq!(s, 400);
    // Wrong content type.
    let (s, _, _, _) = post(&url, "text/plain", None, good.clone()).await;
    assert_eq!(s, 415);
    // Wrong content encoding.
    let (s, _, _, _) = post(&url, "application/x-protobuf", Some("br"), good.clone()).await;
    assert_eq!(s, 415);
    // Wrong method.
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // Oversized body.
    let (s, _, b, _) = post(&url, "application/x-protobuf", None, vec![0u8; 70_000]).await;
    assert_eq!(s, 413);
    assert_eq!(status_of(&b).code, 8);
    // Gzip bomb: 64 KiB limit, 50 MiB inflated, tiny compressed.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 50 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 65536);
    let (s, _, _, _) = post(&url, "application/x-protobuf", Some("gzip"), bomb).await;
    assert_eq!(s, 413);
    // Empty JSON body; wrong-signal path.
    let (s, _, _, _) = post(&url, "application/json", None, Vec::new()).await;
    assert_eq!(s, 400);
    let (s, _, _, _) = post(
        &format!("http://{}/v1/spans", app.http_addr),
        "application/x-protobuf",
        None,
        good.clone(),
    )
    .await;
    assert_eq!(s, 404);
    // A metrics payload sent to the traces path is not a valid trace request.
    let metrics: ExportMetricsServiceRequest =
        serde_json::from_str(&vector("metrics.json")).unwrap();
    let (s, _, _, _) = post(
        &url,
        "application/json",
        None,
        serde_json::to_vec(&metrics).unwrap(),
    )
    .await;
    assert_eq!(
        s, 200,
        "unknown JSON fields are ignored: an empty trace request"
    );
    // gRPC: oversized → RESOURCE_EXHAUSTED; random bytes → INVALID_ARGUMENT.
    let mut grpc = TraceServiceClient::connect(format!("http://{}", app.grpc_addr))
        .await
        .unwrap();
    let mut big: ExportTraceServiceRequest = serde_json::from_str(&vector("trace.json")).unwrap();
    let span = big.resource_spans[0].scope_spans[0].spans[0].clone();
    for i in 0..2000u32 {
        let mut s = span.clone();
        s.span_id = (i as u64 + 1).to_be_bytes().to_vec();
        big.resource_spans[0].scope_spans[0].spans.push(s);
    }
    let err = grpc.export(big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let raw = raw_grpc(&format!("http://{}", app.grpc_addr), vec![0xff; 64]).await;
    assert_eq!(raw.unwrap_err().code(), tonic::Code::InvalidArgument);
    // Still serving, and nothing accepted was lost.
    let (s, _, _, _) = post(&url, "application/x-protobuf", None, good).await;
    assert_eq!(s, 200);
    assert_eq!(app.store.stats().totals.spans, 1);
    app.shutdown().await;
}

async fn raw_grpc(endpoint: &str, bytes: Vec<u8>) -> Result<bytes::Bytes, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    client
        .unary(
            tonic::Request::new(bytes),
            path,
            herdwatch_collector::otlp::grpc::RawCodec,
        )
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_is_retryable_and_nothing_is_lost() {
    // 8 KiB in flight at most: concurrent 3 KiB requests must queue or retry.
    let app = testsuite::start("pressure", "[store]\ninflight_bytes = 8192\n").await;
    let url = format!("http://{}/v1/traces", app.http_addr);
    let template: ExportTraceServiceRequest = serde_json::from_str(&vector("trace.json")).unwrap();
    let mut tasks = Vec::new();
    for t in 0..24u64 {
        let url = url.clone();
        let mut req = template.clone();
        let span = req.resource_spans[0].scope_spans[0].spans[0].clone();
        req.resource_spans[0].scope_spans[0].spans.clear();
        for i in 0..16u64 {
            let mut s = span.clone();
            s.trace_id = [t.to_be_bytes(), (i + 1).to_be_bytes()].concat();
            s.span_id = (t * 100 + i + 1).to_be_bytes().to_vec();
            req.resource_spans[0].scope_spans[0].spans.push(s);
        }
        let body = req.encode_to_vec();
        tasks.push(tokio::spawn(async move {
            let mut refusals = 0;
            loop {
                let (s, _, _, retry) =
                    post(&url, "application/x-protobuf", None, body.clone()).await;
                match s {
                    200 => return refusals,
                    429 | 503 => {
                        assert!(retry.is_some(), "retryable refusals carry Retry-After");
                        refusals += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
        }));
    }
    let mut refusals = 0;
    for t in tasks {
        refusals += t.await.unwrap();
    }
    assert!(refusals > 0, "the tiny bound refused something");
    let spans = app.store.spans(&Query::all());
    assert_eq!(spans.len(), 24 * 16, "every item stored exactly once");
    let metrics = reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("herdwatch_backpressure_refusals_total{transport=\"http\"}"))
        .unwrap();
    assert_eq!(
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap(),
        refusals
    );
    app.shutdown().await;
}

fn numbered(template: &ExportTraceServiceRequest, t: u64, n: u64) -> ExportTraceServiceRequest {
    let mut req = template.clone();
    let span = req.resource_spans[0].scope_spans[0].spans[0].clone();
    req.resource_spans[0].scope_spans[0].spans = (0..n)
        .map(|i| {
            let mut s = span.clone();
            s.trace_id = [t.to_be_bytes(), (i + 1).to_be_bytes()].concat();
            s.span_id = (t * 1000 + i + 1).to_be_bytes().to_vec();
            s
        })
        .collect();
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_compression_and_retryable_backpressure() {
    use tonic::codec::CompressionEncoding;
    let app = testsuite::start("grpc", "[store]\ninflight_bytes = 8192\n").await;
    let template: ExportTraceServiceRequest = serde_json::from_str(&vector("trace.json")).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for (t, enc) in [
        (1, CompressionEncoding::Gzip),
        (2, CompressionEncoding::Zstd),
    ] {
        let mut c = TraceServiceClient::new(channel.clone())
            .send_compressed(enc)
            .accept_compressed(enc);
        c.export(numbered(&template, t, 3))
            .await
            .expect("compressed export");
    }
    assert_eq!(app.store.stats().totals.spans, 6);
    // Concurrent exports over a tiny memory bound: UNAVAILABLE, then retried.
    let mut tasks = Vec::new();
    for t in 10..30u64 {
        let mut c = TraceServiceClient::new(channel.clone());
        let req = numbered(&template, t, 16);
        tasks.push(tokio::spawn(async move {
            let mut refusals = 0;
            loop {
                match c.export(req.clone()).await {
                    Ok(_) => return refusals,
                    Err(e) if e.code() == tonic::Code::Unavailable => {
                        refusals += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }));
    }
    let mut refusals = 0;
    for t in tasks {
        refusals += t.await.unwrap();
    }
    assert!(refusals > 0, "the bound refused something");
    assert_eq!(
        app.store.stats().totals.spans,
        6 + 20 * 16,
        "each span stored exactly once"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_metrics_arrive_with_their_kinds() {
    use opentelemetry::metrics::MeterProvider as _;
    let app = testsuite::start("sdk-metrics", "").await;
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", app.grpc_addr))
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(
            Resource::builder_empty()
                .with_attributes([KeyValue::new("service.name", "metered")])
                .build(),
        )
        .build();
    let meter = provider.meter("it");
    meter.u64_counter("redis.keyspace.hits").build().add(5, &[]);
    meter
        .i64_up_down_counter("db.client.connection.count")
        .build()
        .add(7, &[KeyValue::new("db.client.connection.state", "used")]);
    meter
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .build()
        .record(0.25, &[KeyValue::new("http.route", "/p")]);
    meter
        .f64_gauge("system.cpu.utilization")
        .build()
        .record(0.5, &[]);
    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .unwrap()
        .expect("flush");
    let points = app.store.points(&Query {
        service: Some("metered".into()),
        ..Query::all()
    });
    use herdwatch_analyzer::model::MetricValue;
    let find = |n: &str| {
        points
            .iter()
            .find(|p| &*p.name == n)
            .unwrap_or_else(|| panic!("{n} missing: {points:?}"))
    };
    assert!(
        matches!(find("redis.keyspace.hits").value, MetricValue::Sum { value, monotonic: true, .. } if value == 5.0)
    );
    let pool = find("db.client.connection.count");
    assert!(matches!(pool.value, MetricValue::Sum { value, monotonic: false, .. } if value == 7.0));
    assert_eq!(pool.attribute("db.client.connection.state"), Some("used"));
    assert!(matches!(
        &find("http.server.request.duration").value,
        MetricValue::Histogram { count: 1, .. }
    ));
    assert!(matches!(find("system.cpu.utilization").value, MetricValue::Gauge(v) if v == 0.5));
    let p = provider.clone();
    let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    app.shutdown().await;
}

/// The generator's real-time mode goes out through the SDK's own OTLP
/// exporter, over gRPC and over HTTP, and everything it sent is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generators_real_time_mode_delivers_over_grpc_and_http() {
    use herdwatch_samples::live::Protocol;
    for (protocol, name) in [
        (Protocol::Grpc, "live-grpc"),
        (Protocol::HttpProtobuf, "live-http"),
    ] {
        let app = herdwatch_collector::testsuite::start(name, "").await;
        let endpoint = match protocol {
            Protocol::Grpc => format!("http://{}", app.grpc_addr),
            Protocol::HttpProtobuf => format!("http://{}", app.http_addr),
        };
        // 180 s of baseline played 60 times faster.
        let sent = herdwatch_samples::live::run_with(
            herdwatch_samples::Capture::new(herdwatch_samples::Scenario::Baseline, 3),
            &endpoint,
            protocol,
            60.0,
            herdwatch_samples::EmitOptions::default(),
        )
        .await
        .expect("the generator delivers");
        assert!(sent > 50_000, "{name}: {sent} spans");
        let stats = stats(app.dashboard_addr).await;
        assert_eq!(stats["services"]["catalog"]["spans"], sent, "{name}");
        app.shutdown().await;
    }
}

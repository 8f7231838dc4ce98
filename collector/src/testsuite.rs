//! Fixtures shared by tests and benches (feature `testsuite`): a collector
//! on loopback ports picked at run time with a throwaway data directory.

use std::path::PathBuf;

use crate::app::{self, Running};
use crate::config::{Config, Overrides, RawConfig};

/// A fresh, unique directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("herdwatch-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Config for a collector on 127.0.0.1 with ephemeral ports.
pub fn loopback_config(data_dir: PathBuf, toml: &str) -> Config {
    let raw =
        RawConfig::parse(toml, std::path::Path::new("test.toml")).expect("test config parses");
    let o = Overrides {
        grpc_listen: Some("127.0.0.1:0".into()),
        http_listen: Some("127.0.0.1:0".into()),
        dashboard_listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir),
        ..Default::default()
    };
    Config::build(raw, &o).expect("test config is valid")
}

/// Start a collector with `toml` settings on loopback.
pub async fn start(name: &str, toml: &str) -> Running {
    app::start(loopback_config(temp_dir(name), toml))
        .await
        .expect("collector starts")
}

/// A webhook receiver on loopback: the first delivery gets a 500 (so the
/// sender's retry is exercised), every later one a 200 and is kept.
#[derive(Clone, Default)]
pub struct WebhookReceiver {
    attempts: std::sync::Arc<std::sync::Mutex<u32>>,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl WebhookReceiver {
    /// The bodies accepted so far, in arrival order.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Deliveries tried so far, refused ones included.
    pub fn attempts(&self) -> u32 {
        *self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serve on an ephemeral port; returns the URL to deliver to.
    pub async fn serve(self) -> String {
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("local address");
        let app = axum::Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let hook = self.clone();
                async move {
                    let n = {
                        let mut a = hook.attempts.lock().unwrap_or_else(|e| e.into_inner());
                        *a += 1;
                        *a
                    };
                    if n == 1 {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        hook.bodies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(body);
                        axum::http::StatusCode::OK
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }
}

/// A `herdwatch serve` child process on loopback ports picked at run time.
pub struct ServeChild {
    pub child: std::process::Child,
    pub grpc: String,
    pub http: String,
    pub dashboard: String,
}

/// Spawn `bin serve` on `dir` (plus `extra` flags) and read the addresses it
/// prints; its stderr keeps being drained so it never blocks.
pub fn spawn_serve(bin: &std::path::Path, dir: &std::path::Path, extra: &[&str]) -> ServeChild {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(bin)
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--dashboard-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("HERDWATCH_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn herdwatch serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = loop {
        let line = lines
            .next()
            .expect("herdwatch printed its addresses")
            .expect("readable stderr");
        if line.contains("herdwatch listening") {
            break line;
        }
    };
    let after = |tag: &str| {
        line.split(tag)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    };
    std::thread::spawn(move || for _ in lines {});
    ServeChild {
        grpc: after("OTLP gRPC "),
        http: after("OTLP HTTP "),
        dashboard: after("dashboard "),
        child,
    }
}

/// A trace export request for `service` with one server span per id:
/// trace id `[id; 16]`-like from `(batch, i)`, span id from `(batch, i)`.
pub fn trace_request(
    service: &str,
    batch: u64,
    spans: u64,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: [batch.to_be_bytes(), (i + 1).to_be_bytes()].concat(),
                        span_id: (batch * 1000 + i + 1).to_be_bytes().to_vec(),
                        name: "GET /".into(),
                        kind: 2,
                        start_time_unix_nano: 1_700_000_000_000_000_000 + batch * 1_000_000,
                        end_time_unix_nano: 1_700_000_000_001_000_000 + batch * 1_000_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The benchmarks' load: 512 spans with 10 attributes each, in traces of
/// four (a server span and a chain of three Redis lookups under it, keys
/// from `url.path`), ids unique per `seq`, stamped from `now_unix_nano` as
/// an SDK would stamp them.
pub fn bench_request(
    seq: u64,
    now_unix_nano: u64,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let kv = |k: &str, v: Value| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let spans = (0..512u64)
        .map(|i| {
            let n = seq * 512 + i;
            let root = i % 4 == 0;
            let start = now_unix_nano.saturating_sub(1_000_000) + i * 1000;
            Span {
                trace_id: [(n / 4).to_be_bytes(), 7u64.to_be_bytes()].concat(),
                span_id: (n + 1).to_be_bytes().to_vec(),
                parent_span_id: if root {
                    vec![]
                } else {
                    n.to_be_bytes().to_vec()
                },
                name: if root { "GET /product/{id}" } else { "GET" }.into(),
                kind: if root { 2 } else { 3 },
                start_time_unix_nano: start,
                end_time_unix_nano: start + 500_000,
                attributes: vec![
                    kv("http.request.method", Value::StringValue("GET".into())),
                    kv("http.route", Value::StringValue("/product/{id}".into())),
                    kv(
                        "url.path",
                        Value::StringValue(format!("/product/{}", n % 5000)),
                    ),
                    kv("http.response.status_code", Value::IntValue(200)),
                    kv("db.system.name", Value::StringValue("redis".into())),
                    kv("db.operation.name", Value::StringValue("GET".into())),
                    kv("db.query.text", Value::StringValue("GET ?".into())),
                    kv("server.address", Value::StringValue("cache-1".into())),
                    kv("network.peer.port", Value::IntValue(6379)),
                    kv("thread.id", Value::IntValue((n % 64) as i64)),
                ],
                ..Default::default()
            }
        })
        .collect();
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("bench".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

//! Real-time mode: the scenario plays against the wall clock and its spans
//! go out through the SDK's own OTLP exporter (gRPC or HTTP/protobuf), as a
//! service's would.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SpanExporter as _;

use crate::Capture;
use crate::emit::{self, EmitOptions};
use crate::sim;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot build the OTLP exporter: {0}")]
    Build(String),
    #[error("export to {endpoint} failed: {message}")]
    Export { endpoint: String, message: String },
}

fn exporter(
    endpoint: &str,
    protocol: Protocol,
) -> Result<opentelemetry_otlp::SpanExporter, LiveError> {
    match protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .with_timeout(Duration::from_secs(10))
            .build(),
    }
    .map_err(|e| LiveError::Build(e.to_string()))
}

/// Play `scenario` in real time against `endpoint`, `speed` times faster
/// than the simulation clock (1.0 = real time).
pub async fn run_with(
    capture: Capture,
    endpoint: &str,
    protocol: Protocol,
    speed: f64,
    opts: EmitOptions,
) -> Result<u64, LiveError> {
    let settings = capture.settings();
    let run = sim::simulate_settings(&settings, capture.seed);
    let seed = capture.seed;
    let wall_start = Instant::now();
    let epoch = SystemTime::now();
    let mut pipelines: HashMap<(usize, usize), (emit::Pipeline, opentelemetry_otlp::SpanExporter)> =
        HashMap::new();
    let mut next = 0usize;
    let mut sent = 0u64;
    let total = run.requests.len();
    while next < total {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let real_now = wall_start.elapsed().as_nanos() as u64;
        let shifted_end = |r: &sim::Request| r.end - (r.start - (r.start as f64 / speed) as u64);
        while next < total && shifted_end(&run.requests[next]) <= real_now {
            let r = &run.requests[next];
            let key = (r.service, r.generation);
            let (p, _) = match pipelines.entry(key) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let p =
                        emit::Pipeline::new(settings.services[r.service].name, r.generation, seed);
                    let mut e = exporter(endpoint, protocol)?;
                    e.set_resource(&p.resource);
                    v.insert((p, e))
                }
            };
            let p = &*p;
            // Arrivals are compressed by `speed`; durations are kept, so
            // latencies and herds look as they did in the simulation.
            let delta = r.start - (r.start as f64 / speed) as u64;
            let scaled = sim::Request {
                start: r.start - delta,
                end: r.end - delta,
                ops: r.ops.iter().map(|o| shift_op(o, delta)).collect(),
                ..r.clone()
            };
            emit::emit(p, &scaled, next, epoch, &opts);
            next += 1;
        }
        for (p, e) in pipelines.values() {
            let spans = p.drain();
            for chunk in spans.chunks(crate::BATCH) {
                let n = chunk.len() as u64;
                e.export(chunk.to_vec())
                    .await
                    .map_err(|err| LiveError::Export {
                        endpoint: endpoint.to_string(),
                        message: err.to_string(),
                    })?;
                sent += n;
            }
        }
    }
    tracing::info!(
        spans = sent,
        scenario = capture.scenario.name(),
        "scenario finished"
    );
    Ok(sent)
}

fn shift_op(op: &sim::Op, delta: u64) -> sim::Op {
    let s = |t: &u64| t.saturating_sub(delta);
    match op {
        sim::Op::Get { start, end, failed } => sim::Op::Get {
            start: s(start),
            end: s(end),
            failed: *failed,
        },
        sim::Op::Query {
            start,
            end,
            statement,
        } => sim::Op::Query {
            start: s(start),
            end: s(end),
            statement,
        },
        sim::Op::Set { start, end } => sim::Op::Set {
            start: s(start),
            end: s(end),
        },
        sim::Op::Lock { start, end } => sim::Op::Lock {
            start: s(start),
            end: s(end),
        },
        sim::Op::Flush { start, end } => sim::Op::Flush {
            start: s(start),
            end: s(end),
        },
    }
}

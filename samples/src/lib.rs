//! Scenario generator for Herdwatch: a simulated service (cache with TTLs,
//! database with a bounded pool) whose requests are emitted as spans through
//! the real OpenTelemetry SDK, either to OTLP/JSON-lines files in virtual
//! time ([`generate`]) or live over OTLP to an endpoint ([`live::run_with`]).

pub mod emit;
pub mod live;
pub mod metrics;
pub mod scenario;
pub mod sim;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

pub use emit::{EmitOptions, Semconv};
pub use scenario::{Scenario, Truth};

/// Virtual-time captures start here: 2026-01-15T12:00:00Z.
pub const EPOCH_UNIX_SECONDS: u64 = 1_768_478_400;

/// Spans per export request written.
pub const BATCH: usize = 512;

/// The OTLP request for spans of one resource.
pub fn to_request(spans: Vec<SpanData>, resource: &Resource) -> ExportTraceServiceRequest {
    let mut resource_spans =
        group_spans_by_resource_and_scope(spans, &ResourceAttributesWithSchema::from(resource));
    // The SDK's resource is a hash map: fix the attribute order so the same
    // seed gives the same bytes.
    for rs in &mut resource_spans {
        if let Some(r) = rs.resource.as_mut() {
            r.attributes.sort_by(|a, b| a.key.cmp(&b.key));
        }
    }
    ExportTraceServiceRequest { resource_spans }
}

/// Simulate `scenario` and write its spans as OTLP/JSON lines (one export
/// request per line, as the Collector's file exporter does). Returns the
/// number of spans written.
pub fn generate(
    scenario: Scenario,
    seed: u64,
    opts: &EmitOptions,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    generate_at(scenario, seed, opts, 0, out)
}

/// Large-scale captures for benchmarks: `repeat` back-to-back runs of the
/// scenario (seeds `seed`, `seed + 1`, …), streamed, never held in memory.
pub fn generate_repeated(
    scenario: Scenario,
    seed: u64,
    opts: &EmitOptions,
    repeat: u64,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let duration = scenario.settings().duration_s.ceil() as u64 + 10;
    let mut total = 0;
    for r in 0..repeat.max(1) {
        total += generate_at(scenario, seed + r, opts, r * duration, out)?;
    }
    Ok(total)
}

fn generate_at(
    scenario: Scenario,
    seed: u64,
    opts: &EmitOptions,
    offset_seconds: u64,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let run = sim::simulate(scenario, seed);
    let settings = scenario.settings();
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX_SECONDS + offset_seconds);
    let mut pipelines: HashMap<(usize, usize), emit::Pipeline> = HashMap::new();
    let mut written = 0u64;
    let mut pending = 0usize;
    let flush = |pipelines: &HashMap<(usize, usize), emit::Pipeline>,
                 out: &mut dyn Write,
                 written: &mut u64|
     -> std::io::Result<()> {
        let mut keys: Vec<&(usize, usize)> = pipelines.keys().collect();
        keys.sort();
        for k in keys {
            let p = &pipelines[k];
            let spans = p.drain();
            for chunk in spans.chunks(BATCH) {
                *written += chunk.len() as u64;
                let req = to_request(chunk.to_vec(), &p.resource);
                serde_json::to_writer(&mut *out, &req)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    };
    for (n, r) in run.requests.iter().enumerate() {
        let p = pipelines
            .entry((r.service, r.generation))
            .or_insert_with(|| {
                emit::Pipeline::new(
                    settings.services[r.service].name,
                    r.generation,
                    seed.wrapping_add(r.service as u64 * 31),
                )
            });
        emit::emit(p, r, n, epoch, opts);
        pending += r.ops.len() + 1;
        if pending >= BATCH * 4 {
            flush(&pipelines, out, &mut written)?;
            pending = 0;
        }
    }
    flush(&pipelines, out, &mut written)?;
    if opts.metrics {
        let epoch_nanos = (EPOCH_UNIX_SECONDS + offset_seconds) * 1_000_000_000;
        let duration = (settings.duration_s * 1e9) as u64;
        for (i, spec) in settings.services.iter().enumerate() {
            let r = emit::resource(spec.name, 0, "demo");
            let attr = |k: &str| {
                r.get(&opentelemetry::Key::from_static_str(match k {
                    "v" => "service.version",
                    _ => "service.instance.id",
                }))
                .map(|v| v.to_string())
                .unwrap_or_default()
            };
            let mut latencies: Vec<(u64, f64)> = run
                .requests
                .iter()
                .filter(|r| r.service == i && !r.path.is_empty())
                .map(|r| (r.end, (r.end - r.start) as f64 / 1e9))
                .collect();
            latencies.sort_by_key(|l| l.0);
            for req in metrics::requests(
                spec.name,
                &attr("v"),
                &attr("i"),
                epoch_nanos,
                &run.gauges[i],
                &latencies,
                duration,
            ) {
                serde_json::to_writer(&mut *out, &req)?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(written)
}

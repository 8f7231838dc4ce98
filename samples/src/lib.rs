//! Scenario generator for Herdwatch: a simulated service (cache with TTLs,
//! database with a bounded pool) whose requests are emitted as spans through
//! the real OpenTelemetry SDK, either to files in virtual time
//! ([`write_capture`]: OTLP/JSON lines or length-delimited OTLP protobuf)
//! or live over OTLP to an endpoint ([`live::run_with`]). The committed
//! exports under `samples/data/` come from [`committed_export`].

pub mod emit;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod scenario;
pub mod sim;
pub mod truth;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

pub use emit::{EmitOptions, Semconv};
pub use scenario::{Expectation, Mitigation, Scenario, Settings};
pub use truth::Truth;

/// Virtual-time captures start here: 2026-01-15T12:00:00Z.
pub const EPOCH_UNIX_SECONDS: u64 = 1_768_478_400;

/// Spans per export request written.
pub const BATCH: usize = 512;

/// The seed of the committed exports.
pub const COMMITTED_SEED: u64 = 7;

/// How a capture is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One OTLP/JSON export request per line (the Collector's file exporter).
    #[default]
    JsonLines,
    /// Length-delimited OTLP protobuf export requests (varint length, then
    /// the message), traces, metrics and logs mixed.
    Protobuf,
}

/// What to simulate: a scenario, its seed and the mitigations switched on.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    pub scenario: Scenario,
    pub seed: u64,
    pub mitigations: Vec<Mitigation>,
}

impl Capture {
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        Self {
            scenario,
            seed,
            mitigations: Vec::new(),
        }
    }

    pub fn with_mitigations(mut self, mitigations: &[Mitigation]) -> Self {
        self.mitigations = mitigations.to_vec();
        self
    }

    pub fn settings(&self) -> Settings {
        self.scenario.settings().with_mitigations(&self.mitigations)
    }

    pub fn simulate(&self) -> sim::Run {
        sim::simulate_settings(&self.settings(), self.seed)
    }

    /// The ground truth, measured from the simulation.
    pub fn truth(&self) -> Truth {
        let settings = self.settings();
        let run = sim::simulate_settings(&settings, self.seed);
        truth::measure(self.scenario, self.seed, &self.mitigations, &settings, &run)
    }
}

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

/// Simulate `scenario` and write its telemetry as OTLP/JSON lines. Returns
/// the number of spans written.
pub fn generate(
    scenario: Scenario,
    seed: u64,
    opts: &EmitOptions,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    write_capture(&Capture::new(scenario, seed), opts, Format::JsonLines, out)
}

/// Simulate `capture` and write its spans, metrics and log records.
pub fn write_capture(
    capture: &Capture,
    opts: &EmitOptions,
    format: Format,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    write_at(capture, opts, format, 0, out)
}

/// Large-scale captures for benchmarks: `repeat` back-to-back runs of the
/// capture (seeds `seed`, `seed + 1`, …), streamed, never held in memory.
pub fn generate_repeated(
    capture: &Capture,
    opts: &EmitOptions,
    format: Format,
    repeat: u64,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let duration = capture.settings().duration_s.ceil() as u64 + 10;
    let mut total = 0;
    for r in 0..repeat.max(1) {
        let c = Capture {
            seed: capture.seed + r,
            ..capture.clone()
        };
        total += write_at(&c, opts, format, r * duration, out)?;
    }
    Ok(total)
}

/// The committed export of `scenario`: its default-option capture from
/// [`COMMITTED_SEED`] as gzip-compressed OTLP/JSON lines (fixed header, so
/// the same code gives the same bytes), and its truth as pretty JSON.
pub fn committed_export(scenario: Scenario) -> std::io::Result<(Vec<u8>, String)> {
    let capture = Capture::new(scenario, COMMITTED_SEED);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    write_capture(
        &capture,
        &EmitOptions::default(),
        Format::JsonLines,
        &mut gz,
    )?;
    let bytes = gz.finish()?;
    let truth = serde_json::to_string_pretty(&capture.truth())? + "\n";
    Ok((bytes, truth))
}

/// File names of a scenario's committed export and truth.
pub fn committed_names(scenario: Scenario) -> (String, String) {
    (
        format!("{}.jsonl.gz", scenario.name()),
        format!("{}.truth.json", scenario.name()),
    )
}

fn write_message<M>(out: &mut dyn Write, format: Format, message: &M) -> std::io::Result<()>
where
    M: prost::Message + serde::Serialize,
{
    match format {
        Format::JsonLines => {
            serde_json::to_writer(&mut *out, message)?;
            out.write_all(b"\n")
        }
        Format::Protobuf => out.write_all(&message.encode_length_delimited_to_vec()),
    }
}

fn write_at(
    capture: &Capture,
    opts: &EmitOptions,
    format: Format,
    offset_seconds: u64,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let seed = capture.seed;
    let settings = capture.settings();
    let run = sim::simulate_settings(&settings, seed);
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX_SECONDS + offset_seconds);
    let epoch_nanos = (EPOCH_UNIX_SECONDS + offset_seconds) * 1_000_000_000;
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
                write_message(out, format, &to_request(chunk.to_vec(), &p.resource))?;
            }
        }
        Ok(())
    };
    let mut events = run.events.iter().peekable();
    for (n, r) in run.requests.iter().enumerate() {
        while let Some(e) = events.next_if(|e| e.at <= r.start) {
            if opts.spans {
                let spec = &settings.services[e.service];
                let (version, instance) = emit::identity(spec.name, e.generation);
                let record = match e.kind {
                    sim::EventKind::Deploy => {
                        logs::deploy(spec.name, &version, &instance, epoch_nanos + e.at)
                    }
                };
                write_message(out, format, &record)?;
            }
        }
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
        let duration = (settings.duration_s * 1e9) as u64;
        for (i, spec) in settings.services.iter().enumerate() {
            let (version, instance) = emit::identity(spec.name, 0);
            let mut latencies: Vec<(u64, f64)> = run
                .requests
                .iter()
                .filter(|r| r.service == i && !r.path.is_empty())
                .map(|r| (r.end, (r.end - r.start) as f64 / 1e9))
                .collect();
            latencies.sort_by_key(|l| l.0);
            let who = metrics::Identity {
                service: spec.name,
                version: &version,
                instance: &instance,
            };
            for req in metrics::requests(
                who,
                epoch_nanos,
                &run.gauges[i],
                &latencies,
                duration,
                opts.exponential_histograms,
            ) {
                write_message(out, format, &req)?;
            }
        }
    }
    Ok(written)
}

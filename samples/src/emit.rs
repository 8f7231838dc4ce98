//! Simulated requests → spans through the real OpenTelemetry SDK, the way
//! stock HTTP, Redis and PostgreSQL instrumentations emit them: a `SERVER`
//! request span, Redis `CLIENT` spans with sanitised statements (`GET ?`),
//! SQL `CLIENT` spans with parameterised text. Timestamps come from the
//! simulation clock, set explicitly on each span; ids from a seeded
//! generator, so the same seed gives the same bytes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{IdGenerator, SdkTracerProvider, SpanData, SpanExporter};

use crate::sim::{Op, Request, Rng};

/// Which database semantic conventions the spans carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semconv {
    Stable,
    Legacy,
    Mixed,
}

/// Options of the emitted telemetry.
#[derive(Debug, Clone, Copy)]
pub struct EmitOptions {
    pub semconv: Semconv,
    /// Emit `GET product:42` instead of `GET ?`.
    pub unsanitised: bool,
    /// Put `cache.hit` / `cache.key` on request spans (off by default: real
    /// services rarely have them).
    pub app_attributes: bool,
    /// Also write pool and Redis keyspace metrics.
    pub metrics: bool,
    /// Write spans (off for a metrics-only capture).
    pub spans: bool,
    /// Request durations as a base-2 exponential histogram instead of the
    /// semconv default buckets.
    pub exponential_histograms: bool,
}

impl Default for EmitOptions {
    fn default() -> Self {
        Self {
            semconv: Semconv::Stable,
            unsanitised: false,
            app_attributes: false,
            metrics: true,
            spans: true,
            exponential_histograms: false,
        }
    }
}

/// Seeded trace and span ids.
#[derive(Debug)]
pub struct SeededIds(Mutex<Rng>);

impl SeededIds {
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(Rng::new(seed ^ 0x1d5)))
    }
}

impl IdGenerator for SeededIds {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let v = ((r.next_u64() as u128) << 64) | r.next_u64() as u128;
        opentelemetry::trace::TraceId::from(v.max(1))
    }
    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        opentelemetry::trace::SpanId::from(r.next_u64().max(1))
    }
}

/// An exporter that keeps what it is given, for the caller to drain.
#[derive(Debug, Clone, Default)]
pub struct Collect(pub Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(batch);
        Ok(())
    }
}

/// One service generation's SDK pipeline.
pub struct Pipeline {
    pub provider: SdkTracerProvider,
    pub resource: Resource,
    pub spans: Collect,
}

/// The version and instance id of a service's deploy generation.
pub fn identity(service: &str, generation: usize) -> (String, String) {
    (
        format!("1.{}.0", 4 + generation),
        format!("{service}-{}", ["a1f3", "b7c9", "c2d8"][generation % 3]),
    )
}

pub fn resource(service: &str, generation: usize, environment: &str) -> Resource {
    let (version, instance) = identity(service, generation);
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", service.to_string()),
            KeyValue::new("service.version", version),
            KeyValue::new("service.instance.id", instance),
            KeyValue::new("deployment.environment.name", environment.to_string()),
        ])
        .build()
}

impl Pipeline {
    pub fn new(service: &str, generation: usize, seed: u64) -> Self {
        let spans = Collect::default();
        let resource = resource(service, generation, "demo");
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_id_generator(SeededIds::new(seed.wrapping_add(generation as u64 * 7919)))
            .with_simple_exporter(spans.clone())
            .build();
        Self {
            provider,
            resource,
            spans,
        }
    }

    pub fn drain(&self) -> Vec<SpanData> {
        std::mem::take(&mut *self.spans.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn at(epoch: SystemTime, nanos: u64) -> SystemTime {
    epoch + Duration::from_nanos(nanos)
}

fn db_attrs(
    opts: &EmitOptions,
    n: usize,
    system: &'static str,
    op: &str,
    query: String,
) -> Vec<KeyValue> {
    let stable = match opts.semconv {
        Semconv::Stable => true,
        Semconv::Legacy => false,
        Semconv::Mixed => n.is_multiple_of(2),
    };
    if stable {
        vec![
            KeyValue::new("db.system.name", system),
            KeyValue::new("db.operation.name", op.to_string()),
            KeyValue::new("db.query.text", query),
        ]
    } else {
        vec![
            KeyValue::new("db.system", system),
            KeyValue::new("db.operation", op.to_string()),
            KeyValue::new("db.statement", query),
        ]
    }
}

/// Emit one simulated request as spans.
pub fn emit(pipeline: &Pipeline, r: &Request, n: usize, epoch: SystemTime, opts: &EmitOptions) {
    if !opts.spans {
        return;
    }
    let tracer = pipeline.provider.tracer("herdwatch-samples");
    if r.route == "startup" {
        // The new instance flushes the cache at startup (no request span).
        for op in &r.ops {
            if let Op::Flush { start, end } = op {
                let mut attrs = db_attrs(opts, n, "redis", "FLUSHALL", "FLUSHALL".into());
                attrs.push(KeyValue::new("server.address", "cache-1"));
                let span = tracer
                    .span_builder("FLUSHALL")
                    .with_kind(SpanKind::Client)
                    .with_start_time(at(epoch, *start))
                    .with_attributes(attrs)
                    .start(&tracer);
                let mut span = span;
                opentelemetry::trace::Span::end_with_timestamp(&mut span, at(epoch, *end));
            }
        }
        return;
    }
    let mut attrs = vec![
        KeyValue::new("http.request.method", r.method),
        KeyValue::new("http.route", r.route),
        KeyValue::new("url.path", r.path.clone()),
        KeyValue::new("http.response.status_code", r.status as i64),
    ];
    if r.resend > 0 {
        attrs.push(KeyValue::new("http.request.resend_count", r.resend as i64));
    }
    if opts.app_attributes && !r.key.is_empty() {
        attrs.push(KeyValue::new("cache.hit", !r.missed));
        attrs.push(KeyValue::new("cache.key", r.key.clone()));
    }
    let mut request = tracer
        .span_builder(format!("{} {}", r.method, r.route))
        .with_kind(SpanKind::Server)
        .with_start_time(at(epoch, r.start))
        .with_attributes(attrs)
        .start(&tracer);
    if r.status >= 500 {
        opentelemetry::trace::Span::set_status(&mut request, Status::error("upstream timeout"));
    }
    let cx = Context::current_with_span(request);
    let key_arg = |cmd: &str| {
        if opts.unsanitised {
            format!("{cmd} {}", r.key)
        } else {
            format!("{cmd} ?")
        }
    };
    for op in &r.ops {
        let (name, start, end, mut attrs, failed) = match op {
            Op::Get { start, end, failed } => (
                "GET".to_string(),
                *start,
                *end,
                db_attrs(opts, n, "redis", "GET", key_arg("GET")),
                *failed,
            ),
            Op::Set { start, end } => (
                "SETEX".into(),
                *start,
                *end,
                db_attrs(
                    opts,
                    n,
                    "redis",
                    "SETEX",
                    if opts.unsanitised {
                        format!("SETEX {} 600 ?", r.key)
                    } else {
                        "SETEX ? ? ?".into()
                    },
                ),
                false,
            ),
            Op::Lock { start, end } => (
                "SET".into(),
                *start,
                *end,
                db_attrs(opts, n, "redis", "SET", "SET ? ? NX PX ?".into()),
                false,
            ),
            Op::Query {
                start,
                end,
                statement,
            } => {
                let mut a = db_attrs(opts, n, "postgresql", "SELECT", statement.to_string());
                a.push(KeyValue::new("db.namespace", "shop"));
                ("SELECT shop".into(), *start, *end, a, false)
            }
            Op::Flush { start, end } => (
                "FLUSHALL".into(),
                *start,
                *end,
                db_attrs(opts, n, "redis", "FLUSHALL", "FLUSHALL".into()),
                false,
            ),
        };
        let system_is_cache = !matches!(op, Op::Query { .. });
        attrs.push(KeyValue::new(
            "server.address",
            if system_is_cache {
                "cache-1"
            } else {
                "db-primary"
            },
        ));
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(at(epoch, start))
            .with_attributes(attrs)
            .start_with_context(&tracer, &cx);
        if failed {
            opentelemetry::trace::Span::set_status(&mut span, Status::error("redis: i/o timeout"));
        }
        opentelemetry::trace::Span::end_with_timestamp(&mut span, at(epoch, end));
    }
    cx.span().end_with_timestamp(at(epoch, r.end));
}

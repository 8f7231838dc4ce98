//! Metrics of the simulated service, every 10 s of simulation time, as the
//! OTLP messages real pipelines send: the app's connection-pool instruments
//! (`db.client.connection.*`, semconv) and the Collector Redis receiver's
//! cumulative `redis.keyspace.hits` / `redis.keyspace.misses`. The SDK
//! stamps metric points with the wall clock, so in virtual time these are
//! built as OTLP directly, with simulation timestamps.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exponential_histogram_data_point,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::sim::Gauges;

/// The semantic conventions' default buckets for `http.server.request.duration`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The database server's `max_connections` (what `postgresql.connection.max`
/// reports): well above the application's pool.
pub const SERVER_MAX_CONNECTIONS: usize = 100;

/// Connections other clients (migrations, admin tools) hold on the server.
pub const OTHER_BACKENDS: usize = 3;

/// Connections the pool keeps open when idle.
pub const POOL_MIN_IDLE: usize = 5;

/// Export interval of the simulated metric pipelines.
pub const INTERVAL_NANOS: u64 = 10_000_000_000;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn route_attrs() -> Vec<KeyValue> {
    vec![
        kv("http.route", "/product/{id}"),
        kv("http.request.method", "GET"),
    ]
}

fn point(start: u64, time: u64, v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsInt(v.round() as i64)),
        ..Default::default()
    }
}

fn sum(name: &str, unit: &str, monotonic: bool, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: 2,
            is_monotonic: monotonic,
        })),
        ..Default::default()
    }
}

/// Buckets an SDK's base-2 exponential histogram keeps at most.
pub const EXPONENTIAL_MAX_SIZE: i64 = 160;

/// The highest scale (at most 20) at which `min..=max` seconds fit in
/// [`EXPONENTIAL_MAX_SIZE`] buckets, and the index of `min`'s bucket, as an
/// SDK's exponential aggregation settles on them.
pub fn exponential_layout(min: f64, max: f64) -> (i32, i64) {
    let index = |v: f64, scale: i32| (v.log2() * 2f64.powi(scale)).ceil() as i64 - 1;
    let mut scale = 20;
    while scale > -10 && index(max, scale) - index(min, scale) + 1 > EXPONENTIAL_MAX_SIZE {
        scale -= 1;
    }
    (scale, index(min, scale))
}

/// Whose metrics these are.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub service: &'a str,
    pub version: &'a str,
    pub instance: &'a str,
}

/// One export request per interval for one service; the request-duration
/// histogram with the semconv default buckets, or base-2 exponential (as
/// SDKs configured for it send) when `exponential`.
pub fn requests(
    who: Identity<'_>,
    epoch_nanos: u64,
    gauges: &[Gauges],
    // (end, seconds) of each request, sorted by end, relative to the epoch.
    latencies: &[(u64, f64)],
    duration_nanos: u64,
    exponential: bool,
) -> Vec<ExportMetricsServiceRequest> {
    let Identity {
        service,
        version,
        instance,
    } = who;
    let mut counts = vec![0u64; DURATION_BUCKETS.len() + 1];
    let (lo, hi) = latencies
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), l| {
            (lo.min(l.1), hi.max(l.1))
        });
    let (exp_scale, exp_offset) = exponential_layout(lo.max(1e-9), hi.max(lo).max(1e-9));
    let mut exp_counts = vec![0u64; EXPONENTIAL_MAX_SIZE as usize];
    let mut exp_used = 0usize;
    let (mut total, mut seconds, mut li) = (0u64, 0.0f64, 0usize);
    let resource = Resource {
        attributes: vec![
            kv("service.name", service),
            kv("service.version", version),
            kv("service.instance.id", instance),
        ],
        ..Default::default()
    };
    let mut out = Vec::new();
    let (mut hits, mut misses) = (0u64, 0u64);
    let mut t = INTERVAL_NANOS;
    let mut i = 0;
    // The pool opens connections on demand and keeps them (no idle timeout
    // within a capture): the server sees the most it ever opened.
    let mut opened = 0usize;
    while t <= duration_nanos {
        let (mut used, mut pending, mut max) = (0usize, 0usize, 0usize);
        while i < gauges.len() && gauges[i].t < t {
            hits += gauges[i].hits;
            misses += gauges[i].misses;
            // Pool gauges are read at export time: the last second's values.
            if gauges[i].t + 1_000_000_000 >= t {
                used = gauges[i].pool_used;
                pending = gauges[i].pending;
            }
            max = gauges[i].pool_max.max(max);
            opened = opened.max(gauges[i].pool_used);
            i += 1;
        }
        while li < latencies.len() && latencies[li].0 < t {
            let secs = latencies[li].1;
            let b = DURATION_BUCKETS.partition_point(|x| *x < secs);
            counts[b] += 1;
            let e = ((secs.log2() * 2f64.powi(exp_scale)).ceil() as i64 - 1 - exp_offset)
                .clamp(0, EXPONENTIAL_MAX_SIZE - 1) as usize;
            exp_counts[e] += 1;
            exp_used = exp_used.max(e + 1);
            total += 1;
            seconds += secs;
            li += 1;
        }
        let (start, now) = (epoch_nanos, epoch_nanos + t);
        let pool = vec![kv("db.client.connection.pool.name", "shop-primary")];
        let with_state = |state: &str| {
            let mut a = pool.clone();
            a.push(kv("db.client.connection.state", state));
            a
        };
        let metrics = vec![
            sum(
                "db.client.connection.count",
                "{connection}",
                false,
                vec![
                    point(start, now, used as f64, with_state("used")),
                    point(
                        start,
                        now,
                        max.saturating_sub(used) as f64,
                        with_state("idle"),
                    ),
                ],
            ),
            sum(
                "db.client.connection.max",
                "{connection}",
                false,
                vec![point(start, now, max as f64, pool.clone())],
            ),
            sum(
                "db.client.connection.pending_requests",
                "{request}",
                false,
                vec![point(start, now, pending as f64, pool.clone())],
            ),
            sum(
                "postgresql.backends",
                "1",
                false,
                vec![point(
                    start,
                    now,
                    (opened.max(POOL_MIN_IDLE).min(max) + OTHER_BACKENDS) as f64,
                    vec![kv("postgresql.database.name", "shop")],
                )],
            ),
            Metric {
                name: "postgresql.connection.max".into(),
                unit: "{connection}".into(),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: vec![point(0, now, SERVER_MAX_CONNECTIONS as f64, vec![])],
                })),
                ..Default::default()
            },
            sum(
                "redis.keyspace.hits",
                "{hit}",
                true,
                vec![point(start, now, hits as f64, vec![])],
            ),
            sum(
                "redis.keyspace.misses",
                "{miss}",
                true,
                vec![point(start, now, misses as f64, vec![])],
            ),
            Metric {
                name: "http.server.request.duration".into(),
                unit: "s".into(),
                data: Some(if exponential {
                    metric::Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: vec![ExponentialHistogramDataPoint {
                            attributes: route_attrs(),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: total,
                            sum: Some(seconds),
                            scale: exp_scale,
                            positive: Some(exponential_histogram_data_point::Buckets {
                                offset: exp_offset as i32,
                                bucket_counts: exp_counts[..exp_used].to_vec(),
                            }),
                            ..Default::default()
                        }],
                        aggregation_temporality: 2,
                    })
                } else {
                    metric::Data::Histogram(Histogram {
                        data_points: vec![HistogramDataPoint {
                            attributes: route_attrs(),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: total,
                            sum: Some(seconds),
                            bucket_counts: counts.clone(),
                            explicit_bounds: DURATION_BUCKETS.to_vec(),
                            ..Default::default()
                        }],
                        aggregation_temporality: 2,
                    })
                }),
                ..Default::default()
            },
        ];
        out.push(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        t += INTERVAL_NANOS;
    }
    out
}

//! Metric series (SPEC §3.3) into per-service, per-bucket values:
//! gauges carried forward (last value per series, summed over series),
//! cumulative sums turned into deltas with counter resets handled, delta
//! sums used as they are, both spread over the interval they cover, and
//! latency histograms merged per bucket.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::{MetricPoint, MetricValue, Sym, Temporality};

/// A gauge older than this is no longer carried forward.
const GAUGE_STALENESS_NANOS: u64 = 60_000_000_000;

/// What one service's metrics say, bucket by bucket.
#[derive(Debug, Default, Clone)]
pub struct MetricBuckets {
    pub pool_used: Vec<Option<f64>>,
    pub pool_max: Vec<Option<f64>>,
    server_used: Vec<Option<f64>>,
    server_max: Vec<Option<f64>>,
    pub pending: Vec<Option<f64>>,
    pub cpu: Vec<Option<f64>>,
    pub cache_hits: Vec<f64>,
    pub cache_misses: Vec<f64>,
    pub keys_expired: Vec<f64>,
    pub keys_evicted: Vec<f64>,
    /// Latency histogram per bucket, in seconds (one bounds set per service).
    pub latency_bounds: Option<Arc<[f64]>>,
    pub latency_counts: Vec<Vec<f64>>,
    pub has_pool: bool,
    pub has_cache: bool,
    pub has_latency: bool,
}

impl MetricBuckets {
    fn new(n: usize) -> Self {
        Self {
            pool_used: vec![None; n],
            pool_max: vec![None; n],
            server_used: vec![None; n],
            server_max: vec![None; n],
            pending: vec![None; n],
            cpu: vec![None; n],
            cache_hits: vec![0.0; n],
            cache_misses: vec![0.0; n],
            keys_expired: vec![0.0; n],
            keys_evicted: vec![0.0; n],
            latency_counts: vec![Vec::new(); n],
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy)]
enum GaugeKind {
    PoolUsed,
    PoolMax,
    /// The database server's open connections (`postgresql.backends`) and
    /// its limit: a stand-in for pool use only when the client reports no
    /// pool metrics, since backends count idle pooled connections too.
    ServerUsed,
    ServerMax,
    Pending,
    Cpu,
}

#[derive(Clone, Copy)]
enum SumKind {
    Hits,
    Misses,
    Expired,
    Evicted,
}

fn gauge_kind(p: &MetricPoint) -> Option<GaugeKind> {
    match &*p.name {
        "db.client.connection.count" | "db.client.connections.usage" => {
            let state = p
                .attribute("db.client.connection.state")
                .or_else(|| p.attribute("state"));
            (state == Some("used")).then_some(GaugeKind::PoolUsed)
        }
        "db.client.connection.max" | "db.client.connections.max" => Some(GaugeKind::PoolMax),
        "postgresql.backends" => Some(GaugeKind::ServerUsed),
        "postgresql.connection.max" => Some(GaugeKind::ServerMax),
        "db.client.connection.pending_requests" | "db.client.connections.pending_requests" => {
            Some(GaugeKind::Pending)
        }
        "system.cpu.utilization" | "process.cpu.utilization" => Some(GaugeKind::Cpu),
        _ => None,
    }
}

fn sum_kind(name: &str) -> Option<SumKind> {
    match name {
        "redis.keyspace.hits" => Some(SumKind::Hits),
        "redis.keyspace.misses" => Some(SumKind::Misses),
        "redis.keys.expired" => Some(SumKind::Expired),
        "redis.keys.evicted" => Some(SumKind::Evicted),
        _ => None,
    }
}

fn scalar(v: &MetricValue) -> Option<f64> {
    match v {
        MetricValue::Gauge(x) => Some(*x),
        MetricValue::Sum { value, .. } => Some(*value),
        _ => None,
    }
}

/// Spread `amount` over buckets covering (from, to] in proportion to overlap.
fn spread(target: &mut [f64], t0: u64, width: u64, from: u64, to: u64, amount: f64) {
    spread_each(target.len(), t0, width, from, to, amount, |b, share| {
        target[b] += share
    });
}

/// The share of `amount` each of `n` buckets covering (from, to] takes, in
/// proportion to overlap, in bucket order: `share(bucket, amount)` for
/// every bucket it touches and no other.
fn spread_each(
    n: usize,
    t0: u64,
    width: u64,
    from: u64,
    to: u64,
    amount: f64,
    mut share: impl FnMut(usize, f64),
) {
    let n = n as u64;
    if to <= from || to <= t0 {
        if n > 0 {
            share((to.saturating_sub(t0) / width).min(n - 1) as usize, amount);
        }
        return;
    }
    let from = from.max(t0);
    let span = (to - from) as f64;
    let mut b = (from - t0) / width;
    while b < n {
        let lo = (t0 + b * width).max(from);
        let hi = (t0 + (b + 1) * width).min(to);
        if hi > lo {
            share(b as usize, amount * (hi - lo) as f64 / span);
        }
        if t0 + (b + 1) * width >= to {
            break;
        }
        b += 1;
    }
}

/// Exponential histograms are folded onto fixed bounds 2^(k/4) of their
/// unit (scale 2) from 2^-16 to 2^8: the buckets of any finer scale nest
/// exactly inside these, so cumulative counts stay cumulative when an SDK
/// lowers its scale over time.
const FOLD_SCALE: i32 = 2;
const FOLD_MIN_INDEX: i64 = -16 * 4;
const FOLD_MAX_INDEX: i64 = 8 * 4;

/// The bounds exponential histograms are folded onto.
pub fn exponential_bounds() -> Arc<[f64]> {
    static BOUNDS: std::sync::OnceLock<Arc<[f64]>> = std::sync::OnceLock::new();
    BOUNDS
        .get_or_init(|| {
            (FOLD_MIN_INDEX..=FOLD_MAX_INDEX)
                .map(|k| 2f64.powf(k as f64 / 4.0))
                .collect()
        })
        .clone()
}

/// Counts of an exponential histogram's positive buckets (bucket `i` covers
/// (base^i, base^(i+1)], base = 2^(2^-scale)) and zero bucket, as counts
/// over [`exponential_bounds`]. A bucket coarser than the fold counts where
/// its upper edge falls.
pub fn fold_exponential(scale: i32, zero_count: u64, offset: i32, counts: &[u64]) -> Vec<u64> {
    let n = (FOLD_MAX_INDEX - FOLD_MIN_INDEX + 1) as usize;
    let mut out = vec![0u64; n + 1];
    out[0] += zero_count;
    let scale = scale.clamp(-10, 20);
    for (i, c) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        let index = offset as i64 + i as i64;
        // The fold bucket j covering (2^(j/4), 2^((j+1)/4)] that holds it.
        let j = if scale >= FOLD_SCALE {
            index.div_euclid(1 << (scale - FOLD_SCALE))
        } else {
            (index + 1) * (1 << (FOLD_SCALE - scale)) - 1
        };
        // Explicit bucket k covers (bounds[k-1], bounds[k]].
        let k = (j + 1 - FOLD_MIN_INDEX).clamp(0, n as i64) as usize;
        out[k] += c;
    }
    out
}

/// Per-interval increments of a monotonic cumulative series, counter resets
/// handled: a drop (or a new start time) starts a new counter whose value is
/// all increment.
pub fn cumulative_deltas(points: &[(u64, u64, f64)]) -> Vec<(u64, u64, f64)> {
    let mut out = Vec::new();
    let mut prev: Option<(u64, u64, f64)> = None;
    for &(start, time, value) in points {
        match prev {
            Some((pstart, ptime, pvalue)) => {
                let reset = value < pvalue || (start != 0 && pstart != 0 && start != pstart);
                let delta = if reset { value } else { value - pvalue };
                let from = if reset && start != 0 { start } else { ptime };
                out.push((from, time, delta));
            }
            None => {
                // The first point of a counter that started inside the
                // window counts from its start time.
                if start != 0 && start < time {
                    out.push((start, time, value));
                }
            }
        }
        prev = Some((start, time, value));
    }
    out
}

/// Bucket every service's metrics over `n` buckets of `width` from `t0`.
pub fn bucket_metrics(
    points: &[MetricPoint],
    t0: u64,
    width: u64,
    n: usize,
) -> HashMap<Sym, MetricBuckets> {
    let mut series: BTreeMap<String, Vec<&MetricPoint>> = BTreeMap::new();
    for p in points {
        let relevant = gauge_kind(p).is_some()
            || sum_kind(&p.name).is_some()
            || &*p.name == "http.server.request.duration"
            || &*p.name == "http.server.duration";
        if relevant {
            series.entry(p.series_key()).or_default().push(p);
        }
    }
    let mut out: HashMap<Sym, MetricBuckets> = HashMap::new();
    let bucket_of = |t: u64| -> Option<usize> {
        if t < t0 {
            return None;
        }
        let b = ((t - t0) / width) as usize;
        (b < n).then_some(b)
    };
    for (_, mut pts) in series {
        pts.sort_by_key(|p| p.time_unix_nano);
        let first = pts[0];
        let mb = out
            .entry(first.resource.service.clone())
            .or_insert_with(|| MetricBuckets::new(n));
        if let Some(kind) = gauge_kind(first) {
            // Last value per bucket, carried forward until stale; summed
            // over series (pools of several instances add up).
            let mut values: Vec<Option<f64>> = vec![None; n];
            // The buckets the series reaches: only those are added up.
            let (mut first_b, mut last_b) = (n, 0);
            for (i, p) in pts.iter().enumerate() {
                let Some(v) = scalar(&p.value) else { continue };
                let Some(b) = bucket_of(p.time_unix_nano) else {
                    continue;
                };
                let until = pts
                    .get(i + 1)
                    .map(|q| q.time_unix_nano)
                    .unwrap_or(p.time_unix_nano + width)
                    .min(p.time_unix_nano + GAUGE_STALENESS_NANOS);
                let last = bucket_of(until.saturating_sub(1)).unwrap_or(n - 1).max(b);
                for slot in values.iter_mut().take(last + 1).skip(b) {
                    *slot = Some(v);
                }
                first_b = first_b.min(b);
                last_b = last_b.max(last);
            }
            let target = match kind {
                GaugeKind::PoolUsed => &mut mb.pool_used,
                GaugeKind::PoolMax => &mut mb.pool_max,
                GaugeKind::ServerUsed => &mut mb.server_used,
                GaugeKind::ServerMax => &mut mb.server_max,
                GaugeKind::Pending => &mut mb.pending,
                GaugeKind::Cpu => &mut mb.cpu,
            };
            let reached = first_b..(last_b + 1).max(first_b);
            for (t, v) in target[reached.clone()].iter_mut().zip(&values[reached]) {
                if let Some(v) = *v {
                    *t = Some(match kind {
                        GaugeKind::Cpu => t.unwrap_or(0.0).max(v),
                        _ => t.unwrap_or(0.0) + v,
                    });
                }
            }
            if !matches!(kind, GaugeKind::Cpu) {
                mb.has_pool = true;
            }
        } else if let Some(kind) = sum_kind(&first.name) {
            let cumulative = matches!(
                first.value,
                MetricValue::Sum {
                    temporality: Temporality::Cumulative,
                    ..
                }
            );
            let raw: Vec<(u64, u64, f64)> = pts
                .iter()
                .filter_map(|p| scalar(&p.value).map(|v| (p.start_unix_nano, p.time_unix_nano, v)))
                .collect();
            let deltas = if cumulative {
                cumulative_deltas(&raw)
            } else {
                raw
            };
            let target = match kind {
                SumKind::Hits => &mut mb.cache_hits,
                SumKind::Misses => &mut mb.cache_misses,
                SumKind::Expired => &mut mb.keys_expired,
                SumKind::Evicted => &mut mb.keys_evicted,
            };
            for (from, to, d) in deltas {
                spread(target, t0, width, from, to, d);
            }
            mb.has_cache = true;
        } else {
            // Latency histograms.
            let mut prev: Option<(u64, Vec<u64>)> = None;
            for p in &pts {
                let folded;
                let (bounds, bucket_counts, temporality) = match &p.value {
                    MetricValue::Histogram {
                        bounds,
                        bucket_counts,
                        temporality,
                        ..
                    } => (bounds, bucket_counts, temporality),
                    MetricValue::ExponentialHistogram {
                        scale,
                        zero_count,
                        positive_offset,
                        positive_counts,
                        temporality,
                        ..
                    } => {
                        folded = fold_exponential(
                            *scale,
                            *zero_count,
                            *positive_offset,
                            positive_counts,
                        );
                        (&exponential_bounds(), &folded, temporality)
                    }
                    _ => continue,
                };
                if bucket_counts.is_empty() {
                    continue;
                }
                // `http.server.duration` (old semconv) is in milliseconds.
                let scale = if &*p.name == "http.server.duration" || &*p.unit == "ms" {
                    0.001
                } else {
                    1.0
                };
                let bounds_s: Arc<[f64]> = bounds.iter().map(|b| b * scale).collect();
                if mb
                    .latency_bounds
                    .as_ref()
                    .is_some_and(|b| b.len() != bounds_s.len())
                {
                    continue; // One bounds layout per service.
                }
                mb.latency_bounds.get_or_insert_with(|| bounds_s.clone());
                let (from, delta): (u64, Vec<f64>) = match temporality {
                    Temporality::Delta => (
                        p.start_unix_nano,
                        bucket_counts.iter().map(|c| *c as f64).collect(),
                    ),
                    _ => match &prev {
                        Some((ptime, pcounts))
                            if pcounts.len() == bucket_counts.len()
                                && bucket_counts.iter().zip(pcounts).all(|(a, b)| a >= b) =>
                        {
                            (
                                *ptime,
                                bucket_counts
                                    .iter()
                                    .zip(pcounts)
                                    .map(|(a, b)| (a - b) as f64)
                                    .collect(),
                            )
                        }
                        Some(_) => (
                            p.start_unix_nano,
                            bucket_counts.iter().map(|c| *c as f64).collect(),
                        ),
                        None if p.start_unix_nano != 0 && p.start_unix_nano < p.time_unix_nano => (
                            p.start_unix_nano,
                            bucket_counts.iter().map(|c| *c as f64).collect(),
                        ),
                        None => {
                            prev = Some((p.time_unix_nano, bucket_counts.clone()));
                            continue;
                        }
                    },
                };
                prev = Some((p.time_unix_nano, bucket_counts.clone()));
                for (i, d) in delta.iter().enumerate() {
                    spread_each(n, t0, width, from, p.time_unix_nano, *d, |b, v| {
                        if v > 0.0 {
                            let slot = &mut mb.latency_counts[b];
                            if slot.is_empty() {
                                slot.resize(delta.len(), 0.0);
                            }
                            slot[i] += v;
                        }
                    });
                }
                mb.has_latency = true;
            }
        }
    }
    for mb in out.values_mut() {
        if mb.pool_used.iter().all(Option::is_none) {
            mb.pool_used = std::mem::take(&mut mb.server_used);
            mb.pool_max = std::mem::take(&mut mb.server_max);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_deltas_handle_resets() {
        let pts = [(1, 10, 5.0), (1, 20, 8.0), (25, 30, 2.0), (25, 40, 6.0)];
        let d = cumulative_deltas(&pts);
        assert_eq!(
            d,
            vec![(1, 10, 5.0), (10, 20, 3.0), (25, 30, 2.0), (30, 40, 4.0)]
        );
    }

    fn gauge(name: &str, t: u64, v: f64, attrs: &[(&str, &str)]) -> MetricPoint {
        MetricPoint {
            resource: Arc::new(crate::model::ResourceInfo {
                service: "catalog".into(),
                version: "1".into(),
                instance: "a".into(),
            }),
            name: name.into(),
            unit: "{connection}".into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            start_unix_nano: 0,
            time_unix_nano: t,
            value: MetricValue::Gauge(v),
        }
    }

    /// A point that came again goes; one of another value, time or
    /// series at the same time stays.
    #[test]
    fn repeated_points_are_kept_once() {
        let used = [("state", "used")];
        let a = gauge("db.client.connection.count", 10, 3.0, &used);
        let mut points = vec![
            a.clone(),
            gauge("db.client.connection.count", 10, 4.0, &used),
            a.clone(),
            gauge("db.client.connection.count", 11, 3.0, &used),
            gauge("db.client.connection.count", 10, 3.0, &[("state", "idle")]),
            a.clone(),
        ];
        let want: Vec<_> = [0, 1, 3, 4].iter().map(|&i| points[i].clone()).collect();
        assert_eq!(crate::model::drop_repeated(&mut points, &mut Vec::new()), 2);
        assert_eq!(points, want);
    }

    #[test]
    fn server_backends_stand_in_for_pool_use_only_without_pool_metrics() {
        let s = 1_000_000_000;
        let server = [
            gauge("postgresql.backends", s, 40.0, &[]),
            gauge("postgresql.connection.max", s, 100.0, &[]),
        ];
        let b = &bucket_metrics(&server, 0, s, 3)["catalog"];
        assert_eq!(b.pool_used[1], Some(40.0));
        assert_eq!(b.pool_max[1], Some(100.0));

        let mut both = server.to_vec();
        both.push(gauge(
            "db.client.connection.count",
            s,
            7.0,
            &[("db.client.connection.state", "used")],
        ));
        both.push(gauge("db.client.connection.max", s, 20.0, &[]));
        let b = &bucket_metrics(&both, 0, s, 3)["catalog"];
        assert_eq!(b.pool_used[1], Some(7.0), "the client's pool wins");
        assert_eq!(b.pool_max[1], Some(20.0));
    }

    #[test]
    fn exponential_buckets_fold_onto_the_bounds_that_hold_them() {
        let bounds = exponential_bounds();
        // Scale 3 (base 2^(1/8)): bucket 8 is (2, 2^(9/8)], inside the fold
        // bucket (2, 2^(5/4)]; bucket -1 is (2^(-1/8), 1], inside (2^(-1/4), 1].
        let folded = fold_exponential(3, 2, -1, &[5, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(folded[0], 2, "zero bucket");
        let at = |upper: f64| {
            bounds
                .iter()
                .position(|b| (b - upper).abs() < 1e-12)
                .unwrap()
        };
        assert_eq!(folded[at(1.0)], 5);
        assert_eq!(folded[at(2f64.powf(1.25))], 7);
        assert_eq!(folded.iter().sum::<u64>(), 14);
        // Scale 0 (base 2): bucket 1 is (2, 4]; counted where 4 falls.
        let coarse = fold_exponential(0, 0, 1, &[3]);
        assert_eq!(coarse[at(4.0)], 3);
        // Downscaling a cumulative histogram keeps the folded counts.
        let fine = fold_exponential(4, 0, 32, &[1, 2, 3, 4]);
        let merged = fold_exponential(3, 0, 16, &[3, 7]);
        assert_eq!(fine, merged);
    }

    #[test]
    fn latency_comes_from_exponential_histograms_too() {
        use crate::stats::histogram_quantile;
        let s = 1_000_000_000u64;
        // 100 requests of ~30 ms and 10 of ~3 s in one 10 s interval, scale 3.
        let index = |seconds: f64| (seconds.log2() * 8.0).ceil() as i32 - 1;
        let (fast, slow) = (index(0.03), index(3.0));
        let mut counts = vec![0u64; (slow - fast + 1) as usize];
        counts[0] = 100;
        counts[(slow - fast) as usize] = 10;
        let point = |t: u64, counts: Vec<u64>| MetricPoint {
            resource: Arc::new(crate::model::ResourceInfo {
                service: "catalog".into(),
                version: "1".into(),
                instance: "a".into(),
            }),
            name: "http.server.request.duration".into(),
            unit: "s".into(),
            attributes: vec![],
            start_unix_nano: 0,
            time_unix_nano: t,
            value: MetricValue::ExponentialHistogram {
                count: counts.iter().sum(),
                sum: 33.0,
                scale: 3,
                zero_count: 0,
                positive_offset: fast,
                positive_counts: counts,
                temporality: Temporality::Cumulative,
            },
        };
        let zero = vec![0u64; counts.len()];
        let pts = [point(10 * s, zero), point(20 * s, counts)];
        let b = &bucket_metrics(&pts, 0, 10 * s, 3)["catalog"];
        assert!(b.has_latency);
        let bounds = b.latency_bounds.as_ref().unwrap();
        let merged = &b.latency_counts[1];
        assert_eq!(merged.iter().sum::<f64>(), 110.0);
        let p50 = histogram_quantile(bounds, merged, 0.5);
        let p95 = histogram_quantile(bounds, merged, 0.95);
        assert!((0.025..=0.036).contains(&p50), "P50 {p50}");
        assert!((2.5..=3.6).contains(&p95), "P95 {p95}");
    }

    #[test]
    fn spread_is_proportional() {
        let mut t = vec![0.0; 4];
        spread(&mut t, 0, 10, 5, 25, 20.0);
        assert_eq!(t, vec![5.0, 10.0, 5.0, 0.0]);
    }
}

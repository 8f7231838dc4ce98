//! Per-service bucket series (SPEC §4.1) from facts and metrics.
//!
//! The span-derived part is one polars plan: facts become frames, each frame
//! is aggregated per (service, bucket) by a pure `LazyFrame → LazyFrame`
//! function, the aggregates are joined onto the union of their keys, and the
//! whole plan is collected once. Concurrency (recomputes and database
//! operations in flight, and the herd: recomputes of one key in flight) is a
//! sweep over start/end events: a cumulative sum of ±1 over time.

use std::collections::{HashMap, HashSet};

use polars::prelude::*;

use crate::config::{AnalysisConfig, SloConfig};
use crate::metrics::{MetricBuckets, bucket_metrics};
use crate::model::{MetricPoint, Sym};
use crate::shape::{self, DbOpFact, Facts, LookupFact, Outcome, RecomputeFact, RequestFact};
use crate::stats;

pub const SERVICE: &str = "service";
pub const BUCKET: &str = "bucket";
pub const KEY: &str = "key";
pub const T: &str = "t";
pub const DELTA: &str = "delta";
pub const MISS: &str = "miss";
pub const FAILED: &str = "failed";
pub const DUR_MS: &str = "dur_ms";
pub const BAD: &str = "bad";
pub const ERROR: &str = "error";
pub const RC_MS: &str = "rc_ms";
pub const LOOKUPS: &str = "lookups";
pub const MISSES: &str = "misses";
pub const FAILURES: &str = "failures";
pub const REQUESTS: &str = "requests";
pub const P50: &str = "p50_ms";
pub const P95: &str = "p95_ms";
pub const P99: &str = "p99_ms";
pub const BADS: &str = "bads";
pub const ERRORS: &str = "errors";
pub const DB_OPS: &str = "db_ops";
pub const DB_P95: &str = "db_p95_ms";
pub const DB_MS: &str = "db_ms";
pub const DB_RC_MS: &str = "db_rc_ms";
pub const INFLIGHT: &str = "inflight";
pub const KEY_INFLIGHT: &str = "key_inflight";
pub const RC_STARTS: &str = "rc_starts";
pub const RC_MAX: &str = "rc_inflight_max";
pub const RC_LAST: &str = "rc_inflight_last";
pub const HERD_MAX: &str = "herd_max";
pub const HERD_LAST: &str = "herd_last";
pub const DB_MAX: &str = "db_inflight_max";
pub const DB_LAST: &str = "db_inflight_last";
pub const WAIT_MS: &str = "wait_ms";
pub const QUEUED: &str = "queued";

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("building the analysis frames failed: {0}")]
    Polars(#[from] PolarsError),
}

/// One bucket of one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket {
    pub lookups: f64,
    pub misses: f64,
    pub failed: f64,
    pub recomputes: f64,
    pub recompute_inflight: f64,
    /// Recomputes whose database work began (in this bucket) only after
    /// waiting at least `pool_wait_ms` since their miss.
    pub queued: f64,
    pub herd: f64,
    pub db_ops: f64,
    pub db_inflight: f64,
    pub db_p95_ms: f64,
    pub db_ms: f64,
    pub recompute_db_ms: f64,
    pub requests: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Requests over the SLO threshold or 5xx.
    pub bad: f64,
    pub errors: f64,
    pub pool_used: Option<f64>,
    pub pool_max: Option<f64>,
    pub pending: Option<f64>,
    pub cpu: Option<f64>,
}

impl Bucket {
    pub fn pool_ratio(&self) -> Option<f64> {
        match (self.pool_used, self.pool_max) {
            (Some(u), Some(m)) if m > 0.0 => Some(u / m),
            _ => None,
        }
    }

    pub fn miss_ratio(&self) -> f64 {
        if self.lookups > 0.0 {
            self.misses / self.lookups
        } else {
            0.0
        }
    }
}

/// What a service's series could be built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    pub request_spans: bool,
    pub cache_spans: bool,
    pub db_spans: bool,
    pub pool_metrics: bool,
    pub cache_metrics: bool,
    pub latency_metrics: bool,
    /// Keys are visible (not only key groups).
    pub keys: bool,
}

impl Coverage {
    pub fn reduced(&self) -> bool {
        !(self.request_spans && self.cache_spans && self.db_spans)
    }

    /// What the analysis could not see, in words.
    pub fn gaps(&self) -> Vec<String> {
        let mut g = Vec::new();
        if !self.cache_spans {
            g.push(if self.cache_metrics {
                "no cache spans: miss rates come from redis.keyspace metrics, without per-key detail or herd sizes".to_string()
            } else {
                "no cache spans or cache metrics: misses cannot be seen".to_string()
            });
        }
        if !self.db_spans {
            g.push(
                "no database spans: the recompute share of database time cannot be measured".into(),
            );
        }
        if !self.request_spans {
            g.push(if self.latency_metrics {
                "no request spans: latency comes from http.server.request.duration histograms"
                    .to_string()
            } else {
                "no request spans or latency histograms: latency cannot be seen".to_string()
            });
        }
        if self.cache_spans && !self.keys {
            g.push("cache keys are not visible: keys are grouped by route".into());
        }
        g
    }
}

/// A service's series over the capture.
#[derive(Debug, Clone)]
pub struct ServiceSeries {
    pub service: Sym,
    pub t0: u64,
    pub bucket_nanos: u64,
    pub buckets: Vec<Bucket>,
    pub coverage: Coverage,
    pub slo: SloConfig,
}

impl ServiceSeries {
    pub fn time_of(&self, b: usize) -> u64 {
        self.t0 + b as u64 * self.bucket_nanos
    }

    pub fn bucket_of(&self, t: u64) -> usize {
        (t.saturating_sub(self.t0) / self.bucket_nanos) as usize
    }
}

fn bucket_expr(t0: u64, width: u64) -> Expr {
    ((col(T) - lit(t0 as i64)) / lit(width as i64)).alias(BUCKET)
}

/// Misses, failures and lookups per bucket.
pub fn lookup_plan(lf: LazyFrame, t0: u64, width: u64) -> LazyFrame {
    lf.with_column(bucket_expr(t0, width))
        .group_by([col(SERVICE), col(BUCKET)])
        .agg([
            len().cast(DataType::Float64).alias(LOOKUPS),
            col(MISS).sum().cast(DataType::Float64).alias(MISSES),
            col(FAILED).sum().cast(DataType::Float64).alias(FAILURES),
        ])
}

/// Request count, latency quantiles, bad and error counts per bucket.
pub fn request_plan(lf: LazyFrame, t0: u64, width: u64) -> LazyFrame {
    lf.with_column(bucket_expr(t0, width))
        .group_by([col(SERVICE), col(BUCKET)])
        .agg([
            len().cast(DataType::Float64).alias(REQUESTS),
            col(DUR_MS)
                .quantile(lit(0.5), QuantileMethod::Linear)
                .alias(P50),
            col(DUR_MS)
                .quantile(lit(0.95), QuantileMethod::Linear)
                .alias(P95),
            col(DUR_MS)
                .quantile(lit(0.99), QuantileMethod::Linear)
                .alias(P99),
            col(BAD).sum().cast(DataType::Float64).alias(BADS),
            col(ERROR).sum().cast(DataType::Float64).alias(ERRORS),
        ])
}

/// Database operation count, P95 and time (all, and recomputing) per bucket.
pub fn db_plan(lf: LazyFrame, t0: u64, width: u64) -> LazyFrame {
    lf.with_column(bucket_expr(t0, width))
        .group_by([col(SERVICE), col(BUCKET)])
        .agg([
            len().cast(DataType::Float64).alias(DB_OPS),
            col(DUR_MS)
                .quantile(lit(0.95), QuantileMethod::Linear)
                .alias(DB_P95),
            col(DUR_MS).sum().alias(DB_MS),
            col(RC_MS).sum().alias(DB_RC_MS),
        ])
}

/// Recomputes per bucket (by when their database work began) that had
/// waited at least `min_wait_ms` since their miss.
pub fn queue_plan(lf: LazyFrame, t0: u64, width: u64, min_wait_ms: f64) -> LazyFrame {
    lf.with_column(bucket_expr(t0, width))
        .group_by([col(SERVICE), col(BUCKET)])
        .agg([col(WAIT_MS)
            .gt_eq(lit(min_wait_ms))
            .sum()
            .cast(DataType::Float64)
            .alias(QUEUED)])
}

/// Sweep of ±1 events sorted by time (ends before starts at the same
/// instant): in flight per service and, with a key column, per key.
/// Aggregates the maximum and the last value per bucket.
pub fn inflight_plan(
    lf: LazyFrame,
    t0: u64,
    width: u64,
    per_key: bool,
    names: [&str; 4],
) -> PolarsResult<LazyFrame> {
    let [max_name, last_name, key_max_name, key_last_name] = names;
    let mut lf = lf
        .sort(
            [T, DELTA],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .with_column(
            col(DELTA)
                .cum_sum(false)
                .over([col(SERVICE)])?
                .alias(INFLIGHT),
        );
    if per_key {
        lf = lf.with_column(
            col(DELTA)
                .cum_sum(false)
                .over([col(SERVICE), col(KEY)])?
                .alias(KEY_INFLIGHT),
        );
    }
    let mut aggs = vec![
        col(INFLIGHT).max().cast(DataType::Float64).alias(max_name),
        col(INFLIGHT)
            .last()
            .cast(DataType::Float64)
            .alias(last_name),
    ];
    if per_key {
        aggs.push(
            col(KEY_INFLIGHT)
                .max()
                .cast(DataType::Float64)
                .alias(key_max_name),
        );
        aggs.push(
            col(DELTA)
                .gt(lit(0))
                .sum()
                .cast(DataType::Float64)
                .alias(key_last_name),
        );
    }
    Ok(lf
        .with_column(bucket_expr(t0, width))
        .group_by_stable([col(SERVICE), col(BUCKET)])
        .agg(aggs))
}

fn str_col(name: &str, v: Vec<&str>) -> Column {
    Column::new(name.into(), v)
}

fn events<'a>(
    intervals: impl Iterator<Item = (&'a str, Option<&'a str>, u64, u64)>,
) -> (Vec<&'a str>, Vec<&'a str>, Vec<i64>, Vec<i32>) {
    let (mut s, mut k, mut t, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (service, key, start, end) in intervals {
        s.push(service);
        k.push(key.unwrap_or(""));
        t.push(start as i64);
        d.push(1);
        s.push(service);
        k.push(key.unwrap_or(""));
        t.push(end.max(start) as i64);
        d.push(-1);
    }
    (s, k, t, d)
}

/// The facts a span series is computed from: slices of time-sorted facts
/// (whole, or the part of a window).
#[derive(Debug, Clone, Copy)]
pub struct FactSlices<'a> {
    pub requests: &'a [RequestFact],
    pub lookups: &'a [LookupFact],
    pub recomputes: &'a [RecomputeFact],
    pub db_ops: &'a [DbOpFact],
}

impl<'a> FactSlices<'a> {
    pub fn of(f: &'a Facts) -> Self {
        Self {
            requests: &f.requests,
            lookups: &f.lookups,
            recomputes: &f.recomputes,
            db_ops: &f.db_ops,
        }
    }

    /// The facts of sorted `f` that start in [from, to).
    pub fn between(f: &'a Facts, from: u64, to: u64) -> Self {
        Self {
            requests: shape::window(&f.requests, |r| r.start, from, to),
            lookups: shape::window(&f.lookups, |l| l.t, from, to),
            recomputes: shape::window(&f.recomputes, |r| r.start, from, to),
            db_ops: shape::window(&f.db_ops, |d| d.start, from, to),
        }
    }

    fn services(&self) -> Vec<Sym> {
        let mut s: Vec<Sym> = self
            .requests
            .iter()
            .map(|r| r.service.clone())
            .chain(self.lookups.iter().map(|l| l.service.clone()))
            .chain(self.db_ops.iter().map(|d| d.service.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        s.sort();
        s
    }
}

/// Each service's SLO, looked up once.
struct Slos<'a> {
    slos: &'a [SloConfig],
    cache: HashMap<Sym, SloConfig>,
}

impl<'a> Slos<'a> {
    fn new(slos: &'a [SloConfig]) -> Self {
        Self {
            slos,
            cache: HashMap::new(),
        }
    }

    fn get(&mut self, service: &Sym) -> SloConfig {
        let slos = self.slos;
        self.cache
            .entry(service.clone())
            .or_insert_with(|| {
                SloConfig::for_service(slos, service)
                    .cloned()
                    .unwrap_or_default()
            })
            .clone()
    }
}

fn empty_series(service: &Sym, t0: u64, width: u64, n: usize, slo: SloConfig) -> ServiceSeries {
    ServiceSeries {
        service: service.clone(),
        t0,
        bucket_nanos: width,
        buckets: vec![Bucket::default(); n],
        coverage: Coverage::default(),
        slo,
    }
}

/// Build every service's bucket series.
pub fn build(
    facts: &Facts,
    points: &[MetricPoint],
    config: &AnalysisConfig,
    slos: &[SloConfig],
) -> Result<Vec<ServiceSeries>, SignalError> {
    let width = config.bucket_nanos();
    let mut lo = facts.min_time;
    let mut hi = facts.max_time;
    if facts.spans == 0 {
        lo = u64::MAX;
        hi = 0;
    }
    for p in points {
        lo = lo.min(p.time_unix_nano);
        hi = hi.max(p.time_unix_nano);
    }
    if lo == u64::MAX || hi < lo {
        return Ok(Vec::new());
    }
    let t0 = lo / width * width;
    let n = ((hi - t0) / width + 1) as usize;
    let out = span_series(FactSlices::of(facts), t0, n, config, slos)?;
    Ok(with_metrics(out, points, t0, n, config, slos))
}

/// The span-derived series of every service with facts in `facts`, over
/// `n` buckets from `t0` (facts outside are ignored), with their coverage.
pub fn span_series(
    facts: FactSlices<'_>,
    t0: u64,
    n: usize,
    config: &AnalysisConfig,
    slos: &[SloConfig],
) -> Result<HashMap<Sym, ServiceSeries>, SignalError> {
    let width = config.bucket_nanos();
    let mut slos = Slos::new(slos);

    // Frames.
    let lookups = DataFrame::new_infer_height(vec![
        str_col(SERVICE, facts.lookups.iter().map(|l| &*l.service).collect()),
        Column::new(
            T.into(),
            facts.lookups.iter().map(|l| l.t as i64).collect::<Vec<_>>(),
        ),
        Column::new(
            MISS.into(),
            facts
                .lookups
                .iter()
                .map(|l| (l.outcome != Outcome::Hit) as i32)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            FAILED.into(),
            facts
                .lookups
                .iter()
                .map(|l| (l.outcome == Outcome::Failed) as i32)
                .collect::<Vec<_>>(),
        ),
    ])?;
    let mut bad = Vec::with_capacity(facts.requests.len());
    for r in facts.requests {
        let slo = slos.get(&r.service);
        let ms = (r.end - r.start) as f64 / 1e6;
        bad.push((r.error || ms > slo.threshold_ms) as i32);
    }
    let requests = DataFrame::new_infer_height(vec![
        str_col(
            SERVICE,
            facts.requests.iter().map(|r| &*r.service).collect(),
        ),
        Column::new(
            T.into(),
            facts
                .requests
                .iter()
                .map(|r| r.start as i64)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            DUR_MS.into(),
            facts
                .requests
                .iter()
                .map(|r| (r.end - r.start) as f64 / 1e6)
                .collect::<Vec<_>>(),
        ),
        Column::new(BAD.into(), bad),
        Column::new(
            ERROR.into(),
            facts
                .requests
                .iter()
                .map(|r| r.error as i32)
                .collect::<Vec<_>>(),
        ),
    ])?;
    let db = DataFrame::new_infer_height(vec![
        str_col(SERVICE, facts.db_ops.iter().map(|d| &*d.service).collect()),
        Column::new(
            T.into(),
            facts
                .db_ops
                .iter()
                .map(|d| d.start as i64)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            DUR_MS.into(),
            facts
                .db_ops
                .iter()
                .map(|d| (d.end - d.start) as f64 / 1e6)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            RC_MS.into(),
            facts
                .db_ops
                .iter()
                .map(|d| {
                    if d.recompute {
                        (d.end - d.start) as f64 / 1e6
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<_>>(),
        ),
    ])?;
    let waits = DataFrame::new_infer_height(vec![
        str_col(
            SERVICE,
            facts.recomputes.iter().map(|r| &*r.service).collect(),
        ),
        Column::new(
            T.into(),
            facts
                .recomputes
                .iter()
                .map(|r| r.start as i64)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            WAIT_MS.into(),
            facts
                .recomputes
                .iter()
                .map(|r| r.wait as f64 / 1e6)
                .collect::<Vec<_>>(),
        ),
    ])?;
    let (s, k, t, d) = events(
        facts
            .recomputes
            .iter()
            .map(|r| (&*r.service, Some(&*r.key), r.start, r.end)),
    );
    let rc_events = DataFrame::new_infer_height(vec![
        str_col(SERVICE, s),
        str_col(KEY, k),
        Column::new(T.into(), t),
        Column::new(DELTA.into(), d),
    ])?;
    let (s, _, t, d) = events(
        facts
            .db_ops
            .iter()
            .map(|o| (&*o.service, None, o.start, o.end)),
    );
    let db_events = DataFrame::new_infer_height(vec![
        str_col(SERVICE, s),
        Column::new(T.into(), t),
        Column::new(DELTA.into(), d),
    ])?;

    // One plan.
    let parts = [
        lookup_plan(lookups.lazy(), t0, width),
        request_plan(requests.lazy(), t0, width),
        db_plan(db.lazy(), t0, width),
        queue_plan(waits.lazy(), t0, width, config.pool_wait_ms),
        inflight_plan(
            rc_events.lazy(),
            t0,
            width,
            true,
            [RC_MAX, RC_LAST, HERD_MAX, RC_STARTS],
        )?,
        inflight_plan(
            db_events.lazy(),
            t0,
            width,
            false,
            [DB_MAX, DB_LAST, "", ""],
        )?,
    ];
    let keys = concat(
        parts
            .iter()
            .map(|p| p.clone().select([col(SERVICE), col(BUCKET)]))
            .collect::<Vec<_>>(),
        UnionArgs::default(),
    )?
    .unique(None, UniqueKeepStrategy::Any);
    let mut plan = keys;
    for p in parts {
        plan = plan.join(
            p,
            [col(SERVICE), col(BUCKET)],
            [col(SERVICE), col(BUCKET)],
            JoinArgs::new(JoinType::Left),
        );
    }
    let df = plan
        .sort([SERVICE, BUCKET], SortMultipleOptions::default())
        .collect()?;

    // Dense per-service vectors.
    let mut out: HashMap<Sym, ServiceSeries> = HashMap::new();
    let services: Vec<Sym> = facts.services();
    let intern: HashMap<&str, Sym> = services.iter().map(|s| (&**s, s.clone())).collect();
    let svc_col = df.column(SERVICE)?.str()?;
    let bucket_col = df.column(BUCKET)?.cast(&DataType::Int64)?;
    let bucket_col = bucket_col.i64()?;
    let f = |name: &str| -> PolarsResult<Vec<Option<f64>>> {
        Ok(df
            .column(name)?
            .cast(&DataType::Float64)?
            .f64()?
            .iter()
            .collect())
    };
    let cols: HashMap<&str, Vec<Option<f64>>> = [
        LOOKUPS, MISSES, FAILURES, REQUESTS, P50, P95, P99, BADS, ERRORS, DB_OPS, DB_P95, DB_MS,
        DB_RC_MS, QUEUED, RC_MAX, RC_LAST, HERD_MAX, RC_STARTS, DB_MAX, DB_LAST,
    ]
    .into_iter()
    .map(|name| f(name).map(|v| (name, v)))
    .collect::<PolarsResult<_>>()?;
    let get = |name: &str, i: usize| cols[name][i].unwrap_or(0.0);
    // Keys seen in a bucket's last in-flight value are carried into empty
    // buckets after it (an operation spanning many buckets stays in flight).
    let mut carry: HashMap<Sym, (usize, f64, f64)> = HashMap::new();
    #[allow(clippy::needless_range_loop)] // `i` indexes several columns at once
    for i in 0..df.height() {
        let (Some(svc), Some(b)) = (svc_col.get(i), bucket_col.get(i)) else {
            continue;
        };
        if b < 0 || b as usize >= n {
            continue;
        }
        let b = b as usize;
        let service = intern.get(svc).cloned().unwrap_or_else(|| Sym::from(svc));
        let series = out
            .entry(service.clone())
            .or_insert_with(|| empty_series(&service, t0, width, n, slos.get(&service)));
        let (last_b, rc_last, db_last) = carry.get(&service).copied().unwrap_or((0, 0.0, 0.0));
        for gap in (last_b + 1)..b {
            let g = &mut series.buckets[gap];
            g.recompute_inflight = g.recompute_inflight.max(rc_last);
            g.db_inflight = g.db_inflight.max(db_last);
        }
        let bucket = &mut series.buckets[b];
        bucket.lookups = get(LOOKUPS, i);
        bucket.misses = get(MISSES, i);
        bucket.failed = get(FAILURES, i);
        bucket.requests = get(REQUESTS, i);
        bucket.p50_ms = get(P50, i);
        bucket.p95_ms = get(P95, i);
        bucket.p99_ms = get(P99, i);
        bucket.bad = get(BADS, i);
        bucket.errors = get(ERRORS, i);
        bucket.db_ops = get(DB_OPS, i);
        bucket.db_p95_ms = get(DB_P95, i);
        bucket.db_ms = get(DB_MS, i);
        bucket.recompute_db_ms = get(DB_RC_MS, i);
        bucket.recompute_inflight =
            get(RC_MAX, i).max(rc_last * (cols[RC_MAX][i].is_none() as u8 as f64));
        bucket.queued = get(QUEUED, i);
        bucket.herd = get(HERD_MAX, i);
        bucket.recomputes = get(RC_STARTS, i);
        bucket.db_inflight = get(DB_MAX, i).max(db_last * (cols[DB_MAX][i].is_none() as u8 as f64));
        let rc_now = cols[RC_LAST][i].unwrap_or(rc_last);
        let db_now = cols[DB_LAST][i].unwrap_or(db_last);
        carry.insert(service, (b, rc_now, db_now));
    }
    for svc in &services {
        out.entry(svc.clone())
            .or_insert_with(|| empty_series(svc, t0, width, n, slos.get(svc)));
    }
    // Coverage from facts.
    for l in facts.lookups {
        if let Some(s) = out.get_mut(&l.service) {
            s.coverage.cache_spans = true;
            s.coverage.keys |= !l.group_only;
        }
    }
    for r in facts.requests {
        if let Some(s) = out.get_mut(&r.service) {
            s.coverage.request_spans = true;
        }
    }
    for d in facts.db_ops {
        if let Some(s) = out.get_mut(&d.service) {
            s.coverage.db_spans = true;
        }
    }
    Ok(out)
}

/// Merge the metric points (over the same `n` buckets from `t0`) into the
/// span series: services that only sent metrics get series too; metrics of
/// a resource without traffic of its own (a Redis or PostgreSQL receiver)
/// are shared by every service that has requests.
pub fn with_metrics(
    mut out: HashMap<Sym, ServiceSeries>,
    points: &[MetricPoint],
    t0: u64,
    n: usize,
    config: &AnalysisConfig,
    slos: &[SloConfig],
) -> Vec<ServiceSeries> {
    let width = config.bucket_nanos();
    let mut slos = Slos::new(slos);
    let metric_buckets = bucket_metrics(points, t0, width, n);
    let traffic: Vec<Sym> = out.keys().cloned().collect();
    for (svc, mb) in metric_buckets {
        let own = out.contains_key(&svc) || traffic.is_empty() || mb.has_latency;
        let targets: Vec<Sym> = if own {
            vec![svc.clone()]
        } else {
            traffic.clone()
        };
        for target in targets {
            let slo = slos.get(&target);
            let series = out
                .entry(target.clone())
                .or_insert_with(|| empty_series(&target, t0, width, n, slo.clone()));
            merge_metrics(series, &mb, &slo);
        }
    }
    let mut v: Vec<ServiceSeries> = out.into_values().collect();
    v.sort_by(|a, b| a.service.cmp(&b.service));
    v
}

fn merge_metrics(series: &mut ServiceSeries, mb: &MetricBuckets, slo: &SloConfig) {
    let cov = &mut series.coverage;
    cov.pool_metrics |= mb.has_pool;
    cov.cache_metrics |= mb.has_cache;
    cov.latency_metrics |= mb.has_latency;
    let use_cache_metrics = !cov.cache_spans;
    let use_latency_metrics = !cov.request_spans;
    for (b, bucket) in series.buckets.iter_mut().enumerate() {
        let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x + y),
            (x, None) => x,
            (None, y) => y,
        };
        bucket.pool_used = add(bucket.pool_used, mb.pool_used[b]);
        bucket.pool_max = add(bucket.pool_max, mb.pool_max[b]);
        bucket.pending = add(bucket.pending, mb.pending[b]);
        bucket.cpu = match (bucket.cpu, mb.cpu[b]) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        if use_cache_metrics && mb.has_cache {
            bucket.misses += mb.cache_misses[b];
            bucket.lookups += mb.cache_hits[b] + mb.cache_misses[b];
        }
        if use_latency_metrics && let Some(bounds) = &mb.latency_bounds {
            let counts = &mb.latency_counts[b];
            if !counts.is_empty() {
                let total: f64 = counts.iter().sum();
                bucket.requests += total;
                bucket.p50_ms = stats::histogram_quantile(bounds, counts, 0.5) * 1e3;
                bucket.p95_ms = stats::histogram_quantile(bounds, counts, 0.95) * 1e3;
                bucket.p99_ms = stats::histogram_quantile(bounds, counts, 0.99) * 1e3;
                bucket.bad += stats::histogram_count_above(bounds, counts, slo.threshold_ms / 1e3);
            }
        }
    }
}

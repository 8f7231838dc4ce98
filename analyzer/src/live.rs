//! Incremental analysis for `serve`. Batches arrive as they are stored;
//! each tick reduces the traces that completed since the last one, merges
//! their facts into a window of time-sorted facts, rebuilds only the
//! buckets those facts touch (with enough history before them for the
//! operations still in flight), and runs detection over the window's
//! series. A tick costs what arrived since the previous one plus detection,
//! not a re-read of the window.
//!
//! The buckets a tick rebuilds are computed by the same plan as a batch
//! analysis ([`signals::span_series`]) over the facts that can reach them,
//! so a bucket is the same whichever way it was computed (tested).

use std::collections::{HashMap, VecDeque};

use crate::detect;
use crate::incident::Report;
use crate::model::{Batch, LogMarker, MetricPoint, Sym};
use crate::report::{Analyzer, report_of};
use crate::shape::{Facts, TraceAssembler};
use crate::signals::{self, Bucket, Coverage, FactSlices, ServiceSeries, SignalError};

/// How the live window and trace completion behave.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// How much recent data the series and detection cover.
    pub window_nanos: u64,
    /// A trace whose root has arrived is complete this long (in data time)
    /// after its last span.
    pub quiet_nanos: u64,
    /// A trace without a root is complete this long after its last span.
    pub grace_nanos: u64,
    /// Ticks without new spans after which every pending trace whose root
    /// has arrived is reduced.
    pub idle_ticks_to_flush: u32,
    /// Ticks without new spans after which every pending trace is reduced,
    /// rooted or not. Until then a request in flight when its sender
    /// stalled keeps its spans together.
    pub idle_ticks_to_flush_all: u32,
    /// The longest operation assumed in flight across a rebuilt range.
    pub max_lookback_nanos: u64,
    /// How far behind the newest data the analysed series may end while
    /// traces that started there are pending.
    pub max_edge_lag_nanos: u64,
    /// Spans waiting in incomplete traces at most (beyond it, traces
    /// without a root are not waited for).
    pub max_pending_spans: usize,
    /// Memory the window's facts may take; beyond it the oldest facts go
    /// (their buckets stay, so burn rates and baselines keep the window,
    /// while evidence such as top keys covers the recent part).
    pub max_fact_bytes: usize,
}

impl LiveSettings {
    pub fn new(window_nanos: u64) -> Self {
        Self {
            window_nanos,
            quiet_nanos: 1_000_000_000,
            grace_nanos: 30_000_000_000,
            idle_ticks_to_flush: 3,
            idle_ticks_to_flush_all: 30,
            max_lookback_nanos: 60_000_000_000,
            max_edge_lag_nanos: 3_000_000_000,
            max_pending_spans: 200_000,
            max_fact_bytes: 128 << 20,
        }
    }
}

/// A service's span-derived buckets by absolute bucket number
/// (time / bucket width).
#[derive(Debug, Default)]
pub(crate) struct SpanBuckets {
    first: u64,
    buckets: VecDeque<Bucket>,
    coverage: Coverage,
}

impl SpanBuckets {
    fn set(&mut self, abs: u64, bucket: Bucket) {
        if self.buckets.is_empty() {
            self.first = abs;
        }
        while abs < self.first {
            self.buckets.push_front(Bucket::default());
            self.first -= 1;
        }
        let i = (abs - self.first) as usize;
        if i >= self.buckets.len() {
            self.buckets.resize(i + 1, Bucket::default());
        }
        self.buckets[i] = bucket;
    }

    fn get(&self, abs: u64) -> Option<&Bucket> {
        abs.checked_sub(self.first)
            .and_then(|i| self.buckets.get(i as usize))
    }

    fn evict_before(&mut self, abs: u64) {
        while abs > self.first && !self.buckets.is_empty() {
            self.buckets.pop_front();
            self.first += 1;
        }
    }
}

/// What one tick did, for self-telemetry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickStats {
    /// Buckets rebuilt from facts.
    pub rebuilt_buckets: u64,
    /// Traces reduced to facts.
    pub traces: u64,
    /// Traces still waiting for spans.
    pub pending_traces: u64,
    /// Memory the window's facts take (estimated).
    pub fact_bytes: u64,
}

/// The incremental analysis state.
pub struct LiveAnalysis {
    analyzer: Analyzer,
    settings: LiveSettings,
    assembler: TraceAssembler,
    facts: Facts,
    points: Vec<MetricPoint>,
    log_markers: Vec<LogMarker>,
    /// Markers seen in spans (a `FLUSHALL`): kept across ticks, while the
    /// markers derived from versions are derived anew.
    span_markers: Vec<crate::shape::MarkerFact>,
    spans: HashMap<Sym, SpanBuckets>,
    /// Longest recompute or database operation seen (capped).
    longest: u64,
    /// Facts before this time were dropped to stay within memory: buckets
    /// there are not rebuilt any more.
    facts_floor: u64,
    /// Earliest time in the data so far (the series start there while the
    /// window is longer than the data).
    earliest: u64,
    /// Where the series the last tick detected over start.
    window_from: u64,
    /// Newest metric point time seen.
    latest_point: u64,
    pushed_spans: u64,
    idle_ticks: u32,
    metric_points: u64,
    log_marker_count: u64,
    /// The series the last tick detected over.
    series: Vec<ServiceSeries>,
}

impl LiveAnalysis {
    pub fn new(analyzer: Analyzer, settings: LiveSettings) -> Self {
        let assembler = TraceAssembler::live(
            analyzer.config.clone(),
            settings.quiet_nanos,
            settings.grace_nanos,
            settings.max_pending_spans,
        );
        Self {
            analyzer,
            settings,
            assembler,
            facts: Facts {
                min_time: u64::MAX,
                ..Facts::default()
            },
            points: Vec::new(),
            log_markers: Vec::new(),
            span_markers: Vec::new(),
            spans: HashMap::new(),
            longest: 0,
            facts_floor: 0,
            earliest: u64::MAX,
            window_from: 0,
            latest_point: 0,
            pushed_spans: 0,
            idle_ticks: 0,
            metric_points: 0,
            log_marker_count: 0,
            series: Vec::new(),
        }
    }

    /// Take in rows that were just stored.
    pub fn push(&mut self, batch: Batch) {
        self.pushed_spans += batch.spans.len() as u64;
        self.assembler.push_all(batch.spans);
        self.metric_points += batch.points.len() as u64;
        for p in &batch.points {
            self.earliest = self.earliest.min(p.time_unix_nano);
            self.latest_point = self.latest_point.max(p.time_unix_nano);
        }
        self.log_marker_count += batch.markers.len() as u64;
        self.points.extend(batch.points);
        self.log_markers.extend(batch.markers);
    }

    /// Newest time seen in the data.
    pub fn latest(&self) -> u64 {
        self.assembler
            .watermark()
            .max(self.facts.max_time)
            .max(self.latest_point)
    }

    /// Reduce what completed, rebuild the buckets it touched and detect over
    /// the window.
    pub fn tick(&mut self) -> Result<(Report, TickStats), SignalError> {
        if self.pushed_spans == 0 {
            self.idle_ticks = self.idle_ticks.saturating_add(1);
        } else {
            self.idle_ticks = 0;
        }
        self.pushed_spans = 0;
        if self.idle_ticks >= self.settings.idle_ticks_to_flush_all {
            self.assembler.flush();
        } else if self.idle_ticks >= self.settings.idle_ticks_to_flush {
            self.assembler.flush_rooted();
        } else {
            self.assembler.sweep_complete();
        }
        let mut new = self.assembler.take_facts();
        self.span_markers.append(&mut new.markers);
        let mut stats = TickStats {
            traces: new.traces,
            pending_traces: self.assembler.pending_traces() as u64,
            ..TickStats::default()
        };
        let touched = touched_range(&new);
        for (s, e) in new
            .recomputes
            .iter()
            .map(|r| (r.start, r.end))
            .chain(new.db_ops.iter().map(|d| (d.start, d.end)))
        {
            self.longest = self
                .longest
                .max(e.saturating_sub(s).min(self.settings.max_lookback_nanos));
        }
        if new.spans > 0 {
            self.earliest = self.earliest.min(new.min_time);
        }
        self.facts.merge(new);

        let width = self.analyzer.config.bucket_nanos();
        let latest = self.latest();
        let horizon = (latest
            .saturating_sub(self.settings.window_nanos)
            .max(self.earliest))
        .min(latest)
            / width
            * width;
        self.facts.evict_before(horizon);
        self.facts_floor = self.facts_floor.max(horizon);
        for _ in 0..32 {
            if self.facts.approx_bytes() <= self.settings.max_fact_bytes {
                break;
            }
            self.facts_floor += latest.saturating_sub(self.facts_floor) / 8;
            self.facts.evict_before(self.facts_floor);
        }
        if self
            .points
            .first()
            .is_some_and(|p| p.time_unix_nano < horizon)
            || self.points.len() > 1 << 16
        {
            self.points.retain(|p| p.time_unix_nano >= horizon);
        }
        self.log_markers.retain(|m| m.time_unix_nano >= horizon);
        self.span_markers.retain(|m| m.t >= horizon);
        for b in self.spans.values_mut() {
            b.evict_before(horizon / width);
        }

        if let Some((from, to)) = touched {
            // Below the floor (plus the operations that could reach over
            // it) the facts are partial: those buckets keep what they had.
            let floor = if self.facts_floor > horizon {
                (self.facts_floor + self.longest).div_ceil(width) * width
            } else {
                horizon
            };
            stats.rebuilt_buckets = self.rebuild(from.max(floor), to)?;
        }
        stats.fact_bytes = self.facts.approx_bytes() as u64;

        // The window's series: cached span buckets, then metrics over them,
        // up to where facts are complete (a pending trace's facts would
        // still land in the buckets from its start: metrics alone there
        // would show the saturation before the misses that led it).
        // One slow trace holds the edge back at most `max_edge_lag_nanos`.
        let complete_to = self.assembler.pending_from().map_or(latest, |t| {
            t.saturating_sub(1)
                .max(latest.saturating_sub(self.settings.max_edge_lag_nanos))
        });
        let hi = latest.min(complete_to).max(horizon);
        let t0 = horizon;
        self.window_from = t0;
        let n = ((hi - t0) / width + 1) as usize;
        let series = dense_series(&self.spans, t0, n, &self.analyzer);
        let series = signals::with_metrics(
            series,
            &self.points,
            t0,
            n,
            &self.analyzer.config,
            &self.analyzer.slos,
        );
        self.facts.markers.clone_from(&self.span_markers);
        self.facts.derive_markers();
        self.facts
            .markers
            .extend(detect::log_markers(&self.log_markers));
        let report = report_of(
            &self.analyzer,
            &self.facts,
            &series,
            self.metric_points,
            self.log_marker_count,
        );
        self.series = series;
        Ok((report, stats))
    }

    /// Where the window the last tick detected over starts (data time): an
    /// incident that began before it is seen only in part.
    pub fn window_from(&self) -> u64 {
        self.window_from
    }

    /// The series the last tick detected over.
    pub fn series(&self) -> &[ServiceSeries] {
        &self.series
    }

    fn rebuild(&mut self, from: u64, to: u64) -> Result<u64, SignalError> {
        rebuild_span_buckets(
            &mut self.spans,
            &self.facts,
            from,
            to,
            self.longest,
            &self.analyzer,
        )
    }
}

/// Recompute the span buckets of `spans` from `from` to `to` (data time)
/// from every fact of sorted `facts` that can reach them (operations up to
/// `longest` before the first); returns how many buckets were rebuilt.
pub(crate) fn rebuild_span_buckets(
    spans: &mut HashMap<Sym, SpanBuckets>,
    facts: &Facts,
    from: u64,
    to: u64,
    longest: u64,
    analyzer: &Analyzer,
) -> Result<u64, SignalError> {
    let width = analyzer.config.bucket_nanos();
    let (b_from, b_to) = (from / width, to / width);
    if b_to < b_from {
        return Ok(0);
    }
    // Operations that started up to `longest` before the first bucket
    // can still be in flight inside it.
    let sub_first = (b_from * width).saturating_sub(longest) / width;
    let sub_t0 = sub_first * width;
    let n = (b_to + 1 - sub_first) as usize;
    let view = FactSlices::between(facts, sub_t0, (b_to + 1) * width);
    let mut out = signals::span_series(view, sub_t0, n, &analyzer.config, &analyzer.slos)?;
    for (service, cached) in spans.iter_mut() {
        if let Some(s) = out.remove(service) {
            cached.coverage = merge_coverage(&cached.coverage, &s.coverage);
            for (i, bucket) in s.buckets.into_iter().enumerate() {
                let abs = sub_first + i as u64;
                if abs >= b_from {
                    cached.set(abs, bucket);
                }
            }
        } else {
            for abs in b_from..=b_to {
                if cached.get(abs).is_some() {
                    cached.set(abs, Bucket::default());
                }
            }
        }
    }
    for (service, s) in out {
        let mut cached = SpanBuckets {
            coverage: s.coverage.clone(),
            ..SpanBuckets::default()
        };
        for (i, bucket) in s.buckets.into_iter().enumerate() {
            let abs = sub_first + i as u64;
            if abs >= b_from {
                cached.set(abs, bucket);
            }
        }
        spans.insert(service, cached);
    }
    Ok(b_to + 1 - b_from)
}

/// The cached span buckets as dense series of `n` buckets from `t0`.
pub(crate) fn dense_series(
    spans: &HashMap<Sym, SpanBuckets>,
    t0: u64,
    n: usize,
    analyzer: &Analyzer,
) -> HashMap<Sym, ServiceSeries> {
    let width = analyzer.config.bucket_nanos();
    let first_abs = t0 / width;
    spans
        .iter()
        .map(|(service, b)| {
            let buckets = (0..n as u64)
                .map(|i| b.get(first_abs + i).cloned().unwrap_or_default())
                .collect();
            let slo = crate::config::SloConfig::for_service(&analyzer.slos, service)
                .cloned()
                .unwrap_or_default();
            let series = ServiceSeries {
                service: service.clone(),
                t0,
                bucket_nanos: width,
                buckets,
                coverage: b.coverage.clone(),
                slo,
            };
            (service.clone(), series)
        })
        .collect()
}

/// Coverage is sticky: what a service was once seen sending, it keeps.
fn merge_coverage(a: &Coverage, b: &Coverage) -> Coverage {
    Coverage {
        request_spans: a.request_spans || b.request_spans,
        cache_spans: a.cache_spans || b.cache_spans,
        db_spans: a.db_spans || b.db_spans,
        pool_metrics: a.pool_metrics || b.pool_metrics,
        cache_metrics: a.cache_metrics || b.cache_metrics,
        latency_metrics: a.latency_metrics || b.latency_metrics,
        keys: a.keys || b.keys,
    }
}

/// The time range whose buckets new facts change: from the earliest start
/// to the latest end.
pub(crate) fn touched_range(f: &Facts) -> Option<(u64, u64)> {
    let starts = f
        .requests
        .iter()
        .map(|r| (r.start, r.end))
        .chain(f.lookups.iter().map(|l| (l.t, l.t)))
        .chain(f.recomputes.iter().map(|r| (r.start, r.end)))
        .chain(f.db_ops.iter().map(|d| (d.start, d.end)));
    starts.fold(None, |acc, (s, e)| match acc {
        None => Some((s, e.max(s))),
        Some((a, b)) => Some((a.min(s), b.max(e))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MarkerKind, SpanKind};
    use crate::shape::tests::{request_with, span};

    /// A `FLUSHALL` seen in a span is a marker of the window for as long as
    /// it is in it, not only for the tick that reduced its trace.
    #[test]
    fn a_flush_seen_in_spans_stays_a_marker_across_ticks() {
        let analyzer = Analyzer::new(Default::default(), Vec::new());
        let mut live = LiveAnalysis::new(analyzer, LiveSettings::new(900_000_000_000));
        let req = span(1, 1, 0, SpanKind::Server, 0, 10);
        let mut flush = span(1, 2, 1, SpanKind::Client, 1, 2);
        flush.db_system = Sym::from("redis");
        flush.db_operation = Sym::from("FLUSHALL");
        live.push(Batch {
            spans: vec![req, flush],
            ..Batch::default()
        });
        let flushes = |l: &LiveAnalysis| {
            l.facts
                .markers
                .iter()
                .filter(|m| m.kind == MarkerKind::CacheFlush)
                .count()
        };
        for _ in 0..4 {
            live.tick().unwrap();
        }
        assert_eq!(flushes(&live), 1, "reduced once the trace completed");
        live.push(Batch {
            spans: vec![span(2, 1, 0, SpanKind::Server, 3_000, 3_010)],
            ..Batch::default()
        });
        for _ in 0..4 {
            live.tick().unwrap();
        }
        assert_eq!(flushes(&live), 1, "still there ticks later");
    }

    /// A sender that stalls with a request in flight: its lookup and query
    /// were sent, its fill and its root (which ends last) come after the
    /// stall. Idle ticks reduce the complete traces, not the half-sent one:
    /// it stays one request, with its miss and its recompute, until the
    /// sender has been silent for `idle_ticks_to_flush_all` ticks.
    #[test]
    fn a_request_in_flight_when_its_sender_stalls_stays_one_trace() {
        let analyzer = Analyzer::new(Default::default(), Vec::new());
        let settings = LiveSettings::new(900_000_000_000);
        let mut live = LiveAnalysis::new(analyzer, settings.clone());
        let mut in_flight = request_with(1, "/product/42", true);
        let after_stall = vec![in_flight.remove(3), in_flight.remove(0)];
        let mut before = in_flight;
        before.extend(request_with(2, "/product/7", false));
        live.push(Batch {
            spans: before,
            ..Batch::default()
        });
        let mut traces = 0;
        let stall = settings.idle_ticks_to_flush_all - 1;
        for _ in 0..stall {
            traces += live.tick().unwrap().1.traces;
        }
        assert_eq!(traces, 1, "the complete request only");
        assert_eq!(live.assembler.pending_traces(), 1);
        live.push(Batch {
            spans: after_stall,
            ..Batch::default()
        });
        for _ in 0..=settings.idle_ticks_to_flush {
            traces += live.tick().unwrap().1.traces;
        }
        assert_eq!(traces, 2, "the stalled request, whole");
        assert_eq!(live.facts.requests.len(), 2);
        assert_eq!(live.facts.recomputes.len(), 1);
        let misses = |l: &LiveAnalysis| {
            l.facts
                .lookups
                .iter()
                .filter(|l| l.outcome == crate::shape::Outcome::Miss)
                .count()
        };
        assert_eq!(misses(&live), 1);

        // A trace whose root never comes is reduced once the sender has
        // been silent long enough.
        let mut rootless = request_with(3, "/product/9", true);
        rootless.remove(0);
        live.push(Batch {
            spans: rootless,
            ..Batch::default()
        });
        for _ in 0..settings.idle_ticks_to_flush_all {
            traces += live.tick().unwrap().1.traces;
        }
        assert_eq!(traces, 2, "still waiting for its root");
        traces += live.tick().unwrap().1.traces;
        assert_eq!(traces, 3, "reduced after the long silence");
        assert_eq!(live.assembler.pending_traces(), 0);
    }
}

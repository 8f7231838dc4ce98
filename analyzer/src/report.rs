//! The batch session (streamed input → report) and the text rendering of a
//! report for people.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use crate::config::{AnalysisConfig, SloConfig};
use crate::detect::{self, ServiceInput};
use crate::incident::{InputSummary, Report, SCHEMA_VERSION, ServiceSummary};
use crate::live::SpanBuckets;
use crate::model::Sym;
use crate::model::{Batch, LogMarker, MetricPoint};
use crate::shape::{Facts, TraceAssembler};
use crate::signals::{self, ServiceSeries, SignalError};
use crate::slo::{BurnSeries, budget_consumed, burn_rate};
use std::collections::HashMap;

/// Analysis settings shared by every session.
#[derive(Debug, Clone)]
pub struct Analyzer {
    pub config: Arc<AnalysisConfig>,
    pub slos: Arc<Vec<SloConfig>>,
}

impl Analyzer {
    pub fn new(config: AnalysisConfig, slos: Vec<SloConfig>) -> Self {
        let slos = if slos.is_empty() {
            vec![SloConfig::default()]
        } else {
            slos
        };
        Self {
            config: Arc::new(config),
            slos: Arc::new(slos),
        }
    }

    pub fn session(&self) -> Session {
        Session {
            analyzer: self.clone(),
            assembler: TraceAssembler::new(self.config.clone()),
            points: Vec::new(),
            markers: Vec::new(),
            bound: None,
        }
    }

    /// A session whose per-request facts stay within `max_fact_bytes`
    /// (looked at every `check_every` spans): past it, the buckets of the
    /// complete part of the data are built and its facts dropped. The
    /// series (and so detection) are the same as an unbounded session's;
    /// the evidence then needs a second pass over the input
    /// ([`Signals::evidence_plan`]).
    pub fn bounded_session(&self, max_fact_bytes: usize, check_every: usize) -> Session {
        Session {
            bound: Some(Bounder::start(
                Bound::new(max_fact_bytes),
                self.clone(),
                check_every,
            )),
            ..self.session()
        }
    }

    /// Analyse rows already in memory.
    pub fn analyze(
        &self,
        spans: impl IntoIterator<Item = crate::model::SpanRow>,
        points: Vec<MetricPoint>,
        markers: Vec<LogMarker>,
    ) -> Result<Report, SignalError> {
        let mut s = self.session();
        for span in spans {
            s.assembler.push(span);
        }
        s.points = points;
        s.markers = markers;
        s.finish()
    }
}

/// One analysis over streamed input: spans are reduced to facts as their
/// traces complete, so memory follows the number of requests in flight in
/// the data, plus the facts kept (all of them, or a bounded part).
pub struct Session {
    analyzer: Analyzer,
    assembler: TraceAssembler,
    points: Vec<MetricPoint>,
    markers: Vec<LogMarker>,
    bound: Option<Bounder>,
}

/// A bounded session's bookkeeping (merging facts, building buckets,
/// evicting) runs on a thread of its own, fed in order, so that assembly
/// does not wait for it.
struct Bounder {
    tx: Option<std::sync::mpsc::SyncSender<(Facts, u64)>>,
    thread: Option<std::thread::JoinHandle<Bound>>,
    held_bytes: Arc<AtomicUsize>,
    check_every: usize,
    since: usize,
}

impl Bounder {
    fn start(mut bound: Bound, analyzer: Analyzer, check_every: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Facts, u64)>(1);
        let held_bytes = Arc::new(AtomicUsize::new(0));
        let held = held_bytes.clone();
        let thread = std::thread::Builder::new()
            .name("herdwatch-bound".into())
            .spawn(move || {
                for (new, complete) in rx {
                    bound.take(new, &analyzer);
                    bound.compact(complete, &analyzer);
                    held.store(bound.held_bytes, AtomicOrdering::Relaxed);
                }
                bound
            })
            .expect("spawn the bounded session's thread");
        Self {
            tx: Some(tx),
            thread: Some(thread),
            held_bytes,
            check_every: check_every.max(1),
            since: 0,
        }
    }

    /// Hand over what the assembler completed, with the time before which
    /// the data is complete.
    fn send(&mut self, assembler: &mut TraceAssembler, analyzer: &Analyzer) {
        let complete = complete_before(assembler, analyzer.config.bucket_nanos());
        let new = assembler.take_facts();
        if let Some(tx) = &self.tx
            && tx.send((new, complete)).is_err()
        {
            self.tx = None; // the thread panicked: `finish` says so
        }
    }

    /// Everything handed over is merged: the state back.
    fn finish(mut self) -> Bound {
        self.tx = None;
        match self.thread.take().expect("finished once").join() {
            Ok(bound) => bound,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The bucket boundary before which no pending trace starts and the grace
/// has passed: buckets there are complete.
fn complete_before(assembler: &TraceAssembler, width: u64) -> u64 {
    let watermark = assembler.watermark();
    assembler
        .pending_from()
        .unwrap_or(watermark)
        .min(watermark.saturating_sub(assembler.grace()))
        / width
        * width
}

/// A bounded session's state: facts merged as traces complete, and the
/// span buckets built so far (as a live analysis keeps them).
struct Bound {
    max_fact_bytes: usize,
    facts: Facts,
    spans: HashMap<Sym, SpanBuckets>,
    /// Longest recompute or database operation seen: facts this long before
    /// a bucket can reach it.
    longest: u64,
    /// Buckets before this time are built.
    built_to: u64,
    /// Rows before this time may have been dropped.
    evicted_to: u64,
    /// Buckets before this one can no longer be rebuilt: rows that reach
    /// them were dropped (the bucket after the latest end of a row that
    /// went). An operation longer than any before, seen later, does not
    /// make more buckets final.
    final_to: u64,
    /// Facts were dropped: the evidence needs a second pass.
    evicted: bool,
    compacted: bool,
    /// Fact bytes at the last look.
    held_bytes: usize,
    /// Requests that arrived after the buckets they belong to were final.
    late_requests: u64,
}

/// Spans between two looks at a bounded session's memory (the CLI's), and
/// between two filterings of an evidence pass.
pub const COMPACT_EVERY: usize = 1 << 19;

impl Session {
    pub fn push(&mut self, batch: Batch) {
        let n = batch.spans.len();
        self.assembler.push_all(batch.spans);
        self.points.extend(batch.points);
        self.markers.extend(batch.markers);
        if let Some(b) = &mut self.bound {
            b.since += n;
            if b.since >= b.check_every {
                b.since = 0;
                b.send(&mut self.assembler, &self.analyzer);
            }
        }
    }

    pub fn finish(self) -> Result<Report, SignalError> {
        Ok(self.signals()?.report())
    }

    /// Memory held by a bounded session's facts (as counted against its
    /// budget) the last time it looked; 0 when unbounded.
    pub fn fact_bytes(&self) -> usize {
        self.bound
            .as_ref()
            .map_or(0, |b| b.held_bytes.load(AtomicOrdering::Relaxed))
    }

    /// The first half of [`Session::finish`]: the last traces reduced and
    /// the per-service frames built (signals, SLO series).
    pub fn signals(self) -> Result<Signals, SignalError> {
        let Session {
            analyzer,
            mut assembler,
            mut points,
            mut markers,
            bound,
        } = self;
        let repeated_records = crate::model::drop_repeated(&mut points, &mut markers);
        let bound = bound.map(|b| {
            let mut b = b.finish();
            assembler.flush();
            b.take(assembler.take_facts(), &analyzer);
            b
        });
        let late_requests = bound.as_ref().map_or(0, |b| b.late_requests);
        let (facts, series, partial) = match bound {
            Some(mut b) if b.compacted => {
                b.built_to = b.built_to.min(b.facts.max_time);
                b.rebuild(b.built_to, b.facts.max_time, &analyzer)?;
                let mut facts = b.facts;
                facts.derive_markers();
                facts.markers.extend(detect::log_markers(&markers));
                if b.evicted {
                    // Only markers, versions and counts are read from here
                    // on: the second pass brings the evidence.
                    facts.drop_rows();
                }
                let width = analyzer.config.bucket_nanos();
                let (mut lo, mut hi) = (facts.min_time, facts.max_time);
                for p in &points {
                    lo = lo.min(p.time_unix_nano);
                    hi = hi.max(p.time_unix_nano);
                }
                let t0 = lo / width * width;
                let n = ((hi - t0) / width + 1) as usize;
                let spans = crate::live::dense_series(&b.spans, t0, n, &analyzer);
                let series =
                    signals::with_metrics(spans, &points, t0, n, &analyzer.config, &analyzer.slos);
                (facts, series, b.evicted)
            }
            Some(b) => {
                // Within the budget: the facts it merged, as a whole.
                let mut facts = b.facts;
                if facts.min_time == u64::MAX {
                    facts.min_time = 0;
                }
                facts.derive_markers();
                facts.markers.extend(detect::log_markers(&markers));
                let series = signals::build(&facts, &points, &analyzer.config, &analyzer.slos)?;
                (facts, series, false)
            }
            None => {
                let mut facts = assembler.finish();
                facts.markers.extend(detect::log_markers(&markers));
                let series = signals::build(&facts, &points, &analyzer.config, &analyzer.slos)?;
                (facts, series, false)
            }
        };
        Ok(Signals {
            analyzer,
            facts,
            series,
            metric_points: points.len() as u64,
            log_markers: markers.len() as u64,
            partial,
            late_requests,
            repeated_records,
        })
    }
}

impl Bound {
    fn new(max_fact_bytes: usize) -> Self {
        Self {
            max_fact_bytes,
            facts: Facts {
                min_time: u64::MAX,
                ..Facts::default()
            },
            spans: HashMap::new(),
            longest: 0,
            built_to: 0,
            evicted_to: 0,
            final_to: 0,
            evicted: false,
            compacted: false,
            held_bytes: 0,
            late_requests: 0,
        }
    }

    /// Merge what the assembler completed.
    fn take(&mut self, mut new: Facts, analyzer: &Analyzer) {
        // Input that goes back in time (files covering the same hours)
        // past what was dropped: no bucket it joins can be rebuilt, so its
        // rows go at once and the report says so.
        if self.evicted {
            let final_to = self.final_to;
            self.late_requests += new.requests.iter().filter(|r| r.start < final_to).count() as u64;
            new.drop_rows_before(self.evicted_to);
        }
        for (s, e) in new
            .recomputes
            .iter()
            .map(|r| (r.start, r.end))
            .chain(new.db_ops.iter().map(|d| (d.start, d.end)))
        {
            self.longest = self.longest.max(e.saturating_sub(s));
        }
        let touched = crate::live::touched_range(&new);
        // Past a sixteenth of the budget, room for all of it and what one
        // look can add past it, so that the rows never grow by a copy.
        if self.facts.row_bytes() + new.row_bytes() > self.max_fact_bytes / 16 {
            self.facts
                .reserve_rows(self.max_fact_bytes + self.max_fact_bytes / 4);
        }
        self.facts.merge(new);
        // Facts of a trace that completed late, in buckets already built:
        // rebuilt where every fact that reaches them is still held.
        if self.compacted
            && let Some((from, to)) = touched
            && from < self.built_to
        {
            let lo = from.max(self.final_to);
            let hi = to.min(self.built_to - 1);
            if lo <= hi {
                let _ = self.rebuild(lo, hi, analyzer);
            }
        }
    }

    fn rebuild(&mut self, from: u64, to: u64, analyzer: &Analyzer) -> Result<(), SignalError> {
        crate::live::rebuild_span_buckets(
            &mut self.spans,
            &self.facts,
            from,
            to,
            self.longest,
            analyzer,
        )?;
        Ok(())
    }

    /// Build the buckets of the complete part of the data (no pending trace
    /// starts there): the series grow a piece at a time, never as one plan
    /// over every fact. Over budget, drop the facts only those buckets
    /// needed.
    fn compact(&mut self, complete: u64, analyzer: &Analyzer) {
        let width = analyzer.config.bucket_nanos();
        let from = if self.compacted {
            self.built_to
        } else {
            self.facts.min_time / width * width
        };
        // Nothing new is complete when the input went back in time (files
        // that cover the same hours): late rows were merged into the built
        // buckets as they came, and the budget still holds.
        if complete > from && self.facts.spans > 0 {
            if self.rebuild(from, complete - 1, analyzer).is_err() {
                return; // keep the facts: signals() reports the error
            }
            self.built_to = complete;
            self.compacted = true;
        }
        self.held_bytes = self.facts.row_bytes();
        if self.compacted && self.held_bytes > self.max_fact_bytes {
            // Only the buckets not built yet need facts, and only those as
            // far back as the longest operation reaches.
            self.evicted = true;
            self.evicted_to = self
                .evicted_to
                .max(self.built_to.saturating_sub(self.longest));
            // A bucket is final from the first one a row that went
            // reached, or started in, up to the one after its end.
            let reach = self.facts.evict_reserved_before(self.evicted_to);
            if reach > 0 {
                self.final_to = self.final_to.max((reach / width + 1) * width);
            }
        }
    }
}

/// Built frames, before detection.
pub struct Signals {
    analyzer: Analyzer,
    facts: crate::shape::Facts,
    series: Vec<ServiceSeries>,
    metric_points: u64,
    log_markers: u64,
    /// A bounded session dropped facts: the evidence needs a second pass.
    partial: bool,
    /// Requests a bounded session could not put in its final buckets.
    late_requests: u64,
    /// Metric points and log records that came more than once.
    repeated_records: u64,
}

/// Where the evidence of a bounded session's incidents lies: for each
/// episode of each service, the window detection reads whole (from the lead
/// tolerance before it to its end), the baseline period before it that the
/// replay's baselines read (recompute and request durations), and the
/// markers a warm-up would replay the keys before.
#[derive(Debug, Clone)]
pub struct EvidencePlan {
    analyzer: Analyzer,
    windows: Vec<Window>,
    series: Vec<ServiceSeries>,
    flags: Vec<detect::Flags>,
    markers: Vec<crate::shape::MarkerFact>,
    versions: HashMap<(Sym, Sym, Sym), (u64, u64)>,
}

#[derive(Debug, Clone)]
struct Window {
    series: usize,
    episode: detect::Episode,
    main: (u64, u64),
    baseline: (u64, u64),
    /// Markers whose hour before a warm-up would replay.
    markers: Vec<u64>,
}

impl Window {
    fn service<'a>(&self, plan: &'a EvidencePlan) -> &'a Sym {
        &plan.series[self.series].service
    }
}

/// Intervals sorted by start, for "which one holds t" by binary search
/// (overlapping ones merged when asked).
#[derive(Debug, Clone, Default)]
struct Spans(Vec<(u64, u64, usize)>);

impl Spans {
    fn new(mut v: Vec<(u64, u64, usize)>, merge: bool) -> Self {
        v.sort();
        if merge {
            let mut out: Vec<(u64, u64, usize)> = Vec::new();
            for (a, b, i) in v {
                match out.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => out.push((a, b, i)),
                }
            }
            v = out;
        }
        Self(v)
    }

    /// An interval holding `t` (among the latest-starting ones at or
    /// before it).
    fn find(&self, t: u64) -> Option<usize> {
        let n = self.0.partition_point(|&(a, _, _)| a <= t);
        self.0[..n]
            .iter()
            .rev()
            .take(8)
            .find(|&&(_, b, _)| t < b)
            .map(|&(_, _, i)| i)
    }
}

impl EvidencePlan {
    fn index(&self) -> (HashMap<Sym, Spans>, HashMap<Sym, Spans>) {
        let mut mains: HashMap<Sym, Vec<(u64, u64, usize)>> = HashMap::new();
        let mut bases: HashMap<Sym, Vec<(u64, u64, usize)>> = HashMap::new();
        for (i, w) in self.windows.iter().enumerate() {
            let s = w.service(self).clone();
            mains
                .entry(s.clone())
                .or_default()
                .push((w.main.0, w.main.1, i));
            bases
                .entry(s)
                .or_default()
                .push((w.baseline.0, w.baseline.1, i));
        }
        (
            mains
                .into_iter()
                .map(|(k, v)| (k, Spans::new(v, true)))
                .collect(),
            bases
                .into_iter()
                .map(|(k, v)| (k, Spans::new(v, false)))
                .collect(),
        )
    }

    /// The windows (data time, [from, to)).
    pub fn windows(&self) -> Vec<(u64, u64)> {
        self.windows.iter().map(|w| w.main).collect()
    }

    /// A second pass keeping at most `baseline_requests` requests of each
    /// baseline period (a deterministic sample: the same input keeps the
    /// same ones; all of them when there are fewer).
    pub fn session(self, baseline_requests: usize) -> EvidenceSession {
        let n = self.windows.len();
        let (mains, bases) = self.index();
        EvidenceSession {
            assembler: TraceAssembler::new(self.analyzer.config.clone()),
            kept: Facts::default(),
            mains,
            bases,
            fills: HashMap::new(),
            seen_keys: vec![HashMap::new(); n],
            sampled: vec![std::collections::BinaryHeap::new(); n],
            done: vec![false; n],
            incidents: Vec::new(),
            baseline_requests,
            plan: self,
            since: 0,
        }
    }
}

/// A request fact ordered by a hash of its trace id (bottom-k sampling).
#[derive(Debug, Clone)]
struct Sampled(u64, crate::shape::RequestFact);

impl PartialEq for Sampled {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1.trace_id) == (o.0, o.1.trace_id)
    }
}
impl Eq for Sampled {}
impl PartialOrd for Sampled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Sampled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1.trace_id).cmp(&(o.0, o.1.trace_id))
    }
}

fn trace_hash(id: &[u8; 16]) -> u64 {
    let mut h = u64::from_le_bytes(id[..8].try_into().unwrap_or_default())
        ^ u64::from_le_bytes(id[8..].try_into().unwrap_or_default()).rotate_left(29);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The second pass of a bounded analysis: the same input again, keeping
/// the facts inside the plan's windows, the recomputes and a sample of the
/// requests of their baseline periods, the last fill of each key before a
/// window (a synchronized expiry is told by when its keys were filled) and
/// the keys seen in the hour before a marker. Each window is decided as
/// soon as no trace that could still add to it is pending, and its facts
/// go: memory holds the windows open at once, not all of them.
pub struct EvidenceSession {
    assembler: TraceAssembler,
    plan: EvidencePlan,
    kept: Facts,
    mains: HashMap<Sym, Spans>,
    bases: HashMap<Sym, Spans>,
    /// Fill times per key: the last one before the earliest undecided
    /// window, and all after it.
    fills: HashMap<(Sym, Sym), Vec<u64>>,
    seen_keys: Vec<HashMap<(Sym, Sym), u64>>,
    sampled: Vec<std::collections::BinaryHeap<Sampled>>,
    done: Vec<bool>,
    incidents: Vec<crate::incident::Incident>,
    baseline_requests: usize,
    since: usize,
}

impl EvidenceSession {
    pub fn push(&mut self, batch: Batch) {
        self.since += batch.spans.len();
        self.assembler.push_all(batch.spans);
        if self.since >= COMPACT_EVERY {
            self.since = 0;
            self.keep();
            self.decide(false);
        }
    }

    fn keep(&mut self) {
        let mut new = self.assembler.take_facts();
        let plan = &self.plan;
        let (mains, bases) = (&self.mains, &self.bases);
        let inside = |s: &Sym, t: u64| mains.get(s).is_some_and(|m| m.find(t).is_some());
        let baseline_of = |s: &Sym, t: u64| bases.get(s).and_then(|b| b.find(t));
        // Every fill joins its key's history: a fill inside a window that
        // was decided (and dropped) still counts for the windows after it.
        for f in &new.fills {
            let v = self
                .fills
                .entry((f.service.clone(), f.key.clone()))
                .or_default();
            let at = v.partition_point(|&x| x <= f.t);
            v.insert(at, f.t);
        }
        for (i, w) in plan.windows.iter().enumerate() {
            if self.done[i] || w.markers.is_empty() {
                continue;
            }
            let service = w.service(plan);
            for &m in &w.markers {
                for l in new.lookups.iter().filter(|l| &l.service == service) {
                    if l.t < m && l.t + 3_600_000_000_000 >= m && !inside(service, l.t) {
                        let e = self.seen_keys[i]
                            .entry((l.service.clone(), l.key.clone()))
                            .or_insert(l.t);
                        *e = (*e).max(l.t);
                    }
                }
            }
        }
        for r in std::mem::take(&mut new.requests) {
            if inside(&r.service, r.start) {
                self.kept.requests.push(r);
            } else if let Some(i) = baseline_of(&r.service, r.start)
                && !r.missed
            {
                let heap = &mut self.sampled[i];
                heap.push(Sampled(trace_hash(&r.trace_id), r));
                if heap.len() > self.baseline_requests {
                    heap.pop();
                }
            }
        }
        let mut recomputes = std::mem::take(&mut new.recomputes);
        recomputes
            .retain(|r| inside(&r.service, r.start) || baseline_of(&r.service, r.start).is_some());
        self.kept.recomputes.append(&mut recomputes);
        self.kept
            .lookups
            .extend(new.lookups.into_iter().filter(|l| inside(&l.service, l.t)));
        self.kept.db_ops.extend(
            new.db_ops
                .into_iter()
                .filter(|d| inside(&d.service, d.start)),
        );
        self.kept
            .fills
            .extend(new.fills.into_iter().filter(|f| inside(&f.service, f.t)));
    }

    /// Decide every window whose facts are all in (or all of them, at the
    /// end), then drop the facts no open window needs.
    fn decide(&mut self, all: bool) {
        let watermark = self.assembler.watermark();
        let complete = self
            .assembler
            .pending_from()
            .unwrap_or(watermark)
            .min(watermark.saturating_sub(self.assembler.grace()));
        let ready: Vec<usize> = (0..self.plan.windows.len())
            .filter(|&i| !self.done[i] && (all || self.plan.windows[i].main.1 <= complete))
            .collect();
        if ready.is_empty() {
            return;
        }
        self.kept.sort_by_time();
        for i in ready {
            self.decide_window(i);
            self.done[i] = true;
        }
        // What the open windows still read.
        let floor = (0..self.plan.windows.len())
            .filter(|&i| !self.done[i])
            .map(|i| self.plan.windows[i].baseline.0)
            .min()
            .unwrap_or(u64::MAX);
        let first_open = (0..self.plan.windows.len())
            .filter(|&i| !self.done[i])
            .map(|i| self.plan.windows[i].main.0)
            .min()
            .unwrap_or(u64::MAX);
        self.fills.retain(|_, v| {
            let before = v.partition_point(|&t| t < first_open);
            v.drain(..before.saturating_sub(1));
            first_open != u64::MAX
        });
        let k = &mut self.kept;
        k.requests.retain(|r| r.start >= floor);
        k.lookups.retain(|l| l.t >= floor);
        k.recomputes.retain(|r| r.start >= floor);
        k.db_ops.retain(|d| d.start >= floor);
        k.fills.retain(|f| f.t >= floor);
        for (i, w) in self.plan.windows.iter().enumerate() {
            if w.baseline.1 <= floor || self.done[i] && w.main.1 <= floor {
                self.sampled[i].clear();
            }
        }
    }

    fn decide_window(&mut self, i: usize) {
        let plan = &self.plan;
        let w = &plan.windows[i];
        let service = w.service(plan);
        let (from, to) = (w.baseline.0, w.main.1);
        let k = &self.kept;
        let mut f = Facts {
            requests: shape_window(&k.requests, |r| r.start, from, to),
            lookups: shape_window(&k.lookups, |l| l.t, from, to),
            recomputes: shape_window(&k.recomputes, |r| r.start, from, to),
            db_ops: shape_window(&k.db_ops, |d| d.start, from, to),
            fills: shape_window(&k.fills, |x| x.t, from, to),
            markers: plan.markers.clone(),
            versions: plan.versions.clone(),
            ..Facts::default()
        };
        for heap in &self.sampled {
            f.requests.extend(
                heap.iter()
                    .filter(|s| s.1.start >= from && s.1.start < to && &s.1.service == service)
                    .map(|s| s.1.clone()),
            );
        }
        for ((svc, key), times) in &self.fills {
            let before = times.partition_point(|&t| t < w.main.0);
            if svc == service && before > 0 {
                f.fills.push(crate::shape::FillFact {
                    service: svc.clone(),
                    key: key.clone(),
                    t: times[before - 1],
                });
            }
        }
        for ((service, key), t) in std::mem::take(&mut self.seen_keys[i]) {
            f.lookups.push(crate::shape::LookupFact {
                group: key.clone(),
                service,
                t,
                key,
                outcome: crate::shape::Outcome::Hit,
                evidence: crate::shape::Evidence::Attribute,
                group_only: false,
            });
        }
        f.sort_by_time();
        let episode = w.episode;
        self.incidents.extend(detect::detect_where(
            &ServiceInput {
                series: &plan.series[w.series],
                facts: &f,
                config: &plan.analyzer.config,
            },
            &plan.flags[w.series],
            |e| *e == episode,
        ));
    }

    /// Every window decided: the incidents.
    pub fn finish(mut self) -> Vec<crate::incident::Incident> {
        self.assembler.flush();
        self.keep();
        self.decide(true);
        self.incidents
    }
}

/// The rows of sorted `v` in [from, to), copied.
fn shape_window<T: Clone>(v: &[T], key: impl Fn(&T) -> u64, from: u64, to: u64) -> Vec<T> {
    crate::shape::window(v, key, from, to).to_vec()
}

impl Signals {
    /// When the session was bounded and dropped facts: the second pass the
    /// evidence needs.
    pub fn evidence_plan(&self) -> Option<EvidencePlan> {
        if !self.partial {
            return None;
        }
        let config = &self.analyzer.config;
        let width = config.bucket_nanos();
        let tol = ((config.lead_tolerance_seconds / config.bucket_seconds).round() as u64).max(1);
        let baseline = (config.baseline_seconds * 1e9) as u64;
        let mut windows = Vec::new();
        let mut flags = Vec::new();
        for (si, s) in self.series.iter().enumerate() {
            let f = detect::flags(s, config);
            for episode in detect::episodes(&f, config) {
                let from = s.time_of(episode.start).saturating_sub(tol * width + width);
                let to = s.time_of(episode.end) + width;
                let m_from = s
                    .time_of(episode.start)
                    .saturating_sub((config.cold_marker_window_seconds * 1e9) as u64);
                let m_to = to + tol * width;
                let markers = self
                    .facts
                    .markers
                    .iter()
                    .filter(|m| m.service == s.service && m.t >= m_from && m.t <= m_to)
                    .map(|m| m.t)
                    .collect();
                windows.push(Window {
                    series: si,
                    episode,
                    main: (from, to),
                    baseline: (from.saturating_sub(baseline + width), from),
                    markers,
                });
            }
            flags.push(f);
        }
        Some(EvidencePlan {
            analyzer: self.analyzer.clone(),
            windows,
            series: self.series.clone(),
            flags,
            markers: self.facts.markers.clone(),
            versions: self.facts.versions.clone(),
        })
    }

    /// Every service's bucket series.
    pub fn series(&self) -> &[ServiceSeries] {
        &self.series
    }

    /// The second half of [`Session::finish`]: detection, causes,
    /// mitigations and summaries. (Borrowing: a caller about to exit may
    /// skip freeing the facts.) A bounded session that dropped facts gets
    /// its incidents from [`Signals::evidence_plan`] and
    /// [`Signals::report_with`] instead.
    pub fn report(&self) -> Report {
        let mut report = report_of(
            &self.analyzer,
            &self.facts,
            &self.series,
            self.metric_points,
            self.log_markers,
        );
        self.note_input(&mut report);
        report
    }

    /// What the input held twice, or too late to count.
    fn note_input(&self, report: &mut Report) {
        let spans = self.facts.duplicate_spans;
        let records = self.repeated_records;
        let what = match (spans, records) {
            (0, 0) => None,
            (s, 0) => Some(format!("{s} spans")),
            (0, r) => Some(format!("{r} metric points or log records")),
            (s, r) => Some(format!("{s} spans and {r} metric points or log records")),
        };
        if let Some(what) = what {
            report.notes.push(format!(
                "{what} came more than once (a retried export, or a file given twice) and were counted once"
            ));
        }
        if self.late_requests > 0 {
            report.notes.push(format!(
                "{} requests came after the part of the series they belong to was final (the input goes back in time, e.g. files that cover the same hours) and are not in the series; analyse such files with --fact-mib 0, or merged in time order",
                self.late_requests
            ));
        }
    }

    /// The report of a bounded analysis, with the incidents its second
    /// pass decided.
    pub fn report_with(&self, incidents: Vec<crate::incident::Incident>) -> Report {
        let mut report = report_from(
            &self.analyzer,
            incidents,
            &self.series,
            &self.facts,
            self.metric_points,
            self.log_markers,
        );
        self.note_input(&mut report);
        report
    }
}

fn sort_incidents(incidents: &mut [crate::incident::Incident]) {
    incidents.sort_by(|a, b| {
        a.onset_unix_nano
            .cmp(&b.onset_unix_nano)
            .then(a.service.cmp(&b.service))
    });
}

/// Detection, causes, mitigations and summaries over built series and the
/// time-sorted facts they came from.
pub fn report_of(
    analyzer: &Analyzer,
    facts: &crate::shape::Facts,
    series: &[ServiceSeries],
    metric_points: u64,
    log_markers: u64,
) -> Report {
    let config = &analyzer.config;
    let incidents = series
        .iter()
        .flat_map(|s| {
            detect::detect(&ServiceInput {
                series: s,
                facts,
                config,
            })
        })
        .collect();
    report_from(
        analyzer,
        incidents,
        series,
        facts,
        metric_points,
        log_markers,
    )
}

/// The report around detected incidents: summaries, notes, input.
fn report_from(
    analyzer: &Analyzer,
    mut incidents: Vec<crate::incident::Incident>,
    series: &[ServiceSeries],
    facts: &crate::shape::Facts,
    metric_points: u64,
    log_markers: u64,
) -> Report {
    let config = &analyzer.config;
    let mut notes = Vec::new();

    let services = series.iter().map(summary).collect();
    sort_incidents(&mut incidents);
    if let Some(s) = series.first() {
        let capture = s.buckets.len() as f64 * config.bucket_seconds;
        notes.extend(crate::slo::scaling_note(capture, config.bucket_seconds));
    }
    for s in series {
        for g in s.coverage.gaps() {
            notes.push(format!("{}: {g}", s.service));
        }
    }
    let (start, end) = series
        .first()
        .map(|s| (s.t0, s.time_of(s.buckets.len())))
        .unwrap_or((0, 0));
    Report {
        schema_version: SCHEMA_VERSION,
        incidents,
        services,
        notes,
        input: InputSummary {
            spans: facts.spans - facts.duplicate_spans,
            traces: facts.traces,
            metric_points,
            log_markers,
            start_unix_nano: start,
            end_unix_nano: end,
            bucket_seconds: config.bucket_seconds,
        },
    }
}

fn downsample(v: &[f64], points: usize) -> Vec<f64> {
    if v.len() <= points {
        return v.to_vec();
    }
    let chunk = v.len().div_ceil(points);
    v.chunks(chunk)
        .map(|c| c.iter().copied().fold(0.0, f64::max))
        .collect()
}

/// Current state of a service: the last minute of buckets.
pub fn summary(s: &ServiceSeries) -> ServiceSummary {
    let n = s.buckets.len();
    let bs = s.bucket_nanos as f64 / 1e9;
    let last = &s.buckets[n.saturating_sub((60.0 / bs).ceil() as usize)..];
    let lookups: f64 = last.iter().map(|b| b.lookups).sum();
    let misses: f64 = last.iter().map(|b| b.misses).sum();
    let requests: f64 = last.iter().map(|b| b.requests).sum();
    let bad: f64 = last.iter().map(|b| b.bad).sum();
    let burn = BurnSeries::new(
        &s.buckets.iter().map(|b| b.bad).collect::<Vec<_>>(),
        &s.buckets.iter().map(|b| b.requests).collect::<Vec<_>>(),
        bs,
        s.slo.target,
    );
    let (_, burn_rates) = burn.severity_at(n.saturating_sub(1));
    let total_bad: f64 = s.buckets.iter().map(|b| b.bad).sum();
    let total_req: f64 = s.buckets.iter().map(|b| b.requests).sum();
    let rps = total_req / (n as f64 * bs).max(bs);
    ServiceSummary {
        service: s.service.to_string(),
        miss_ratio: if lookups > 0.0 { misses / lookups } else { 0.0 },
        pool_use: last.iter().rev().find_map(|b| b.pool_ratio()),
        p95_ms: last
            .iter()
            .rev()
            .find(|b| b.requests > 0.0)
            .map(|b| b.p95_ms)
            .unwrap_or(0.0),
        burn_rate: burn_rate(bad, requests, s.slo.target),
        requests_per_s: requests / (last.len() as f64 * bs).max(bs),
        slo: s.slo.display_name(),
        slo_target: s.slo.target,
        slo_threshold_ms: s.slo.threshold_ms,
        burn_rates,
        budget_remaining: 1.0 - budget_consumed(total_bad, rps, s.slo.target, s.slo.period_days),
        spark_miss_ratio: downsample(
            &s.buckets.iter().map(|b| b.miss_ratio()).collect::<Vec<_>>(),
            120,
        ),
        spark_pool_use: downsample(
            &s.buckets
                .iter()
                .map(|b| b.pool_ratio().unwrap_or(0.0))
                .collect::<Vec<_>>(),
            120,
        ),
        spark_p95_ms: downsample(&s.buckets.iter().map(|b| b.p95_ms).collect::<Vec<_>>(), 120),
        spark_burn: downsample(
            &s.buckets
                .iter()
                .map(|b| burn_rate(b.bad, b.requests, s.slo.target))
                .collect::<Vec<_>>(),
            120,
        ),
        gaps: s.coverage.gaps(),
    }
}

/// RFC 3339 UTC time of a Unix-nanosecond timestamp.
pub fn rfc3339(unix_nano: u64) -> String {
    let secs = (unix_nano / 1_000_000_000) as i64;
    let millis = (unix_nano / 1_000_000 % 1000) as u32;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The terminal report.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "herdwatch report: {} spans in {} traces, {} metric points, {} → {}",
        r.input.spans,
        r.input.traces,
        r.input.metric_points,
        rfc3339(r.input.start_unix_nano),
        rfc3339(r.input.end_unix_nano)
    );
    if r.incidents.is_empty() {
        let _ = writeln!(o, "\nNo incident found.");
    }
    for i in &r.incidents {
        let e = &i.evidence;
        let _ = writeln!(
            o,
            "\n[{}] {} in {} (confidence {:.2}) id {}",
            i.severity.as_str().to_uppercase(),
            i.kind.as_str(),
            i.service,
            i.confidence,
            i.id
        );
        let _ = writeln!(o, "  {}", i.cause);
        let _ = writeln!(
            o,
            "  onset {}  peak {}  end {}",
            rfc3339(i.onset_unix_nano),
            rfc3339(i.peak_unix_nano),
            i.end_unix_nano
                .map(rfc3339)
                .unwrap_or_else(|| "open".into())
        );
        let _ = writeln!(o, "  evidence:");
        let _ = writeln!(
            o,
            "    misses/s          {:.1} baseline → {:.1} peak (miss ratio {:.0} % → {:.0} %)",
            e.miss_rate_baseline_per_s,
            e.miss_rate_peak_per_s,
            e.miss_ratio_baseline * 100.0,
            e.miss_ratio_peak * 100.0
        );
        let _ = writeln!(
            o,
            "    recomputes        {} of {} distinct keys (duplicate ratio {:.1}), largest herd {}",
            e.recomputes, e.distinct_keys_recomputed, e.duplicate_ratio, e.herd_max
        );
        for k in &e.top_keys {
            let _ = writeln!(
                o,
                "      {:<40} {:>6} recomputes, herd {}",
                k.key, k.recomputes, k.herd
            );
        }
        if let Some(p) = e.pool_use_peak {
            let _ = writeln!(o, "    pool use peak     {:.0} %", p * 100.0);
        }
        let _ = writeln!(o, "    db in flight peak {:.0}", e.db_inflight_peak);
        if let (Some(before), Some(during)) =
            (e.lookups_per_request_before, e.lookups_per_request_during)
        {
            let _ = writeln!(
                o,
                "    lookups/request   {before:.2} baseline → {during:.2} while the cache was not asked"
            );
        }
        if let Some(s) = e.recompute_share {
            let _ = writeln!(
                o,
                "    recompute share   {:.0} % of database time in the window was {}",
                s * 100.0,
                e.share_of_what()
            );
        }
        let _ = writeln!(
            o,
            "    P95               {:.0} ms before → {:.0} ms peak",
            e.p95_before_ms, e.p95_peak_ms
        );
        let burns: Vec<String> = e
            .burn_rates
            .iter()
            .map(|w| format!("{} {:.1}", w.window, w.burn_rate))
            .collect();
        let _ = writeln!(o, "    burn rates        {}", burns.join(", "));
        let _ = writeln!(
            o,
            "    error budget      {:.2} % of the period's budget consumed ({})",
            e.budget_consumed * 100.0,
            e.slo
        );
        if let Some(m) = &e.marker {
            let _ = writeln!(o, "    marker            {m}");
        }
        for g in &e.gaps {
            let _ = writeln!(o, "    not seen          {g}");
        }
        if !i.exemplars.worst_requests.is_empty() {
            let ids: Vec<&str> = i
                .exemplars
                .worst_requests
                .iter()
                .map(|x| x.trace_id.as_str())
                .collect();
            let _ = writeln!(o, "  exemplar traces: {}", ids.join(" "));
        }
        let _ = writeln!(o, "  mitigations:");
        for (n, m) in i.mitigations.iter().enumerate() {
            let _ = writeln!(o, "    {}. {} — {}", n + 1, m.title, m.effect);
            let _ = writeln!(o, "       because {}", m.because);
            let _ = writeln!(o, "       change: {}", m.change);
        }
    }
    for n in &r.notes {
        let _ = writeln!(o, "\nnote: {n}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// One request a second, from `from_s`, of 10 ms each.
    fn requests(from_s: u64, n: u64) -> Facts {
        let e: Sym = Sym::from("");
        let mut f = Facts {
            min_time: from_s * SECOND,
            ..Facts::default()
        };
        for i in 0..n {
            let start = (from_s + i) * SECOND;
            f.requests.push(crate::shape::RequestFact {
                service: Sym::from("shop"),
                route: Sym::from("/"),
                method: Sym::from("GET"),
                url_path: e.clone(),
                start,
                end: start + SECOND / 100,
                error: false,
                trace_id: [(i % 251) as u8; 16],
                missed: false,
                resend: false,
            });
            f.max_time = start + SECOND / 100;
        }
        f.spans = n;
        f
    }

    /// A bound with room for 900 one-a-second requests, holding 600 of
    /// them (1000–1600 s) in built buckets.
    fn built_bound(analyzer: &Analyzer) -> Bound {
        let mut b = Bound::new(requests(1000, 600).row_bytes() * 3 / 2);
        b.take(requests(1000, 600), analyzer);
        b.compact(1600 * SECOND, analyzer);
        b
    }

    /// Input that goes back in time, once the facts no longer fit: what
    /// the built buckets needed goes, though nothing new is complete, and
    /// what comes later for them is left out and counted.
    #[test]
    fn a_bound_stays_within_its_budget_when_the_input_goes_back_in_time() {
        let analyzer = Analyzer::new(Default::default(), Vec::new());
        let mut b = built_bound(&analyzer);
        assert!(b.compacted && !b.evicted, "it fits");
        // The same 600 seconds again: the pending data now starts at 1000 s.
        b.take(requests(1000, 600), &analyzer);
        b.compact(1000 * SECOND, &analyzer);
        assert!(b.evicted, "over the budget");
        assert!(
            b.facts.row_bytes() <= b.max_fact_bytes,
            "{}",
            b.facts.row_bytes()
        );
        let held = b.facts.row_bytes();
        b.take(requests(1000, 600), &analyzer);
        b.compact(1000 * SECOND, &analyzer);
        assert_eq!(b.facts.row_bytes(), held, "left out at once");
        assert_eq!(b.late_requests, 600);
    }

    /// Rows that come after an eviction, in buckets not built yet, are not
    /// late, even when they bring an operation longer than any before it
    /// (which reaches back into the built buckets but not into what went).
    #[test]
    fn a_longer_operation_after_an_eviction_makes_no_request_late() {
        let analyzer = Analyzer::new(Default::default(), Vec::new());
        let mut b = built_bound(&analyzer);
        b.take(requests(1600, 600), &analyzer);
        b.compact(2200 * SECOND, &analyzer);
        assert!(b.evicted, "over the budget");
        assert_eq!(
            b.final_to,
            2200 * SECOND,
            "no operation reaches past its request"
        );
        // A 30 s query from 2200 s, then requests while it runs.
        let mut query = requests(2200, 5);
        query.db_ops.push(crate::shape::DbOpFact {
            service: Sym::from("shop"),
            start: 2200 * SECOND,
            end: 2230 * SECOND,
            statement: Sym::from("SELECT 1"),
            recompute: false,
        });
        b.take(query, &analyzer);
        assert_eq!(b.longest, 30 * SECOND);
        b.take(requests(2205, 25), &analyzer);
        assert_eq!(b.late_requests, 0);
        // A request before the eviction's end is late.
        b.take(requests(2199, 1), &analyzer);
        assert_eq!(b.late_requests, 1);
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_000_000),
            "2023-11-14T22:13:20.123Z"
        );
    }
}

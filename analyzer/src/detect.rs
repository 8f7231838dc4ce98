//! Detection and cause (SPEC §4.1, §4.3): robust baselines, the four
//! signals, episodes with hysteresis, the stampede test (burst leads
//! saturation and spike, recomputes explain most database time), the kind,
//! severity, evidence, timeline, exemplars and mitigations.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::config::AnalysisConfig;
use crate::incident::{
    Evidence, Exemplar, Exemplars, Incident, KeyHerd, Kind, Onsets, TimelinePoint,
};
use crate::mitigate::{self, peak_concurrency};
use crate::model::{Sym, hex};
use crate::shape::{self, Facts, Outcome, RecomputeFact};
use crate::signals::ServiceSeries;
use crate::slo::{BurnSeries, budget_consumed};
use crate::stats::{mad, median};

/// Per-bucket flags of one service.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub burst: Vec<bool>,
    /// Burst buckets `burst_single_bucket_factor` times over the limit: a
    /// burst on their own.
    pub strong: Vec<bool>,
    pub saturated: Vec<bool>,
    /// Saturated buckets measured by the pool's own metrics: saturation on
    /// their own. What only the traces suggest (slow queries, recomputes
    /// that waited for their first query) must last `burst_min_buckets`,
    /// since one slow query or a scheduler stall on a busy host looks the
    /// same for a second.
    pub strong_sat: Vec<bool>,
    /// The SLO breached: P95 over its threshold, or 5xx burning the error
    /// budget at `error_burn_rate` or faster.
    pub spike: Vec<bool>,
    /// The service stopped asking the cache: lookups per request at or
    /// under `bypass_lookup_ratio` of their baseline.
    pub bypass: Vec<bool>,
    /// Baseline lookups per request at each bucket (NaN without one).
    pub lookups_per_request_baseline: Vec<f64>,
    /// Baseline (median) misses per bucket at each bucket.
    pub miss_baseline: Vec<f64>,
    pub db_p95_baseline: Vec<f64>,
    pub p95_baseline: Vec<f64>,
}

/// Compute flags bucket by bucket; a flagged bucket does not enter the
/// baseline (the baseline excludes incidents).
pub fn flags(series: &ServiceSeries, config: &AnalysisConfig) -> Flags {
    let n = series.buckets.len();
    let window = ((config.baseline_seconds / config.bucket_seconds).round() as usize).max(5);
    let floor = config.burst_min_misses_per_second * config.bucket_seconds;
    let mut f = Flags {
        burst: vec![false; n],
        strong: vec![false; n],
        saturated: vec![false; n],
        strong_sat: vec![false; n],
        spike: vec![false; n],
        bypass: vec![false; n],
        lookups_per_request_baseline: vec![f64::NAN; n],
        miss_baseline: vec![f64::NAN; n],
        db_p95_baseline: vec![f64::NAN; n],
        p95_baseline: vec![f64::NAN; n],
    };
    let mut misses: VecDeque<f64> = VecDeque::new();
    let mut db_p95: VecDeque<f64> = VecDeque::new();
    let mut p95: VecDeque<f64> = VecDeque::new();
    let mut lookups_per_request: VecDeque<f64> = VecDeque::new();
    let threshold = series.slo.threshold_ms;
    let error_share = config.error_burn_rate * (1.0 - series.slo.target);
    for (b, k) in series.buckets.iter().enumerate() {
        let mv: Vec<f64> = misses.iter().copied().collect();
        let med = median(&mv);
        let spread = mad(&mv);
        f.miss_baseline[b] = med;
        if mv.len() >= 5 {
            let limit = floor
                .max(med + config.burst_mad_factor * spread.max(1.0))
                .max(config.burst_min_ratio * med);
            // A herd on one key above the lone refills is a burst even when
            // the baseline's spread hides it in the count: a slow host that
            // serves few requests misses a hot key only a few dozen times.
            let herd =
                k.herd >= config.hot_key_min_herd as f64 && k.misses >= floor.max(med + k.herd);
            f.burst[b] = k.misses >= limit || herd;
            // A one-bucket burst is noise unless it is far over the limit or
            // its recomputes pile up on one key (a herd, not lone refills).
            f.strong[b] = f.burst[b]
                && (k.misses >= config.burst_single_bucket_factor * limit
                    || k.herd >= config.hot_key_min_herd as f64);
        }
        let dv: Vec<f64> = db_p95.iter().copied().collect();
        let db_base = median(&dv);
        f.db_p95_baseline[b] = db_base;
        let pv: Vec<f64> = p95.iter().copied().collect();
        f.p95_baseline[b] = median(&pv);
        let pool = k
            .pool_ratio()
            .is_some_and(|r| r >= config.pool_saturation_ratio);
        let pending = k.pending.is_some_and(|p| p > 0.0);
        let at_pool = k.pool_max.is_some_and(|m| m > 0.0 && k.db_inflight >= m);
        let slow_db = dv.len() >= 5
            && k.db_ops >= 3.0
            && k.db_p95_ms > config.db_p95_factor * db_base.max(1.0);
        // Recomputes that waited for their first query: requests pending
        // on the pool, as the traces show it when no pool metric does.
        let queued = k.queued >= 1.0;
        f.saturated[b] = pool || pending || at_pool || slow_db || queued;
        f.strong_sat[b] = pool || pending || at_pool;
        let enough = k.requests >= config.min_requests_per_bucket as f64;
        f.spike[b] = enough && (k.p95_ms > threshold || k.errors / k.requests >= error_share);
        let lv: Vec<f64> = lookups_per_request.iter().copied().collect();
        let lookup_base = median(&lv);
        f.lookups_per_request_baseline[b] = lookup_base;
        // Lookups counted from Redis metrics alone also stop when their
        // scrapes do: only lookup spans say the service stopped asking.
        f.bypass[b] = enough
            && series.coverage.cache_spans
            && lv.len() >= 5
            && lookup_base >= config.bypass_min_lookups_per_request
            && k.lookups / k.requests <= config.bypass_lookup_ratio * lookup_base;
        if !(f.burst[b] || f.saturated[b] || f.spike[b] || f.bypass[b]) {
            if enough {
                lookups_per_request.push_back(k.lookups / k.requests);
                if lookups_per_request.len() > window {
                    lookups_per_request.pop_front();
                }
            }
            misses.push_back(k.misses);
            if misses.len() > window {
                misses.pop_front();
            }
            if k.db_ops > 0.0 {
                db_p95.push_back(k.db_p95_ms);
                if db_p95.len() > window {
                    db_p95.pop_front();
                }
            }
            if k.requests > 0.0 {
                p95.push_back(k.p95_ms);
                if p95.len() > window {
                    p95.pop_front();
                }
            }
        }
    }
    f
}

/// A run of active buckets, closed after enough calm ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    pub start: usize,
    /// One past the last active bucket.
    pub end: usize,
    /// Still active (or not calm long enough) when the data ends.
    pub open: bool,
}

pub fn episodes(f: &Flags, config: &AnalysisConfig) -> Vec<Episode> {
    let n = f.burst.len();
    let calm_needed = config
        .calm_buckets_to_close
        .max(config.merge_gap_buckets)
        .max(1);
    let mut out = Vec::new();
    let mut cur: Option<(usize, usize)> = None;
    for b in 0..n {
        let active = f.burst[b] || f.saturated[b] || f.spike[b] || f.bypass[b];
        match (&mut cur, active) {
            (None, true) => cur = Some((b, b + 1)),
            (Some((_, end)), true) => *end = b + 1,
            (Some((s, end)), false) if b - *end + 1 >= calm_needed => {
                out.push(Episode {
                    start: *s,
                    end: *end,
                    open: false,
                });
                cur = None;
            }
            _ => {}
        }
    }
    if let Some((s, end)) = cur {
        out.push(Episode {
            start: s,
            end,
            open: n - end < calm_needed,
        });
    }
    out
}

/// The start of the first run of flagged buckets in [from, to) that is
/// `min_len` long or holds a `strong` bucket (one that is a burst on its
/// own; with `None`, none is).
fn first_run(
    v: &[bool],
    strong: Option<&[bool]>,
    from: usize,
    to: usize,
    min_len: usize,
) -> Option<usize> {
    let mut run = 0;
    for (b, &flag) in v.iter().enumerate().take(to).skip(from) {
        if flag {
            run += 1;
            if run >= min_len || strong.is_some_and(|s| s[b]) {
                return Some(b + 1 - run);
            }
        } else {
            run = 0;
        }
    }
    None
}

/// Stable id from what defines an incident.
pub fn incident_id(service: &str, kind: Kind, onset: u64) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in service
        .bytes()
        .chain(kind.as_str().bytes())
        .chain(onset.to_le_bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Per key: recomputes and the herd (most in flight at once), largest first.
pub fn key_herds(recomputes: &[&RecomputeFact]) -> Vec<KeyHerd> {
    type Intervals = Vec<(u64, u64)>;
    let mut by_key: HashMap<&str, (Sym, Intervals)> = HashMap::new();
    for r in recomputes {
        by_key
            .entry(&r.key)
            .or_insert_with(|| (r.group.clone(), Vec::new()))
            .1
            .push((r.start, r.end));
    }
    let mut v: Vec<KeyHerd> = by_key
        .into_iter()
        .map(|(k, (g, iv))| KeyHerd {
            key: k.to_string(),
            group: g.to_string(),
            recomputes: iv.len() as u64,
            herd: peak_concurrency(iv.into_iter()),
        })
        .collect();
    v.sort_by(|a, b| {
        b.recomputes
            .cmp(&a.recomputes)
            .then(b.herd.cmp(&a.herd))
            .then(a.key.cmp(&b.key))
    });
    v
}

/// Everything detection reads for one service.
pub struct ServiceInput<'a> {
    pub series: &'a ServiceSeries,
    pub facts: &'a Facts,
    pub config: &'a AnalysisConfig,
}

/// Detect the incidents of one service.
pub fn detect(input: &ServiceInput<'_>) -> Vec<Incident> {
    detect_where(input, &flags(input.series, input.config), |_| true)
}

/// Detect the incidents of the episodes `only` accepts, with the series'
/// flags already computed (a bounded analysis decides each episode once
/// its evidence is in).
pub fn detect_where(
    input: &ServiceInput<'_>,
    f: &Flags,
    only: impl Fn(&Episode) -> bool,
) -> Vec<Incident> {
    let ServiceInput {
        series,
        facts,
        config,
    } = input;
    let bs = config.bucket_seconds;
    let n = series.buckets.len();
    let tol = ((config.lead_tolerance_seconds / bs).round() as usize).max(1);
    let burn = BurnSeries::new(
        &series.buckets.iter().map(|b| b.bad).collect::<Vec<_>>(),
        &series
            .buckets
            .iter()
            .map(|b| b.requests)
            .collect::<Vec<_>>(),
        bs,
        series.slo.target,
    );
    let service = &series.service;
    let total_requests: f64 = series.buckets.iter().map(|b| b.requests).sum();
    let rps = total_requests / (n as f64 * bs).max(bs);
    let mut out = Vec::new();
    for ep in episodes(f, config).into_iter().filter(|e| only(e)) {
        let burst = first_run(
            &f.burst,
            Some(&f.strong),
            ep.start,
            ep.end,
            config.burst_min_buckets,
        );
        let sat = first_run(
            &f.saturated,
            Some(&f.strong_sat),
            ep.start,
            ep.end,
            config.burst_min_buckets,
        );
        // Lookups that stopped: a run as long as a burst's.
        let bypass = first_run(&f.bypass, None, ep.start, ep.end, config.burst_min_buckets);
        let spike = (ep.start..ep.end).find(|&b| f.spike[b]);
        let Some(spike) = spike else { continue };
        let sat_measurable = series.coverage.pool_metrics || series.coverage.db_spans;
        if sat.is_none() && sat_measurable {
            continue;
        }
        // What the cache did first: missed in a burst, or stopped being asked.
        let cache_onset = [burst, bypass].into_iter().flatten().min();
        let first = [cache_onset, sat, Some(spike)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(spike);
        // Live data is incomplete at its newest end: a request exports its
        // spans (and its early misses) only when it ends, and during a
        // stampede requests take seconds, while finished spans already show
        // saturation and latency. An open episode is decided only once the
        // lead tolerance has settled after its first flag, so the first
        // verdict (and the first alert) does not misname it.
        if ep.open && n - first <= tol.max(config.burst_min_buckets + 1) {
            continue;
        }
        let window = first..ep.end;
        let db_ms: f64 = series.buckets[window.clone()].iter().map(|b| b.db_ms).sum();
        let rc_ms: f64 = series.buckets[window.clone()]
            .iter()
            .map(|b| b.recompute_db_ms)
            .sum();
        let mut share = (series.coverage.db_spans && db_ms > 0.0).then(|| rc_ms / db_ms);
        if bypass.is_some() {
            // Requests that skipped the cache query the database for what
            // it held, without a miss to call it a recompute: their share
            // is the database time above the baseline's cost per request.
            share = share.map(|s| s.max(fall_through_share(series, first, window.clone(), tol)));
        }
        let leads =
            cache_onset.is_some_and(|b| sat.is_none_or(|s| b <= s + tol) && b <= spike + tol);
        let stampede = leads && share.is_none_or(|s| s >= config.min_recompute_share);
        let onset_b = if stampede {
            cache_onset.unwrap_or(first)
        } else {
            first
        };
        let from_t = series.time_of(onset_b);
        let end_b = ep.end;
        let to_t = series.time_of(end_b);
        // Facts of this service inside the incident window (with the lead
        // tolerance before the onset, where the first misses start).
        let lead_t = series.time_of(onset_b.saturating_sub(tol));
        // Facts are sorted by time (`Facts::sort_by_time`): windows are slices.
        let recomputes: Vec<&RecomputeFact> =
            shape::window(&facts.recomputes, |r| r.start, lead_t, to_t)
                .iter()
                .filter(|r| &r.service == service)
                .collect();
        let lookups: Vec<_> = shape::window(&facts.lookups, |l| l.t, lead_t, to_t)
            .iter()
            .filter(|l| &l.service == service)
            .collect();
        let misses: Vec<_> = lookups
            .iter()
            .copied()
            .filter(|l| l.outcome != Outcome::Hit)
            .collect();
        let failed = lookups
            .iter()
            .filter(|l| l.outcome == Outcome::Failed)
            .count() as u64;
        let requests: Vec<_> = shape::window(&facts.requests, |r| r.start, lead_t, to_t)
            .iter()
            .filter(|r| &r.service == service)
            .collect();
        let db_ops: Vec<_> = shape::window(&facts.db_ops, |d| d.start, lead_t, to_t)
            .iter()
            .filter(|d| &d.service == service)
            .collect();
        let herds = key_herds(&recomputes);
        let distinct = herds.len() as u64;
        let herd_max = herds.iter().map(|h| h.herd).max().unwrap_or(0);
        // The top key's share of the recomputes above the baseline's lone
        // refills (the median recomputes per bucket before the onset, over
        // the window's buckets): a service that refills a dozen cold keys a
        // second all day still has a hot key when one key carries the herd.
        let base_rc_per_bucket = median(
            &series.buckets[onset_b.saturating_sub(60)..onset_b.saturating_sub(tol)]
                .iter()
                .map(|b| b.recomputes)
                .collect::<Vec<_>>(),
        );
        let window_buckets_n = (end_b + tol - onset_b.min(end_b)) as f64;
        let expected_lone = if base_rc_per_bucket.is_finite() {
            base_rc_per_bucket * window_buckets_n
        } else {
            0.0
        };
        let excess = (recomputes.len() as f64 - expected_lone).max(1.0);
        let top_share = herds
            .first()
            .map(|h| (h.recomputes as f64 / excess).min(1.0))
            .unwrap_or(0.0);
        // Previous fills of the missed keys: clustered in time?
        let missed_keys: HashSet<&Sym> = misses.iter().map(|l| &l.key).collect();
        // Backwards from the onset, until every missed key has its fill:
        // the first one met is the last before it.
        let mut last_fill: HashMap<&Sym, u64> = HashMap::new();
        for fill in shape::window(&facts.fills, |x| x.t, 0, from_t)
            .iter()
            .rev()
            .filter(|x| &x.service == service && missed_keys.contains(&x.key))
        {
            last_fill.entry(&fill.key).or_insert(fill.t);
            if last_fill.len() == missed_keys.len() {
                break;
            }
        }
        let fill_times: Vec<f64> = last_fill.values().map(|t| *t as f64 / 1e9).collect();
        let (fill_cluster, fill_spread) =
            fill_cluster(&fill_times, config.sync_fill_spread_seconds);
        let ttl_estimate = (!fill_times.is_empty()).then(|| {
            let first_miss: HashMap<&Sym, u64> = misses.iter().fold(HashMap::new(), |mut m, l| {
                let e = m.entry(&l.key).or_insert(l.t);
                *e = (*e).min(l.t);
                m
            });
            let gaps: Vec<f64> = last_fill
                .iter()
                .filter_map(|(k, t)| first_miss.get(k).map(|m| m.saturating_sub(*t) as f64))
                .collect();
            median(&gaps) as u64
        });
        // Markers before the onset.
        let marker_from = from_t.saturating_sub((config.cold_marker_window_seconds * 1e9) as u64);
        let marker_to = from_t + (config.lead_tolerance_seconds * 1e9) as u64;
        let marker = facts
            .markers
            .iter()
            .filter(|m| &m.service == service && m.t >= marker_from && m.t <= marker_to)
            .max_by_key(|m| m.t);
        let failure_share = failed as f64 / lookups.len().max(1) as f64;
        let kind = if !stampede {
            Kind::DbSaturation
        } else if bypass.is_some() || failure_share >= config.unavailable_failure_share {
            Kind::CacheUnavailable
        } else if marker.is_some() {
            Kind::ColdCache
        } else if top_share >= config.hot_key_share && herd_max >= config.hot_key_min_herd {
            Kind::HotKeyExpiry
        } else {
            Kind::SynchronizedExpiry
        };
        // Severity: the worst over the incident, and the burns there.
        let mut severity = crate::slo::Severity::Info;
        let mut worst_b = spike;
        for b in onset_b..end_b {
            let (s, _) = burn.severity_at(b);
            if s > severity {
                severity = s;
                worst_b = b;
            }
        }
        let peak_b = (onset_b..end_b)
            .max_by(|&a, &b| {
                series.buckets[a]
                    .p95_ms
                    .total_cmp(&series.buckets[b].p95_ms)
            })
            .unwrap_or(spike);
        if severity == crate::slo::Severity::Info {
            worst_b = peak_b;
        }
        let (_, burns) = burn.severity_at(worst_b);
        let bad: f64 = series.buckets[onset_b..end_b].iter().map(|b| b.bad).sum();
        let win_requests: f64 = series.buckets[onset_b..end_b]
            .iter()
            .map(|b| b.requests)
            .sum();
        let before_b = onset_b.saturating_sub(1);
        let window_buckets = &series.buckets[onset_b..end_b];
        let miss_rate_peak = window_buckets.iter().map(|b| b.misses).fold(0.0, f64::max) / bs;
        let miss_ratio_peak = window_buckets
            .iter()
            .map(|b| b.miss_ratio())
            .fold(0.0, f64::max);
        let pre: Vec<&crate::signals::Bucket> = series.buckets[onset_b.saturating_sub(60)..onset_b]
            .iter()
            .filter(|b| b.lookups > 0.0)
            .collect();
        let miss_ratio_baseline = {
            let l: f64 = pre.iter().map(|b| b.lookups).sum();
            let m: f64 = pre.iter().map(|b| b.misses).sum();
            if l > 0.0 { m / l } else { 0.0 }
        };
        let pool_peak = window_buckets
            .iter()
            .filter_map(|b| b.pool_ratio())
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let pending_peak = window_buckets
            .iter()
            .filter_map(|b| b.pending)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let pool_max = window_buckets
            .iter()
            .filter_map(|b| b.pool_max)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let retries = requests.iter().filter(|r| r.resend).count() as u64;
        let top_keys: Vec<KeyHerd> = herds.iter().take(config.top_keys).cloned().collect();
        let mut evidence = Evidence {
            miss_rate_baseline_per_s: f.miss_baseline[onset_b].max(0.0) / bs,
            miss_rate_peak_per_s: miss_rate_peak,
            miss_ratio_baseline,
            miss_ratio_peak,
            lookups: lookups.len() as u64,
            misses: misses.len() as u64,
            failed_lookups: failed,
            recomputes: recomputes.len() as u64,
            distinct_keys_recomputed: distinct,
            duplicate_ratio: if distinct > 0 {
                recomputes.len() as f64 / distinct as f64
            } else {
                0.0
            },
            herd_max,
            top_keys,
            pool_use_peak: pool_peak,
            pending_peak,
            db_inflight_peak: window_buckets
                .iter()
                .map(|b| b.db_inflight)
                .fold(0.0, f64::max),
            db_p95_before_ms: nan0(f.db_p95_baseline[onset_b]),
            db_p95_peak_ms: window_buckets
                .iter()
                .map(|b| b.db_p95_ms)
                .fold(0.0, f64::max),
            recompute_share: share,
            p95_before_ms: nan0(f.p95_baseline[before_b.min(n - 1)]),
            p95_peak_ms: series.buckets[peak_b].p95_ms,
            requests: win_requests.round() as u64,
            bad_requests: bad.round() as u64,
            burn_rates: burns,
            budget_consumed: budget_consumed(bad, rps, series.slo.target, series.slo.period_days),
            slo: series.slo.display_name(),
            onsets: Onsets {
                miss_burst_unix_nano: burst.map(|b| series.time_of(b)),
                db_saturation_unix_nano: sat.map(|b| series.time_of(b)),
                latency_spike_unix_nano: Some(series.time_of(spike)),
                cache_bypass_unix_nano: bypass.map(|b| series.time_of(b)),
            },
            marker: marker.map(|m| format!("{}: {}", m.kind.as_str(), m.detail)),
            fill_spread_seconds: fill_spread,
            fill_cluster_share: fill_cluster,
            retries,
            gaps: series.coverage.gaps(),
            lookups_per_request_before: bypass
                .map(|_| nan0(f.lookups_per_request_baseline[onset_b])),
            lookups_per_request_during: bypass.map(|_| {
                let (lookups, requests) = (onset_b..end_b)
                    .filter(|&b| f.bypass[b])
                    .map(|b| &series.buckets[b])
                    .fold((0.0, 0.0), |(l, r), b| (l + b.lookups, r + b.requests));
                lookups / requests.max(1.0)
            }),
        };
        if !series.coverage.cache_spans {
            evidence.misses = window_buckets.iter().map(|b| b.misses).sum::<f64>().round() as u64;
            evidence.lookups = window_buckets
                .iter()
                .map(|b| b.lookups)
                .sum::<f64>()
                .round() as u64;
        }
        let cause = cause_sentence(kind, &evidence, service);
        let confidence = confidence(kind, &evidence, leads, series, config);
        // Timeline around the incident.
        let t_from = onset_b.saturating_sub(30);
        let t_to = (end_b + 30).min(n);
        let timeline = (t_from..t_to)
            .map(|b| {
                let k = &series.buckets[b];
                TimelinePoint {
                    t_unix_nano: series.time_of(b),
                    misses_per_s: k.misses / bs,
                    miss_ratio: k.miss_ratio(),
                    herd: k.herd,
                    recomputes_in_flight: k.recompute_inflight,
                    db_in_flight: k.db_inflight,
                    pool_use: k.pool_ratio(),
                    p95_ms: k.p95_ms,
                    requests_per_s: k.requests / bs,
                    burn_rate: crate::slo::burn_rate(k.bad, k.requests, series.slo.target),
                }
            })
            .collect();
        // Exemplars.
        let mut worst: Vec<_> = requests.clone();
        worst.sort_by_key(|r| std::cmp::Reverse(r.end - r.start));
        let worst_requests = worst
            .iter()
            .take(config.exemplars)
            .map(|r| Exemplar {
                trace_id: hex(&r.trace_id),
                duration_ms: (r.end - r.start) as f64 / 1e6,
                route: r.route.to_string(),
            })
            .collect();
        let largest_herd = herds
            .first()
            .map(|top| {
                let mut rs: Vec<_> = recomputes.iter().filter(|r| *r.key == *top.key).collect();
                rs.sort_by_key(|r| r.start);
                rs.iter()
                    .take(config.exemplars)
                    .map(|r| Exemplar {
                        trace_id: hex(&r.trace_id),
                        duration_ms: (r.end - r.start) as f64 / 1e6,
                        route: r.group.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Baselines for the replay.
        let mut base_rc: HashMap<Sym, Vec<f64>> = HashMap::new();
        // Baselines from the window before the incident, not the whole past.
        let base_from = lead_t.saturating_sub((config.baseline_seconds * 1e9) as u64);
        for r in shape::window(&facts.recomputes, |r| r.start, base_from, lead_t)
            .iter()
            .filter(|r| &r.service == service)
        {
            base_rc
                .entry(r.group.clone())
                .or_default()
                .push((r.end - r.start) as f64);
        }
        let baseline_recompute = base_rc
            .into_iter()
            .map(|(g, v)| (g, median(&v) as u64))
            .collect();
        let base_req: Vec<f64> = shape::window(&facts.requests, |r| r.start, base_from, lead_t)
            .iter()
            .filter(|r| &r.service == service && !r.missed)
            .map(|r| (r.end - r.start) as f64)
            .collect();
        // The keys a warm-up would replay: those of the hour before.
        let known_keys_before = marker.map(|m| {
            shape::window(
                &facts.lookups,
                |l| l.t,
                m.t.saturating_sub(3_600_000_000_000),
                m.t,
            )
            .iter()
            .filter(|l| &l.service == service)
            .map(|l| l.key.clone())
            .collect()
        });
        let hot_keys: Vec<Sym> = herds
            .iter()
            .take_while(|h| h.herd >= config.hot_key_min_herd)
            .take(3)
            .map(|h| Sym::from(h.key.as_str()))
            .collect();
        let mitigations = mitigate::recommend(&mitigate::Context {
            kind,
            recomputes: recomputes.clone(),
            misses: misses.clone(),
            known_keys_before,
            requests: requests.clone(),
            db_ops: db_ops.clone(),
            baseline_recompute,
            baseline_request: (!base_req.is_empty()).then(|| median(&base_req) as u64),
            pool_max,
            evidence: &evidence,
            hot_keys,
            ttl_estimate,
        });
        let onset_t = series.time_of(onset_b);
        out.push(Incident {
            id: incident_id(service, kind, onset_t),
            service: service.to_string(),
            kind,
            severity,
            confidence,
            cause,
            onset_unix_nano: onset_t,
            peak_unix_nano: series.time_of(peak_b),
            end_unix_nano: (!ep.open).then(|| series.time_of(end_b)),
            evidence,
            timeline,
            exemplars: Exemplars {
                worst_requests,
                largest_herd,
            },
            mitigations,
        });
    }
    out
}

/// The share of the database time in `window` above what its requests
/// cost at the baseline (database time per request over the minute before
/// `first`, less the lead tolerance).
fn fall_through_share(
    series: &ServiceSeries,
    first: usize,
    window: std::ops::Range<usize>,
    tol: usize,
) -> f64 {
    let sum = |r: std::ops::Range<usize>, v: fn(&crate::signals::Bucket) -> f64| -> f64 {
        series.buckets[r].iter().map(v).sum()
    };
    let before = first.saturating_sub(60)..first.saturating_sub(tol);
    let base_per_request = sum(before.clone(), |b| b.db_ms) / sum(before, |b| b.requests).max(1.0);
    let db_ms = sum(window.clone(), |b| b.db_ms);
    let expected = base_per_request * sum(window, |b| b.requests);
    if db_ms > 0.0 {
        ((db_ms - expected) / db_ms).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The largest share of `times` (seconds) within one window of `width`
/// seconds, and the spread (first to last) of that cluster. `None` below
/// three fills.
pub fn fill_cluster(times: &[f64], width: f64) -> (Option<f64>, Option<f64>) {
    if times.len() < 3 {
        return (None, None);
    }
    let mut t = times.to_vec();
    t.sort_by(|a, b| a.total_cmp(b));
    let (mut best, mut best_spread, mut lo) = (0usize, 0.0, 0usize);
    for hi in 0..t.len() {
        while t[hi] - t[lo] > width {
            lo += 1;
        }
        if hi - lo + 1 > best {
            best = hi - lo + 1;
            best_spread = t[hi] - t[lo];
        }
    }
    (Some(best as f64 / t.len() as f64), Some(best_spread))
}

fn nan0(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x }
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// The cause in one sentence.
pub fn cause_sentence(kind: Kind, e: &Evidence, service: &str) -> String {
    let share = e
        .recompute_share
        .map(|s| {
            format!(
                "; {} of database time in the window was {}",
                pct(s),
                e.share_of_what()
            )
        })
        .unwrap_or_default();
    let top = e.top_keys.first();
    match kind {
        Kind::SynchronizedExpiry if e.distinct_keys_recomputed == 0 => format!(
            "Cache stampede in {service}: misses jumped from {:.0}/s to {:.0}/s (miss ratio {}) ahead of database saturation and a latency spike; keys are not visible in this telemetry, so the kind is the likeliest one, not a proven one.",
            e.miss_rate_baseline_per_s,
            e.miss_rate_peak_per_s,
            pct(e.miss_ratio_peak)
        ),
        Kind::SynchronizedExpiry => format!(
            "Cache stampede in {service}: {} distinct keys expired together (misses {:.0}/s vs {:.0}/s baseline){}, and their recomputes saturated the database{share}.",
            e.distinct_keys_recomputed,
            e.miss_rate_peak_per_s,
            e.miss_rate_baseline_per_s,
            match (e.fill_cluster_share, e.fill_spread_seconds) {
                (Some(c), Some(s)) if c >= 0.3 => format!(
                    " ({:.0} % of them had been filled within {s:.1} s of each other: same TTL)",
                    c * 100.0
                ),
                _ => String::new(),
            }
        ),
        Kind::HotKeyExpiry => format!(
            "Cache stampede in {service}: hot key {} expired and {} requests recomputed it at once{share}.",
            top.map(|k| k.key.as_str()).unwrap_or("?"),
            e.herd_max
        ),
        Kind::ColdCache => format!(
            "Cold cache in {service}: after {}, misses jumped to {} of lookups and the recomputes saturated the database{share}.",
            e.marker.as_deref().unwrap_or("a deploy or flush"),
            pct(e.miss_ratio_peak)
        ),
        Kind::CacheUnavailable => {
            match (e.lookups_per_request_before, e.lookups_per_request_during) {
                (Some(before), Some(during)) => format!(
                    "Cache unavailable for {service}: lookups fell from {before:.2} to {during:.2} per request ({} of them failed) as the service stopped asking the cache (a client circuit breaker open, or a client that gave up), and requests fell through to the database{share}.",
                    e.failed_lookups
                ),
                _ => format!(
                    "Cache unavailable for {service}: {} lookups failed and fell through to the database, which saturated{share}.",
                    e.failed_lookups
                ),
            }
        }
        Kind::DbSaturation => format!(
            "Database saturation in {service} not caused by the cache: latency rose to P95 {:.0} ms without a miss burst{}.",
            e.p95_peak_ms,
            e.recompute_share
                .map(|s| format!(" (recomputes were only {} of database time)", pct(s)))
                .unwrap_or_default()
        ),
    }
}

fn confidence(
    kind: Kind,
    e: &Evidence,
    leads: bool,
    series: &ServiceSeries,
    config: &AnalysisConfig,
) -> f64 {
    let mut c: f64 = 0.4;
    if kind.is_stampede() {
        c += e.recompute_share.map_or(0.1, |s| 0.3 * (s / 0.8).min(1.0));
        if leads {
            c += 0.15;
        }
        c += match kind {
            Kind::HotKeyExpiry => 0.15 * (e.herd_max as f64 / 20.0).min(1.0),
            Kind::SynchronizedExpiry => {
                let keys = (e.distinct_keys_recomputed as f64
                    / (2.0 * config.sync_min_keys as f64))
                    .min(1.0);
                0.1 * keys + 0.05 * e.fill_cluster_share.unwrap_or(0.0)
            }
            Kind::ColdCache => 0.15,
            Kind::CacheUnavailable if e.cache_bypassed() => 0.15,
            Kind::CacheUnavailable => {
                0.15 * (e.failed_lookups as f64 / e.lookups.max(1) as f64 / 0.5).min(1.0)
            }
            Kind::DbSaturation => 0.0,
        };
    } else {
        c += 0.2 + e.recompute_share.map_or(0.0, |s| 0.2 * (1.0 - s));
        if e.pool_use_peak
            .is_some_and(|p| p >= config.pool_saturation_ratio)
        {
            c += 0.1;
        }
    }
    if series.coverage.reduced() {
        c *= 0.8;
    }
    (c.clamp(0.0, 0.99) * 100.0).round() / 100.0
}

/// Markers from kept log records, as facts.
pub fn log_markers(markers: &[crate::model::LogMarker]) -> Vec<crate::shape::MarkerFact> {
    markers
        .iter()
        .map(|m| crate::shape::MarkerFact {
            service: m.resource.service.clone(),
            t: m.time_unix_nano,
            kind: m.kind,
            detail: if m.body.is_empty() {
                m.kind.as_str().to_string()
            } else {
                m.body.to_string()
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SloConfig;
    use crate::signals::{Bucket, Coverage};

    /// 30 calm buckets (10 lookups, 2 lone refills each), then `last`.
    fn series_with(last: Bucket) -> ServiceSeries {
        let calm = Bucket {
            lookups: 100.0,
            misses: 2.0,
            recomputes: 2.0,
            herd: 1.0,
            requests: 100.0,
            p95_ms: 20.0,
            db_ops: 2.0,
            db_p95_ms: 5.0,
            ..Bucket::default()
        };
        let mut buckets = vec![calm; 30];
        buckets.push(last);
        ServiceSeries {
            service: Sym::from("shop"),
            t0: 0,
            bucket_nanos: 1_000_000_000,
            buckets,
            coverage: Coverage::default(),
            slo: SloConfig::default(),
        }
    }

    #[test]
    fn a_one_bucket_burst_counts_only_with_a_herd_or_far_over_the_limit() {
        let config = AnalysisConfig::default();
        // The limit here: max(5 misses/s floor, median 2 + 6 × MAD floor 1, 3 × 2) = 8.
        let burst = |misses: f64, herd: f64| {
            let f = flags(
                &series_with(Bucket {
                    lookups: 100.0,
                    misses,
                    herd,
                    ..Bucket::default()
                }),
                &config,
            );
            (f.burst[30], f.strong[30])
        };
        assert_eq!(burst(7.0, 8.0), (false, false), "under the limit");
        assert_eq!(
            burst(7.0, 5.0),
            (true, true),
            "a herd of 5 on top of the median 2 is a burst under the count limit"
        );
        assert_eq!(burst(6.0, 5.0), (false, false));
        assert_eq!(
            burst(10.0, 1.0),
            (true, false),
            "lone refills: needs two buckets"
        );
        assert_eq!(burst(10.0, 5.0), (true, true), "a herd of 5 on one key");
        assert_eq!(burst(24.0, 1.0), (true, true), "three times the limit");
        assert_eq!(burst(23.0, 1.0), (true, false));
    }

    #[test]
    fn errors_that_burn_the_budget_at_the_page_rate_breach_the_slo_without_latency() {
        let config = AnalysisConfig::default();
        // 99 % target: 14.4 × 1 % = 14.4 % of requests failing.
        let spike = |errors: f64, p95_ms: f64| {
            flags(
                &series_with(Bucket {
                    lookups: 100.0,
                    requests: 100.0,
                    errors,
                    p95_ms,
                    ..Bucket::default()
                }),
                &config,
            )
            .spike[30]
        };
        assert!(!spike(14.0, 20.0));
        assert!(spike(15.0, 20.0), "fast 5xx are bad");
        assert!(spike(0.0, 501.0), "slow requests are bad");
        assert!(!spike(0.0, 500.0));
    }

    #[test]
    fn lookups_that_stop_while_requests_go_on_bypass_the_cache() {
        let config = AnalysisConfig::default();
        // The calm buckets look up once a request.
        let with_spans = |mut s: ServiceSeries| {
            s.coverage.cache_spans = true;
            s
        };
        let bypass = |lookups: f64, requests: f64| {
            flags(
                &with_spans(series_with(Bucket {
                    lookups,
                    requests,
                    p95_ms: 20.0,
                    ..Bucket::default()
                })),
                &config,
            )
            .bypass[30]
        };
        assert!(bypass(0.0, 100.0), "no lookup at all");
        assert!(bypass(20.0, 100.0), "a fifth of the baseline's");
        assert!(!bypass(21.0, 100.0));
        assert!(!bypass(0.0, 2.0), "too few requests to tell");
        // Lookups from Redis metrics alone: they stop when scrapes do.
        let metrics_only = series_with(Bucket {
            lookups: 0.0,
            requests: 100.0,
            ..Bucket::default()
        });
        assert!(!flags(&metrics_only, &config).bypass[30]);
        // A service that rarely asks its cache has nothing to stop.
        let mut rare = with_spans(metrics_only);
        for b in &mut rare.buckets[..30] {
            b.lookups = 40.0;
        }
        assert!(!flags(&rare, &config).bypass[30], "0.4 lookups per request");
        rare.buckets[..30].iter_mut().for_each(|b| b.lookups = 50.0);
        assert!(flags(&rare, &config).bypass[30], "0.5 lookups per request");
    }

    #[test]
    fn fall_through_is_the_database_time_above_the_baselines_cost_per_request() {
        let mut series = series_with(Bucket::default());
        // The minute before: 4 ms of database time per 100 requests.
        series.buckets.iter_mut().for_each(|b| b.db_ms = 4.0);
        series.buckets.truncate(30);
        series.buckets.extend(std::iter::repeat_n(
            Bucket {
                requests: 100.0,
                db_ms: 400.0,
                ..Bucket::default()
            },
            10,
        ));
        // Expected 10 × 4 ms = 40 of 4,000 ms: 99 % fell through. The lead
        // tolerance (2 buckets) before bucket 30 is left out of the baseline.
        let share = fall_through_share(&series, 30, 30..40, 2);
        assert!((share - 0.99).abs() < 1e-12, "{share}");
        // As busy as the baseline: nothing fell through.
        assert_eq!(fall_through_share(&series, 30, 0..10, 2), 0.0);
    }

    #[test]
    fn recomputes_that_waited_for_their_first_query_are_saturation() {
        let config = AnalysisConfig::default();
        let sat = |queued: f64| {
            flags(
                &series_with(Bucket {
                    requests: 100.0,
                    p95_ms: 20.0,
                    queued,
                    ..Bucket::default()
                }),
                &config,
            )
            .saturated[30]
        };
        assert!(!sat(0.0));
        assert!(sat(1.0));
    }

    /// A stampede at bucket 37 after one slow-query second at 30 (and, in
    /// the control, two): the lone second is noise and not the
    /// saturation the burst has to lead.
    #[test]
    fn one_slow_second_before_a_stampede_is_not_its_saturation_onset() {
        let config = AnalysisConfig::default();
        let calm = series_with(Bucket::default()).buckets[0].clone();
        let slow = Bucket {
            db_ops: 10.0,
            db_p95_ms: 40.0,
            ..calm.clone()
        };
        let herd = Bucket {
            misses: 40.0,
            recomputes: 40.0,
            herd: 8.0,
            p95_ms: 2000.0,
            db_ops: 10.0,
            db_p95_ms: 800.0,
            db_ms: 5000.0,
            recompute_db_ms: 5000.0,
            ..calm.clone()
        };
        let detect_with = |slow_seconds: usize| {
            let mut series = series_with(calm.clone());
            series.buckets.truncate(30);
            series
                .buckets
                .extend(std::iter::repeat_n(slow.clone(), slow_seconds));
            series.buckets.resize(37, calm.clone());
            series.buckets.extend(std::iter::repeat_n(herd.clone(), 6));
            series.buckets.resize(60, calm.clone());
            series.coverage.db_spans = true;
            let facts = crate::shape::Facts::default();
            let found = detect(&ServiceInput {
                series: &series,
                facts: &facts,
                config: &config,
            });
            assert_eq!(found.len(), 1, "{found:?}");
            (found[0].kind, found[0].onset_unix_nano / 1_000_000_000)
        };
        let (kind, onset) = detect_with(1);
        assert_ne!(kind, Kind::DbSaturation);
        assert_eq!(onset, 37);
        assert_eq!(detect_with(2), (Kind::DbSaturation, 30));
    }
}

//! The ground truth of a capture, measured from the simulation's own
//! records (not from the emitted telemetry: tests recount that separately
//! and compare).
//!
//! Definitions, all per service, in seconds from the capture start:
//! - a request belongs to the second it started in; `requests` are the
//!   requests with a `SERVER` span, `lookups` those on the cached route;
//! - a miss is a lookup that did not get a value from the cache (expired,
//!   absent, or the cache failed);
//! - P95 is the nearest-rank 95th percentile of request durations;
//! - *before* is the minute before the reference second (the onset, or the
//!   middle of the capture when there is no incident); *peak* is the most
//!   of a per-second value from the reference second to the end;
//! - the end of an incident is one second after the last second, counted
//!   from the onset, whose P95 is over twice the P95 before or whose miss
//!   rate is over twice the rate before plus 2 points, with ten calm
//!   seconds after it;
//! - the herd of a key is the most recomputes of it in flight at once
//!   (database query start to the cache fill), counting the recomputes
//!   whose query starts between the onset and the end;
//! - peak pool use is the most database queries in flight at once.

use serde::{Deserialize, Serialize};

use crate::scenario::{Mitigation, Scenario, Settings};
use crate::sim::{self, Op, Run};

const S: u64 = 1_000_000_000;
const BEFORE_S: u64 = 60;
const CALM_S: u64 = 10;
/// Top keys listed.
pub const TOP_KEYS: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truth {
    pub scenario: String,
    pub seed: u64,
    /// Length of the capture.
    pub duration_s: u64,
    /// Mitigations switched on in the simulated services.
    pub mitigations_applied: Vec<String>,
    /// The incident kind, or none.
    pub kind: Option<String>,
    pub service: Option<String>,
    /// When the stampede (or saturation) starts.
    pub onset_s: Option<f64>,
    pub end_s: Option<f64>,
    /// The incident service's keys with a herd (two or more recomputes at
    /// once), largest first.
    pub keys: Vec<KeyHerd>,
    pub peak_herd: u64,
    pub services: Vec<ServiceTruth>,
    /// The mitigations that fit.
    pub mitigations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyHerd {
    pub key: String,
    /// The request path that identifies the key when statements are
    /// sanitised.
    pub path: String,
    pub herd: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTruth {
    pub name: String,
    pub requests: u64,
    pub lookups: u64,
    pub misses: u64,
    pub miss_rate_before: f64,
    pub miss_rate_peak: f64,
    pub p95_before_ms: f64,
    pub p95_peak_ms: f64,
    pub peak_pool_used: u64,
    pub pool_max: u64,
}

/// Per-second series of one service.
#[derive(Debug, Clone, Default)]
struct Seconds {
    durations_ms: Vec<Vec<f64>>,
    lookups: Vec<u64>,
    misses: Vec<u64>,
}

impl Seconds {
    fn new(duration_s: u64) -> Self {
        let n = duration_s as usize + 1;
        Self {
            durations_ms: vec![Vec::new(); n],
            lookups: vec![0; n],
            misses: vec![0; n],
        }
    }
    fn p95(&self, from: u64, to: u64) -> f64 {
        let all: Vec<f64> = self
            .range(from, to)
            .flat_map(|s| s.iter().copied())
            .collect();
        p95(all)
    }
    fn range(&self, from: u64, to: u64) -> impl Iterator<Item = &Vec<f64>> {
        let to = (to as usize).min(self.durations_ms.len());
        self.durations_ms[(from as usize).min(to)..to].iter()
    }
    fn miss_rate(&self, from: u64, to: u64) -> f64 {
        let to = (to as usize).min(self.lookups.len());
        let from = (from as usize).min(to);
        let l: u64 = self.lookups[from..to].iter().sum();
        let m: u64 = self.misses[from..to].iter().sum();
        if l == 0 { 0.0 } else { m as f64 / l as f64 }
    }
}

/// Nearest-rank 95th percentile; 0 for no values.
pub fn p95(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = (0.95 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Peak of a set of intervals in flight at once.
pub fn peak_overlap(intervals: impl IntoIterator<Item = (u64, u64)>) -> u64 {
    let mut ev: Vec<(u64, i64)> = Vec::new();
    for (s, e) in intervals {
        ev.push((s, 1));
        ev.push((e, -1));
    }
    ev.sort();
    let (mut cur, mut peak) = (0i64, 0i64);
    for (_, d) in ev {
        cur += d;
        peak = peak.max(cur);
    }
    peak as u64
}

/// Fill `t`'s before/peak figures from the per-second series, given the
/// reference second; for the incident service (`find_end`) also find the
/// end, which bounds the peak.
fn summarise(
    t: &mut ServiceTruth,
    s: &Seconds,
    reference_s: u64,
    duration_s: u64,
    find_end: bool,
) -> Option<u64> {
    let before_from = reference_s.saturating_sub(BEFORE_S);
    t.p95_before_ms = s.p95(before_from, reference_s);
    t.miss_rate_before = s.miss_rate(before_from, reference_s);
    let elevated = |sec: u64| {
        s.p95(sec, sec + 1) > 2.0 * t.p95_before_ms
            || s.miss_rate(sec, sec + 1) > 2.0 * t.miss_rate_before + 0.02
    };
    let end = find_end.then(|| {
        let (mut last, mut calm) = (reference_s, 0);
        for sec in reference_s..duration_s {
            if elevated(sec) {
                last = sec;
                calm = 0;
            } else {
                calm += 1;
                if calm >= CALM_S && last > reference_s {
                    break;
                }
            }
        }
        last + 1
    });
    let to = end.unwrap_or(duration_s);
    t.p95_peak_ms = (reference_s..to)
        .map(|sec| s.p95(sec, sec + 1))
        .fold(0.0, f64::max);
    t.miss_rate_peak = (reference_s..to)
        .map(|sec| s.miss_rate(sec, sec + 1))
        .fold(0.0, f64::max);
    end
}

/// Measure the truth of a simulated run.
pub fn measure(
    scenario: Scenario,
    seed: u64,
    mitigations: &[Mitigation],
    settings: &Settings,
    run: &Run,
) -> Truth {
    let expected = scenario.expectation(mitigations);
    let duration_s = settings.duration_s.ceil() as u64;
    let reference_s = expected.onset_s.map_or(duration_s / 2, |o| o as u64);
    let mut services = Vec::new();
    let mut end_s = None;
    for (i, spec) in settings.services.iter().enumerate() {
        let mut sec = Seconds::new(duration_s);
        for r in run
            .requests
            .iter()
            .filter(|r| r.service == i && !r.path.is_empty())
        {
            let b = ((r.start / S) as usize).min(duration_s as usize);
            sec.durations_ms[b].push((r.end - r.start) as f64 / 1e6);
            if r.route == "/product/{id}" {
                sec.lookups[b] += 1;
                sec.misses[b] += u64::from(r.missed);
            }
        }
        let queries = run
            .requests
            .iter()
            .filter(|r| r.service == i)
            .flat_map(|r| r.ops.iter())
            .filter_map(|o| match o {
                Op::Query { start, end, .. } => Some((*start, *end)),
                _ => None,
            });
        let mut t = ServiceTruth {
            name: spec.name.to_string(),
            requests: sec.durations_ms.iter().map(|d| d.len() as u64).sum(),
            lookups: sec.lookups.iter().sum(),
            misses: sec.misses.iter().sum(),
            miss_rate_before: 0.0,
            miss_rate_peak: 0.0,
            p95_before_ms: 0.0,
            p95_peak_ms: 0.0,
            peak_pool_used: peak_overlap(queries),
            pool_max: spec.pool as u64,
        };
        let is_incident = expected.service == Some(spec.name);
        let end = summarise(&mut t, &sec, reference_s, duration_s, is_incident);
        if is_incident {
            end_s = end.map(|e| e as f64);
        }
        services.push(t);
    }
    let incident_service = expected
        .service
        .and_then(|n| settings.services.iter().position(|s| s.name == n));
    let window = expected
        .onset_s
        .zip(end_s)
        .map(|(from, to)| ((from * S as f64) as u64, (to * S as f64) as u64));
    let herds = sim::herds_of(run, incident_service, window);
    let peak_herd = herds.first().map_or(0, |h| h.1);
    let keys = if incident_service.is_some() {
        herds
            .iter()
            .filter(|h| h.1 >= 2)
            .take(TOP_KEYS)
            .map(|(k, h)| KeyHerd {
                key: k.clone(),
                path: format!("/product/{}", k.trim_start_matches("product:")),
                herd: *h,
            })
            .collect()
    } else {
        Vec::new()
    };
    Truth {
        scenario: scenario.name().to_string(),
        seed,
        duration_s,
        mitigations_applied: mitigations.iter().map(|m| m.name().to_string()).collect(),
        kind: expected.kind.map(str::to_string),
        service: expected.service.map(str::to_string),
        onset_s: expected.onset_s,
        end_s,
        keys,
        peak_herd,
        services,
        mitigations: expected.mitigations.iter().map(|m| m.to_string()).collect(),
    }
}

//! Mitigations (SPEC §4.4): which fit an incident, and what each would have
//! changed, estimated by replaying the incident's own recorded recomputes,
//! lookups and requests with the mitigation applied.

use std::collections::HashMap;

use crate::incident::{Evidence, Kind, Mitigation};
use crate::model::Sym;
use crate::shape::{DbOpFact, LookupFact, RecomputeFact, RequestFact};
use crate::stats;

const SINGLE_FLIGHT_TITLE: &str = "Single-flight / per-key lock around recompute";
const SINGLE_FLIGHT_CHANGE: &str = "On a miss, take a per-key lock (an in-process single-flight map, or a short-lived `SET lock:KEY NX PX 5000` in the cache) so one caller recomputes and fills while the others wait for the fill or briefly serve the stale value.";

/// What the replay works from.
pub struct Context<'a> {
    pub kind: Kind,
    pub recomputes: Vec<&'a RecomputeFact>,
    pub misses: Vec<&'a LookupFact>,
    /// Keys looked up before the incident's marker (for warm-up).
    pub known_keys_before: Option<std::collections::HashSet<Sym>>,
    pub requests: Vec<&'a RequestFact>,
    pub db_ops: Vec<&'a DbOpFact>,
    /// Median recompute duration per key group before the onset, ns.
    pub baseline_recompute: HashMap<Sym, u64>,
    /// Median request duration before the onset, ns.
    pub baseline_request: Option<u64>,
    pub pool_max: Option<f64>,
    pub evidence: &'a Evidence,
    pub hot_keys: Vec<Sym>,
    /// Estimated TTL of the missed keys, ns.
    pub ttl_estimate: Option<u64>,
}

/// Most intervals in flight at one instant (ends before starts on ties).
pub fn peak_concurrency(intervals: impl Iterator<Item = (u64, u64)>) -> u64 {
    let mut ev: Vec<(u64, i64)> = Vec::new();
    for (s, e) in intervals {
        ev.push((s, 1));
        ev.push((e.max(s), -1));
    }
    ev.sort();
    let (mut cur, mut peak) = (0i64, 0i64);
    for (_, d) in ev {
        cur += d;
        peak = peak.max(cur);
    }
    peak.max(0) as u64
}

/// Most events in any one-second bucket.
pub fn peak_per_second(times: impl Iterator<Item = u64>) -> u64 {
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for t in times {
        *counts.entry(t / 1_000_000_000).or_default() += 1;
    }
    counts.values().copied().max().unwrap_or(0)
}

/// Deterministic uniform value in [0, 1) from a string.
fn unit_hash(s: &str, salt: u64) -> f64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ salt;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Single-flight replay: a recompute whose key already has one in flight
/// waits for it instead of querying. The kept recomputes last their key
/// group's pre-incident median (the database is no longer saturated), or
/// their recorded duration when no baseline exists.
pub fn replay_single_flight(
    recomputes: &[&RecomputeFact],
    baseline: &HashMap<Sym, u64>,
) -> (u64, u64) {
    let mut sorted: Vec<&&RecomputeFact> = recomputes.iter().collect();
    sorted.sort_by_key(|r| r.miss_at);
    let mut busy_until: HashMap<&str, u64> = HashMap::new();
    let mut kept = Vec::new();
    for r in sorted {
        let until = busy_until.get(&*r.key).copied().unwrap_or(0);
        if r.miss_at < until {
            continue;
        }
        let d = baseline
            .get(&r.group)
            .copied()
            .unwrap_or(r.end - r.start)
            .max(1);
        busy_until.insert(&r.key, r.miss_at + d);
        kept.push((r.miss_at, r.miss_at + d));
    }
    (kept.len() as u64, peak_concurrency(kept.into_iter()))
}

/// TTL jitter replay: each key's expiry (and the recomputes it causes) moves
/// by a deterministic offset within `jitter` ns; returns the peak
/// recomputes started per second after.
pub fn replay_ttl_jitter(recomputes: &[&RecomputeFact], jitter: u64) -> u64 {
    peak_per_second(
        recomputes
            .iter()
            .map(|r| r.miss_at + (unit_hash(&r.key, 7) * jitter as f64) as u64),
    )
}

fn fmt_n(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// Ranked recommendations for an incident.
pub fn recommend(ctx: &Context<'_>) -> Vec<Mitigation> {
    let mut out: Vec<(u32, Mitigation)> = Vec::new();
    let ev = ctx.evidence;
    let stampede = ctx.kind.is_stampede();
    let recomputes_before = ctx.recomputes.len() as u64;
    let concurrent_before = peak_concurrency(ctx.recomputes.iter().map(|r| (r.start, r.end)));

    if stampede && ev.herd_max > 1 && recomputes_before > 0 {
        let (after, concurrent_after) =
            replay_single_flight(&ctx.recomputes, &ctx.baseline_recompute);
        out.push((
            10,
            Mitigation {
                id: "single-flight".into(),
                title: SINGLE_FLIGHT_TITLE.into(),
                because: format!(
                    "herd of {} concurrent recomputes on one key; {} recomputes of {} distinct keys (duplicate ratio {:.1})",
                    ev.herd_max,
                    fmt_n(ev.recomputes as f64),
                    fmt_n(ev.distinct_keys_recomputed as f64),
                    ev.duplicate_ratio
                ),
                change: SINGLE_FLIGHT_CHANGE.into(),
                effect: format!(
                    "single-flight per key: {} → {} recomputes, peak concurrent recomputes {} → {}",
                    fmt_n(recomputes_before as f64),
                    fmt_n(after as f64),
                    concurrent_before,
                    concurrent_after
                ),
                before: recomputes_before as f64,
                after: after as f64,
                metric: "recomputes".into(),
            },
        ));
    }
    if stampede && recomputes_before == 0 {
        // Metrics only: the fit is clear, the replay needs traces.
        out.push((
            10,
            Mitigation {
                id: "single-flight".into(),
                title: SINGLE_FLIGHT_TITLE.into(),
                because: format!(
                    "misses rose from {:.0}/s to {:.0}/s while the database saturated",
                    ev.miss_rate_baseline_per_s, ev.miss_rate_peak_per_s
                ),
                change: SINGLE_FLIGHT_CHANGE.into(),
                effect: "not replayable from metrics alone: send traces (cache and database client spans) to estimate it".into(),
                before: 0.0,
                after: 0.0,
                metric: "recomputes".into(),
            },
        ));
    }
    if ctx.kind == Kind::SynchronizedExpiry && recomputes_before > 0 {
        let ttl = ctx.ttl_estimate.unwrap_or(300_000_000_000);
        let jitter = ttl / 5; // ±10 %
        let before = peak_per_second(ctx.recomputes.iter().map(|r| r.miss_at));
        let after = replay_ttl_jitter(&ctx.recomputes, jitter);
        out.push((
            20,
            Mitigation {
                id: "ttl-jitter".into(),
                title: "Stagger TTLs (TTL jitter)".into(),
                because: format!(
                    "{} distinct keys missed together{}",
                    fmt_n(ev.distinct_keys_recomputed as f64),
                    match (ev.fill_cluster_share, ev.fill_spread_seconds) {
                        (Some(c), Some(s)) => format!(
                            "; {:.0} % of them were last filled within {s:.1} s of each other (same TTL)",
                            c * 100.0
                        ),
                        _ => String::new(),
                    }
                ),
                change: "Add random jitter to every TTL you set (e.g. TTL × (0.9 + 0.2 × random())), so keys filled together do not expire together.".into(),
                effect: format!(
                    "TTL jitter of ±10 % (~{:.0} s): peak recomputes started per second {} → {}",
                    jitter as f64 / 1e9,
                    before,
                    after
                ),
                before: before as f64,
                after: after as f64,
                metric: "peak recomputes per second".into(),
            },
        ));
    }
    if matches!(ctx.kind, Kind::HotKeyExpiry) && !ctx.hot_keys.is_empty() {
        let hot: Vec<&&RecomputeFact> = ctx
            .recomputes
            .iter()
            .filter(|r| ctx.hot_keys.contains(&r.key))
            .collect();
        let before = hot.len() as u64;
        let after = ctx.hot_keys.len() as u64;
        out.push((
            20,
            Mitigation {
                id: "xfetch".into(),
                title: "Probabilistic early recomputation (XFetch)".into(),
                because: format!(
                    "hot key {} carries {} recomputes with a herd of {}",
                    ctx.hot_keys[0],
                    fmt_n(before as f64),
                    ev.herd_max
                ),
                change: "Store the recompute time δ with the value and, on each hit, recompute early when now − δ·β·ln(rand()) ≥ expiry (β ≈ 1): one request refreshes the key shortly before it expires, so it never expires under load.".into(),
                effect: format!(
                    "early refresh of the hot keys: {} → {} recomputes on them, herd {} → 1",
                    fmt_n(before as f64),
                    after,
                    ev.herd_max
                ),
                before: before as f64,
                after: after as f64,
                metric: "hot-key recomputes".into(),
            },
        ));
    }
    if matches!(ctx.kind, Kind::HotKeyExpiry | Kind::CacheUnavailable) {
        let mut durations: Vec<f64> = ctx
            .requests
            .iter()
            .map(|r| (r.end - r.start) as f64 / 1e6)
            .collect();
        let before = stats::quantile(&durations, 0.95);
        if let Some(base) = ctx.baseline_request {
            for (d, r) in durations.iter_mut().zip(&ctx.requests) {
                if r.missed {
                    *d = base as f64 / 1e6;
                }
            }
        }
        let after = stats::quantile(&durations, 0.95);
        let stale = ctx.requests.iter().filter(|r| r.missed).count();
        if !before.is_nan() && !after.is_nan() {
            out.push((
                if ctx.kind == Kind::CacheUnavailable { 10 } else { 30 },
                Mitigation {
                    id: "stale-while-revalidate".into(),
                    title: "Stale-while-revalidate / serve stale on error".into(),
                    because: if ctx.kind == Kind::CacheUnavailable {
                        format!("{} lookups failed and fell through to the database", fmt_n(ev.failed_lookups as f64))
                    } else {
                        format!("{} requests waited on recomputes of hot keys", fmt_n(stale as f64))
                    },
                    change: "Keep values past their soft TTL (a hard TTL a few times longer); serve the stale value while one background refresh runs, and keep serving it when the cache or the recompute fails.".into(),
                    effect: format!(
                        "{} requests served stale instead of waiting: P95 {} → {}",
                        fmt_n(stale as f64),
                        fmt_ms(before),
                        fmt_ms(after)
                    ),
                    before,
                    after,
                    metric: "P95 ms".into(),
                },
            ));
        }
    }
    if ctx.kind == Kind::ColdCache {
        let misses = ctx.misses.len() as u64;
        let avoided = match &ctx.known_keys_before {
            Some(known) => ctx.misses.iter().filter(|l| known.contains(&l.key)).count() as u64,
            None => 0,
        };
        out.push((
            10,
            Mitigation {
                id: "warm-up".into(),
                title: "Warm the cache before taking traffic".into(),
                because: ev
                    .marker
                    .clone()
                    .unwrap_or_else(|| "the burst follows a deploy, restart or flush".into()),
                change: "On deploy or cache-node replacement, pre-load the hottest keys (replay the top keys of the last hour) before the instance joins the load balancer, and never FLUSHALL a cache in front of live traffic.".into(),
                effect: format!(
                    "warm-up with the keys seen before: {} of {} misses avoided",
                    fmt_n(avoided as f64),
                    fmt_n(misses as f64)
                ),
                before: misses as f64,
                after: (misses - avoided.min(misses)) as f64,
                metric: "misses".into(),
            },
        ));
    }
    // Edge coalescing: concurrent GETs of the same path collapse into one.
    let gets: Vec<&&RequestFact> = ctx
        .requests
        .iter()
        .filter(|r| r.missed && r.method.eq_ignore_ascii_case("GET") && !r.url_path.is_empty())
        .collect();
    if stampede && gets.len() > 1 {
        let mut by_path: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
        for r in &gets {
            by_path
                .entry(&r.url_path)
                .or_default()
                .push((r.start, r.end));
        }
        let mut origin = 0u64;
        for v in by_path.values_mut() {
            v.sort();
            let mut until = 0;
            for &(s, e) in v.iter() {
                if s >= until {
                    origin += 1;
                    until = e;
                }
            }
        }
        if origin < gets.len() as u64 {
            out.push((
                50,
                Mitigation {
                    id: "edge-coalescing".into(),
                    title: "Request coalescing at the edge".into(),
                    because: format!(
                        "{} missed GET requests, many for the same path at the same time",
                        fmt_n(gets.len() as f64)
                    ),
                    change: "Enable a cache lock in the reverse proxy or CDN (e.g. nginx `proxy_cache_lock on`, Varnish request coalescing) for these cacheable GET routes, so concurrent identical requests wait for one origin response.".into(),
                    effect: format!(
                        "coalescing identical in-flight GETs: {} → {} origin requests",
                        fmt_n(gets.len() as f64),
                        fmt_n(origin as f64)
                    ),
                    before: gets.len() as f64,
                    after: origin as f64,
                    metric: "origin requests".into(),
                },
            ));
        }
    }
    // Retries.
    let retries: Vec<&&RequestFact> = ctx.requests.iter().filter(|r| r.resend).collect();
    if !retries.is_empty() {
        let before = peak_per_second(retries.iter().map(|r| r.start));
        let after = peak_per_second(retries.iter().map(|r| {
            let spread = unit_hash(&crate::model::hex(&r.trace_id), 11) * 8e9;
            r.start + spread as u64
        }));
        out.push((
            40,
            Mitigation {
                id: "backoff-jitter".into(),
                title: "Exponential backoff with jitter on retries".into(),
                because: format!("{} retried requests in the window", fmt_n(retries.len() as f64)),
                change: "Retry with exponential backoff and full jitter (sleep random(0, base × 2^attempt)), cap attempts, and add a retry budget so retries cannot multiply load during an overload.".into(),
                effect: format!(
                    "full-jitter backoff (up to 8 s): peak retries per second {before} → {after}"
                ),
                before: before as f64,
                after: after as f64,
                metric: "peak retries per second".into(),
            },
        ));
    }
    // Pool limiter / circuit breaker: cap concurrent database operations.
    if !ctx.db_ops.is_empty() {
        let cap = ctx
            .pool_max
            .unwrap_or_else(|| (ev.db_inflight_peak / 4.0).ceil().max(1.0));
        let mut ops: Vec<(u64, u64)> = ctx.db_ops.iter().map(|d| (d.start, d.end)).collect();
        ops.sort();
        let mut ends: std::collections::BinaryHeap<std::cmp::Reverse<u64>> = Default::default();
        let mut shed = 0u64;
        for (s, e) in ops {
            while ends.peek().is_some_and(|r| r.0 <= s) {
                ends.pop();
            }
            if ends.len() as f64 >= cap {
                shed += 1;
            } else {
                ends.push(std::cmp::Reverse(e));
            }
        }
        let before = ev.db_inflight_peak;
        if before > cap {
            out.push((
                if stampede { 60 } else { 20 },
                Mitigation {
                    id: "circuit-breaker".into(),
                    title: "Circuit breaker with a database pool limiter and load shedding".into(),
                    because: format!(
                        "{} database operations in flight at peak{}",
                        fmt_n(before),
                        ev.pool_use_peak
                            .map(|p| format!(", pool use peaked at {:.0} %", p * 100.0))
                            .unwrap_or_default()
                    ),
                    change: "Bound concurrent database work to the pool size with a semaphore, fail fast (or serve stale) when it is full instead of queueing, and open a circuit breaker on sustained timeouts.".into(),
                    effect: format!(
                        "limiting to {} concurrent operations: peak in flight {} → {}, {} operations shed or served stale",
                        fmt_n(cap),
                        fmt_n(before),
                        fmt_n(cap),
                        fmt_n(shed as f64)
                    ),
                    before,
                    after: cap,
                    metric: "peak database operations in flight".into(),
                },
            ));
        }
    }
    if ctx.kind == Kind::DbSaturation {
        let mut by_stmt: HashMap<&str, (f64, Vec<f64>)> = HashMap::new();
        let mut total = 0.0;
        for d in &ctx.db_ops {
            let ms = (d.end - d.start) as f64 / 1e6;
            total += ms;
            let e = by_stmt.entry(&d.statement).or_default();
            e.0 += ms;
            e.1.push(ms);
        }
        if let Some((stmt, (ms, durs))) = by_stmt
            .iter()
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
            .filter(|_| total > 0.0)
        {
            let share = ms / total;
            out.push((
                10,
                Mitigation {
                    id: "slow-query-review".into(),
                    title: "Slow-query and pool-size review".into(),
                    because: format!(
                        "the cache is not the cause: `{}` takes {:.0} % of database time (P95 {})",
                        crate::model::truncate(stmt, 120),
                        share * 100.0,
                        fmt_ms(stats::quantile(durs, 0.95))
                    ),
                    change: "Look at this statement's plan (EXPLAIN ANALYZE), add the missing index or cache its result, and size the pool to what the database can serve rather than to peak demand.".into(),
                    effect: format!(
                        "fixing this statement removes up to {:.0} % of database time in the window",
                        share * 100.0
                    ),
                    before: *ms,
                    after: total - ms,
                    metric: "database ms".into(),
                },
            ));
        }
    }
    out.sort_by_key(|(rank, _)| *rank);
    out.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(key: &str, start_ms: u64, end_ms: u64) -> RecomputeFact {
        RecomputeFact {
            service: Sym::from("shop"),
            key: Sym::from(key),
            group: Sym::from("product:{n}"),
            miss_at: start_ms * 1_000_000,
            start: start_ms * 1_000_000,
            end: end_ms * 1_000_000,
            db_nanos: (end_ms - start_ms) * 1_000_000,
            wait: 0,
            trace_id: [0; 16],
        }
    }

    #[test]
    fn single_flight_replay_matches_a_direct_recount() {
        // 10 recomputes of one key starting 10 ms apart, each 500 ms long,
        // plus one of another key: with single-flight and a 100 ms baseline,
        // the first key recomputes at 0 and again at 100 (the next one to
        // arrive after the first finished), 200 … → starts 0,100,…,900 → 10?
        // No: arrivals are at 0,10,…,90; only the one at 0 is kept (busy
        // until 100). So 1 + 1 other key = 2 recomputes.
        let v: Vec<RecomputeFact> = (0..10)
            .map(|i| rc("product:1", i * 10, i * 10 + 500))
            .chain(std::iter::once(rc("product:2", 5, 505)))
            .collect();
        let refs: Vec<&RecomputeFact> = v.iter().collect();
        let mut base = HashMap::new();
        base.insert(Sym::from("product:{n}"), 100_000_000u64);
        let (after, peak) = replay_single_flight(&refs, &base);
        assert_eq!(after, 2);
        assert_eq!(peak, 2);
        assert_eq!(peak_concurrency(refs.iter().map(|r| (r.start, r.end))), 11);
    }

    #[test]
    fn jitter_spreads_a_synchronized_burst() {
        let v: Vec<RecomputeFact> = (0..200)
            .map(|i| rc(&format!("product:{i}"), 1000, 1100))
            .collect();
        let refs: Vec<&RecomputeFact> = v.iter().collect();
        assert_eq!(peak_per_second(refs.iter().map(|r| r.start)), 200);
        let after = replay_ttl_jitter(&refs, 60_000_000_000);
        assert!(after < 20, "after = {after}");
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(fmt_n(4812.0), "4,812");
        assert_eq!(fmt_n(37.0), "37");
        assert_eq!(fmt_n(1234567.0), "1,234,567");
    }
}

//! The service model: request handlers in front of a cache with TTLs and a
//! database with a bounded connection pool. Requests queue for a connection
//! when the pool is full, and database service time grows with the number
//! of queries in flight, which is what turns a miss burst into a long P95.
//! Arrivals are Poisson with a peak-hour ramp; key popularity is Zipf.
//!
//! The simulation is deterministic from its seed and produces plain request
//! records; `emit` turns them into spans through the OpenTelemetry SDK.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::scenario::{Scenario, Settings};

/// SplitMix64: small, fast, deterministic across platforms and versions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }
}

/// Zipf sampler over ranks 1..=n by inverse CDF.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Self { cdf }
    }
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.f64();
        self.cdf.partition_point(|c| *c < u)
    }
}

/// What one operation of a request did, in nanoseconds from the capture start.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `GET` on the cache; `failed` when the cache timed out.
    Get { start: u64, end: u64, failed: bool },
    /// A database query.
    Query {
        start: u64,
        end: u64,
        statement: &'static str,
    },
    /// `SETEX` filling the key.
    Set { start: u64, end: u64 },
    /// `SET lock NX PX` taken by single-flight.
    Lock { start: u64, end: u64 },
    /// `FLUSHALL` issued at startup.
    Flush { start: u64, end: u64 },
}

/// One request as simulated.
#[derive(Debug, Clone)]
pub struct Request {
    pub service: usize,
    /// Index into the service's deploy generations (version, instance).
    pub generation: usize,
    pub route: &'static str,
    pub method: &'static str,
    pub path: String,
    pub key: String,
    pub start: u64,
    pub end: u64,
    pub status: u16,
    pub resend: u32,
    pub ops: Vec<Op>,
    /// Ground truth: the lookup missed (or failed) and the request recomputed.
    pub recomputed: bool,
    pub missed: bool,
}

/// The database: a pool of connections and concurrency-dependent service time.
struct Db {
    pool: usize,
    /// When each busy connection becomes free.
    free_at: BinaryHeap<std::cmp::Reverse<u64>>,
    /// Queries in flight (for the slowdown), as end times.
    inflight: BinaryHeap<std::cmp::Reverse<u64>>,
    base_ms: f64,
    slowdown: f64,
}

impl Db {
    /// Run a query arriving at `t` needing `work_ms` at an idle database.
    /// Returns (start, end) of the query proper (after waiting for a
    /// connection).
    /// Like `query`, but gives up (`None`, no connection taken) when no
    /// connection frees up within `acquire_timeout` ns.
    fn try_query(
        &mut self,
        t: u64,
        work_ms: f64,
        acquire_timeout: u64,
        rng: &mut Rng,
    ) -> Option<(u64, u64)> {
        while self.free_at.peek().is_some_and(|r| r.0 <= t) {
            self.free_at.pop();
        }
        let start = if self.free_at.len() >= self.pool {
            let free = self.free_at.peek().map(|r| r.0).unwrap_or(t);
            if free.saturating_sub(t) > acquire_timeout {
                return None;
            }
            self.free_at.pop();
            free
        } else {
            t
        };
        while self.inflight.peek().is_some_and(|r| r.0 <= start) {
            self.inflight.pop();
        }
        let busy = self.inflight.len() as f64;
        let jitter = 0.8 + 0.4 * rng.f64();
        let ms = work_ms * self.base_ms * jitter * (1.0 + self.slowdown * busy / self.pool as f64);
        let end = start + (ms * 1e6) as u64;
        self.free_at.push(std::cmp::Reverse(end));
        self.inflight.push(std::cmp::Reverse(end));
        Some((start, end))
    }

    fn in_use(&mut self, t: u64) -> usize {
        self.free_at.iter().filter(|r| r.0 > t).count()
    }
}

/// Per-second gauges the simulation records (for metrics).
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub t: u64,
    pub pool_used: usize,
    pub pool_max: usize,
    pub pending: usize,
    pub hits: u64,
    pub misses: u64,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Run {
    pub requests: Vec<Request>,
    pub gauges: Vec<Vec<Gauges>>,
}

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// Simulate a scenario.
pub fn simulate(scenario: Scenario, seed: u64) -> Run {
    let cfg = scenario.settings();
    let mut run = Run::default();
    for svc in 0..cfg.services.len() {
        let mut rng = Rng::new(seed.wrapping_add(svc as u64 * 1_000_003));
        let (requests, gauges) = simulate_service(&cfg, svc, &mut rng);
        run.requests.extend(requests);
        run.gauges.push(gauges);
    }
    run.requests.sort_by_key(|r| (r.start, r.service));
    run
}

fn simulate_service(cfg: &Settings, svc: usize, rng: &mut Rng) -> (Vec<Request>, Vec<Gauges>) {
    let spec = &cfg.services[svc];
    let zipf = Zipf::new(spec.keys, spec.zipf_s);
    let mut db = Db {
        pool: spec.pool,
        free_at: BinaryHeap::new(),
        inflight: BinaryHeap::new(),
        base_ms: spec.db_ms,
        slowdown: spec.db_slowdown,
    };
    // Cache: key → (filled at, expires at). Warm at start, expiries spread
    // over one TTL. A value is visible only once its fill has happened.
    let ttl = (spec.ttl_s * S as f64) as u64;
    let mut cache: HashMap<usize, (u64, u64)> = (0..spec.keys)
        .map(|k| (k, (0, (rng.f64() * ttl as f64) as u64 + S)))
        .collect();
    // Keys being recomputed (for single-flight): key → fill time.
    let mut recomputing: HashMap<usize, u64> = HashMap::new();
    let mut out = Vec::new();
    let mut gauges: BTreeMap<u64, Gauges> = BTreeMap::new();
    let duration = (cfg.duration_s * S as f64) as u64;
    let mut t = 0u64;
    let mut warmed = false;
    let mut deployed = false;
    let mut hot_expired = false;
    let mut retries: Vec<(u64, usize, u32)> = Vec::new();
    loop {
        let ramp = 1.0 + (spec.peak_factor - 1.0) * (t as f64 / duration as f64).min(1.0);
        let rate = spec.rps * ramp;
        t += (rng.exp(1.0 / rate) * S as f64) as u64;
        if t >= duration {
            break;
        }
        // Scenario events.
        if let Some(at) = spec.sync_fill_at_s {
            let at = (at * S as f64) as u64;
            if !warmed && t >= at {
                warmed = true;
                // A warm-up job refills the hottest keys at once, same TTL.
                let mut ops = Vec::new();
                let mut tt = t;
                for k in 0..spec.sync_keys.min(spec.keys) {
                    ops.push(Op::Set {
                        start: tt,
                        end: tt + MS / 4,
                    });
                    tt += MS / 4;
                    let jitter = if spec.ttl_jitter > 0.0 {
                        (rng.f64() * spec.ttl_jitter * ttl as f64) as u64
                    } else {
                        0
                    };
                    cache.insert(k, (tt, t + ttl + jitter));
                }
                out.push(Request {
                    service: svc,
                    generation: 0,
                    route: "/admin/cache/warm",
                    method: "POST",
                    path: "/admin/cache/warm".into(),
                    key: "warm-job".into(),
                    start: t,
                    end: tt + MS,
                    status: 200,
                    resend: 0,
                    ops,
                    recomputed: false,
                    missed: false,
                });
            }
        }
        let mut generation = 0;
        if let Some(at) = spec.deploy_at_s {
            let at = (at * S as f64) as u64;
            if t >= at {
                generation = 1;
                if !deployed {
                    deployed = true;
                    cache.clear();
                    out.push(Request {
                        service: svc,
                        generation: 1,
                        route: "startup",
                        method: "",
                        path: String::new(),
                        key: String::new(),
                        start: t,
                        end: t + 2 * MS,
                        status: 200,
                        resend: 0,
                        ops: vec![Op::Flush {
                            start: t,
                            end: t + MS,
                        }],
                        recomputed: false,
                        missed: false,
                    });
                }
            }
        }
        // Pick the request: a retry that is due, or a new arrival.
        let (key, resend) = match retries.iter().position(|r| r.0 <= t) {
            Some(i) => {
                let (_, k, n) = retries.swap_remove(i);
                (k, n)
            }
            None => {
                let k = if spec.hot_key_share > 0.0 && rng.f64() < spec.hot_key_share {
                    0
                } else {
                    zipf.sample(rng)
                };
                (k, 0)
            }
        };
        // Slow report route (db-saturation).
        let in_slow = spec
            .slow_route_at_s
            .is_some_and(|(a, b)| t >= (a * S as f64) as u64 && t < (b * S as f64) as u64);
        if in_slow && rng.f64() < spec.slow_route_share {
            let mut tt = t + MS;
            let acquire = (spec.pool_timeout_s * S as f64) as u64;
            let (ops, status) = match db.try_query(tt, spec.slow_query_work, acquire, rng) {
                Some((qs, qe)) => {
                    tt = qe + MS;
                    (
                        vec![Op::Query {
                            start: qs,
                            end: qe,
                            statement: "SELECT o.region, sum(o.total) FROM orders o JOIN order_items i ON i.order_id = o.id WHERE o.created_at > $1 GROUP BY o.region",
                        }],
                        200,
                    )
                }
                None => {
                    tt += acquire;
                    (Vec::new(), 503)
                }
            };
            out.push(Request {
                service: svc,
                generation,
                route: "/reports/{id}",
                method: "GET",
                path: format!("/reports/{}", rng.next_u64() % 1000),
                key: String::new(),
                start: t,
                end: tt,
                status,
                resend: 0,
                ops,
                recomputed: false,
                missed: false,
            });
            continue;
        }
        let cache_down = spec
            .cache_down_s
            .is_some_and(|(a, b)| t >= (a * S as f64) as u64 && t < (b * S as f64) as u64);
        let hot_expire = spec.hot_expire_at_s.map(|a| (a * S as f64) as u64);
        if let Some(he) = hot_expire
            && t >= he
            && !hot_expired
        {
            // The hot key was filled long ago with a long TTL: it expires now.
            hot_expired = true;
            cache.insert(0, (0, he));
        }
        let mut ops = Vec::new();
        let mut tt = t + MS / 2;
        let get_ms = if cache_down {
            1000.0
        } else {
            0.6 + rng.f64() * 0.6
        };
        let get_end = tt + (get_ms * MS as f64) as u64;
        let hit = !cache_down && cache.get(&key).is_some_and(|e| e.0 <= tt && e.1 > tt);
        ops.push(Op::Get {
            start: tt,
            end: get_end,
            failed: cache_down,
        });
        tt = get_end;
        let mut recomputed = false;
        let mut pool_timeout = false;
        let g = gauges.entry(t / S).or_insert_with(|| Gauges {
            t: t / S * S,
            pool_max: spec.pool,
            ..Default::default()
        });
        if hit {
            g.hits += 1;
        } else {
            g.misses += 1;
            let fill_at = recomputing.get(&key).copied().filter(|f| *f > tt);
            match (spec.single_flight, fill_at) {
                (true, Some(f)) => {
                    // Another request holds the lock: wait for its fill.
                    let (ls, le) = (tt, tt + MS / 2);
                    ops.push(Op::Lock { start: ls, end: le });
                    tt = f + MS;
                    ops.push(Op::Get {
                        start: f,
                        end: tt,
                        failed: false,
                    });
                }
                _ => {
                    if spec.single_flight {
                        ops.push(Op::Lock {
                            start: tt,
                            end: tt + MS / 2,
                        });
                        tt += MS / 2;
                    }
                    let work = spec.recompute_work * if key == 0 { spec.hot_key_work } else { 1.0 };
                    let acquire = (spec.pool_timeout_s * S as f64) as u64;
                    match db.try_query(tt, work, acquire, rng) {
                        Some((qs, qe)) => {
                            if qs > tt {
                                g.pending += 1;
                            }
                            ops.push(Op::Query {
                                start: qs,
                                end: qe,
                                statement: "SELECT p.*, s.quantity FROM products p JOIN stock s ON s.product_id = p.id WHERE p.id = $1",
                            });
                            tt = qe;
                            if !cache_down {
                                ops.push(Op::Set {
                                    start: tt,
                                    end: tt + MS / 2,
                                });
                                let jitter = if spec.ttl_jitter > 0.0 {
                                    (rng.f64() * spec.ttl_jitter * ttl as f64) as u64
                                } else {
                                    0
                                };
                                cache.insert(key, (tt, tt + ttl + jitter));
                                tt += MS / 2;
                            }
                        }
                        None => {
                            // Pool acquire timed out: the request fails
                            // without touching the database.
                            g.pending += 1;
                            tt += acquire;
                            pool_timeout = true;
                        }
                    }
                    recomputing.insert(key, tt);
                    recomputed = true;
                }
            }
        }
        tt += ((2.0 + rng.f64() * 6.0) * MS as f64) as u64;
        let timeout = (spec.client_timeout_s * S as f64) as u64;
        let mut status = if pool_timeout { 503 } else { 200 };
        if spec.retries && tt - t > timeout && resend < 3 {
            status = 504;
            retries.push((t + timeout + 50 * MS, key, resend + 1));
        }
        g.pool_used = g.pool_used.max(db.in_use(t));
        out.push(Request {
            service: svc,
            generation,
            route: "/product/{id}",
            method: "GET",
            path: format!("/product/{}", key + 1),
            key: format!("product:{}", key + 1),
            start: t,
            end: tt,
            status,
            resend,
            ops,
            recomputed,
            missed: !hit,
        });
    }
    (out, gauges.into_values().collect())
}

/// Ground truth from the simulation itself: for each key, the most
/// recomputes in flight at once (query start to fill end), largest first.
pub fn herds(run: &Run) -> Vec<(String, u64)> {
    let mut by_key: HashMap<(usize, &str), Vec<(u64, i64)>> = HashMap::new();
    for r in run.requests.iter().filter(|r| r.recomputed) {
        let start = r.ops.iter().find_map(|o| match o {
            Op::Query { start, .. } => Some(*start),
            _ => None,
        });
        let end = r
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Query { end, .. } => Some(*end),
                Op::Set { start, .. } => Some(*start),
                _ => None,
            })
            .max();
        if let (Some(s), Some(e)) = (start, end) {
            let ev = by_key.entry((r.service, r.key.as_str())).or_default();
            ev.push((s, 1));
            ev.push((e, -1));
        }
    }
    let mut out: Vec<(String, u64)> = by_key
        .into_iter()
        .map(|((_, k), mut ev)| {
            ev.sort();
            let (mut cur, mut peak) = (0i64, 0i64);
            for (_, d) in ev {
                cur += d;
                peak = peak.max(cur);
            }
            (k.to_string(), peak as u64)
        })
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_and_zipf_are_deterministic() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        let z = Zipf::new(100, 1.1);
        let mut r = Rng::new(1);
        let top = (0..10_000).filter(|_| z.sample(&mut r) == 0).count();
        assert!(top > 1000, "rank 1 is the most popular: {top}");
    }

    #[test]
    fn pool_queueing_delays_queries() {
        let mut db = Db {
            pool: 2,
            free_at: BinaryHeap::new(),
            inflight: BinaryHeap::new(),
            base_ms: 10.0,
            slowdown: 0.0,
        };
        let mut rng = Rng::new(3);
        let a = db.try_query(0, 1.0, u64::MAX, &mut rng).unwrap();
        let b = db.try_query(0, 1.0, u64::MAX, &mut rng).unwrap();
        let c = db.try_query(0, 1.0, u64::MAX, &mut rng).unwrap();
        assert!(
            c.0 >= a.1.min(b.1),
            "the third query waits for a connection"
        );
        assert!(
            db.try_query(0, 1.0, 0, &mut rng).is_none(),
            "no connection within the timeout"
        );
    }
}

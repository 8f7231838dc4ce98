//! The service model: request handlers in front of a cache with TTLs and a
//! database with a bounded connection pool. Requests queue for a connection
//! when the pool is full, and database service time grows with the number
//! of queries in flight, which is what turns a miss burst into a long P95.
//! Arrivals are Poisson with a peak-hour ramp; key popularity is Zipf.
//!
//! The simulation is deterministic from its seed and produces plain request
//! records; `emit` turns them into spans through the OpenTelemetry SDK.

use std::collections::{BTreeMap, HashMap};

use crate::scenario::{Scenario, ServiceSpec, Settings};

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
///
/// Requests are simulated in arrival order, but their queries do not come
/// in time order (a lookup that times out after a second queries later than
/// one that arrived after it), so the pool keeps the busy intervals
/// themselves and fits each query where a connection is free for it.
struct Db {
    pool: usize,
    /// (start, end) of each query, recent ones only.
    busy: Vec<(u64, u64)>,
    base_ms: f64,
    slowdown: f64,
}

/// Busy intervals older than this (before the newest query's time) are
/// dropped: no query is placed that far back.
const DB_HORIZON: u64 = 30 * S;

impl Db {
    fn new(pool: usize, base_ms: f64, slowdown: f64) -> Self {
        Self {
            pool,
            busy: Vec::new(),
            base_ms,
            slowdown,
        }
    }

    /// Queries running at `t`.
    fn in_use(&self, t: u64) -> usize {
        self.busy.iter().filter(|b| b.0 <= t && t < b.1).count()
    }

    /// Queries running or already placed to run after `t`.
    fn in_flight(&self, t: u64) -> usize {
        self.busy.iter().filter(|b| b.1 > t).count()
    }

    /// The most queries running at once within [from, to).
    fn peak_within(&self, from: u64, to: u64) -> usize {
        let mut points: Vec<u64> = vec![from];
        points.extend(
            self.busy
                .iter()
                .filter(|b| b.0 > from && b.0 < to)
                .map(|b| b.0),
        );
        points
            .into_iter()
            .map(|p| self.in_use(p))
            .max()
            .unwrap_or(0)
    }

    /// Run a query arriving at `t` that needs `work_ms` at an idle database
    /// once it has a connection; `None` (nothing taken) when no connection
    /// frees up within `acquire_timeout` ns. Returns (start, end) of the
    /// query proper.
    fn try_query(
        &mut self,
        t: u64,
        work_ms: f64,
        acquire_timeout: u64,
        rng: &mut Rng,
    ) -> Option<(u64, u64)> {
        let horizon = t.saturating_sub(DB_HORIZON);
        self.busy.retain(|b| b.1 > horizon);
        let jitter = 0.8 + 0.4 * rng.f64();
        let mut start = t;
        loop {
            if start - t > acquire_timeout {
                return None;
            }
            let running = self.in_use(start);
            if running < self.pool {
                let ms = work_ms
                    * self.base_ms
                    * jitter
                    * (1.0 + self.slowdown * running as f64 / self.pool as f64);
                let end = start + (ms * 1e6) as u64;
                if self.peak_within(start, end) < self.pool {
                    self.busy.push((start, end));
                    return Some((start, end));
                }
            }
            // Wait for the next connection to free up after `start`.
            start = self
                .busy
                .iter()
                .filter(|b| b.1 > start)
                .map(|b| b.1)
                .min()?;
        }
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

/// Something a service announced (a log record).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub service: usize,
    pub generation: usize,
    pub at: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new version started.
    Deploy,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Run {
    pub requests: Vec<Request>,
    pub gauges: Vec<Vec<Gauges>>,
    pub events: Vec<Event>,
}

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// Simulate a scenario.
pub fn simulate(scenario: Scenario, seed: u64) -> Run {
    simulate_settings(&scenario.settings(), seed)
}

/// Simulate a set of services: a scenario's, possibly with mitigations
/// switched on ([`Settings::with_mitigations`]).
pub fn simulate_settings(cfg: &Settings, seed: u64) -> Run {
    let mut run = Run::default();
    for svc in 0..cfg.services.len() {
        let mut rng = Rng::new(seed.wrapping_add(svc as u64 * 1_000_003));
        let (requests, gauges, events) = simulate_service(cfg, svc, &mut rng);
        run.requests.extend(requests);
        run.gauges.push(gauges);
        run.events.extend(events);
    }
    run.requests.sort_by_key(|r| (r.start, r.service));
    run
}

/// A cache entry: the versions of a key's value, as (fill lands, expires),
/// sorted by fill. A reader sees the latest version already landed.
#[derive(Debug, Clone, Default)]
struct Entry(Vec<(u64, u64)>);

/// What a lookup at some instant finds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Look {
    /// A value within its TTL, expiring then.
    Fresh(u64),
    /// A value past its TTL but within the stale-while-revalidate window.
    Stale,
    Miss,
}

impl Entry {
    fn look(&self, t: u64, stale_window: u64) -> Look {
        let visible = self.0.iter().rev().find(|v| v.0 <= t).map(|v| v.1);
        match visible {
            Some(e) if t < e => Look::Fresh(e),
            Some(e) if stale_window > 0 && t < e + stale_window => Look::Stale,
            _ => Look::Miss,
        }
    }
}

/// The cache: key → entry.
#[derive(Debug, Default)]
struct Cache(HashMap<usize, Entry>);

impl Cache {
    /// A value present from the start, expiring at `expires`.
    fn preload(&mut self, key: usize, expires: u64) {
        self.0.insert(key, Entry(vec![(0, expires)]));
    }

    /// A fill decided at `now`, landing at `fill`, valid for `ttl`; readers
    /// see the older versions until it lands.
    fn fill(&mut self, key: usize, now: u64, fill: u64, ttl: u64) {
        let versions = &mut self.0.entry(key).or_default().0;
        // Versions landed before the newest landed one are never read again.
        if let Some(last_landed) = versions.iter().rposition(|v| v.0 <= now) {
            versions.drain(..last_landed);
        }
        let at = versions.partition_point(|v| v.0 <= fill);
        versions.insert(at, (fill, fill + ttl));
    }

    fn look(&self, key: usize, t: u64, stale_window: u64) -> Look {
        self.0
            .get(&key)
            .map_or(Look::Miss, |e| e.look(t, stale_window))
    }
}

/// How a recompute ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Recompute {
    /// Queried and (unless the cache is down) filled; the fill lands then.
    Done(u64),
    /// No connection within the pool's acquire timeout.
    PoolTimeout(u64),
    /// The recompute limiter was full: failed fast.
    Shed(u64),
}

/// One service's mutable state while it is simulated.
struct Service<'a> {
    spec: &'a ServiceSpec,
    db: Db,
    cache: Cache,
    /// Keys being recomputed: key → when the fill lands.
    recomputing: HashMap<usize, u64>,
    ttl: u64,
}

impl Service<'_> {
    fn ttl_with_jitter(&self, rng: &mut Rng) -> u64 {
        if self.spec.ttl_jitter > 0.0 {
            self.ttl + (rng.f64() * self.spec.ttl_jitter * self.ttl as f64) as u64
        } else {
            self.ttl
        }
    }

    /// Expected recompute time of `key` at an idle database, in ns.
    fn recompute_cost(&self, key: usize) -> f64 {
        self.work(key) * self.spec.db_ms * MS as f64
    }

    fn work(&self, key: usize) -> f64 {
        self.spec.recompute_work
            * if key == 0 {
                self.spec.hot_key_work
            } else {
                1.0
            }
    }

    /// Recompute `key` from `tt`: query the database and fill the cache,
    /// recording the operations.
    fn recompute(
        &mut self,
        key: usize,
        tt: u64,
        cache_down: bool,
        rng: &mut Rng,
        g: &mut Gauges,
        ops: &mut Vec<Op>,
    ) -> Recompute {
        if self.spec.recompute_limit > 0 && self.db.in_flight(tt) >= self.spec.recompute_limit {
            return Recompute::Shed(tt + MS);
        }
        let acquire = (self.spec.pool_timeout_s * S as f64) as u64;
        let outcome = match self.db.try_query(tt, self.work(key), acquire, rng) {
            Some((qs, qe)) => {
                if qs > tt {
                    g.pending += 1;
                }
                ops.push(Op::Query {
                    start: qs,
                    end: qe,
                    statement: "SELECT p.*, s.quantity FROM products p JOIN stock s ON s.product_id = p.id WHERE p.id = $1",
                });
                if cache_down {
                    Recompute::Done(qe)
                } else {
                    ops.push(Op::Set {
                        start: qe,
                        end: qe + MS / 2,
                    });
                    let ttl = self.ttl_with_jitter(rng);
                    self.cache.fill(key, tt, qe, ttl);
                    Recompute::Done(qe + MS / 2)
                }
            }
            None => {
                g.pending += 1;
                Recompute::PoolTimeout(tt + acquire)
            }
        };
        let landed = match outcome {
            Recompute::Done(t) | Recompute::PoolTimeout(t) | Recompute::Shed(t) => t,
        };
        self.recomputing.insert(key, landed);
        outcome
    }
}

fn simulate_service(
    cfg: &Settings,
    svc: usize,
    rng: &mut Rng,
) -> (Vec<Request>, Vec<Gauges>, Vec<Event>) {
    let spec = &cfg.services[svc];
    let zipf = Zipf::new(spec.keys, spec.zipf_s);
    let ttl = (spec.ttl_s * S as f64) as u64;
    let mut me = Service {
        spec,
        db: Db::new(spec.pool, spec.db_ms, spec.db_slowdown),
        cache: Cache::default(),
        recomputing: HashMap::new(),
        ttl,
    };
    // Warm at start, expiries spread over one TTL.
    for k in 0..spec.keys {
        let expires = (rng.f64() * ttl as f64) as u64 + S;
        me.cache.preload(k, expires);
    }
    if let Some(he) = spec.hot_expire_at_s {
        // The hot key was filled long ago with a long TTL: it expires then.
        me.cache.preload(0, (he * S as f64) as u64);
    }
    let stale_window = (spec.swr_s * S as f64) as u64;
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut gauges: BTreeMap<u64, Gauges> = BTreeMap::new();
    let duration = (cfg.duration_s * S as f64) as u64;
    let mut t = 0u64;
    let mut warmed = false;
    let mut deployed = false;
    let mut retries: Vec<(u64, usize, u32)> = Vec::new();
    // Circuit breaker on cache calls: recent failures, open until.
    let mut cache_failures: std::collections::VecDeque<u64> = Default::default();
    let mut breaker_open_until = 0u64;
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
                let keys = spec.sync_keys.min(spec.keys);
                out.push(warm_job(&mut me, svc, 0, t, keys, MS / 4, rng));
            }
        }
        let mut generation = 0;
        if let Some(at) = spec.deploy_at_s {
            let at = (at * S as f64) as u64;
            if t >= at {
                generation = 1;
                if !deployed {
                    deployed = true;
                    me.cache.0.clear();
                    // With warm-up the new instance flushes and re-loads the
                    // keys from a snapshot before it joins the load balancer.
                    let flush_at = if spec.warm_up { t - 30 * MS } else { t };
                    events.push(Event {
                        service: svc,
                        generation: 1,
                        at: flush_at,
                        kind: EventKind::Deploy,
                    });
                    out.push(Request {
                        service: svc,
                        generation: 1,
                        route: "startup",
                        method: "",
                        path: String::new(),
                        key: String::new(),
                        start: flush_at,
                        end: flush_at + 2 * MS,
                        status: 200,
                        resend: 0,
                        ops: vec![Op::Flush {
                            start: flush_at,
                            end: flush_at + MS,
                        }],
                        recomputed: false,
                        missed: false,
                    });
                    if spec.warm_up {
                        let keys = spec.keys;
                        out.push(warm_job(
                            &mut me,
                            svc,
                            1,
                            flush_at + MS,
                            keys,
                            MS / 100,
                            rng,
                        ));
                    }
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
            let (ops, status) = match me.db.try_query(tt, spec.slow_query_work, acquire, rng) {
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
        let mut ops = Vec::new();
        let mut tt = t + MS / 2;
        let look = if breaker_open_until > tt {
            // The breaker is open: no cache call at all.
            Look::Miss
        } else {
            let get_ms = if cache_down {
                1000.0
            } else {
                0.6 + rng.f64() * 0.6
            };
            let get_end = tt + (get_ms * MS as f64) as u64;
            ops.push(Op::Get {
                start: tt,
                end: get_end,
                failed: cache_down,
            });
            tt = get_end;
            if cache_down {
                if spec.recompute_limit > 0 {
                    cache_failures.push_back(tt);
                    while cache_failures.front().is_some_and(|f| *f + S < tt) {
                        cache_failures.pop_front();
                    }
                    if cache_failures.len() >= 5 {
                        breaker_open_until = tt + 5 * S;
                        cache_failures.clear();
                    }
                }
                Look::Miss
            } else {
                me.cache.look(key, tt, stale_window)
            }
        };
        let g = gauges.entry(t / S).or_insert_with(|| Gauges {
            t: t / S * S,
            pool_max: spec.pool,
            ..Default::default()
        });
        let mut recomputed = false;
        let mut failed = false;
        let in_flight = me.recomputing.get(&key).copied().filter(|f| *f > tt);
        let cache_reachable = !cache_down && breaker_open_until <= tt;
        match look {
            Look::Fresh(expires) => {
                g.hits += 1;
                // XFetch: refresh early with a probability that grows as
                // the expiry nears, scaled by the recompute cost.
                if spec.xfetch_beta > 0.0 {
                    let gap = me.recompute_cost(key) * spec.xfetch_beta * -(1.0 - rng.f64()).ln();
                    if tt as f64 + gap >= expires as f64 {
                        match me.recompute(key, tt, false, rng, g, &mut ops) {
                            Recompute::Done(end) => {
                                tt = end;
                                recomputed = true;
                            }
                            Recompute::PoolTimeout(end) | Recompute::Shed(end) => tt = end,
                        }
                    }
                }
            }
            Look::Stale => {
                g.hits += 1;
                // Served stale; one background refresh per key (its spans
                // belong to this request but it does not wait for them).
                if in_flight.is_none() {
                    let mut background = Vec::new();
                    if let Recompute::Done(_) =
                        me.recompute(key, tt, false, rng, g, &mut background)
                    {
                        recomputed = true;
                    }
                    ops.extend(background);
                }
            }
            Look::Miss => {
                g.misses += 1;
                match (spec.single_flight && cache_reachable, in_flight) {
                    (true, Some(f)) => {
                        // Another request holds the lock: wait for its fill.
                        ops.push(Op::Lock {
                            start: tt,
                            end: tt + MS / 2,
                        });
                        tt = f + MS;
                        ops.push(Op::Get {
                            start: f,
                            end: tt,
                            failed: false,
                        });
                    }
                    (lock, _) => {
                        if lock {
                            ops.push(Op::Lock {
                                start: tt,
                                end: tt + MS / 2,
                            });
                            tt += MS / 2;
                        }
                        match me.recompute(key, tt, !cache_reachable, rng, g, &mut ops) {
                            Recompute::Done(end) => {
                                tt = end;
                                recomputed = true;
                            }
                            Recompute::PoolTimeout(end) => {
                                tt = end;
                                recomputed = true;
                                failed = true;
                            }
                            Recompute::Shed(end) => {
                                tt = end;
                                failed = true;
                            }
                        }
                    }
                }
            }
        }
        tt += ((2.0 + rng.f64() * 6.0) * MS as f64) as u64;
        let timeout = (spec.client_timeout_s * S as f64) as u64;
        let mut status = if failed { 503 } else { 200 };
        if spec.retries && tt - t > timeout && resend < 3 {
            status = 504;
            retries.push((t + timeout + 50 * MS, key, resend + 1));
        }
        g.pool_used = g.pool_used.max(me.db.in_use(t));
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
            missed: look == Look::Miss,
        });
    }
    (out, gauges.into_values().collect(), events)
}

/// A job that fills `keys` hottest keys one after another from `start`,
/// `step` apart (from a snapshot: no database work).
fn warm_job(
    me: &mut Service<'_>,
    svc: usize,
    generation: usize,
    start: u64,
    keys: usize,
    step: u64,
    rng: &mut Rng,
) -> Request {
    let mut ops = Vec::with_capacity(keys);
    let mut tt = start;
    for k in 0..keys {
        ops.push(Op::Set {
            start: tt,
            end: tt + step,
        });
        tt += step;
        let ttl = me.ttl_with_jitter(rng);
        me.cache.fill(k, start, tt, ttl);
    }
    Request {
        service: svc,
        generation,
        route: "/admin/cache/warm",
        method: "POST",
        path: "/admin/cache/warm".into(),
        key: "warm-job".into(),
        start,
        end: tt + MS,
        status: 200,
        resend: 0,
        ops,
        recomputed: false,
        missed: false,
    }
}

/// Ground truth from the simulation itself: for each key, the most
/// recomputes in flight at once (query start to fill end), largest first.
pub fn herds(run: &Run) -> Vec<(String, u64)> {
    herds_of(run, None, None)
}

/// [`herds`] of one service (all when `None`), counting the recomputes whose
/// query starts within `window` (all when `None`).
pub fn herds_of(
    run: &Run,
    service: Option<usize>,
    window: Option<(u64, u64)>,
) -> Vec<(String, u64)> {
    let mut by_key: HashMap<(usize, &str), Vec<(u64, u64)>> = HashMap::new();
    for r in run
        .requests
        .iter()
        .filter(|r| r.recomputed && service.is_none_or(|s| s == r.service))
    {
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
        let inside = |s: u64| window.is_none_or(|(from, to)| s >= from && s < to);
        if let (Some(s), Some(e)) = (start, end)
            && inside(s)
        {
            by_key
                .entry((r.service, r.key.as_str()))
                .or_default()
                .push((s, e));
        }
    }
    let mut out: Vec<(String, u64)> = by_key
        .into_iter()
        .map(|((_, k), intervals)| (k.to_string(), crate::truth::peak_overlap(intervals)))
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
        let mut db = Db::new(2, 10.0, 0.0);
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

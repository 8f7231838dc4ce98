//! Analysis settings: every detection threshold is here, with its default,
//! and none is a constant buried in the stages (SPEC §4). Parsed from the
//! `[analysis]` table and `[[slo]]` array of the config file.

use serde::{Deserialize, Serialize};

/// Detection and inference thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Bucket width of every series, in seconds.
    pub bucket_seconds: f64,
    /// Trailing period of the robust baseline, in seconds.
    pub baseline_seconds: f64,
    /// `db.system` values that are caches (lower case).
    pub cache_systems: Vec<String>,
    /// A miss burst needs misses/s above median + this × MAD (scaled to σ).
    pub burst_mad_factor: f64,
    /// … and at least this many misses per second.
    pub burst_min_misses_per_second: f64,
    /// … and at least this many times the baseline median.
    pub burst_min_ratio: f64,
    /// … for at least this many consecutive buckets.
    pub burst_min_buckets: usize,
    /// One bucket this many times over the burst limit is a burst on its
    /// own, as is one whose herd reaches `hot_key_min_herd`: a herd that all
    /// misses within a fraction of a second (and then blocks its clients, so
    /// the next bucket is quiet) is not noise.
    pub burst_single_bucket_factor: f64,
    /// Pool use (used / max) at or above this is saturation.
    pub pool_saturation_ratio: f64,
    /// Database operation P95 this many times its baseline is saturation.
    pub db_p95_factor: f64,
    /// A recompute whose first database operation starts this many
    /// milliseconds after its miss waited for a connection: a request
    /// pending on the pool, seen from the traces alone.
    pub pool_wait_ms: f64,
    /// Onsets may be out of order by this many seconds and still count as led.
    pub lead_tolerance_seconds: f64,
    /// Share of database time spent recomputing missed keys for a stampede.
    pub min_recompute_share: f64,
    /// An incident ends after this many calm buckets (hysteresis).
    pub calm_buckets_to_close: usize,
    /// Episodes closer than this many buckets merge into one.
    pub merge_gap_buckets: usize,
    /// Top key share of recomputes that makes a hot-key expiry.
    pub hot_key_share: f64,
    /// Herd size on the top key that makes a hot-key expiry.
    pub hot_key_min_herd: u64,
    /// Distinct keys missing together for a synchronized expiry.
    pub sync_min_keys: usize,
    /// Previous fills of missed keys within this many seconds are "clustered".
    pub sync_fill_spread_seconds: f64,
    /// A deploy, restart or flush this many seconds before onset makes a cold cache.
    pub cold_marker_window_seconds: f64,
    /// Share of failed lookups that makes the cache unavailable.
    pub unavailable_failure_share: f64,
    /// A bucket whose 5xx share burns the SLO's error budget this many
    /// times faster than sustainable breaches the SLO, as a P95 over the
    /// threshold does (the page rate of the burn-rate rules by default):
    /// requests shed or failed fast are bad without being slow.
    pub error_burn_rate: f64,
    /// Lookups per request falling to this share of their baseline while
    /// requests go on: the service stopped asking the cache (a client
    /// circuit breaker open, a client that gave up), and what it asked the
    /// cache for comes from the database.
    pub bypass_lookup_ratio: f64,
    /// … in a service that looks up at least this many times per request
    /// at its baseline.
    pub bypass_min_lookups_per_request: f64,
    /// Minimum requests in a bucket for its latency quantiles to count.
    pub min_requests_per_bucket: u64,
    /// Exemplar trace ids kept per incident.
    pub exemplars: usize,
    /// Top keys listed per incident.
    pub top_keys: usize,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            bucket_seconds: 1.0,
            baseline_seconds: 300.0,
            cache_systems: [
                "redis",
                "valkey",
                "memcached",
                "hazelcast",
                "aerospike",
                "keydb",
                "dragonfly",
                "ignite",
                "couchbase",
                "geode",
                "coherence",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            burst_mad_factor: 6.0,
            burst_min_misses_per_second: 5.0,
            burst_min_ratio: 3.0,
            burst_min_buckets: 2,
            burst_single_bucket_factor: 3.0,
            pool_saturation_ratio: 0.9,
            db_p95_factor: 4.0,
            pool_wait_ms: 100.0,
            lead_tolerance_seconds: 5.0,
            min_recompute_share: 0.5,
            calm_buckets_to_close: 10,
            merge_gap_buckets: 5,
            hot_key_share: 0.5,
            hot_key_min_herd: 5,
            sync_min_keys: 10,
            sync_fill_spread_seconds: 10.0,
            cold_marker_window_seconds: 120.0,
            unavailable_failure_share: 0.3,
            error_burn_rate: 14.4,
            bypass_lookup_ratio: 0.2,
            bypass_min_lookups_per_request: 0.5,
            min_requests_per_bucket: 3,
            exemplars: 5,
            top_keys: 5,
        }
    }
}

impl AnalysisConfig {
    pub fn bucket_nanos(&self) -> u64 {
        (self.bucket_seconds * 1e9).round().max(1.0) as u64
    }

    pub fn pool_wait_nanos(&self) -> u64 {
        (self.pool_wait_ms * 1e6).round().max(0.0) as u64
    }

    pub fn is_cache_system(&self, system: &str) -> bool {
        self.cache_systems.iter().any(|c| c == system)
    }

    /// Reject settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("analysis.bucket_seconds", self.bucket_seconds),
            ("analysis.baseline_seconds", self.baseline_seconds),
            ("analysis.burst_mad_factor", self.burst_mad_factor),
            ("analysis.db_p95_factor", self.db_p95_factor),
            ("analysis.pool_wait_ms", self.pool_wait_ms),
            ("analysis.error_burn_rate", self.error_burn_rate),
            (
                "analysis.bypass_min_lookups_per_request",
                self.bypass_min_lookups_per_request,
            ),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{key} must be a positive number, got {v}"));
            }
        }
        let shares = [
            ("analysis.pool_saturation_ratio", self.pool_saturation_ratio),
            ("analysis.min_recompute_share", self.min_recompute_share),
            ("analysis.hot_key_share", self.hot_key_share),
            (
                "analysis.unavailable_failure_share",
                self.unavailable_failure_share,
            ),
            ("analysis.bypass_lookup_ratio", self.bypass_lookup_ratio),
        ];
        for (key, v) in shares {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{key} must be between 0 and 1, got {v}"));
            }
        }
        if !(self.burst_single_bucket_factor.is_finite() && self.burst_single_bucket_factor >= 1.0)
        {
            return Err(format!(
                "analysis.burst_single_bucket_factor must be at least 1, got {}",
                self.burst_single_bucket_factor
            ));
        }
        if self.burst_min_buckets == 0 {
            return Err("analysis.burst_min_buckets must be at least 1".into());
        }
        Ok(())
    }
}

/// One service-level objective: a latency threshold and a target share of
/// good requests (5xx always count as bad) over a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// Name shown on the dashboard; defaults to a description.
    #[serde(default)]
    pub name: Option<String>,
    /// Service it applies to; every service when absent.
    #[serde(default)]
    pub service: Option<String>,
    /// Route it applies to; every route when absent.
    #[serde(default)]
    pub route: Option<String>,
    /// Requests slower than this are bad.
    #[serde(default = "default_threshold_ms")]
    pub threshold_ms: f64,
    /// Target share of good requests, e.g. 0.99.
    #[serde(default = "default_target")]
    pub target: f64,
    /// The SLO period.
    #[serde(default = "default_period_days")]
    pub period_days: f64,
}

fn default_threshold_ms() -> f64 {
    500.0
}
fn default_target() -> f64 {
    0.99
}
fn default_period_days() -> f64 {
    30.0
}

impl Default for SloConfig {
    fn default() -> Self {
        Self {
            name: None,
            service: None,
            route: None,
            threshold_ms: default_threshold_ms(),
            target: default_target(),
            period_days: default_period_days(),
        }
    }
}

impl SloConfig {
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}{}: {:.2}% under {} ms",
                self.service.as_deref().unwrap_or("all services"),
                self.route
                    .as_deref()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default(),
                self.target * 100.0,
                self.threshold_ms
            )
        })
    }

    pub fn validate(&self, index: usize) -> Result<(), String> {
        if !(self.target > 0.0 && self.target < 1.0) {
            return Err(format!(
                "slo[{index}].target must be strictly between 0 and 1, got {}",
                self.target
            ));
        }
        if !(self.threshold_ms.is_finite() && self.threshold_ms > 0.0) {
            return Err(format!(
                "slo[{index}].threshold_ms must be positive, got {}",
                self.threshold_ms
            ));
        }
        if !(self.period_days.is_finite() && self.period_days > 0.0) {
            return Err(format!(
                "slo[{index}].period_days must be positive, got {}",
                self.period_days
            ));
        }
        Ok(())
    }

    /// The most specific SLO for a service (route-less ones only).
    pub fn for_service<'a>(slos: &'a [SloConfig], service: &str) -> Option<&'a SloConfig> {
        slos.iter()
            .filter(|s| s.route.is_none())
            .find(|s| s.service.as_deref() == Some(service))
            .or_else(|| {
                slos.iter()
                    .find(|s| s.service.is_none() && s.route.is_none())
            })
    }
}

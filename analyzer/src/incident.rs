//! Incidents and reports as they are shown and serialised (SPEC §4.3). Plain
//! data: the dashboard renders these and never sees a DataFrame.

use serde::{Deserialize, Serialize};

use crate::slo::{Severity, WindowBurn};

/// Version of the JSON report schema (README, "Report schema").
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "synchronized-expiry")]
    SynchronizedExpiry,
    #[serde(rename = "hot-key-expiry")]
    HotKeyExpiry,
    #[serde(rename = "cold-cache")]
    ColdCache,
    #[serde(rename = "cache-unavailable")]
    CacheUnavailable,
    #[serde(rename = "db-saturation")]
    DbSaturation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SynchronizedExpiry => "synchronized-expiry",
            Self::HotKeyExpiry => "hot-key-expiry",
            Self::ColdCache => "cold-cache",
            Self::CacheUnavailable => "cache-unavailable",
            Self::DbSaturation => "db-saturation",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::SynchronizedExpiry,
            Self::HotKeyExpiry,
            Self::ColdCache,
            Self::CacheUnavailable,
            Self::DbSaturation,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    pub fn is_stampede(self) -> bool {
        self != Self::DbSaturation
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyHerd {
    pub key: String,
    pub group: String,
    pub recomputes: u64,
    /// Most recomputes of this key in flight at one instant.
    pub herd: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub miss_rate_baseline_per_s: f64,
    pub miss_rate_peak_per_s: f64,
    pub miss_ratio_baseline: f64,
    pub miss_ratio_peak: f64,
    pub lookups: u64,
    pub misses: u64,
    pub failed_lookups: u64,
    pub recomputes: u64,
    pub distinct_keys_recomputed: u64,
    /// recomputes / distinct keys recomputed.
    pub duplicate_ratio: f64,
    pub herd_max: u64,
    pub top_keys: Vec<KeyHerd>,
    pub pool_use_peak: Option<f64>,
    pub pending_peak: Option<f64>,
    pub db_inflight_peak: f64,
    pub db_p95_before_ms: f64,
    pub db_p95_peak_ms: f64,
    /// Share of database time in the window spent recomputing missed keys.
    pub recompute_share: Option<f64>,
    pub p95_before_ms: f64,
    pub p95_peak_ms: f64,
    pub requests: u64,
    pub bad_requests: u64,
    pub burn_rates: Vec<WindowBurn>,
    /// Share of the SLO period's error budget this incident consumed.
    pub budget_consumed: f64,
    pub slo: String,
    pub onsets: Onsets,
    /// Deploy, restart, flush or new cache node before the onset.
    pub marker: Option<String>,
    /// Spread, in seconds, of the largest cluster of previous fills of the
    /// missed keys (fills within `sync_fill_spread_seconds` of each other).
    pub fill_spread_seconds: Option<f64>,
    /// Share of the missed keys whose previous fill is in that cluster.
    pub fill_cluster_share: Option<f64>,
    pub retries: u64,
    /// What the input did not show (reduced analysis).
    pub gaps: Vec<String>,
    /// Lookups per request at the baseline and over the buckets where the
    /// service stopped asking the cache (both absent when it did not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookups_per_request_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookups_per_request_during: Option<f64>,
}

impl Evidence {
    /// The service stopped asking its cache (a bypass): `recompute_share`
    /// is then the share of requests that fell through without a lookup.
    pub fn cache_bypassed(&self) -> bool {
        self.lookups_per_request_during.is_some()
    }

    /// What `recompute_share` measures, as a phrase: the recomputes of
    /// missed keys, or, when the cache was bypassed, the requests that fell
    /// through to the database without a lookup.
    pub fn share_of_what(&self) -> &'static str {
        if self.cache_bypassed() {
            "requests falling through past the cache"
        } else {
            "recomputing missed keys"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Onsets {
    pub miss_burst_unix_nano: Option<u64>,
    pub db_saturation_unix_nano: Option<u64>,
    pub latency_spike_unix_nano: Option<u64>,
    /// When the service stopped asking its cache (absent when it did not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bypass_unix_nano: Option<u64>,
}

/// One bucket of an incident's timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub t_unix_nano: u64,
    pub misses_per_s: f64,
    pub miss_ratio: f64,
    pub herd: f64,
    pub recomputes_in_flight: f64,
    pub db_in_flight: f64,
    pub pool_use: Option<f64>,
    pub p95_ms: f64,
    pub requests_per_s: f64,
    /// Burn rate of this bucket alone.
    pub burn_rate: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Exemplars {
    /// Slowest requests in the window.
    pub worst_requests: Vec<Exemplar>,
    /// Requests recomputing the top key at its herd peak.
    pub largest_herd: Vec<Exemplar>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exemplar {
    pub trace_id: String,
    pub duration_ms: f64,
    pub route: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mitigation {
    pub id: String,
    pub title: String,
    /// The evidence that makes it fit.
    pub because: String,
    /// What to change, in words any developer can apply.
    pub change: String,
    /// Estimated effect from replaying the incident's recorded lookups.
    pub effect: String,
    pub before: f64,
    pub after: f64,
    pub metric: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub service: String,
    pub kind: Kind,
    pub severity: Severity,
    pub confidence: f64,
    /// The cause in one sentence.
    pub cause: String,
    pub onset_unix_nano: u64,
    pub peak_unix_nano: u64,
    pub end_unix_nano: Option<u64>,
    pub evidence: Evidence,
    pub timeline: Vec<TimelinePoint>,
    pub exemplars: Exemplars,
    pub mitigations: Vec<Mitigation>,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.end_unix_nano.is_none()
    }

    pub fn duration_seconds(&self, now_unix_nano: u64) -> f64 {
        let end = self.end_unix_nano.unwrap_or(now_unix_nano);
        end.saturating_sub(self.onset_unix_nano) as f64 / 1e9
    }
}

/// A batch report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub incidents: Vec<Incident>,
    pub services: Vec<ServiceSummary>,
    pub notes: Vec<String>,
    pub input: InputSummary,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputSummary {
    pub spans: u64,
    pub traces: u64,
    pub metric_points: u64,
    pub log_markers: u64,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub bucket_seconds: f64,
}

/// Current state of one service (last bucket with data) and its sparklines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub service: String,
    pub miss_ratio: f64,
    pub pool_use: Option<f64>,
    pub p95_ms: f64,
    pub burn_rate: f64,
    pub requests_per_s: f64,
    pub slo: String,
    pub slo_target: f64,
    pub slo_threshold_ms: f64,
    pub burn_rates: Vec<WindowBurn>,
    /// Error budget left over the capture, extrapolated to the period (0–1).
    pub budget_remaining: f64,
    pub spark_miss_ratio: Vec<f64>,
    pub spark_pool_use: Vec<f64>,
    pub spark_p95_ms: Vec<f64>,
    pub spark_burn: Vec<f64>,
    pub gaps: Vec<String>,
}

impl Report {
    pub fn worst_severity(&self) -> Option<Severity> {
        self.incidents.iter().map(|i| i.severity).max()
    }
}

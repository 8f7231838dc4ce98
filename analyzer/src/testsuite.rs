//! Fixture builders shared by tests and benches (feature `testsuite`).

use crate::incident::{
    Evidence, Exemplar, Exemplars, Incident, KeyHerd, Kind, Mitigation, Onsets, ServiceSummary,
    TimelinePoint,
};
use crate::slo::{Severity, WindowBurn};

/// An incident with every section filled; `label` is put in every string
/// a user might control (service, key, route), to test escaping.
pub fn incident(id: &str, label: &str, kind: Kind, onset_s: u64, open: bool) -> Incident {
    let onset = onset_s * 1_000_000_000;
    Incident {
        id: id.to_string(),
        service: label.to_string(),
        kind,
        severity: Severity::Page,
        confidence: 0.9,
        cause: format!("Cache stampede in {label}: keys expired together."),
        onset_unix_nano: onset,
        peak_unix_nano: onset + 5_000_000_000,
        end_unix_nano: (!open).then_some(onset + 30_000_000_000),
        evidence: Evidence {
            miss_rate_baseline_per_s: 3.0,
            miss_rate_peak_per_s: 250.0,
            miss_ratio_baseline: 0.05,
            miss_ratio_peak: 0.8,
            recomputes: 4812,
            distinct_keys_recomputed: 37,
            duplicate_ratio: 130.0,
            herd_max: 96,
            top_keys: vec![KeyHerd {
                key: label.to_string(),
                group: "product:{n}".into(),
                recomputes: 812,
                herd: 96,
            }],
            pool_use_peak: Some(1.0),
            recompute_share: Some(0.82),
            p95_before_ms: 40.0,
            p95_peak_ms: 31_000.0,
            burn_rates: vec![WindowBurn {
                window: "1h".into(),
                seconds: 3600.0,
                burn_rate: 20.0,
            }],
            onsets: Onsets {
                miss_burst_unix_nano: Some(onset),
                db_saturation_unix_nano: Some(onset + 1_000_000_000),
                latency_spike_unix_nano: Some(onset + 2_000_000_000),
                cache_bypass_unix_nano: None,
            },
            ..Evidence::default()
        },
        timeline: (0..60)
            .map(|i| TimelinePoint {
                t_unix_nano: onset - 10_000_000_000 + i * 1_000_000_000,
                misses_per_s: if (10..30).contains(&i) { 250.0 } else { 3.0 },
                herd: if (10..30).contains(&i) { 96.0 } else { 1.0 },
                pool_use: Some(if (11..30).contains(&i) { 1.0 } else { 0.2 }),
                p95_ms: if (12..30).contains(&i) {
                    31_000.0
                } else {
                    40.0
                },
                burn_rate: if (12..30).contains(&i) { 90.0 } else { 0.0 },
                ..TimelinePoint::default()
            })
            .collect(),
        exemplars: Exemplars {
            worst_requests: vec![Exemplar {
                trace_id: "5b8efff798038103d269b633813fc60c".into(),
                duration_ms: 31_000.0,
                route: label.to_string(),
            }],
            largest_herd: vec![],
        },
        mitigations: vec![Mitigation {
            id: "single-flight".into(),
            title: "Single-flight / per-key lock around recompute".into(),
            because: format!("herd of 96 on {label}"),
            change: "Take a per-key lock.".into(),
            effect: "single-flight per key: 4,812 → 37 recomputes".into(),
            before: 4812.0,
            after: 37.0,
            metric: "recomputes".into(),
        }],
    }
}

/// A service summary with sparklines.
pub fn service(name: &str) -> ServiceSummary {
    ServiceSummary {
        service: name.to_string(),
        miss_ratio: 0.05,
        pool_use: Some(0.3),
        p95_ms: 42.0,
        burn_rate: 0.5,
        requests_per_s: 200.0,
        slo: "all services: 99.00% under 500 ms".into(),
        slo_target: 0.99,
        slo_threshold_ms: 500.0,
        burn_rates: vec![WindowBurn {
            window: "5m".into(),
            seconds: 300.0,
            burn_rate: 0.5,
        }],
        budget_remaining: 0.97,
        spark_miss_ratio: vec![0.05, 0.06, 0.8, 0.05],
        spark_pool_use: vec![0.2, 0.3, 1.0, 0.2],
        spark_p95_ms: vec![40.0, 41.0, 31_000.0, 40.0],
        spark_burn: vec![0.0, 0.0, 90.0, 0.0],
        gaps: vec![],
    }
}

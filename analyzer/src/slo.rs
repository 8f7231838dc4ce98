//! SLO burn rates and alert severity (SPEC §4.2): burn rate = bad fraction /
//! (1 − target); page when both 1 h and 5 m burn ≥ 14.4 or both 6 h and 30 m
//! ≥ 6; ticket when both 3 d and 6 h ≥ 1. Windows shrink for captures shorter
//! than a pair's long window, and say so.

use serde::{Deserialize, Serialize};

/// A multi-window rule.
#[derive(Debug, Clone, Copy)]
pub struct BurnRule {
    pub long_seconds: f64,
    pub short_seconds: f64,
    pub threshold: f64,
    pub severity: Severity,
}

pub const RULES: [BurnRule; 3] = [
    BurnRule {
        long_seconds: 3600.0,
        short_seconds: 300.0,
        threshold: 14.4,
        severity: Severity::Page,
    },
    BurnRule {
        long_seconds: 6.0 * 3600.0,
        short_seconds: 1800.0,
        threshold: 6.0,
        severity: Severity::Page,
    },
    BurnRule {
        long_seconds: 3.0 * 86400.0,
        short_seconds: 6.0 * 3600.0,
        threshold: 1.0,
        severity: Severity::Ticket,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Ticket,
    Page,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Ticket => "ticket",
            Self::Page => "page",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Some(Self::Info),
            "ticket" => Some(Self::Ticket),
            "page" => Some(Self::Page),
            _ => None,
        }
    }
}

/// Burn rate of `bad` out of `total` against `target`.
pub fn burn_rate(bad: f64, total: f64, target: f64) -> f64 {
    if total <= 0.0 {
        return 0.0;
    }
    (bad / total) / (1.0 - target)
}

/// A burn rate measured over one (possibly scaled) window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowBurn {
    /// The nominal window, e.g. `1h`.
    pub window: String,
    /// The window actually used, in seconds (smaller for short captures).
    pub seconds: f64,
    pub burn_rate: f64,
}

/// Prefix sums of bad and total counts per bucket, for O(1) window sums.
#[derive(Debug, Clone)]
pub struct BurnSeries {
    bad: Vec<f64>,
    total: Vec<f64>,
    bucket_seconds: f64,
    target: f64,
}

pub fn window_name(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

impl BurnSeries {
    pub fn new(bad: &[f64], total: &[f64], bucket_seconds: f64, target: f64) -> Self {
        let mut pb = Vec::with_capacity(bad.len() + 1);
        let mut pt = Vec::with_capacity(total.len() + 1);
        pb.push(0.0);
        pt.push(0.0);
        for (b, t) in bad.iter().zip(total) {
            pb.push(pb.last().copied().unwrap_or(0.0) + b);
            pt.push(pt.last().copied().unwrap_or(0.0) + t);
        }
        Self {
            bad: pb,
            total: pt,
            bucket_seconds,
            target,
        }
    }

    pub fn len(&self) -> usize {
        self.bad.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capture_seconds(&self) -> f64 {
        self.len() as f64 * self.bucket_seconds
    }

    /// Burn over the window of `seconds` ending with bucket `end` (inclusive).
    pub fn burn(&self, end: usize, seconds: f64) -> f64 {
        let end = (end + 1).min(self.len());
        let n = ((seconds / self.bucket_seconds).round() as usize).max(1);
        let start = end.saturating_sub(n);
        burn_rate(
            self.bad[end] - self.bad[start],
            self.total[end] - self.total[start],
            self.target,
        )
    }

    /// The scale applied to a rule's windows for this capture (1 = none).
    pub fn scale(&self, rule: &BurnRule) -> f64 {
        (self.capture_seconds() / rule.long_seconds).min(1.0)
    }

    /// Severity at bucket `end` and the burns that decided it.
    pub fn severity_at(&self, end: usize) -> (Severity, Vec<WindowBurn>) {
        let mut severity = Severity::Info;
        let mut burns = Vec::new();
        for rule in RULES {
            let scale = self.scale(&rule);
            let long = (rule.long_seconds * scale).max(self.bucket_seconds);
            let short = (rule.short_seconds * scale).max(self.bucket_seconds);
            let bl = self.burn(end, long);
            let bs = self.burn(end, short);
            if bl >= rule.threshold && bs >= rule.threshold && rule.severity > severity {
                severity = rule.severity;
            }
            for (nominal, used, b) in [
                (rule.long_seconds, long, bl),
                (rule.short_seconds, short, bs),
            ] {
                let name = window_name(nominal);
                if !burns.iter().any(|w: &WindowBurn| w.window == name) {
                    burns.push(WindowBurn {
                        window: name,
                        seconds: used,
                        burn_rate: b,
                    });
                }
            }
        }
        (severity, burns)
    }

    /// The note a report carries when windows were scaled.
    pub fn scaling_note(&self) -> Option<String> {
        scaling_note(self.capture_seconds(), self.bucket_seconds)
    }
}

/// What a report says when a capture is shorter than the 1 h window.
pub fn scaling_note(capture_seconds: f64, bucket_seconds: f64) -> Option<String> {
    let scale = (capture_seconds / RULES[0].long_seconds).min(1.0);
    (scale < 1.0).then(|| {
        format!(
            "capture covers {capture_seconds:.0} s, shorter than the 1h alerting window: burn-rate windows were scaled down to fit it (e.g. 1h → {:.0} s, 5m → {:.0} s)",
            3600.0 * scale,
            (300.0 * scale).max(bucket_seconds)
        )
    })
}

/// Share of the period's error budget that `bad` requests consume, given
/// the observed request rate extrapolated over the period.
pub fn budget_consumed(bad: f64, requests_per_second: f64, target: f64, period_days: f64) -> f64 {
    let allowed = (1.0 - target) * requests_per_second * period_days * 86400.0;
    if allowed <= 0.0 { 0.0 } else { bad / allowed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_rate_is_bad_fraction_over_allowance() {
        assert!((burn_rate(1.0, 100.0, 0.99) - 1.0).abs() < 1e-9);
        assert!((burn_rate(50.0, 100.0, 0.99) - 50.0).abs() < 1e-9);
        assert_eq!(burn_rate(5.0, 0.0, 0.99), 0.0);
    }

    #[test]
    fn a_total_outage_pages_and_a_slow_leak_tickets() {
        // 4 days of 1 s buckets would be large; use 60 s buckets.
        let n = 4 * 1440;
        let total = vec![60.0; n];
        let mut bad = vec![0.0; n];
        for b in bad.iter_mut().skip(n - 10) {
            *b = 60.0; // last 10 minutes all bad
        }
        let s = BurnSeries::new(&bad, &total, 60.0, 0.99);
        assert_eq!(s.severity_at(n - 1).0, Severity::Page);
        // 2 % bad throughout: burn 2 in every window → ticket only.
        let leak: Vec<f64> = vec![1.2; n];
        let s = BurnSeries::new(&leak, &total, 60.0, 0.99);
        let (sev, burns) = s.severity_at(n - 1);
        assert_eq!(sev, Severity::Ticket);
        assert!(burns.iter().all(|w| (w.burn_rate - 2.0).abs() < 1e-9));
        assert!(s.scaling_note().is_none());
    }

    #[test]
    fn short_captures_scale_windows_and_say_so() {
        let total = vec![10.0; 600];
        let bad = vec![10.0; 600];
        let s = BurnSeries::new(&bad, &total, 1.0, 0.99);
        let (sev, burns) = s.severity_at(599);
        assert_eq!(sev, Severity::Page);
        let one_hour = burns.iter().find(|w| w.window == "1h").unwrap();
        assert_eq!(one_hour.seconds, 600.0);
        assert!(s.scaling_note().unwrap().contains("scaled"));
    }

    #[test]
    fn budget_share() {
        // 10 req/s for 30 d at 99 % allows 259,200 bad requests.
        let share = budget_consumed(2592.0, 10.0, 0.99, 30.0);
        assert!((share - 0.01).abs() < 1e-12);
    }
}

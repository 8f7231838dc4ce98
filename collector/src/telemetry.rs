//! Self-telemetry: counters and histograms rendered as Prometheus text
//! exposition (format 0.0.4) for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::wal::Signal;

/// Where a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc = 0,
    Http = 1,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

const SIGNALS: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];
const TRANSPORTS: [Transport; 2] = [Transport::Grpc, Transport::Http];

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Seconds-valued histogram with fixed bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

const DURATION_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            bounds: DURATION_BOUNDS,
            counts: DURATION_BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// Every self-metric of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    accepted: [[Counter; 2]; 3],
    rejected: [[Counter; 2]; 3],
    refused: [Counter; 2],
    bytes_in: [Counter; 2],
    request_duration: [Histogram; 2],
    pub duplicates: Counter,
    pub dropped_attributes: Counter,
    pub other_logs: Counter,
    pub fsync_duration: Histogram,
    pub store_bytes: Gauge,
    pub store_segments: Gauge,
    pub hot_bytes: Gauge,
    pub segments_deleted: Counter,
    pub interned_overflow: Gauge,
    pub analysis_ticks: Counter,
    pub analysis_rebuilt_buckets: Counter,
    pub analysis_duration: Histogram,
    pub open_incidents: Gauge,
}

impl Metrics {
    pub fn accepted(&self, signal: Signal, transport: Transport, n: u64) {
        self.accepted[signal as usize - 1][transport as usize].add(n);
    }
    pub fn rejected(&self, signal: Signal, transport: Transport, n: u64) {
        self.rejected[signal as usize - 1][transport as usize].add(n);
    }
    pub fn refused(&self, transport: Transport) {
        self.refused[transport as usize].add(1);
    }
    pub fn bytes_in(&self, transport: Transport, n: u64) {
        self.bytes_in[transport as usize].add(n);
    }
    pub fn request_duration(&self, transport: Transport, d: Duration) {
        self.request_duration[transport as usize].observe(d);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        let item_counter = |out: &mut String, name: &str, help: &str, c: &[[Counter; 2]; 3]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for s in SIGNALS {
                for t in TRANSPORTS {
                    let _ = writeln!(
                        out,
                        "{name}{{signal=\"{}\",transport=\"{}\"}} {}",
                        s.as_str(),
                        t.as_str(),
                        c[s as usize - 1][t as usize].get()
                    );
                }
            }
        };
        item_counter(
            &mut out,
            "herdwatch_items_accepted_total",
            "Spans, data points and log records accepted and made durable.",
            &self.accepted,
        );
        item_counter(
            &mut out,
            "herdwatch_items_rejected_total",
            "Items refused inside otherwise good requests (reported as partial success).",
            &self.rejected,
        );
        let per_transport = |out: &mut String, name: &str, help: &str, c: &[Counter; 2]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for t in TRANSPORTS {
                let _ = writeln!(
                    out,
                    "{name}{{transport=\"{}\"}} {}",
                    t.as_str(),
                    c[t as usize].get()
                );
            }
        };
        per_transport(
            &mut out,
            "herdwatch_backpressure_refusals_total",
            "Requests refused with a retryable status because a memory or queue bound was reached.",
            &self.refused,
        );
        per_transport(
            &mut out,
            "herdwatch_received_bytes_total",
            "Request body bytes received, before decompression.",
            &self.bytes_in,
        );
        let _ = writeln!(
            out,
            "# HELP herdwatch_request_duration_seconds Time to handle one export request, durable write included."
        );
        let _ = writeln!(out, "# TYPE herdwatch_request_duration_seconds histogram");
        for t in TRANSPORTS {
            self.request_duration[t as usize].render(
                &mut out,
                "herdwatch_request_duration_seconds",
                &format!("transport=\"{}\"", t.as_str()),
            );
        }
        let simple = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        };
        simple(
            &mut out,
            "herdwatch_duplicate_spans_total",
            "counter",
            "Spans dropped as duplicates of a stored (trace id, span id).",
            self.duplicates.get(),
        );
        simple(
            &mut out,
            "herdwatch_dropped_attributes_total",
            "counter",
            "Attributes received but not used by the analysis.",
            self.dropped_attributes.get(),
        );
        simple(
            &mut out,
            "herdwatch_unmarked_log_records_total",
            "counter",
            "Log records counted but not kept (not a deploy, restart or flush marker).",
            self.other_logs.get(),
        );
        simple(
            &mut out,
            "herdwatch_store_bytes",
            "gauge",
            "Bytes held in store segments on disk.",
            self.store_bytes.get(),
        );
        simple(
            &mut out,
            "herdwatch_store_segments",
            "gauge",
            "Store segments on disk.",
            self.store_segments.get(),
        );
        simple(
            &mut out,
            "herdwatch_store_hot_bytes",
            "gauge",
            "Approximate bytes of decoded rows held in memory.",
            self.hot_bytes.get(),
        );
        simple(
            &mut out,
            "herdwatch_store_segments_deleted_total",
            "counter",
            "Segments removed by retention.",
            self.segments_deleted.get(),
        );
        simple(
            &mut out,
            "herdwatch_interner_overflow",
            "gauge",
            "Distinct strings not interned because the table was full (folded cardinality).",
            self.interned_overflow.get(),
        );
        simple(
            &mut out,
            "herdwatch_analysis_ticks_total",
            "counter",
            "Live analysis passes run.",
            self.analysis_ticks.get(),
        );
        simple(
            &mut out,
            "herdwatch_analysis_rebuilt_buckets_total",
            "counter",
            "Service buckets the live analysis rebuilt from new facts.",
            self.analysis_rebuilt_buckets.get(),
        );
        simple(
            &mut out,
            "herdwatch_open_incidents",
            "gauge",
            "Incidents currently open.",
            self.open_incidents.get(),
        );
        let _ = writeln!(
            out,
            "# HELP herdwatch_fsync_duration_seconds Time of one group commit fsync."
        );
        let _ = writeln!(out, "# TYPE herdwatch_fsync_duration_seconds histogram");
        self.fsync_duration
            .render(&mut out, "herdwatch_fsync_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP herdwatch_analysis_duration_seconds Time of one live analysis pass."
        );
        let _ = writeln!(out, "# TYPE herdwatch_analysis_duration_seconds histogram");
        self.analysis_duration
            .render(&mut out, "herdwatch_analysis_duration_seconds", "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_what_was_recorded() {
        let m = Metrics::default();
        m.accepted(Signal::Traces, Transport::Http, 7);
        m.request_duration(Transport::Grpc, Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("herdwatch_items_accepted_total{signal=\"traces\",transport=\"http\"} 7")
        );
        assert!(text.contains(
            "herdwatch_request_duration_seconds_bucket{transport=\"grpc\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("herdwatch_request_duration_seconds_count{transport=\"grpc\"} 1"));
    }
}

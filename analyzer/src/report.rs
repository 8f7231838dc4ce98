//! The batch session (streamed input → report) and the text rendering of a
//! report for people.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::{AnalysisConfig, SloConfig};
use crate::detect::{self, ServiceInput};
use crate::incident::{InputSummary, Report, SCHEMA_VERSION, ServiceSummary};
use crate::model::{Batch, LogMarker, MetricPoint};
use crate::shape::TraceAssembler;
use crate::signals::{self, ServiceSeries, SignalError};
use crate::slo::{BurnSeries, budget_consumed, burn_rate};

/// Analysis settings shared by every session.
#[derive(Debug, Clone)]
pub struct Analyzer {
    pub config: Arc<AnalysisConfig>,
    pub slos: Arc<Vec<SloConfig>>,
}

impl Analyzer {
    pub fn new(config: AnalysisConfig, slos: Vec<SloConfig>) -> Self {
        let slos = if slos.is_empty() {
            vec![SloConfig::default()]
        } else {
            slos
        };
        Self {
            config: Arc::new(config),
            slos: Arc::new(slos),
        }
    }

    pub fn session(&self) -> Session {
        Session {
            analyzer: self.clone(),
            assembler: TraceAssembler::new(self.config.clone()),
            points: Vec::new(),
            markers: Vec::new(),
        }
    }

    /// Analyse rows already in memory.
    pub fn analyze(
        &self,
        spans: impl IntoIterator<Item = crate::model::SpanRow>,
        points: Vec<MetricPoint>,
        markers: Vec<LogMarker>,
    ) -> Result<Report, SignalError> {
        let mut s = self.session();
        for span in spans {
            s.assembler.push(span);
        }
        s.points = points;
        s.markers = markers;
        s.finish()
    }
}

/// One analysis over streamed input: spans are reduced to facts as their
/// traces complete, so memory follows the number of requests in flight in
/// the data, not the size of the input.
pub struct Session {
    analyzer: Analyzer,
    assembler: TraceAssembler,
    points: Vec<MetricPoint>,
    markers: Vec<LogMarker>,
}

impl Session {
    pub fn push(&mut self, batch: Batch) {
        for s in batch.spans {
            self.assembler.push(s);
        }
        self.points.extend(batch.points);
        self.markers.extend(batch.markers);
    }

    pub fn finish(self) -> Result<Report, SignalError> {
        Ok(self.signals()?.report())
    }

    /// The first half of [`Session::finish`]: the last traces reduced and
    /// the per-service frames built (signals, SLO series).
    pub fn signals(self) -> Result<Signals, SignalError> {
        let Session {
            analyzer,
            assembler,
            points,
            markers,
        } = self;
        let mut facts = assembler.finish();
        facts.markers.extend(detect::log_markers(&markers));
        let series = signals::build(&facts, &points, &analyzer.config, &analyzer.slos)?;
        Ok(Signals {
            analyzer,
            facts,
            series,
            metric_points: points.len() as u64,
            log_markers: markers.len() as u64,
        })
    }
}

/// Built frames, before detection.
pub struct Signals {
    analyzer: Analyzer,
    facts: crate::shape::Facts,
    series: Vec<ServiceSeries>,
    metric_points: u64,
    log_markers: u64,
}

impl Signals {
    /// Every service's bucket series.
    pub fn series(&self) -> &[ServiceSeries] {
        &self.series
    }

    /// The second half of [`Session::finish`]: detection, causes,
    /// mitigations and summaries.
    /// (Borrowing: a caller about to exit may skip freeing the facts.)
    pub fn report(&self) -> Report {
        report_of(
            &self.analyzer,
            &self.facts,
            &self.series,
            self.metric_points,
            self.log_markers,
        )
    }
}

/// Detection, causes, mitigations and summaries over built series and the
/// time-sorted facts they came from.
pub fn report_of(
    analyzer: &Analyzer,
    facts: &crate::shape::Facts,
    series: &[ServiceSeries],
    metric_points: u64,
    log_markers: u64,
) -> Report {
    let config = &analyzer.config;
    let mut incidents = Vec::new();
    let mut notes = Vec::new();
    let mut services = Vec::new();
    for s in series {
        incidents.extend(detect::detect(&ServiceInput {
            series: s,
            facts,
            config,
        }));
        services.push(summary(s));
    }
    incidents.sort_by(|a, b| {
        a.onset_unix_nano
            .cmp(&b.onset_unix_nano)
            .then(a.service.cmp(&b.service))
    });
    if let Some(s) = series.first() {
        let capture = s.buckets.len() as f64 * config.bucket_seconds;
        notes.extend(crate::slo::scaling_note(capture, config.bucket_seconds));
    }
    for s in series {
        for g in s.coverage.gaps() {
            notes.push(format!("{}: {g}", s.service));
        }
    }
    let (start, end) = series
        .first()
        .map(|s| (s.t0, s.time_of(s.buckets.len())))
        .unwrap_or((0, 0));
    Report {
        schema_version: SCHEMA_VERSION,
        incidents,
        services,
        notes,
        input: InputSummary {
            spans: facts.spans,
            traces: facts.traces,
            metric_points,
            log_markers,
            start_unix_nano: start,
            end_unix_nano: end,
            bucket_seconds: config.bucket_seconds,
        },
    }
}

fn downsample(v: &[f64], points: usize) -> Vec<f64> {
    if v.len() <= points {
        return v.to_vec();
    }
    let chunk = v.len().div_ceil(points);
    v.chunks(chunk)
        .map(|c| c.iter().copied().fold(0.0, f64::max))
        .collect()
}

/// Current state of a service: the last minute of buckets.
pub fn summary(s: &ServiceSeries) -> ServiceSummary {
    let n = s.buckets.len();
    let bs = s.bucket_nanos as f64 / 1e9;
    let last = &s.buckets[n.saturating_sub((60.0 / bs).ceil() as usize)..];
    let lookups: f64 = last.iter().map(|b| b.lookups).sum();
    let misses: f64 = last.iter().map(|b| b.misses).sum();
    let requests: f64 = last.iter().map(|b| b.requests).sum();
    let bad: f64 = last.iter().map(|b| b.bad).sum();
    let burn = BurnSeries::new(
        &s.buckets.iter().map(|b| b.bad).collect::<Vec<_>>(),
        &s.buckets.iter().map(|b| b.requests).collect::<Vec<_>>(),
        bs,
        s.slo.target,
    );
    let (_, burn_rates) = burn.severity_at(n.saturating_sub(1));
    let total_bad: f64 = s.buckets.iter().map(|b| b.bad).sum();
    let total_req: f64 = s.buckets.iter().map(|b| b.requests).sum();
    let rps = total_req / (n as f64 * bs).max(bs);
    ServiceSummary {
        service: s.service.to_string(),
        miss_ratio: if lookups > 0.0 { misses / lookups } else { 0.0 },
        pool_use: last.iter().rev().find_map(|b| b.pool_ratio()),
        p95_ms: last
            .iter()
            .rev()
            .find(|b| b.requests > 0.0)
            .map(|b| b.p95_ms)
            .unwrap_or(0.0),
        burn_rate: burn_rate(bad, requests, s.slo.target),
        requests_per_s: requests / (last.len() as f64 * bs).max(bs),
        slo: s.slo.display_name(),
        slo_target: s.slo.target,
        slo_threshold_ms: s.slo.threshold_ms,
        burn_rates,
        budget_remaining: 1.0 - budget_consumed(total_bad, rps, s.slo.target, s.slo.period_days),
        spark_miss_ratio: downsample(
            &s.buckets.iter().map(|b| b.miss_ratio()).collect::<Vec<_>>(),
            120,
        ),
        spark_pool_use: downsample(
            &s.buckets
                .iter()
                .map(|b| b.pool_ratio().unwrap_or(0.0))
                .collect::<Vec<_>>(),
            120,
        ),
        spark_p95_ms: downsample(&s.buckets.iter().map(|b| b.p95_ms).collect::<Vec<_>>(), 120),
        spark_burn: downsample(
            &s.buckets
                .iter()
                .map(|b| burn_rate(b.bad, b.requests, s.slo.target))
                .collect::<Vec<_>>(),
            120,
        ),
        gaps: s.coverage.gaps(),
    }
}

/// RFC 3339 UTC time of a Unix-nanosecond timestamp.
pub fn rfc3339(unix_nano: u64) -> String {
    let secs = (unix_nano / 1_000_000_000) as i64;
    let millis = (unix_nano / 1_000_000 % 1000) as u32;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The terminal report.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "herdwatch report: {} spans in {} traces, {} metric points, {} → {}",
        r.input.spans,
        r.input.traces,
        r.input.metric_points,
        rfc3339(r.input.start_unix_nano),
        rfc3339(r.input.end_unix_nano)
    );
    if r.incidents.is_empty() {
        let _ = writeln!(o, "\nNo incident found.");
    }
    for i in &r.incidents {
        let e = &i.evidence;
        let _ = writeln!(
            o,
            "\n[{}] {} in {} (confidence {:.2}) id {}",
            i.severity.as_str().to_uppercase(),
            i.kind.as_str(),
            i.service,
            i.confidence,
            i.id
        );
        let _ = writeln!(o, "  {}", i.cause);
        let _ = writeln!(
            o,
            "  onset {}  peak {}  end {}",
            rfc3339(i.onset_unix_nano),
            rfc3339(i.peak_unix_nano),
            i.end_unix_nano
                .map(rfc3339)
                .unwrap_or_else(|| "open".into())
        );
        let _ = writeln!(o, "  evidence:");
        let _ = writeln!(
            o,
            "    misses/s          {:.1} baseline → {:.1} peak (miss ratio {:.0} % → {:.0} %)",
            e.miss_rate_baseline_per_s,
            e.miss_rate_peak_per_s,
            e.miss_ratio_baseline * 100.0,
            e.miss_ratio_peak * 100.0
        );
        let _ = writeln!(
            o,
            "    recomputes        {} of {} distinct keys (duplicate ratio {:.1}), largest herd {}",
            e.recomputes, e.distinct_keys_recomputed, e.duplicate_ratio, e.herd_max
        );
        for k in &e.top_keys {
            let _ = writeln!(
                o,
                "      {:<40} {:>6} recomputes, herd {}",
                k.key, k.recomputes, k.herd
            );
        }
        if let Some(p) = e.pool_use_peak {
            let _ = writeln!(o, "    pool use peak     {:.0} %", p * 100.0);
        }
        let _ = writeln!(o, "    db in flight peak {:.0}", e.db_inflight_peak);
        if let Some(s) = e.recompute_share {
            let _ = writeln!(
                o,
                "    recompute share   {:.0} % of database time in the window was recomputing missed keys",
                s * 100.0
            );
        }
        let _ = writeln!(
            o,
            "    P95               {:.0} ms before → {:.0} ms peak",
            e.p95_before_ms, e.p95_peak_ms
        );
        let burns: Vec<String> = e
            .burn_rates
            .iter()
            .map(|w| format!("{} {:.1}", w.window, w.burn_rate))
            .collect();
        let _ = writeln!(o, "    burn rates        {}", burns.join(", "));
        let _ = writeln!(
            o,
            "    error budget      {:.2} % of the period's budget consumed ({})",
            e.budget_consumed * 100.0,
            e.slo
        );
        if let Some(m) = &e.marker {
            let _ = writeln!(o, "    marker            {m}");
        }
        for g in &e.gaps {
            let _ = writeln!(o, "    not seen          {g}");
        }
        if !i.exemplars.worst_requests.is_empty() {
            let ids: Vec<&str> = i
                .exemplars
                .worst_requests
                .iter()
                .map(|x| x.trace_id.as_str())
                .collect();
            let _ = writeln!(o, "  exemplar traces: {}", ids.join(" "));
        }
        let _ = writeln!(o, "  mitigations:");
        for (n, m) in i.mitigations.iter().enumerate() {
            let _ = writeln!(o, "    {}. {} — {}", n + 1, m.title, m.effect);
            let _ = writeln!(o, "       because {}", m.because);
            let _ = writeln!(o, "       change: {}", m.change);
        }
    }
    for n in &r.notes {
        let _ = writeln!(o, "\nnote: {n}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_000_000),
            "2023-11-14T22:13:20.123Z"
        );
    }
}

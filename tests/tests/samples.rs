//! The committed exports under `samples/data/`: they are what the generator
//! writes today, they decode with the collector's reader, and each truth
//! file agrees with a recount of the telemetry itself — spans and metrics
//! parsed here with the OTLP types, not the simulator's counters and not
//! the analyzer.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use herdwatch_analyzer::model::Interner;
use herdwatch_collector::decode::Decoder;
use herdwatch_collector::files::read_file;
use herdwatch_samples::{EPOCH_UNIX_SECONDS, Scenario, Truth};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

const S: u64 = 1_000_000_000;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/data")
}

fn committed(s: Scenario) -> (PathBuf, Truth) {
    let (export, truth) = herdwatch_samples::committed_names(s);
    let dir = data_dir();
    let text = std::fs::read_to_string(dir.join(&truth))
        .unwrap_or_else(|e| panic!("{truth}: {e} (run the regenerate command)"));
    (dir.join(export), serde_json::from_str(&text).expect(&truth))
}

fn gunzip(path: &PathBuf) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open export"))
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

#[test]
fn committed_exports_are_what_the_generator_writes() {
    // The regenerate command writes these bytes; compressed output is
    // pinned by the locked flate2, so the content is compared here.
    for s in Scenario::ALL {
        let (path, _) = committed(s);
        let capture = herdwatch_samples::Capture::new(s, herdwatch_samples::COMMITTED_SEED);
        let mut fresh = Vec::new();
        herdwatch_samples::write_capture(
            &capture,
            &Default::default(),
            herdwatch_samples::Format::JsonLines,
            &mut fresh,
        )
        .unwrap();
        assert!(
            gunzip(&path) == fresh,
            "{}: the committed export is stale; run `cargo run -p herdwatch-samples --release -- regenerate`",
            s.name()
        );
        let truth_file = data_dir().join(herdwatch_samples::committed_names(s).1);
        assert_eq!(
            serde_json::to_string_pretty(&capture.truth()).unwrap() + "\n",
            std::fs::read_to_string(truth_file).unwrap(),
            "{}: stale truth file",
            s.name()
        );
    }
}

/// One request as the telemetry shows it.
#[derive(Debug, Default)]
struct Seen {
    start: u64,
    end: u64,
    route: String,
    path: String,
    status: i64,
    children: Vec<Child>,
}

#[derive(Debug)]
struct Child {
    name: String,
    system: String,
    start: u64,
    end: u64,
    error: bool,
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str(attrs: &[KeyValue], key: &str) -> String {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        _ => String::new(),
    }
}

/// (time, bucket counts, bounds) of a cumulative histogram point.
type HistogramPoint = (u64, Vec<u64>, Vec<f64>);

/// Everything one capture's telemetry says, per service.
#[derive(Default)]
struct Telemetry {
    requests: HashMap<String, Vec<Seen>>,
    /// Database spans (start, end) per service.
    queries: HashMap<String, Vec<(u64, u64)>>,
    /// `service/metric/connection state` → (time, value).
    sums: HashMap<String, Vec<(u64, f64)>>,
    /// Cumulative histogram (time, counts) per service.
    histograms: HashMap<String, Vec<HistogramPoint>>,
    deploys: Vec<(String, u64, String)>,
    spans: u64,
}

fn read_telemetry(bytes: &[u8]) -> Telemetry {
    let mut t = Telemetry::default();
    // Spans by trace, then assembled once all are read.
    let mut by_trace: HashMap<Vec<u8>, Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>> =
        HashMap::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let head: serde_json::Value = serde_json::from_slice(line).expect("a JSON line");
        if head.get("resourceSpans").is_some() {
            let req: ExportTraceServiceRequest = serde_json::from_slice(line).unwrap();
            for rs in req.resource_spans {
                let service = attr_str(&rs.resource.unwrap().attributes, "service.name");
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        t.spans += 1;
                        by_trace
                            .entry(span.trace_id.clone())
                            .or_default()
                            .push((service.clone(), span));
                    }
                }
            }
        } else if head.get("resourceMetrics").is_some() {
            let req: ExportMetricsServiceRequest = serde_json::from_slice(line).unwrap();
            for rm in req.resource_metrics {
                let service = attr_str(&rm.resource.unwrap().attributes, "service.name");
                for m in rm.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                    match m.data {
                        Some(metric::Data::Sum(sum)) => {
                            for p in sum.data_points {
                                let key = format!(
                                    "{service}/{}/{}",
                                    m.name,
                                    attr_str(&p.attributes, "db.client.connection.state")
                                );
                                let v = match p.value {
                                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                                    Some(number_data_point::Value::AsDouble(d)) => d,
                                    None => continue,
                                };
                                t.sums.entry(key).or_default().push((p.time_unix_nano, v));
                            }
                        }
                        Some(metric::Data::Histogram(h)) => {
                            for p in h.data_points {
                                t.histograms.entry(service.clone()).or_default().push((
                                    p.time_unix_nano,
                                    p.bucket_counts,
                                    p.explicit_bounds,
                                ));
                            }
                        }
                        _ => {}
                    }
                }
            }
        } else if head.get("resourceLogs").is_some() {
            let req: ExportLogsServiceRequest = serde_json::from_slice(line).unwrap();
            for rl in req.resource_logs {
                let res = rl.resource.unwrap().attributes;
                let service = attr_str(&res, "service.name");
                for r in rl.scope_logs.into_iter().flat_map(|s| s.log_records) {
                    if attr_str(&r.attributes, "event.name") == "deploy" {
                        t.deploys.push((
                            service.clone(),
                            r.time_unix_nano,
                            attr_str(&res, "service.version"),
                        ));
                    }
                }
            }
        } else {
            panic!("a line that is no OTLP export request");
        }
    }
    for (_, spans) in by_trace {
        let server = spans.iter().find(|(_, s)| s.kind == 2);
        for (service, s) in &spans {
            if attr_str(&s.attributes, "db.system.name") == "postgresql" {
                t.queries
                    .entry(service.clone())
                    .or_default()
                    .push((s.start_time_unix_nano, s.end_time_unix_nano));
            }
        }
        let Some((service, root)) = server else {
            continue;
        };
        let children = spans
            .iter()
            .filter(|(_, s)| s.parent_span_id == root.span_id)
            .map(|(_, s)| Child {
                name: s.name.clone(),
                system: attr_str(&s.attributes, "db.system.name"),
                start: s.start_time_unix_nano,
                end: s.end_time_unix_nano,
                error: s.status.as_ref().is_some_and(|st| st.code == 2),
            })
            .collect();
        let status = match attr(&root.attributes, "http.response.status_code") {
            Some(any_value::Value::IntValue(i)) => *i,
            _ => 0,
        };
        t.requests.entry(service.clone()).or_default().push(Seen {
            start: root.start_time_unix_nano,
            end: root.end_time_unix_nano,
            route: attr_str(&root.attributes, "http.route"),
            path: attr_str(&root.attributes, "url.path"),
            status,
            children,
        });
    }
    t
}

fn nearest_rank_p95(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((0.95 * v.len() as f64).ceil() as usize).max(1) - 1]
}

fn peak_in_flight(intervals: &[(u64, u64)]) -> u64 {
    let mut ev: Vec<(u64, i64)> = intervals
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    ev.sort();
    ev.iter()
        .scan(0i64, |cur, (_, d)| {
            *cur += d;
            Some(*cur)
        })
        .max()
        .unwrap_or(0) as u64
}

/// A lookup hit: the request's only child is a successful cache GET.
fn hit(r: &Seen) -> bool {
    r.status < 500
        && r.children.len() == 1
        && r.children[0].system == "redis"
        && r.children[0].name == "GET"
        && !r.children[0].error
}

#[test]
fn truth_files_agree_with_a_recount_of_the_telemetry() {
    let epoch = EPOCH_UNIX_SECONDS * S;
    for s in Scenario::ALL {
        let (path, truth) = committed(s);
        let t = read_telemetry(&gunzip(&path));
        let name = s.name();
        let duration = truth.duration_s;
        let reference = truth.onset_s.map_or(duration / 2, |o| o as u64);
        for st in &truth.services {
            let svc = st.name.as_str();
            let requests = &t.requests[svc];
            // Per-second series from the spans.
            let n = duration as usize + 1;
            let mut durations = vec![Vec::new(); n];
            let (mut lookups, mut misses) = (vec![0u64; n], vec![0u64; n]);
            for r in requests {
                let b = (((r.start - epoch) / S) as usize).min(n - 1);
                durations[b].push((r.end - r.start) as f64 / 1e6);
                if r.route == "/product/{id}" {
                    lookups[b] += 1;
                    if !hit(r) {
                        misses[b] += 1;
                    }
                }
            }
            let p95 = |from: u64, to: u64| {
                nearest_rank_p95(
                    durations[from as usize..to as usize]
                        .iter()
                        .flatten()
                        .copied()
                        .collect(),
                )
            };
            let rate = |from: u64, to: u64| {
                let l: u64 = lookups[from as usize..to as usize].iter().sum();
                let m: u64 = misses[from as usize..to as usize].iter().sum();
                if l == 0 { 0.0 } else { m as f64 / l as f64 }
            };
            let before = reference - 60;
            assert_eq!(st.requests, requests.len() as u64, "{name}/{svc} requests");
            assert_eq!(
                st.lookups,
                lookups.iter().sum::<u64>(),
                "{name}/{svc} lookups"
            );
            assert_eq!(st.misses, misses.iter().sum::<u64>(), "{name}/{svc} misses");
            let close = |a: f64, b: f64, what: &str| {
                assert!(
                    (a - b).abs() < 1e-6,
                    "{name}/{svc} {what}: truth {a}, telemetry {b}"
                )
            };
            close(st.p95_before_ms, p95(before, reference), "P95 before");
            close(
                st.miss_rate_before,
                rate(before, reference),
                "miss rate before",
            );
            let end = if truth.service.as_deref() == Some(svc) {
                // The end rule, recounted: the last elevated second from the
                // onset with ten calm seconds after it.
                let elevated = |sec: u64| {
                    p95(sec, sec + 1) > 2.0 * p95(before, reference)
                        || rate(sec, sec + 1) > 2.0 * rate(before, reference) + 0.02
                };
                let (mut last, mut calm) = (reference, 0);
                for sec in reference..duration {
                    if elevated(sec) {
                        (last, calm) = (sec, 0);
                    } else {
                        calm += 1;
                        if calm >= 10 && last > reference {
                            break;
                        }
                    }
                }
                assert_eq!(truth.end_s, Some((last + 1) as f64), "{name} end");
                last + 1
            } else {
                duration
            };
            let peak_p95 = (reference..end).map(|x| p95(x, x + 1)).fold(0.0, f64::max);
            let peak_rate = (reference..end).map(|x| rate(x, x + 1)).fold(0.0, f64::max);
            close(st.p95_peak_ms, peak_p95, "P95 peak");
            close(st.miss_rate_peak, peak_rate, "miss rate peak");
            // Pool use: database spans in flight, within the pool the
            // metrics report.
            let queries = t.queries.get(svc).cloned().unwrap_or_default();
            assert_eq!(
                st.peak_pool_used,
                peak_in_flight(&queries),
                "{name}/{svc} pool"
            );
            let max = &t.sums[&format!("{svc}/db.client.connection.max/")];
            assert!(max.iter().all(|(_, v)| *v as u64 == st.pool_max));
            let used = &t.sums[&format!("{svc}/db.client.connection.count/used")];
            assert!(used.iter().all(|(_, v)| *v as u64 <= st.peak_pool_used));
            // Cache keyspace counters: cumulative, ending at the totals.
            let last = |m: &str| t.sums[&format!("{svc}/{m}/")].last().unwrap().1 as u64;
            assert_eq!(
                last("redis.keyspace.misses"),
                st.misses,
                "{name}/{svc} keyspace misses"
            );
            assert_eq!(
                last("redis.keyspace.hits") + last("redis.keyspace.misses"),
                st.lookups,
                "{name}/{svc} keyspace lookups"
            );
            // The latency histogram holds every request that ended within
            // the capture, and its P95 bucket for the minute before holds
            // the P95 before.
            let hist = &t.histograms[svc];
            let (_, counts, bounds) = hist.last().unwrap();
            let ended = requests
                .iter()
                .filter(|r| r.end < epoch + duration * S)
                .count() as u64;
            assert_eq!(
                counts.iter().sum::<u64>(),
                ended,
                "{name}/{svc} histogram count"
            );
            let at = |sec: u64| {
                hist.iter()
                    .find(|h| h.0 == epoch + sec * S)
                    .map(|h| h.1.clone())
                    .unwrap()
            };
            let delta: Vec<u64> = at(reference)
                .iter()
                .zip(at(before))
                .map(|(a, b)| a - b)
                .collect();
            let total: u64 = delta.iter().sum();
            let mut acc = 0;
            let bucket = delta
                .iter()
                .position(|c| {
                    acc += c;
                    acc as f64 >= 0.95 * total as f64
                })
                .unwrap();
            let lower = if bucket == 0 {
                0.0
            } else {
                bounds[bucket - 1] * 1e3
            };
            let upper = bounds.get(bucket).map_or(f64::INFINITY, |b| b * 1e3);
            assert!(
                (lower..=upper).contains(&st.p95_before_ms),
                "{name}/{svc}: P95 before {} outside the histogram's bucket {lower}..{upper} ms",
                st.p95_before_ms
            );
        }
        // Herds: per key (the request path), recomputes in flight from the
        // database query to the cache fill.
        let mut herds: Vec<(String, u64)> = Vec::new();
        if let Some(svc) = truth.service.as_deref() {
            let mut by_path: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
            for r in &t.requests[svc] {
                let query = r.children.iter().find(|c| c.system == "postgresql");
                let window = (
                    epoch + truth.onset_s.unwrap() as u64 * S,
                    epoch + truth.end_s.unwrap() as u64 * S,
                );
                if let Some(q) = query
                    && r.route == "/product/{id}"
                    && (window.0..window.1).contains(&q.start)
                {
                    let fill = r
                        .children
                        .iter()
                        .filter(|c| c.name == "SETEX")
                        .map(|c| c.start)
                        .max()
                        .unwrap_or(0);
                    by_path
                        .entry(r.path.as_str())
                        .or_default()
                        .push((q.start, q.end.max(fill)));
                }
            }
            herds = by_path
                .into_iter()
                .map(|(p, iv)| (p.to_string(), peak_in_flight(&iv)))
                .collect();
            herds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        let seen: Vec<(String, u64)> = herds
            .iter()
            .filter(|h| h.1 >= 2)
            .take(herdwatch_samples::truth::TOP_KEYS)
            .cloned()
            .collect();
        let claimed: Vec<(String, u64)> = truth
            .keys
            .iter()
            .map(|k| (k.path.clone(), k.herd))
            .collect();
        assert_eq!(claimed, seen, "{name}: top keys and herds");
        if truth.service.is_some() {
            assert_eq!(
                truth.peak_herd,
                herds.first().map_or(0, |h| h.1),
                "{name} herd"
            );
        }
        // A deploy announces itself in the logs, at the new version.
        let deploys: Vec<&(String, u64, String)> = t.deploys.iter().collect();
        if s == Scenario::ColdCache {
            assert_eq!(deploys.len(), 1, "{name}: {deploys:?}");
            let onset = epoch + truth.onset_s.unwrap() as u64 * S;
            assert!(
                (onset..onset + S).contains(&deploys[0].1),
                "{name}: deploy at the onset"
            );
            assert_eq!(deploys[0].2, "1.5.0");
        } else {
            assert!(deploys.is_empty(), "{name}: {deploys:?}");
        }
        // And the collector's reader takes the file as it is.
        let decoder = Decoder::new(Arc::new(Interner::default()));
        let mut spans = 0u64;
        let mut markers = 0usize;
        let stats = read_file(&path, &decoder, true, &mut |b| {
            spans += b.spans.len() as u64;
            markers += b.markers.len();
        })
        .expect("the collector reads the committed export");
        assert_eq!((stats.bad, stats.rejected_items), (0, 0));
        assert_eq!(spans, t.spans, "{name}: every span decoded");
        assert_eq!(markers, deploys.len(), "{name}: deploy markers kept");
    }
}

//! The live analysis is incremental: each tick rebuilds only the buckets
//! that new facts touch. Fed a committed capture second by second, as a
//! collector would receive it, it must end with the same series and the
//! same incidents as the batch analysis of the whole file, and find the
//! stampede while it is still going on.

use std::path::PathBuf;
use std::sync::Arc;

use herdwatch_analyzer::Analyzer;
use herdwatch_analyzer::incident::{Incident, Report};
use herdwatch_analyzer::live::{LiveAnalysis, LiveSettings};
use herdwatch_analyzer::model::{Batch, Interner};
use herdwatch_analyzer::report::Signals;
use herdwatch_analyzer::signals::ServiceSeries;
use herdwatch_collector::decode::Decoder;
use herdwatch_collector::files::read_file;
use herdwatch_samples::{EPOCH_UNIX_SECONDS, Scenario, Truth};

fn committed(scenario: Scenario) -> (Vec<Batch>, Truth) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/data");
    let (export, truth) = herdwatch_samples::committed_names(scenario);
    let decoder = Decoder::new(Arc::new(Interner::default()));
    let mut batches = Vec::new();
    read_file(&dir.join(export), &decoder, true, &mut |b| batches.push(b)).expect("read");
    let truth = std::fs::read_to_string(dir.join(truth)).expect("truth");
    (batches, serde_json::from_str(&truth).expect("truth json"))
}

/// The capture's rows in arrival order: each span when it ends, each point
/// and log record at its time, in one-second chunks.
fn arrivals(batches: &[Batch]) -> Vec<Batch> {
    let mut spans: Vec<_> = batches.iter().flat_map(|b| b.spans.clone()).collect();
    let mut points: Vec<_> = batches.iter().flat_map(|b| b.points.clone()).collect();
    let mut markers: Vec<_> = batches.iter().flat_map(|b| b.markers.clone()).collect();
    spans.sort_by_key(|s| s.end_unix_nano);
    points.sort_by_key(|p| p.time_unix_nano);
    markers.sort_by_key(|m| m.time_unix_nano);
    let second = |t: u64| t / 1_000_000_000;
    let last = spans
        .last()
        .map(|s| second(s.end_unix_nano))
        .max(points.last().map(|p| second(p.time_unix_nano)))
        .unwrap_or(0);
    let first = spans
        .first()
        .map(|s| second(s.end_unix_nano))
        .min(points.first().map(|p| second(p.time_unix_nano)))
        .unwrap_or(0);
    let (mut si, mut pi, mut mi) = (0, 0, 0);
    (first..=last)
        .map(|sec| {
            let mut b = Batch::default();
            while si < spans.len() && second(spans[si].end_unix_nano) <= sec {
                b.spans.push(spans[si].clone());
                si += 1;
            }
            while pi < points.len() && second(points[pi].time_unix_nano) <= sec {
                b.points.push(points[pi].clone());
                pi += 1;
            }
            while mi < markers.len() && second(markers[mi].time_unix_nano) <= sec {
                b.markers.push(markers[mi].clone());
                mi += 1;
            }
            b
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_same_series(name: &str, batch: &[ServiceSeries], live: &[ServiceSeries]) {
    let names = |v: &[ServiceSeries]| v.iter().map(|s| s.service.to_string()).collect::<Vec<_>>();
    assert_eq!(names(batch), names(live), "{name}: services");
    let mut wrong = Vec::new();
    for (b, l) in batch.iter().zip(live) {
        assert_eq!(b.t0, l.t0, "{name} {}: t0", b.service);
        assert_eq!(b.buckets.len(), l.buckets.len(), "{name} {}: n", b.service);
        assert_eq!(b.coverage, l.coverage, "{name} {}: coverage", b.service);
        for (i, (x, y)) in b.buckets.iter().zip(&l.buckets).enumerate() {
            let pairs = [
                ("lookups", x.lookups, y.lookups),
                ("misses", x.misses, y.misses),
                ("failed", x.failed, y.failed),
                ("recomputes", x.recomputes, y.recomputes),
                (
                    "recompute_inflight",
                    x.recompute_inflight,
                    y.recompute_inflight,
                ),
                ("herd", x.herd, y.herd),
                ("db_ops", x.db_ops, y.db_ops),
                ("db_inflight", x.db_inflight, y.db_inflight),
                ("db_p95_ms", x.db_p95_ms, y.db_p95_ms),
                ("db_ms", x.db_ms, y.db_ms),
                ("recompute_db_ms", x.recompute_db_ms, y.recompute_db_ms),
                ("requests", x.requests, y.requests),
                ("p50_ms", x.p50_ms, y.p50_ms),
                ("p95_ms", x.p95_ms, y.p95_ms),
                ("p99_ms", x.p99_ms, y.p99_ms),
                ("bad", x.bad, y.bad),
                ("errors", x.errors, y.errors),
            ];
            for (field, a, c) in pairs {
                if !close(a, c) {
                    wrong.push(format!(
                        "{} bucket {i}: {field} batch {a} live {c}",
                        b.service
                    ));
                }
            }
            assert_eq!(x.pool_used, y.pool_used, "{name} bucket {i}: pool_used");
            assert_eq!(x.pool_max, y.pool_max, "{name} bucket {i}: pool_max");
            assert_eq!(x.pending, y.pending, "{name} bucket {i}: pending");
        }
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} bucket values differ, first: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(12)]
    );
}

/// The batch analysis of a capture: its series and its report.
fn batch(analyzer: &Analyzer, batches: &[Batch]) -> (Signals, Report) {
    let mut session = analyzer.session();
    for b in batches.iter().cloned() {
        session.push(b);
    }
    let signals = session.signals().expect("batch signals");
    let report = signals.report();
    (signals, report)
}

/// What feeding a capture to the live analysis gave.
struct Fed {
    /// The report after the last tick.
    last: Report,
    /// The data time of the first tick with an incident, and that incident.
    first_seen: Option<(u64, Incident)>,
    rebuilt_buckets: u64,
    ticks: u64,
    peak_fact_bytes: u64,
}

/// Feed `batches` as they would arrive, a tick a second, then the idle
/// ticks that flush the last traces.
fn feed(live: &mut LiveAnalysis, batches: &[Batch]) -> Fed {
    feed_with(live, batches, |_, _| {})
}

/// [`feed`], handing each tick's report to `on_tick`.
fn feed_with(
    live: &mut LiveAnalysis,
    batches: &[Batch],
    mut on_tick: impl FnMut(&LiveAnalysis, &Report),
) -> Fed {
    let (mut last, mut first_seen) = (None, None);
    let (mut rebuilt_buckets, mut ticks, mut peak_fact_bytes) = (0, 0, 0);
    let idle = LiveSettings::new(0).idle_ticks_to_flush as usize;
    let empty = std::iter::repeat_with(Batch::default).take(idle);
    for chunk in arrivals(batches).into_iter().chain(empty) {
        live.push(chunk);
        let (report, stats) = live.tick().expect("tick");
        ticks += 1;
        rebuilt_buckets += stats.rebuilt_buckets;
        peak_fact_bytes = peak_fact_bytes.max(stats.fact_bytes);
        on_tick(live, &report);
        if first_seen.is_none() && !report.incidents.is_empty() {
            first_seen = Some((live.latest(), report.incidents[0].clone()));
        }
        last = Some(report);
    }
    Fed {
        last: last.expect("ticked"),
        first_seen,
        rebuilt_buckets,
        ticks,
        peak_fact_bytes,
    }
}

/// Feed `scenario` second by second and compare with the batch analysis.
fn replay(scenario: Scenario) {
    let (batches, truth) = committed(scenario);
    let name = scenario.name();
    let analyzer = Analyzer::new(Default::default(), Vec::new());
    let (signals, batch_report) = batch(&analyzer, &batches);
    // A window longer than the capture, so the end state covers it all.
    let mut live = LiveAnalysis::new(analyzer, LiveSettings::new(u64::MAX / 4));
    let Fed {
        last: live_report,
        first_seen,
        rebuilt_buckets: rebuilt,
        ticks,
        ..
    } = feed(&mut live, &batches);
    assert_same_series(name, signals.series(), live.series());

    // Same incidents, field for field.
    let strip = |r: &Report| {
        let mut v = serde_json::to_value(&r.incidents).expect("json");
        for i in v.as_array_mut().expect("array") {
            // The live registry re-assigns ids; everything else must agree.
            i.as_object_mut().expect("object").remove("id");
        }
        v
    };
    assert_eq!(
        strip(&batch_report),
        strip(&live_report),
        "{name}: live and batch incidents differ"
    );
    assert_eq!(batch_report.input.spans, live_report.input.spans);

    // Incremental: most ticks rebuild a few buckets, not the capture.
    let n = signals
        .series()
        .first()
        .map(|s| s.buckets.len())
        .unwrap_or(0) as u64;
    assert!(
        rebuilt < n * ticks / 4,
        "{name}: rebuilt {rebuilt} buckets over {ticks} ticks of a {n}-bucket capture"
    );

    match truth.kind.as_deref() {
        None => assert!(first_seen.is_none(), "{name}: live found {first_seen:?}"),
        Some(kind) => {
            let (at, incident) = first_seen.expect("live analysis found the incident");
            // The kind may be refined as evidence accrues (a hot key's first
            // seconds look like any expiry); the final one is the batch's.
            assert_eq!(
                incident.service,
                truth.service.clone().expect("service"),
                "{name}"
            );
            assert!(
                live_report
                    .incidents
                    .iter()
                    .any(|i| i.kind.as_str() == kind),
                "{name}: no {kind} incident at the end"
            );
            let onset = ((EPOCH_UNIX_SECONDS as f64 + truth.onset_s.expect("onset")) * 1e9) as u64;
            // Found while the data was at most 10 s past the onset.
            assert!(
                at <= onset + 10_000_000_000,
                "{name}: found at {at}, {} s after the onset",
                (at - onset) as f64 / 1e9
            );
        }
    }
}

#[test]
fn synchronized_expiry_live_equals_batch() {
    replay(Scenario::SynchronizedExpiry);
}

#[test]
fn hot_key_live_equals_batch() {
    replay(Scenario::HotKeyExpiry);
}

#[test]
fn multi_service_live_equals_batch() {
    replay(Scenario::MultiService);
}

#[test]
fn baseline_live_finds_nothing() {
    replay(Scenario::Baseline);
}

/// With room for only a few seconds of facts, the oldest are dropped while
/// their buckets stay: the series over the whole window is still the batch
/// one, and the stampede is still found with its kind and onset.
#[test]
fn bounded_fact_memory_keeps_the_series_and_the_verdict() {
    let (batches, _) = committed(Scenario::SynchronizedExpiry);
    let analyzer = Analyzer::new(Default::default(), Vec::new());
    let (signals, batch_report) = batch(&analyzer, &batches);
    let budget = 1 << 20;
    let mut settings = LiveSettings::new(u64::MAX / 4);
    settings.max_fact_bytes = budget;
    let mut live = LiveAnalysis::new(analyzer, settings);
    let fed = feed(&mut live, &batches);
    let (report, peak) = (fed.last, fed.peak_fact_bytes);
    assert!(peak <= budget as u64, "facts took {peak} bytes");
    assert_same_series("bounded", signals.series(), live.series());
    let verdict = |r: &Report| {
        r.incidents
            .iter()
            .map(|i| (i.service.clone(), i.kind.as_str(), i.onset_unix_nano))
            .collect::<Vec<_>>()
    };
    assert_eq!(verdict(&batch_report), verdict(&report));
}

/// An incident's alert is routed on its labels (a page goes where a
/// ticket does not), so when an open incident is refined (another kind, or
/// a higher severity as its burn grows) the alert it fired as is resolved
/// and the one it is now fires; at the end the last one is resolved; never
/// two at once. A cold cache burns at ticket rate for its first seconds
/// and at page rate after. The capture is fed tick by tick as in `replay`,
/// each tick's report merged into a registry and its transitions delivered
/// as `serve` does, to a real webhook receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refined_incident_resolves_the_alert_it_fired_as_and_fires_as_what_it_is() {
    use herdwatch_collector::alerts::Notifier;
    use herdwatch_collector::live::{deliver, merge};
    use herdwatch_collector::testsuite::WebhookReceiver;

    let hook = WebhookReceiver::default();
    let url = hook.clone().serve().await;
    let notifier = Notifier::start(url, std::time::Duration::from_millis(20));
    let (batches, truth) = committed(Scenario::ColdCache);
    let analyzer = Analyzer::new(Default::default(), Vec::new());
    let mut live = LiveAnalysis::new(analyzer, LiveSettings::new(u64::MAX / 4));
    let mut registry = Vec::new();
    let mut labels = Vec::new();
    feed_with(&mut live, &batches, |live, report| {
        let t = merge(&mut registry, report.incidents.clone(), live.window_from());
        deliver(&notifier, "http://dashboard", &registry, &t, live.latest());
        if let Some(i) = registry.first() {
            let now = format!("{} {}", i.kind.as_str(), i.severity.as_str());
            if labels.last() != Some(&now) {
                labels.push(now);
            }
        }
    });
    let [incident] = registry.as_slice() else {
        panic!("one incident: {registry:?}")
    };
    assert_eq!(Some(incident.kind.as_str()), truth.kind.as_deref());
    assert!(!incident.is_open(), "the capture ends calm");
    assert_eq!(
        labels,
        ["cold-cache ticket", "cold-cache page"],
        "escalated"
    );

    // Every delivery queued above arrives (the receiver refuses the first
    // once; the notifier retries), in order.
    let expected = [
        "firing cold-cache ticket",
        "resolved cold-cache ticket",
        "firing cold-cache page",
        "resolved cold-cache page",
    ];
    let seen = || -> Vec<String> {
        hook.accepted()
            .iter()
            .map(|b| {
                let l = &b["alerts"][0]["labels"];
                let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
                format!(
                    "{} {} {}",
                    s(&b["status"]),
                    s(&l["kind"]),
                    s(&l["severity"])
                )
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seen().len() < expected.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen(), expected);
    for body in hook.accepted() {
        assert_eq!(
            body["alerts"][0]["labels"]["incident_id"],
            incident.id.as_str()
        );
    }
}

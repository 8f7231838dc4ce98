//! Acceptance: every scenario of `samples/`, generated through the real
//! OpenTelemetry SDK, read back with the collector's file reader and
//! analysed, gets the verdict of its ground truth.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herdwatch_analyzer::Analyzer;
use herdwatch_analyzer::incident::{Kind, Report};
use herdwatch_analyzer::model::Interner;
use herdwatch_collector::decode::Decoder;
use herdwatch_collector::files::{read_file, read_files};
use herdwatch_samples::{
    Capture, EPOCH_UNIX_SECONDS, EmitOptions, Format, Mitigation, Scenario, Semconv, Truth,
};

fn analyse_file(path: &Path) -> Report {
    let decoder = Decoder::new(Arc::new(Interner::default()));
    let analyzer = Analyzer::new(Default::default(), Vec::new());
    let mut session = analyzer.session();
    let stats = read_file(path, &decoder, true, &mut |b| session.push(b)).expect("read");
    assert!(stats.requests > 0);
    session.finish().expect("analysis")
}

fn analyse_capture(capture: &Capture, opts: EmitOptions, format: Format) -> Report {
    let mut bytes = Vec::new();
    herdwatch_samples::write_capture(capture, &opts, format, &mut bytes).expect("generate");
    let path = std::env::temp_dir().join(format!(
        "hw-accept-{}-{}-{:?}-{:?}-{}-{}-{}.otlp",
        std::process::id(),
        capture.scenario.name(),
        capture.mitigations,
        opts.semconv,
        opts.unsanitised,
        opts.app_attributes,
        opts.spans,
    ));
    std::fs::write(&path, &bytes).expect("write capture");
    let report = analyse_file(&path);
    let _ = std::fs::remove_file(&path);
    report
}

fn analyse(scenario: Scenario, opts: EmitOptions) -> Report {
    analyse_capture(&Capture::new(scenario, 7), opts, Format::JsonLines)
}

/// A committed export (samples/data) and its truth file.
fn committed(scenario: Scenario) -> (PathBuf, Truth) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/data");
    let (export, truth) = herdwatch_samples::committed_names(scenario);
    let text = std::fs::read_to_string(dir.join(&truth)).expect("truth file");
    (
        dir.join(export),
        serde_json::from_str(&text).expect("truth"),
    )
}

/// The report must match the truth: verdict, kind, service, onset within
/// two buckets, the mitigations that fit, a confident call.
fn verify(name: &str, truth: &Truth, report: &Report) {
    let summary: Vec<String> = report
        .incidents
        .iter()
        .map(|i| {
            format!(
                "{} {} onset {}",
                i.service,
                i.kind.as_str(),
                i.onset_unix_nano
            )
        })
        .collect();
    match truth.kind.as_deref() {
        None => assert!(
            report.incidents.is_empty(),
            "{name}: expected no incident, got {summary:?}"
        ),
        Some(kind) => {
            assert_eq!(report.incidents.len(), 1, "{name}: {summary:?}");
            let i = &report.incidents[0];
            assert_eq!(i.kind, Kind::parse(kind).unwrap(), "{name}: {summary:?}");
            assert_eq!(Some(i.service.as_str()), truth.service.as_deref());
            let onset_s = (i.onset_unix_nano / 1_000_000_000) as f64 - EPOCH_UNIX_SECONDS as f64;
            let truth_onset = truth.onset_s.unwrap();
            assert!(
                (onset_s - truth_onset).abs() <= 2.0,
                "{name}: onset {onset_s} s vs truth {truth_onset} s"
            );
            let ids: Vec<&str> = i.mitigations.iter().map(|m| m.id.as_str()).collect();
            for m in &truth.mitigations {
                assert!(
                    ids.contains(&m.as_str()),
                    "{name}: mitigation {m} missing from {ids:?}"
                );
            }
            assert!(i.confidence > 0.5 && i.confidence <= 1.0);
            if kind != "db-saturation" {
                let share = i.evidence.recompute_share.expect("db spans give a share");
                assert!(share >= 0.5, "recompute share {share}");
            }
        }
    }
}

fn check(scenario: Scenario, opts: EmitOptions) -> Report {
    let capture = Capture::new(scenario, 7);
    let report = analyse_capture(&capture, opts, Format::JsonLines);
    verify(scenario.name(), &capture.truth(), &report);
    report
}

/// The JSON report with what may change without the analysis changing
/// masked: incident ids and exemplar trace ids; floats to six significant
/// digits (parallel sums may differ in the last bits).
fn golden_form(report: &Report) -> String {
    fn mask(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                let is_incident = m.contains_key("onset_unix_nano");
                for (k, x) in m.iter_mut() {
                    if (k == "id" && is_incident) || k == "trace_id" {
                        *x = serde_json::Value::String("<masked>".into());
                    } else {
                        mask(x);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(mask),
            serde_json::Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap();
                let r: f64 = format!("{f:.5e}").parse().unwrap();
                *v = serde_json::json!(r);
            }
            _ => {}
        }
    }
    let mut v = serde_json::to_value(report).unwrap();
    mask(&mut v);
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

/// Every committed sample: the verdict of its truth, and the whole JSON
/// report pinned by a golden file (`UPDATE_GOLDEN=1` rewrites them).
#[test]
fn every_committed_sample_gets_its_verdict_and_its_golden_report() {
    let golden_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for s in Scenario::ALL {
        let (path, truth) = committed(s);
        let report = analyse_file(&path);
        verify(s.name(), &truth, &report);
        let golden = golden_dir.join(format!("{}.json", s.name()));
        let now = golden_form(&report);
        if update {
            std::fs::write(&golden, &now).unwrap();
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(now.as_str()) {
            let out = std::env::temp_dir().join(format!("{}.golden.json", s.name()));
            std::fs::write(&out, &now).unwrap();
            stale.push(format!("{} (now: {})", golden.display(), out.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "reports differ from their golden files: {stale:?}; diff them, and rerun with UPDATE_GOLDEN=1 if the change is meant"
    );
}

/// `analyze`'s bounded path: a fact budget far below what the capture
/// needs, so the first pass builds buckets and drops facts as it goes, then
/// a second pass over the file keeps the evidence windows' facts only.
fn analyse_file_bounded(path: &Path, fact_bytes: usize) -> (Report, Option<usize>) {
    analyse_files_bounded(&[path.to_owned()], fact_bytes)
}

/// `herdwatch analyze --fact-mib` in process: read (merged in time order),
/// and again for the evidence when the facts went over the budget.
fn analyse_files_bounded(paths: &[PathBuf], fact_bytes: usize) -> (Report, Option<usize>) {
    let decoder = Decoder::new(Arc::new(Interner::default()));
    let analyzer = Analyzer::new(Default::default(), Vec::new());
    let mut session = analyzer.bounded_session(fact_bytes, 2048);
    read_files(paths, &decoder, true, 2, &mut |b| session.push(b)).expect("read");
    let signals = session.signals().expect("signals");
    let Some(plan) = signals.evidence_plan() else {
        return (signals.report(), None);
    };
    let windows = plan.windows().len();
    let mut evidence = plan.session(usize::MAX);
    read_files(paths, &decoder, true, 2, &mut |b| evidence.push(b)).expect("read again");
    (signals.report_with(evidence.finish()), Some(windows))
}

/// A committed sample dealt out line by line into files that all cover the
/// same hours, as collectors behind a load balancer write them: the spans
/// of one trace land in different files.
fn deal_out(scenario: Scenario, files: usize) -> Vec<PathBuf> {
    use std::io::{BufRead, Write};
    let (path, _) = committed(scenario);
    let lines = std::io::BufReader::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&path).expect("sample"),
    ));
    let paths: Vec<PathBuf> = (0..files)
        .map(|i| {
            std::env::temp_dir().join(format!(
                "hw-dealt-{}-{}-{i}.jsonl",
                std::process::id(),
                scenario.name()
            ))
        })
        .collect();
    let mut out: Vec<_> = paths
        .iter()
        .map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("create")))
        .collect();
    for (n, line) in lines.lines().enumerate() {
        writeln!(out[n % files], "{}", line.expect("line")).expect("write");
    }
    for mut o in out {
        o.flush().expect("flush");
    }
    paths
}

/// Input that goes back in time past what a bounded session already
/// dropped (the same file twice, one after the other): its rows are left
/// out at once (the facts stay within the budget), and the report says how
/// many requests that was.
#[test]
fn input_that_goes_back_in_time_is_left_out_and_said_so() {
    let (path, _) = committed(Scenario::HotKeyExpiry);
    let decoder = Decoder::new(Arc::new(Interner::default()));
    let analyzer = Analyzer::new(Default::default(), Vec::new());
    let budget = 64 << 10;
    let mut session = analyzer.bounded_session(budget, 2048);
    for _ in 0..2 {
        read_file(&path, &decoder, true, &mut |b| session.push(b)).expect("read");
    }
    let signals = session.signals().expect("signals");
    let report = signals.report_with(Vec::new());
    let late: Vec<_> = report
        .notes
        .iter()
        .filter(|n| n.contains("after the part of the series they belong to was final"))
        .collect();
    assert_eq!(late.len(), 1, "{:?}", report.notes);
    let n: u64 = late[0].split(' ').next().unwrap().parse().unwrap();
    assert!(n > 0, "{}", late[0]);
}

/// The same file given twice (read merged, bounded or not): every span
/// counted once, the report of one file, and a note that says so.
#[test]
fn a_file_given_twice_gives_the_report_of_one() {
    let s = Scenario::HotKeyExpiry;
    let path = committed(s).0;
    let whole = analyse_file(&path);
    let twice = [path.clone(), path];
    for budget in [usize::MAX, 64 << 10] {
        let (mut report, _) = analyse_files_bounded(&twice, budget);
        let note = format!(
            "{} spans and {} metric points or log records came more than once (a retried export, or a file given twice) and were counted once",
            whole.input.spans,
            whole.input.metric_points + whole.input.log_markers
        );
        let at = report.notes.iter().position(|n| *n == note);
        assert!(at.is_some(), "{budget}: {:?}", report.notes);
        report.notes.remove(at.unwrap_or_default());
        let (t, w) = (golden_form(&report), golden_form(&whole));
        if t != w {
            let out = std::env::temp_dir().join(format!("{}.twice.json", s.name()));
            std::fs::write(&out, &t).unwrap();
            std::fs::write(out.with_extension("whole.json"), &w).unwrap();
            panic!("{budget}: the report differs: {}", out.display());
        }
    }
}

/// Files that cover the same hours, over the budget: the same report as
/// the one file analysed whole. Read one after the other, the second
/// file's rows would come after the buckets they belong to were final.
#[test]
fn files_over_the_same_hours_give_the_report_of_one_file() {
    for s in [Scenario::MultiService, Scenario::HotKeyExpiry] {
        let whole = analyse_file(&committed(s).0);
        let paths = deal_out(s, 3);
        let (dealt, windows) = analyse_files_bounded(&paths, 64 << 10);
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
        assert!(windows.is_some(), "{}: over the budget", s.name());
        assert!(
            dealt
                .notes
                .iter()
                .all(|n| !n.contains("after the part of the series")),
            "{}: {:?}",
            s.name(),
            dealt.notes
        );
        let (d, w) = (golden_form(&dealt), golden_form(&whole));
        if d != w {
            let out = std::env::temp_dir().join(format!("{}.dealt.json", s.name()));
            std::fs::write(&out, &d).unwrap();
            panic!("{}: the report differs: {}", s.name(), out.display());
        }
    }
}

/// Every committed sample, with 64 KiB of facts at a time (two passes), and
/// within a budget it does not reach (one): the same report as the
/// unbounded analysis, field for field.
#[test]
fn a_bounded_analysis_in_two_passes_gives_the_same_reports() {
    for s in Scenario::ALL {
        let (path, _) = committed(s);
        let whole = analyse_file(&path);
        let (bounded, windows) = analyse_file_bounded(&path, 64 << 10);
        let windows = windows.unwrap_or_else(|| panic!("{}: two passes", s.name()));
        assert!(windows >= whole.incidents.len(), "{}", s.name());
        let (b, w) = (golden_form(&bounded), golden_form(&whole));
        if b != w {
            let out = std::env::temp_dir().join(format!("{}.bounded.json", s.name()));
            std::fs::write(&out, &b).unwrap();
            panic!(
                "{}: the bounded report differs: {}",
                s.name(),
                out.display()
            );
        }
        let (within, windows) = analyse_file_bounded(&path, 1 << 30);
        assert_eq!(windows, None, "within the budget: one pass");
        assert_eq!(golden_form(&within), golden_form(&whole), "{}", s.name());
    }
}

#[test]
fn protobuf_captures_give_the_same_report_as_json() {
    let capture = Capture::new(Scenario::SynchronizedExpiry, 7);
    let json = analyse_capture(&capture, EmitOptions::default(), Format::JsonLines);
    let proto = analyse_capture(&capture, EmitOptions::default(), Format::Protobuf);
    assert_eq!(json.incidents.len(), 1);
    assert_eq!(
        serde_json::to_value(&json).unwrap(),
        serde_json::to_value(&proto).unwrap()
    );
}

#[test]
fn switched_on_mitigations_prevent_the_stampedes_they_fit() {
    for (scenario, mitigation) in [
        (Scenario::HotKeyExpiry, Mitigation::XFetch),
        (
            Scenario::SynchronizedExpiry,
            Mitigation::StaleWhileRevalidate,
        ),
        (Scenario::ColdCache, Mitigation::WarmUp),
    ] {
        let capture = Capture::new(scenario, 7).with_mitigations(&[mitigation]);
        let truth = capture.truth();
        assert_eq!(
            truth.kind,
            None,
            "{} + {}",
            scenario.name(),
            mitigation.name()
        );
        let report = analyse_capture(&capture, EmitOptions::default(), Format::JsonLines);
        verify(
            &format!("{} + {}", scenario.name(), mitigation.name()),
            &truth,
            &report,
        );
    }
}

/// A client circuit breaker with a recompute limiter does not bring the
/// cache back, but it keeps the tail short: the breaker stops the cache
/// calls (no lookup spans but its probes) and the limiter sheds what the
/// database cannot take (503s, fast). The SLO burns on errors, not on
/// latency, and no miss is ever seen: still a cache outage, not a database
/// problem.
#[test]
fn a_cache_outage_behind_an_open_breaker_is_named_from_the_lookups_that_stopped() {
    let (_, plain) = committed(Scenario::CacheUnavailable);
    let capture =
        Capture::new(Scenario::CacheUnavailable, 7).with_mitigations(&[Mitigation::CircuitBreaker]);
    let limited = capture.truth();
    assert_eq!(limited.kind.as_deref(), Some("cache-unavailable"));
    assert!(limited.services[0].p95_peak_ms < plain.services[0].p95_peak_ms / 4.0);
    assert!(
        limited.services[0].p95_peak_ms < 500.0,
        "under the SLO threshold"
    );
    let report = analyse_capture(&capture, EmitOptions::default(), Format::JsonLines);
    verify("cache-unavailable + circuit-breaker", &limited, &report);
    let e = &report.incidents[0].evidence;
    assert!(e.p95_peak_ms < plain.services[0].p95_peak_ms / 2.0);
    let (before, during) = (
        e.lookups_per_request_before.expect("lookups stopped"),
        e.lookups_per_request_during.expect("lookups stopped"),
    );
    assert!(before > 0.95 && during < 0.05, "{before} -> {during}");
    let i = &report.incidents[0];
    assert_eq!(e.onsets.cache_bypass_unix_nano, Some(i.onset_unix_nano));
    assert_eq!(e.onsets.miss_burst_unix_nano, None, "no miss is ever seen");
    assert!(e.bad_requests * 2 > e.requests, "most were shed: {e:?}");
    assert!(
        report.incidents[0]
            .cause
            .contains("stopped asking the cache"),
        "{}",
        report.incidents[0].cause
    );
    let text = herdwatch_analyzer::report::render_text(&report);
    for line in [
        format!(
            "lookups/request   {before:.2} baseline → {during:.2} while the cache was not asked"
        ),
        "of database time in the window was requests falling through past the cache".to_string(),
    ] {
        assert!(text.contains(&line), "{line:?} not in {text}");
    }
    // Without the breaker the lookups go on (and fail): not a bypass.
    let plain_report = analyse_file(&committed(Scenario::CacheUnavailable).0);
    assert_eq!(
        plain_report.incidents[0]
            .evidence
            .lookups_per_request_during,
        None
    );
}

#[test]
fn db_saturation_is_not_called_a_stampede() {
    let r = check(Scenario::DbSaturation, EmitOptions::default());
    let i = &r.incidents[0];
    assert!(!i.kind.is_stampede());
    assert!(i.evidence.recompute_share.unwrap() < 0.5);
    assert_eq!(i.mitigations[0].id, "slow-query-review");
}

#[test]
fn legacy_and_mixed_conventions_give_the_same_verdicts() {
    for semconv in [Semconv::Legacy, Semconv::Mixed] {
        for s in [
            Scenario::SynchronizedExpiry,
            Scenario::HotKeyExpiry,
            Scenario::Baseline,
            Scenario::DbSaturation,
        ] {
            check(
                s,
                EmitOptions {
                    semconv,
                    ..EmitOptions::default()
                },
            );
        }
    }
}

#[test]
fn unsanitised_keys_name_the_hot_key() {
    let r = check(
        Scenario::HotKeyExpiry,
        EmitOptions {
            unsanitised: true,
            ..EmitOptions::default()
        },
    );
    let top = &r.incidents[0].evidence.top_keys[0];
    assert_eq!(top.key, "product:1");
    assert_eq!(top.group, "product:{n}");
    assert!(top.herd >= 5, "herd {}", top.herd);
}

#[test]
fn app_attributes_alone_give_the_same_verdicts() {
    for s in [
        Scenario::SynchronizedExpiry,
        Scenario::Mitigated,
        Scenario::ColdCache,
    ] {
        check(
            s,
            EmitOptions {
                app_attributes: true,
                ..EmitOptions::default()
            },
        );
    }
}

#[test]
fn sanitised_keys_fall_back_to_the_url_path() {
    let r = check(Scenario::HotKeyExpiry, EmitOptions::default());
    let top = &r.incidents[0].evidence.top_keys[0];
    assert_eq!(top.key, "/product/1");
    assert_eq!(top.group, "/product/{id}");
}

#[test]
fn same_seed_same_bytes() {
    let run = |seed| {
        let mut out = Vec::new();
        herdwatch_samples::generate(Scenario::ColdCache, seed, &EmitOptions::default(), &mut out)
            .unwrap();
        out
    };
    let (a, b) = (run(11), run(11));
    let first_diff = a
        .split(|c| *c == b'\n')
        .zip(b.split(|c| *c == b'\n'))
        .position(|(x, y)| x != y);
    assert!(
        a == b,
        "same seed, different bytes from line {first_diff:?}"
    );
    assert!(a != run(12), "another seed gives another capture");
}

#[test]
fn exponential_latency_histograms_give_the_same_metrics_only_verdicts() {
    let options = |exponential_histograms| EmitOptions {
        spans: false,
        exponential_histograms,
        ..EmitOptions::default()
    };
    for s in [Scenario::Baseline, Scenario::SynchronizedExpiry] {
        let explicit = analyse(s, options(false));
        let exponential = analyse(s, options(true));
        let kinds = |r: &Report| r.incidents.iter().map(|i| i.kind).collect::<Vec<_>>();
        assert_eq!(kinds(&explicit), kinds(&exponential), "{}", s.name());
        // Both P95s come from the histograms; the exponential one is finer.
        for (a, b) in explicit.services.iter().zip(&exponential.services) {
            assert!(
                b.p95_ms > 0.0 && (a.p95_ms - b.p95_ms).abs() <= 0.5 * a.p95_ms,
                "{}: P95 {} (explicit) vs {} (exponential)",
                s.name(),
                a.p95_ms,
                b.p95_ms
            );
        }
        for (a, b) in explicit.incidents.iter().zip(&exponential.incidents) {
            let (pa, pb) = (a.evidence.p95_peak_ms, b.evidence.p95_peak_ms);
            assert!(
                pb > 0.0 && (pa - pb).abs() <= 0.5 * pa,
                "peak P95 {pa} vs {pb}"
            );
        }
    }
}

#[test]
fn metrics_only_captures_give_the_verdict_with_reduced_detail_stated() {
    let metrics_only = EmitOptions {
        spans: false,
        ..EmitOptions::default()
    };
    for s in [Scenario::Baseline, Scenario::Mitigated] {
        let r = analyse(s, metrics_only);
        assert!(
            r.incidents.is_empty(),
            "{}: {:?}",
            s.name(),
            r.incidents.iter().map(|i| i.kind).collect::<Vec<_>>()
        );
    }
    let r = analyse(Scenario::SynchronizedExpiry, metrics_only);
    assert_eq!(
        r.incidents.len(),
        1,
        "{:?}",
        r.incidents.iter().map(|i| i.kind).collect::<Vec<_>>()
    );
    let i = &r.incidents[0];
    assert!(i.kind.is_stampede(), "{:?}", i.kind);
    assert!(
        i.evidence.recompute_share.is_none(),
        "no database spans: no share claimed"
    );
    assert!(
        i.evidence.gaps.iter().any(|g| g.contains("no cache spans")),
        "{:?}",
        i.evidence.gaps
    );
    assert!(
        i.evidence.pool_use_peak.unwrap() >= 0.9,
        "saturation from the pool gauges"
    );
    assert!(
        r.notes.iter().any(|n| n.contains("histograms")),
        "{:?}",
        r.notes
    );
    assert!(i.cause.contains("keys are not visible"), "{}", i.cause);
    assert_eq!(i.mitigations[0].id, "single-flight");
    assert!(i.mitigations[0].effect.contains("not replayable"));
    assert!(
        i.confidence < 0.7,
        "reduced input, reduced confidence: {}",
        i.confidence
    );
}

#[test]
fn top_keys_and_herd_sizes_match_the_truth_within_ten_percent() {
    // Committed samples sanitise statements: keys are request paths.
    let within = |seen: u64, truth: u64| (seen as f64 - truth as f64).abs() <= 0.10 * truth as f64;
    for s in [
        Scenario::HotKeyExpiry,
        Scenario::SynchronizedExpiry,
        Scenario::ColdCache,
        Scenario::CacheUnavailable,
    ] {
        let (path, truth) = committed(s);
        let r = analyse_file(&path);
        let i = &r.incidents[0];
        let name = s.name();
        assert!(
            within(i.evidence.herd_max, truth.peak_herd),
            "{name}: largest herd {} vs truth {}",
            i.evidence.herd_max,
            truth.peak_herd
        );
        // A key that stands out (a larger herd than any other) is listed.
        let top = &truth.keys[0];
        if truth.keys.get(1).is_none_or(|k| k.herd < top.herd) {
            assert!(
                i.evidence.top_keys.iter().any(|k| k.key == top.path),
                "{name}: top key {} not among {:?}",
                top.path,
                i.evidence.top_keys
            );
        }
        // Every listed key with a herd has the herd the truth gives it.
        for k in i.evidence.top_keys.iter().filter(|k| k.herd >= 2) {
            let t = truth.keys.iter().find(|t| t.path == k.key);
            if let Some(t) = t {
                assert!(
                    within(k.herd, t.herd),
                    "{name}: herd on {} {} vs truth {}",
                    k.key,
                    k.herd,
                    t.herd
                );
            }
        }
    }
}

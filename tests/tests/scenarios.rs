//! Acceptance: every scenario of `samples/`, generated through the real
//! OpenTelemetry SDK, read back with the collector's file reader and
//! analysed, gets the verdict of its ground truth.

use std::sync::Arc;

use herdwatch_analyzer::Analyzer;
use herdwatch_analyzer::incident::{Kind, Report};
use herdwatch_analyzer::model::Interner;
use herdwatch_collector::decode::Decoder;
use herdwatch_collector::files::read_file;
use herdwatch_samples::{EPOCH_UNIX_SECONDS, EmitOptions, Scenario, Semconv};

fn analyse(scenario: Scenario, opts: EmitOptions) -> Report {
    let mut bytes = Vec::new();
    herdwatch_samples::generate(scenario, 7, &opts, &mut bytes).expect("generate");
    let path = std::env::temp_dir().join(format!(
        "hw-accept-{}-{}-{:?}-{}-{}.jsonl",
        std::process::id(),
        scenario.name(),
        opts.semconv,
        opts.unsanitised,
        opts.app_attributes
    ));
    std::fs::write(&path, &bytes).expect("write capture");
    let decoder = Decoder::new(Arc::new(Interner::default()));
    let analyzer = Analyzer::new(Default::default(), Vec::new());
    let mut session = analyzer.session();
    let stats = read_file(&path, &decoder, true, &mut |b| session.push(b)).expect("read");
    assert!(stats.requests > 0);
    let _ = std::fs::remove_file(&path);
    session.finish().expect("analysis")
}

fn check(scenario: Scenario, opts: EmitOptions) -> Report {
    let truth = scenario.truth();
    let report = analyse(scenario, opts);
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
    match truth.kind {
        None => assert!(
            report.incidents.is_empty(),
            "{}: expected no incident, got {summary:?}",
            scenario.name()
        ),
        Some(kind) => {
            assert_eq!(
                report.incidents.len(),
                1,
                "{}: {summary:?}",
                scenario.name()
            );
            let i = &report.incidents[0];
            assert_eq!(
                i.kind,
                Kind::parse(kind).unwrap(),
                "{}: {summary:?}",
                scenario.name()
            );
            assert_eq!(Some(i.service.as_str()), truth.service);
            let onset_s = (i.onset_unix_nano / 1_000_000_000) as f64 - EPOCH_UNIX_SECONDS as f64;
            let truth_onset = truth.onset_s.unwrap();
            assert!(
                (onset_s - truth_onset).abs() <= 2.0,
                "{}: onset {onset_s} s vs truth {truth_onset} s",
                scenario.name()
            );
            let ids: Vec<&str> = i.mitigations.iter().map(|m| m.id.as_str()).collect();
            for m in &truth.mitigations {
                assert!(
                    ids.contains(m),
                    "{}: mitigation {m} missing from {ids:?}",
                    scenario.name()
                );
            }
            assert!(i.confidence > 0.5 && i.confidence <= 1.0);
            if kind != "db-saturation" {
                let share = i.evidence.recompute_share.expect("db spans give a share");
                assert!(share >= 0.5, "recompute share {share}");
            }
        }
    }
    report
}

#[test]
fn every_scenario_gets_its_verdict() {
    for s in Scenario::ALL {
        check(s, EmitOptions::default());
    }
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
fn herd_sizes_match_the_simulation_within_ten_percent() {
    for s in [
        Scenario::HotKeyExpiry,
        Scenario::SynchronizedExpiry,
        Scenario::ColdCache,
    ] {
        let truth = herdwatch_samples::sim::herds(&herdwatch_samples::sim::simulate(s, 7));
        let r = analyse(
            s,
            EmitOptions {
                unsanitised: true,
                ..EmitOptions::default()
            },
        );
        let i = &r.incidents[0];
        let (top_key, top_herd) = &truth[0];
        let seen = i.evidence.top_keys.iter().find(|k| &k.key == top_key);
        let seen = seen.unwrap_or_else(|| {
            panic!(
                "{}: top key {top_key} not among {:?}",
                s.name(),
                i.evidence.top_keys
            )
        });
        let diff = (seen.herd as f64 - *top_herd as f64).abs() / *top_herd as f64;
        assert!(
            diff <= 0.10,
            "{}: herd on {top_key} {} vs truth {top_herd}",
            s.name(),
            seen.herd
        );
        assert!(
            i.evidence.herd_max >= seen.herd,
            "herd_max is the largest herd"
        );
    }
}

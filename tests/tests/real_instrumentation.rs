//! Independent instrumentation: `samples/real/catalog.py`, a Flask service
//! with the stock OpenTelemetry Python instrumentations of Flask, redis-py
//! and psycopg2 (nothing written for Herdwatch: sanitised `GET ?`
//! statements, old-generation semconv, no cache hit attribute, no pool
//! metrics), runs against real Redis and PostgreSQL servers and is driven
//! into a hot-key stampede. The SDK's OTLP/HTTP exporter sends to a running
//! collector while a second exporter writes a capture file: the live
//! analysis and `analyze` must both name the stampede, its key and its
//! onset, and see nothing before it. A second run with the stable semantic
//! conventions switched on (`OTEL_SEMCONV_STABILITY_OPT_IN`) must give the
//! same verdict.
//!
//! Needs what `samples/real/setup.sh` installs and starts; it prints the
//! `REAL_OTEL_*` variables read here. Without them the test says so and
//! passes, unless `REQUIRE_REAL_INSTRUMENTATION` is set (as `.ci/run` does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwatch_analyzer::Analyzer;
use herdwatch_analyzer::incident::{Incident, Kind, Report};
use herdwatch_analyzer::model::Interner;
use herdwatch_collector::decode::Decoder;
use herdwatch_collector::files::read_file;
use herdwatch_collector::{app, testsuite};

struct Env {
    python: PathBuf,
    redis_port: String,
    pg_dsn: String,
}

fn env() -> Option<Env> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let found = match (
        var("REAL_OTEL_PYTHON"),
        var("REAL_OTEL_REDIS_PORT"),
        var("REAL_OTEL_PG_DSN"),
    ) {
        (Some(p), Some(r), Some(d)) => Some(Env {
            python: p.into(),
            redis_port: r,
            pg_dsn: d,
        }),
        _ => None,
    };
    if found.is_none() {
        assert!(
            std::env::var_os("REQUIRE_REAL_INSTRUMENTATION").is_none(),
            "REQUIRE_REAL_INSTRUMENTATION is set but REAL_OTEL_* are not: run samples/real/setup.sh"
        );
        eprintln!(
            "skipped: run `eval \"$(bash samples/real/setup.sh)\"` to check real instrumentation"
        );
    }
    found
}

fn analyse(path: &Path) -> Report {
    let decoder = Decoder::new(Arc::new(Interner::default()));
    let analyzer = Analyzer::new(Default::default(), Vec::new());
    let mut session = analyzer.session();
    read_file(path, &decoder, true, &mut |b| session.push(b)).expect("read the capture");
    session.finish().expect("analysis")
}

/// Run `catalog.py` (sending over OTLP/HTTP to `otlp` when given, and
/// writing a capture), with `semconv` as `OTEL_SEMCONV_STABILITY_OPT_IN`;
/// returns its truth line.
async fn run_catalog(
    env: &Env,
    dir: &Path,
    otlp: Option<std::net::SocketAddr>,
    semconv: &str,
) -> (PathBuf, serde_json::Value) {
    let capture = dir.join(format!(
        "catalog-{}.pb",
        if semconv.is_empty() { "old" } else { "new" }
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real/catalog.py");
    let mut cmd = tokio::process::Command::new(&env.python);
    cmd.arg(&script)
        .args(["--redis-port", &env.redis_port, "--pg-dsn", &env.pg_dsn])
        .arg("--capture")
        .arg(&capture)
        .args(["--seconds", "28", "--expire-at", "14"])
        .env("OTEL_SEMCONV_STABILITY_OPT_IN", semconv);
    if let Some(addr) = otlp {
        cmd.args(["--otlp", &format!("http://{addr}")]);
    }
    let out = cmd.output().await.expect("run catalog.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "catalog.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth = serde_json::from_str(stdout.lines().last().expect("truth line")).unwrap();
    (capture, truth)
}

/// `analyze` over the capture: one hot-key expiry on the home page, at the
/// expiry, with the herd, the share and the mitigation that fit.
fn check_batch(capture: &Path, truth: &serde_json::Value, conventions: &str) -> Incident {
    let expired = truth["expired_unix_nano"].as_u64().unwrap();
    let hot_path = truth["path"].as_str().unwrap();
    let report = analyse(capture);
    let summary: Vec<String> = report
        .incidents
        .iter()
        .map(|i| {
            let o = &i.evidence.onsets;
            let off =
                |t: Option<u64>| t.map(|t| format!("{:+.1} s", (t as f64 - expired as f64) / 1e9));
            format!(
                "{} {} onset {:+.1} s from the expiry (burst {:?}, saturation {:?}, spike {:?})",
                i.service,
                i.kind.as_str(),
                (i.onset_unix_nano as f64 - expired as f64) / 1e9,
                off(o.miss_burst_unix_nano),
                off(o.db_saturation_unix_nano),
                off(o.latency_spike_unix_nano),
            )
        })
        .collect();
    assert_eq!(report.incidents.len(), 1, "{conventions}: {summary:?}");
    let i = report.incidents.into_iter().next().unwrap();
    assert_eq!(i.service, "catalog");
    assert_eq!(i.kind, Kind::HotKeyExpiry, "{conventions}: {summary:?}");
    let onset_off = i.onset_unix_nano as f64 / 1e9 - expired as f64 / 1e9;
    assert!(
        (-2.0..=2.0).contains(&onset_off),
        "{conventions}: onset {onset_off:+.1} s from the expiry"
    );
    // Keys are sanitised (`GET ?`): the key is the request's path.
    let top = &i.evidence.top_keys[0];
    assert_eq!(top.key, hot_path, "{:?}", i.evidence.top_keys);
    assert_eq!(top.group, "/home", "the key group is the route");
    assert_eq!(
        top.recomputes,
        i.evidence
            .top_keys
            .iter()
            .map(|k| k.recomputes)
            .max()
            .unwrap()
    );
    assert!(top.herd >= 5, "herd {}", top.herd);
    let share = i.evidence.recompute_share.expect("database spans");
    assert!(share >= 0.5, "recompute share {share}");
    let ids: Vec<&str> = i.mitigations.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains(&"single-flight"), "{ids:?}");
    i
}

/// A capture `catalog.py` wrote (stable conventions) on a host whose two
/// cores were both busy with other work: one slow query seven seconds
/// before the expiry once made the saturation "lead" the burst, and the
/// stampede was called database saturation. Committed, so it is checked
/// without the servers.
#[test]
fn a_capture_from_a_busy_host_is_still_the_hot_key_expiry() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real/captures");
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("catalog-busy-host.truth.json")).unwrap())
            .unwrap();
    check_batch(
        &dir.join("catalog-busy-host.pb.zst"),
        &truth,
        "busy host, stable conventions",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_python_instrumentation_of_a_real_stampede_is_named_live_and_in_batch() {
    let Some(env) = env() else { return };
    let dir = testsuite::temp_dir("real");
    let running = app::start(testsuite::loopback_config(dir.join("data"), ""))
        .await
        .unwrap();
    // The instrumentations' default (old-generation) conventions, sent
    // live and captured.
    let (capture, truth) = run_catalog(&env, &dir, Some(running.http_addr), "").await;
    let i = check_batch(&capture, &truth, "old conventions");
    let hot_path = truth["path"].as_str().unwrap();

    // Live: the collector that the SDK's OTLP/HTTP exporter sent to. The
    // last spans may still be settling into its analysis: within 30 s it
    // must hold one incident, the batch's, at the batch onset.
    let batch_onset = i.onset_unix_nano;
    let settled = |i: &serde_json::Value| {
        i["kind"] == "hot-key-expiry"
            && i["onset_unix_nano"]
                .as_u64()
                .is_some_and(|t| t.abs_diff(batch_onset) <= 2_000_000_000)
    };
    let started = Instant::now();
    let live = loop {
        let v: serde_json::Value = reqwest::get(format!(
            "http://{}/api/v1/incidents",
            running.dashboard_addr
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let list = v["incidents"].as_array().unwrap().clone();
        if let [only] = list.as_slice()
            && settled(only)
        {
            break only.clone();
        }
        let seen: Vec<String> = list
            .iter()
            .map(|i| {
                let onset = i["onset_unix_nano"].as_u64().unwrap_or(0) as f64;
                let off = (onset - batch_onset as f64) / 1e9;
                format!(
                    "{} {} onset {off:+.1} s from the batch's",
                    i["service"], i["kind"]
                )
            })
            .collect();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the live incidents are not the batch one: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(live["service"], "catalog");
    assert_eq!(live["evidence"]["top_keys"][0]["key"], hot_path);
    running.shutdown().await;

    // The stable conventions (`db.system.name`, `db.query.text`,
    // `url.path`): the same verdict.
    let (capture, truth) = run_catalog(&env, &dir, None, "database,http").await;
    check_batch(&capture, &truth, "stable conventions");
}

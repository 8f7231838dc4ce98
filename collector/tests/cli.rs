//! `herdwatch analyze` as a user runs it: formats, exit codes, messages
//! that name the file and line, `--fail-on`, `--strict`.

use std::path::PathBuf;
use std::process::Command;

use herdwatch_samples::{EmitOptions, Scenario};

fn capture(scenario: Scenario, name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("hw-cli-{}-{name}.jsonl", std::process::id()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    herdwatch_samples::generate(scenario, 7, &EmitOptions::default(), &mut f).unwrap();
    drop(f);
    path
}

fn analyze(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herdwatch"))
        .arg("analyze")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fact budget the capture overflows: buckets built as it goes, facts
/// dropped, a second pass for the evidence; the same report as without a
/// bound, and the timings say a second pass ran.
#[test]
fn a_capture_over_the_fact_budget_gets_the_same_report_in_two_passes() {
    let path = capture(Scenario::SynchronizedExpiry, "bounded");
    let s = path.to_str().unwrap();
    let (code, whole, _) = analyze(&[s, "--format", "json", "--fact-mib", "0"]);
    assert_eq!(code, 0);
    let (code, bounded, err) = analyze(&[
        s,
        "--format",
        "json",
        "--fact-mib",
        "1",
        "--fact-check-spans",
        "4096",
        "--timings",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("second pass"), "{err}");
    let strip = |j: &str| {
        let mut v: serde_json::Value = serde_json::from_str(j).unwrap();
        v["notes"] = serde_json::Value::Null;
        v
    };
    assert_eq!(strip(&bounded), strip(&whole));
    assert_eq!(strip(&whole)["incidents"][0]["kind"], "synchronized-expiry");
}

#[test]
fn formats_and_exit_codes() {
    let stampede = capture(Scenario::HotKeyExpiry, "hot");
    let calm = capture(Scenario::Baseline, "calm");
    let s = stampede.to_str().unwrap();
    let (code, text, _) = analyze(&[s]);
    assert_eq!(code, 0, "no --fail-on: exit 0");
    assert!(
        text.contains("hot-key-expiry in catalog") && text.contains("mitigations:"),
        "{text}"
    );
    let (code, json, _) = analyze(&[s, "--format", "json", "--fail-on", "info"]);
    assert_eq!(code, 1, "an incident at or above info");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["incidents"][0]["kind"], "hot-key-expiry");
    // A six-second spike burns the short windows only: below a page.
    assert_eq!(v["incidents"][0]["severity"], "info");
    let (code, _, _) = analyze(&[s, "--fail-on", "page"]);
    assert_eq!(code, 0, "nothing at or above page");
    let out = std::env::temp_dir().join(format!("hw-cli-{}.html", std::process::id()));
    let (code, _, _) = analyze(&[s, "--format", "html", "-o", out.to_str().unwrap()]);
    assert_eq!(code, 0);
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(
        html.starts_with("<!doctype html>")
            && html.contains("<svg")
            && html.contains("hot-key-expiry")
    );
    assert!(
        !html.contains("href=\"/services\""),
        "standalone: no links into a server"
    );
    let (code, _, _) = analyze(&[calm.to_str().unwrap(), "--fail-on", "info"]);
    assert_eq!(code, 0, "no incident on the baseline");
}

#[test]
fn bad_input_exits_2_naming_file_and_line() {
    let path = std::env::temp_dir().join(format!("hw-cli-{}-bad.jsonl", std::process::id()));
    std::fs::write(&path, "{\"resourceSpans\":[]}\n{\"resourceSpans\": 5}\n").unwrap();
    let p = path.to_str().unwrap();
    let (code, _, err) = analyze(&[p, "--strict"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{p}:2:")) && err.contains("resourceSpans"),
        "{err}"
    );
    let (code, _, err) = analyze(&[p]);
    assert_eq!(code, 0, "without --strict the bad line is skipped");
    assert!(err.contains("1 bad line"), "{err}");
    let (code, _, err) = analyze(&["/nonexistent/capture.jsonl"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/capture.jsonl"), "{err}");
    let (code, _, err) = analyze(&[p, "--fail-on", "sometimes"]);
    assert_eq!(code, 2);
    assert!(err.contains("--fail-on"), "{err}");
}

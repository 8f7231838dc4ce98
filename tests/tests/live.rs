//! End to end: the real-time scenario generator exports through the SDK's
//! OTLP/HTTP exporter to a running collector; live analysis opens the
//! incident, the API and the HTML show it, it resolves once the scenario
//! is over, and a restart keeps it. Headless Chromium then loads every page.

use std::time::{Duration, Instant};

use herdwatch_collector::{app, testsuite};
use herdwatch_samples::live::Protocol;
use herdwatch_samples::{EmitOptions, Scenario};

async fn incidents(dashboard: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let v: serde_json::Value = reqwest::get(format!("http://{dashboard}/api/v1/incidents"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["incidents"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stampede_opens_resolves_survives_restart_and_renders_in_a_browser() {
    // A webhook receiver that refuses the first delivery with a 500.
    let hook = testsuite::WebhookReceiver::default();
    let hook_url = hook.clone().serve().await;
    let dir = testsuite::temp_dir("live");
    let config = testsuite::loopback_config(
        dir.clone(),
        &format!("[alerts]\nwebhook_url = \"{hook_url}\"\nretry_base_ms = 50\n"),
    );
    let running = app::start(config.clone()).await.unwrap();
    let endpoint = format!("http://{}", running.http_addr);
    let speed = 4.0;
    let started = Instant::now();
    let generator = tokio::spawn(async move {
        herdwatch_samples::live::run_with(
            herdwatch_samples::Capture::new(Scenario::SynchronizedExpiry, 7),
            &endpoint,
            Protocol::HttpProtobuf,
            speed,
            EmitOptions::default(),
        )
        .await
    });
    // The stampede starts 90 s into the scenario: 22.5 s at this speed.
    let onset_wall = Duration::from_secs_f64(90.0 / speed);
    let (id, seen_at) = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no incident detected"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let list = incidents(running.dashboard_addr).await;
        if let Some(i) = list.iter().find(|i| i["kind"] == "synchronized-expiry") {
            break (i["id"].as_str().unwrap().to_string(), started.elapsed());
        }
    };
    println!(
        "detection latency: {:.1} s after the scenario's onset",
        seen_at.saturating_sub(onset_wall).as_secs_f64()
    );
    let page = reqwest::get(format!("http://{}/incidents/{id}", running.dashboard_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Cache stampede in catalog"), "{page}");
    let sent = generator
        .await
        .unwrap()
        .expect("generator delivered everything");
    assert!(sent > 50_000);
    // Resolves after the scenario's calm tail.
    let resolved = loop {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "incident never resolved"
        );
        let list = incidents(running.dashboard_addr).await;
        let i = list
            .iter()
            .find(|i| i["id"] == id.as_str())
            .expect("same id while it lasts")
            .clone();
        if !i["end_unix_nano"].is_null() {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        list_kinds(&incidents(running.dashboard_addr).await),
        vec!["synchronized-expiry"]
    );
    // Webhook: one delivery per transition, the refused one retried.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hook.accepted().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = hook.accepted();
    let statuses: Vec<&str> = accepted
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["firing", "resolved"], "{accepted:?}");
    assert_eq!(
        accepted[0]["alerts"][0]["labels"]["incident_id"],
        id.as_str()
    );
    assert_eq!(
        accepted[0]["alerts"][0]["labels"]["kind"],
        "synchronized-expiry"
    );
    assert!(hook.attempts() >= 3, "the 500 was retried");
    browser_pass(running.dashboard_addr, &id).await;
    running.shutdown().await;

    // Restart on the same data directory: the incident is still there.
    let again = app::start(config).await.unwrap();
    let list = incidents(again.dashboard_addr).await;
    let kept = list
        .iter()
        .find(|i| i["id"] == id.as_str())
        .expect("incident kept across restart");
    assert_eq!(kept["end_unix_nano"], resolved["end_unix_nano"]);
    assert!(again.store.stats().totals.spans as u64 >= sent - sent / 100);
    again.shutdown().await;
}

fn list_kinds(list: &[serde_json::Value]) -> Vec<String> {
    list.iter()
        .map(|i| i["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Load each page in headless Chromium: no console errors, well-formed SVG,
/// a screenshot saved as an artifact.
async fn browser_pass(addr: std::net::SocketAddr, id: &str) {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        });
    let Some(chromium) = chromium else {
        assert!(
            std::env::var_os("REQUIRE_CHROMIUM").is_none(),
            "REQUIRE_CHROMIUM is set but no chromium is installed"
        );
        eprintln!("chromium not installed: browser checks skipped (CI installs it)");
        return;
    };
    let artifacts = std::env::var_os("TEST_ARTIFACTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("herdwatch-artifacts"));
    std::fs::create_dir_all(&artifacts).unwrap();
    for (name, path) in [
        ("incidents", "/".to_string()),
        ("incident", format!("/incidents/{id}")),
        ("services", "/services".to_string()),
        ("slos", "/slos".to_string()),
        ("not-found", "/incidents/unknown".to_string()),
    ] {
        let url = format!("http://{addr}{path}");
        let profile = tempdir(name);
        let common = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ];
        let dom = tokio::process::Command::new(chromium)
            .args(common)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--dump-dom", &url])
            .output()
            .await
            .expect("chromium runs");
        let html = String::from_utf8_lossy(&dom.stdout);
        let log = String::from_utf8_lossy(&dom.stderr);
        assert!(
            html.contains("Herdwatch"),
            "{name}: page did not render: {log}"
        );
        let console_errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("CONSOLE") && (l.contains("ERROR") || l.contains("Uncaught")))
            .collect();
        assert!(
            console_errors.is_empty(),
            "{name}: console errors: {console_errors:?}"
        );
        assert_eq!(
            html.matches("<svg").count(),
            html.matches("</svg>").count(),
            "{name}: broken SVG"
        );
        assert!(!html.contains("NaN"), "{name}: NaN in the page");
        let shot = artifacts.join(format!("{name}.png"));
        let status = tokio::process::Command::new(chromium)
            .args(common)
            .arg(format!(
                "--user-data-dir={}",
                tempdir(&format!("{name}-shot")).display()
            ))
            .arg(format!("--screenshot={}", shot.display()))
            .args(["--window-size=1280,1600", &url])
            .output()
            .await
            .unwrap();
        assert!(status.status.success(), "{name}: screenshot failed");
        assert!(
            std::fs::metadata(&shot)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "{name}: empty screenshot"
        );
    }
    println!("screenshots in {}", artifacts.display());
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = testsuite::temp_dir(&format!("chromium-{name}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

//! Self-telemetry: health, readiness, and `/metrics` that passes
//! `promtool check metrics` and counts what was received.

use herdwatch_collector::testsuite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_prometheus_metrics() {
    let app = testsuite::start("ops", "").await;
    for addr in [app.http_addr, app.dashboard_addr] {
        let r = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let body = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/vectors/otlp-examples/trace.json"),
    )
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", app.http_addr))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let metrics = reqwest::get(format!("http://{}/metrics", app.dashboard_addr))
        .await
        .unwrap();
    assert!(
        metrics
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("herdwatch_items_accepted_total{signal=\"traces\",transport=\"http\"} 1"),
        "{text}"
    );
    assert!(text.contains("herdwatch_fsync_duration_seconds_count"));
    match std::process::Command::new("promtool")
        .arg("--version")
        .output()
    {
        Ok(_) => {
            use std::io::Write;
            let mut child = std::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) => assert!(
            std::env::var_os("REQUIRE_PROMTOOL").is_none(),
            "REQUIRE_PROMTOOL is set but promtool is not installed"
        ),
    }
    app.shutdown().await;
}

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

/// `auth_token`: OTLP (HTTP and gRPC) and the dashboard with its API want
/// the token (the dashboard also as a Basic password, so browsers can sign
/// in); probes and `/metrics` do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_otlp_and_the_dashboard_but_not_the_probes() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let app = testsuite::start("auth", "[server]\nauth_token = \"t0ken\"\n").await;
    let web = reqwest::Client::new();
    let body = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/vectors/otlp-examples/trace.json"),
    )
    .unwrap();
    let post = |token: Option<&str>| {
        let mut r = web
            .post(format!("http://{}/v1/traces", app.http_addr))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status().as_u16(), 401);
    assert_eq!(post(Some("wrong")).await.unwrap().status().as_u16(), 401);
    assert_eq!(post(Some("t0ken")).await.unwrap().status().as_u16(), 200);

    let mut grpc = TraceServiceClient::connect(format!("http://{}", app.grpc_addr))
        .await
        .unwrap();
    let request = testsuite::trace_request("auth", 1, 2);
    let refused = grpc.export(request.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut with_token = tonic::Request::new(request);
    with_token
        .metadata_mut()
        .insert("authorization", "Bearer t0ken".parse().unwrap());
    grpc.export(with_token).await.unwrap();

    let dash = app.dashboard_addr;
    for path in ["/", "/api/v1/incidents", "/incidents/none"] {
        let r = web
            .get(format!("http://{dash}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        assert!(
            r.headers()
                .get("www-authenticate")
                .is_some_and(|v| v.to_str().unwrap().starts_with("Basic ")),
            "{path}: a browser is asked to sign in"
        );
    }
    let r = web
        .get(format!("http://{dash}/api/v1/incidents"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = web
        .get(format!("http://{dash}/"))
        .basic_auth("sre", Some("t0ken"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = web
            .get(format!("http://{dash}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} stays open");
    }
    let stats = app.store.stats();
    assert_eq!(
        stats.services["auth"].spans, 2,
        "only the authorised export stored"
    );
    app.shutdown().await;
}

//! Page render latency with 10,000 stored incidents, through the router in
//! process (no network): prints P50 / P99 per page.
//!
//! cargo run --release -p herdwatch-dashboard --example render_bench

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use herdwatch_analyzer::incident::{Incident, Kind, ServiceSummary};
use herdwatch_analyzer::testsuite;
use herdwatch_dashboard::{DashboardConfig, Source, router};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Fixed(Arc<Vec<Incident>>, Vec<ServiceSummary>);

impl Source for Fixed {
    fn incidents(&self) -> Arc<Vec<Incident>> {
        self.0.clone()
    }
    fn incident(&self, id: &str) -> Option<Incident> {
        self.0.iter().find(|i| i.id == id).cloned()
    }
    fn services(&self) -> Vec<ServiceSummary> {
        self.1.clone()
    }
    fn now_unix_nano(&self) -> u64 {
        20_000 * 1_000_000_000
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let kinds = [
        Kind::SynchronizedExpiry,
        Kind::HotKeyExpiry,
        Kind::ColdCache,
        Kind::CacheUnavailable,
        Kind::DbSaturation,
    ];
    let incidents: Vec<Incident> = (0..10_000u64)
        .map(|i| {
            testsuite::incident(
                &format!("{i:016x}"),
                &format!("svc-{}", i % 40),
                kinds[(i % 5) as usize],
                10_000 + i,
                i % 7 == 0,
            )
        })
        .collect();
    let services = (0..40)
        .map(|i| testsuite::service(&format!("svc-{i}")))
        .collect();
    let app = router(
        Arc::new(Fixed(Arc::new(incidents), services)),
        DashboardConfig::default(),
    );
    for (name, uri) in [
        (
            "incident list (10k, filtered to one service)",
            "/?service=svc-3",
        ),
        ("incident list (10k, all)", "/"),
        ("incident page", "/incidents/0000000000001234"),
        ("services", "/services"),
        ("slos", "/slos"),
        (
            "api incidents (one service)",
            "/api/v1/incidents?service=svc-3",
        ),
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..200 {
            let t = Instant::now();
            let resp = app
                .clone()
                .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            bytes = resp.into_body().collect().await.unwrap().to_bytes().len();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "render {name}: P50 {:.2} ms, P99 {:.2} ms ({} KiB)",
            times[times.len() / 2],
            times[times.len() * 99 / 100],
            bytes / 1024
        );
    }
}

//! Every page and API route, in process with `oneshot`: content, empty
//! states, unknown ids, filters, and escaping of untrusted strings.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
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
    fn services(&self) -> Vec<ServiceSummary> {
        self.1.clone()
    }
    fn now_unix_nano(&self) -> u64 {
        2_000_000_000_000
    }
}

const EVIL: &str = "<script>alert(\"x\")</script>'";

fn app(incidents: Vec<Incident>) -> axum::Router {
    let services = vec![testsuite::service(EVIL), testsuite::service("checkout")];
    router(
        Arc::new(Fixed(Arc::new(incidents), services)),
        DashboardConfig {
            trace_link: Some("http://jaeger:16686/trace/{trace_id}".into()),
        },
    )
}

async fn get(app: axum::Router, uri: &str) -> (StatusCode, String) {
    let resp = app
        .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn fixtures() -> Vec<Incident> {
    vec![
        // a1 is still open; b2 has resolved.
        testsuite::incident("a1", EVIL, Kind::HotKeyExpiry, 1000, true),
        testsuite::incident("b2", "checkout", Kind::DbSaturation, 1500, false),
    ]
}

#[tokio::test]
async fn incident_list_shows_rows_and_filters() {
    let (s, body) = get(app(fixtures()), "/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("hot-key-expiry") && body.contains("db-saturation"));
    assert!(body.contains("/incidents/a1"));
    assert!(body.contains("31.00 s"), "peak P95 shown");
    let (_, body) = get(app(fixtures()), "/?kind=db-saturation").await;
    assert!(!body.contains("/incidents/a1") && body.contains("/incidents/b2"));
    let (_, body) = get(app(fixtures()), "/?status=resolved").await;
    assert!(body.contains("/incidents/b2") && !body.contains("/incidents/a1"));
    let (_, body) = get(app(fixtures()), "/?status=open").await;
    assert!(!body.contains("/incidents/b2") && body.contains("/incidents/a1"));
    let (_, body) = get(app(fixtures()), "/?service=nobody").await;
    assert!(body.contains("No incidents match these filters"));
}

#[tokio::test]
async fn empty_states() {
    for (uri, text) in [
        ("/", "No incidents"),
        ("/services", "checkout"),
        ("/slos", "checkout"),
    ] {
        let (s, body) = get(app(vec![]), uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert!(body.contains(text), "{uri}: {body}");
    }
    let empty = router(
        Arc::new(Fixed(Arc::new(vec![]), vec![])),
        DashboardConfig::default(),
    );
    let (_, body) = get(empty.clone(), "/services").await;
    assert!(body.contains("No telemetry yet"));
    let (_, body) = get(empty, "/slos").await;
    assert!(body.contains("No service has sent requests yet"));
}

#[tokio::test]
async fn incident_page_has_cause_timeline_evidence_keys_exemplars_mitigations() {
    let (s, body) = get(app(fixtures()), "/incidents/a1").await;
    assert_eq!(s, StatusCode::OK);
    for needle in [
        "Cache stampede in",
        "<svg",
        "miss burst",
        "Recompute share of database time",
        "82 %",
        "Largest herd",
        "96",
        "http://jaeger:16686/trace/5b8efff798038103d269b633813fc60c",
        "single-flight per key: 4,812 → 37 recomputes",
    ] {
        assert!(body.contains(needle), "missing {needle:?}");
    }
}

#[tokio::test]
async fn a_cache_the_service_stopped_asking_shows_its_lookups_and_fall_through_share() {
    let mut i = testsuite::incident("c3", "catalog", Kind::CacheUnavailable, 1000, true);
    i.evidence.lookups_per_request_before = Some(1.0);
    i.evidence.lookups_per_request_during = Some(0.004);
    i.evidence.recompute_share = Some(0.97);
    i.evidence.onsets.cache_bypass_unix_nano = Some(i.onset_unix_nano);
    let (s, body) = get(app(vec![i]), "/incidents/c3").await;
    assert_eq!(s, StatusCode::OK);
    for needle in [
        "Lookups per request",
        "1.00 baseline → 0.00 while the cache was not asked",
        "Fall-through share of database time",
        "97 %",
        "lookups stopped",
    ] {
        assert!(body.contains(needle), "missing {needle:?}");
    }
    assert!(!body.contains("Recompute share of database time"));
}

#[tokio::test]
async fn untrusted_strings_are_escaped_everywhere() {
    for uri in ["/", "/incidents/a1", "/services", "/slos"] {
        let (_, body) = get(app(fixtures()), uri).await;
        assert!(
            !body.contains("<script>alert"),
            "{uri} leaks a raw script tag"
        );
        assert!(
            body.contains("&lt;script&gt;") || body.contains("&#60;script&#62;"),
            "{uri}: {body}"
        );
    }
}

#[tokio::test]
async fn unknown_ids_and_paths_are_404() {
    let (s, body) = get(app(fixtures()), "/incidents/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("no incident with id nope"));
    let (s, _) = get(app(fixtures()), "/nowhere").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = get(app(fixtures()), "/api/v1/incidents/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("\"error\""));
    let (s, _) = get(app(fixtures()), "/api/v1/nothing").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn json_api_carries_the_spec_fields() {
    let (s, body) = get(app(fixtures()), "/api/v1/incidents").await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["schema_version"], 1);
    let i = &v["incidents"][0];
    for key in [
        "id",
        "service",
        "kind",
        "severity",
        "confidence",
        "onset_unix_nano",
        "peak_unix_nano",
        "end_unix_nano",
        "evidence",
        "timeline",
        "exemplars",
        "mitigations",
    ] {
        assert!(i.get(key).is_some(), "missing {key}");
    }
    assert_eq!(i["kind"], "hot-key-expiry");
    assert_eq!(i["severity"], "page");
    assert!(
        v["incidents"][0]["end_unix_nano"].is_null(),
        "open incidents have a null end"
    );
    assert!(v["incidents"][1]["end_unix_nano"].is_u64());
    let (_, body) = get(app(fixtures()), "/api/v1/incidents?severity=ticket").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["incidents"].as_array().unwrap().len(), 0);
    let (_, body) = get(app(fixtures()), "/api/v1/incidents/b2").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"],
        "b2"
    );
    let (_, body) = get(app(fixtures()), "/api/v1/services").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["services"][1]["service"],
        "checkout"
    );
    let (_, body) = get(app(fixtures()), "/api/v1/slos").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["slos"][0]["target"], 0.99);
}

#[tokio::test]
async fn long_lists_are_capped_and_say_how_many_more() {
    let many: Vec<Incident> = (0..600)
        .map(|i| {
            testsuite::incident(
                &format!("id{i}"),
                "checkout",
                Kind::DbSaturation,
                1000 + i,
                false,
            )
        })
        .collect();
    let (_, body) = get(app(many), "/").await;
    assert_eq!(body.matches("href=\"/incidents/").count(), 500);
    assert!(body.contains("and 100 more"), "the rest is counted");
}

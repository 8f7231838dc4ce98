//! Herdwatch's dashboard: server-rendered pages (askama, fully usable
//! without JavaScript; a meta refresh keeps lists live) and the JSON API
//! under `/api/v1/`. It renders incidents and service summaries handed to it
//! through [`Source`]; it never sees a DataFrame or the store.

pub mod svg;

use std::collections::BTreeSet;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herdwatch_analyzer::incident::{Incident, Kind, Report, ServiceSummary};
use herdwatch_analyzer::report::rfc3339;
use herdwatch_analyzer::slo::Severity;
use serde::Deserialize;

/// Where the dashboard's data comes from (the live pipeline, or a report).
pub trait Source: Send + Sync + 'static {
    /// Every known incident, newest first: a shared snapshot, not a copy.
    fn incidents(&self) -> Arc<Vec<Incident>>;
    fn incident(&self, id: &str) -> Option<Incident> {
        self.incidents().iter().find(|i| i.id == id).cloned()
    }
    fn services(&self) -> Vec<ServiceSummary>;
    /// "Now" in data time, for durations of open incidents.
    fn now_unix_nano(&self) -> u64;
}

/// Presentation settings.
#[derive(Debug, Clone, Default)]
pub struct DashboardConfig {
    /// Exemplar link template; `{trace_id}` is replaced.
    pub trace_link: Option<String>,
}

#[derive(Clone)]
struct AppState {
    source: Arc<dyn Source>,
    config: Arc<DashboardConfig>,
}

/// Pages and API routes.
pub fn router(source: Arc<dyn Source>, config: DashboardConfig) -> Router {
    Router::new()
        .route("/", get(incidents_page))
        .route("/incidents/{id}", get(incident_page))
        .route("/services", get(services_page))
        .route("/slos", get(slos_page))
        .route("/api/v1/incidents", get(api_incidents))
        .route("/api/v1/incidents/{id}", get(api_incident))
        .route("/api/v1/services", get(api_services))
        .route("/api/v1/slos", get(api_slos))
        .fallback(not_found)
        .with_state(AppState {
            source,
            config: Arc::new(config),
        })
}

/// Incident list filters (query string).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filter {
    pub service: Option<String>,
    pub kind: Option<String>,
    pub severity: Option<String>,
    /// `open` or `resolved`.
    pub status: Option<String>,
    /// Only incidents that started within this many minutes of now.
    pub since_minutes: Option<String>,
}

impl Filter {
    fn set(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }

    pub fn is_set(&self) -> bool {
        [
            &self.service,
            &self.kind,
            &self.severity,
            &self.status,
            &self.since_minutes,
        ]
        .iter()
        .any(|v| Self::set(v).is_some())
    }

    pub fn matches(&self, i: &Incident, now: u64) -> bool {
        Self::set(&self.service).is_none_or(|s| s == i.service)
            && Self::set(&self.kind).is_none_or(|k| k == i.kind.as_str())
            && Self::set(&self.severity).is_none_or(|s| s == i.severity.as_str())
            && Self::set(&self.status).is_none_or(|s| match s {
                "open" => i.is_open(),
                "resolved" => !i.is_open(),
                _ => true,
            })
            && Self::set(&self.since_minutes)
                .and_then(|m| m.parse::<f64>().ok())
                .is_none_or(|m| i.onset_unix_nano as f64 >= now as f64 - m * 60e9)
    }
}

fn html(t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed").into_response()
        }
    }
}

/// One row of an incident list.
pub struct Row {
    pub id: String,
    pub severity: &'static str,
    pub kind: &'static str,
    pub service: String,
    pub start: String,
    pub duration: String,
    pub peak_p95: String,
    pub herd: u64,
    pub status: &'static str,
}

fn fmt_duration(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1} h", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.0} min {:.0} s", (secs / 60.0).floor(), secs % 60.0)
    } else {
        format!("{secs:.0} s")
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

pub fn row(i: &Incident, now: u64) -> Row {
    Row {
        id: i.id.clone(),
        severity: i.severity.as_str(),
        kind: i.kind.as_str(),
        service: i.service.clone(),
        start: rfc3339(i.onset_unix_nano),
        duration: fmt_duration(i.duration_seconds(now)),
        peak_p95: fmt_ms(i.evidence.p95_peak_ms),
        herd: i.evidence.herd_max,
        status: if i.is_open() { "open" } else { "resolved" },
    }
}

/// Rows an incident list shows at most; the rest are counted.
const MAX_ROWS: usize = 500;

#[derive(Template)]
#[template(path = "incidents.html")]
struct IncidentsPage {
    refresh: bool,
    standalone: bool,
    rows: Vec<Row>,
    more: usize,
    services: Vec<String>,
    kinds: Vec<&'static str>,
    severities: Vec<&'static str>,
    filter_service: String,
    filter_kind: String,
    filter_severity: String,
    filter_status: String,
    filter_since: String,
    filtered: bool,
}

async fn incidents_page(State(st): State<AppState>, Query(f): Query<Filter>) -> Response {
    let now = st.source.now_unix_nano();
    let all = st.source.incidents();
    let mut services: BTreeSet<String> = all.iter().map(|i| i.service.clone()).collect();
    services.extend(st.source.services().into_iter().map(|s| s.service));
    let matching: Vec<&Incident> = all.iter().filter(|i| f.matches(i, now)).collect();
    let more = matching.len().saturating_sub(MAX_ROWS);
    let rows = matching
        .iter()
        .take(MAX_ROWS)
        .map(|i| row(i, now))
        .collect();
    html(&IncidentsPage {
        refresh: true,
        standalone: false,
        rows,
        more,
        services: services.into_iter().collect(),
        kinds: vec![
            Kind::SynchronizedExpiry.as_str(),
            Kind::HotKeyExpiry.as_str(),
            Kind::ColdCache.as_str(),
            Kind::CacheUnavailable.as_str(),
            Kind::DbSaturation.as_str(),
        ],
        severities: vec![
            Severity::Page.as_str(),
            Severity::Ticket.as_str(),
            Severity::Info.as_str(),
        ],
        filter_service: f.service.clone().unwrap_or_default(),
        filter_kind: f.kind.clone().unwrap_or_default(),
        filter_severity: f.severity.clone().unwrap_or_default(),
        filter_status: f.status.clone().unwrap_or_default(),
        filter_since: f.since_minutes.clone().unwrap_or_default(),
        filtered: f.is_set(),
    })
}

pub struct ExemplarRow {
    pub trace_id: String,
    pub link: String,
    pub route: String,
    pub duration: String,
    pub why: &'static str,
}

#[derive(Template)]
#[template(path = "incident_section.html")]
struct IncidentSection<'a> {
    i: &'a Incident,
    onset: String,
    peak: String,
    end: String,
    confidence: String,
    timeline_svg: String,
    evidence: Vec<(String, String)>,
    exemplars: Vec<ExemplarRow>,
}

#[derive(Template)]
#[template(path = "incident.html")]
struct IncidentPage {
    refresh: bool,
    standalone: bool,
    title: String,
    section: String,
}

/// The evidence table, label and value, all computed from the incident.
pub fn evidence_rows(i: &Incident) -> Vec<(String, String)> {
    let e = &i.evidence;
    let mut v = vec![
        (
            "Misses per second".to_string(),
            format!(
                "{:.1} baseline → {:.1} peak",
                e.miss_rate_baseline_per_s, e.miss_rate_peak_per_s
            ),
        ),
        (
            "Miss ratio".into(),
            format!(
                "{} → {}",
                pct(e.miss_ratio_baseline),
                pct(e.miss_ratio_peak)
            ),
        ),
        (
            "Recomputes".into(),
            format!(
                "{} of {} distinct keys (duplicate ratio {:.1})",
                e.recomputes, e.distinct_keys_recomputed, e.duplicate_ratio
            ),
        ),
        ("Largest herd".into(), e.herd_max.to_string()),
    ];
    if let (Some(before), Some(during)) =
        (e.lookups_per_request_before, e.lookups_per_request_during)
    {
        v.push((
            "Lookups per request".into(),
            format!("{before:.2} baseline → {during:.2} while the cache was not asked"),
        ));
    }
    if let Some(s) = e.recompute_share {
        let label = if e.cache_bypassed() {
            "Fall-through share of database time"
        } else {
            "Recompute share of database time"
        };
        v.push((label.into(), pct(s)));
    }
    if let Some(p) = e.pool_use_peak {
        v.push(("Pool use peak".into(), pct(p)));
    }
    if let Some(p) = e.pending_peak {
        v.push(("Pending connection requests peak".into(), format!("{p:.0}")));
    }
    v.push((
        "Database operations in flight, peak".into(),
        format!("{:.0}", e.db_inflight_peak),
    ));
    v.push((
        "Database P95".into(),
        format!(
            "{} before → {} peak",
            fmt_ms(e.db_p95_before_ms),
            fmt_ms(e.db_p95_peak_ms)
        ),
    ));
    v.push((
        "Request P95".into(),
        format!(
            "{} before → {} peak",
            fmt_ms(e.p95_before_ms),
            fmt_ms(e.p95_peak_ms)
        ),
    ));
    v.push((
        "Burn rates".into(),
        e.burn_rates
            .iter()
            .map(|w| format!("{} {:.1}", w.window, w.burn_rate))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    v.push((
        "Error budget consumed".into(),
        format!(
            "{:.2} % of the period ({})",
            e.budget_consumed * 100.0,
            e.slo
        ),
    ));
    v.push((
        "Bad requests".into(),
        format!("{} of {}", e.bad_requests, e.requests),
    ));
    if e.failed_lookups > 0 {
        v.push(("Failed lookups".into(), e.failed_lookups.to_string()));
    }
    if let Some(m) = &e.marker {
        v.push(("Marker before onset".into(), m.clone()));
    }
    if let (Some(c), Some(s)) = (e.fill_cluster_share, e.fill_spread_seconds) {
        v.push((
            "Previous fills of the missed keys".into(),
            format!("{:.0} % within {s:.1} s of each other", c * 100.0),
        ));
    }
    if e.retries > 0 {
        v.push(("Retried requests".into(), e.retries.to_string()));
    }
    for g in &e.gaps {
        v.push(("Not visible".into(), g.clone()));
    }
    v
}

fn trace_link(template: &Option<String>, trace_id: &str) -> String {
    template
        .as_deref()
        .map(|t| t.replace("{trace_id}", trace_id))
        .unwrap_or_default()
}

/// The incident's body (also used by the standalone report).
pub fn incident_section(i: &Incident, config: &DashboardConfig) -> String {
    let times: Vec<u64> = i.timeline.iter().map(|p| p.t_unix_nano).collect();
    let panels = [
        svg::Panel {
            label: "Cache misses",
            unit: "per s",
            values: i.timeline.iter().map(|p| p.misses_per_s).collect(),
        },
        svg::Panel {
            label: "Herd (recomputes of one key in flight)",
            unit: "count",
            values: i.timeline.iter().map(|p| p.herd).collect(),
        },
        svg::Panel {
            label: "DB pool use",
            unit: "%",
            values: i
                .timeline
                .iter()
                .map(|p| p.pool_use.map(|u| u * 100.0).unwrap_or(f64::NAN))
                .collect(),
        },
        svg::Panel {
            label: "DB operations in flight",
            unit: "count",
            values: i.timeline.iter().map(|p| p.db_in_flight).collect(),
        },
        svg::Panel {
            label: "Request P95",
            unit: "ms",
            values: i.timeline.iter().map(|p| p.p95_ms).collect(),
        },
        svg::Panel {
            label: "Burn rate",
            unit: "× budget",
            values: i.timeline.iter().map(|p| p.burn_rate).collect(),
        },
    ];
    let o = &i.evidence.onsets;
    let mut markers = Vec::new();
    if let Some(t) = o.miss_burst_unix_nano {
        markers.push(svg::Marker {
            label: "miss burst",
            t_unix_nano: t,
            color: "#c62828",
        });
    }
    if let Some(t) = o.cache_bypass_unix_nano {
        markers.push(svg::Marker {
            label: "lookups stopped",
            t_unix_nano: t,
            color: "#1565c0",
        });
    }
    if let Some(t) = o.db_saturation_unix_nano {
        markers.push(svg::Marker {
            label: "db saturation",
            t_unix_nano: t,
            color: "#6a1b9a",
        });
    }
    if let Some(t) = o.latency_spike_unix_nano {
        markers.push(svg::Marker {
            label: "latency spike",
            t_unix_nano: t,
            color: "#ef6c00",
        });
    }
    let mut exemplars: Vec<ExemplarRow> = i
        .exemplars
        .worst_requests
        .iter()
        .map(|x| ExemplarRow {
            link: trace_link(&config.trace_link, &x.trace_id),
            trace_id: x.trace_id.clone(),
            route: x.route.clone(),
            duration: fmt_ms(x.duration_ms),
            why: "slowest request",
        })
        .collect();
    exemplars.extend(i.exemplars.largest_herd.iter().map(|x| ExemplarRow {
        link: trace_link(&config.trace_link, &x.trace_id),
        trace_id: x.trace_id.clone(),
        route: x.route.clone(),
        duration: fmt_ms(x.duration_ms),
        why: "in the largest herd",
    }));
    let section = IncidentSection {
        i,
        onset: rfc3339(i.onset_unix_nano),
        peak: rfc3339(i.peak_unix_nano),
        end: i
            .end_unix_nano
            .map(|e| format!("resolved {}", rfc3339(e)))
            .unwrap_or_else(|| "open".into()),
        confidence: format!("{:.2}", i.confidence),
        timeline_svg: svg::timeline(&times, i.onset_unix_nano, &panels, &markers),
        evidence: evidence_rows(i),
        exemplars,
    };
    section
        .render()
        .unwrap_or_else(|e| format!("<p>rendering failed: {e}</p>"))
}

async fn incident_page(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match st.source.incident(&id) {
        Some(i) => html(&IncidentPage {
            refresh: i.is_open(),
            standalone: false,
            title: format!("{} in {}", i.kind.as_str(), i.service),
            section: incident_section(&i, &st.config),
        }),
        None => not_found_page(&format!("There is no incident with id {id}.")),
    }
}

pub struct ServiceRow {
    pub service: String,
    pub miss: String,
    pub pool: String,
    pub p95: String,
    pub burn: String,
    pub spark_miss: String,
    pub spark_pool: String,
    pub spark_p95: String,
    pub spark_burn: String,
}

#[derive(Template)]
#[template(path = "services.html")]
struct ServicesPage {
    refresh: bool,
    standalone: bool,
    rows: Vec<ServiceRow>,
}

async fn services_page(State(st): State<AppState>) -> Response {
    let rows = st
        .source
        .services()
        .iter()
        .map(|s| ServiceRow {
            service: s.service.clone(),
            miss: pct(s.miss_ratio),
            pool: s.pool_use.map(pct).unwrap_or_else(|| "—".into()),
            p95: fmt_ms(s.p95_ms),
            burn: format!("{:.1}", s.burn_rate),
            spark_miss: svg::sparkline(&s.spark_miss_ratio),
            spark_pool: svg::sparkline(&s.spark_pool_use),
            spark_p95: svg::sparkline(&s.spark_p95_ms),
            spark_burn: svg::sparkline(&s.spark_burn),
        })
        .collect();
    html(&ServicesPage {
        refresh: true,
        standalone: false,
        rows,
    })
}

pub struct SloRow {
    pub service: String,
    pub objective: String,
    pub burns: Vec<String>,
    pub budget: String,
}

#[derive(Template)]
#[template(path = "slos.html")]
struct SlosPage {
    refresh: bool,
    standalone: bool,
    windows: Vec<String>,
    rows: Vec<SloRow>,
}

async fn slos_page(State(st): State<AppState>) -> Response {
    let services = st.source.services();
    let windows: Vec<String> = services
        .first()
        .map(|s| s.burn_rates.iter().map(|w| w.window.clone()).collect())
        .unwrap_or_default();
    let rows = services
        .iter()
        .map(|s| SloRow {
            service: s.service.clone(),
            objective: s.slo.clone(),
            burns: windows
                .iter()
                .map(|w| {
                    s.burn_rates
                        .iter()
                        .find(|b| &b.window == w)
                        .map(|b| format!("{:.2}", b.burn_rate))
                        .unwrap_or_default()
                })
                .collect(),
            budget: pct(s.budget_remaining.clamp(-9.99, 1.0)),
        })
        .collect();
    html(&SlosPage {
        refresh: true,
        standalone: false,
        windows,
        rows,
    })
}

async fn api_incidents(State(st): State<AppState>, Query(f): Query<Filter>) -> Response {
    let now = st.source.now_unix_nano();
    let all = st.source.incidents();
    let incidents: Vec<&Incident> = all.iter().filter(|i| f.matches(i, now)).collect();
    Json(serde_json::json!({ "schema_version": herdwatch_analyzer::incident::SCHEMA_VERSION, "incidents": incidents })).into_response()
}

async fn api_incident(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match st.source.incident(&id) {
        Some(i) => Json(i).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no incident with id {id}") })),
        )
            .into_response(),
    }
}

async fn api_services(State(st): State<AppState>) -> Response {
    Json(serde_json::json!({ "services": st.source.services() })).into_response()
}

async fn api_slos(State(st): State<AppState>) -> Response {
    let slos: Vec<serde_json::Value> = st
        .source
        .services()
        .iter()
        .map(|s| {
            serde_json::json!({
                "service": s.service,
                "objective": s.slo,
                "target": s.slo_target,
                "threshold_ms": s.slo_threshold_ms,
                "burn_rates": s.burn_rates,
                "budget_remaining": s.budget_remaining,
            })
        })
        .collect();
    Json(serde_json::json!({ "slos": slos })).into_response()
}

#[derive(Template)]
#[template(path = "not_found.html")]
struct NotFoundPage {
    refresh: bool,
    standalone: bool,
    what: String,
}

fn not_found_page(what: &str) -> Response {
    let mut r = html(&NotFoundPage {
        refresh: false,
        standalone: false,
        what: what.to_string(),
    });
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": format!("no such endpoint {}", uri.path()) }).to_string(),
        )
            .into_response();
    }
    not_found_page(&format!("There is no page at {}.", uri.path()))
}

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage {
    refresh: bool,
    standalone: bool,
    summary: String,
    notes: Vec<String>,
    rows: Vec<Row>,
    sections: Vec<String>,
}

/// A standalone HTML page of a batch report (`herdwatch analyze --format html`).
pub fn render_report(report: &Report, config: &DashboardConfig) -> String {
    let now = report.input.end_unix_nano;
    let page = ReportPage {
        refresh: false,
        standalone: true,
        summary: format!(
            "{} spans in {} traces and {} metric points, {} → {}",
            report.input.spans,
            report.input.traces,
            report.input.metric_points,
            rfc3339(report.input.start_unix_nano),
            rfc3339(report.input.end_unix_nano)
        ),
        notes: report.notes.clone(),
        rows: report.incidents.iter().map(|i| row(i, now)).collect(),
        sections: report
            .incidents
            .iter()
            .map(|i| incident_section(i, config))
            .collect(),
    };
    page.render()
        .unwrap_or_else(|e| format!("rendering failed: {e}"))
}

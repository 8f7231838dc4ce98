//! Live analysis: every tick, off the runtime, take the rows stored since
//! the last tick from the store's memory, feed them to the incremental
//! analysis (which rebuilds only the buckets they touch), merge what is
//! found into the incident registry (an incident keeps its id while it
//! lasts; it ends when detection says it has been calm long enough), and
//! persist the registry so open incidents survive a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use herdwatch_analyzer::Analyzer;
use herdwatch_analyzer::incident::{Incident, ServiceSummary};
use herdwatch_analyzer::live::{LiveAnalysis, LiveSettings};
use herdwatch_dashboard::{DashboardConfig, Source};
use tokio::sync::watch;

use crate::alerts::Notifier;
use crate::config::Config;
use crate::store::{Store, TailCursor};
use crate::telemetry::Metrics;

const REGISTRY_FILE: &str = "incidents.json";
/// Spans a pass takes from the store at most (a backlog, such as what was
/// recovered at start, is worked off over several passes).
const TAIL_SPANS_PER_PASS: usize = 400_000;
/// Incidents kept in the registry at most (oldest resolved ones go first).
const MAX_INCIDENTS: usize = 10_000;

struct Inner {
    /// Replaced copy-on-write, so readers share one snapshot.
    incidents: RwLock<Arc<Vec<Incident>>>,
    services: RwLock<Vec<ServiceSummary>>,
    now: AtomicU64,
    path: PathBuf,
}

/// Handle to the live analysis.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct LiveSource(Arc<Inner>);

impl Source for LiveSource {
    fn incidents(&self) -> Arc<Vec<Incident>> {
        self.0
            .incidents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn incident(&self, id: &str) -> Option<Incident> {
        self.0
            .incidents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|i| i.id == id)
            .cloned()
    }
    fn services(&self) -> Vec<ServiceSummary> {
        self.0
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn now_unix_nano(&self) -> u64 {
        self.0.now.load(Ordering::Relaxed)
    }
}

/// What one merge changed, by incident id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    pub opened: Vec<String>,
    pub resolved: Vec<String>,
    /// Still open, with another kind or severity than before (a hot key
    /// first read as a synchronized expiry; a ticket that became a page).
    pub relabelled: Vec<String>,
}

/// Merge one pass's detections, made over a window starting at
/// `window_from`, into the registry.
///
/// An incident the window still sees whole takes the detection's onset,
/// the one made over the most data, so the live onset converges to the
/// batch analysis'; one that began before the window keeps the earliest
/// onset it was given, since the window sees only its tail.
pub fn merge(
    registry: &mut Vec<Incident>,
    detected: Vec<Incident>,
    window_from: u64,
) -> Transitions {
    let mut t = Transitions::default();
    for d in detected {
        let tolerance = 120_000_000_000u64;
        let existing = registry.iter_mut().find(|e| {
            e.service == d.service
                && (e.is_open()
                    || e.end_unix_nano
                        .is_some_and(|end| end + tolerance >= d.onset_unix_nano))
                && d.onset_unix_nano + tolerance >= e.onset_unix_nano
                && e.onset_unix_nano + tolerance >= d.onset_unix_nano
        });
        match existing {
            Some(e) => {
                let was_open = e.is_open();
                let labels = (e.kind, e.severity);
                let id = e.id.clone();
                let earliest = e.onset_unix_nano.min(d.onset_unix_nano);
                let onset = if earliest >= window_from {
                    d.onset_unix_nano
                } else {
                    earliest
                };
                *e = d;
                e.id = id;
                e.onset_unix_nano = onset;
                if was_open && !e.is_open() {
                    t.resolved.push(e.id.clone());
                } else if was_open && labels != (e.kind, e.severity) {
                    t.relabelled.push(e.id.clone());
                }
            }
            None => {
                t.opened.push(d.id.clone());
                if !d.is_open() {
                    t.resolved.push(d.id.clone());
                }
                registry.push(d);
            }
        }
    }
    registry.sort_by_key(|i| std::cmp::Reverse(i.onset_unix_nano));
    if registry.len() > MAX_INCIDENTS {
        registry.truncate(MAX_INCIDENTS);
    }
    t
}

/// Queue the webhook deliveries of one merge's transitions, `reg` being
/// the registry after it and `now` the analysed data time: opened (firing),
/// refined (the alert it fired as resolved, the one it is now firing),
/// resolved (with the labels it last fired with).
pub fn deliver(
    notifier: &Notifier,
    dashboard: &str,
    reg: &[Incident],
    t: &Transitions,
    now_unix_nano: u64,
) {
    let find = |id: &String| reg.iter().find(|i| &i.id == id);
    for i in t.opened.iter().filter_map(find) {
        let mut firing = i.clone();
        firing.end_unix_nano = None;
        notifier.notify(&firing, dashboard);
    }
    for i in t.relabelled.iter().filter_map(find) {
        notifier.relabel(i, now_unix_nano, dashboard);
    }
    for i in t.resolved.iter().filter_map(find) {
        notifier.notify(i, dashboard);
    }
}

impl Live {
    /// Load the registry and start the tick loop.
    pub fn start(
        config: &Config,
        store: Store,
        metrics: Arc<Metrics>,
        dashboard_url: String,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let path = config.store.dir.join(REGISTRY_FILE);
        let incidents: Vec<Incident> = std::fs::read(&path)
            .ok()
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the incident registry; starting empty");
                    None
                }
            })
            .unwrap_or_default();
        if !incidents.is_empty() {
            tracing::info!(incidents = incidents.len(), "incident registry restored");
        }
        metrics
            .open_incidents
            .set(incidents.iter().filter(|i| i.is_open()).count() as u64);
        let inner = Arc::new(Inner {
            incidents: RwLock::new(Arc::new(incidents)),
            services: RwLock::new(Vec::new()),
            now: AtomicU64::new(0),
            path,
        });
        let live = Self { inner };
        let analyzer = Analyzer::new(config.analysis.clone(), config.slos.clone());
        let notifier = config.webhook_url.clone().map(|url| {
            (
                Notifier::start(url, config.webhook_retry_base),
                dashboard_url,
            )
        });
        if !config.live_analysis {
            tracing::info!("live analysis is off");
            return live;
        }
        let mut settings = LiveSettings::new(config.live_window.as_nanos() as u64);
        settings.max_fact_bytes = config.live_fact_bytes;
        tokio::spawn(
            live.clone()
                .run(analyzer, store, metrics, settings, notifier, shutdown),
        );
        live
    }

    pub fn dashboard_router(&self, config: &Config) -> Router {
        herdwatch_dashboard::router(
            Arc::new(LiveSource(self.inner.clone())),
            DashboardConfig {
                trace_link: config.trace_link.clone(),
            },
        )
    }

    async fn run(
        self,
        analyzer: Analyzer,
        store: Store,
        metrics: Arc<Metrics>,
        settings: LiveSettings,
        notifier: Option<(Notifier, String)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let fresh = || {
            (
                LiveAnalysis::new(analyzer.clone(), settings.clone()),
                TailCursor::default(),
            )
        };
        let mut state = Some(fresh());
        // Whether the last pass left work for the next one (traces pending,
        // facts just reduced): without new rows and without it, a pass would
        // find what the last one found.
        let mut unsettled = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            let started = Instant::now();
            let (mut live, mut cursor) = state.take().unwrap_or_else(fresh);
            let (store2, restart) = (store.clone(), fresh());
            let result = tokio::task::spawn_blocking(move || {
                let batch = match store2.tail(&mut cursor, TAIL_SPANS_PER_PASS) {
                    Ok(b) => b,
                    Err(e) => {
                        // Start over from what memory holds: the window
                        // is rebuilt from it on this pass.
                        tracing::warn!(error = %e, "live analysis starts over");
                        (live, cursor) = restart;
                        store2
                            .tail(&mut cursor, TAIL_SPANS_PER_PASS)
                            .unwrap_or_default()
                    }
                };
                let new_rows = !batch.is_empty();
                live.push(batch);
                let out = (new_rows || unsettled).then(|| live.tick());
                (live, cursor, out)
            })
            .await;
            let ((report, stats), window_from) = match result {
                Ok((live, cursor, out)) => {
                    let (latest, window_from) = (live.latest(), live.window_from());
                    state = Some((live, cursor));
                    match out {
                        None => continue,
                        Some(Ok(r)) => {
                            self.inner.now.store(latest, Ordering::Relaxed);
                            (r, window_from)
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "live analysis failed");
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "live analysis task failed; starting over");
                    continue;
                }
            };
            unsettled = stats.pending_traces > 0 || stats.traces > 0;
            metrics.analysis_rebuilt_buckets.add(stats.rebuilt_buckets);
            metrics.analysis_ticks.add(1);
            let took = started.elapsed();
            metrics.analysis_duration.observe(took);
            // Keep analysis to about a fifth of a core: a pass that took T
            // is followed by at least 4 T of rest (ticks stay at 1 s while
            // passes are under 250 ms).
            if took > Duration::from_millis(250) {
                tracing::debug!(
                    took_ms = took.as_millis() as u64,
                    "live analysis pass was slow; backing off"
                );
                tokio::select! {
                    _ = tokio::time::sleep(took * 4) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
            *self
                .inner
                .services
                .write()
                .unwrap_or_else(|e| e.into_inner()) = report.services;
            let (t, snapshot) = {
                let mut reg = self
                    .inner
                    .incidents
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                // Copy-on-write: readers keep the snapshot they hold.
                let t = merge(Arc::make_mut(&mut reg), report.incidents, window_from);
                metrics
                    .open_incidents
                    .set(reg.iter().filter(|i| i.is_open()).count() as u64);
                let snapshot = (t != Transitions::default() || reg.iter().any(|i| i.is_open()))
                    .then(|| reg.clone());
                (t, snapshot)
            };
            for id in &t.opened {
                tracing::info!(incident = %id, "incident opened");
            }
            for id in &t.relabelled {
                tracing::info!(incident = %id, "incident refined");
            }
            for id in &t.resolved {
                tracing::info!(incident = %id, "incident resolved");
            }
            if let Some((notifier, url)) = &notifier {
                let reg = self
                    .inner
                    .incidents
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                let now = self.inner.now.load(Ordering::Relaxed);
                deliver(notifier, url, &reg, &t, now);
            }
            if let Some(snapshot) = snapshot {
                let path = self.inner.path.clone();
                let _ = tokio::task::spawn_blocking(move || persist(&path, &snapshot)).await;
            }
        }
    }
}

/// Write the registry atomically (temp file, fsync, rename).
fn persist(path: &std::path::Path, incidents: &[Incident]) {
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec(incidents)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot persist the incident registry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herdwatch_analyzer::incident::Kind;
    use herdwatch_analyzer::testsuite::incident;

    #[test]
    fn merge_keeps_the_id_while_an_incident_lasts_and_reports_transitions() {
        let s = 1_000_000_000;
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut reg = Vec::new();
        let t = merge(
            &mut reg,
            vec![incident(
                "first",
                "shop",
                Kind::SynchronizedExpiry,
                1000,
                true,
            )],
            0,
        );
        assert_eq!(
            t,
            Transitions {
                opened: ids(&["first"]),
                ..Transitions::default()
            }
        );
        // Next pass, over more data: same incident, onset a bucket later,
        // new id from detection. The id stays; the onset is the new one.
        let t = merge(
            &mut reg,
            vec![incident(
                "other",
                "shop",
                Kind::SynchronizedExpiry,
                1001,
                true,
            )],
            0,
        );
        assert_eq!(t, Transitions::default());
        assert_eq!(reg.len(), 1);
        assert_eq!(
            (reg[0].id.as_str(), reg[0].onset_unix_nano),
            ("first", 1001 * s)
        );
        // The window has moved past the onset and sees only the tail: the
        // onset it finds is not the incident's, the earliest one stays.
        // The kind is refined meanwhile: a relabel.
        let t = merge(
            &mut reg,
            vec![incident("tail", "shop", Kind::HotKeyExpiry, 1003, true)],
            1002 * s,
        );
        assert_eq!(
            t,
            Transitions {
                relabelled: ids(&["first"]),
                ..Transitions::default()
            }
        );
        assert_eq!(
            (reg[0].id.as_str(), reg[0].onset_unix_nano, reg[0].kind),
            ("first", 1001 * s, Kind::HotKeyExpiry)
        );
        // It ends: one resolve transition, still the first id.
        let t = merge(
            &mut reg,
            vec![incident("x", "shop", Kind::SynchronizedExpiry, 1001, false)],
            0,
        );
        assert_eq!(
            t,
            Transitions {
                resolved: ids(&["first"]),
                ..Transitions::default()
            }
        );
        // Another service, much later: a new incident.
        let t = merge(
            &mut reg,
            vec![incident("late", "billing", Kind::DbSaturation, 9000, true)],
            0,
        );
        assert_eq!(t.opened, ids(&["late"]));
        assert_eq!(reg.len(), 2);
        assert_eq!(reg[0].id, "late", "newest first");
    }
}

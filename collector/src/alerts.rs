//! Webhook alerts on incident open, refinement and resolve, in the Alertmanager webhook
//! shape (`version: "4"`, `status`, `alerts[]` with labels, annotations,
//! `startsAt`/`endsAt`). Deliveries go through a bounded queue to one task
//! that retries with exponential backoff and full jitter; the analysis only
//! enqueues and never waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herdwatch_analyzer::incident::Incident;
use herdwatch_analyzer::report::rfc3339;
use herdwatch_analyzer::slo::Severity;
use serde_json::json;
use tokio::sync::mpsc;

/// Deliveries waiting at most; past it the oldest alert is dropped and logged.
const QUEUE: usize = 256;
const MAX_ATTEMPTS: u32 = 8;

/// Handle used by the live analysis.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<serde_json::Value>,
    labels: Arc<Mutex<FiringLabels>>,
}

/// The labels each firing alert was sent with. An incident's kind and
/// severity can be refined while it is open; its resolve must carry the
/// labels it fired with, or a receiver (Alertmanager groups and matches on
/// labels) would see a new alert resolved and the old one firing on.
#[derive(Debug, Default)]
pub struct FiringLabels {
    sent: HashMap<String, serde_json::Value>,
}

/// What [`FiringLabels::relabel`] found.
#[derive(Debug, PartialEq)]
pub enum Relabel {
    /// Nothing to say: the alert as it fired still fits.
    Same,
    /// Refined: these are the labels the alert fired with.
    From(serde_json::Value),
    /// Not seen firing (it did before a restart).
    Unknown,
}

/// Firing alerts remembered at most (the oldest are forgotten first).
const MAX_FIRING: usize = 10_000;

impl FiringLabels {
    /// The labels for this transition of `i`.
    pub fn for_transition(&mut self, i: &Incident) -> serde_json::Value {
        let current = labels(i);
        if i.is_open() {
            self.remember(&i.id, current.clone());
            current
        } else {
            self.sent.remove(&i.id).unwrap_or(current)
        }
    }

    /// `i` is still open and may have been refined: another kind, or a
    /// higher severity than its alert fired with. Receivers match and route
    /// on labels (a page goes where a ticket does not), so a refined
    /// incident is a new alert, not the old one with new annotations: the
    /// current labels are remembered in place of the old ones, which are
    /// returned to be resolved. A severity that falls while the incident
    /// lasts changes nothing (no alert flaps down and up again).
    pub fn relabel(&mut self, i: &Incident) -> Relabel {
        let current = labels(i);
        match self.sent.get_mut(&i.id) {
            Some(old) => {
                let fired = old["severity"].as_str().and_then(Severity::parse);
                let refined =
                    old["kind"] != current["kind"] || fired.is_none_or(|f| i.severity > f);
                if refined {
                    Relabel::From(std::mem::replace(old, current))
                } else {
                    Relabel::Same
                }
            }
            None => {
                // Fired before a restart, with labels not known here.
                self.remember(&i.id, current);
                Relabel::Unknown
            }
        }
    }

    fn remember(&mut self, id: &str, labels: serde_json::Value) {
        if self.sent.len() >= MAX_FIRING
            && !self.sent.contains_key(id)
            && let Some(k) = self.sent.keys().next().cloned()
        {
            self.sent.remove(&k);
        }
        self.sent.insert(id.to_string(), labels);
    }
}

fn labels(i: &Incident) -> serde_json::Value {
    json!({
        "alertname": if i.kind.is_stampede() { "CacheStampede" } else { "DatabaseSaturation" },
        "service": i.service,
        "kind": i.kind.as_str(),
        "severity": i.severity.as_str(),
        "incident_id": i.id,
    })
}

/// The webhook body for one transition, with the alert's `labels`.
pub fn payload(i: &Incident, labels: serde_json::Value, dashboard: &str) -> serde_json::Value {
    let status = if i.is_open() { "firing" } else { "resolved" };
    json!({
        "version": "4",
        "status": status,
        "receiver": "herdwatch",
        "groupLabels": { "service": i.service },
        "commonLabels": labels,
        "externalURL": dashboard,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": {
                "kind_now": i.kind.as_str(),
                "severity_now": i.severity.as_str(),
                "summary": i.cause,
                "mitigation": i.mitigations.first().map(|m| m.title.clone()).unwrap_or_default(),
                "confidence": format!("{:.2}", i.confidence),
            },
            "startsAt": rfc3339(i.onset_unix_nano),
            "endsAt": i.end_unix_nano.map(rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "generatorURL": format!("{dashboard}/incidents/{}", i.id),
            "fingerprint": i.id,
        }],
    })
}

/// Backoff before attempt `n` (1-based): full jitter over `base · 2^(n-1)`,
/// capped at 30 s; `unit` in [0, 1) is the random draw.
pub fn backoff(n: u32, base: Duration, unit: f64) -> Duration {
    let cap = Duration::from_secs(30);
    let ceiling = base
        .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
        .min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

fn jitter_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl Notifier {
    /// Start the delivery task for `url`.
    pub fn start(url: String, base: Duration) -> Self {
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(QUEUE);
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default();
            while let Some(body) = rx.recv().await {
                for attempt in 1..=MAX_ATTEMPTS {
                    let result = client.post(&url).json(&body).send().await;
                    match result {
                        Ok(r) if r.status().is_success() => {
                            tracing::info!(attempt, "webhook delivered");
                            break;
                        }
                        Ok(r) => {
                            tracing::warn!(attempt, status = r.status().as_u16(), "webhook refused")
                        }
                        Err(e) => tracing::warn!(attempt, error = %e, "webhook failed"),
                    }
                    if attempt == MAX_ATTEMPTS {
                        tracing::error!("webhook given up after {MAX_ATTEMPTS} attempts");
                    } else {
                        tokio::time::sleep(backoff(attempt, base, jitter_unit())).await;
                    }
                }
            }
        });
        Self {
            tx,
            labels: Arc::default(),
        }
    }

    /// Queue a notification; never blocks.
    pub fn notify(&self, incident: &Incident, dashboard: &str) {
        let labels = self
            .labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .for_transition(incident);
        self.send(incident, payload(incident, labels, dashboard));
    }

    /// Queue the notifications of an open incident whose kind or severity
    /// changed at `at_unix_nano`: the alert it fired as, resolved then, and
    /// the alert it is now, firing. Never blocks.
    pub fn relabel(&self, incident: &Incident, at_unix_nano: u64, dashboard: &str) {
        let found = self
            .labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .relabel(incident);
        match found {
            Relabel::Same => return,
            Relabel::From(old) => {
                let mut ended = incident.clone();
                ended.end_unix_nano = Some(at_unix_nano.max(incident.onset_unix_nano));
                self.send(incident, payload(&ended, old, dashboard));
            }
            Relabel::Unknown => {}
        }
        self.send(incident, payload(incident, labels(incident), dashboard));
    }

    fn send(&self, incident: &Incident, body: serde_json::Value) {
        if self.tx.try_send(body).is_err() {
            tracing::warn!(incident = %incident.id, "webhook queue full; alert dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolve_carries_the_labels_its_alert_fired_with() {
        use herdwatch_analyzer::incident::Kind;
        use herdwatch_analyzer::testsuite::incident;
        let mut sent = FiringLabels::default();
        let mut i = incident("a1", "catalog", Kind::SynchronizedExpiry, 100, true);
        let fired = sent.for_transition(&i);
        assert_eq!(fired["kind"], "synchronized-expiry");
        // Refined while open, then over.
        i.kind = Kind::HotKeyExpiry;
        i.severity = Severity::Page;
        i.end_unix_nano = Some(200 * 1_000_000_000);
        let labels = sent.for_transition(&i);
        assert_eq!(labels, fired);
        let body = payload(&i, labels, "http://dash");
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["alerts"][0]["labels"]["kind"], "synchronized-expiry");
        assert_eq!(
            body["alerts"][0]["annotations"]["kind_now"],
            "hot-key-expiry"
        );
        assert!(sent.sent.is_empty(), "forgotten once resolved");
        // A resolve never seen firing (restart) uses the current labels.
        assert_eq!(sent.for_transition(&i)["kind"], "hot-key-expiry");
    }

    #[test]
    fn a_refined_incident_resolves_the_alert_it_fired_as_and_fires_as_what_it_is() {
        use herdwatch_analyzer::incident::Kind;
        use herdwatch_analyzer::testsuite::incident;
        let mut sent = FiringLabels::default();
        let mut i = incident("a1", "catalog", Kind::SynchronizedExpiry, 100, true);
        i.severity = Severity::Ticket;
        let fired = sent.for_transition(&i);
        assert_eq!(sent.relabel(&i), Relabel::Same, "nothing changed");
        // A severity that falls is no new alert.
        i.severity = Severity::Info;
        assert_eq!(sent.relabel(&i), Relabel::Same);
        // Escalated: a page now.
        i.severity = Severity::Page;
        assert_eq!(sent.relabel(&i), Relabel::From(fired));
        assert_eq!(sent.relabel(&i), Relabel::Same, "said once");
        // Refined: a hot key (at a lower severity by then).
        i.kind = Kind::HotKeyExpiry;
        i.severity = Severity::Ticket;
        let Relabel::From(paged) = sent.relabel(&i) else {
            panic!("a new kind is a new alert")
        };
        assert_eq!(
            (paged["kind"].as_str(), paged["severity"].as_str()),
            (Some("synchronized-expiry"), Some("page"))
        );
        // Its resolve carries the labels it fires with now.
        i.end_unix_nano = Some(200 * 1_000_000_000);
        let labels = sent.for_transition(&i);
        assert_eq!(
            (labels["kind"].as_str(), labels["severity"].as_str()),
            (Some("hot-key-expiry"), Some("ticket"))
        );
        // One that fired before a restart: nothing known to resolve, the
        // current labels are remembered for what comes next.
        let mut j = incident("b2", "catalog", Kind::SynchronizedExpiry, 100, true);
        assert_eq!(sent.relabel(&j), Relabel::Unknown);
        j.kind = Kind::ColdCache;
        let Relabel::From(before) = sent.relabel(&j) else {
            panic!("refined after the restart")
        };
        assert_eq!(before["kind"], "synchronized-expiry");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(1, b, 0.999_999).as_millis(), 99);
        assert_eq!(backoff(4, b, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(30, b, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(3, b, 0.0), Duration::ZERO);
    }
}

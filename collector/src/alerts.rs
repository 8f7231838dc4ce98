//! Webhook alerts on incident open and resolve, in the Alertmanager webhook
//! shape (`version: "4"`, `status`, `alerts[]` with labels, annotations,
//! `startsAt`/`endsAt`). Deliveries go through a bounded queue to one task
//! that retries with exponential backoff and full jitter; the analysis only
//! enqueues and never waits.

use std::time::Duration;

use herdwatch_analyzer::incident::Incident;
use herdwatch_analyzer::report::rfc3339;
use serde_json::json;
use tokio::sync::mpsc;

/// Deliveries waiting at most; past it the oldest alert is dropped and logged.
const QUEUE: usize = 256;
const MAX_ATTEMPTS: u32 = 8;

/// Handle used by the live analysis.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<serde_json::Value>,
}

/// The webhook body for one transition.
pub fn payload(i: &Incident, dashboard: &str) -> serde_json::Value {
    let status = if i.is_open() { "firing" } else { "resolved" };
    json!({
        "version": "4",
        "status": status,
        "receiver": "herdwatch",
        "groupLabels": { "service": i.service },
        "commonLabels": { "alertname": "CacheStampede", "service": i.service, "kind": i.kind.as_str(), "severity": i.severity.as_str() },
        "externalURL": dashboard,
        "alerts": [{
            "status": status,
            "labels": {
                "alertname": if i.kind.is_stampede() { "CacheStampede" } else { "DatabaseSaturation" },
                "service": i.service,
                "kind": i.kind.as_str(),
                "severity": i.severity.as_str(),
                "incident_id": i.id,
            },
            "annotations": {
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
        Self { tx }
    }

    /// Queue a notification; never blocks.
    pub fn notify(&self, incident: &Incident, dashboard: &str) {
        if self.tx.try_send(payload(incident, dashboard)).is_err() {
            tracing::warn!(incident = %incident.id, "webhook queue full; alert dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(1, b, 0.999_999).as_millis(), 99);
        assert_eq!(backoff(4, b, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(30, b, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(3, b, 0.0), Duration::ZERO);
    }
}

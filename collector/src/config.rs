//! Configuration: a TOML file parsed into raw serde types (unknown keys are
//! errors), overridden by `HERDWATCH_*` environment variables, overridden by
//! flags (clap reads both: a flag wins over its variable), then validated
//! into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herdwatch_analyzer::config::{AnalysisConfig, SloConfig};
use serde::Deserialize;

use crate::store::StoreConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "unknown environment variable {0}; see `herdwatch serve --help` for the HERDWATCH_* variables"
    )]
    UnknownEnv(String),
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub analysis: AnalysisConfig,
    #[serde(default)]
    pub slo: Vec<SloConfig>,
    #[serde(default)]
    pub dashboard: RawDashboard,
    #[serde(default)]
    pub alerts: RawAlerts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub grpc_listen: Option<String>,
    pub http_listen: Option<String>,
    pub dashboard_listen: Option<String>,
    pub max_message_bytes: Option<u64>,
    pub auth_token: Option<String>,
    pub log_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub data_dir: Option<PathBuf>,
    pub fsync: Option<bool>,
    pub segment_bytes: Option<u64>,
    pub retention_hours: Option<f64>,
    pub retention_bytes: Option<u64>,
    pub hot_bytes: Option<u64>,
    pub inflight_bytes: Option<u64>,
    pub queue_depth: Option<usize>,
    pub dedup_capacity: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDashboard {
    /// Link template for exemplar traces; `{trace_id}` is replaced.
    pub trace_link: Option<String>,
    /// Seconds of data the live analysis covers.
    pub live_window_seconds: Option<f64>,
    /// Memory for the live analysis's per-request facts (MiB); beyond it
    /// the oldest go, their buckets stay.
    pub live_facts_mib: Option<u64>,
    /// Run the live analysis at all.
    pub live_analysis: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub webhook_url: Option<String>,
    /// First retry delay; doubles each attempt (full jitter).
    pub retry_base_ms: Option<u64>,
}

/// Overrides from environment and flags (a `None` leaves the file's value).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Config file (TOML).
    #[arg(long, env = "HERDWATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 0.0.0.0:4317].
    #[arg(long, env = "HERDWATCH_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<String>,
    /// OTLP/HTTP listen address [default: 0.0.0.0:4318].
    #[arg(long, env = "HERDWATCH_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Dashboard, JSON API and self-telemetry listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "HERDWATCH_DASHBOARD_LISTEN", value_name = "ADDR")]
    pub dashboard_listen: Option<String>,
    /// Data directory of the embedded store [default: ./herdwatch-data].
    #[arg(long, env = "HERDWATCH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest OTLP message accepted, after decompression [default: 16777216].
    #[arg(long, env = "HERDWATCH_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<u64>,
    /// Require `Authorization: Bearer TOKEN` on OTLP and the dashboard.
    #[arg(
        long,
        env = "HERDWATCH_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,
    /// fsync each group commit before acknowledging [default: true].
    #[arg(long, env = "HERDWATCH_FSYNC", value_name = "BOOL")]
    pub fsync: Option<bool>,
    /// Memory budget for requests in flight [default: 67108864].
    #[arg(long, env = "HERDWATCH_INFLIGHT_BYTES", value_name = "BYTES")]
    pub inflight_bytes: Option<u64>,
    /// Memory budget for decoded rows kept hot [default: 268435456].
    #[arg(long, env = "HERDWATCH_HOT_BYTES", value_name = "BYTES")]
    pub hot_bytes: Option<u64>,
    /// Delete segments older than this many hours [default: 168].
    #[arg(long, env = "HERDWATCH_RETENTION_HOURS", value_name = "HOURS")]
    pub retention_hours: Option<f64>,
    /// Keep at most this many bytes of segments [default: 10737418240].
    #[arg(long, env = "HERDWATCH_RETENTION_BYTES", value_name = "BYTES")]
    pub retention_bytes: Option<u64>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "HERDWATCH_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Exemplar trace link template, `{trace_id}` replaced (Jaeger, Tempo…).
    #[arg(long, env = "HERDWATCH_TRACE_LINK", value_name = "URL")]
    pub trace_link: Option<String>,
    /// Webhook notified when incidents open and resolve.
    #[arg(long, env = "HERDWATCH_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Run the live analysis [default: true]; off makes a pure collector.
    #[arg(long, env = "HERDWATCH_LIVE_ANALYSIS", value_name = "BOOL")]
    pub live_analysis: Option<bool>,
}

/// Every `HERDWATCH_*` variable the program reads.
pub const KNOWN_ENV: &[&str] = &[
    "HERDWATCH_CONFIG",
    "HERDWATCH_GRPC_LISTEN",
    "HERDWATCH_HTTP_LISTEN",
    "HERDWATCH_DASHBOARD_LISTEN",
    "HERDWATCH_DATA_DIR",
    "HERDWATCH_MAX_MESSAGE_BYTES",
    "HERDWATCH_AUTH_TOKEN",
    "HERDWATCH_FSYNC",
    "HERDWATCH_INFLIGHT_BYTES",
    "HERDWATCH_HOT_BYTES",
    "HERDWATCH_RETENTION_HOURS",
    "HERDWATCH_RETENTION_BYTES",
    "HERDWATCH_LOG_FORMAT",
    "HERDWATCH_TRACE_LINK",
    "HERDWATCH_WEBHOOK_URL",
    "HERDWATCH_LIVE_ANALYSIS",
    "HERDWATCH_LOG",
];

/// Refuse `HERDWATCH_*` variables nobody reads: a typo should not pass silently.
pub fn check_env(vars: impl Iterator<Item = String>) -> Result<(), ConfigError> {
    for name in vars {
        if name.starts_with("HERDWATCH_") && !KNOWN_ENV.contains(&name.as_str()) {
            return Err(ConfigError::UnknownEnv(name));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub dashboard_listen: SocketAddr,
    pub max_message_bytes: usize,
    pub auth_token: Option<Arc<str>>,
    pub log_format: LogFormat,
    pub store: StoreConfig,
    pub analysis: AnalysisConfig,
    pub slos: Vec<SloConfig>,
    pub trace_link: Option<String>,
    pub live_window: Duration,
    pub live_fact_bytes: usize,
    pub live_analysis: bool,
    pub webhook_url: Option<String>,
    pub webhook_retry_base: Duration,
}

fn addr(key: &str, value: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_string());
    value.parse().map_err(|e| ConfigError::Invalid {
        key: key.into(),
        message: format!("{value:?} is not an address like 127.0.0.1:4317 ({e})"),
    })
}

impl RawConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

impl Config {
    /// Load the file named by `overrides.config` (if any) and apply the overrides.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let raw = match &overrides.config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        Self::build(raw, overrides)
    }

    pub fn build(raw: RawConfig, o: &Overrides) -> Result<Self, ConfigError> {
        let RawConfig {
            server,
            store,
            analysis,
            slo,
            dashboard,
            alerts,
        } = raw;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let data_dir = o
            .data_dir
            .clone()
            .or(store.data_dir)
            .unwrap_or_else(|| PathBuf::from("./herdwatch-data"));
        let mut sc = StoreConfig::new(data_dir);
        if let Some(v) = o.fsync.or(store.fsync) {
            sc.fsync = v;
        }
        if let Some(v) = store.segment_bytes {
            if v < 4096 {
                return Err(invalid(
                    "store.segment_bytes",
                    format!("must be at least 4096, got {v}"),
                ));
            }
            sc.segment_bytes = v;
        }
        if let Some(h) = o.retention_hours.or(store.retention_hours) {
            if !(h.is_finite() && h > 0.0) {
                return Err(invalid(
                    "store.retention_hours",
                    format!("must be positive, got {h}"),
                ));
            }
            sc.retention_age = Duration::from_secs_f64(h * 3600.0);
        }
        if let Some(v) = o.retention_bytes.or(store.retention_bytes) {
            sc.retention_bytes = v;
        }
        if let Some(v) = o.hot_bytes.or(store.hot_bytes) {
            sc.hot_bytes = v as usize;
        }
        if let Some(v) = o.inflight_bytes.or(store.inflight_bytes) {
            if v == 0 {
                return Err(invalid("store.inflight_bytes", "must be positive".into()));
            }
            sc.inflight_bytes = v as usize;
        }
        if let Some(v) = store.queue_depth {
            sc.queue_depth = v.max(1);
        }
        if let Some(v) = store.dedup_capacity {
            sc.dedup_capacity = v.max(1);
        }
        let max_message_bytes = o
            .max_message_bytes
            .or(server.max_message_bytes)
            .unwrap_or(16 << 20);
        if max_message_bytes < 1024 {
            return Err(invalid(
                "server.max_message_bytes",
                format!("must be at least 1024, got {max_message_bytes}"),
            ));
        }
        let log_format = match o
            .log_format
            .clone()
            .or(server.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "server.log_format",
                    format!("must be text or json, got {other:?}"),
                ));
            }
        };
        analysis.validate().map_err(|m| invalid("analysis", m))?;
        let slos = if slo.is_empty() {
            vec![SloConfig::default()]
        } else {
            slo
        };
        for (i, s) in slos.iter().enumerate() {
            s.validate(i).map_err(|m| invalid("slo", m))?;
        }
        let live_window = dashboard.live_window_seconds.unwrap_or(900.0);
        if !(live_window.is_finite() && live_window >= 10.0) {
            return Err(invalid(
                "dashboard.live_window_seconds",
                format!("must be at least 10, got {live_window}"),
            ));
        }
        let live_facts_mib = dashboard.live_facts_mib.unwrap_or(128);
        if !(1..=1 << 20).contains(&live_facts_mib) {
            return Err(invalid(
                "dashboard.live_facts_mib",
                format!("must be between 1 and 1048576, got {live_facts_mib}"),
            ));
        }
        Ok(Self {
            grpc_listen: addr(
                "server.grpc_listen",
                o.grpc_listen.clone().or(server.grpc_listen),
                "0.0.0.0:4317",
            )?,
            http_listen: addr(
                "server.http_listen",
                o.http_listen.clone().or(server.http_listen),
                "0.0.0.0:4318",
            )?,
            dashboard_listen: addr(
                "server.dashboard_listen",
                o.dashboard_listen.clone().or(server.dashboard_listen),
                "127.0.0.1:8080",
            )?,
            max_message_bytes: max_message_bytes as usize,
            auth_token: o
                .auth_token
                .clone()
                .or(server.auth_token)
                .filter(|t| !t.is_empty())
                .map(Arc::from),
            log_format,
            store: sc,
            analysis,
            slos,
            trace_link: o.trace_link.clone().or(dashboard.trace_link),
            live_window: Duration::from_secs_f64(live_window),
            live_fact_bytes: (live_facts_mib as usize) << 20,
            live_analysis: o.live_analysis.or(dashboard.live_analysis).unwrap_or(true),
            webhook_url: o.webhook_url.clone().or(alerts.webhook_url),
            webhook_retry_base: Duration::from_millis(alerts.retry_base_ms.unwrap_or(500).max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = RawConfig::parse("[store]\ndata_dri = \"x\"\n", Path::new("h.toml")).unwrap_err();
        assert!(err.to_string().contains("data_dri"), "{err}");
        let err =
            RawConfig::parse("[analysis]\nbucket_secs = 2\n", Path::new("h.toml")).unwrap_err();
        assert!(err.to_string().contains("bucket_secs"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let raw = RawConfig::parse(
            "[server]\ngrpc_listen = \"127.0.0.1:1\"\nhttp_listen = \"127.0.0.1:2\"\n[store]\nfsync = false\n",
            Path::new("h.toml"),
        )
        .unwrap();
        let o = Overrides {
            grpc_listen: Some("127.0.0.1:9".into()),
            ..Default::default()
        };
        let c = Config::build(raw, &o).unwrap();
        assert_eq!(c.grpc_listen.port(), 9);
        assert_eq!(c.http_listen.port(), 2);
        assert!(!c.store.fsync);
        assert_eq!(c.slos.len(), 1, "a default SLO when none is configured");
    }

    #[test]
    fn bad_values_name_the_key() {
        let raw =
            RawConfig::parse("[server]\nlog_format = \"xml\"\n", Path::new("h.toml")).unwrap();
        let err = Config::build(raw, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("server.log_format"), "{err}");
        let raw = RawConfig::parse("[[slo]]\ntarget = 1.5\n", Path::new("h.toml")).unwrap();
        assert!(Config::build(raw, &Overrides::default()).is_err());
        for (line, key) in [
            ("error_burn_rate = 0", "analysis.error_burn_rate"),
            ("bypass_lookup_ratio = 1.5", "analysis.bypass_lookup_ratio"),
            (
                "bypass_min_lookups_per_request = -1",
                "analysis.bypass_min_lookups_per_request",
            ),
        ] {
            let raw =
                RawConfig::parse(&format!("[analysis]\n{line}\n"), Path::new("h.toml")).unwrap();
            let err = Config::build(raw, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{line}: {err}");
        }
        let raw = RawConfig::parse(
            "[analysis]\nerror_burn_rate = 6\nbypass_lookup_ratio = 0.1\n",
            Path::new("h.toml"),
        )
        .unwrap();
        let config = Config::build(raw, &Overrides::default()).unwrap();
        assert_eq!(
            (
                config.analysis.error_burn_rate,
                config.analysis.bypass_lookup_ratio
            ),
            (6.0, 0.1)
        );
    }

    #[test]
    fn unknown_env_vars_are_refused() {
        assert!(check_env(["HERDWATCH_DATA_DIR".to_string()].into_iter()).is_ok());
        let err = check_env(["HERDWATCH_DATADIR".to_string()].into_iter()).unwrap_err();
        assert!(err.to_string().contains("HERDWATCH_DATADIR"));
    }
}

//! Fixtures shared by tests and benches (feature `testsuite`): a collector
//! on loopback ports picked at run time with a throwaway data directory.

use std::path::PathBuf;

use crate::app::{self, Running};
use crate::config::{Config, Overrides, RawConfig};

/// A fresh, unique directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("herdwatch-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Config for a collector on 127.0.0.1 with ephemeral ports.
pub fn loopback_config(data_dir: PathBuf, toml: &str) -> Config {
    let raw =
        RawConfig::parse(toml, std::path::Path::new("test.toml")).expect("test config parses");
    let o = Overrides {
        grpc_listen: Some("127.0.0.1:0".into()),
        http_listen: Some("127.0.0.1:0".into()),
        dashboard_listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir),
        ..Default::default()
    };
    Config::build(raw, &o).expect("test config is valid")
}

/// Start a collector with `toml` settings on loopback.
pub async fn start(name: &str, toml: &str) -> Running {
    app::start(loopback_config(temp_dir(name), toml))
        .await
        .expect("collector starts")
}

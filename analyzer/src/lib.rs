//! Herdwatch's analyzer: the pure core. Telemetry model, trace shape, bucket
//! series, SLO maths, detection, incidents and mitigations. No network, no
//! clock: time comes in as data. Polars lives here and nowhere else.

pub mod classify;
pub mod config;
pub mod detect;
pub mod incident;
pub mod live;
pub mod metrics;
pub mod mitigate;
pub mod model;
pub mod report;
pub mod shape;
pub mod signals;
pub mod slo;
pub mod stats;

pub use report::{Analyzer, Session};
#[cfg(feature = "testsuite")]
pub mod testsuite;

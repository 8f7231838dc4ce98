//! Herdwatch's collector: OTLP receivers (gRPC and HTTP), decoding into the
//! analyzer's model, the embedded durable store, file readers for batch
//! analysis, live analysis, and the wiring of the `herdwatch` binary.

pub mod alerts;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod decode;
pub mod files;
pub mod live;
pub mod otlp;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

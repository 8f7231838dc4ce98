//! Wiring: the store, the receivers, the live analysis and the dashboard in
//! one process, with listeners bound up front so callers (and tests, with
//! port 0) learn the real addresses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herdwatch_analyzer::model::Interner;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::decode::Decoder;
use crate::live::Live;
use crate::otlp::{self, Ingest, Limits};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Shared state of the ops and API routes.
#[derive(Clone)]
pub struct Ops {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub ready: watch::Receiver<bool>,
}

/// `/healthz`, `/readyz`, `/metrics`, `/api/v1/stats`.
pub fn ops_router(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/stats", get(stats))
        .with_state(ops)
}

async fn readyz(State(ops): State<Ops>) -> Response {
    if *ops.ready.borrow() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.metrics.render(),
    )
        .into_response()
}

async fn stats(State(ops): State<Ops>) -> Response {
    Json(ops.store.stats()).into_response()
}

/// A running instance.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub dashboard_addr: SocketAddr,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub live: Live,
    shutdown: watch::Sender<bool>,
    ready: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, finish in-flight requests, stop the tasks.
    pub async fn shutdown(self) {
        let _ = self.ready.send(false);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

/// Open the store, bind every listener and start serving.
pub async fn start(config: Config) -> Result<Running, AppError> {
    let metrics = Arc::new(Metrics::default());
    let decoder = Decoder::new(Arc::new(Interner::default()));
    let store_config = config.store.clone();
    let (store_decoder, store_metrics) = (decoder.clone(), metrics.clone());
    let store = tokio::task::spawn_blocking(move || {
        Store::open(store_config, store_decoder, store_metrics)
    })
    .await
    .map_err(|e| StoreError::Write(format!("store open task failed: {e}")))??;
    let ingest = Ingest {
        store: store.clone(),
        decoder,
        metrics: metrics.clone(),
        limits: Limits {
            max_message_bytes: config.max_message_bytes,
            auth_token: config.auth_token.clone(),
        },
    };
    let grpc = bind("otlp grpc", config.grpc_listen).await?;
    let http = bind("otlp http", config.http_listen).await?;
    let dash = bind("dashboard", config.dashboard_listen).await?;
    let grpc_addr = grpc.local_addr().unwrap_or(config.grpc_listen);
    let http_addr = http.local_addr().unwrap_or(config.http_listen);
    let dashboard_addr = dash.local_addr().unwrap_or(config.dashboard_listen);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(true);
    let ops = Ops {
        store: store.clone(),
        metrics: metrics.clone(),
        ready: ready_rx,
    };
    let live = Live::start(
        &config,
        store.clone(),
        metrics.clone(),
        format!("http://{dashboard_addr}"),
        shutdown_rx.clone(),
    );
    let mut tasks = Vec::new();

    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tasks.push(tokio::spawn({
        let ingest = ingest.clone();
        let stop = signal(shutdown_rx.clone());
        async move {
            if let Err(e) = otlp::grpc::serve(ingest, grpc, stop).await {
                tracing::error!(error = %e, "otlp grpc receiver stopped");
            }
        }
    }));
    let http_router = otlp::http::router(ingest.clone()).merge(ops_router(ops.clone()));
    tasks.push(tokio::spawn({
        let stop = signal(shutdown_rx.clone());
        async move {
            tracing::info!(addr = %http_addr, "otlp http receiver listening");
            if let Err(e) = axum::serve(http, http_router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "otlp http receiver stopped");
            }
        }
    }));
    // The token guards the dashboard and its API; probes and scrapers
    // (`/healthz`, `/readyz`, `/metrics`) stay open.
    let dashboard_router = ops_router(ops).merge(crate::auth::protect(
        live.dashboard_router(&config),
        config.auth_token.clone(),
    ));
    tasks.push(tokio::spawn({
        let stop = signal(shutdown_rx.clone());
        async move {
            tracing::info!(addr = %dashboard_addr, "dashboard listening");
            if let Err(e) = axum::serve(dash, dashboard_router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "dashboard stopped");
            }
        }
    }));
    Ok(Running {
        grpc_addr,
        http_addr,
        dashboard_addr,
        store,
        metrics,
        live,
        shutdown: shutdown_tx,
        ready: ready_tx,
        tasks,
    })
}

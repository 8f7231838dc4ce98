//! The `herdwatch` command line: `serve`, `demo`, `analyze`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use herdwatch_analyzer::Analyzer;
use herdwatch_analyzer::model::{Batch, Interner};
use herdwatch_analyzer::slo::Severity;

use crate::config::{Config, LogFormat, Overrides, RawConfig, check_env};
use crate::decode::Decoder;
use crate::files;

#[derive(Debug, Parser)]
#[command(
    name = "herdwatch",
    version,
    about = "Finds cache stampedes in OpenTelemetry traces and metrics, and says what to change."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the OTLP collector, live analysis and dashboard.
    Serve(ServeArgs),
    /// `serve` plus a live scenario generator: watch a stampede appear.
    Demo(DemoArgs),
    /// Analyse exported telemetry files (OTLP/JSON lines, JSON, protobuf; gzip/zstd).
    Analyze(AnalyzeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Scenario to run (see `herdwatch-samples list`).
    #[arg(long, default_value = "synchronized-expiry")]
    pub scenario: String,
    /// Seed of the scenario.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Stop after the scenario instead of serving on.
    #[arg(long)]
    pub exit_after: bool,
    /// Compress the scenario's arrivals by this factor (durations are kept).
    #[arg(long, default_value_t = 2.0)]
    pub speed: f64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Html,
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Files to analyse.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Exit 1 when an incident at or above this severity is found (page, ticket, info).
    #[arg(long, value_name = "SEVERITY")]
    pub fail_on: Option<String>,
    /// Config file (TOML): `[analysis]` thresholds and `[[slo]]` objectives.
    #[arg(long, env = "HERDWATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Fail on the first bad line or frame instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Write the report here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print where the time went to standard error: reading and decoding,
    /// trace assembly, frames, detection.
    #[arg(long)]
    pub timings: bool,
    /// Memory for per-request facts (MiB). A larger input is analysed in
    /// two passes: the first builds the series and drops facts as it goes,
    /// the second keeps only the incidents' evidence. 0: no bound.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub fact_mib: usize,
    /// Spans between two looks at the facts' memory (tests set it low).
    #[arg(long, hide = true, default_value_t = herdwatch_analyzer::report::COMPACT_EVERY)]
    pub fact_check_spans: usize,
}

/// The process's peak resident set so far (Linux), in MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Requests of each incident's baseline period that a second (evidence)
/// pass keeps: the replay's baseline request time is their median.
const BASELINE_SAMPLE: usize = 20_000;

/// Decoded batches waiting for the assembly thread.
const ANALYZE_QUEUE: usize = 64;

/// Read every file, merged in time order, sending the batches to `tx`;
/// per-file statistics.
fn read_all<'a>(
    files: &'a [PathBuf],
    decoder: &Decoder,
    strict: bool,
    tx: &std::sync::mpsc::SyncSender<Batch>,
) -> anyhow::Result<Vec<(&'a PathBuf, files::ReadStats)>> {
    // Decoding is most of the work: one decoder per core, the batches
    // still in file (and time) order.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stats = files::read_files(files, decoder, strict, workers, &mut |b| {
        // The receiver only goes away if it panicked; join reports that.
        let _ = tx.send(b);
    })
    .map_err(|e| BadInput(e.to_string()))?;
    Ok(files.iter().zip(stats).collect())
}

/// Read `args.files` on this thread and push the batches to `sink` on
/// another (a bounded channel between): the per-file statistics, and the
/// time the sink was busy.
fn read_into<'a>(
    args: &'a AnalyzeArgs,
    decoder: &Decoder,
    sink: &mut (dyn FnMut(Batch) + Send),
) -> (
    anyhow::Result<Vec<(&'a PathBuf, files::ReadStats)>>,
    Duration,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(ANALYZE_QUEUE);
    std::thread::scope(|scope| {
        let assembler = scope.spawn(move || {
            let mut busy = Duration::ZERO;
            for batch in rx {
                let t = Instant::now();
                sink(batch);
                busy += t.elapsed();
            }
            busy
        });
        let read = read_all(&args.files, decoder, args.strict, &tx);
        drop(tx);
        (
            read,
            assembler.join().expect("the assembly thread panicked"),
        )
    })
}

/// Usage or input errors exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERDWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub async fn serve(overrides: &Overrides) -> anyhow::Result<()> {
    check_env(std::env::vars().map(|(k, _)| k))?;
    let config = Config::load(overrides)?;
    init_logging(config.log_format);
    let running = crate::app::start(config).await?;
    eprintln!(
        "herdwatch listening: OTLP gRPC {} · OTLP HTTP {} · dashboard http://{}/",
        running.grpc_addr, running.http_addr, running.dashboard_addr
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

pub async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    check_env(std::env::vars().map(|(k, _)| k))?;
    let mut overrides = args.overrides.clone();
    if overrides.data_dir.is_none() {
        overrides.data_dir =
            Some(std::env::temp_dir().join(format!("herdwatch-demo-{}", std::process::id())));
    }
    let config = Config::load(&overrides)?;
    init_logging(config.log_format);
    let scenario =
        herdwatch_samples::Scenario::parse(&args.scenario).map_err(|e| BadInput(e.to_string()))?;
    let running = crate::app::start(config).await?;
    let endpoint = format!("http://{}", running.grpc_addr);
    eprintln!(
        "herdwatch demo: scenario {} → {endpoint}\n  dashboard: http://{}/  (the incident appears within a minute)",
        scenario.name(),
        running.dashboard_addr
    );
    let live = herdwatch_samples::live::run_with(
        herdwatch_samples::Capture::new(scenario, args.seed),
        &endpoint,
        herdwatch_samples::live::Protocol::Grpc,
        args.speed,
        herdwatch_samples::EmitOptions::default(),
    );
    tokio::select! {
        r = live => {
            r.context("scenario generator failed")?;
            eprintln!("scenario finished; the dashboard stays up (Ctrl-C to stop)");
            if !args.exit_after {
                shutdown_signal().await;
            }
        }
        _ = shutdown_signal() => {}
    }
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Run `analyze`; returns the process exit code.
pub fn analyze(args: &AnalyzeArgs) -> anyhow::Result<i32> {
    init_logging(LogFormat::Text);
    let fail_on =
        match &args.fail_on {
            Some(s) => Some(Severity::parse(s).ok_or_else(|| {
                BadInput(format!("--fail-on takes page, ticket or info, not {s:?}"))
            })?),
            None => None,
        };
    let raw = match &args.config {
        Some(p) => RawConfig::from_file(p).map_err(|e| BadInput(e.to_string()))?,
        None => RawConfig::default(),
    };
    let config = Config::build(raw, &Overrides::default()).map_err(|e| BadInput(e.to_string()))?;
    let analyzer = Analyzer::new(config.analysis.clone(), config.slos.clone());
    let decoder = Decoder::new(Arc::new(Interner::default()));
    let mut session = if args.fact_mib == 0 {
        analyzer.session()
    } else {
        analyzer.bounded_session(args.fact_mib << 20, args.fact_check_spans)
    };
    let mut warnings = Vec::new();
    let started = Instant::now();
    let (read, assembly) = read_into(args, &decoder, &mut |b| session.push(b));
    let all_read = started.elapsed();
    let rss_read = peak_rss_mib();
    let fact_mib = session.fact_bytes() >> 20;
    for (path, stats) in read? {
        if stats.bad > 0 {
            warnings.push(format!(
                "{}: {} bad line(s) or frame(s) skipped; first: {}",
                path.display(),
                stats.bad,
                stats.first_error.unwrap_or_default()
            ));
        }
        if stats.rejected_items > 0 {
            warnings.push(format!(
                "{}: {} invalid item(s) skipped",
                path.display(),
                stats.rejected_items
            ));
        }
    }
    let t = Instant::now();
    let signals = session.signals()?;
    let frames = t.elapsed();
    let rss_frames = peak_rss_mib();
    let t = Instant::now();
    // Bounded and over the budget: the incidents from a second pass that
    // keeps each one's evidence only while it is being decided.
    let mut second = None;
    let mut report = match signals.evidence_plan() {
        Some(plan) => {
            let windows = plan.windows().len();
            let mut evidence = plan.session(BASELINE_SAMPLE);
            let (again, _) = read_into(args, &decoder, &mut |b| evidence.push(b));
            again?;
            second = Some(windows);
            signals.report_with(evidence.finish())
        }
        None => signals.report(),
    };
    let detection = t.elapsed();
    // Millions of facts are about to go with the process: freeing them one
    // by one would only cost time.
    std::mem::forget(signals);
    if args.timings {
        if let Some(windows) = second {
            eprintln!(
                "timings: facts over --fact-mib: detection includes a second pass over the input for the evidence of {windows} episode(s)"
            );
        }
        eprintln!(
            "timings: read+decode {:.2} s (wall, overlapped with assembly), assembly {:.2} s busy, frames {:.2} s, detection {:.2} s, total {:.2} s; peak RSS {} MiB after reading, {} MiB after frames; facts {} MiB at the last look",
            all_read.as_secs_f64(),
            assembly.as_secs_f64(),
            frames.as_secs_f64(),
            detection.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            rss_read.map_or("?".into(), |m| m.to_string()),
            rss_frames.map_or("?".into(), |m| m.to_string()),
            fact_mib,
        );
    }
    report.notes.extend(warnings.iter().cloned());
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let out = match args.format {
        Format::Text => herdwatch_analyzer::report::render_text(&report),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Html => herdwatch_dashboard::render_report(
            &report,
            &herdwatch_dashboard::DashboardConfig {
                trace_link: config.trace_link.clone(),
            },
        ),
    };
    match &args.output {
        Some(p) => {
            std::fs::write(p, out).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => print!("{out}"),
    }
    let failed = fail_on.is_some_and(|f| report.incidents.iter().any(|i| i.severity >= f));
    Ok(if failed { 1 } else { 0 })
}

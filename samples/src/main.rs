use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use herdwatch_samples::live::Protocol;
use herdwatch_samples::{Capture, EmitOptions, Format, Mitigation, Scenario, Semconv};

#[derive(Parser)]
#[command(
    name = "herdwatch-samples",
    about = "Scenario generator: realistic services emitting telemetry through the OpenTelemetry SDK."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum SemconvArg {
    Stable,
    Legacy,
    Mixed,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Grpc,
    Http,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// One OTLP/JSON export request per line.
    Json,
    /// Length-delimited OTLP protobuf.
    Protobuf,
}

/// The scenario to simulate and the mitigations to switch on.
#[derive(clap::Args)]
struct Pick {
    #[arg(long)]
    scenario: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Switch a mitigation on in every service (repeatable): single-flight,
    /// ttl-jitter, xfetch, stale-while-revalidate, warm-up, circuit-breaker.
    #[arg(long = "mitigation")]
    mitigations: Vec<String>,
}

impl Pick {
    fn capture(&self) -> anyhow::Result<Capture> {
        let scenario = Scenario::parse(&self.scenario)?;
        let mitigations = self
            .mitigations
            .iter()
            .map(|m| Mitigation::parse(m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Capture::new(scenario, self.seed).with_mitigations(&mitigations))
    }
}

#[derive(clap::Args)]
struct Emit {
    /// Database semantic conventions: stable, legacy or mixed.
    #[arg(long, value_enum, default_value = "stable")]
    semconv: SemconvArg,
    /// Emit cache keys in statements (`GET product:42`) instead of `GET ?`.
    #[arg(long)]
    unsanitised: bool,
    /// Add `cache.hit` / `cache.key` to request spans.
    #[arg(long)]
    app_attributes: bool,
    /// Leave out pool and Redis keyspace metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Leave out spans (a metrics-only capture).
    #[arg(long)]
    no_spans: bool,
    /// Request durations as a base-2 exponential histogram.
    #[arg(long)]
    exponential_histograms: bool,
}

impl Emit {
    fn options(&self) -> EmitOptions {
        EmitOptions {
            semconv: match self.semconv {
                SemconvArg::Stable => Semconv::Stable,
                SemconvArg::Legacy => Semconv::Legacy,
                SemconvArg::Mixed => Semconv::Mixed,
            },
            unsanitised: self.unsanitised,
            app_attributes: self.app_attributes,
            metrics: !self.no_metrics,
            spans: !self.no_spans,
            exponential_histograms: self.exponential_histograms,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// List the scenarios.
    List,
    /// Write a scenario's telemetry to a file (virtual time, deterministic).
    Generate {
        #[command(flatten)]
        pick: Pick,
        /// Output file; `.gz` compresses.
        #[arg(long)]
        out: PathBuf,
        /// OTLP/JSON lines or length-delimited protobuf.
        #[arg(long, value_enum, default_value = "json")]
        format: FormatArg,
        /// Repeat the scenario back to back (large captures for benchmarks).
        #[arg(long, default_value_t = 1)]
        repeat: u64,
        #[command(flatten)]
        emit: Emit,
    },
    /// Print a capture's ground truth as JSON (measured from the simulation).
    Truth {
        #[command(flatten)]
        pick: Pick,
    },
    /// Rewrite the committed exports and truth files (byte-identical for
    /// the same code).
    Regenerate {
        #[arg(long, default_value = "samples/data")]
        dir: PathBuf,
    },
    /// Play a scenario in real time to an OTLP endpoint.
    Live {
        #[command(flatten)]
        pick: Pick,
        #[arg(long, default_value = "http://127.0.0.1:4317")]
        endpoint: String,
        #[arg(long, value_enum, default_value = "grpc")]
        protocol: ProtocolArg,
        /// Compress arrivals by this factor (durations are kept).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[command(flatten)]
        emit: Emit,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::List => {
            for s in Scenario::ALL {
                let e = s.expectation(&[]);
                println!("{:<22} {}", s.name(), e.kind.unwrap_or("no incident"));
            }
        }
        Cmd::Truth { pick } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&pick.capture()?.truth())?
            );
        }
        Cmd::Regenerate { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // One scenario per core: compression at the best level is slow.
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            let next = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers)
                    .map(|_| {
                        scope.spawn(|| -> anyhow::Result<()> {
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(&s) = Scenario::ALL.get(i) else {
                                    return Ok(());
                                };
                                let (bytes, truth) = herdwatch_samples::committed_export(s)?;
                                let (export, truth_name) = herdwatch_samples::committed_names(s);
                                for (name, data) in
                                    [(export, bytes), (truth_name, truth.into_bytes())]
                                {
                                    let path = dir.join(name);
                                    std::fs::write(&path, &data).with_context(|| {
                                        format!("cannot write {}", path.display())
                                    })?;
                                    eprintln!("{}: {} bytes", path.display(), data.len());
                                }
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .try_for_each(|h| h.join().expect("a regenerate worker panicked"))
            })?;
        }
        Cmd::Generate {
            pick,
            out,
            format,
            repeat,
            emit,
        } => {
            let capture = pick.capture()?;
            let format = match format {
                FormatArg::Json => Format::JsonLines,
                FormatArg::Protobuf => Format::Protobuf,
            };
            let file = std::fs::File::create(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut w: Box<dyn Write> = if out.extension().is_some_and(|e| e == "gz") {
                Box::new(flate2::write::GzEncoder::new(
                    std::io::BufWriter::new(file),
                    flate2::Compression::new(6),
                ))
            } else {
                Box::new(std::io::BufWriter::new(file))
            };
            let n = herdwatch_samples::generate_repeated(
                &capture,
                &emit.options(),
                format,
                repeat,
                &mut w,
            )?;
            w.flush()?;
            drop(w);
            eprintln!("{}: {n} spans", out.display());
        }
        Cmd::Live {
            pick,
            endpoint,
            protocol,
            speed,
            emit,
        } => {
            let capture = pick.capture()?;
            let protocol = match protocol {
                ProtocolArg::Grpc => Protocol::Grpc,
                ProtocolArg::Http => Protocol::HttpProtobuf,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let n = rt.block_on(herdwatch_samples::live::run_with(
                capture,
                &endpoint,
                protocol,
                speed,
                emit.options(),
            ))?;
            eprintln!("sent {n} spans");
        }
    }
    Ok(())
}

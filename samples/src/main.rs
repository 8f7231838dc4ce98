use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use herdwatch_samples::live::Protocol;
use herdwatch_samples::{EmitOptions, Scenario, Semconv};

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
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// List the scenarios.
    List,
    /// Write a scenario's spans as OTLP/JSON lines (virtual time, deterministic).
    Generate {
        #[arg(long)]
        scenario: String,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Output file; `.gz` compresses.
        #[arg(long)]
        out: PathBuf,
        /// Repeat the scenario back to back (large captures for benchmarks).
        #[arg(long, default_value_t = 1)]
        repeat: u64,
        #[command(flatten)]
        emit: Emit,
    },
    /// Print a scenario's ground truth as JSON.
    Truth {
        #[arg(long)]
        scenario: String,
    },
    /// Play a scenario in real time to an OTLP endpoint.
    Live {
        #[arg(long)]
        scenario: String,
        #[arg(long, default_value_t = 7)]
        seed: u64,
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
                let t = s.truth();
                println!("{:<22} {}", s.name(), t.kind.unwrap_or("no incident"));
            }
        }
        Cmd::Truth { scenario } => {
            let s = Scenario::parse(&scenario)?;
            println!("{}", serde_json::to_string_pretty(&s.truth())?);
        }
        Cmd::Generate {
            scenario,
            seed,
            out,
            repeat,
            emit,
        } => {
            let s = Scenario::parse(&scenario)?;
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
            let n = herdwatch_samples::generate_repeated(s, seed, &emit.options(), repeat, &mut w)?;
            w.flush()?;
            drop(w);
            eprintln!("{}: {n} spans", out.display());
        }
        Cmd::Live {
            scenario,
            seed,
            endpoint,
            protocol,
            speed,
            emit,
        } => {
            let s = Scenario::parse(&scenario)?;
            let protocol = match protocol {
                ProtocolArg::Grpc => Protocol::Grpc,
                ProtocolArg::Http => Protocol::HttpProtobuf,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let n = rt.block_on(herdwatch_samples::live::run_with(
                s,
                seed,
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

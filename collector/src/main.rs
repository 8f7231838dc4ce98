use clap::Parser;

// Decoding OTLP allocates per field; mimalloc halves what glibc spends on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use herdwatch_collector::cli::{self, BadInput, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Analyze(args) => cli::analyze(args),
        Command::Serve(args) => runtime().block_on(cli::serve(&args.overrides)).map(|()| 0),
        Command::Demo(args) => runtime().block_on(cli::demo(args)).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("herdwatch: {e:#}");
            let usage = e.downcast_ref::<BadInput>().is_some()
                || e.downcast_ref::<herdwatch_collector::config::ConfigError>()
                    .is_some();
            std::process::exit(if usage { 2 } else { 1 });
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

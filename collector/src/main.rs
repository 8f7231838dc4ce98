use clap::Parser;

// Decoding OTLP allocates per field; mimalloc halves what glibc spends on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use herdwatch_collector::cli::{self, BadInput, Cli, Command};

fn main() {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Analyze(args) => cli::analyze(args),
        Command::Serve(args) => {
            purge_freed_memory_at_once();
            runtime().block_on(cli::serve(&args.overrides)).map(|()| 0)
        }
        Command::Demo(args) => {
            purge_freed_memory_at_once();
            runtime().block_on(cli::demo(args)).map(|()| 0)
        }
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

/// A server holds its memory for days: pages the allocator frees go back
/// to the system at once instead of 10 ms later (mimalloc's default
/// `purge_delay`), which keeps the collector's peak RSS 3–4 MiB lower at
/// 20 k spans/s. `analyze`, short and allocation-heavy, keeps the delay.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
#[allow(unsafe_code)]
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // `mi_option_purge_delay` in the v2 and v3 headers libmimalloc-sys
    // bundles (`mi_option_t` is a C enum).
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: mi_option_set stores an integer in the option table of the
    // allocator this binary links (the global allocator above); it takes no
    // pointers.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// With transparent huge pages on (`always`, as on this project's machines),
/// every 2 MiB region of the allocator's arenas that is touched becomes
/// resident, and memory freed inside it stays so: at 20 k spans/s that was
/// a third of the collector's peak RSS. Turning them off for the process
/// (as `MIMALLOC_ALLOW_THP=0` would) keeps RSS to what is in use.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn no_transparent_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integers only and changes a
    // flag of this process; it cannot touch memory or fail unsafely.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!("herdwatch: cannot disable transparent huge pages (prctl returned {rc})");
    }
}

#[cfg(not(target_os = "linux"))]
fn no_transparent_huge_pages() {}

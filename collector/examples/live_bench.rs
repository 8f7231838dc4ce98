//! Cost of the live analysis tick, in process: the benchmark load
//! (`testsuite::bench_request`) decoded and fed to `LiveAnalysis` one
//! second of data at a time, at RATE spans/s for SECONDS of data time with
//! the default 900 s window, each tick timed.
//!
//! cargo run --release --features testsuite --example live_bench -- [seconds] [rate]

use std::time::Instant;

use herdwatch_analyzer::Analyzer;
use herdwatch_analyzer::live::{LiveAnalysis, LiveSettings};
use herdwatch_analyzer::model::Batch;
use herdwatch_collector::decode::Decoder;
use herdwatch_collector::testsuite::bench_request;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1200);
    let rate: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let decoder = Decoder::default();
    let mut live = LiveAnalysis::new(
        Analyzer::new(Default::default(), Vec::new()),
        LiveSettings::new(900_000_000_000),
    );
    let batches_per_second = rate.div_ceil(512);
    let t0 = 1_800_000_000_000_000_000u64;
    let mut seq = 0;
    let mut period: Vec<f64> = Vec::new();
    let mut all: Vec<f64> = Vec::new();
    let report = |label: u64, v: &mut Vec<f64>, bytes: u64| {
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        println!(
            "data {label:>5} s: tick p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; facts {:.0} MiB",
            q(0.5),
            q(0.99),
            v[v.len() - 1],
            bytes as f64 / 1048576.0
        );
    };
    for second in 0..seconds {
        let mut batch = Batch::default();
        for b in 0..batches_per_second {
            let now = t0 + second * 1_000_000_000 + b * 1_000_000_000 / batches_per_second;
            batch.extend(decoder.traces(&bench_request(seq, now)));
            seq += 1;
        }
        let started = Instant::now();
        live.push(batch);
        let (_, stats) = live.tick().expect("tick");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        period.push(ms);
        all.push(ms);
        if (second + 1) % 120 == 0 {
            report(second + 1, &mut period, stats.fact_bytes);
            period.clear();
        }
    }
    let n = all.len();
    let within = all.iter().filter(|&&ms| ms <= 100.0).count();
    report(seconds, &mut all, 0);
    println!(
        "live tick at {rate} spans/s over {seconds} s of data: {:.1} % of {n} ticks within 100 ms",
        within as f64 * 100.0 / n as f64
    );
}

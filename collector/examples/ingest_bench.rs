//! Ingestion cost of a `herdwatch serve` process: CPU time per span and
//! peak RSS, read from /proc for the server process only (the load comes
//! from this process). Batches of 512 spans with 10 attributes each
//! (`testsuite::bench_request`).
//!
//! cargo run --release --example ingest_bench -- BIN [seconds] [rate]
//! `rate` = spans/s to hold (0 = as fast as possible).

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

/// User and system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args.get(1).expect("path to the herdwatch binary");
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let rate: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
    let transport = args.get(4).cloned().unwrap_or_else(|| "grpc".into());
    let dir = std::env::temp_dir().join(format!("herdwatch-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // `live` as the fifth argument keeps the live analysis on (the default
    // of `serve`); otherwise the server runs as a pure collector.
    let live = args.get(5).is_some_and(|a| a == "live");
    let served = herdwatch_collector::testsuite::spawn_serve(
        std::path::Path::new(bin),
        &dir,
        &[
            "--hot-bytes",
            "16777216",
            "--live-analysis",
            if live { "true" } else { "false" },
        ],
    );
    let dashboard = served.dashboard.clone();
    let (grpc, http, mut child) = (served.grpc, served.http, served.child);
    let pid = child.id();
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let mut sent = 0u64;
    let workers = 4;
    let mut handles = Vec::new();
    for w in 0..workers {
        let (grpc, http) = (grpc.clone(), http.clone());
        let transport = transport.clone();
        handles.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
            let web = reqwest::Client::new();
            let mut n = 0u64;
            let mut seq = w as u64 * 1_000_000;
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(seconds) {
                if rate > 0 {
                    let due = (t0.elapsed().as_secs_f64() * rate as f64 / workers as f64) as u64;
                    if n * 512 >= due {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                let req = herdwatch_collector::testsuite::bench_request(seq, now);
                let ok = if transport == "http-json" {
                    let body = serde_json::to_vec(&req).unwrap();
                    web.post(format!("http://{http}/v1/traces"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false)
                } else {
                    client.export(req).await.is_ok()
                };
                if ok {
                    n += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seq += 1;
            }
            n * 512
        }));
    }
    for h in handles {
        sent += h.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (user, sys) = cpu_seconds(pid);
    let (user, sys) = (user - cpu0.0, sys - cpu0.1);
    let cpu = user + sys;
    let rss = hwm_kib(pid);
    let per_span = |s: f64| s * 1e6 / sent.max(1) as f64;
    println!(
        "ingest {transport}{}: {sent} spans in {elapsed:.1} s = {:.0} spans/s; server CPU {:.2} µs/span (user {:.2}, system {:.2}; {:.0} % of a core); peak RSS {:.1} MiB",
        if live { " (live analysis on)" } else { "" },
        sent as f64 / elapsed,
        per_span(cpu),
        per_span(user),
        per_span(sys),
        cpu / elapsed * 100.0,
        rss as f64 / 1024.0
    );
    if live {
        // The live passes while ingesting, from the server's own histogram.
        let text = reqwest::get(format!("http://{dashboard}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |name: &str| -> Vec<(String, f64)> {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect()
        };
        let sum = value("herdwatch_analysis_duration_seconds_sum");
        let count = value("herdwatch_analysis_duration_seconds_count");
        let buckets = value("herdwatch_analysis_duration_seconds_bucket");
        if let (Some((_, sum)), Some((_, n))) = (sum.first(), count.first()) {
            // The smallest bucket bound holding 99 % of the passes.
            let p99 = buckets
                .iter()
                .find(|(k, c)| *c >= 0.99 * n && !k.contains("+Inf"))
                .and_then(|(k, _)| {
                    k.split("le=\"")
                        .nth(1)?
                        .split('"')
                        .next()
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "+Inf".into());
            let within = |bound: &str| {
                buckets
                    .iter()
                    .find(|(k, _)| k.contains(&format!("le=\"{bound}\"")))
                    .map_or(0.0, |(_, c)| c / n.max(1.0) * 100.0)
            };
            println!(
                "live analysis while ingesting: {n:.0} passes, mean {:.0} ms, {:.0} % within 100 ms, 99 % within {p99} s",
                sum / n.max(1.0) * 1e3,
                within("0.1"),
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

//! Single-thread cost of the protobuf trace reader (`decode::wire`): ns per
//! span over the benchmarks' gRPC load (`testsuite::bench_request`) and,
//! when given, over the first MiB of a length-delimited capture.
//!
//! cargo run --release --features testsuite --example decode_bench -- [CAPTURE.binpb] [MiB]

use std::sync::Arc;
use std::time::Instant;

use herdwatch_analyzer::model::Interner;
use herdwatch_collector::decode::Decoder;
use prost::Message;

// The allocator the `herdwatch` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Best of five passes over `frames`: ns per span and spans per pass.
fn measure(d: &Decoder, frames: &[&[u8]]) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut spans = 0;
    for _ in 0..5 {
        let t = Instant::now();
        spans = 0;
        for f in frames {
            if let Ok(b) = d.traces_protobuf(f) {
                spans += b.spans.len();
            }
        }
        best = best.min(t.elapsed().as_nanos() as f64 / spans.max(1) as f64);
    }
    (best, spans)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let d = Decoder::new(Arc::new(Interner::default()));
    let requests: Vec<Vec<u8>> = (0..200)
        .map(|seq| {
            herdwatch_collector::testsuite::bench_request(seq, 1_700_000_000_000_000_000)
                .encode_to_vec()
        })
        .collect();
    let frames: Vec<&[u8]> = requests.iter().map(Vec::as_slice).collect();
    let (ns, spans) = measure(&d, &frames);
    println!("bench_request: {ns:.0} ns/span ({spans} spans a pass)");
    let Some(path) = args.get(1) else { return };
    let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let mut bytes = Vec::new();
    use std::io::Read;
    std::fs::File::open(path)
        .expect("capture")
        .take((mib << 20) as u64)
        .read_to_end(&mut bytes)
        .expect("read");
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while let Ok(n) = prost::decode_length_delimiter(&mut rest) {
        if n > rest.len() {
            break;
        }
        frames.push(&rest[..n]);
        rest = &rest[n..];
    }
    let (ns, spans) = measure(&d, &frames);
    println!(
        "{path}: {ns:.0} ns/span ({spans} spans in {} frames a pass)",
        frames.len()
    );
}

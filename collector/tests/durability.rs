//! Durability: a `herdwatch serve` child is killed with SIGKILL while
//! clients are sending; after a restart every acknowledged span is there
//! (ids compared), and a deliberately torn tail is cut off cleanly.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herdwatch_analyzer::model::Interner;
use herdwatch_collector::decode::Decoder;
use herdwatch_collector::store::{Query, Store, StoreConfig};
use herdwatch_collector::telemetry::Metrics;
use herdwatch_collector::testsuite;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn spawn(dir: &std::path::Path) -> testsuite::ServeChild {
    testsuite::spawn_serve(
        std::path::Path::new(env!("CARGO_BIN_EXE_herdwatch")),
        dir,
        &[],
    )
}

fn request(batch: u64, n: u64) -> ExportTraceServiceRequest {
    testsuite::trace_request("durable", batch, n)
}

fn stored_ids(dir: &std::path::Path) -> HashSet<[u8; 8]> {
    let store = Store::open(
        StoreConfig::new(dir),
        Decoder::new(Arc::new(Interner::default())),
        Arc::new(Metrics::default()),
    )
    .expect("store reopens");
    store
        .spans(&Query::all())
        .iter()
        .map(|s| s.span_id)
        .collect()
}

#[test]
fn acknowledged_spans_survive_sigkill_and_a_torn_tail_is_cut() {
    let dir = std::env::temp_dir().join(format!("herdwatch-durability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = spawn(&dir);
    // The server turns transparent huge pages off for itself (they kept
    // freed allocator memory resident); the kernel reports the flag.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let thp = status.lines().find(|l| l.starts_with("THP_enabled:"));
    if let Some(line) = thp {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    let acked: Arc<Mutex<Vec<[u8; 8]>>> = Arc::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://{}/v1/traces", server.http);
    // Four clients send until the server dies; each records what was acknowledged.
    let senders: Vec<_> = (0..4u64)
        .map(|c| {
            let (url, acked) = (url.clone(), acked.clone());
            rt.spawn(async move {
                let client = reqwest::Client::new();
                for b in 0..10_000u64 {
                    let batch = c * 100_000 + b;
                    let req = request(batch, 20);
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .body(req.encode_to_vec())
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status().is_success() => {
                            let mut a = acked.lock().unwrap();
                            for s in &req.resource_spans[0].scope_spans[0].spans {
                                a.push(s.span_id.as_slice().try_into().unwrap());
                            }
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Kill once a good number of acknowledgements went out, mid-stream.
    while acked.lock().unwrap().len() < 4000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut child = server.child;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for s in senders {
        let _ = rt.block_on(s);
    }
    let acked: HashSet<[u8; 8]> = acked.lock().unwrap().iter().copied().collect();
    let stored = stored_ids(&dir);
    let missing = acked.difference(&stored).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged spans lost",
        acked.len()
    );

    // Tear the tail: half a record of garbage after the last good one.
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let good_len = std::fs::metadata(last).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
        f.write_all(&5000u32.to_le_bytes()).unwrap();
        f.write_all(&[7u8; 100]).unwrap();
    }
    let after = stored_ids(&dir);
    assert_eq!(after, stored, "nothing before the torn tail is lost");
    assert!(
        std::fs::metadata(last).unwrap().len() <= good_len,
        "the torn tail was cut off"
    );
    // And the cut store accepts new writes after a restart.
    let server = spawn(&dir);
    let resp = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{}/v1/traces", server.http))
            .header("content-type", "application/x-protobuf")
            .body(request(9_999_999, 3).encode_to_vec())
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(resp.is_success());
    let mut child = server.child;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(stored_ids(&dir).len(), stored.len() + 3);
}

//! The embedded durable store.
//!
//! Every accepted export request is appended, as OTLP protobuf, to a
//! write-ahead log ([`wal`]) by one writer thread that group-commits: it
//! drains whatever is queued, writes it, fsyncs once, and only then
//! acknowledges each request. The same thread de-duplicates spans on
//! (trace id, span id) and moves the decoded rows into a bounded in-memory
//! hot set; because replay after a restart runs the very same sequence, the
//! recovered state equals the acknowledged one.
//!
//! Memory is bounded three ways: admission (bytes of requests in flight), the
//! write queue depth, and the hot set's byte budget (older rows stay on disk
//! and are read back from segments when a query reaches past the hot set).

mod dedup;
mod rows;
pub mod wal;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use herdwatch_analyzer::model::{Batch, LogMarker, MetricPoint, SpanRow, Sym};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::decode::Decoder;
use crate::telemetry::Metrics;
use dedup::{Dedup, Kept};
use rows::{Rows, StoredBatch};
use wal::{SegmentReader, SegmentWriter, Signal, list_segments, segment_path};

/// Validated store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// fsync every group commit (the default). Off only for throwaway runs.
    pub fsync: bool,
    pub segment_bytes: u64,
    pub retention_age: Duration,
    pub retention_bytes: u64,
    /// Budget for decoded rows kept in memory.
    pub hot_bytes: usize,
    /// Budget for request bytes admitted but not yet acknowledged.
    pub inflight_bytes: usize,
    /// Requests queued for the writer at most.
    pub queue_depth: usize,
    /// (trace id, span id) fingerprints remembered for de-duplication.
    pub dedup_capacity: usize,
}

impl StoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fsync: true,
            segment_bytes: 64 << 20,
            retention_age: Duration::from_secs(7 * 24 * 3600),
            retention_bytes: 10 << 30,
            hot_bytes: 256 << 20,
            inflight_bytes: 64 << 20,
            queue_depth: 1024,
            // 33 s of retries at 20 k spans/s, in about 8 MiB.
            dedup_capacity: 655_360,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot recover segment {path}: {source}")]
    Recover {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write to the store failed: {0}")]
    Write(String),
    #[error("the store is overloaded ({0}); retry later")]
    Overloaded(&'static str),
    #[error("the store has shut down")]
    Closed,
}

/// Memory admitted for one request; released when dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

/// What one append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub spans: u64,
    pub duplicates: u64,
    pub points: u64,
    pub logs: u64,
}

/// Per-service counts, for `GET /api/v1/stats`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ServiceStats {
    pub spans: u64,
    pub metric_points: u64,
    pub log_records: u64,
    pub first_unix_nano: Option<u64>,
    pub last_unix_nano: Option<u64>,
}

impl ServiceStats {
    fn see(&mut self, t: u64) {
        self.first_unix_nano = Some(self.first_unix_nano.map_or(t, |f| f.min(t)));
        self.last_unix_nano = Some(self.last_unix_nano.map_or(t, |l| l.max(t)));
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStats {
    pub services: BTreeMap<String, ServiceStats>,
    pub totals: ServiceStats,
    pub store_bytes: u64,
    pub segments: u64,
    pub hot_bytes: u64,
    pub duplicates: u64,
}

/// Which rows a query wants.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub service: Option<String>,
    pub from_unix_nano: u64,
    /// Exclusive; `u64::MAX` for no bound.
    pub to_unix_nano: u64,
}

impl Query {
    pub fn all() -> Self {
        Self {
            service: None,
            from_unix_nano: 0,
            to_unix_nano: u64::MAX,
        }
    }

    fn service_matches(&self, service: &str) -> bool {
        self.service.as_deref().is_none_or(|s| s == service)
    }

    fn time_matches(&self, t: u64) -> bool {
        t >= self.from_unix_nano && t < self.to_unix_nano
    }
}

#[derive(Debug, Clone)]
struct SegmentMeta {
    seq: u64,
    bytes: u64,
    min_time: u64,
    max_time: u64,
}

#[derive(Debug, Default)]
struct ServiceHot {
    spans: Rows<SpanRow>,
    points: Rows<MetricPoint>,
    markers: Rows<LogMarker>,
    bytes: usize,
    /// Spans and points evicted from the front so far: the row at index
    /// `i` is the service's `evicted + i`-th.
    evicted_spans: u64,
    evicted_points: u64,
}

/// Where a reader of newly stored rows is ([`Store::tail`]): per service,
/// how many spans, points and markers it has taken.
#[derive(Debug, Clone, Default)]
pub struct TailCursor {
    started: bool,
    taken: HashMap<Sym, [u64; 3]>,
}

/// Rows a tail reader had not taken were evicted from memory first.
#[derive(Debug, thiserror::Error)]
#[error(
    "the live reader fell behind: rows of service {service:?} it had not read were evicted from memory"
)]
pub struct FellBehind {
    pub service: String,
}

#[derive(Debug, Default)]
struct Hot {
    services: HashMap<Sym, ServiceHot>,
    bytes: usize,
    /// Rows with a time at or below this were evicted and live on disk only.
    evicted_up_to: u64,
    stats: StoreStats,
}

impl Hot {
    /// Count a stored batch of `service` in the stats (`count` says which
    /// counter) and the hot bytes; returns the service's rows to add it to.
    fn account<T>(
        &mut self,
        service: Sym,
        batch: &StoredBatch<T>,
        count: fn(&mut ServiceStats) -> &mut u64,
    ) -> &mut ServiceHot {
        let n = batch.rows.len() as u64;
        for st in [
            service_stats(&mut self.stats.services, &service),
            &mut self.stats.totals,
        ] {
            *count(st) += n;
            st.see(batch.min_time);
            st.see(batch.max_time);
        }
        self.bytes += batch.bytes;
        let svc = self.services.entry(service).or_default();
        svc.bytes += batch.bytes;
        svc
    }
}

struct Inner {
    config: StoreConfig,
    decoder: Decoder,
    metrics: Arc<Metrics>,
    hot: RwLock<Hot>,
    segments: RwLock<Vec<SegmentMeta>>,
    admission: Arc<Semaphore>,
    admission_units: usize,
}

struct WriteRequest {
    signal: Signal,
    payload: Bytes,
    batch: Batch,
    done: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    tx: SyncSender<WriteRequest>,
}

const ADMISSION_UNIT: usize = 1024;

impl Store {
    /// Open (creating if needed) the data directory, recover what it holds,
    /// and start the writer thread.
    pub fn open(
        config: StoreConfig,
        decoder: Decoder,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Dir {
            path: dir.clone(),
            source,
        })?;
        let units = (config.inflight_bytes / ADMISSION_UNIT).clamp(1, Semaphore::MAX_PERMITS);
        let inner = Arc::new(Inner {
            admission: Arc::new(Semaphore::new(units)),
            admission_units: units,
            decoder,
            metrics,
            hot: RwLock::new(Hot::default()),
            segments: RwLock::new(Vec::new()),
            config,
        });
        let mut dedup = Dedup::new(inner.config.dedup_capacity);
        let writer = inner.recover(&mut dedup)?;
        tracing::info!(
            dir = %inner.config.dir.display(),
            direct_io = writer.direct(),
            fsync = inner.config.fsync,
            "store opened"
        );
        let (tx, rx) = mpsc::sync_channel(inner.config.queue_depth.max(1));
        let worker = inner.clone();
        std::thread::Builder::new()
            .name("herdwatch-store".into())
            .spawn(move || worker.writer_loop(rx, writer, dedup))
            .map_err(|e| StoreError::Write(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { inner, tx })
    }

    /// Reserve memory for a request of `bytes`; refuses (retryably) when the
    /// in-flight budget is spent.
    pub fn admit(&self, bytes: usize) -> Result<Admission, StoreError> {
        let units = bytes.div_ceil(ADMISSION_UNIT).max(1);
        if units > self.inner.admission_units {
            // A request bigger than the whole budget can only ever go through
            // alone: take the whole budget.
            return self
                .inner
                .admission
                .clone()
                .try_acquire_many_owned(self.inner.admission_units as u32)
                .map(|p| Admission { _permit: Some(p) })
                .map_err(|_| StoreError::Overloaded("in-flight memory limit reached"));
        }
        self.inner
            .admission
            .clone()
            .try_acquire_many_owned(units as u32)
            .map(|p| Admission { _permit: Some(p) })
            .map_err(|_| StoreError::Overloaded("in-flight memory limit reached"))
    }

    /// Append a decoded request; resolves once it is durable (or refused).
    pub async fn append(
        &self,
        signal: Signal,
        payload: Bytes,
        batch: Batch,
    ) -> Result<AppendOutcome, StoreError> {
        let (done, wait) = oneshot::channel();
        match self.tx.try_send(WriteRequest {
            signal,
            payload,
            batch,
            done,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(StoreError::Overloaded("write queue full")),
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        wait.await.map_err(|_| StoreError::Closed)?
    }

    pub fn stats(&self) -> StoreStats {
        let hot = self.inner.hot.read().unwrap_or_else(|e| e.into_inner());
        let mut stats = hot.stats.clone();
        let segs = self
            .inner
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner());
        stats.store_bytes = segs.iter().map(|s| s.bytes).sum();
        stats.segments = segs.len() as u64;
        stats.hot_bytes = hot.bytes as u64;
        stats
    }

    /// Spans matching `q` (by start time), oldest first.
    pub fn spans(&self, q: &Query) -> Vec<SpanRow> {
        let mut out = Vec::new();
        self.visit(q, |c| match c {
            Chunk::Disk(b) => out.extend(
                b.spans
                    .iter()
                    .filter(|s| q.service_matches(s.service()) && q.time_matches(s.start_unix_nano))
                    .cloned(),
            ),
            Chunk::Hot(h, floor) => out.extend(
                h.spans
                    .iter()
                    .filter(|s| s.start_unix_nano > floor && q.time_matches(s.start_unix_nano))
                    .cloned(),
            ),
        });
        out
    }

    /// Rows stored since `cursor` (at most about `limit` spans), moving the
    /// cursor past them; a new cursor starts at the oldest row in memory.
    /// Rows are in the order they were stored.
    pub fn tail(&self, cursor: &mut TailCursor, limit: usize) -> Result<Batch, FellBehind> {
        let h = self.inner.hot.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Batch::default();
        let mut names: Vec<&Sym> = h.services.keys().collect();
        names.sort();
        for name in names {
            let svc = &h.services[name];
            let taken = match cursor.taken.get(name) {
                Some(t) => *t,
                None if cursor.started => [0; 3],
                None => [svc.evicted_spans, svc.evicted_points, 0],
            };
            if taken[0] < svc.evicted_spans || taken[1] < svc.evicted_points {
                return Err(FellBehind {
                    service: name.to_string(),
                });
            }
            let room = limit.saturating_sub(out.spans.len());
            let from = (taken[0] - svc.evicted_spans) as usize;
            let to = svc.spans.len().min(from + room);
            out.spans
                .extend(svc.spans.iter_from(from).take(to - from).cloned());
            let from_p = (taken[1] - svc.evicted_points) as usize;
            out.points.extend(svc.points.iter_from(from_p).cloned());
            out.markers
                .extend(svc.markers.iter_from(taken[2] as usize).cloned());
            cursor.taken.insert(
                name.clone(),
                [
                    svc.evicted_spans + to as u64,
                    svc.evicted_points + svc.points.len() as u64,
                    svc.markers.len() as u64,
                ],
            );
        }
        cursor.started = true;
        Ok(out)
    }

    /// Metric points matching `q` (by point time).
    pub fn points(&self, q: &Query) -> Vec<MetricPoint> {
        let mut out = Vec::new();
        self.visit(q, |c| match c {
            Chunk::Disk(b) => out.extend(
                b.points
                    .iter()
                    .filter(|p| q.service_matches(p.service()) && q.time_matches(p.time_unix_nano))
                    .cloned(),
            ),
            Chunk::Hot(h, floor) => out.extend(
                h.points
                    .iter()
                    .filter(|p| p.time_unix_nano > floor && q.time_matches(p.time_unix_nano))
                    .cloned(),
            ),
        });
        out
    }

    /// Deploy / restart / flush markers matching `q`.
    pub fn markers(&self, q: &Query) -> Vec<LogMarker> {
        let mut out = Vec::new();
        self.visit(q, |c| match c {
            Chunk::Disk(b) => out.extend(
                b.markers
                    .iter()
                    .filter(|m| {
                        q.service_matches(&m.resource.service) && q.time_matches(m.time_unix_nano)
                    })
                    .cloned(),
            ),
            Chunk::Hot(h, floor) => out.extend(
                h.markers
                    .iter()
                    .filter(|m| m.time_unix_nano > floor && q.time_matches(m.time_unix_nano))
                    .cloned(),
            ),
        });
        out
    }

    /// Feed `f` with batches read back from segments for the part of `q`
    /// that was evicted from memory, then with each matching service's
    /// in-memory rows.
    fn visit(&self, q: &Query, mut f: impl FnMut(Chunk<'_>)) {
        let evicted_up_to = {
            let h = self.inner.hot.read().unwrap_or_else(|e| e.into_inner());
            h.evicted_up_to
        };
        // Rows at or below the eviction mark come from disk (which holds
        // them all); hot rows above it complete the answer without overlap.
        let mut floor = 0;
        if q.from_unix_nano <= evicted_up_to && evicted_up_to > 0 {
            let to = q.to_unix_nano.min(evicted_up_to.saturating_add(1));
            self.inner
                .scan_disk(q.from_unix_nano, to, &mut |b| f(Chunk::Disk(b)));
            floor = evicted_up_to;
        }
        let h = self.inner.hot.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&Sym> = h.services.keys().filter(|s| q.service_matches(s)).collect();
        names.sort();
        for name in names {
            f(Chunk::Hot(&h.services[name], floor));
        }
    }
}

enum Chunk<'a> {
    Disk(&'a Batch),
    /// In-memory rows, and the time at or below which the disk answered.
    Hot(&'a ServiceHot, u64),
}

/// The stats entry of `service`, allocating its name only the first time.
fn service_stats<'a>(
    map: &'a mut BTreeMap<String, ServiceStats>,
    service: &str,
) -> &'a mut ServiceStats {
    if !map.contains_key(service) {
        map.insert(service.to_string(), ServiceStats::default());
    }
    map.get_mut(service).expect("just inserted")
}

/// Rows grouped by service, each group in arrival order. A vector that
/// holds one service (the usual request) is returned as it is, not copied.
fn by_service<T>(rows: Vec<T>, service: impl Fn(&T) -> &Sym) -> Vec<(Sym, Vec<T>)> {
    let Some(first) = rows.first().map(|r| service(r).clone()) else {
        return Vec::new();
    };
    if rows.iter().all(|r| *service(r) == first) {
        return vec![(first, rows)];
    }
    let mut out: Vec<(Sym, Vec<T>)> = Vec::new();
    for r in rows {
        let s = service(&r);
        match out.iter().rposition(|(k, _)| k == s) {
            Some(i) => out[i].1.push(r),
            None => out.push((s.clone(), vec![r])),
        }
    }
    out
}

/// A batch of one service's rows as the hot set keeps it: with its
/// earliest and latest time and its accounted bytes.
fn stored<T>(
    rows: Vec<T>,
    time: impl Fn(&T) -> u64,
    bytes: impl Fn(&T) -> usize,
) -> StoredBatch<T> {
    let (mut min_time, mut max_time, mut total) = (u64::MAX, 0, 0);
    for r in &rows {
        let t = time(r);
        min_time = min_time.min(t);
        max_time = max_time.max(t);
        total += bytes(r);
    }
    StoredBatch {
        rows,
        min_time,
        max_time,
        bytes: total,
    }
}

/// Drop the oldest stored batch of `rows`, counting its rows as evicted;
/// returns its bytes and its latest time.
fn evict_front<T>(rows: &mut Rows<T>, evicted: &mut u64) -> (usize, u64) {
    match rows.pop_front() {
        Some(c) => {
            *evicted += c.rows.len() as u64;
            (c.bytes, c.max_time)
        }
        None => (0, 0),
    }
}

fn time_range(batch: &Batch) -> (u64, u64) {
    let times = batch
        .spans
        .iter()
        .map(|s| s.start_unix_nano)
        .chain(batch.points.iter().map(|p| p.time_unix_nano))
        .chain(batch.markers.iter().map(|m| m.time_unix_nano));
    let mut lo = u64::MAX;
    let mut hi = 0;
    for t in times {
        lo = lo.min(t);
        hi = hi.max(t);
    }
    if lo == u64::MAX { (0, 0) } else { (lo, hi) }
}

impl Inner {
    fn decode(&self, signal: Signal, payload: &[u8]) -> Option<Batch> {
        match signal {
            Signal::Traces => self.decoder.traces_protobuf(payload).ok(),
            Signal::Metrics => ExportMetricsServiceRequest::decode(payload)
                .ok()
                .map(|r| self.decoder.metrics(&r)),
            Signal::Logs => ExportLogsServiceRequest::decode(payload)
                .ok()
                .map(|r| self.decoder.logs(&r)),
        }
    }

    /// Replay every segment into the hot set; cut a torn or corrupt tail.
    /// Returns the writer for the last segment.
    fn recover(&self, dedup: &mut Dedup) -> Result<SegmentWriter, StoreError> {
        let dir = &self.config.dir;
        let seqs = list_segments(dir).map_err(|source| StoreError::Dir {
            path: dir.clone(),
            source,
        })?;
        let started = Instant::now();
        let mut metas = Vec::new();
        let mut last_valid = None;
        let mut records = 0u64;
        for &seq in &seqs {
            let path = segment_path(dir, seq);
            let mut reader = SegmentReader::open(&path).map_err(|source| StoreError::Recover {
                path: path.clone(),
                source,
            })?;
            let mut meta = SegmentMeta {
                seq,
                bytes: 0,
                min_time: u64::MAX,
                max_time: 0,
            };
            while let Some(record) = reader.next_record() {
                records += 1;
                meta.min_time = meta.min_time.min(record.min_time);
                meta.max_time = meta.max_time.max(record.max_time);
                match self.decode(record.signal, &record.payload) {
                    Some(mut batch) => {
                        let dups = dedup.filter(&mut batch.spans, &mut Vec::new());
                        self.apply(batch, dups);
                    }
                    None => {
                        tracing::warn!(segment = %path.display(), "stored record does not decode; skipped")
                    }
                }
            }
            if let Some(problem) = &reader.corruption {
                tracing::warn!(
                    segment = %path.display(),
                    valid_bytes = reader.valid_len,
                    problem = %problem,
                    "cutting corrupt or torn segment tail"
                );
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| StoreError::Recover {
                        path: path.clone(),
                        source,
                    })?;
                let keep = reader.valid_len.max(wal::MAGIC.len() as u64);
                if reader.valid_len == 0 {
                    // Not even a header: rewrite one.
                    drop(f);
                    std::fs::write(&path, wal::MAGIC).map_err(|source| StoreError::Recover {
                        path: path.clone(),
                        source,
                    })?;
                } else {
                    f.set_len(keep)
                        .and_then(|_| f.sync_all())
                        .map_err(|source| StoreError::Recover {
                            path: path.clone(),
                            source,
                        })?;
                }
                meta.bytes = keep;
            } else {
                // A clean end: drop the zeros after the last record (the
                // last segment's writer pads its block again as it writes).
                let trim = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| match f.metadata()?.len() > reader.valid_len {
                        true => f.set_len(reader.valid_len),
                        false => Ok(()),
                    });
                trim.map_err(|source| StoreError::Recover {
                    path: path.clone(),
                    source,
                })?;
                meta.bytes = reader.valid_len;
            }
            last_valid = Some((seq, meta.bytes));
            metas.push(meta);
        }
        if !seqs.is_empty() {
            tracing::info!(
                segments = seqs.len(),
                records,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store recovered"
            );
        }
        let writer = match last_valid {
            Some((seq, len)) => SegmentWriter::reopen(dir, seq, len),
            None => SegmentWriter::create(dir, 1).inspect(|w| {
                metas.push(SegmentMeta {
                    seq: w.seq,
                    bytes: w.file_len(),
                    min_time: u64::MAX,
                    max_time: 0,
                })
            }),
        }
        .map_err(|source| StoreError::Recover {
            path: dir.clone(),
            source,
        })?;
        *self.segments.write().unwrap_or_else(|e| e.into_inner()) = metas;
        self.publish_gauges();
        Ok(writer)
    }

    /// Add a de-duplicated batch to the hot set and the stats.
    fn apply(&self, batch: Batch, duplicates: u64) -> AppendOutcome {
        let outcome = AppendOutcome {
            spans: batch.spans.len() as u64,
            duplicates,
            points: batch.points.len() as u64,
            logs: batch.markers.len() as u64 + batch.other_logs,
        };
        let mut hot = self.hot.write().unwrap_or_else(|e| e.into_inner());
        let h = &mut *hot;
        h.stats.duplicates += duplicates;
        // Per service, not per row: a request is usually one resource, and
        // its vector of rows moves into the hot set whole.
        for (service, spans) in by_service(batch.spans, |s| &s.resource.service) {
            let chunk = stored(spans, |s| s.start_unix_nano, SpanRow::approx_bytes);
            h.account(service, &chunk, |st| &mut st.spans)
                .spans
                .append(chunk);
        }
        for (service, points) in by_service(batch.points, |p| &p.resource.service) {
            let chunk = stored(points, |p| p.time_unix_nano, MetricPoint::approx_bytes);
            h.account(service, &chunk, |st| &mut st.metric_points)
                .points
                .append(chunk);
        }
        for (service, markers) in by_service(batch.markers, |m| &m.resource.service) {
            let n = markers.len() as u64;
            service_stats(&mut h.stats.services, &service).log_records += n;
            h.stats.totals.log_records += n;
            // Markers are never evicted and not counted in the hot bytes.
            let markers = stored(markers, |m| m.time_unix_nano, |_| 0);
            h.services
                .entry(service)
                .or_default()
                .markers
                .append(markers);
        }
        if batch.other_logs > 0 {
            h.stats.totals.log_records += batch.other_logs;
            self.metrics.other_logs.add(batch.other_logs);
        }
        self.metrics.duplicates.add(duplicates);
        self.evict(h);
        outcome
    }

    /// Drop the oldest rows of the largest services until the hot set fits.
    fn evict(&self, h: &mut Hot) {
        while h.bytes > self.config.hot_bytes {
            let Some(name) = h
                .services
                .iter()
                .max_by_key(|(_, s)| s.bytes)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let svc = h.services.get_mut(&name).expect("service just found");
            let mut freed = 0;
            let mut evicted_t = 0;
            // Evict an eighth at a time to keep this amortised, a stored
            // batch at a time, the older of the oldest spans and points
            // first: the batches' bounds say which without reading a row.
            let target = (svc.bytes / 8).max(1);
            while freed < target {
                let span_t = svc.spans.front().map(|c| c.min_time);
                let point_t = svc.points.front().map(|c| c.min_time);
                let (bytes, max_time) = match (span_t, point_t) {
                    (Some(a), Some(b)) if b < a => {
                        evict_front(&mut svc.points, &mut svc.evicted_points)
                    }
                    (Some(_), _) => evict_front(&mut svc.spans, &mut svc.evicted_spans),
                    (None, Some(_)) => evict_front(&mut svc.points, &mut svc.evicted_points),
                    (None, None) => break,
                };
                freed += bytes;
                evicted_t = evicted_t.max(max_time);
            }
            if freed == 0 {
                // Only markers left: forget the service's accounted bytes.
                let stale = std::mem::take(&mut svc.bytes);
                h.bytes = h.bytes.saturating_sub(stale);
                if stale == 0 {
                    break;
                }
                continue;
            }
            svc.bytes = svc.bytes.saturating_sub(freed);
            h.bytes = h.bytes.saturating_sub(freed);
            h.evicted_up_to = h.evicted_up_to.max(evicted_t);
        }
        self.metrics.hot_bytes.set(h.bytes as u64);
    }

    fn scan_disk(&self, from: u64, to: u64, f: &mut impl FnMut(&Batch)) {
        let metas: Vec<SegmentMeta> = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|m| m.max_time >= from && m.min_time < to)
            .cloned()
            .collect();
        let mut dedup = Dedup::new(self.config.dedup_capacity);
        for meta in metas {
            let path = segment_path(&self.config.dir, meta.seq);
            let Ok(mut reader) = SegmentReader::open(&path) else {
                continue;
            };
            while let Some(record) = reader.next_record() {
                if record.max_time < from || record.min_time >= to {
                    continue;
                }
                if let Some(mut batch) = self.decode(record.signal, &record.payload) {
                    dedup.filter(&mut batch.spans, &mut Vec::new());
                    f(&batch);
                }
            }
        }
    }

    fn publish_gauges(&self) {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        self.metrics
            .store_bytes
            .set(segs.iter().map(|s| s.bytes).sum());
        self.metrics.store_segments.set(segs.len() as u64);
    }

    fn writer_loop(
        self: Arc<Self>,
        rx: Receiver<WriteRequest>,
        mut writer: SegmentWriter,
        mut dedup: Dedup,
    ) {
        let mut last_retention = Instant::now();
        // The fingerprints a group kept, until it is durable.
        let mut kept: Kept = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < 4096 {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            // De-duplicate against what is stored and within the group.
            let mut pending = Vec::with_capacity(group.len());
            kept.clear();
            for mut req in group {
                let dups = dedup.filter(&mut req.batch.spans, &mut kept);
                let all_dups = dups > 0 && req.batch.is_empty() && req.batch.other_logs == 0;
                if !all_dups {
                    let (lo, hi) = time_range(&req.batch);
                    writer.push(req.signal, lo, hi, std::mem::take(&mut req.payload));
                    let mut segs = self.segments.write().unwrap_or_else(|e| e.into_inner());
                    if let Some(m) = segs.last_mut() {
                        m.min_time = m.min_time.min(lo);
                        m.max_time = m.max_time.max(hi);
                    }
                }
                pending.push((req, dups));
            }
            let started = Instant::now();
            let result = writer.flush(self.config.fsync);
            if self.config.fsync {
                self.metrics.fsync_duration.observe(started.elapsed());
            }
            match result {
                Ok(()) => {
                    for (req, dups) in pending {
                        let outcome = self.apply(req.batch, dups);
                        let _ = req.done.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "store write failed; refusing the group");
                    dedup.forget(&mut kept);
                    for (req, _) in pending {
                        let _ = req.done.send(Err(StoreError::Write(e.to_string())));
                    }
                    // Start a fresh segment: the failed one may hold a torn tail.
                    if let Ok(w) = SegmentWriter::create(&self.config.dir, writer.seq + 1) {
                        self.add_segment(w.seq, w.file_len());
                        writer = w;
                    }
                    continue;
                }
            }
            {
                let mut segs = self.segments.write().unwrap_or_else(|e| e.into_inner());
                if let Some(m) = segs.last_mut() {
                    m.bytes = writer.file_len();
                }
            }
            if writer.bytes >= self.config.segment_bytes {
                match SegmentWriter::create(&self.config.dir, writer.seq + 1) {
                    Ok(w) => {
                        let closed = std::mem::replace(&mut writer, w);
                        let len = closed.bytes;
                        match closed.close() {
                            Ok(()) => {
                                let mut segs =
                                    self.segments.write().unwrap_or_else(|e| e.into_inner());
                                if let Some(m) = segs.last_mut() {
                                    m.bytes = len;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot trim a closed segment's padding")
                            }
                        }
                        self.add_segment(writer.seq, writer.file_len());
                        self.enforce_retention(writer.seq);
                        last_retention = Instant::now();
                    }
                    Err(e) => tracing::error!(error = %e, "cannot rotate segment"),
                }
            }
            if last_retention.elapsed() > Duration::from_secs(5) {
                self.enforce_retention(writer.seq);
                last_retention = Instant::now();
            }
            self.publish_gauges();
        }
        tracing::info!("store writer stopped");
    }

    fn add_segment(&self, seq: u64, bytes: u64) {
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(SegmentMeta {
                seq,
                bytes,
                min_time: u64::MAX,
                max_time: 0,
            });
    }

    /// Delete the oldest closed segments past the age or byte bound.
    fn enforce_retention(&self, current: u64) {
        let now = SystemTime::now();
        let mut segs = self.segments.write().unwrap_or_else(|e| e.into_inner());
        let mut total: u64 = segs.iter().map(|s| s.bytes).sum();
        let mut removed = 0;
        while let Some(oldest) = segs.first() {
            if oldest.seq == current {
                break;
            }
            let path = segment_path(&self.config.dir, oldest.seq);
            let too_old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > self.config.retention_age);
            if !(too_old || total > self.config.retention_bytes) {
                break;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete segment");
                break;
            }
            total -= oldest.bytes;
            segs.remove(0);
            removed += 1;
        }
        if removed > 0 {
            self.metrics.segments_deleted.add(removed);
            tracing::info!(removed, "retention deleted segments");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hw-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A store over `config` with fresh metrics, and the decoder it uses.
    fn open(config: StoreConfig) -> (Store, Decoder) {
        let decoder = Decoder::default();
        let store = Store::open(config, decoder.clone(), Arc::new(Metrics::default())).unwrap();
        (store, decoder)
    }

    /// One span per id `i`, starting at 1000 + i ns.
    fn request(ids: &[u8]) -> ExportTraceServiceRequest {
        let mut r = crate::testsuite::trace_request("shop", 0, 0);
        let spans = &mut r.resource_spans[0].scope_spans[0].spans;
        for &i in ids {
            spans.push(opentelemetry_proto::tonic::trace::v1::Span {
                trace_id: vec![i; 16],
                span_id: vec![i; 8],
                name: "GET /".into(),
                kind: 2,
                start_time_unix_nano: 1_000 + i as u64,
                end_time_unix_nano: 2_000 + i as u64,
                ..Default::default()
            });
        }
        r
    }

    async fn put(store: &Store, decoder: &Decoder, ids: &[u8]) -> AppendOutcome {
        let req = request(ids);
        let batch = decoder.traces(&req);
        store
            .append(Signal::Traces, req.encode_to_vec().into(), batch)
            .await
            .unwrap()
    }

    /// A group's spans are remembered as they are kept (a copy later in
    /// the group goes), and a group that failed to be written is forgotten
    /// so that its retry is kept again, even across a new generation.
    #[test]
    fn a_group_is_remembered_as_it_is_kept_and_forgotten_when_not_written() {
        let d = Decoder::default();
        let spans = |ids: &[u8]| d.traces(&request(ids)).spans;
        let mut dedup = Dedup::new(8);
        let mut kept = Vec::new();
        let mut first = spans(&[1, 2, 1]);
        assert_eq!(dedup.filter(&mut first, &mut kept), 1, "the second 1 goes");
        assert_eq!(first.len(), 2);
        assert_eq!(kept.len(), 2);
        // Written: the next group's copies go.
        kept.clear();
        let mut again = spans(&[2, 3]);
        assert_eq!(dedup.filter(&mut again, &mut kept), 1);
        assert_eq!(kept.len(), 1, "only 3 is new");
        // Not written: forgotten, so the retry is kept whole.
        dedup.forget(&mut kept);
        assert!(kept.is_empty());
        let mut retry = spans(&[3, 4, 5, 6, 7]);
        assert_eq!(dedup.filter(&mut retry, &mut kept), 0);
        assert_eq!(kept.len(), 5);
        dedup.forget(&mut kept);
        let mut retry = spans(&[3, 4, 5, 6, 7]);
        assert_eq!(dedup.filter(&mut retry, &mut Vec::new()), 0);
        // Three more overflow the capacity of 8: the oldest go.
        let mut more = spans(&[8, 9, 10]);
        assert_eq!(dedup.filter(&mut more, &mut Vec::new()), 0);
        assert_eq!(dedup.len(), 8);
        let mut old = spans(&[1, 2]);
        assert_eq!(
            dedup.filter(&mut old, &mut Vec::new()),
            0,
            "1 and 2 aged out"
        );
    }

    /// A request that mixes services (and names one twice) is stored per
    /// service in arrival order, with each service's counts and times.
    #[tokio::test]
    async fn a_request_that_mixes_services_is_split_by_service_in_order() {
        let dir = tmp("mixed");
        let (store, decoder) = open(StoreConfig::new(&dir));
        let mut req = request(&[1, 2]);
        let mut cart = request(&[3]).resource_spans.remove(0);
        cart.resource = crate::testsuite::trace_request("cart", 0, 0).resource_spans[0]
            .resource
            .take();
        let shop_again = request(&[6, 5]).resource_spans.remove(0);
        req.resource_spans.extend([cart, shop_again]);
        let batch = decoder.traces(&req);
        let outcome = store
            .append(Signal::Traces, req.encode_to_vec().into(), batch)
            .await
            .unwrap();
        assert_eq!(outcome.spans, 5);
        let ids = |service: &str| -> Vec<u8> {
            let q = Query {
                service: Some(service.into()),
                ..Query::all()
            };
            store.spans(&q).iter().map(|s| s.span_id[0]).collect()
        };
        assert_eq!(ids("shop"), [1, 2, 6, 5], "shop's spans in arrival order");
        assert_eq!(ids("cart"), [3]);
        let stats = store.stats();
        let shop = &stats.services["shop"];
        assert_eq!(
            (shop.spans, shop.first_unix_nano, shop.last_unix_nano),
            (4, Some(1_001), Some(1_006))
        );
        let cart = &stats.services["cart"];
        assert_eq!((cart.spans, cart.first_unix_nano), (1, Some(1_003)));
        assert_eq!(
            (
                stats.totals.spans,
                stats.totals.first_unix_nano,
                stats.totals.last_unix_nano
            ),
            (5, Some(1_001), Some(1_006))
        );
        let mut cursor = TailCursor::default();
        let tailed = store.tail(&mut cursor, usize::MAX).unwrap();
        assert_eq!(tailed.spans.len(), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dedups_and_recovers_after_reopen() {
        let dir = tmp("reopen");
        let decoder = Decoder::default();
        let metrics = Arc::new(Metrics::default());
        {
            let store =
                Store::open(StoreConfig::new(&dir), decoder.clone(), metrics.clone()).unwrap();
            assert_eq!(put(&store, &decoder, &[1, 2, 3]).await.spans, 3);
            let again = put(&store, &decoder, &[2, 3, 4]).await;
            assert_eq!((again.spans, again.duplicates), (1, 2));
            assert_eq!(store.stats().services["shop"].spans, 4);
        }
        let store = Store::open(StoreConfig::new(&dir), decoder.clone(), metrics).unwrap();
        let spans = store.spans(&Query::all());
        let mut ids: Vec<u8> = spans.iter().map(|s| s.span_id[0]).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        assert_eq!(store.stats().duplicates, 2);
    }

    #[tokio::test]
    async fn tail_returns_each_new_row_once_and_says_when_it_fell_behind() {
        let dir = tmp("tail");
        let (store, decoder) = open(StoreConfig::new(&dir));
        put(&store, &decoder, &[1, 2, 3]).await;
        let ids = |b: &Batch| b.spans.iter().map(|s| s.span_id[0]).collect::<Vec<_>>();
        let mut cursor = TailCursor::default();
        // A new cursor starts at the oldest row in memory; the limit splits.
        assert_eq!(ids(&store.tail(&mut cursor, 2).unwrap()), vec![1, 2]);
        assert_eq!(ids(&store.tail(&mut cursor, 2).unwrap()), vec![3]);
        assert!(store.tail(&mut cursor, 2).unwrap().is_empty());
        // Duplicates are not stored, so not seen again.
        put(&store, &decoder, &[3, 4]).await;
        assert_eq!(ids(&store.tail(&mut cursor, 10).unwrap()), vec![4]);
        drop(store);

        // With a hot set that holds almost nothing, rows are evicted before
        // a slow reader takes them, and it is told so.
        let mut config = StoreConfig::new(tmp("tail-evict"));
        config.hot_bytes = 1;
        let (store, decoder) = open(config);
        let mut cursor = TailCursor::default();
        assert!(store.tail(&mut cursor, 10).unwrap().is_empty());
        put(&store, &decoder, &[5, 6]).await;
        let err = store.tail(&mut cursor, 10).unwrap_err();
        assert_eq!(err.service, "shop");
    }

    #[tokio::test]
    async fn queries_reach_past_the_hot_set_to_disk() {
        let mut config = StoreConfig::new(tmp("evict"));
        config.hot_bytes = 1; // everything is evicted at once
        let (store, decoder) = open(config);
        put(&store, &decoder, &[1, 2]).await;
        put(&store, &decoder, &[3]).await;
        let q = Query {
            service: Some("shop".into()),
            from_unix_nano: 1_002,
            to_unix_nano: u64::MAX,
        };
        let mut ids: Vec<u8> = store.spans(&q).iter().map(|s| s.span_id[0]).collect();
        ids.sort();
        assert_eq!(ids, vec![2, 3]);
    }

    #[tokio::test]
    async fn retention_by_bytes_deletes_the_oldest_segments() {
        let dir = tmp("retention");
        let decoder = Decoder::default();
        let metrics = Arc::new(Metrics::default());
        let mut config = StoreConfig::new(&dir);
        config.segment_bytes = 4096;
        config.retention_bytes = 3 * 4096;
        let store = Store::open(config, decoder.clone(), metrics.clone()).unwrap();
        for i in 0..200u8 {
            put(&store, &decoder, &[i]).await;
        }
        // The writer may still be rotating or deleting after the last
        // acknowledgement: compare once the disk and the stats agree on a
        // quiet moment, within a bound.
        let disk = || -> u64 {
            wal::list_segments(&dir)
                .unwrap()
                .iter()
                .filter_map(|s| std::fs::metadata(segment_path(&dir, *s)).ok())
                .map(|m| m.len())
                .sum()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut on_disk = disk();
        while store.stats().store_bytes != on_disk && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            on_disk = disk();
        }
        assert!(
            on_disk <= 4 * 4096 + 512,
            "bounded: {on_disk} bytes on disk"
        );
        assert!(metrics.segments_deleted.get() > 0);
        assert_eq!(store.stats().store_bytes, on_disk);
        // The newest data is still there.
        assert!(
            store
                .spans(&Query::all())
                .iter()
                .any(|s| s.span_id[0] == 199)
        );
    }

    #[tokio::test]
    async fn hot_and_disk_answers_do_not_overlap() {
        let mut config = StoreConfig::new(tmp("overlap"));
        config.hot_bytes = 3 * std::mem::size_of::<SpanRow>();
        let (store, decoder) = open(config);
        for i in 1..=20u8 {
            put(&store, &decoder, &[i]).await;
        }
        let mut ids: Vec<u8> = store
            .spans(&Query::all())
            .iter()
            .map(|s| s.span_id[0])
            .collect();
        ids.sort();
        assert_eq!(ids, (1..=20).collect::<Vec<u8>>());
    }

    #[tokio::test]
    async fn admission_refuses_past_the_budget() {
        let mut config = StoreConfig::new(tmp("admit"));
        config.inflight_bytes = 4096;
        let (store, _) = open(config);
        let held = store.admit(3000).unwrap();
        assert!(matches!(store.admit(2000), Err(StoreError::Overloaded(_))));
        drop(held);
        assert!(store.admit(2000).is_ok());
    }
}

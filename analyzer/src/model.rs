//! The telemetry model: what the collector extracts from OTLP at ingest and
//! what every analysis stage reads. Plain data, no I/O.
//!
//! Strings that repeat across spans (service, route, span name, db system,
//! operation, statement) are [`Sym`]s handed out by an [`Interner`], so each
//! distinct value is stored once however many spans carry it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A fast, non-cryptographic hasher (FxHash) for tables keyed by data
/// whose distribution an attacker does not control the cost of (interned
/// strings are capped in length and count; ids are already random).
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or_default());
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
        }
        // The last bytes as one word (most values are short: a round per
        // byte would cost more than the rest).
        let rest = chunks.remainder();
        if !rest.is_empty() {
            self.0 = (self.0.rotate_left(5) ^ tail_word(rest)).wrapping_mul(FX_SEED);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(FX_SEED);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(FX_SEED);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        // A product's high bits mix every input bit, its low bits only the
        // low ones; tables index by the low bits, so bring the high ones
        // down (as rustc-hash 2 does).
        self.0.rotate_left(26)
    }
}

/// Up to seven bytes as one word, with loads that do not depend on the
/// length byte by byte (as wyhash reads them); one word per length, so
/// with the length hashed before them the bytes are told apart.
#[inline]
fn tail_word(rest: &[u8]) -> u64 {
    let n = rest.len();
    let u32_at = |i: usize| {
        u64::from(u32::from_le_bytes(
            rest[i..i + 4].try_into().unwrap_or_default(),
        ))
    };
    if n >= 4 {
        u32_at(0) | (u32_at(n - 4) << 32)
    } else {
        u64::from(rest[0]) | (u64::from(rest[n / 2]) << 8) | (u64::from(rest[n - 1]) << 16)
    }
}

/// `BuildHasher` for [`FxHasher`].
pub type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// A string that repeats across spans.
///
/// Most are values of the process-wide table an [`Interner`] fills: a
/// plain reference, so cloning and dropping one touch no shared counter
/// (decoders and the assembler run on different cores, and a reference
/// count every span bumps on each of them costs more than the work), and
/// two of them are equal exactly when they are the same reference. Values
/// past the table's bounds are reference-counted copies of their own.
#[derive(Clone)]
pub struct Sym(Repr);

#[derive(Clone)]
enum Repr {
    /// In [`TABLE`] (or the empty string): never freed, unique by content.
    /// A thin reference to the table's `&str`, so that a `Sym` is as small
    /// as the `Arc<str>` it replaced.
    Interned(&'static &'static str),
    Owned(Arc<str>),
}

const _: () = assert!(std::mem::size_of::<Sym>() == 16);

static EMPTY: &str = "";

impl Sym {
    /// The empty string.
    pub fn empty() -> Self {
        Self(Repr::Interned(&EMPTY))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Interned(s) => s,
            Repr::Owned(s) => s,
        }
    }

    /// Whether both are the same stored value (not just equal text).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        match (&a.0, &b.0) {
            (Repr::Interned(x), Repr::Interned(y)) => std::ptr::eq(*x, *y),
            (Repr::Owned(x), Repr::Owned(y)) => Arc::ptr_eq(x, y),
            _ => false,
        }
    }
}

impl Default for Sym {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::ops::Deref for Sym {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Sym {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Sym {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Sym {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            // The table holds each text once.
            (Repr::Interned(x), Repr::Interned(y)) => std::ptr::eq(*x, *y),
            _ => self.as_str() == other.as_str(),
        }
    }
}

impl Eq for Sym {}

impl PartialEq<str> for Sym {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Sym {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::hash::Hash for Sym {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that tables keyed by `Sym` answer `&str`.
        self.as_str().hash(state)
    }
}

impl PartialOrd for Sym {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sym {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self == other {
            return std::cmp::Ordering::Equal;
        }
        self.as_str().cmp(other.as_str())
    }
}

/// A value of the process-wide table, found by [`Interner::lookup`]:
/// `Copy`, and a [`Sym`] for nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Interned(&'static &'static str);

impl Interned {
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl From<Interned> for Sym {
    fn from(value: Interned) -> Self {
        Self(Repr::Interned(value.0))
    }
}

impl std::fmt::Debug for Interned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for Sym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl std::fmt::Display for Sym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// A value not interned: a copy of its own (the empty string excepted).
impl From<&str> for Sym {
    fn from(value: &str) -> Self {
        if value.is_empty() {
            Self::empty()
        } else {
            Self(Repr::Owned(Arc::from(value)))
        }
    }
}

impl From<String> for Sym {
    fn from(value: String) -> Self {
        Self::from(value.as_str())
    }
}

/// Longest attribute value kept; longer values are cut at a char boundary.
pub const MAX_VALUE_LEN: usize = 256;

/// A value of the table, found by its bytes.
#[derive(Clone, Copy)]
struct Key(&'static &'static str);

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The process-wide table behind every [`Interner`]: each distinct text
/// stored once, for the life of the process, up to [`TABLE_BYTES`].
struct Table {
    values: HashSet<Key, FxBuild>,
    bytes: usize,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Most bytes the table holds (texts and their bookkeeping); past it new
/// values are copies of their own and counted as overflowed.
pub const TABLE_BYTES: usize = 256 << 20;

/// What the table spends on a value besides its text.
const TABLE_ENTRY_BYTES: usize = 48;

/// The table's value for `value`, stored now if it is new and fits.
fn table_value(value: &str) -> Option<Key> {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let table = table.get_or_insert_with(|| Table {
        values: HashSet::default(),
        bytes: 0,
    });
    if let Some(k) = table.values.get(value.as_bytes()) {
        return Some(*k);
    }
    let cost = value.len() + TABLE_ENTRY_BYTES;
    if table.bytes + cost > TABLE_BYTES {
        return None;
    }
    table.bytes += cost;
    let text: &'static str = Box::leak(value.to_owned().into_boxed_str());
    let key = Key(Box::leak(Box::new(text)));
    table.values.insert(key);
    Some(key)
}

/// Bounded string interner; decoders of a process share one.
///
/// Past `capacity` distinct values it stops interning (values are still
/// stored, just not shared) and counts them in [`Interner::overflowed`], so a
/// high-cardinality attribute cannot grow the table without bound.
#[derive(Debug)]
pub struct Interner {
    /// This interner's values (all in the process-wide table).
    set: Mutex<HashSet<Key, FxBuild>>,
    capacity: usize,
    overflowed: AtomicU64,
    /// Tells this interner's entries in the threads' caches from others'.
    id: u64,
}

/// Values each thread found interned lately, so that decoders on several
/// threads do not queue for the shared table: per interner (by id), up to
/// `LOCAL_VALUES` (then it starts over).
struct LocalCache {
    tables: Vec<(u64, hashbrown::HashTable<Key>)>,
}

/// The hash of a value's text in the threads' caches.
fn text_hash(bytes: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    std::hash::Hasher::write(&mut h, bytes);
    std::hash::Hasher::finish(&h)
}

/// `a == b` a word at a time: values are short, and a call to `memcmp`
/// costs more than the compare.
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a == b;
    }
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or_default());
    let mut i = 0;
    while i + 8 <= n {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    word(a, n - 8) == word(b, n - 8)
}

const LOCAL_INTERNERS: usize = 4;
/// Room for the paths or keys of a few thousand hot objects besides the
/// names and routes: a value that misses costs a UTF-8 check and the
/// shared table's lock, and a cache that keeps starting over misses even
/// its hottest values. 8 bytes a value (150 KiB a thread, full).
const LOCAL_VALUES: usize = 16384;

thread_local! {
    static LOCAL: std::cell::RefCell<LocalCache> =
        const { std::cell::RefCell::new(LocalCache { tables: Vec::new() }) };
}

static NEXT_INTERNER: AtomicU64 = AtomicU64::new(1);

impl Default for Interner {
    fn default() -> Self {
        Self::with_capacity(200_000)
    }
}

impl Interner {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            set: Mutex::new(HashSet::default()),
            capacity,
            overflowed: AtomicU64::new(0),
            id: NEXT_INTERNER.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The shared empty string.
    pub fn empty(&self) -> Sym {
        Sym::empty()
    }

    pub fn intern(&self, value: &str) -> Sym {
        if value.is_empty() {
            return Sym::empty();
        }
        let value = truncate(value, MAX_VALUE_LEN);
        self.cached(value.as_bytes())
            .unwrap_or_else(|| self.intern_shared(value))
    }

    /// The value whose text is `bytes`, if this thread interned it lately
    /// (with this interner): found by the bytes alone, so they need no
    /// UTF-8 check (the table holds only text).
    pub fn lookup(&self, bytes: &[u8]) -> Option<Interned> {
        if bytes.is_empty() {
            return Some(Interned(&EMPTY));
        }
        LOCAL
            .try_with(|local| {
                let local = local.borrow();
                let (_, cache) = local.tables.iter().find(|(id, _)| *id == self.id)?;
                cache
                    .find(text_hash(bytes), |k| same_bytes(k.0.as_bytes(), bytes))
                    .map(|k| Interned(k.0))
            })
            .ok()
            .flatten()
    }

    /// The value from this thread's cache, if it is there.
    fn cached(&self, bytes: &[u8]) -> Option<Sym> {
        self.lookup(bytes).map(Sym::from)
    }

    /// Intern in the shared tables, and remember it in this thread's cache.
    fn intern_shared(&self, value: &str) -> Sym {
        let key = {
            let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
            match set.get(value.as_bytes()) {
                Some(k) => Some(*k),
                None if set.len() < self.capacity => {
                    let k = table_value(value);
                    if let Some(k) = k {
                        set.insert(k);
                    }
                    k
                }
                None => None,
            }
        };
        let Some(key) = key else {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return Sym(Repr::Owned(Arc::from(value)));
        };
        // Only while the thread is being torn down is there no cache.
        let _ = LOCAL.try_with(|local| {
            let mut local = local.borrow_mut();
            let tables = &mut local.tables;
            let at = match tables.iter().position(|(id, _)| *id == self.id) {
                Some(at) => at,
                None => {
                    if tables.len() >= LOCAL_INTERNERS {
                        tables.remove(0);
                    }
                    tables.push((self.id, hashbrown::HashTable::new()));
                    tables.len() - 1
                }
            };
            let cache = &mut tables[at].1;
            if cache.len() >= LOCAL_VALUES {
                cache.clear();
            }
            // Only `intern` calls this, once the value missed this
            // thread's cache: it is not there.
            cache.insert_unique(text_hash(key.0.as_bytes()), key, |k| {
                text_hash(k.0.as_bytes())
            });
        });
        Sym(Repr::Interned(key.0))
    }

    /// Number of distinct values interned.
    pub fn len(&self) -> usize {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values that arrived after the table was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// Cut `s` to at most `max` bytes on a char boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// OTLP span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    pub fn from_otlp(value: i32) -> Self {
        match value {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }
}

/// OTLP span status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    pub fn from_otlp(value: i32) -> Self {
        match value {
            1 => Self::Ok,
            2 => Self::Error,
            _ => Self::Unset,
        }
    }
}

/// The resource a span or point came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceInfo {
    pub service: Sym,
    pub version: Sym,
    pub instance: Sym,
}

/// One span, reduced to what the analysis reads (SPEC §3.1–3.2). Both
/// semantic-convention generations are folded at ingest: `db_system` holds
/// `db.system.name` or `db.system`, `db_query` holds `db.query.text` or
/// `db.statement`, and so on.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRow {
    pub resource: Arc<ResourceInfo>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero when the span is a root.
    pub parent_span_id: [u8; 8],
    pub kind: SpanKind,
    pub name: Sym,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: StatusCode,
    /// `http.route`.
    pub http_route: Sym,
    /// `http.response.status_code` (legacy `http.status_code`); 0 when absent.
    pub http_status: u16,
    /// `http.request.method` (legacy `http.method`).
    pub http_method: Sym,
    /// `url.path` (legacy `http.target`, query string removed).
    pub url_path: Sym,
    /// `db.system.name` (legacy `db.system`), lower case.
    pub db_system: Sym,
    /// `db.operation.name` (legacy `db.operation`).
    pub db_operation: Sym,
    /// `db.query.text` (legacy `db.statement`), capped.
    pub db_query: Sym,
    /// `db.namespace` (legacy `db.name`).
    pub db_namespace: Sym,
    /// `server.address` (legacy `net.peer.name`).
    pub server_address: Sym,
    /// `cache.key`.
    pub cache_key: Sym,
    /// `cache.hit`, or `cache.result`/`cache.outcome` = hit/miss.
    pub cache_hit: Option<bool>,
    /// `http.request.resend_count` > 0: this request is a retry.
    pub resend_count: u32,
}

impl SpanRow {
    pub fn service(&self) -> &str {
        &self.resource.service
    }

    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id == [0; 8]
    }

    /// Rough heap-inclusive size, for memory accounting.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

/// Aggregation temporality of sums and histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Temporality {
    #[default]
    Unspecified,
    Delta,
    Cumulative,
}

impl Temporality {
    pub fn from_otlp(value: i32) -> Self {
        match value {
            1 => Self::Delta,
            2 => Self::Cumulative,
            _ => Self::Unspecified,
        }
    }
}

/// The value of one metric data point.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    Gauge(f64),
    Sum {
        value: f64,
        monotonic: bool,
        temporality: Temporality,
    },
    Histogram {
        count: u64,
        sum: f64,
        bounds: Arc<[f64]>,
        bucket_counts: Vec<u64>,
        temporality: Temporality,
    },
    ExponentialHistogram {
        count: u64,
        sum: f64,
        scale: i32,
        zero_count: u64,
        positive_offset: i32,
        positive_counts: Vec<u64>,
        temporality: Temporality,
    },
    Summary {
        count: u64,
        sum: f64,
        quantiles: Vec<(f64, f64)>,
    },
}

/// Most attributes kept per data point; the rest are dropped and counted.
pub const MAX_POINT_ATTRIBUTES: usize = 8;

/// One metric data point.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub resource: Arc<ResourceInfo>,
    pub name: Sym,
    pub unit: Sym,
    /// String form of the point's attributes, sorted by key, at most
    /// [`MAX_POINT_ATTRIBUTES`].
    pub attributes: Vec<(Sym, Sym)>,
    pub start_unix_nano: u64,
    pub time_unix_nano: u64,
    pub value: MetricValue,
}

impl MetricPoint {
    pub fn service(&self) -> &str {
        &self.resource.service
    }

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    /// The identity of the series this point belongs to.
    pub fn series_key(&self) -> String {
        let mut key = format!(
            "{}|{}|{}",
            self.resource.service, self.resource.instance, self.name
        );
        for (k, v) in &self.attributes {
            key.push('|');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        key
    }

    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.attributes.len() * 32
            + match &self.value {
                MetricValue::Histogram { bucket_counts, .. } => bucket_counts.len() * 8,
                MetricValue::ExponentialHistogram {
                    positive_counts, ..
                } => positive_counts.len() * 8,
                MetricValue::Summary { quantiles, .. } => quantiles.len() * 16,
                _ => 0,
            }
    }
}

/// Drop the points and log records that came again (the same series,
/// times and value; the same marker at the same time): a retried export, a
/// file given twice. How many went; the first of each stays, in order.
pub fn drop_repeated(points: &mut Vec<MetricPoint>, markers: &mut Vec<LogMarker>) -> u64 {
    let before = points.len() + markers.len();
    let mut seen: HashMap<(String, u64, u64), Vec<usize>> = HashMap::new();
    let mut kept: Vec<MetricPoint> = Vec::with_capacity(points.len());
    for p in std::mem::take(points) {
        let firsts = seen
            .entry((p.series_key(), p.start_unix_nano, p.time_unix_nano))
            .or_default();
        if firsts.iter().any(|&i| kept[i] == p) {
            continue;
        }
        firsts.push(kept.len());
        kept.push(p);
    }
    *points = kept;
    let mut marks: HashSet<(Sym, Sym, u64, MarkerKind, Sym)> = HashSet::new();
    markers.retain(|m| {
        marks.insert((
            m.resource.service.clone(),
            m.resource.instance.clone(),
            m.time_unix_nano,
            m.kind,
            m.body.clone(),
        ))
    });
    (before - points.len() - markers.len()) as u64
}

/// What a kept log record marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkerKind {
    Deploy,
    Restart,
    CacheFlush,
}

impl MarkerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Restart => "restart",
            Self::CacheFlush => "cache-flush",
        }
    }
}

/// A log record that marks a deploy, a restart or a cache flush. Other log
/// records are counted, not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMarker {
    pub resource: Arc<ResourceInfo>,
    pub time_unix_nano: u64,
    pub kind: MarkerKind,
    pub body: Sym,
}

/// What one decoded OTLP request (or one file line) yields.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    pub spans: Vec<SpanRow>,
    pub points: Vec<MetricPoint>,
    pub markers: Vec<LogMarker>,
    /// Log records read but not kept.
    pub other_logs: u64,
    /// Items refused inside an otherwise good request, and why.
    pub rejected: u64,
    pub reject_reason: Option<String>,
    /// Attributes seen but not used by the analysis.
    pub dropped_attributes: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.points.is_empty() && self.markers.is_empty()
    }

    /// The earliest time in the batch (span starts, point and record
    /// times): where it goes in a stream merged by time.
    pub fn earliest(&self) -> Option<u64> {
        let spans = self.spans.iter().map(|s| s.start_unix_nano);
        let points = self.points.iter().map(|p| p.time_unix_nano);
        let markers = self.markers.iter().map(|m| m.time_unix_nano);
        spans.chain(points).chain(markers).min()
    }

    pub fn extend(&mut self, other: Batch) {
        self.spans.extend(other.spans);
        self.points.extend(other.points);
        self.markers.extend(other.markers);
        self.other_logs += other.other_logs;
        self.rejected += other.rejected;
        self.dropped_attributes += other.dropped_attributes;
        if self.reject_reason.is_none() {
            self.reject_reason = other.reject_reason;
        }
    }
}

/// Lower-case hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_shares_and_caps() {
        let interner = Interner::with_capacity(2);
        let a = interner.intern("redis");
        let b = interner.intern("redis");
        assert!(Sym::ptr_eq(&a, &b));
        interner.intern("postgresql");
        let c = interner.intern("mysql");
        let d = interner.intern("mysql");
        assert_eq!(&*c, "mysql");
        assert!(!Sym::ptr_eq(&c, &d), "past capacity values are not shared");
        assert_eq!(interner.len(), 2);
        assert_eq!(interner.overflowed(), 2);
    }

    /// Bytes this thread interned are found as the value they are; bytes
    /// it did not, or that are not text, are not.
    #[test]
    fn values_are_looked_up_by_their_bytes() {
        let interner = Interner::with_capacity(8);
        assert!(interner.lookup("caché:1".as_bytes()).is_none());
        let first = interner.intern("caché:1");
        let found = interner.lookup("caché:1".as_bytes()).unwrap();
        assert_eq!(found.as_str(), "caché:1");
        assert!(Sym::ptr_eq(&first, &Sym::from(found)));
        // A prefix cut inside `é` is not text: never a value.
        interner.intern("cach");
        assert!(interner.lookup(&"caché:1".as_bytes()[..5]).is_none());
        assert!(interner.lookup(&[0xff, 0xfe]).is_none());
        assert_eq!(interner.lookup(b"").unwrap().as_str(), "");
        // Another interner's values are not this one's.
        let other = Interner::with_capacity(8);
        assert!(other.lookup("caché:1".as_bytes()).is_none());
        // Nor another thread's.
        std::thread::scope(|s| {
            s.spawn(|| assert!(interner.lookup("caché:1".as_bytes()).is_none()));
        });
    }

    /// An interned value and a copy of its own are the same value to
    /// every table and comparison; only `ptr_eq` tells them apart.
    #[test]
    fn interned_and_owned_values_compare_as_their_text() {
        use std::hash::BuildHasher;
        let interner = Interner::with_capacity(8);
        let interned = interner.intern("GET /product/{id}");
        let owned = Sym::from("GET /product/{id}");
        assert_eq!(interned, owned);
        assert_eq!(owned, interned);
        assert!(!Sym::ptr_eq(&interned, &owned));
        let build = FxBuild::default();
        assert_eq!(build.hash_one(&interned), build.hash_one(&owned));
        assert_eq!(
            build.hash_one(&interned),
            build.hash_one("GET /product/{id}")
        );
        assert_eq!(interned.cmp(&owned), std::cmp::Ordering::Equal);
        let later = interner.intern("POST /cart");
        assert!(interned < later && owned < later);
        assert_ne!(interned, later);
        assert_eq!(interner.intern(""), Sym::from(""));
        assert!(Sym::ptr_eq(&Sym::default(), &Sym::from(String::new())));
        let mut table: HashMap<Sym, u32> = HashMap::new();
        table.insert(owned, 1);
        assert_eq!(table.get("GET /product/{id}"), Some(&1));
        assert_eq!(table.get(&interned), Some(&1));
    }

    /// The threads' caches in front of the shared table: threads share
    /// values, interners keep their own tables and counts.
    #[test]
    fn threads_share_values_and_interners_stay_apart() {
        let one = Arc::new(Interner::with_capacity(10));
        let here = one.intern("checkout");
        let there = {
            let one = one.clone();
            std::thread::spawn(move || one.intern("checkout"))
                .join()
                .unwrap()
        };
        assert!(Sym::ptr_eq(&here, &there));
        let two = Interner::with_capacity(1);
        two.intern("other");
        let again = two.intern("checkout");
        assert!(
            !Sym::ptr_eq(&here, &again),
            "not from the other interner's cache"
        );
        assert_eq!((one.len(), two.len(), two.overflowed()), (1, 1, 1));
        // A cached value is still the table's.
        assert!(Sym::ptr_eq(&one.intern("checkout"), &here));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0xAB, 0x01]), "ab01");
    }
}

//! Trace shape (SPEC §3.2): assemble spans into traces, attribute cache and
//! database operations to their request, decide hits and misses, and record
//! recomputes. The output is [`Facts`]: a few small rows per request instead
//! of the spans, so a capture of any size reduces to bounded memory as
//! traces complete.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::classify::{self, CacheOp, Role};
use crate::config::AnalysisConfig;
use crate::model::{FxBuild, MarkerKind, ResourceInfo, SpanRow, StatusCode, Sym};

/// How a lookup's outcome was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// `cache.hit` / `cache.result` on the lookup or its request.
    Attribute,
    /// Lookup followed by database work in the same request.
    TraceShape,
    /// No database work followed.
    NoFollowUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// The lookup itself failed (error status, timeout).
    Failed,
}

#[derive(Debug, Clone)]
pub struct RequestFact {
    pub service: Sym,
    pub route: Sym,
    pub method: Sym,
    pub url_path: Sym,
    pub start: u64,
    pub end: u64,
    pub error: bool,
    pub trace_id: [u8; 16],
    /// At least one lookup of this request missed or failed.
    pub missed: bool,
    pub resend: bool,
}

#[derive(Debug, Clone)]
pub struct LookupFact {
    pub service: Sym,
    pub t: u64,
    pub key: Sym,
    pub group: Sym,
    pub outcome: Outcome,
    pub evidence: Evidence,
    /// Keys are only the request's route or span name (no per-key detail).
    pub group_only: bool,
}

#[derive(Debug, Clone)]
pub struct RecomputeFact {
    pub service: Sym,
    pub key: Sym,
    pub group: Sym,
    /// When the lookup that missed started.
    pub miss_at: u64,
    pub start: u64,
    pub end: u64,
    /// Summed duration of the database operations of the recompute.
    pub db_nanos: u64,
    /// From the end of the lookup that missed to `start`: the time spent
    /// waiting (for a connection, a lock) before the database work began.
    pub wait: u64,
    pub trace_id: [u8; 16],
}

#[derive(Debug, Clone)]
pub struct DbOpFact {
    pub service: Sym,
    pub start: u64,
    pub end: u64,
    pub statement: Sym,
    /// Part of a recompute of a missed key.
    pub recompute: bool,
}

#[derive(Debug, Clone)]
pub struct FillFact {
    pub service: Sym,
    pub key: Sym,
    pub t: u64,
}

/// A deploy, restart, flush or new cache node seen in the telemetry.
#[derive(Debug, Clone)]
pub struct MarkerFact {
    pub service: Sym,
    pub t: u64,
    pub kind: MarkerKind,
    pub detail: String,
}

/// Everything the signals are computed from.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub requests: Vec<RequestFact>,
    pub lookups: Vec<LookupFact>,
    pub recomputes: Vec<RecomputeFact>,
    pub db_ops: Vec<DbOpFact>,
    pub fills: Vec<FillFact>,
    pub markers: Vec<MarkerFact>,
    /// (service, version, instance) → first and last time seen.
    pub versions: HashMap<(Sym, Sym, Sym), (u64, u64)>,
    /// (service, cache server address) → first time seen.
    pub cache_nodes: HashMap<(Sym, Sym), u64, FxBuild>,
    /// Spans pushed, duplicates included.
    pub spans: u64,
    /// Spans that came again in their trace (same span id, start and end:
    /// a retried export, a file given twice) and were reduced once.
    pub duplicate_spans: u64,
    pub traces: u64,
    /// Lookups whose outcome was given by an attribute.
    pub attribute_lookups: u64,
    pub min_time: u64,
    pub max_time: u64,
}

/// The part of `v`, sorted by `key`, whose key lies in [from, to).
pub fn window<T>(v: &[T], key: impl Fn(&T) -> u64, from: u64, to: u64) -> &[T] {
    let a = v.partition_point(|x| key(x) < from);
    let b = v.partition_point(|x| key(x) < to).max(a);
    &v[a..b]
}

// The time order of each kind of fact (ties by trace or key, so the order
// does not depend on how traces were flushed).
fn request_order(a: &RequestFact, b: &RequestFact) -> Ordering {
    (a.start, a.trace_id).cmp(&(b.start, b.trace_id))
}
fn lookup_order(a: &LookupFact, b: &LookupFact) -> Ordering {
    (a.t, &a.key).cmp(&(b.t, &b.key))
}
fn recompute_order(a: &RecomputeFact, b: &RecomputeFact) -> Ordering {
    (a.start, a.trace_id).cmp(&(b.start, b.trace_id))
}
fn db_order(a: &DbOpFact, b: &DbOpFact) -> Ordering {
    (a.start, a.end).cmp(&(b.start, b.end))
}
fn fill_order(a: &FillFact, b: &FillFact) -> Ordering {
    (a.t, &a.key).cmp(&(b.t, &b.key))
}

/// Merge `new` into sorted `v`: only the part of `v` from where `new`
/// starts is re-sorted, so merging recent facts costs what they add.
fn merge_sorted<T>(v: &mut Vec<T>, mut new: Vec<T>, order: fn(&T, &T) -> Ordering) {
    if new.is_empty() {
        return;
    }
    new.sort_by(order);
    let from = v.partition_point(|x| order(x, &new[0]) != Ordering::Greater);
    v.extend(new);
    v[from..].sort_by(order);
}

/// Drop the spans of a trace sorted by (start, end) that came again (same
/// span id, start and end); how many went. Copies of a span sort together
/// among the spans of their (start, end).
fn drop_duplicates(spans: &mut Vec<&SpanRow>) -> usize {
    let key = |s: &SpanRow| (s.start_unix_nano, s.end_unix_nano);
    let mut kept = 0;
    // The kept spans of the current (start, end), from here to `kept`.
    let mut run = 0;
    for i in 0..spans.len() {
        if kept > 0 && key(spans[run]) != key(spans[i]) {
            run = kept;
        }
        if spans[run..kept]
            .iter()
            .any(|k| k.span_id == spans[i].span_id)
        {
            continue;
        }
        if kept != i {
            spans.swap(kept, i);
        }
        kept += 1;
    }
    let dropped = spans.len() - kept;
    spans.truncate(kept);
    dropped
}

/// Traces up to this many spans find parents by a scan.
const SCAN_SPANS: usize = 16;

/// Fewest spans pushed between two sweeps for complete traces.
const SWEEP_SPANS: usize = 4_096;

/// Complete traces whose spans are loaded together before they are reduced.
const TOUCH_TRACES: usize = 64;

/// Order a trace's spans by (start, end), stable. Spans are large: what
/// moves is references to them.
fn sort_spans(spans: &mut [&SpanRow]) {
    let key = |s: &&SpanRow| (s.start_unix_nano, s.end_unix_nano);
    if !spans.is_sorted_by_key(key) {
        spans.sort_by_key(key);
    }
}

/// Drop the front of sorted `v` whose time is before `t`, when that is at
/// least an eighth of it (so the move is amortised); the latest `end` of
/// what went (0 when nothing did).
fn evict_sorted<T>(
    v: &mut Vec<T>,
    time: impl Fn(&T) -> u64,
    end: impl Fn(&T) -> u64,
    t: u64,
    shrink: bool,
) -> u64 {
    let n = v.partition_point(|x| time(x) < t);
    let mut reach = 0;
    if n > 0 && n >= v.len() / 8 {
        reach = v.drain(..n).map(|x| end(&x)).max().unwrap_or(0);
        // Give the room back too: memory is counted as allocated.
        if shrink && v.capacity() > 2 * v.len() + 64 {
            v.shrink_to(v.len() + v.len() / 2);
        }
    }
    reach
}

/// Make room in `v` for `bytes` of rows at once, so it never grows by
/// reallocating (a copy that briefly holds it twice).
fn reserve_bytes<T>(v: &mut Vec<T>, bytes: usize) {
    let want = bytes.div_ceil(std::mem::size_of::<T>().max(1));
    if v.capacity() < want {
        v.reserve_exact(want - v.len());
    }
}

impl Facts {
    /// Order the facts by time: windows become slices.
    pub fn sort_by_time(&mut self) {
        self.requests.sort_by(request_order);
        self.lookups.sort_by(lookup_order);
        self.recomputes.sort_by(recompute_order);
        self.db_ops.sort_by(db_order);
        self.fills.sort_by(fill_order);
    }

    /// Add `new` (facts taken from an assembler) to these time-sorted facts,
    /// keeping them sorted.
    pub fn merge(&mut self, new: Facts) {
        merge_sorted(&mut self.requests, new.requests, request_order);
        merge_sorted(&mut self.lookups, new.lookups, lookup_order);
        merge_sorted(&mut self.recomputes, new.recomputes, recompute_order);
        merge_sorted(&mut self.db_ops, new.db_ops, db_order);
        merge_sorted(&mut self.fills, new.fills, fill_order);
        for (k, (first, last)) in new.versions {
            let e = self.versions.entry(k).or_insert((first, last));
            e.0 = e.0.min(first);
            e.1 = e.1.max(last);
        }
        for (k, t) in new.cache_nodes {
            let e = self.cache_nodes.entry(k).or_insert(t);
            *e = (*e).min(t);
        }
        self.markers.extend(new.markers);
        self.spans += new.spans;
        self.duplicate_spans += new.duplicate_spans;
        self.traces += new.traces;
        self.attribute_lookups += new.attribute_lookups;
        if new.spans > 0 {
            self.min_time = if self.spans == new.spans {
                new.min_time
            } else {
                self.min_time.min(new.min_time)
            };
            self.max_time = self.max_time.max(new.max_time);
        }
    }

    /// Memory the facts take (estimated: the vectors as allocated, not the
    /// shared strings).
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        self.requests.capacity() * size_of::<RequestFact>()
            + self.lookups.capacity() * size_of::<LookupFact>()
            + self.recomputes.capacity() * size_of::<RecomputeFact>()
            + self.db_ops.capacity() * size_of::<DbOpFact>()
            + self.fills.capacity() * size_of::<FillFact>()
    }

    /// Memory the per-request rows fill (not what is reserved for them).
    pub fn row_bytes(&self) -> usize {
        use std::mem::size_of;
        self.requests.len() * size_of::<RequestFact>()
            + self.lookups.len() * size_of::<LookupFact>()
            + self.recomputes.len() * size_of::<RecomputeFact>()
            + self.db_ops.len() * size_of::<DbOpFact>()
            + self.fills.len() * size_of::<FillFact>()
    }

    /// Reserve room for `bytes` of each kind of row (address space only:
    /// pages are backed as rows fill them), so that the rows of a bounded
    /// analysis grow in place. Rows evicted with
    /// [`Facts::evict_reserved_before`] keep the room.
    pub fn reserve_rows(&mut self, bytes: usize) {
        reserve_bytes(&mut self.requests, bytes);
        reserve_bytes(&mut self.lookups, bytes);
        reserve_bytes(&mut self.recomputes, bytes);
        reserve_bytes(&mut self.db_ops, bytes);
        reserve_bytes(&mut self.fills, bytes);
    }

    /// Forget facts (and versions last seen) before `t`. The removal is
    /// amortised: a kind of fact is trimmed once enough of it is old.
    pub fn evict_before(&mut self, t: u64) {
        self.evict_rows_before(t);
        self.versions.retain(|_, (_, last)| *last >= t);
        self.min_time = self.min_time.max(t);
    }

    /// Forget the per-request rows before `t` (amortised, as
    /// [`Facts::evict_before`]); versions, markers and counts stay.
    pub fn evict_rows_before(&mut self, t: u64) {
        self.evict_rows(t, true);
    }

    /// [`Facts::evict_rows_before`] keeping the room of the rows
    /// ([`Facts::reserve_rows`]): the latest time a row that went counts
    /// at in the buckets (0 when none went).
    pub fn evict_reserved_before(&mut self, t: u64) -> u64 {
        self.evict_rows(t, false)
    }

    fn evict_rows(&mut self, t: u64, shrink: bool) -> u64 {
        [
            // A request counts in the bucket it starts in; operations in
            // every bucket they run through.
            evict_sorted(&mut self.requests, |r| r.start, |r| r.start, t, shrink),
            evict_sorted(&mut self.lookups, |l| l.t, |l| l.t, t, shrink),
            evict_sorted(&mut self.recomputes, |r| r.start, |r| r.end, t, shrink),
            evict_sorted(&mut self.db_ops, |d| d.start, |d| d.end, t, shrink),
            evict_sorted(&mut self.fills, |f| f.t, |f| f.t, t, shrink),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// Forget the rows (in any order) before `t`.
    pub fn drop_rows_before(&mut self, t: u64) {
        self.requests.retain(|r| r.start >= t);
        self.lookups.retain(|l| l.t >= t);
        self.recomputes.retain(|r| r.start >= t);
        self.db_ops.retain(|d| d.start >= t);
        self.fills.retain(|f| f.t >= t);
    }

    /// Free every per-request row; versions, markers and counts stay.
    pub fn drop_rows(&mut self) {
        self.requests = Vec::new();
        self.lookups = Vec::new();
        self.recomputes = Vec::new();
        self.db_ops = Vec::new();
        self.fills = Vec::new();
    }

    /// Turn deploys seen as new `service.version` / `service.instance.id`
    /// (after an older one), and new cache nodes, into markers.
    pub fn derive_markers(&mut self) {
        let mut by_service: HashMap<Sym, Vec<(u64, u64, Sym, Sym)>> = HashMap::new();
        for ((service, version, instance), (first, last)) in &self.versions {
            by_service.entry(service.clone()).or_default().push((
                *first,
                *last,
                version.clone(),
                instance.clone(),
            ));
        }
        for (service, mut v) in by_service {
            v.sort_by_key(|x| x.0);
            let capture_start = v[0].0;
            let mut seen_versions: HashSet<Sym> = HashSet::new();
            for (first, _, version, instance) in v {
                let new_version = !seen_versions.is_empty() && !seen_versions.contains(&version);
                seen_versions.insert(version.clone());
                if first > capture_start {
                    self.markers.push(MarkerFact {
                        service: service.clone(),
                        t: first,
                        kind: if new_version {
                            MarkerKind::Deploy
                        } else {
                            MarkerKind::Restart
                        },
                        detail: if new_version {
                            format!("new service.version {version} (instance {instance})")
                        } else {
                            format!("new service.instance.id {instance}")
                        },
                    });
                }
            }
        }
        let mut nodes: HashMap<Sym, Vec<(u64, Sym)>> = HashMap::new();
        for ((service, addr), t) in &self.cache_nodes {
            nodes
                .entry(service.clone())
                .or_default()
                .push((*t, addr.clone()));
        }
        for (service, mut v) in nodes {
            v.sort();
            let start = v[0].0;
            for (t, addr) in v.into_iter().skip(1) {
                if t > start {
                    self.markers.push(MarkerFact {
                        service: service.clone(),
                        t,
                        kind: MarkerKind::CacheFlush,
                        detail: format!("new cache node {addr}"),
                    });
                }
            }
        }
    }
}

struct Pending {
    spans: Vec<SpanRow>,
    last_end: u64,
    first_start: u64,
    /// A span without a parent (the trace's root) has arrived.
    rooted: bool,
}

/// Assembles spans into traces and reduces each complete trace to facts.
///
/// A trace is complete once no span of it has ended within `grace` of the
/// newest span seen (the watermark); [`TraceAssembler::finish`] flushes the rest.
/// A live assembler ([`TraceAssembler::live`]) also completes a trace whose
/// root has arrived once the watermark is `quiet` past its last span, so
/// facts follow the data within seconds.
pub struct TraceAssembler {
    config: Arc<AnalysisConfig>,
    pending: HashMap<[u8; 16], Pending, FxBuild>,
    facts: Facts,
    /// The resource of the spans just pushed and the range of their starts:
    /// spans of one request share it, so `versions` is updated once per run.
    resource_run: Option<(Arc<ResourceInfo>, u64, u64)>,
    watermark: u64,
    grace: u64,
    quiet: Option<u64>,
    /// Spans held in pending traces, and how many a live assembler holds
    /// before it stops waiting for roots.
    pending_spans: usize,
    max_pending_spans: usize,
    since_sweep: usize,
    interner: crate::model::Interner,
    /// Room a trace's reduction works in, kept from one trace to the next.
    scratch: Scratch,
}

/// A trace's roles, its requests and which request each operation
/// belongs to: per trace, so kept rather than allocated each time.
#[derive(Debug, Default)]
struct Scratch {
    roles: Vec<Role>,
    requests: Vec<usize>,
    /// (request, operation) by span index, ordered by request.
    owned: Vec<(usize, usize)>,
    ops: Vec<usize>,
}

impl TraceAssembler {
    pub fn new(config: Arc<AnalysisConfig>) -> Self {
        Self {
            config,
            pending: HashMap::default(),
            facts: Facts {
                min_time: u64::MAX,
                ..Facts::default()
            },
            resource_run: None,
            watermark: 0,
            grace: 60_000_000_000,
            quiet: None,
            pending_spans: 0,
            max_pending_spans: usize::MAX,
            since_sweep: 0,
            interner: crate::model::Interner::with_capacity(1 << 20),
            scratch: Scratch::default(),
        }
    }

    /// An assembler for live analysis: rooted traces complete `quiet`
    /// nanoseconds after their last span, the others after `grace`, or
    /// after `quiet` too once more than `max_pending_spans` wait.
    pub fn live(
        config: Arc<AnalysisConfig>,
        quiet: u64,
        grace: u64,
        max_pending_spans: usize,
    ) -> Self {
        Self {
            quiet: Some(quiet),
            grace,
            max_pending_spans,
            ..Self::new(config)
        }
    }

    /// Newest span end seen.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// How long after the watermark a trace without a root is complete.
    pub fn grace(&self) -> u64 {
        self.grace
    }

    /// Traces still waiting for spans.
    pub fn pending_traces(&self) -> usize {
        self.pending.len()
    }

    /// The earliest span start of the traces still pending: facts before it
    /// are complete.
    pub fn pending_from(&self) -> Option<u64> {
        self.pending.values().map(|p| p.first_start).min()
    }

    /// Reduce every pending trace whose root has arrived: with no data
    /// coming, the watermark that would complete them stands still. A trace
    /// still waiting for its root is a request in flight (its root ends
    /// last): it stays, so a sender that stalls mid-request does not split
    /// its traces in two.
    pub fn flush_rooted(&mut self) {
        let mut done: Vec<Pending> = self
            .pending
            .extract_if(|_, p| p.rooted)
            .map(|(_, p)| p)
            .collect();
        done.sort_unstable_by_key(|p| p.first_start);
        for p in done {
            self.pending_spans = self.pending_spans.saturating_sub(p.spans.len());
            self.reduce(p.spans);
        }
    }

    /// Reduce every pending trace, complete or not.
    pub fn flush(&mut self) {
        self.pending_spans = 0;
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        for p in pending {
            self.reduce(p.spans);
        }
    }

    /// The facts reduced since the last call (unsorted; without derived
    /// markers), with the span and trace counts and versions seen; pending
    /// traces stay.
    pub fn take_facts(&mut self) -> Facts {
        self.end_resource_run();
        std::mem::replace(
            &mut self.facts,
            Facts {
                min_time: u64::MAX,
                ..Facts::default()
            },
        )
    }

    /// Push a batch's spans. Those of one trace join it together: one look
    /// in the pending table and one allocation per trace, not per span.
    pub fn push_all(&mut self, spans: Vec<SpanRow>) {
        if spans.len() < 2 {
            spans.into_iter().for_each(|s| self.push(s));
            return;
        }
        // Each trace's place among the batch's traces (in order of first
        // appearance) and its span count.
        let mut slot: HashMap<[u8; 16], usize, FxBuild> =
            HashMap::with_capacity_and_hasher(spans.len(), FxBuild::default());
        let mut traces: Vec<([u8; 16], usize)> = Vec::new();
        for s in &spans {
            self.note(s);
            let at = *slot.entry(s.trace_id).or_insert_with(|| {
                traces.push((s.trace_id, 0));
                traces.len() - 1
            });
            traces[at].1 += 1;
        }
        let mut groups: Vec<Vec<SpanRow>> =
            traces.iter().map(|&(_, n)| Vec::with_capacity(n)).collect();
        let n = spans.len();
        for s in spans {
            groups[slot[&s.trace_id]].push(s);
        }
        for ((trace_id, _), mut group) in traces.into_iter().zip(groups) {
            let last_end = group.iter().map(|s| s.end_unix_nano).max().unwrap_or(0);
            let first_start = group
                .iter()
                .map(|s| s.start_unix_nano)
                .min()
                .unwrap_or(u64::MAX);
            let rooted = group.iter().any(SpanRow::is_root);
            match self.pending.entry(trace_id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Pending {
                        spans: group,
                        last_end,
                        first_start,
                        rooted,
                    });
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let p = o.get_mut();
                    p.last_end = p.last_end.max(last_end);
                    p.first_start = p.first_start.min(first_start);
                    p.rooted |= rooted;
                    p.spans.append(&mut group);
                }
            }
        }
        self.pending_spans += n;
        self.since_sweep += n;
        self.sweep_if_due();
    }

    pub fn push(&mut self, span: SpanRow) {
        self.note(&span);
        let end = span.end_unix_nano;
        let p = self
            .pending
            .entry(span.trace_id)
            .or_insert_with(|| Pending {
                spans: Vec::new(),
                last_end: 0,
                first_start: u64::MAX,
                rooted: false,
            });
        p.last_end = p.last_end.max(end);
        p.first_start = p.first_start.min(span.start_unix_nano);
        p.rooted |= span.is_root();
        p.spans.push(span);
        self.pending_spans += 1;
        self.since_sweep += 1;
        self.sweep_if_due();
    }

    fn sweep_if_due(&mut self) {
        // A sweep looks at every pending trace: often enough that what it
        // reduces is still in the cache, never more than twice a trace.
        if self.since_sweep >= SWEEP_SPANS.max(self.pending.len() / 2) {
            self.sweep_complete();
        }
    }

    /// Count a span in the facts' totals, time range, versions and the
    /// watermark.
    fn note(&mut self, span: &SpanRow) {
        let f = &mut self.facts;
        f.spans += 1;
        f.min_time = f.min_time.min(span.start_unix_nano);
        f.max_time = f.max_time.max(span.end_unix_nano);
        let t = span.start_unix_nano;
        match &mut self.resource_run {
            Some((r, lo, hi)) if Arc::ptr_eq(r, &span.resource) => {
                *lo = (*lo).min(t);
                *hi = (*hi).max(t);
            }
            _ => {
                self.end_resource_run();
                self.resource_run = Some((span.resource.clone(), t, t));
            }
        }
        self.watermark = self.watermark.max(span.end_unix_nano);
    }

    /// Record the current run of one resource's spans in `versions`.
    fn end_resource_run(&mut self) {
        if let Some((r, lo, hi)) = self.resource_run.take() {
            let e = self
                .facts
                .versions
                .entry((r.service.clone(), r.version.clone(), r.instance.clone()))
                .or_insert((lo, hi));
            e.0 = e.0.min(lo);
            e.1 = e.1.max(hi);
        }
    }

    /// Reduce the traces that are complete now.
    pub fn sweep_complete(&mut self) {
        self.since_sweep = 0;
        let rooted_horizon = self
            .quiet
            .map(|q| self.watermark.saturating_sub(q))
            .unwrap_or(0);
        let horizon = if self.pending_spans > self.max_pending_spans {
            rooted_horizon
        } else {
            self.watermark.saturating_sub(self.grace)
        };
        let mut done: Vec<Pending> = self
            .pending
            .extract_if(|_, p| p.last_end < horizon || (p.rooted && p.last_end < rooted_horizon))
            .map(|(_, p)| p)
            .collect();
        // In the order they started, not the table's: their facts come out
        // nearly in time order, which the merge that sorts them finds in
        // runs instead of sorting from scratch.
        done.sort_unstable_by_key(|p| p.first_start);
        for at in (0..done.len()).step_by(TOUCH_TRACES) {
            let to = (at + TOUCH_TRACES).min(done.len());
            let chunk = &mut done[at..to];
            // Their spans were written a while ago: load a few traces' at
            // once (the loads overlap) rather than wait for each in turn.
            let touched = chunk
                .iter()
                .flat_map(|p| &p.spans)
                .fold(0u64, |a, s| a ^ s.start_unix_nano ^ s.end_unix_nano);
            std::hint::black_box(touched);
            for p in chunk {
                let spans = std::mem::take(&mut p.spans);
                self.pending_spans = self.pending_spans.saturating_sub(spans.len());
                self.reduce(spans);
            }
        }
    }

    pub fn finish(mut self) -> Facts {
        self.flush();
        self.end_resource_run();
        if self.facts.min_time == u64::MAX {
            self.facts.min_time = 0;
        }
        self.facts.derive_markers();
        self.facts.sort_by_time();
        self.facts
    }

    fn reduce(&mut self, trace: Vec<SpanRow>) {
        self.facts.traces += 1;
        let mut spans: Vec<&SpanRow> = trace.iter().collect();
        sort_spans(&mut spans);
        self.facts.duplicate_spans += drop_duplicates(&mut spans) as u64;
        let config = self.config.clone();
        let mut scratch = std::mem::take(&mut self.scratch);
        let Scratch {
            roles,
            requests,
            owned,
            ops,
        } = &mut scratch;
        roles.clear();
        roles.extend(spans.iter().map(|s| classify::role(s, &config)));
        // Most traces hold a handful of spans: a scan finds a parent faster
        // than a table that has to be built first.
        let by_id: HashMap<[u8; 8], usize, FxBuild> = if spans.len() > SCAN_SPANS {
            spans
                .iter()
                .enumerate()
                .map(|(i, s)| (s.span_id, i))
                .collect()
        } else {
            HashMap::default()
        };
        let find = |id: &[u8; 8]| {
            if spans.len() > SCAN_SPANS {
                by_id.get(id).copied()
            } else {
                spans.iter().position(|s| &s.span_id == id)
            }
        };
        requests.clear();
        requests.extend((0..spans.len()).filter(|&i| roles[i] == Role::Request));
        // Attribute each cache/db operation to its nearest request ancestor,
        // else to the innermost request whose time range contains it.
        owned.clear();
        for (i, s) in spans.iter().enumerate() {
            if !matches!(roles[i], Role::Cache(_) | Role::Database) {
                continue;
            }
            let mut owner = None;
            let mut cur = s.parent_span_id;
            for _ in 0..64 {
                match find(&cur) {
                    Some(p) if roles[p] == Role::Request => {
                        owner = Some(p);
                        break;
                    }
                    Some(p) => cur = spans[p].parent_span_id,
                    None => break,
                }
            }
            if owner.is_none() {
                owner = requests
                    .iter()
                    .copied()
                    .filter(|&r| {
                        spans[r].start_unix_nano <= s.start_unix_nano
                            && spans[r].end_unix_nano >= s.end_unix_nano
                    })
                    .max_by_key(|&r| spans[r].start_unix_nano);
            }
            match owner {
                Some(r) => owned.push((r, i)),
                None => {
                    // No request in sight: still database load.
                    if roles[i] == Role::Database {
                        self.push_db(spans[i], false);
                    }
                }
            }
        }
        // Stable: each request's operations stay in time order.
        owned.sort_by_key(|&(r, _)| r);
        ops.clear();
        ops.extend(owned.iter().map(|&(_, i)| i));
        // Requests and owners both ascend: each request's operations are
        // the next run.
        let mut at = 0;
        for &r in requests.iter() {
            let from = at;
            while at < owned.len() && owned[at].0 == r {
                at += 1;
            }
            self.reduce_request(&spans, roles, r, &ops[from..at]);
        }
        self.scratch = scratch;
    }

    fn push_db(&mut self, s: &SpanRow, recompute: bool) {
        self.facts.db_ops.push(DbOpFact {
            service: s.resource.service.clone(),
            start: s.start_unix_nano,
            end: s.end_unix_nano,
            statement: if s.db_query.is_empty() {
                s.name.clone()
            } else {
                s.db_query.clone()
            },
            recompute,
        });
    }

    /// Key and key group of a cache operation within its request.
    fn key_of(&self, op: &SpanRow, req: &SpanRow) -> (Sym, Sym, bool) {
        let group_of_route = || {
            if req.http_route.is_empty() {
                req.name.clone()
            } else {
                req.http_route.clone()
            }
        };
        if !op.cache_key.is_empty() {
            let g = self.interner.intern(&classify::key_group(&op.cache_key));
            return (op.cache_key.clone(), g, false);
        }
        if let Some(k) = classify::command_key(op) {
            let key = self.interner.intern(k);
            let g = self.interner.intern(&classify::key_group(k));
            return (key, g, false);
        }
        if !req.cache_key.is_empty() {
            let g = self.interner.intern(&classify::key_group(&req.cache_key));
            return (req.cache_key.clone(), g, false);
        }
        if !req.url_path.is_empty() {
            return (req.url_path.clone(), group_of_route(), false);
        }
        let g = group_of_route();
        (g.clone(), g, true)
    }

    fn reduce_request(&mut self, spans: &[&SpanRow], roles: &[Role], r: usize, ops: &[usize]) {
        let req = &spans[r];
        let service = req.resource.service.clone();
        let mut missed = false;
        for (pos, &i) in ops.iter().enumerate() {
            let op = &spans[i];
            match roles[i] {
                Role::Cache(CacheOp::Lookup) => {
                    let (key, group, group_only) = self.key_of(op, req);
                    // The lookup's window: until the next lookup of another
                    // key, this key's fill, or the request's end.
                    let mut recompute: Vec<usize> = Vec::new();
                    let mut fill_at = None;
                    for &j in &ops[pos + 1..] {
                        let next = &spans[j];
                        match roles[j] {
                            Role::Database if next.start_unix_nano + 1 >= op.start_unix_nano => {
                                recompute.push(j)
                            }
                            Role::Cache(CacheOp::Fill) => {
                                let (k2, _, _) = self.key_of(next, req);
                                if k2 == key || group_only {
                                    fill_at = Some(next.start_unix_nano);
                                    break;
                                }
                            }
                            Role::Cache(CacheOp::Lookup) => {
                                let (k2, _, _) = self.key_of(next, req);
                                if k2 != key {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    let explicit = op.cache_hit.or(req.cache_hit);
                    let failed = op.status == StatusCode::Error;
                    let (outcome, evidence) = match (failed, explicit) {
                        (true, _) => (Outcome::Failed, Evidence::TraceShape),
                        (false, Some(true)) => (Outcome::Hit, Evidence::Attribute),
                        (false, Some(false)) => (Outcome::Miss, Evidence::Attribute),
                        (false, None) if !recompute.is_empty() => {
                            (Outcome::Miss, Evidence::TraceShape)
                        }
                        // No database work and no fill, but the request
                        // failed: the value was not there and getting it
                        // failed (e.g. the pool was exhausted).
                        (false, None)
                            if fill_at.is_none()
                                && (req.http_status >= 500 || req.status == StatusCode::Error) =>
                        {
                            (Outcome::Miss, Evidence::TraceShape)
                        }
                        (false, None) => (Outcome::Hit, Evidence::NoFollowUp),
                    };
                    if evidence == Evidence::Attribute {
                        self.facts.attribute_lookups += 1;
                    }
                    if outcome == Outcome::Hit {
                        recompute.clear();
                    }
                    if outcome != Outcome::Hit {
                        missed = true;
                    }
                    if !recompute.is_empty() {
                        let start = spans[recompute[0]].start_unix_nano;
                        let end = recompute
                            .iter()
                            .map(|&j| spans[j].end_unix_nano)
                            .max()
                            .unwrap_or(start)
                            .max(fill_at.unwrap_or(0).min(req.end_unix_nano));
                        let db_nanos = recompute.iter().map(|&j| spans[j].duration_nanos()).sum();
                        self.facts.recomputes.push(RecomputeFact {
                            service: service.clone(),
                            key: key.clone(),
                            group: group.clone(),
                            miss_at: op.start_unix_nano,
                            start,
                            end,
                            db_nanos,
                            wait: start.saturating_sub(op.end_unix_nano),
                            trace_id: req.trace_id,
                        });
                    }
                    self.facts.lookups.push(LookupFact {
                        service: service.clone(),
                        t: op.start_unix_nano,
                        key,
                        group,
                        outcome,
                        evidence,
                        group_only,
                    });
                    if !op.server_address.is_empty() {
                        let e = self
                            .facts
                            .cache_nodes
                            .entry((service.clone(), op.server_address.clone()))
                            .or_insert(op.start_unix_nano);
                        *e = (*e).min(op.start_unix_nano);
                    }
                }
                Role::Cache(CacheOp::Fill) => {
                    let (key, _, _) = self.key_of(op, req);
                    self.facts.fills.push(FillFact {
                        service: service.clone(),
                        key,
                        t: op.start_unix_nano,
                    });
                }
                Role::Cache(CacheOp::Flush) => self.facts.markers.push(MarkerFact {
                    service: service.clone(),
                    t: op.start_unix_nano,
                    kind: MarkerKind::CacheFlush,
                    detail: format!("{} issued by {}", classify::command(op), req.name),
                }),
                _ => {}
            }
        }
        // Database operations: flagged when they belong to a recompute.
        let in_recompute = |t: u64| {
            self.facts
                .recomputes
                .iter()
                .rev()
                .take_while(|rc| rc.trace_id == req.trace_id)
                .any(|rc| t >= rc.start && t <= rc.end)
        };
        let db: Vec<(usize, bool)> = ops
            .iter()
            .copied()
            .filter(|&i| roles[i] == Role::Database)
            .map(|i| (i, in_recompute(spans[i].start_unix_nano)))
            .collect();
        for (i, rc) in db {
            self.push_db(spans[i], rc);
        }
        self.facts.requests.push(RequestFact {
            service,
            route: if req.http_route.is_empty() {
                req.name.clone()
            } else {
                req.http_route.clone()
            },
            method: req.http_method.clone(),
            url_path: req.url_path.clone(),
            start: req.start_unix_nano,
            end: req.end_unix_nano,
            error: req.http_status >= 500 || req.status == StatusCode::Error,
            trace_id: req.trace_id,
            missed,
            resend: req.resend_count > 0,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{ResourceInfo, SpanKind};

    /// The key sort of a trace's spans is the stable sort by (start, end),
    /// for every order of arrival (ties included).
    #[test]
    fn a_span_that_came_again_is_reduced_once() {
        let a = span(1, 1, 0, SpanKind::Server, 1, 4);
        let b = span(1, 2, 1, SpanKind::Client, 5, 9);
        let c = span(1, 3, 1, SpanKind::Client, 5, 9);
        // Same id, other times: not a copy.
        let a_later = span(1, 1, 0, SpanKind::Server, 2, 4);
        let rows = [
            a.clone(),
            b.clone(),
            a.clone(),
            c.clone(),
            b.clone(),
            a_later.clone(),
        ];
        let mut v: Vec<&SpanRow> = rows.iter().collect();
        sort_spans(&mut v);
        assert_eq!(drop_duplicates(&mut v), 2);
        let ids: Vec<_> = v
            .iter()
            .map(|s| (s.span_id[7], s.start_unix_nano / 1_000_000))
            .collect();
        assert_eq!(ids, [(1, 1), (1, 2), (2, 5), (3, 5)]);
        let once = [a, b, c, a_later];
        let mut once: Vec<&SpanRow> = once.iter().collect();
        sort_spans(&mut once);
        assert_eq!(drop_duplicates(&mut once), 0);
        assert_eq!(once.len(), 4);
    }

    #[test]
    fn spans_sort_as_a_stable_sort_would() {
        let times = [(5, 9), (1, 4), (5, 9), (0, 10), (5, 7)];
        let base: Vec<SpanRow> = times
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| span(1, i as u8 + 1, 0, SpanKind::Internal, a, b))
            .collect();
        let mut rng = 7u64;
        for n in [2, 3, 5] {
            for _ in 0..50 {
                let mut v: Vec<&SpanRow> = base[..n].iter().collect();
                for i in (1..v.len()).rev() {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    v.swap(i, (rng >> 33) as usize % (i + 1));
                }
                let mut want = v.clone();
                want.sort_by_key(|s| (s.start_unix_nano, s.end_unix_nano));
                sort_spans(&mut v);
                let ids = |v: &[&SpanRow]| v.iter().map(|s| s.span_id).collect::<Vec<_>>();
                assert_eq!(ids(&v), ids(&want));
            }
        }
    }

    /// A bounded analysis's rows grow in the room reserved for them (no
    /// copy), are counted by what they fill, and keep the room when the
    /// old ones go.
    #[test]
    fn reserved_rows_grow_in_place_and_keep_their_room() {
        let fill = |t: u64| FillFact {
            service: Sym::from("shop"),
            key: Sym::from("k"),
            t,
        };
        let mut facts = Facts::default();
        facts.reserve_rows(1 << 20);
        let room = facts.fills.capacity();
        assert!(room * std::mem::size_of::<FillFact>() >= 1 << 20);
        let at = facts.fills.as_ptr();
        let more = Facts {
            fills: (0..1000).rev().map(fill).collect(),
            ..Facts::default()
        };
        facts.merge(more);
        assert_eq!(facts.fills.as_ptr(), at, "grown by a copy");
        assert_eq!(facts.row_bytes(), 1000 * std::mem::size_of::<FillFact>());
        assert!(facts.fills.windows(2).all(|w| w[0].t <= w[1].t));
        facts.evict_reserved_before(600);
        assert_eq!(facts.fills.len(), 400);
        assert_eq!(facts.fills[0].t, 600);
        assert_eq!(facts.fills.capacity(), room);
        facts.evict_rows_before(990);
        assert!(
            facts.fills.capacity() < room,
            "an unbounded eviction gives the room back"
        );
    }

    pub(crate) fn span(
        trace: u8,
        id: u8,
        parent: u8,
        kind: SpanKind,
        start_ms: u64,
        end_ms: u64,
    ) -> SpanRow {
        let e: Sym = Sym::from("");
        SpanRow {
            resource: Arc::new(ResourceInfo {
                service: Sym::from("shop"),
                version: Sym::from("1"),
                instance: Sym::from("a"),
            }),
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: [parent; 8],
            kind,
            name: Sym::from("op"),
            start_unix_nano: start_ms * 1_000_000,
            end_unix_nano: end_ms * 1_000_000,
            status: StatusCode::Unset,
            http_route: e.clone(),
            http_status: 0,
            http_method: e.clone(),
            url_path: e.clone(),
            db_system: e.clone(),
            db_operation: e.clone(),
            db_query: e.clone(),
            db_namespace: e.clone(),
            server_address: e.clone(),
            cache_key: e.clone(),
            cache_hit: None,
            resend_count: 0,
        }
    }

    #[test]
    fn live_assembler_completes_rooted_traces_after_quiet_and_others_after_grace_or_the_cap() {
        let config = Arc::new(AnalysisConfig::default());
        let ms = 1_000_000;
        // quiet 1 s, grace 30 s, at most 2 spans waiting.
        let mut a = TraceAssembler::live(config.clone(), 1000 * ms, 30_000 * ms, 2);
        a.push(span(1, 1, 0, SpanKind::Server, 0, 100)); // rooted
        a.push(span(2, 2, 9, SpanKind::Server, 0, 100)); // parent never arrives
        a.push(span(3, 3, 0, SpanKind::Server, 500, 1_000)); // watermark 1 s
        a.sweep_complete();
        assert_eq!(a.pending_traces(), 3, "nothing is quiet for 1 s yet");
        a.push(span(4, 4, 0, SpanKind::Server, 1_500, 2_000)); // watermark 2 s
        a.sweep_complete();
        // Trace 1 is rooted and quiet; trace 2 (no root) would wait for the
        // grace, but four spans are over the cap of two, so it goes too.
        assert_eq!(a.pending_traces(), 2);
        assert_eq!(a.take_facts().traces, 2);
        assert_eq!(a.pending_from(), Some(500 * ms));

        let mut patient = TraceAssembler::live(config, 1000 * ms, 30_000 * ms, 1000);
        for s in [
            span(1, 1, 0, SpanKind::Server, 0, 100),
            span(2, 2, 9, SpanKind::Server, 0, 100),
            span(4, 4, 0, SpanKind::Server, 1_500, 2_000),
        ] {
            patient.push(s);
        }
        patient.sweep_complete();
        assert_eq!(patient.take_facts().traces, 1, "only the rooted trace");
        patient.push(span(5, 5, 0, SpanKind::Server, 31_000, 31_000));
        patient.sweep_complete();
        assert_eq!(
            patient.take_facts().traces,
            2,
            "the rootless one after 30 s, and the rooted one quiet by now"
        );
    }

    pub(crate) fn request_with(trace: u8, path: &str, miss: bool) -> Vec<SpanRow> {
        let mut req = span(trace, 1, 0, SpanKind::Server, 0, 100);
        req.http_route = Sym::from("/product/{id}");
        req.url_path = Sym::from(path);
        let mut get = span(trace, 2, 1, SpanKind::Client, 1, 2);
        get.db_system = Sym::from("redis");
        get.db_query = Sym::from("GET ?");
        let mut out = vec![req, get];
        if miss {
            let mut sql = span(trace, 3, 1, SpanKind::Client, 3, 80);
            sql.db_system = Sym::from("postgresql");
            sql.db_query = Sym::from("SELECT * FROM product WHERE id = $1");
            let mut set = span(trace, 4, 1, SpanKind::Client, 81, 82);
            set.db_system = Sym::from("redis");
            set.db_operation = Sym::from("SETEX");
            out.push(sql);
            out.push(set);
        }
        out
    }

    #[test]
    fn a_recompute_waits_from_its_miss_to_its_first_query_and_a_long_wait_is_queued() {
        let config = AnalysisConfig::default();
        let mut a = TraceAssembler::new(Arc::new(config.clone()));
        // Trace 1 queries at once (1 ms after its lookup ended at 2 ms);
        // trace 2 waits 300 ms for a connection.
        let mut waited = request_with(2, "/product/42", true);
        waited[0].end_unix_nano = 500_000_000;
        waited[2].start_unix_nano = 302_000_000;
        waited[2].end_unix_nano = 380_000_000;
        waited[3].start_unix_nano = 381_000_000;
        waited[3].end_unix_nano = 382_000_000;
        // The wait shows as a pool span (node's pg instrumentation): not
        // database work.
        let mut connect = span(2, 5, 1, SpanKind::Client, 2, 302);
        connect.name = Sym::from("pg-pool.connect");
        connect.db_system = Sym::from("postgresql");
        waited.push(connect);
        for s in request_with(1, "/product/42", true)
            .into_iter()
            .chain(waited)
        {
            a.push(s);
        }
        let f = a.finish();
        let mut waits: Vec<u64> = f.recomputes.iter().map(|r| r.wait / 1_000_000).collect();
        waits.sort();
        assert_eq!(waits, [1, 300]);
        let series = crate::signals::build(&f, &[], &config, &[]).unwrap();
        let b = &series[0].buckets[0];
        assert_eq!((b.recomputes, b.queued, b.db_ops), (2.0, 1.0, 2.0));
    }

    #[test]
    fn sanitised_lookup_followed_by_sql_is_a_miss_keyed_by_url_path() {
        let mut a = TraceAssembler::new(Arc::new(AnalysisConfig::default()));
        for s in request_with(1, "/product/42", true)
            .into_iter()
            .chain(request_with(2, "/product/7", false))
        {
            a.push(s);
        }
        let f = a.finish();
        assert_eq!(f.lookups.len(), 2);
        let miss = f.lookups.iter().find(|l| &*l.key == "/product/42").unwrap();
        assert_eq!(
            (miss.outcome, miss.evidence),
            (Outcome::Miss, Evidence::TraceShape)
        );
        assert_eq!(&*miss.group, "/product/{id}");
        let hit = f.lookups.iter().find(|l| &*l.key == "/product/7").unwrap();
        assert_eq!(hit.outcome, Outcome::Hit);
        assert_eq!(f.recomputes.len(), 1);
        assert_eq!(f.recomputes[0].db_nanos, 77_000_000);
        assert_eq!(f.fills.len(), 1);
        assert!(f.db_ops[0].recompute);
    }

    #[test]
    fn explicit_attribute_wins_over_shape() {
        let mut a = TraceAssembler::new(Arc::new(AnalysisConfig::default()));
        let mut spans = request_with(1, "/product/42", true);
        spans[0].cache_hit = Some(true);
        for s in spans {
            a.push(s);
        }
        let f = a.finish();
        assert_eq!(f.lookups[0].outcome, Outcome::Hit);
        assert_eq!(f.lookups[0].evidence, Evidence::Attribute);
        assert!(f.recomputes.is_empty());
    }

    #[test]
    fn orphan_ops_attach_by_time_containment() {
        let mut a = TraceAssembler::new(Arc::new(AnalysisConfig::default()));
        let mut spans = request_with(1, "/product/42", true);
        for s in &mut spans[1..] {
            s.parent_span_id = [9; 8]; // parent never arrived
        }
        for s in spans {
            a.push(s);
        }
        let f = a.finish();
        assert_eq!(f.recomputes.len(), 1);
    }

    /// A batch pushed at once reduces to the same facts as its spans
    /// pushed one by one, traces interleaved and split across batches.
    #[test]
    fn a_batch_pushed_at_once_is_the_same_as_span_by_span() {
        let mut spans: Vec<SpanRow> = Vec::new();
        let traces: Vec<Vec<SpanRow>> = (1..=40u8)
            .map(|t| {
                let mut trace = request_with(t, &format!("/product/{}", t % 7), t % 3 != 0);
                let shift = u64::from(t) * 50_000_000;
                for s in &mut trace {
                    s.start_unix_nano += shift;
                    s.end_unix_nano += shift;
                }
                trace
            })
            .collect();
        let longest = traces.iter().map(Vec::len).max().unwrap();
        for i in 0..longest {
            spans.extend(traces.iter().filter_map(|t| t.get(i).cloned()));
        }
        let config = Arc::new(AnalysisConfig::default());
        let mut one = TraceAssembler::new(config.clone());
        spans.iter().cloned().for_each(|s| one.push(s));
        let mut all = TraceAssembler::new(config);
        for batch in spans.chunks(7) {
            all.push_all(batch.to_vec());
        }
        let summary = |f: Facts| {
            let mut lookups: Vec<String> = f
                .lookups
                .iter()
                .map(|l| format!("{} {:?} {:?} {}", l.key, l.outcome, l.evidence, l.t))
                .collect();
            lookups.sort();
            let mut recomputes: Vec<(String, u64, u64)> = f
                .recomputes
                .iter()
                .map(|r| (r.key.to_string(), r.wait, r.db_nanos))
                .collect();
            recomputes.sort();
            let mut requests: Vec<(u64, u64)> =
                f.requests.iter().map(|r| (r.start, r.end)).collect();
            requests.sort();
            (
                f.spans,
                f.min_time,
                f.max_time,
                lookups,
                recomputes,
                requests,
                f.fills.len(),
            )
        };
        let (one, all) = (summary(one.finish()), summary(all.finish()));
        assert_eq!(one.0, 40 * 2 + 27 * 2);
        assert_eq!(one.3.len(), 40);
        assert_eq!(one.4.len(), 27);
        assert_eq!(one, all);
    }

    #[test]
    fn a_new_version_is_a_deploy_marker() {
        let mut a = TraceAssembler::new(Arc::new(AnalysisConfig::default()));
        a.push(span(1, 1, 0, SpanKind::Server, 0, 10));
        let mut later = span(2, 1, 0, SpanKind::Server, 5000, 5010);
        later.resource = Arc::new(ResourceInfo {
            service: Sym::from("shop"),
            version: Sym::from("2"),
            instance: Sym::from("b"),
        });
        a.push(later);
        let f = a.finish();
        assert_eq!(f.markers.len(), 1);
        assert_eq!(f.markers[0].kind, MarkerKind::Deploy);
        assert_eq!(f.markers[0].t, 5_000_000_000);
    }
}

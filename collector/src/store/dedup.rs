//! The bounded memory of span fingerprints that de-duplicates retries.
//!
//! Fingerprints are kept in buckets by the second their span started. A
//! request's spans start within a few seconds of each other, so checking
//! them touches a few tables of a second's spans each instead of random
//! slots all over one table of the whole window: on a virtual machine with
//! 4 KiB pages every such slot cost a nested page walk, and the two
//! window-wide tables this replaced took a fifth of the collector's CPU at
//! 20 k spans/s.
//!
//! When it holds more than its capacity, it forgets the oldest part of the
//! bucket it inserted into least recently: a bucket fills parts of at most
//! a sixteenth of the capacity, so even spans that all start in the same
//! second keep all but a sixteenth remembered. Everything depends only on
//! the order of insertions, so replaying the log rebuilds the same memory.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use herdwatch_analyzer::model::SpanRow;

/// Fingerprints are already well-mixed 64-bit values: hash them as is.
#[derive(Default, Clone, Copy)]
struct FpHasher(u64);

impl Hasher for FpHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FpSet = HashSet<u64, BuildHasherDefault<FpHasher>>;

#[derive(Default)]
struct Bucket {
    /// Oldest first; only the last one takes new fingerprints.
    parts: Vec<FpSet>,
    /// The insertion clock when this bucket last took one.
    touched: u64,
}

/// What [`Dedup::filter`] kept: (start second, fingerprint).
pub(crate) type Kept = Vec<(u64, u64)>;

pub(crate) struct Dedup {
    buckets: HashMap<u64, Bucket>,
    /// (touched, second) of every bucket, least recent on top; entries go
    /// stale as buckets are touched and are refreshed when they surface.
    lru: BinaryHeap<Reverse<(u64, u64)>>,
    len: usize,
    capacity: usize,
    part_max: usize,
    clock: u64,
}

impl Dedup {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            buckets: HashMap::new(),
            lru: BinaryHeap::new(),
            len: 0,
            capacity,
            part_max: (capacity / 16).max(1),
            clock: 0,
        }
    }

    /// The bucket a span goes in.
    pub(crate) fn second(span: &SpanRow) -> u64 {
        span.start_unix_nano / 1_000_000_000
    }

    /// Stable across restarts (replay must agree) and well mixed: the ids
    /// are random already, so fold them with a 64-bit finalizer.
    pub(crate) fn fingerprint(span: &SpanRow) -> u64 {
        let t = &span.trace_id;
        let a = u64::from_le_bytes(t[..8].try_into().unwrap_or_default());
        let b = u64::from_le_bytes(t[8..].try_into().unwrap_or_default());
        let s = u64::from_le_bytes(span.span_id);
        let mut h = a ^ b.rotate_left(21) ^ s.rotate_left(42) ^ 0x9e37_79b9_7f4a_7c15;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, second: u64, fp: u64) -> bool {
        self.buckets
            .get(&second)
            .is_some_and(|b| b.parts.iter().any(|p| p.contains(&fp)))
    }

    /// Remember `fp`; false when it was already remembered.
    pub(crate) fn insert(&mut self, second: u64, fp: u64) -> bool {
        self.clock += 1;
        let (clock, part_max) = (self.clock, self.part_max);
        let bucket = match self.buckets.get_mut(&second) {
            Some(b) if b.parts.iter().any(|p| p.contains(&fp)) => return false,
            Some(b) => b,
            None => {
                self.lru.push(Reverse((clock, second)));
                self.buckets.entry(second).or_default()
            }
        };
        bucket.touched = clock;
        match bucket.parts.last_mut() {
            Some(p) if p.len() < part_max => {
                p.insert(fp);
            }
            _ => bucket.parts.push(FpSet::from_iter([fp])),
        }
        self.len += 1;
        if self.len > self.capacity {
            self.forget_oldest();
        }
        true
    }

    /// Forget parts of the least recently touched buckets until the
    /// capacity holds.
    fn forget_oldest(&mut self) {
        while self.len > self.capacity {
            let Some(Reverse((touched, second))) = self.lru.pop() else {
                return;
            };
            let Some(bucket) = self.buckets.get_mut(&second) else {
                continue;
            };
            if bucket.touched != touched {
                self.lru.push(Reverse((bucket.touched, second)));
                continue;
            }
            let oldest = bucket.parts.remove(0);
            self.len -= oldest.len();
            if bucket.parts.is_empty() {
                self.buckets.remove(&second);
            } else {
                self.lru.push(Reverse((touched, second)));
            }
        }
    }

    /// Drop spans already stored or already kept in this group, and
    /// remember the kept ones at once (one probe a span), noting them in
    /// `kept`; returns how many were dropped. Should the group not become
    /// durable, [`Dedup::forget`] takes them back.
    pub(crate) fn filter(&mut self, spans: &mut Vec<SpanRow>, kept: &mut Kept) -> u64 {
        let before = spans.len();
        spans.retain(|s| {
            let (second, fp) = (Self::second(s), Self::fingerprint(s));
            let new = self.insert(second, fp);
            if new {
                kept.push((second, fp));
            }
            new
        });
        (before - spans.len()) as u64
    }

    /// Forget what a group that failed to be written kept, so that its
    /// retries are stored.
    pub(crate) fn forget(&mut self, kept: &mut Kept) {
        for (second, fp) in kept.drain(..) {
            let Some(bucket) = self.buckets.get_mut(&second) else {
                continue;
            };
            if bucket.parts.iter_mut().any(|p| p.remove(&fp)) {
                self.len -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_memory_forgets_the_bucket_inserted_into_least_recently() {
        // Capacity 32: parts of 2.
        let mut d = Dedup::new(32);
        for fp in 1..=10 {
            assert!(d.insert(100, fp));
        }
        for fp in 11..=30 {
            assert!(d.insert(200 + fp % 2, fp));
        }
        // Second 100 is touched again (it is the late one now); 200 and
        // 201 were touched before it.
        assert!(d.insert(100, 31));
        assert!(d.insert(100, 32));
        assert!(!d.insert(100, 5), "a copy is refused and not counted");
        assert_eq!(d.len(), 32);
        assert!(d.insert(300, 33));
        assert_eq!(d.len(), 31, "a part of two fingerprints went");
        // The least recently inserted-into bucket is 201 (its last span, 29,
        // came before 200's 30 and 100's 32): its oldest part, {11, 13}, is
        // forgotten, and only it.
        let forgotten: Vec<u64> = (1..=33)
            .filter(|&fp| {
                let second = match fp {
                    1..=10 | 31 | 32 => 100,
                    33 => 300,
                    _ => 200 + fp % 2,
                };
                !d.contains(second, fp)
            })
            .collect();
        assert_eq!(forgotten, [11, 13]);
        assert!(d.contains(100, 1) && d.contains(200, 30) && d.contains(300, 33));
    }

    /// Spans that all start in one second fill parts of a sixteenth of the
    /// capacity, and only the oldest part goes at a time.
    #[test]
    fn one_busy_second_keeps_all_but_a_sixteenth() {
        let mut d = Dedup::new(160);
        for fp in 1..=170 {
            d.insert(7, fp);
        }
        assert_eq!(d.len(), 160);
        assert!(
            (1..=10).all(|fp| !d.contains(7, fp)),
            "the oldest part went"
        );
        assert!((11..=170).all(|fp| d.contains(7, fp)), "the rest stays");
    }

    #[test]
    fn forgetting_a_group_takes_back_exactly_what_it_kept() {
        let mut d = Dedup::new(64);
        d.insert(1, 10);
        d.insert(2, 20);
        let mut kept = vec![(1, 10), (3, 30)];
        d.forget(&mut kept);
        assert!(kept.is_empty());
        assert!(!d.contains(1, 10) && d.contains(2, 20));
        assert_eq!(d.len(), 1);
        assert!(d.insert(1, 10), "a retry is new again");
    }
}

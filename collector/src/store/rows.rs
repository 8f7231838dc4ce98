//! A service's rows in memory, in the order they were stored, held as the
//! batches they arrived in.
//!
//! Appending a batch moves its vector in: no row is copied on the writer
//! thread (a span row is a few cache lines, and copying each into a ring
//! buffer whose slots were last touched one hot-set ago missed the cache on
//! every line). Eviction pops rows from the front, one batch's worth of
//! memory at a time.

use std::collections::VecDeque;

/// One stored batch of a service's rows, with what eviction needs to know
/// about it: eviction goes a batch at a time and never reads the rows
/// (each would be a cache miss: they were written a hot set ago).
#[derive(Debug)]
pub(crate) struct StoredBatch<T> {
    pub(crate) rows: Vec<T>,
    pub(crate) min_time: u64,
    pub(crate) max_time: u64,
    pub(crate) bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Rows<T> {
    /// Never holds an empty chunk.
    chunks: VecDeque<StoredBatch<T>>,
    len: usize,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Rows<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Append a batch of rows without copying them.
    pub(crate) fn append(&mut self, batch: StoredBatch<T>) {
        if batch.rows.is_empty() {
            return;
        }
        self.len += batch.rows.len();
        self.chunks.push_back(batch);
    }

    pub(crate) fn front(&self) -> Option<&StoredBatch<T>> {
        self.chunks.front()
    }

    /// Remove the oldest batch.
    pub(crate) fn pop_front(&mut self) -> Option<StoredBatch<T>> {
        let chunk = self.chunks.pop_front()?;
        self.len -= chunk.rows.len();
        Some(chunk)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| &c.rows)
    }

    /// Rows `from..` (in storage order), skipping whole chunks before `from`.
    pub(crate) fn iter_from(&self, from: usize) -> impl Iterator<Item = &T> {
        let mut skip = from;
        let mut first = self.chunks.len();
        for (i, c) in self.chunks.iter().enumerate() {
            if skip < c.rows.len() {
                first = i;
                break;
            }
            skip -= c.rows.len();
        }
        self.chunks.range(first..).flat_map(|c| &c.rows).skip(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(rows: &[u32]) -> StoredBatch<u32> {
        StoredBatch {
            rows: rows.to_vec(),
            min_time: rows.iter().copied().min().unwrap_or(0) as u64,
            max_time: rows.iter().copied().max().unwrap_or(0) as u64,
            bytes: rows.len() * 4,
        }
    }

    fn rows(chunks: &[&[u32]]) -> Rows<u32> {
        let mut r = Rows::default();
        for c in chunks {
            r.append(chunk(c));
        }
        r
    }

    #[test]
    fn rows_keep_storage_order_across_batches() {
        let r = rows(&[&[1, 2, 3], &[], &[4], &[5, 6]]);
        assert_eq!(r.len(), 6);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(r.front().map(|c| c.max_time), Some(3));
    }

    #[test]
    fn iter_from_starts_at_any_row_even_inside_a_batch() {
        let r = rows(&[&[1, 2, 3], &[4], &[5, 6]]);
        for from in 0..=7 {
            let want: Vec<u32> = (1..=6).skip(from).collect();
            assert_eq!(
                r.iter_from(from).copied().collect::<Vec<_>>(),
                want,
                "from {from}"
            );
        }
    }

    #[test]
    fn popping_the_front_takes_a_batch_and_keeps_the_count() {
        let mut r = rows(&[&[1, 2], &[3]]);
        let first = r.pop_front().unwrap();
        assert_eq!(
            (first.rows, first.min_time, first.bytes),
            (vec![1, 2], 1, 8)
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r.iter_from(0).copied().collect::<Vec<_>>(), [3]);
        assert_eq!(r.pop_front().map(|c| c.rows), Some(vec![3]));
        assert!(r.pop_front().is_none());
        assert_eq!(r.len(), 0);
        r.append(chunk(&[7]));
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [7]);
    }
}

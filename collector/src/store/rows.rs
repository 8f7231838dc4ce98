//! A service's rows in memory, in the order they were stored, held as the
//! batches they arrived in.
//!
//! Appending a batch moves its vector in: no row is copied on the writer
//! thread (a span row is a few cache lines, and copying each into a ring
//! buffer whose slots were last touched one hot-set ago missed the cache on
//! every line). Eviction pops rows from the front, one batch's worth of
//! memory at a time.

use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) struct Rows<T> {
    /// Never holds an empty chunk.
    chunks: VecDeque<VecDeque<T>>,
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
    pub(crate) fn append(&mut self, rows: Vec<T>) {
        if rows.is_empty() {
            return;
        }
        self.len += rows.len();
        // `VecDeque::from(Vec)` reuses the allocation.
        self.chunks.push_back(VecDeque::from(rows));
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(VecDeque::front)
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let chunk = self.chunks.front_mut()?;
        let row = chunk.pop_front();
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        if row.is_some() {
            self.len -= 1;
        }
        row
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// Rows `from..` (in storage order), skipping whole chunks before `from`.
    pub(crate) fn iter_from(&self, from: usize) -> impl Iterator<Item = &T> {
        let mut skip = from;
        let mut first = self.chunks.len();
        for (i, c) in self.chunks.iter().enumerate() {
            if skip < c.len() {
                first = i;
                break;
            }
            skip -= c.len();
        }
        self.chunks.range(first..).flatten().skip(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(chunks: &[&[u32]]) -> Rows<u32> {
        let mut r = Rows::default();
        for c in chunks {
            r.append(c.to_vec());
        }
        r
    }

    #[test]
    fn rows_keep_storage_order_across_batches() {
        let r = rows(&[&[1, 2, 3], &[], &[4], &[5, 6]]);
        assert_eq!(r.len(), 6);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(r.front(), Some(&1));
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
    fn popping_the_front_crosses_batches_and_keeps_the_count() {
        let mut r = rows(&[&[1, 2], &[3]]);
        assert_eq!(r.pop_front(), Some(1));
        assert_eq!(r.pop_front(), Some(2));
        assert_eq!((r.len(), r.front()), (1, Some(&3)));
        assert_eq!(r.iter_from(0).copied().collect::<Vec<_>>(), [3]);
        assert_eq!(r.pop_front(), Some(3));
        assert_eq!((r.pop_front(), r.len()), (None, 0));
        r.append(vec![7]);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [7]);
    }
}

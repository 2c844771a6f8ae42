//! Bounded selection of the k smallest distances.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One result: a row id and its distance to the query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    pub distance: f32,
    pub id: u64,
}

impl Eq for Neighbor {}

impl Ord for Neighbor {
    // Distances are never NaN here (callers pass finite values); ties go to the smaller id so
    // results do not depend on block or thread order.
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.total_cmp(&other.distance).then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Neighbor {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Keeps the k nearest neighbours seen so far (a max-heap of the current k best).
#[derive(Debug)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Neighbor>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        // A search keeps one TopK per 1024-row task until they are merged: reserving all of a
        // large k up front would cost k slots per task, most never filled.
        TopK { k, heap: BinaryHeap::with_capacity(k.min(1 << 10) + 1) }
    }

    #[inline]
    pub fn push(&mut self, distance: f32, id: u64) {
        if self.k == 0 {
            return;
        }
        let candidate = Neighbor { distance, id };
        if self.heap.len() < self.k {
            self.heap.push(candidate);
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if candidate < *worst {
                *worst = candidate;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The k-th smallest distance held; None until k neighbours are held.
    pub fn kth(&self) -> Option<f32> {
        self.heap.peek().filter(|_| self.heap.len() == self.k).map(|n| n.distance)
    }

    /// The neighbours held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Neighbor> {
        self.heap.iter()
    }

    /// The neighbours, nearest first.
    pub fn into_sorted(self) -> Vec<Neighbor> {
        self.heap.into_sorted_vec()
    }
}

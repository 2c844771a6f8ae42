//! A flat (exact) index over vectors kept in memory, in segments.
//!
//! A segment is the unit of change: the server maps one Lance fragment to one segment, so a
//! new commit adds segments, a compaction or overwrite removes them, and a delete marks rows
//! dead in place — no full rebuild. Row ids are `u64` (the server uses Lance row addresses,
//! `fragment << 32 | offset`), ascending within a segment.
use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::distance::{dot, in_range, norm, normalize, squared_l2, Metric};
use crate::topk::{Neighbor, TopK};

/// Rows per parallel work item (≈ 1.5 MiB of f32 at dim 384: big enough to amortise
/// scheduling, small enough to balance across cores).
const ROWS_PER_TASK: usize = 1024;

/// Below this share of the live rows admitted, a filtered search visits the admitted rows by
/// id instead of passing over every row with a mask: building and testing a mask is a pass
/// over all rows per query (≈ 2 ms on 400k rows with 5 % admitted, for 0.1 ms of distances).
const SPARSE_FILTER_SHARE: f64 = 0.125;

/// Rows per SGEMM block in batched search.
const BATCH_BLOCK_ROWS: usize = 512;

#[derive(Debug, Default, Clone)]
struct Segment {
    ids: Vec<u64>,
    /// rows × dim; for cosine, rows are L2-normalised (a zero row stays zero).
    data: Vec<f32>,
    /// |x|² per row (l2 batched search).
    sq_norms: Vec<f32>,
    live: Vec<bool>,
    live_count: usize,
    /// Rows that have a vector (a row without one is never live).
    valid: Vec<bool>,
}

impl Segment {
    fn position(&self, id: u64) -> Option<usize> {
        position_in_sorted(&self.ids, id)
    }

    /// Where row `id` sits, if it is here and live.
    fn live_position(&self, id: u64) -> Option<usize> {
        self.position(id).filter(|&i| self.live[i])
    }
}

/// Where `id` sits in `ids` (ascending). Row ids are mostly consecutive (a Lance fragment's
/// are, until rows are deleted): look where that puts `id` first, since a binary search over
/// a large segment costs ≈ 17 cache misses, ≈ 1 µs per lookup.
pub fn position_in_sorted(ids: &[u64], id: u64) -> Option<usize> {
    let first = *ids.first()?;
    let guess = usize::try_from(id.checked_sub(first)?).ok()?;
    if ids.get(guess) == Some(&id) {
        return Some(guess);
    }
    ids.binary_search(&id).ok()
}

/// Row ids a search may return (a prefilter's result), sorted ascending.
#[derive(Debug, Clone, Default)]
pub struct RowFilter {
    allowed: Vec<u64>,
}

impl RowFilter {
    pub fn new(mut allowed: Vec<u64>) -> Self {
        allowed.sort_unstable();
        allowed.dedup();
        RowFilter { allowed }
    }

    pub fn len(&self) -> usize {
        self.allowed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.allowed.binary_search(&id).is_ok()
    }

    /// Which rows of a segment (ids ascending) pass: a merge of two sorted lists.
    fn mask(&self, ids: &[u64]) -> Vec<bool> {
        let start = self.allowed.partition_point(|&a| a < ids.first().copied().unwrap_or(0));
        let mut allowed = self.allowed[start..].iter().peekable();
        ids.iter()
            .map(|id| {
                while allowed.next_if(|a| **a < *id).is_some() {}
                allowed.peek().is_some_and(|a| **a == *id)
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct FlatIndex {
    dim: usize,
    metric: Metric,
    segments: BTreeMap<u32, Segment>,
}

impl FlatIndex {
    pub fn new(dim: usize, metric: Metric) -> Self {
        FlatIndex { dim, metric, segments: BTreeMap::new() }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Live rows.
    pub fn len(&self) -> usize {
        self.segments.values().map(|s| s.live_count).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn segment_ids(&self) -> Vec<u32> {
        self.segments.keys().copied().collect()
    }

    /// Bytes of vector data held.
    pub fn memory_bytes(&self) -> usize {
        self.segments.values().map(|s| s.data.len() * 4 + s.ids.len() * 13).sum()
    }

    /// Adds (or replaces) a segment. `vectors` is `ids.len() × dim`, row-major; `valid[i]`
    /// false marks a row without a vector (stored nowhere, never returned).
    pub fn insert_segment(&mut self, segment: u32, ids: Vec<u64>, vectors: Vec<f32>, valid: Option<Vec<bool>>) {
        assert_eq!(vectors.len(), ids.len() * self.dim, "vectors must be ids.len() × dim");
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascending");
        let live = valid.unwrap_or_else(|| vec![true; ids.len()]);
        assert_eq!(live.len(), ids.len());
        let mut vectors = huge_page_copy(vectors);
        if self.dim > 0 && self.metric == Metric::Cosine {
            for row in vectors.chunks_exact_mut(self.dim) {
                normalize(row);
            }
        }
        let sq_norms = if self.dim == 0 { vec![0.0; ids.len()] } else { vectors.chunks_exact(self.dim).map(|r| dot(r, r)).collect() };
        let live_count = live.iter().filter(|l| **l).count();
        let valid = live.clone();
        self.segments.insert(segment, Segment { ids, data: vectors, sq_norms, live, live_count, valid });
    }

    pub fn remove_segment(&mut self, segment: u32) {
        self.segments.remove(&segment);
    }

    /// Whether `keep` (ascending) holds a row that `segment` has with a vector but not live, or
    /// does not have at all (it was loaded after the row's deletion): a row live again (a
    /// table restored to an older version). Marking rows dead cannot bring it back; the
    /// segment must be loaded again.
    pub fn revives(&self, segment: u32, keep: &[u64]) -> bool {
        let Some(s) = self.segments.get(&segment) else { return !keep.is_empty() };
        let filter = RowFilter { allowed: keep.to_vec() };
        let mask = filter.mask(&s.ids);
        let held = mask.iter().filter(|k| **k).count();
        held < keep.len() || mask.iter().zip(s.live.iter().zip(&s.valid)).any(|(kept, (live, valid))| *kept && *valid && !*live)
    }

    /// Marks every row of `segment` whose id is not in `keep` (ascending) dead.
    pub fn retain_in_segment(&mut self, segment: u32, keep: &[u64]) {
        if let Some(s) = self.segments.get_mut(&segment) {
            let filter = RowFilter { allowed: keep.to_vec() };
            let mask = filter.mask(&s.ids);
            for (live, keep) in s.live.iter_mut().zip(mask) {
                *live &= keep;
            }
            s.live_count = s.live.iter().filter(|l| **l).count();
        }
    }

    /// Work items of at most `rows` rows: (segment id, segment, first row, row count).
    fn tasks(&self, rows: usize, segments: Option<&[u32]>) -> Vec<(u32, &Segment, usize, usize)> {
        let mut tasks = Vec::new();
        let wanted = |id: &u32| segments.is_none_or(|list| list.contains(id));
        for (&id, s) in self.segments.iter().filter(|(id, s)| s.live_count > 0 && wanted(id)) {
            let mut start = 0;
            while start < s.ids.len() {
                let n = rows.min(s.ids.len() - start);
                tasks.push((id, s, start, n));
                start += n;
            }
        }
        tasks
    }

    /// The query as rows are stored (unit length for cosine) and its original norm.
    fn prepare(&self, query: &[f32]) -> (Vec<f32>, f32) {
        let mut q = query.to_vec();
        let q_norm = match self.metric {
            Metric::Cosine => normalize(&mut q),
            _ => norm(&q),
        };
        (q, q_norm)
    }

    /// Per segment, which rows the filter admits.
    fn masks(&self, filter: Option<&RowFilter>) -> Option<BTreeMap<u32, Vec<bool>>> {
        filter.map(|f| self.segments.iter().map(|(&id, s)| (id, f.mask(&s.ids))).collect())
    }

    /// `filter` if it admits so few rows that visiting them by id beats a masked pass.
    fn sparse<'a>(&self, filter: Option<&'a RowFilter>) -> Option<&'a RowFilter> {
        filter.filter(|f| (f.len() as f64) < SPARSE_FILTER_SHARE * self.len() as f64)
    }

    /// The k nearest live rows (that `filter` admits) to `query`, nearest first.
    pub fn search(&self, query: &[f32], k: usize, filter: Option<&RowFilter>) -> Vec<Neighbor> {
        if let Some(filter) = self.sparse(filter) {
            return self.search_admitted(query, k, filter);
        }
        let masks = self.masks(filter);
        self.search_tasks(query, k, self.tasks(ROWS_PER_TASK, None), masks.as_ref())
    }

    /// The k nearest live rows of the listed segments only (e.g. the rows an ANN index does
    /// not cover yet), nearest first, with the distances `search` would give.
    pub fn search_segments(&self, query: &[f32], k: usize, segments: &[u32]) -> Vec<Neighbor> {
        self.search_tasks(query, k, self.tasks(ROWS_PER_TASK, Some(segments)), None)
    }

    /// `search` for a filter that admits few rows: only they are visited, by id.
    fn search_admitted(&self, query: &[f32], k: usize, filter: &RowFilter) -> Vec<Neighbor> {
        assert_eq!(query.len(), self.dim, "query length");
        let (q, q_norm) = self.prepare(query);
        let (dim, metric) = (self.dim, self.metric);
        let tops: Vec<TopK> = self
            .admitted_runs(filter, ROWS_PER_TASK)
            .into_par_iter()
            .map(|(s, ids)| {
                let mut top = TopK::new(k);
                for &id in ids {
                    if let Some(i) = s.live_position(id) {
                        top.push(row_distance(metric, &q, q_norm, s, i, dim), id);
                    }
                }
                top
            })
            .collect();
        merge(tops, k)
    }

    /// Work items of at most `rows` of the filter's ids each, with the segment that may hold
    /// them (a segment's ids are ascending and segments' id ranges do not overlap, so each
    /// segment's admitted ids are one run of the filter's sorted list).
    fn admitted_runs<'a>(&'a self, filter: &'a RowFilter, rows: usize) -> Vec<(&'a Segment, &'a [u64])> {
        let mut tasks = Vec::new();
        for s in self.segments.values().filter(|s| s.live_count > 0) {
            let (Some(&first), Some(&last)) = (s.ids.first(), s.ids.last()) else { continue };
            let admitted = &filter.allowed[filter.allowed.partition_point(|&a| a < first)..filter.allowed.partition_point(|&a| a <= last)];
            tasks.extend(admitted.chunks(rows).map(|ids| (s, ids)));
        }
        tasks
    }

    fn search_tasks(&self, query: &[f32], k: usize, tasks: Vec<(u32, &Segment, usize, usize)>, masks: Option<&BTreeMap<u32, Vec<bool>>>) -> Vec<Neighbor> {
        assert_eq!(query.len(), self.dim, "query length");
        let (q, q_norm) = self.prepare(query);
        let dim = self.dim;
        let metric = self.metric;
        let tops: Vec<TopK> = tasks
            .into_par_iter()
            .map(|(id, s, start, n)| {
                let mut top = TopK::new(k);
                let mask = masks.map(|m| &m[&id]);
                for i in start..start + n {
                    if !s.live[i] || mask.is_some_and(|m| !m[i]) {
                        continue;
                    }
                    top.push(row_distance(metric, &q, q_norm, s, i, dim), s.ids[i]);
                }
                top
            })
            .collect();
        merge(tops, k)
    }

    /// The k nearest of `candidates` (row ids, e.g. an ANN index's shortlist) by exact
    /// distance, nearest first, the distances `search` would give: one distance per
    /// candidate, no pass over the rows. None if a candidate is not a live row here.
    pub fn rerank(&self, query: &[f32], candidates: &[u64], k: usize) -> Option<Vec<Neighbor>> {
        assert_eq!(query.len(), self.dim, "query length");
        let (q, q_norm) = self.prepare(query);
        // Candidates are scattered rows: find them all and ask for their cache lines first, so
        // the memory reads overlap instead of stalling one distance at a time.
        let mut rows = Vec::with_capacity(candidates.len());
        for &id in candidates {
            let s = self.segments.values().find(|s| s.ids.first().is_some_and(|f| *f <= id) && s.ids.last().is_some_and(|l| id <= *l))?;
            let i = s.live_position(id)?;
            prefetch(&s.data[i * self.dim..(i + 1) * self.dim]);
            rows.push((s, i, id));
        }
        let mut top = TopK::new(k);
        for (s, i, id) in rows {
            top.push(row_distance(self.metric, &q, q_norm, s, i, self.dim), id);
        }
        Some(top.into_sorted())
    }

    /// Many queries (`queries` is Q × dim, row-major) in one pass over the rows: each block of
    /// rows is multiplied with all queries at once (SGEMM), so rows are read once per batch.
    /// A filter that admits few rows is served as in `search`: only its rows are gathered
    /// into blocks.
    pub fn search_batch(&self, queries: &[f32], k: usize, filter: Option<&RowFilter>) -> Vec<Vec<Neighbor>> {
        let dim = self.dim;
        assert!(dim > 0 && queries.len() % dim == 0, "queries must be Q × dim");
        let nq = queries.len() / dim;
        if k == 0 {
            return vec![Vec::new(); nq];
        }
        let mut q = queries.to_vec();
        let mut q_norms = vec![0f32; nq];
        for (row, norm) in q.chunks_exact_mut(dim).zip(q_norms.iter_mut()) {
            *norm = match self.metric {
                Metric::Cosine => normalize(row),
                _ => crate::distance::norm(row),
            };
        }
        let batch = BatchQueries { q: &q, norms: &q_norms, metric: self.metric, dim };
        let new_lists = || (0..nq).map(|_| Shortlist::new(k)).collect::<Vec<_>>();
        let partials: Vec<Vec<Shortlist>> = match self.sparse(filter) {
            Some(filter) => self
                .admitted_runs(filter, BATCH_BLOCK_ROWS)
                .into_par_iter()
                .fold(new_lists, |mut lists, (s, ids)| {
                    // The admitted live rows, gathered into one contiguous block.
                    let rows: Vec<usize> = ids.iter().filter_map(|&id| s.live_position(id)).collect();
                    let mut block = Vec::with_capacity(rows.len() * dim);
                    for &i in &rows {
                        block.extend_from_slice(&s.data[i * dim..(i + 1) * dim]);
                    }
                    batch.score(&mut lists, &block, rows.iter().enumerate().map(|(b, &i)| (b, s.ids[i], s.sq_norms[i])));
                    lists
                })
                .collect(),
            None => {
                let masks = self.masks(filter);
                self.tasks(BATCH_BLOCK_ROWS, None)
                    .into_par_iter()
                    .fold(new_lists, |mut lists, (id, s, start, n)| {
                        let mask = masks.as_ref().map(|m| &m[&id]);
                        let admitted = (start..start + n).filter(|&r| s.live[r] && mask.is_none_or(|m| m[r]));
                        batch.score(&mut lists, &s.data[start * dim..(start + n) * dim], admitted.map(|r| (r - start, s.ids[r], s.sq_norms[r])));
                        lists
                    })
                    .collect()
            }
        };
        (0..nq)
            .map(|j| {
                let mut merged = TopK::new(k);
                for part in &partials {
                    for n in part[j].top.iter() {
                        merged.push(n.distance, n.id);
                    }
                }
                if self.metric != Metric::L2 {
                    return merged.into_sorted();
                }
                // l2: `merged` ranks upper bounds. Every row whose lower bound is within the
                // k-th upper bound may be among the k nearest: their exact distances decide.
                let bound = merged.kth().unwrap_or(f32::INFINITY);
                let near: Vec<u64> = partials.iter().flat_map(|part| part[j].near.iter()).filter(|n| n.distance <= bound).map(|n| n.id).collect();
                self.rerank(&queries[j * dim..(j + 1) * dim], &near, k).expect("shortlisted rows are live rows of this index")
            })
            .collect()
    }
}

/// One query's best rows in a batched search. For l2 the SGEMM form |q|² + |x|² − 2q·x loses
/// the distance to cancellation when |q|² + |x|² dwarfs it (rows far from the origin): a
/// near-duplicate can score 0 beside the exact match. So for l2 `top` holds the k best upper
/// bounds and `near` every row whose lower bound could still beat the k-th of them; their
/// exact distances (those `search` gives) are computed at the end.
struct Shortlist {
    top: TopK,
    /// l2 only: (lower bound, id), pruned against `top`'s k-th upper bound as it shrinks.
    near: Vec<Neighbor>,
    /// `near`'s length that triggers the next pruning.
    prune_at: usize,
    /// `top`'s k-th upper bound (infinite until it holds k rows).
    bound: f32,
}

impl Shortlist {
    fn new(k: usize) -> Self {
        Shortlist { top: TopK::new(k), near: Vec::new(), prune_at: 2 * k.min(1 << 16) + 256, bound: f32::INFINITY }
    }

    /// Offers a row whose distance lies within `distance` ± `slack`.
    #[inline]
    fn push_bounded(&mut self, distance: f32, slack: f32, id: u64) {
        let (mut lower, mut upper) = (distance - slack, distance + slack);
        if !upper.is_finite() {
            // A bound that overflowed says nothing: the exact distance decides.
            (lower, upper) = (f32::NEG_INFINITY, f32::INFINITY);
        }
        if lower > self.bound {
            return; // most rows: they cannot be among the k nearest
        }
        self.top.push(upper, id);
        self.bound = self.top.kth().unwrap_or(f32::INFINITY);
        if lower <= self.bound {
            self.near.push(Neighbor { distance: lower, id });
            if self.near.len() >= self.prune_at {
                let bound = self.bound;
                self.near.retain(|n| n.distance <= bound);
                // Rows that all lie within rounding of each other cannot be pruned: grow the
                // trigger so each row is still looked at a bounded number of times.
                self.prune_at = self.prune_at.max(2 * self.near.len());
            }
        }
    }
}

/// A batch of queries as `search_batch` scores them: rows as stored (unit length for cosine),
/// Q × dim, with each query's original norm.
struct BatchQueries<'a> {
    q: &'a [f32],
    norms: &'a [f32],
    metric: Metric,
    dim: usize,
}

impl BatchQueries<'_> {
    /// Scores a block of rows (n × dim, row-major) against every query at once and offers the
    /// `rows` to each query's shortlist: (row in the block, row id, the row's |x|²).
    fn score(&self, lists: &mut [Shortlist], block: &[f32], rows: impl Iterator<Item = (usize, u64, f32)>) {
        let (dim, nq) = (self.dim, self.norms.len());
        let n = block.len() / dim;
        if n == 0 {
            return;
        }
        let mut scores = vec![0f32; n * nq];
        // scores (n × nq) = block (n × dim) · Qᵀ (dim × nq)
        // SAFETY: the pointers cover n × dim, nq × dim and n × nq f32s with the given
        // strides, and nothing else aliases `scores`.
        unsafe {
            matrixmultiply::sgemm(
                n, dim, nq, 1.0,
                block.as_ptr(), dim as isize, 1,
                self.q.as_ptr(), 1, dim as isize,
                0.0, scores.as_mut_ptr(), nq as isize, 1,
            );
        }
        // Worst-case float32 rounding of |q|² + |x|² − 2q·x (each a dim-term sum), and of the
        // exact Σ(q − x)² it stands for, as a share of |q|² + |x|².
        let l2_error = 4.0 * (dim as f32 + 4.0) * f32::EPSILON;
        for (i, id, sq_norm) in rows {
            for (j, list) in lists.iter_mut().enumerate() {
                let qx = scores[i * nq + j];
                let q_norm = self.norms[j];
                match self.metric {
                    Metric::Dot => list.top.push(in_range(-qx), id),
                    Metric::L2 => {
                        let scale = q_norm * q_norm + sq_norm;
                        list.push_bounded(scale - 2.0 * qx, l2_error * scale, id);
                    }
                    Metric::Cosine => list.top.push(if q_norm == 0.0 || sq_norm == 0.0 { 1.0 } else { 1.0 - qx }, id),
                }
            }
        }
    }
}

/// Segments at least this large are moved into memory advised for transparent huge pages.
const HUGE_PAGE_MIN_BYTES: usize = 8 << 20;

/// `v` in a buffer the kernel is asked to back with 2 MiB pages (Linux, `madvise`): a search
/// streams every row, and 4 KiB pages cost a TLB miss every 4 KiB. A hint only: where the
/// kernel has none to give, or `HYPRSTREAM_HUGEPAGES=0`, the buffer is ordinary memory.
fn huge_page_copy(v: Vec<f32>) -> Vec<f32> {
    #[cfg(target_os = "linux")]
    {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let enabled = *ENABLED.get_or_init(|| std::env::var("HYPRSTREAM_HUGEPAGES").as_deref() != Ok("0"));
        let bytes = v.len() * std::mem::size_of::<f32>();
        if enabled && bytes >= HUGE_PAGE_MIN_BYTES {
            const HUGE: usize = 2 << 20;
            let mut out: Vec<f32> = Vec::with_capacity(v.len());
            let start = out.as_ptr() as usize;
            let (first, last) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
            if last > first {
                // SAFETY: [first, last) lies inside `out`'s allocation (not yet touched, so the
                // advice applies as its pages are first written); madvise only sets a hint.
                unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE) };
            }
            out.extend_from_slice(&v);
            return out;
        }
    }
    v
}

/// Distance of row `i` of `s` to the prepared query `q` (`q_norm`: its norm before
/// normalisation), smaller is closer.
#[inline]
/// A hint to bring `row` into cache (a no-op off x86-64).
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: prefetching only hints the cache; the address is inside `row`.
        unsafe { std::arch::x86_64::_mm_prefetch(line.as_ptr().cast(), std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

fn row_distance(metric: Metric, q: &[f32], q_norm: f32, s: &Segment, i: usize, dim: usize) -> f32 {
    let row = &s.data[i * dim..(i + 1) * dim];
    match metric {
        Metric::Dot => in_range(-dot(q, row)),
        Metric::L2 => in_range(squared_l2(q, row)),
        Metric::Cosine => {
            if q_norm == 0.0 || s.sq_norms[i] == 0.0 {
                1.0
            } else {
                1.0 - dot(q, row)
            }
        }
    }
}

fn merge(tops: Vec<TopK>, k: usize) -> Vec<Neighbor> {
    let mut merged = TopK::new(k);
    for top in tops {
        for n in top.into_sorted() {
            merged.push(n.distance, n.id);
        }
    }
    merged.into_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_copies_keep_every_value() {
        for len in [10, HUGE_PAGE_MIN_BYTES / 4 + 12_345] {
            let v: Vec<f32> = (0..len).map(|i| i as f32 * 0.5).collect();
            assert_eq!(huge_page_copy(v.clone()), v);
        }
    }
}

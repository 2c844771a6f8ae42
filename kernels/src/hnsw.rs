//! Search (not construction) of an HNSW graph whose vectors are 8-bit scalar-quantised codes.
//!
//! The server builds its HNSW indexes with Lance and answers most ANN queries by walking them
//! here instead of through Lance's own walk. The two differ in memory access only:
//!
//! * Lance (14) keeps each level's neighbour lists as an Arrow list array (an offset read,
//!   then a list read) and prefetches a neighbour's code two neighbours ahead, visited or not.
//!   On 100k × 384 codes (38 MB, past this machine's caches) its probe took 0.32–0.37 ms at
//!   ef 120, bound by cache misses.
//! * Here the bottom level is one fixed-stride array (a node's list is one contiguous read),
//!   and before scoring an expanded node's neighbours the walk marks the unvisited ones and
//!   prefetches every cache line of all their codes at once, so their misses overlap
//!   (hnswlib does the same).
//!
//! The algorithm is Lance's step for step: greedy descent from the entry point down to
//! level 1, then a beam of `ef` at level 0, the same heap orderings (by distance only, so
//! ties fall the same way), the same early stop and the same integer distance. It returns
//! Lance's answer, which the server's tests check node for node.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// One level's adjacency as Arrow lays out a `List<UInt32>`: node `ids[i]` has the
/// neighbours `neighbors[offsets[i]..offsets[i + 1]]`.
pub struct GraphLevel<'a> {
    pub ids: &'a [u32],
    pub offsets: &'a [i32],
    pub neighbors: &'a [u32],
}

/// An HNSW graph laid out for search.
pub struct HnswGraph {
    nodes: usize,
    entry: u32,
    /// Slots per node in `bottom`: its neighbour count, then its neighbours.
    stride: usize,
    bottom: Vec<u32>,
    /// Level 1 upward, up to the highest level that has nodes.
    upper: Vec<UpperLevel>,
}

/// An upper level: few nodes (about one in 16 per level up), found by binary search.
struct UpperLevel {
    ids: Vec<u32>,
    offsets: Vec<usize>,
    neighbors: Vec<u32>,
}

impl UpperLevel {
    fn neighbors(&self, id: u32) -> &[u32] {
        match self.ids.binary_search(&id) {
            Ok(row) => &self.neighbors[self.offsets[row]..self.offsets[row + 1]],
            // Not at this level: no neighbours, the greedy step stays put (as Lance).
            Err(_) => &[],
        }
    }
}

/// Scores graph nodes against one query.
pub trait NodeDistance {
    fn distance(&self, node: u32) -> f32;
    /// Starts loading `node`'s vector into cache.
    fn prefetch(&self, node: u32);
}

#[derive(Clone, Copy, Debug)]
struct Node {
    dist: f32,
    id: u32,
}

// By distance only, as Lance's `OrderedNode`: equal distances then fall in the same heap
// order as in Lance's walk.
impl Ord for Node {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist.total_cmp(&other.dist)
    }
}
impl PartialOrd for Node {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Node {}

thread_local! {
    /// This thread's visited bits, kept between walks (cleared, not reallocated).
    static VISITED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl HnswGraph {
    /// `levels[0]` is the bottom level and must list the nodes `0..nodes` in order (as Lance
    /// writes it). Neighbour ids past `nodes` are dropped, as Lance drops them on load.
    pub fn new(nodes: usize, entry: u32, levels: &[GraphLevel]) -> Result<Self, String> {
        let Some(bottom_level) = levels.first() else {
            return Ok(HnswGraph { nodes: 0, entry, stride: 1, bottom: Vec::new(), upper: Vec::new() });
        };
        if bottom_level.ids.len() != nodes || bottom_level.ids.iter().enumerate().any(|(i, id)| *id as usize != i) {
            return Err(format!("the bottom level must list nodes 0..{nodes} in order"));
        }
        if nodes > 0 && entry as usize >= nodes {
            return Err(format!("entry point {entry} is not one of the {nodes} nodes"));
        }
        let list = |level: &GraphLevel, row: usize| -> Result<Vec<u32>, String> {
            let (start, end) = (level.offsets[row], level.offsets[row + 1]);
            let (start, end) = (usize::try_from(start).ok(), usize::try_from(end).ok());
            match (start, end) {
                (Some(s), Some(e)) if s <= e && e <= level.neighbors.len() => {
                    Ok(level.neighbors[s..e].iter().copied().filter(|n| (*n as usize) < nodes).collect())
                }
                _ => Err(format!("node row {row} has an offset outside its level")),
            }
        };
        for level in levels {
            if level.offsets.len() != level.ids.len() + 1 {
                return Err("a level needs one offset more than it has nodes".into());
            }
        }
        let lists = (0..nodes).map(|row| list(bottom_level, row)).collect::<Result<Vec<_>, _>>()?;
        let stride = 1 + lists.iter().map(Vec::len).max().unwrap_or(0);
        let mut bottom = vec![0u32; nodes * stride];
        for (slots, list) in bottom.chunks_exact_mut(stride).zip(&lists) {
            slots[0] = list.len() as u32;
            slots[1..=list.len()].copy_from_slice(list);
        }
        let top = levels.iter().rposition(|l| !l.ids.is_empty()).unwrap_or(0);
        let mut upper = Vec::with_capacity(top);
        for level in &levels[1..=top] {
            let mut rows: Vec<(u32, Vec<u32>)> =
                (0..level.ids.len()).map(|row| Ok((level.ids[row], list(level, row)?))).collect::<Result<_, String>>()?;
            rows.sort_by_key(|(id, _)| *id);
            let mut offsets = Vec::with_capacity(rows.len() + 1);
            let mut neighbors = Vec::new();
            offsets.push(0);
            for (_, list) in &rows {
                neighbors.extend_from_slice(list);
                offsets.push(neighbors.len());
            }
            upper.push(UpperLevel { ids: rows.into_iter().map(|(id, _)| id).collect(), offsets, neighbors });
        }
        Ok(HnswGraph { nodes, entry, stride, bottom, upper })
    }

    pub fn len(&self) -> usize {
        self.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// Bytes held (the bottom level dominates: 4 × stride per node).
    pub fn memory_size(&self) -> usize {
        4 * self.bottom.len() + self.upper.iter().map(|l| 4 * (l.ids.len() + l.neighbors.len()) + 8 * l.offsets.len()).sum::<usize>()
    }

    fn bottom_neighbors(&self, id: u32) -> &[u32] {
        let slots = &self.bottom[id as usize * self.stride..(id as usize + 1) * self.stride];
        &slots[1..=slots[0] as usize]
    }

    /// The `k` nearest nodes (of `ef` kept during the walk; `ef ≥ k`), nearest first, as
    /// (distance, node). With `admitted`, only admitted nodes are returned (the walk still
    /// passes through the others), as Lance's prefiltered walk.
    pub fn search(&self, dist: &impl NodeDistance, k: usize, ef: usize, admitted: Option<&dyn Fn(u32) -> bool>) -> Vec<(f32, u32)> {
        if self.nodes == 0 {
            return Vec::new();
        }
        let mut ep = Node { dist: dist.distance(self.entry), id: self.entry };
        let mut candidates_buf: Vec<u32> = Vec::with_capacity(self.stride);
        for level in self.upper.iter().rev() {
            ep = greedy(ep, dist, level, &mut candidates_buf);
        }
        VISITED.with(|visited| {
            let mut visited = visited.borrow_mut();
            visited.clear();
            visited.resize(self.nodes.div_ceil(64), 0);
            self.beam(ep, dist, ef, admitted, &mut visited, &mut candidates_buf).into_iter().take(k).map(|n| (n.dist, n.id)).collect()
        })
    }

    fn beam(
        &self,
        ep: Node,
        dist: &impl NodeDistance,
        ef: usize,
        admitted: Option<&dyn Fn(u32) -> bool>,
        visited: &mut [u64],
        fresh: &mut Vec<u32>,
    ) -> Vec<Node> {
        let mut candidates = BinaryHeap::with_capacity(ef);
        let mut results: BinaryHeap<Node> = BinaryHeap::with_capacity(ef);
        let mark = |visited: &mut [u64], id: u32| {
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            let seen = visited[word] & bit != 0;
            visited[word] |= bit;
            seen
        };
        let accepts = |id: u32| admitted.is_none_or(|admitted| admitted(id));
        mark(visited, ep.id);
        candidates.push(Reverse(ep));
        if accepts(ep.id) {
            results.push(ep);
        }
        while let Some(Reverse(current)) = candidates.pop() {
            let furthest = results.peek().map_or(f32::INFINITY, |n| n.dist);
            if current.dist.total_cmp(&furthest) == Ordering::Greater && results.len() == ef {
                break;
            }
            fresh.clear();
            for &neighbor in self.bottom_neighbors(current.id) {
                if !mark(visited, neighbor) {
                    dist.prefetch(neighbor);
                    fresh.push(neighbor);
                }
            }
            for &neighbor in fresh.iter() {
                let node = Node { dist: dist.distance(neighbor), id: neighbor };
                let furthest = results.peek().map_or(f32::INFINITY, |n| n.dist);
                if node.dist.total_cmp(&furthest) != Ordering::Greater || results.len() < ef {
                    if accepts(neighbor) {
                        if results.len() < ef {
                            results.push(node);
                        } else if node.dist.total_cmp(&results.peek().expect("ef > 0").dist) == Ordering::Less {
                            results.pop();
                            results.push(node);
                        }
                    }
                    candidates.push(Reverse(node));
                }
            }
            // The next node to expand is known now: its neighbour list loads while the heap
            // work of this step finishes (hnswlib does the same).
            if let Some(Reverse(next)) = candidates.peek() {
                prefetch(&self.bottom[next.id as usize * self.stride..(next.id as usize + 1) * self.stride]);
            }
        }
        results.into_sorted_vec()
    }
}

/// Lance's greedy step at an upper level: move to the nearest neighbour while one is nearer.
fn greedy(ep: Node, dist: &impl NodeDistance, level: &UpperLevel, buf: &mut Vec<u32>) -> Node {
    let mut current = ep;
    loop {
        buf.clear();
        buf.extend_from_slice(level.neighbors(current.id));
        buf.iter().for_each(|n| dist.prefetch(*n));
        let mut moved = false;
        for &neighbor in buf.iter() {
            let d = dist.distance(neighbor);
            if d < current.dist {
                current = Node { dist: d, id: neighbor };
                moved = true;
            }
        }
        if !moved {
            return current;
        }
    }
}

/// Squared euclidean distance between a query and 8-bit codes, scaled back to the vectors'
/// units, as Lance's `ScalarQuantizationStorage` scores its L2 and cosine indexes: codes are
/// `(v − lower) · 255 / (upper − lower)` truncated (saturating), and the distance is the
/// integer sum of squared code differences times `((upper − lower) / 255)²`.
pub struct SqL2<'a> {
    codes: &'a [u8],
    dim: usize,
    query: Vec<u8>,
    scale: f32,
    l2: fn(&[u8], &[u8]) -> u64,
}

impl<'a> SqL2<'a> {
    /// `codes` holds one `dim`-byte code per node, in node order; `bounds` are the
    /// quantiser's (lower, upper).
    pub fn new(codes: &'a [u8], dim: usize, bounds: (f64, f64), query: &[f32]) -> Self {
        assert_eq!(query.len(), dim, "query length must equal the codes' dimension");
        let (lower, upper) = bounds;
        let range = upper - lower;
        let query = query
            .iter()
            .map(|&v| if lower == upper { 0 } else { ((f64::from(v) - lower) * 255.0 / range) as u8 })
            .collect();
        let step = (upper - lower) as f32 / 255.0f32;
        SqL2 { codes, dim, query, scale: step * step, l2: l2_u8_dispatch() }
    }

    /// How many codes `codes` holds.
    pub fn len(&self) -> usize {
        self.codes.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn code(&self, node: u32) -> &[u8] {
        &self.codes[node as usize * self.dim..(node as usize + 1) * self.dim]
    }
}

impl NodeDistance for SqL2<'_> {
    #[inline]
    fn distance(&self, node: u32) -> f32 {
        (self.l2)(self.code(node), &self.query) as f32 * self.scale
    }

    #[inline]
    fn prefetch(&self, node: u32) {
        prefetch(self.code(node));
    }
}

/// Starts loading every cache line of `data`.
#[inline]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (start, bytes) = (data.as_ptr() as *const i8, std::mem::size_of_val(data));
        for line in (0..bytes).step_by(64) {
            // SAFETY: a prefetch is a hint; the address is inside `data`.
            unsafe { std::arch::x86_64::_mm_prefetch(start.add(line), std::arch::x86_64::_MM_HINT_T0) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Sum of squared differences of two byte strings. A u32 accumulator holds 66 051 squares of
/// 255; longer strings are summed in pieces.
#[inline(always)]
fn l2_u8_generic(a: &[u8], b: &[u8]) -> u64 {
    a.chunks(65_536)
        .zip(b.chunks(65_536))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| {
                    let d = i32::from(*x) - i32::from(*y);
                    (d * d) as u32
                })
                .sum::<u32>() as u64
        })
        .sum()
}

fn l2_u8_portable(a: &[u8], b: &[u8]) -> u64 {
    l2_u8_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn l2_u8_avx2(a: &[u8], b: &[u8]) -> u64 {
    l2_u8_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn l2_u8_avx512(a: &[u8], b: &[u8]) -> u64 {
    l2_u8_generic(a, b)
}

/// The widest byte-distance kernel this CPU runs (chosen once per query).
fn l2_u8_dispatch() -> fn(&[u8], &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512 F and BW (checked just above).
            return |a, b| unsafe { l2_u8_avx512(a, b) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return |a, b| unsafe { l2_u8_avx2(a, b) };
        }
    }
    l2_u8_portable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_distance_tiers_agree() {
        let a: Vec<u8> = (0..1000u32).map(|i| (i * 37 % 256) as u8).collect();
        let b: Vec<u8> = (0..1000u32).map(|i| (i * 91 % 256) as u8).collect();
        for len in [0, 1, 31, 32, 33, 64, 384, 1000] {
            let want: u64 = a[..len].iter().zip(&b[..len]).map(|(x, y)| (i64::from(*x) - i64::from(*y)).pow(2) as u64).sum();
            assert_eq!(l2_u8_portable(&a[..len], &b[..len]), want);
            assert_eq!(l2_u8_dispatch()(&a[..len], &b[..len]), want);
        }
    }
}

//! Exact similarity search over contiguous row-major `f32` matrices.
//!
//! This crate knows nothing of Lance or gRPC: it scores a query against blocks of vectors and
//! keeps the k best. The server streams a table's embedding column through it block by block,
//! so a search needs memory for one block and the k best rows, never the whole table.
//!
//! Distances are "smaller is closer": cosine = 1 − cos, l2 = squared euclidean, dot = −q·x.

#[cfg(feature = "cuda")]
pub mod cuda;
mod distance;
pub mod hnsw;
mod index;
mod topk;

pub use distance::{dot, in_range, norm, normalize, simd_tier, squared_l2, Metric, PreparedQuery, SimdTier};
pub use index::{position_in_sorted, FlatIndex, RowFilter};
pub use topk::{Neighbor, TopK};

/// Rows scored per thread before another thread is worth starting (≈ 256 KiB of f32 at dim 384).
const ROWS_PER_THREAD: usize = 16 * 1024;

/// Scores every row of `matrix` (row-major, `dim` columns) against `query` into `out`.
/// Rows whose `valid` entry is false (a null embedding, a row removed by a filter) get
/// `f32::INFINITY` and are never selected.
pub fn score_rows(query: &PreparedQuery, matrix: &[f32], valid: Option<&[bool]>, out: &mut [f32]) {
    let dim = query.dim();
    assert_eq!(matrix.len(), out.len() * dim, "matrix must hold out.len() rows of dim {dim}");
    if let Some(valid) = valid {
        assert_eq!(valid.len(), out.len(), "one validity flag per row");
    }
    let rows = out.len();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = threads.min(rows.div_ceil(ROWS_PER_THREAD)).max(1);
    if threads == 1 {
        score_range(query, matrix, valid, out, 0);
        return;
    }
    let chunk = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        for (i, out_chunk) in out.chunks_mut(chunk).enumerate() {
            let start = i * chunk;
            let m = &matrix[start * dim..(start + out_chunk.len()) * dim];
            scope.spawn(move || score_range(query, m, valid, out_chunk, start));
        }
    });
}

fn score_range(query: &PreparedQuery, matrix: &[f32], valid: Option<&[bool]>, out: &mut [f32], offset: usize) {
    let dim = query.dim();
    for (i, (row, slot)) in matrix.chunks_exact(dim).zip(out.iter_mut()).enumerate() {
        *slot = match valid {
            Some(v) if !v[offset + i] => f32::INFINITY,
            _ => query.distance(row),
        };
    }
}

/// Scores a block and offers every valid row to `top`, with ids `first_id + row index`
/// unless `ids` gives each row's id.
pub fn search_block(
    query: &PreparedQuery,
    matrix: &[f32],
    valid: Option<&[bool]>,
    ids: Option<&[u64]>,
    first_id: u64,
    scratch: &mut Vec<f32>,
    top: &mut TopK,
) {
    let rows = matrix.len() / query.dim().max(1);
    scratch.clear();
    scratch.resize(rows, 0.0);
    score_rows(query, matrix, valid, scratch);
    for (i, &d) in scratch.iter().enumerate() {
        if d.is_finite() {
            let id = ids.map_or(first_id + i as u64, |ids| ids[i]);
            top.push(d, id);
        }
    }
}

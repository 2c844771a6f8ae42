//! CUDA backend: rows resident in GPU memory, scored by `cuda/similarity.cu` (compiled at run
//! time by NVRTC through cudarc's dynamic loading, so the binary builds and starts without
//! CUDA). Appends copy only the new rows; deletes flip one live byte; updates rewrite one row —
//! the matrix is never re-uploaded whole.
//!
//! Top-k selection is fused on the device per 4096-row segment (`block_topk`); the host merges
//! the few candidates with the same [`TopK`] and tie rule as the CPU backend.
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use crate::distance::{dot, normalize, Metric};
use crate::topk::{Neighbor, TopK};

const SOURCE: &str = include_str!("../cuda/similarity.cu");
const THREADS_PER_BLOCK: u32 = 256;
/// score_batch's tile (BM × BN in similarity.cu): rows and queries per block.
const TILE_ROWS: u32 = 64;
const TILE_QUERIES: u32 = 64;
/// Queries scored per pass over the matrix (one query tile: each row is read once per pass).
const BATCH: usize = 64;
/// Scores per block_topk segment (16 per thread): 1M rows → 245 segments × k candidates.
const SEGMENT: usize = 4096;
/// Above this k, all scores come back and the host selects.
const MAX_DEVICE_K: usize = 256;

#[derive(Debug)]
pub struct GpuError(pub String);

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GpuError {}

fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> GpuError + '_ {
    move |e| GpuError(format!("{what}: {e:?}"))
}

/// Why the GPU backend cannot run here, or `None` if a driver, NVRTC and a device are present.
/// Never panics (cudarc's loaders would, if asked to load a missing library).
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: only probes whether the shared libraries can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no CUDA driver library (libcuda) found".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Some("no NVRTC library (libnvrtc) found".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => None,
        Ok(_) => Some("the CUDA driver reports no device".into()),
        Err(e) => Some(format!("the CUDA driver failed to initialise: {e:?}")),
    }
}

/// Device memory bandwidth in bytes/s, from a timed device-to-device copy of `bytes`
/// (a copy reads and writes each byte: 2 × bytes move).
pub fn measure_copy_bandwidth(ordinal: usize, bytes: usize) -> Result<f64, GpuError> {
    let ctx = CudaContext::new(ordinal).map_err(err("create context"))?;
    let stream = ctx.default_stream();
    let n = bytes / 4;
    let src: CudaSlice<f32> = stream.alloc_zeros(n).map_err(err("alloc src"))?;
    let mut dst: CudaSlice<f32> = stream.alloc_zeros(n).map_err(err("alloc dst"))?;
    stream.memcpy_dtod(&src, &mut dst).map_err(err("warm-up copy"))?;
    stream.synchronize().map_err(err("sync"))?;
    let reps = 5;
    let t = std::time::Instant::now();
    for _ in 0..reps {
        stream.memcpy_dtod(&src, &mut dst).map_err(err("copy"))?;
    }
    stream.synchronize().map_err(err("sync"))?;
    Ok(2.0 * (n * 4) as f64 * reps as f64 / t.elapsed().as_secs_f64())
}

pub struct GpuIndex {
    stream: Arc<CudaStream>,
    score_rows: CudaFunction,
    score_batch: CudaFunction,
    block_topk: CudaFunction,
    dim: usize,
    metric: Metric,
    rows: usize,
    capacity: usize,
    data: CudaSlice<f32>,
    sq_norms: CudaSlice<f32>,
    live: CudaSlice<u8>,
    /// Per-slot prefilter bytes, uploaded per masked search.
    mask: CudaSlice<u8>,
    /// Scratch for one pass's scores (`queries × rows`); grows on demand.
    scores: CudaSlice<f32>,
    ids: Vec<u64>,
    /// Host copy of `live`, so many deletes cost one upload.
    live_host: Vec<u8>,
    dead: usize,
}

impl GpuIndex {
    /// An empty index on device `ordinal`, with room for `capacity` rows before it grows.
    pub fn new(ordinal: usize, dim: usize, metric: Metric, capacity: usize) -> Result<Self, GpuError> {
        if let Some(reason) = unavailable_reason() {
            return Err(GpuError(reason));
        }
        let ctx = CudaContext::new(ordinal).map_err(err("create context"))?;
        let stream = ctx.default_stream();
        let ptx = cudarc::nvrtc::compile_ptx(SOURCE).map_err(|e| GpuError(format!("NVRTC: {e:?}")))?;
        let module = ctx.load_module(ptx).map_err(err("load module"))?;
        let load = |name: &str| module.load_function(name).map_err(|e| GpuError(format!("load {name}: {e:?}")));
        let (score_rows, score_batch, block_topk) = (load("score_rows")?, load("score_batch")?, load("block_topk")?);
        let capacity = capacity.max(1);
        Ok(GpuIndex {
            data: stream.alloc_zeros(capacity * dim).map_err(err("alloc rows"))?,
            sq_norms: stream.alloc_zeros(capacity).map_err(err("alloc norms"))?,
            live: stream.alloc_zeros(capacity).map_err(err("alloc live"))?,
            mask: stream.alloc_zeros(capacity).map_err(err("alloc mask"))?,
            scores: stream.alloc_zeros(capacity).map_err(err("alloc scores"))?,
            stream,
            score_rows,
            score_batch,
            block_topk,
            dim,
            metric,
            rows: 0,
            capacity,
            ids: Vec::new(),
            live_host: Vec::new(),
            dead: 0,
        })
    }

    /// Live rows.
    pub fn len(&self) -> usize {
        self.rows - self.dead
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Prepares rows as the kernel expects them (normalised for cosine) with their |x|².
    fn prepare(&self, vectors: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut rows = vectors.to_vec();
        if self.metric == Metric::Cosine {
            for row in rows.chunks_exact_mut(self.dim) {
                normalize(row);
            }
        }
        let norms = rows.chunks_exact(self.dim).map(|r| dot(r, r)).collect();
        (rows, norms)
    }

    /// Doubles the device buffers, copying resident rows device-to-device.
    fn grow(&mut self, needed: usize) -> Result<(), GpuError> {
        let capacity = needed.max(self.capacity * 2);
        let mut data = self.stream.alloc_zeros(capacity * self.dim).map_err(err("grow rows"))?;
        let mut sq_norms = self.stream.alloc_zeros(capacity).map_err(err("grow norms"))?;
        let mut live = self.stream.alloc_zeros(capacity).map_err(err("grow live"))?;
        if self.rows > 0 {
            let n = self.rows;
            self.stream.memcpy_dtod(&self.data.slice(..n * self.dim), &mut data.slice_mut(..n * self.dim)).map_err(err("copy rows"))?;
            self.stream.memcpy_dtod(&self.sq_norms.slice(..n), &mut sq_norms.slice_mut(..n)).map_err(err("copy norms"))?;
            self.stream.memcpy_dtod(&self.live.slice(..n), &mut live.slice_mut(..n)).map_err(err("copy live"))?;
        }
        self.scores = self.stream.alloc_zeros(capacity).map_err(err("grow scores"))?;
        self.mask = self.stream.alloc_zeros(capacity).map_err(err("grow mask"))?;
        self.data = data;
        self.sq_norms = sq_norms;
        self.live = live;
        self.capacity = capacity;
        Ok(())
    }

    /// Appends rows (`ids.len() × dim`, row-major); only the new rows cross the bus.
    pub fn append(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), GpuError> {
        assert_eq!(vectors.len(), ids.len() * self.dim, "vectors must be ids.len() × dim");
        let (start, n) = (self.rows, ids.len());
        if start + n > self.capacity {
            self.grow(start + n)?;
        }
        let (rows, norms) = self.prepare(vectors);
        let d = self.dim;
        self.stream.memcpy_htod(&rows, &mut self.data.slice_mut(start * d..(start + n) * d)).map_err(err("upload rows"))?;
        self.stream.memcpy_htod(&norms, &mut self.sq_norms.slice_mut(start..start + n)).map_err(err("upload norms"))?;
        self.stream.memcpy_htod(&vec![1u8; n], &mut self.live.slice_mut(start..start + n)).map_err(err("upload live"))?;
        self.ids.extend_from_slice(ids);
        self.live_host.resize(start + n, 1);
        self.rows += n;
        Ok(())
    }

    /// Row ids by slot (append order), deleted slots included.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Whether a slot is live (not deleted).
    pub fn is_live(&self, slot: usize) -> bool {
        self.live_host[slot] != 0
    }

    /// Deleted slots still holding device memory (`compact` reclaims them).
    pub fn dead(&self) -> usize {
        self.dead
    }

    /// Moves the live rows together into buffers sized for them (device to device, one copy
    /// per run of live slots), so deleted rows stop costing memory and scan time. Slots
    /// change: afterwards slot i holds `ids()[i]`, and every slot is live.
    pub fn compact(&mut self) -> Result<(), GpuError> {
        let d = self.dim;
        let live_rows = self.len();
        let capacity = live_rows.max(1 << 14);
        let mut data = self.stream.alloc_zeros(capacity * d).map_err(err("compact rows"))?;
        let mut sq_norms = self.stream.alloc_zeros(capacity).map_err(err("compact norms"))?;
        let mut to = 0;
        let mut slot = 0;
        while slot < self.rows {
            if self.live_host[slot] == 0 {
                slot += 1;
                continue;
            }
            let run = self.live_host[slot..self.rows].iter().position(|l| *l == 0).unwrap_or(self.rows - slot);
            let (from, n) = (slot, run);
            self.stream.memcpy_dtod(&self.data.slice(from * d..(from + n) * d), &mut data.slice_mut(to * d..(to + n) * d)).map_err(err("compact rows"))?;
            self.stream.memcpy_dtod(&self.sq_norms.slice(from..from + n), &mut sq_norms.slice_mut(to..to + n)).map_err(err("compact norms"))?;
            to += n;
            slot += n;
        }
        let mut live = self.stream.alloc_zeros(capacity).map_err(err("compact live"))?;
        self.stream.memcpy_htod(&vec![1u8; live_rows], &mut live.slice_mut(..live_rows)).map_err(err("compact live"))?;
        let ids: Vec<u64> = self.ids.iter().zip(&self.live_host).filter(|(_, l)| **l != 0).map(|(id, _)| *id).collect();
        self.scores = self.stream.alloc_zeros(capacity).map_err(err("compact scores"))?;
        self.mask = self.stream.alloc_zeros(capacity).map_err(err("compact mask"))?;
        (self.data, self.sq_norms, self.live) = (data, sq_norms, live);
        self.ids = ids;
        self.live_host = vec![1; live_rows];
        (self.rows, self.capacity, self.dead) = (live_rows, capacity, 0);
        Ok(())
    }

    /// Marks many slots deleted with one upload of the live bytes.
    pub fn remove_many(&mut self, slots: &[usize]) -> Result<(), GpuError> {
        for &slot in slots {
            assert!(slot < self.rows);
            if self.live_host[slot] != 0 {
                self.live_host[slot] = 0;
                self.dead += 1;
            }
        }
        let n = self.rows;
        self.stream.memcpy_htod(&self.live_host[..n], &mut self.live.slice_mut(..n)).map_err(err("upload live"))
    }

    /// Rewrites one resident row in place.
    pub fn update(&mut self, row: usize, vector: &[f32]) -> Result<(), GpuError> {
        assert!(row < self.rows && vector.len() == self.dim);
        let (rows, norms) = self.prepare(vector);
        let d = self.dim;
        self.stream.memcpy_htod(&rows, &mut self.data.slice_mut(row * d..(row + 1) * d)).map_err(err("update row"))?;
        self.stream.memcpy_htod(&norms, &mut self.sq_norms.slice_mut(row..row + 1)).map_err(err("update norm"))?;
        Ok(())
    }

    /// Marks one resident row deleted (it scores +inf and is never returned).
    pub fn remove(&mut self, row: usize) -> Result<(), GpuError> {
        self.remove_many(&[row])
    }

    /// The k nearest live rows to `query`, nearest first.
    pub fn search(&mut self, query: &[f32], k: usize) -> Result<Vec<Neighbor>, GpuError> {
        Ok(self.search_batch(query, k, None)?.pop().unwrap_or_default())
    }

    /// The k nearest live rows to each query (`queries` is `q × dim`, row-major), restricted to
    /// the slots where `mask` is non-zero when given (one byte per resident row, in append
    /// order). One query is one memory-bound pass (`score_rows`); a batch is one tiled-SGEMM
    /// pass per 64 queries (`score_batch`). Selection runs on the device (`block_topk`) so only
    /// k candidates per segment come back, unless k is too large for that to pay.
    pub fn search_batch(&mut self, queries: &[f32], k: usize, mask: Option<&[u8]>) -> Result<Vec<Vec<Neighbor>>, GpuError> {
        assert_eq!(queries.len() % self.dim, 0, "queries must be q × dim");
        let n_queries = queries.len() / self.dim;
        if self.rows == 0 || k == 0 {
            return Ok(vec![Vec::new(); n_queries]);
        }
        let use_mask: i32 = match mask {
            Some(m) => {
                assert_eq!(m.len(), self.rows, "one mask byte per resident row");
                self.stream.memcpy_htod(m, &mut self.mask.slice_mut(..self.rows)).map_err(err("upload mask"))?;
                1
            }
            None => 0,
        };
        let mut results = Vec::with_capacity(n_queries);
        for chunk in queries.chunks(self.dim * BATCH) {
            self.score_chunk(chunk, use_mask)?;
            results.extend(self.select(chunk.len() / self.dim, k)?);
        }
        Ok(results)
    }

    /// Scores up to BATCH queries into `self.scores` (`q × rows`, query-major).
    fn score_chunk(&mut self, chunk: &[f32], use_mask: i32) -> Result<(), GpuError> {
        let q = chunk.len() / self.dim;
        let mut prepared = chunk.to_vec();
        let mut q_norms = Vec::with_capacity(q);
        for v in prepared.chunks_exact_mut(self.dim) {
            if self.metric == Metric::Cosine && normalize(v) > 0.0 {
                q_norms.push(1.0f32);
            } else {
                q_norms.push(dot(v, v));
            }
        }
        if self.scores.len() < q * self.rows {
            self.scores = self.stream.alloc_zeros(q * self.capacity).map_err(err("alloc scores"))?;
        }
        let q_dev = self.stream.clone_htod(&prepared).map_err(err("upload queries"))?;
        let metric: i32 = match self.metric {
            Metric::Cosine => 0,
            Metric::Dot => 1,
            Metric::L2 => 2,
        };
        let (dim, n, n_queries) = (self.dim as i32, self.rows as i32, q as i32);
        // One query: a warp per row (memory-bound pass), the query in shared memory, which a
        // kernel gets up to 48 KiB of without opting in; longer queries go through the tiled
        // kernel. A batch: tiled SGEMM, one pass per 64.
        let one_warp_per_row = q == 1 && self.dim * 4 <= 48 * 1024;
        // A single query passes its norm by value (no extra upload on the latency path).
        let norms_dev = if !one_warp_per_row { Some(self.stream.clone_htod(&q_norms).map_err(err("upload query norms"))?) } else { None };
        let (function, cfg) = if one_warp_per_row {
            let warps_per_block = THREADS_PER_BLOCK / 32;
            let grid = (self.rows as u32).div_ceil(warps_per_block);
            (&self.score_rows, LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (THREADS_PER_BLOCK, 1, 1), shared_mem_bytes: (self.dim * 4) as u32 })
        } else {
            let grid = ((self.rows as u32).div_ceil(TILE_ROWS), (q as u32).div_ceil(TILE_QUERIES), 1);
            (&self.score_batch, LaunchConfig { grid_dim: grid, block_dim: (THREADS_PER_BLOCK, 1, 1), shared_mem_bytes: 0 })
        };
        let mut launch = self.stream.launch_builder(function);
        launch.arg(&self.data).arg(&self.sq_norms).arg(&self.live).arg(&self.mask).arg(&use_mask).arg(&q_dev);
        match &norms_dev {
            None => launch.arg(&q_norms[0]),
            Some(norms) => launch.arg(norms).arg(&n_queries),
        };
        launch.arg(&metric).arg(&dim).arg(&n).arg(&mut self.scores);
        // SAFETY: the argument lists match score_rows' and score_batch's signatures in
        // similarity.cu; `scores` holds q × n floats and every row buffer ≥ n rows.
        unsafe { launch.launch(cfg) }.map_err(err("launch scoring kernel"))?;
        Ok(())
    }

    /// The k nearest per query from `self.scores` (`q × rows`).
    fn select(&mut self, q: usize, k: usize) -> Result<Vec<Vec<Neighbor>>, GpuError> {
        let n = self.rows;
        if k > MAX_DEVICE_K {
            // Selecting thousands per segment on the device is slower than reading every score.
            let scores = self.stream.clone_dtoh(&self.scores.slice(..q * n)).map_err(err("download scores"))?;
            return Ok(scores.chunks(n).map(|s| self.host_topk(s.iter().copied().enumerate(), k)).collect());
        }
        let segments = n.div_ceil(SEGMENT);
        let per_query = segments * k;
        let mut dist: CudaSlice<f32> = self.stream.alloc_zeros(q * per_query).map_err(err("alloc candidates"))?;
        let mut index: CudaSlice<i32> = self.stream.alloc_zeros(q * per_query).map_err(err("alloc candidates"))?;
        let cfg = LaunchConfig {
            grid_dim: (segments as u32, q as u32, 1),
            block_dim: (THREADS_PER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_arg, segment_arg, k_arg) = (n as i32, SEGMENT as i32, k as i32);
        let mut launch = self.stream.launch_builder(&self.block_topk);
        launch.arg(&self.scores).arg(&n_arg).arg(&segment_arg).arg(&k_arg).arg(&mut dist).arg(&mut index);
        // SAFETY: the argument list matches block_topk's signature; outputs hold q × segments × k.
        unsafe { launch.launch(cfg) }.map_err(err("launch block_topk"))?;
        let dist = self.stream.clone_dtoh(&dist).map_err(err("download candidates"))?;
        let index = self.stream.clone_dtoh(&index).map_err(err("download candidates"))?;
        Ok((0..q)
            .map(|qi| {
                let range = qi * per_query..(qi + 1) * per_query;
                let candidates = index[range.clone()].iter().zip(&dist[range]).filter(|(&i, _)| i >= 0).map(|(&i, &d)| (i as usize, d));
                self.host_topk(candidates, k)
            })
            .collect())
    }

    /// Final selection on the host, with the CPU engine's tie rule (equal distances: smaller id).
    fn host_topk(&self, scored: impl Iterator<Item = (usize, f32)>, k: usize) -> Vec<Neighbor> {
        let mut top = TopK::new(k);
        for (slot, d) in scored {
            if d.is_finite() {
                top.push(d, self.ids[slot]);
            }
        }
        top.into_sorted()
    }

    /// Device memory held by the index, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.capacity * (self.dim * 4 + 4 + 1 + 1) + self.scores.len() * 4
    }
}

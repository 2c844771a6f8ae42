//! The exact engine's GPU mirror: the same live rows as the CPU [`FlatIndex`], resident in
//! GPU memory (`hyprstream-kernels`' CUDA backend), kept in step by the same per-fragment
//! operations. Every server binary carries it: cudarc loads the driver at run time, so the
//! build needs no CUDA toolkit and costs ≈ 20 s more. Whether searches may use a GPU is decided once at startup (`--device`): with
//! `auto` and no CUDA driver the server says so once in the log and searches stay on the CPU.
//!
//! [`FlatIndex`]: hyprstream_kernels::FlatIndex
use std::sync::OnceLock;

use hyprstream_kernels::{Metric, Neighbor, RowFilter};

use crate::ml::Device;

/// Tables smaller than this are searched on the CPU: below it a kernel launch and the
/// transfers cost more than the scan.
pub const GPU_MIN_ROWS: usize = 16_384;

static SEARCH_GPU: OnceLock<Option<usize>> = OnceLock::new();

/// The GPU exact searches run on, if any (set by [`configure`]).
pub fn search_device() -> Option<usize> {
    SEARCH_GPU.get().copied().flatten()
}

/// Decides, once per process, whether exact searches may use a GPU.
pub fn configure(device: Device) -> Result<(), String> {
    let choice = match device {
        Device::Cpu => {
            tracing::info!("exact search runs on the CPU (--device cpu)");
            None
        }
        Device::Auto => match unavailable_reason() {
            None => {
                tracing::info!(device = 0, min_rows = GPU_MIN_ROWS, "CUDA GPU found: exact searches of large tables run on it");
                Some(0)
            }
            Some(reason) => {
                tracing::info!(%reason, "no usable CUDA GPU: exact searches run on the CPU");
                None
            }
        },
        Device::Cuda(n) => match unavailable_reason() {
            None => {
                tracing::info!(device = n, min_rows = GPU_MIN_ROWS, "exact searches of large tables run on the GPU");
                Some(n)
            }
            Some(reason) => return Err(format!("--device cuda:{n}: {reason}")),
        },
    };
    let _ = SEARCH_GPU.set(choice);
    Ok(())
}

use hyprstream_kernels::cuda::unavailable_reason;

pub use mirror::GpuMirror;

mod mirror {
    use std::collections::HashMap;

    use hyprstream_kernels::cuda::GpuIndex;

    use super::*;

    /// Deleted rows worth a compaction (fewer cost little memory or scan time).
    const RECLAIM_MIN_DEAD: usize = 1 << 14;

    pub struct GpuMirror {
        index: GpuIndex,
        /// Device slot of each live row id.
        slots: HashMap<u64, usize>,
        /// Live row ids of each Lance fragment (sorted).
        segments: HashMap<u32, Vec<u64>>,
    }

    impl GpuMirror {
        pub fn new(device: usize, dim: usize, metric: Metric) -> Result<Self, String> {
            let index = GpuIndex::new(device, dim, metric, 1 << 14).map_err(|e| e.to_string())?;
            Ok(GpuMirror { index, slots: HashMap::new(), segments: HashMap::new() })
        }

        pub fn len(&self) -> usize {
            self.index.len()
        }

        /// Adds (or replaces) a fragment's rows; rows without a vector are not mirrored.
        pub fn insert_segment(&mut self, segment: u32, ids: &[u64], vectors: &[f32], valid: &[bool], dim: usize) -> Result<(), String> {
            self.remove_segment(segment)?;
            let keep: Vec<usize> = (0..ids.len()).filter(|&i| valid[i]).collect();
            let kept_ids: Vec<u64> = keep.iter().map(|&i| ids[i]).collect();
            let kept: Vec<f32> = keep.iter().flat_map(|&i| vectors[i * dim..(i + 1) * dim].iter().copied()).collect();
            let start = self.index.ids().len();
            self.index.append(&kept_ids, &kept).map_err(|e| e.to_string())?;
            for (i, &id) in kept_ids.iter().enumerate() {
                self.slots.insert(id, start + i);
            }
            self.segments.insert(segment, kept_ids);
            Ok(())
        }

        pub fn remove_segment(&mut self, segment: u32) -> Result<(), String> {
            let Some(ids) = self.segments.remove(&segment) else { return Ok(()) };
            let slots: Vec<usize> = ids.iter().filter_map(|id| self.slots.remove(id)).collect();
            self.index.remove_many(&slots).map_err(|e| e.to_string())?;
            self.reclaim()
        }

        /// Keeps only `keep` (sorted row ids) of a fragment: the rest were deleted.
        pub fn retain_in_segment(&mut self, segment: u32, keep: &[u64]) -> Result<(), String> {
            let Some(ids) = self.segments.get_mut(&segment) else { return Ok(()) };
            let (kept, gone): (Vec<u64>, Vec<u64>) = ids.iter().partition(|id| keep.binary_search(id).is_ok());
            *ids = kept;
            let slots: Vec<usize> = gone.iter().filter_map(|id| self.slots.remove(id)).collect();
            self.index.remove_many(&slots).map_err(|e| e.to_string())?;
            self.reclaim()
        }

        /// Deleted rows keep their device memory and are still scanned (as +inf): once they
        /// outnumber the live rows (every rewrite of a fragment leaves its old rows behind),
        /// the live rows are moved together and their slots renumbered.
        fn reclaim(&mut self) -> Result<(), String> {
            let (dead, live) = (self.index.dead(), self.index.len());
            if dead < RECLAIM_MIN_DEAD || dead < live {
                return Ok(());
            }
            self.index.compact().map_err(|e| e.to_string())?;
            self.slots = self.index.ids().iter().enumerate().map(|(slot, &id)| (id, slot)).collect();
            tracing::debug!(reclaimed = dead, live, "GPU mirror compacted");
            Ok(())
        }

        /// The k nearest live rows (that `filter` admits) to each query (`queries` is
        /// q × dim, row-major), nearest first.
        pub fn search(&mut self, queries: &[f32], k: usize, filter: Option<&RowFilter>) -> Result<Vec<Vec<Neighbor>>, String> {
            let mask: Option<Vec<u8>> = filter.map(|f| self.index.ids().iter().map(|&id| u8::from(f.contains(id))).collect());
            self.index.search_batch(queries, k, mask.as_deref()).map_err(|e| e.to_string())
        }
    }
}

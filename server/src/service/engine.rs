//! In-memory exact search engines, one per (table, metric), kept in step with the table.
//!
//! An engine mirrors the latest version of a table's `embedding` column in a
//! [`FlatIndex`], one segment per Lance fragment. Before each search it is brought up to the
//! table's latest version by looking only at what changed: new fragments are read and added,
//! vanished fragments dropped, fragments whose deletion vector changed have their dead rows
//! marked — so a row put or deleted is visible to the very next search without a rebuild.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use hyprstream_kernels::{FlatIndex, Metric as KernelMetric};
use hyprstream_proto::columns::EMBEDDING;
use lance::dataset::Dataset;
use lance::table::format::Fragment;
use tokio::sync::RwLock;

use super::gpu::{search_device, GpuMirror};
use crate::error::Result;
use crate::store::{lance_error, row_ids, vector_block};

pub struct TableEngine {
    pub index: FlatIndex,
    /// The same rows on the GPU, when searches may use one (a GPU failure drops it: the CPU
    /// index is always complete).
    pub gpu: Option<Mutex<GpuMirror>>,
    /// The table version the index reflects.
    pub version: u64,
    /// Each loaded fragment as it was when loaded (to see what changed).
    fragments: BTreeMap<u32, Fragment>,
}

impl TableEngine {
    fn new(dim: usize, metric: KernelMetric) -> Self {
        let gpu = search_device().and_then(|device| match GpuMirror::new(device, dim, metric) {
            Ok(mirror) => Some(Mutex::new(mirror)),
            Err(e) => {
                tracing::warn!(error = %e, "GPU search index unavailable; this table is searched on the CPU");
                None
            }
        });
        TableEngine { index: FlatIndex::new(dim, metric), gpu, version: 0, fragments: BTreeMap::new() }
    }

    /// Applies one change to the GPU mirror; on failure the mirror is dropped (logged).
    fn mirror(&mut self, change: impl FnOnce(&mut GpuMirror) -> std::result::Result<(), String>) {
        let Some(gpu) = &self.gpu else { return };
        let result = change(&mut gpu.lock().expect("gpu mirror poisoned"));
        if let Err(e) = result {
            tracing::warn!(error = %e, "GPU search index dropped; this table is searched on the CPU");
            self.gpu = None;
        }
    }
}

#[derive(Default)]
pub struct Engines {
    engines: Mutex<HashMap<(String, KernelMetric), Arc<RwLock<Option<TableEngine>>>>>,
}

impl Engines {
    pub fn slot(&self, table: &str, metric: KernelMetric) -> Arc<RwLock<Option<TableEngine>>> {
        let mut engines = self.engines.lock().expect("engine map poisoned");
        engines.entry((table.to_string(), metric)).or_default().clone()
    }

    /// Forgets a table's engines (it was dropped).
    pub fn forget(&self, table: &str) {
        self.engines.lock().expect("engine map poisoned").retain(|(t, _), _| t != table);
    }
}

/// Brings `engine` to `dataset`'s version (building it on first use).
pub async fn sync(engine: &mut Option<TableEngine>, dataset: &Dataset, dim: usize, metric: KernelMetric) -> Result<()> {
    let version = dataset.version().version;
    if engine.as_ref().is_some_and(|e| e.version == version) {
        return Ok(());
    }
    let state = engine.get_or_insert_with(|| TableEngine::new(dim, metric));
    if state.index.dim() != dim {
        // The table was overwritten with another dim: start over.
        *state = TableEngine::new(dim, metric);
    }
    let current: BTreeMap<u32, &Fragment> = dataset.fragments().iter().map(|f| (f.id as u32, f)).collect();
    let gone: Vec<u32> = state.fragments.keys().filter(|id| !current.contains_key(id)).copied().collect();
    for id in gone {
        state.index.remove_segment(id);
        state.mirror(|g| g.remove_segment(id));
        state.fragments.remove(&id);
    }
    let (mut loaded, mut trimmed) = (0usize, 0usize);
    for (&id, &fragment) in &current {
        match state.fragments.get(&id) {
            Some(old) if old == fragment => {}
            Some(old) if old.files == fragment.files && old.overlays == fragment.overlays => {
                // Only the deletion vector changed: mark the rows it removed.
                let live = fragment_row_ids(dataset, fragment).await?;
                state.index.retain_in_segment(id, &live);
                state.mirror(|g| g.retain_in_segment(id, &live));
                trimmed += 1;
            }
            _ => {
                let (ids, vectors, valid) = fragment_vectors(dataset, fragment, dim).await?;
                state.mirror(|g| g.insert_segment(id, &ids, &vectors, &valid, dim));
                state.index.insert_segment(id, ids, vectors, Some(valid));
                loaded += 1;
            }
        }
        state.fragments.insert(id, fragment.clone());
    }
    tracing::debug!(version, loaded, trimmed, rows = state.index.len(), "search engine synced");
    state.version = version;
    Ok(())
}

/// Live row ids of one fragment.
async fn fragment_row_ids(dataset: &Dataset, fragment: &Fragment) -> Result<Vec<u64>> {
    let mut scanner = dataset.scan();
    scanner.with_fragments(vec![fragment.clone()]).with_row_id();
    scanner.project::<&str>(&[]).map_err(lance_error)?;
    let batches: Vec<_> = scanner.try_into_stream().await.map_err(lance_error)?.try_collect().await.map_err(lance_error)?;
    let mut ids = Vec::new();
    for b in &batches {
        ids.extend_from_slice(row_ids(b)?);
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Row ids, vectors (row-major) and which rows have one, for one fragment.
async fn fragment_vectors(dataset: &Dataset, fragment: &Fragment, dim: usize) -> Result<(Vec<u64>, Vec<f32>, Vec<bool>)> {
    let mut scanner = dataset.scan();
    scanner.with_fragments(vec![fragment.clone()]).with_row_id();
    scanner.project(&[EMBEDDING]).map_err(lance_error)?;
    let mut stream = scanner.try_into_stream().await.map_err(lance_error)?;
    let (mut ids, mut vectors, mut valid) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(b) = stream.try_next().await.map_err(lance_error)? {
        let block = vector_block(&b, EMBEDDING, dim)?;
        ids.extend_from_slice(block.row_ids);
        vectors.extend_from_slice(block.matrix);
        valid.extend(block.valid);
    }
    // Scans return a fragment's rows in offset order; keep that invariant explicit.
    if !ids.windows(2).all(|w| w[0] < w[1]) {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i]);
        let ids2 = order.iter().map(|&i| ids[i]).collect();
        let vectors2 = order.iter().flat_map(|&i| vectors[i * dim..(i + 1) * dim].iter().copied()).collect();
        let valid2 = order.iter().map(|&i| valid[i]).collect();
        return Ok((ids2, vectors2, valid2));
    }
    Ok((ids, vectors, valid))
}

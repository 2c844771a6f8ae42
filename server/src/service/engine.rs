//! In-memory exact search engines, one per (table, metric), kept in step with the table.
//!
//! An engine mirrors the latest version of a table's `embedding` column in a
//! [`FlatIndex`], one segment per Lance fragment. Before each search it is brought up to the
//! table's latest version by looking only at what changed: new fragments are read and added,
//! vanished fragments dropped, fragments whose deletion vector changed have their dead rows
//! marked — so a row put or deleted is visible to the very next search without a rebuild.
//! It also keeps each row's `id`, so a search that returns only ids and distances (the usual
//! retrieval call) is answered without reading Lance again.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use futures::TryStreamExt;
use hyprstream_kernels::{FlatIndex, Metric as KernelMetric, Neighbor, PreparedQuery, RowFilter};
use hyprstream_proto::columns::{EMBEDDING, ID};
use lance::dataset::Dataset;
use lance::table::format::Fragment;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use super::gpu::{search_device, GpuMirror, GPU_MIN_ROWS};
use crate::error::{Error, Result};
use crate::store::{lance_error, row_ids, vector_block};

/// The `id` of each row of one segment, by Lance row id (ascending).
struct SegmentKeys {
    row_ids: Vec<u64>,
    ids: StringArray,
}

pub struct TableEngine {
    pub index: FlatIndex,
    /// The same rows on the GPU, when searches may use one (a GPU failure drops it: the CPU
    /// index is always complete).
    pub gpu: Option<Mutex<GpuMirror>>,
    /// The table version the index reflects.
    pub version: u64,
    /// That version's commit time: a table dropped and created again counts its versions from
    /// 1 again, and the same number must not pass for the version this index reflects.
    committed: u128,
    /// Each loaded fragment as it was when loaded (to see what changed).
    fragments: BTreeMap<u32, Fragment>,
    /// Each segment's `id` column (tables that have one).
    keys: HashMap<u32, SegmentKeys>,
}

impl TableEngine {
    fn new(dim: usize, metric: KernelMetric) -> Self {
        let gpu = search_device().filter(|_| dim > 0).and_then(|device| match GpuMirror::new(device, dim, metric) {
            Ok(mirror) => Some(Mutex::new(mirror)),
            Err(e) => {
                tracing::warn!(error = %e, "GPU search index unavailable; this table is searched on the CPU");
                None
            }
        });
        TableEngine { index: FlatIndex::new(dim, metric), gpu, version: 0, committed: 0, fragments: BTreeMap::new(), keys: HashMap::new() }
    }

    /// Whether the index holds exactly `dataset`'s rows (this version of this table).
    pub fn reflects(&self, dataset: &Dataset) -> bool {
        (self.version, self.committed) == crate::store::table_version(dataset)
    }

    /// The k nearest live rows (that `filter` admits) to each query, nearest first, and
    /// whether the GPU answered. Large tables go to the GPU mirror when there is one; if it
    /// fails the CPU index, which holds the same rows, answers.
    pub fn search(&self, queries: &[PreparedQuery], k: usize, filter: Option<&RowFilter>) -> (Vec<Vec<Neighbor>>, bool) {
        let matrix = || queries.iter().flat_map(|q| q.vector().iter().copied()).collect::<Vec<f32>>();
        if let Some(gpu) = self.gpu.as_ref().filter(|_| self.index.len() >= GPU_MIN_ROWS) {
            match gpu.lock().expect("gpu mirror poisoned").search(&matrix(), k, filter) {
                Ok(hits) => return (hits, true),
                Err(e) => tracing::warn!(error = %e, "GPU search failed; answered on the CPU"),
            }
        }
        let hits = match queries {
            [query] => vec![self.index.search(query.vector(), k, filter)],
            _ => self.index.search_batch(&matrix(), k, filter),
        };
        (hits, false)
    }

    /// The `id` of each hit, in order; None if any is not held (the caller reads Lance).
    pub fn ids_of<'a>(&self, hits: impl Iterator<Item = &'a Neighbor>) -> Option<ArrayRef> {
        let mut arrays: Vec<&dyn Array> = Vec::new();
        let mut array_of: HashMap<u32, usize> = HashMap::new();
        let mut picks = Vec::new();
        for hit in hits {
            // Lance row addresses are `fragment << 32 | offset`, and a segment is a fragment.
            let segment = (hit.id >> 32) as u32;
            let keys = self.keys.get(&segment)?;
            let row = hyprstream_kernels::position_in_sorted(&keys.row_ids, hit.id)?;
            let array = *array_of.entry(segment).or_insert_with(|| {
                arrays.push(&keys.ids);
                arrays.len() - 1
            });
            picks.push((array, row));
        }
        if arrays.is_empty() {
            return None;
        }
        arrow::compute::interleave(&arrays, &picks).ok()
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

pub type EngineSlot = Arc<RwLock<Option<TableEngine>>>;

#[derive(Default)]
pub struct Engines {
    /// Per table: one engine per metric searched, and (key `None`) one that holds only the
    /// ids, for ANN searches (their vectors live in the Lance index).
    engines: Mutex<HashMap<(String, Option<KernelMetric>), EngineSlot>>,
}

impl Engines {
    pub fn slot(&self, table: &str, metric: KernelMetric) -> EngineSlot {
        self.entry(table, Some(metric))
    }

    /// The table's ids-only engine (dim 0: no vectors are loaded).
    pub fn ids_slot(&self, table: &str) -> EngineSlot {
        self.entry(table, None)
    }

    fn entry(&self, table: &str, metric: Option<KernelMetric>) -> EngineSlot {
        let mut engines = self.engines.lock().expect("engine map poisoned");
        engines.entry((table.to_string(), metric)).or_default().clone()
    }

    /// Forgets a table's engines (it was dropped).
    pub fn forget(&self, table: &str) {
        self.engines.lock().expect("engine map poisoned").retain(|(t, _), _| t != table);
    }
}

/// The slot's engine at `dataset`'s version or a newer one, read-locked so searches share it;
/// only a search that finds it behind (or of another dim: the table was overwritten) takes
/// the write lock and syncs it to `dataset`.
pub async fn synced(slot: &EngineSlot, dataset: &Dataset, dim: usize, metric: KernelMetric) -> Result<OwnedRwLockReadGuard<Option<TableEngine>>> {
    synced_with(slot, dataset, dim, metric, true).await
}

/// As `synced`, but the engine is brought to `dataset` itself even where it is past it: it
/// may be of an earlier table of the same name, dropped and created again.
pub async fn synced_exactly(slot: &EngineSlot, dataset: &Dataset, dim: usize, metric: KernelMetric) -> Result<OwnedRwLockReadGuard<Option<TableEngine>>> {
    synced_with(slot, dataset, dim, metric, false).await
}

async fn synced_with(slot: &EngineSlot, dataset: &Dataset, dim: usize, metric: KernelMetric, newer_serves: bool) -> Result<OwnedRwLockReadGuard<Option<TableEngine>>> {
    let version = dataset.version().version;
    // One synced past `dataset` may serve (the caller then reads rows at the engine's version).
    let usable = |e: &Option<TableEngine>| {
        e.as_ref().is_some_and(|e| ((newer_serves && e.version > version) || e.reflects(dataset)) && e.index.dim() == dim)
    };
    let engine = slot.clone().read_owned().await;
    if usable(&engine) {
        return Ok(engine);
    }
    drop(engine);
    let mut engine = slot.clone().write_owned().await;
    if !usable(&engine) {
        sync(&mut engine, dataset, dim, metric).await?;
    }
    Ok(engine.downgrade())
}

/// Brings `engine` to `dataset`'s version (building it on first use).
async fn sync(engine: &mut Option<TableEngine>, dataset: &Dataset, dim: usize, metric: KernelMetric) -> Result<()> {
    let version = dataset.version().version;
    if engine.as_ref().is_some_and(|e| e.reflects(dataset) && e.index.dim() == dim) {
        return Ok(());
    }
    let state = engine.get_or_insert_with(|| TableEngine::new(dim, metric));
    // Unlabelled while it changes: a sync that fails or is cancelled part way leaves an index
    // no version's label fits, and the next search syncs it again (fragment by fragment: the
    // per-fragment record below stays true at every step).
    (state.version, state.committed) = (0, 0);
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
        state.keys.remove(&id);
    }
    let (mut loaded, mut trimmed) = (0usize, 0usize);
    for (&id, &fragment) in &current {
        let reload = match state.fragments.get(&id) {
            Some(old) if old == fragment => false,
            Some(old) if old.files == fragment.files && old.overlays == fragment.overlays => {
                // Only the deletion vector changed: mark the rows it removed. If it brings
                // rows back instead (a restore to an older version), load the fragment again:
                // dead rows cannot be revived in place.
                let live = fragment_row_ids(dataset, fragment).await?;
                let revives = state.index.revives(id, &live);
                if !revives {
                    state.index.retain_in_segment(id, &live);
                    state.mirror(|g| g.retain_in_segment(id, &live));
                    trimmed += 1;
                }
                revives
            }
            _ => true,
        };
        if reload {
            let loaded_rows = fragment_vectors(dataset, fragment, dim).await?;
            let FragmentRows { row_ids: ids, vectors, valid, keys } = loaded_rows;
            state.mirror(|g| g.insert_segment(id, &ids, &vectors, &valid, dim));
            match keys {
                Some(keys) => state.keys.insert(id, SegmentKeys { row_ids: ids.clone(), ids: keys }),
                None => state.keys.remove(&id),
            };
            state.index.insert_segment(id, ids, vectors, Some(valid));
            loaded += 1;
        }
        state.fragments.insert(id, fragment.clone());
    }
    tracing::debug!(version, loaded, trimmed, rows = state.index.len(), "search engine synced");
    (state.version, state.committed) = crate::store::table_version(dataset);
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

/// One fragment's live rows, by row id (ascending).
struct FragmentRows {
    row_ids: Vec<u64>,
    /// row_ids.len() × dim, row-major.
    vectors: Vec<f32>,
    /// Which rows have a vector.
    valid: Vec<bool>,
    /// The `id` column, when the table has one.
    keys: Option<StringArray>,
}

async fn fragment_vectors(dataset: &Dataset, fragment: &Fragment, dim: usize) -> Result<FragmentRows> {
    let with_keys = dataset.schema().field(ID).is_some_and(|f| f.data_type() == arrow_schema::DataType::Utf8);
    let mut scanner = dataset.scan();
    scanner.with_fragments(vec![fragment.clone()]).with_row_id();
    // dim 0: an ids-only engine.
    let columns: Vec<&str> = [(dim > 0, EMBEDDING), (with_keys, ID)].iter().filter(|c| c.0).map(|c| c.1).collect();
    scanner.project(&columns).map_err(lance_error)?;
    let mut stream = scanner.try_into_stream().await.map_err(lance_error)?;
    let (mut ids, mut vectors, mut valid, mut keys) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while let Some(b) = stream.try_next().await.map_err(lance_error)? {
        if dim > 0 {
            let block = vector_block(&b, EMBEDDING, dim)?;
            ids.extend_from_slice(block.row_ids);
            vectors.extend_from_slice(block.matrix);
            valid.extend(block.valid);
        } else {
            let rows = row_ids(&b)?;
            ids.extend_from_slice(rows);
            valid.extend(std::iter::repeat_n(false, rows.len()));
        }
        if with_keys {
            keys.push(b.column_by_name(ID).ok_or_else(|| Error::internal("scan lost id"))?.clone());
        }
    }
    let keys = if with_keys {
        let parts: Vec<&dyn Array> = keys.iter().map(|k| k.as_ref()).collect();
        let all = if parts.is_empty() { arrow::array::new_empty_array(&arrow_schema::DataType::Utf8) } else { arrow::compute::concat(&parts)? };
        Some(all.as_string::<i32>().clone())
    } else {
        None
    };
    let mut rows = FragmentRows { row_ids: ids, vectors, valid, keys };
    // Scans return a fragment's rows in offset order; keep that invariant explicit.
    if !rows.row_ids.windows(2).all(|w| w[0] < w[1]) {
        let mut order: Vec<usize> = (0..rows.row_ids.len()).collect();
        order.sort_by_key(|&i| rows.row_ids[i]);
        let take = arrow::array::UInt32Array::from_iter_values(order.iter().map(|&i| i as u32));
        rows = FragmentRows {
            row_ids: order.iter().map(|&i| rows.row_ids[i]).collect(),
            vectors: order.iter().flat_map(|&i| rows.vectors[i * dim..(i + 1) * dim].iter().copied()).collect(),
            valid: order.iter().map(|&i| rows.valid[i]).collect(),
            keys: match rows.keys {
                Some(k) => Some(arrow::compute::take(&k, &take, None)?.as_string::<i32>().clone()),
                None => None,
            },
        };
    }
    Ok(rows)
}

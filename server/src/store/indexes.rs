//! Lance indexes: vector (IVF_PQ, IVF_HNSW_SQ, IVF_HNSW_FLAT, IVF_FLAT) and scalar (BTree, Bitmap), ANN
//! search through them, and compaction.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Float32Array, RecordBatch};
use futures::TryStreamExt;
use lance::dataset::optimize::{compact_files, CompactionOptions};
use lance::dataset::Dataset;
use lance::index::vector::VectorIndexParams;
use lance::index::{DatasetIndexExt, DatasetIndexInternalExt};
use lance_index::optimize::OptimizeOptions;
use lance_index::scalar::{BuiltinIndexType, ScalarIndexParams};
use lance_index::vector::hnsw::builder::HnswBuildParams;
use lance_index::vector::ivf::IvfBuildParams;
use lance_index::vector::sq::builder::SQBuildParams;
use lance::dataset::scanner::RowAddrMask;
use lance::index::prefilter::DatasetPreFilter;
use lance_index::prefilter::{NoFilter, PreFilter};
use lance_index::vector::{Query, VectorIndex, DEFAULT_QUERY_PARALLELISM};
use lance_index::IndexType;
use lance::table::format::IndexMetadata;
use lance_linalg::distance::DistanceType;
use hyprstream_kernels::RowFilter;
use lance::index::vector::ivf::v2::{IVFIndex, PartitionEntry};
use lance_index::vector::graph::VisitedGenerator;
use lance_index::vector::hnsw::builder::HnswQueryParams;
use lance_index::vector::hnsw::HNSW;
use lance_index::vector::quantizer::Quantization;
use lance_index::vector::sq::ScalarQuantizer;
use lance_index::vector::flat::index::FlatQuantizer;
use lance_index::vector::pq::ProductQuantizer;
use lance_index::vector::storage::VectorStore;
use lance_index::vector::quantizer::QuantizerStorage;
use lance_index::vector::v3::subindex::IvfSubIndex;
use lance_index::vector::SQ_CODE_COLUMN;
use arrow_array::types::{Float32Type, UInt32Type, UInt64Type, UInt8Type};
use arrow_array::{UInt64Array, UInt8Array};
use hyprstream_kernels::hnsw::{GraphLevel, HnswGraph, SqL2};

use super::{check_filter, lance_error, lance_query_error, Store};
use crate::error::{Error, Result};

/// What to build, already validated by the domain.
#[derive(Debug, Clone)]
pub enum IndexSpec {
    IvfFlat { partitions: usize, metric: DistanceType },
    IvfPq { partitions: usize, sub_vectors: usize, metric: DistanceType },
    /// `quantized`: HNSW over 8-bit scalar-quantised vectors (IVF_HNSW_SQ), else over the
    /// vectors themselves (IVF_HNSW_FLAT).
    IvfHnsw { partitions: usize, m: usize, ef_construction: usize, metric: DistanceType, quantized: bool },
    BTree,
    Bitmap,
}

/// An ANN query through a vector index.
#[derive(Debug, Clone)]
pub struct AnnQuery {
    pub column: String,
    pub vector: Vec<f32>,
    pub k: usize,
    pub metric: DistanceType,
    pub filter: Option<String>,
    pub nprobes: Option<usize>,
    pub ef: Option<usize>,
    pub refine: Option<u32>,
}

/// What a search of `column` needs to know of its vector index at one table version, worked
/// out once per version (see `index_facts`).
#[derive(Clone)]
pub struct IndexFacts {
    /// The index when the server can search it without Lance's planner.
    direct: Option<DirectIndex>,
    /// Whether the planner's cosine `_distance`s are twice the contract's (see
    /// `planned_distances_doubled`).
    planned_doubled: bool,
    /// The index's metric; None without a vector index.
    metric: Option<DistanceType>,
}

/// A vector index the server searches without Lance's planner (see `index_facts`).
#[derive(Clone)]
pub struct DirectIndex {
    index: Arc<dyn VectorIndex>,
    /// Rows deleted since the index was built: the index still holds them.
    deleted: Option<DeletedRows>,
    /// Fragments written since the index was built: it does not hold their rows.
    unindexed: Vec<u32>,
    /// Its distances are twice the contract's (see `doubles_cosine`).
    halve: bool,
}

/// Whether a Lance index of this kind ranks cosine by the squared L2 distance between unit
/// vectors, 2 − 2 cos: twice the contract's 1 − cos. Its quantised kinds do; the flat ones
/// compute 1 − cos.
fn doubles_cosine(kind: IndexType, metric: DistanceType) -> bool {
    metric == DistanceType::Cosine && matches!(kind, IndexType::IvfPq | IndexType::IvfSq | IndexType::IvfHnswSq | IndexType::IvfHnswPq)
}

/// An ANN answer from the index alone: row ids and Lance `_distance`s of its hits, nearest
/// first, and the fragments whose rows it did not search (see `ann_search_indexed`).
pub struct IndexedHits {
    pub ids: Vec<u64>,
    pub distances: Vec<f32>,
    pub unindexed: Vec<u32>,
}

#[derive(Clone)]
struct DeletedRows {
    count: usize,
    /// Lance's deletion vectors as a row mask (loaded once per table version).
    live: Arc<RowAddrMask>,
}

/// Up to this many deleted rows the direct path asks the index for `k + deleted` candidates
/// and drops the deleted ones. Lance's planner instead prefilters: it checks every row of
/// each probed partition against the deletion mask on every query (≈ 3 ms per 100k rows),
/// so two deleted rows made a 0.8 ms search a 3.7 ms one. Past this, the planner it is
/// (`optimize` compacts deletions away).
const MAX_POST_FILTERED_DELETES: usize = 1024;

pub struct Compaction {
    pub fragments_removed: u64,
    pub fragments_added: u64,
    pub dataset: Dataset,
}

impl Store {
    /// Builds (or replaces) an index on `column`; returns the new dataset version.
    pub async fn create_index(&self, table: &str, mut dataset: Dataset, column: &str, name: Option<String>, spec: &IndexSpec) -> Result<Dataset> {
        let columns = [column];
        match spec {
            IndexSpec::BTree | IndexSpec::Bitmap => {
                let (kind, builtin) = match spec {
                    IndexSpec::BTree => (IndexType::BTree, BuiltinIndexType::BTree),
                    _ => (IndexType::Bitmap, BuiltinIndexType::Bitmap),
                };
                let params = ScalarIndexParams::for_builtin(builtin);
                dataset.create_index(&columns, kind, name, &params, true).await.map_err(lance_error)?;
            }
            IndexSpec::IvfFlat { partitions, metric } => {
                let params = VectorIndexParams::ivf_flat(*partitions, *metric);
                dataset.create_index(&columns, IndexType::IvfFlat, name, &params, true).await.map_err(lance_error)?;
            }
            IndexSpec::IvfPq { partitions, sub_vectors, metric } => {
                let params = VectorIndexParams::ivf_pq(*partitions, 8, *sub_vectors, *metric, 50);
                dataset.create_index(&columns, IndexType::IvfPq, name, &params, true).await.map_err(lance_error)?;
            }
            IndexSpec::IvfHnsw { partitions, m, ef_construction, metric, quantized } => {
                let hnsw = HnswBuildParams { m: *m, ef_construction: *ef_construction, ..Default::default() };
                let ivf = IvfBuildParams::new(*partitions);
                let (kind, params) = if *quantized {
                    (IndexType::IvfHnswSq, VectorIndexParams::with_ivf_hnsw_sq_params(*metric, ivf, hnsw, SQBuildParams::default()))
                } else {
                    (IndexType::IvfHnswFlat, VectorIndexParams::ivf_hnsw(*metric, ivf, hnsw))
                };
                dataset.create_index(&columns, kind, name, &params, true).await.map_err(lance_error)?;
            }
        }
        self.remember(table, &dataset);
        Ok(dataset)
    }

    /// The k nearest rows through the column's vector index (rows not yet indexed are
    /// searched exactly by Lance): their row ids and `_distance`s as Lance computes them,
    /// nearest first. Only ids come back (the caller fetches the columns it needs, or none:
    /// Lance's take of even one column costs ≈ 0.8 ms per query here).
    pub async fn ann_search(&self, dataset: &Dataset, q: &AnnQuery) -> Result<(Vec<u64>, Vec<f32>)> {
        match self.ann_search_indexed(dataset, q, false).await? {
            Some(found) => Ok((found.ids, found.distances)),
            None => self.ann_search_planned(dataset, q).await,
        }
    }

    /// The common case without Lance's query planner (its DataFusion plan costs more than
    /// the HNSW search itself here): the index's partitions are probed directly and merged,
    /// exactly as the planner's ANN nodes would. Only where nothing else is needed, so the
    /// answer is the planner's: one index segment covering every fragment (no unindexed
    /// rows to flat-search), no refine, `nprobes` given or a single partition (the planner's
    /// adaptive probing is not reproduced), and the index's metric. None otherwise. Deleted
    /// rows (up to `MAX_POST_FILTERED_DELETES`) are searched past: each probe returns
    /// `deleted` more candidates, then the deleted ones are dropped, so k live rows still
    /// come back. (The planner prefilters instead, at a cost of every indexed row checked
    /// per query.)
    ///
    /// A filter is taken here by a one-partition HNSW index admitting at least
    /// `MIN_GRAPH_FILTER_SHARE` of its rows, with no unindexed rows: a graph walk that returns
    /// only admitted nodes (see `NodeMask`).
    ///
    /// With `with_unindexed`, rows written since the index was built are left to the caller:
    /// it gets the index's hits and the fragments it must search itself. Without, their
    /// presence means None (the planner searches them).
    pub async fn ann_search_indexed(&self, dataset: &Dataset, q: &AnnQuery, with_unindexed: bool) -> Result<Option<IndexedHits>> {
        if q.refine.is_some() {
            return Ok(None);
        }
        let Some(DirectIndex { index, deleted, unindexed, halve }) = self.index_facts(dataset, &q.column).await?.direct else { return Ok(None) };
        if index.metric_type() != q.metric || (!with_unindexed && !unindexed.is_empty()) {
            return Ok(None);
        }
        let admitted = match &q.filter {
            None => None,
            // Rows put since the index was built are searched by the caller without a filter;
            // several partitions would each need their own mask: the planner answers those.
            Some(_) if !unindexed.is_empty() || index.total_partitions() != 1 => return Ok(None),
            Some(filter) => match self.node_mask(dataset, &index, &q.column, filter).await? {
                Some(mask) => Some(mask),
                None => return Ok(None),
            },
        };
        // A filter's rows are live rows: with one, deleted rows are already kept out.
        let extra = match admitted {
            Some(_) => 0,
            None => deleted.as_ref().map_or(0, |d| d.count),
        };
        let nprobes = match q.nprobes {
            Some(n) => n,
            // With one partition the planner's adaptive probing has nothing to choose.
            None if index.total_partitions() == 1 => 1,
            None => return Ok(None),
        };
        let mut vector = q.vector.clone();
        // A cosine index holds unit vectors; the planner normalises the query the same way (a
        // zero query, without a direction, is answered exactly by the service).
        if q.metric == DistanceType::Cosine && hyprstream_kernels::normalize(&mut vector) == 0.0 {
            return Ok(None);
        }
        let key: arrow_array::ArrayRef = Arc::new(Float32Array::from(vector));
        let query = Query {
            column: q.column.clone(),
            key,
            k: q.k + extra,
            lower_bound: None,
            upper_bound: None,
            minimum_nprobes: nprobes,
            maximum_nprobes: Some(nprobes),
            search_effort: 0.5,
            // An HNSW probe must keep at least the candidates it returns. The beam is not
            // widened by `extra` itself: it would hold ef · deleted / rows deleted rows on
            // average (≈ 0.1 for 100 deleted of 100k at ef 120), and a wider one cost
            // 0.5 ms more at 100 deleted rows.
            ef: match extra {
                0 => q.ef,
                _ => Some(q.ef.unwrap_or(q.k + q.k / 2).max(q.k + extra)),
            },
            refine_factor: None,
            metric_type: Some(q.metric),
            use_index: true,
            query_parallelism: DEFAULT_QUERY_PARALLELISM,
            dist_q_c: 0.0,
            approx_mode: Default::default(),
        };
        let opened = std::time::Instant::now();
        let (partitions, centroid_distances) = index.find_partitions(&query).map_err(lance_error)?;
        let probes: Vec<(usize, Query)> = (0..partitions.len().min(nprobes))
            .map(|i| (partitions.value(i) as usize, Query { dist_q_c: centroid_distances.value(i), ..query.clone() }))
            .collect();
        let mut found: Vec<(f32, u64)> = Vec::new();
        if let (Some(mask), Some((_, query))) = (&admitted, probes.first()) {
            // The one partition's query (with its centroid distance, as the unfiltered probe).
            found = mask.search(&self.sq_walks, &index, query).await?;
        } else if let [(partition, query)] = probes.as_slice() {
            found = probe_partition(&self.sq_walks, &index, *partition, query).await?;
        } else {
            // Partitions are independent searches: on their own tasks they run on every
            // worker (the planner's ANN node also searches partitions concurrently).
            let tasks = probes.into_iter().map(|(partition, query)| {
                let (index, walks) = (index.clone(), self.sq_walks.clone());
                tokio::spawn(async move { probe_partition(&walks, &index, partition, &query).await })
            });
            for probe in futures::future::join_all(tasks).await {
                found.extend(probe.map_err(|e| Error::internal(format!("ANN partition search failed: {e}")))??);
            }
        }
        if let (Some(deleted), None) = (&deleted, &admitted) {
            found.retain(|(_, id)| deleted.live.selected(*id));
        }
        if halve {
            found.iter_mut().for_each(|(d, _)| *d /= 2.0);
        }
        found.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        found.truncate(q.k);
        tracing::trace!(probe_ms = opened.elapsed().as_secs_f64() * 1e3, "ANN partitions probed");
        let (ids, distances) = found.into_iter().map(|(d, id)| (id, d)).unzip();
        Ok(Some(IndexedHits { ids, distances, unindexed }))
    }

    /// The vector index that answers `column` at this version without the planner: one
    /// segment, built over fragments that all still exist. Decided once per table version (listing and opening
    /// the index cost ≈ 0.15 ms, a third of a small probe; the deletion mask more).
    async fn index_facts(&self, dataset: &Dataset, column: &str) -> Result<IndexFacts> {
        if let Some(facts) = self.index_facts_cache.get(dataset, column) {
            return Ok(facts);
        }
        // Every segment of a column's index has the kind and metric it was built with (a
        // rebuild with others replaces them all): the first one speaks for the index.
        let segments = self.vector_index_segments(dataset, column).await?;
        let first = match segments.first() {
            Some(segment) => {
                let metrics = lance_index::metrics::NoOpMetricsCollector;
                Some(dataset.open_vector_index(column, &segment.uuid, &metrics).await.map_err(lance_error)?)
            }
            None => None,
        };
        let facts = IndexFacts {
            direct: self.open_direct_index(dataset, column).await?,
            planned_doubled: first.as_ref().is_some_and(|index| planned_distances_doubled(dataset, &segments, index)),
            metric: first.as_ref().map(|index| index.metric_type()),
        };
        self.index_facts_cache.insert(dataset, column, facts.clone());
        Ok(facts)
    }

    async fn open_direct_index(&self, dataset: &Dataset, column: &str) -> Result<Option<DirectIndex>> {
        // Deletion files count their rows (files from old writers may not: planner then).
        let mut deleted_rows = 0;
        for fragment in dataset.fragments().iter() {
            match &fragment.deletion_file {
                None => {}
                Some(file) => match file.num_deleted_rows {
                    Some(n) => deleted_rows += n,
                    None => return Ok(None),
                },
            }
        }
        if deleted_rows > MAX_POST_FILTERED_DELETES {
            return Ok(None);
        }
        let segments = self.vector_index_segments(dataset, column).await?;
        let [segment] = segments.as_slice() else { return Ok(None) };
        // A fragment the index holds but the table no longer has (compacted or deleted whole)
        // would need Lance's remapping: planner.
        let Some(bitmap) = segment.fragment_bitmap.as_ref() else { return Ok(None) };
        let current: std::collections::BTreeSet<u32> = dataset.fragments().iter().map(|f| f.id as u32).collect();
        if bitmap.iter().any(|f| !current.contains(&f)) {
            return Ok(None);
        }
        let unindexed: Vec<u32> = current.into_iter().filter(|f| !bitmap.contains(*f)).collect();
        let deleted = match deleted_rows {
            0 => None,
            count => {
                // Lance's own deletion mask over the index's fragments, as its planner builds it.
                let mask = DatasetPreFilter::new(Arc::new(dataset.clone()), std::slice::from_ref(segment), None);
                mask.wait_for_ready().await.map_err(lance_error)?;
                Some(DeletedRows { count, live: mask.mask() })
            }
        };
        let metrics = lance_index::metrics::NoOpMetricsCollector;
        let index = dataset.open_vector_index(column, &segment.uuid, &metrics).await.map_err(lance_error)?;
        let halve = doubles_cosine(index.index_type(), index.metric_type());
        Ok(Some(DirectIndex { index, deleted, unindexed, halve }))
    }

    async fn ann_search_planned(&self, dataset: &Dataset, q: &AnnQuery) -> Result<(Vec<u64>, Vec<f32>)> {
        let mut scanner = dataset.scan();
        scanner.with_row_id();
        scanner.project(&["_distance"]).map_err(lance_error)?;
        if let Some(filter) = &q.filter {
            check_filter(filter)?;
            scanner.filter(filter).map_err(|e| lance_query_error(e, filter))?;
            scanner.prefilter(true);
        }
        let query = Float32Array::from(q.vector.clone());
        scanner.nearest(&q.column, &query, q.k).map_err(lance_error)?;
        scanner.distance_metric(q.metric);
        if let Some(n) = q.nprobes {
            scanner.nprobes(n);
        }
        if let Some(ef) = q.ef {
            scanner.ef(ef);
        }
        if let Some(r) = q.refine {
            scanner.refine(r);
        }
        let on_error = |e| match &q.filter {
            Some(f) => lance_query_error(e, f),
            None => lance_error(e),
        };
        let batches: Vec<RecordBatch> =
            scanner.try_into_stream().await.map_err(on_error)?.try_collect().await.map_err(on_error)?;
        let (mut ids, mut distances) = (Vec::new(), Vec::new());
        for batch in &batches {
            ids.extend_from_slice(super::row_ids(batch)?);
            let d = batch.column_by_name("_distance").ok_or_else(|| Error::internal("ANN result has no _distance"))?;
            let d = arrow::compute::cast(d, &arrow_schema::DataType::Float32)?;
            distances.extend_from_slice(d.as_primitive::<arrow_array::types::Float32Type>().values());
        }
        if q.refine.is_none() && q.metric == DistanceType::Cosine && self.index_facts(dataset, &q.column).await?.planned_doubled {
            distances.iter_mut().for_each(|d| *d /= 2.0);
        }
        Ok((ids, distances))
    }

    /// Compacts small fragments, then folds unindexed rows into the existing indexes.
    pub async fn optimize(&self, table: &str, mut dataset: Dataset) -> Result<Compaction> {
        // Up to three commits: each is remembered as it lands, so a later step's failure
        // leaves the cache on what was committed, not on the version before.
        let metrics = compact_files(&mut dataset, CompactionOptions::default(), None).await.map_err(lance_error)?;
        self.remember(table, &dataset);
        let indexes = dataset.load_indices().await.map_err(lance_error)?;
        if !indexes.is_empty() {
            let retrained = pq_dot_indexes(&dataset, &indexes).await?;
            // One name per index (an index has a segment per build or delta).
            let mut merged: Vec<String> = indexes.iter().map(|i| i.name.clone()).filter(|n| !retrained.contains(n)).collect();
            merged.sort_unstable();
            merged.dedup();
            if !merged.is_empty() {
                // Merged into one segment per index: a delta segment beside it would send every
                // ANN search through Lance's planner (0.75 → ≈ 4 ms on 100k rows), the opposite
                // of what `optimize` is for. For an HNSW index this rebuilds the graph.
                let options = OptimizeOptions::merge(1).index_names(merged);
                dataset.optimize_indices(&options).await.map_err(lance_error)?;
                self.remember(table, &dataset);
            }
            if !retrained.is_empty() {
                let options = OptimizeOptions::retrain().index_names(retrained);
                dataset.optimize_indices(&options).await.map_err(lance_error)?;
            }
        }
        self.remember(table, &dataset);
        Ok(Compaction {
            fragments_removed: metrics.fragments_removed as u64,
            fragments_added: metrics.fragments_added as u64,
            dataset,
        })
    }

    /// The metric of the vector index on `column`, None without one (decided once per version).
    pub async fn vector_index_metric(&self, dataset: &Dataset, column: &str) -> Result<Option<DistanceType>> {
        Ok(self.index_facts(dataset, column).await?.metric)
    }

    /// The vector index segments on `column` (one per build or delta).
    async fn vector_index_segments(&self, dataset: &Dataset, column: &str) -> Result<Vec<IndexMetadata>> {
        let Some(field) = dataset.schema().field(column) else { return Ok(Vec::new()) };
        let indexes = dataset.load_indices().await.map_err(lance_error)?;
        Ok(indexes
            .iter()
            .filter(|i| i.fields.first() == Some(&field.id) && is_vector_index(i))
            .cloned()
            .collect())
    }
}

/// One IVF partition's search: (distance, row id) of its candidates. IVF_HNSW_SQ partitions
/// are walked by our kernel (see `SqWalks`), the others by Lance.
async fn probe_partition(walks: &SqWalks, index: &Arc<dyn VectorIndex>, partition: usize, query: &Query) -> Result<Vec<(f32, u64)>> {
    if let Some(found) = walks.search(index, partition, query, None).await? {
        return Ok(found);
    }
    let no_filter: Arc<dyn PreFilter> = Arc::new(NoFilter);
    let metrics = lance_index::metrics::NoOpMetricsCollector;
    let batch = if index.supports_prepared_partition_search() {
        // The graph search itself runs here, on this thread: `search_in_partition` hands it to
        // Lance's CPU pool and waits, a thread hop that cost ≈ 0.1 ms a query (a third of
        // a small probe) on this 2-core machine.
        let prepared = index.prepare_partition_search(partition, query, no_filter, &metrics).await.map_err(lance_error)?;
        index.search_prepared_partition(prepared, &metrics).map_err(lance_error)?
    } else {
        index.search_in_partition(partition, query, no_filter, &metrics).await.map_err(lance_error)?
    };
    let d = batch.column_by_name("_distance").ok_or_else(|| Error::internal("ANN partition result has no _distance"))?;
    let d = arrow::compute::cast(d, &arrow_schema::DataType::Float32)?;
    let d = d.as_primitive::<arrow_array::types::Float32Type>();
    Ok(d.values().iter().copied().zip(super::row_ids(&batch)?.iter().copied()).collect())
}

/// An IVF_HNSW_SQ partition laid out for `hyprstream_kernels::hnsw`: the graph flattened, the
/// codes and row ids Lance's partition already holds (shared, not copied).
pub struct SqWalk {
    graph: HnswGraph,
    codes: UInt8Array,
    dim: usize,
    bounds: (f64, f64),
    row_ids: UInt64Array,
}

impl SqWalk {
    /// None where Lance walks the partition instead: a dot index (Lance scores its codes by
    /// another formula), or codes in several chunks (a loaded partition has one; Lance adds
    /// chunks only when it appends in memory).
    fn build(entry: &PartitionEntry<HNSW, ScalarQuantizer>) -> Result<Option<SqWalk>> {
        if !matches!(entry.storage.distance_type(), DistanceType::L2 | DistanceType::Cosine) {
            return Ok(None);
        }
        let batches: Vec<RecordBatch> = entry.storage.to_batches().map_err(lance_error)?.collect();
        let [batch] = batches.as_slice() else { return Ok(None) };
        let (Some(codes), Some(row_ids)) = (batch.column_by_name(SQ_CODE_COLUMN), batch.column_by_name(super::ROW_ID)) else {
            return Ok(None);
        };
        let (Some(codes), Some(row_ids)) = (codes.as_fixed_size_list_opt(), row_ids.as_primitive_opt::<UInt64Type>()) else {
            return Ok(None);
        };
        let dim = codes.value_length() as usize;
        let Some(code_values) = codes.values().as_primitive_opt::<UInt8Type>() else { return Ok(None) };
        // The graph as Lance writes it: every level's rows one after another (`level_offsets`),
        // each a node id (`__vector_id`) and its neighbours (`__neighbors`).
        let metadata = entry.index.metadata();
        let graph = entry.index.to_batch().map_err(lance_error)?;
        let (Some(ids), Some(lists)) = (graph.column_by_name("__vector_id"), graph.column_by_name("__neighbors")) else {
            return Ok(None);
        };
        let (Some(ids), Some(lists)) = (ids.as_primitive_opt::<UInt32Type>(), lists.as_list_opt::<i32>()) else { return Ok(None) };
        let Some(neighbors) = lists.values().as_primitive_opt::<UInt32Type>() else { return Ok(None) };
        let mut levels = Vec::new();
        for bounds in metadata.level_offsets.windows(2) {
            let (start, end) = (bounds[0], bounds[1]);
            if start > end || end > ids.len() {
                return Ok(None);
            }
            levels.push(GraphLevel { ids: &ids.values()[start..end], offsets: &lists.value_offsets()[start..=end], neighbors: neighbors.values() });
        }
        let nodes = entry.index.len();
        // A graph node without a code is a graph Lance refuses to search: its error stands.
        if nodes > row_ids.len() || code_values.len() != row_ids.len() * dim {
            return Ok(None);
        }
        let graph = HnswGraph::new(nodes, metadata.entry_point, &levels).map_err(|e| Error::internal(format!("HNSW graph: {e}")))?;
        let bounds = entry.storage.metadata().bounds.clone();
        Ok(Some(SqWalk { graph, codes: code_values.clone(), dim, bounds: (bounds.start, bounds.end), row_ids: row_ids.clone() }))
    }

    /// The partition's `k` nearest rows of the `ef` the walk keeps, as Lance's HNSW search
    /// returns them: (distance, row id), nearest first, one per row. With `admitted` (a bit
    /// per node), admitted rows only.
    fn search(&self, query: &[f32], k: usize, ef: usize, admitted: Option<&[u64]>) -> Vec<(f32, u64)> {
        let distance = SqL2::new(self.codes.values(), self.dim, self.bounds, query);
        let admits = |node: u32| admitted.is_some_and(|bits| bits[node as usize / 64] >> (node % 64) & 1 == 1);
        let nodes = self.graph.search(&distance, k, ef, admitted.map(|_| &admits as &dyn Fn(u32) -> bool));
        one_per_row(nodes.into_iter().map(|(d, node)| (d, self.row_ids.value(node as usize))))
    }
}

/// Our walks of IVF_HNSW_SQ partitions, by the Lance partition (from Lance's index cache) they
/// were built from: a partition is flattened once, not per table version. The most recently
/// used are kept, up to `SQ_WALKS_MAX_BYTES`; each holds its partition's codes alive (so a
/// partition Lance's cache dropped, or a dropped table's, is held until pushed out).
#[derive(Default)]
pub struct SqWalks {
    walks: std::sync::Mutex<std::collections::VecDeque<(Arc<PartitionEntry<HNSW, ScalarQuantizer>>, Option<Arc<SqWalk>>)>>,
}

/// Bytes of walks kept: their graphs plus the codes they keep alive. A bound on bytes, not
/// on partitions, so an index of many small partitions probed many at a time (`nprobes`)
/// keeps all of them instead of rebuilding walks on every query.
const SQ_WALKS_MAX_BYTES: usize = 2 << 30;

impl SqWalks {
    /// `query` through an IVF_HNSW_SQ index's `partition` by our walk, or None where Lance
    /// searches it (another index kind, a dot index, `ef < k`, which Lance refuses). With
    /// `admitted` (a bit per node), only admitted nodes are returned.
    async fn search(&self, index: &Arc<dyn VectorIndex>, partition: usize, query: &Query, admitted: Option<&[u64]>) -> Result<Option<Vec<(f32, u64)>>> {
        let Some(ivf) = index.as_any().downcast_ref::<IVFIndex<HNSW, ScalarQuantizer>>() else { return Ok(None) };
        let params = HnswQueryParams::from(query);
        if params.ef < query.k || query.lower_bound.is_some() || query.upper_bound.is_some() {
            return Ok(None);
        }
        let metrics = lance_index::metrics::NoOpMetricsCollector;
        let entry = ivf.load_partition(partition, true, &metrics).await.map_err(lance_error)?;
        let Some(walk) = self.walk(&entry)? else { return Ok(None) };
        // Scalar quantisation uses no residuals: the key is the query itself.
        let Some(key) = query.key.as_primitive_opt::<Float32Type>() else { return Ok(None) };
        if key.len() != walk.dim {
            return Ok(None);
        }
        Ok(Some(walk.search(key.values(), query.k, params.ef, admitted)))
    }

    fn walk(&self, entry: &Arc<PartitionEntry<HNSW, ScalarQuantizer>>) -> Result<Option<Arc<SqWalk>>> {
        let mut walks = self.walks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = walks.iter().position(|(e, _)| Arc::ptr_eq(e, entry)) {
            // Most recently used last (the usual single-partition table is already there).
            if at + 1 != walks.len() {
                let found = walks.remove(at).expect("position is in range");
                walks.push_back(found);
            }
            return Ok(walks.back().expect("just found").1.clone());
        }
        // Built under the lock, so concurrent first searches build it once (≈ ms per 100k
        // nodes, once per loaded partition).
        let started = std::time::Instant::now();
        let walk = SqWalk::build(entry)?.map(Arc::new);
        tracing::debug!(
            nodes = entry.index.len(),
            graph_bytes = walk.as_ref().map_or(0, |w| w.graph.memory_size()),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "HNSW partition laid out for our walk"
        );
        walks.push_back((entry.clone(), walk.clone()));
        let bytes = |w: &Option<Arc<SqWalk>>| w.as_ref().map_or(0, |w| w.graph.memory_size() + w.codes.len());
        let mut kept: usize = walks.iter().map(|(_, w)| bytes(w)).sum();
        while kept > SQ_WALKS_MAX_BYTES && walks.len() > 1 {
            kept -= walks.pop_front().map_or(0, |(_, w)| bytes(&w));
        }
        Ok(walk)
    }
}

/// Below this share of a graph's nodes admitted, a filtered walk mostly meets rows it must
/// skip; Lance's HNSW search then ranks the admitted rows exhaustively instead, and the planner
/// answers (the service's in-memory engine answers before that where it can).
const MIN_GRAPH_FILTER_SHARE: f64 = 0.1;

/// The nodes of a single-partition HNSW index whose rows a filter admits, as the bit set
/// Lance's HNSW search takes: the search walks the whole graph but returns only admitted
/// nodes. This is Lance's own prefiltered HNSW search, without the per-query pass over every
/// row id of the partition that builds the set (≈ 2 ms per 100k rows): the set is built once
/// per (version, filter). It holds the bits only (N / 8 bytes and 4 per admitted node); the
/// partition itself stays in Lance's index cache.
pub struct NodeMask {
    /// Admitted nodes' bits set (Lance's bit set type, for Lance's walks; cloned per query, as
    /// a search consumes it).
    bits: VisitedGenerator,
    /// The same bits as words, for our walk (which only reads them).
    words: Vec<u64>,
}

thread_local! {
    /// This thread's visited-node set for HNSW walks, kept between queries (Lance keeps a pool
    /// of them in the graph for the same reason).
    static HNSW_VISITED: std::cell::RefCell<VisitedGenerator> = std::cell::RefCell::new(VisitedGenerator::new(0));
}

impl Store {
    /// The filter's node mask for `index` (cached per version), or None where the planner
    /// answers better: not an HNSW index, or too few rows admitted for a graph walk.
    async fn node_mask(&self, dataset: &Dataset, index: &Arc<dyn VectorIndex>, column: &str, filter: &str) -> Result<Option<Arc<NodeMask>>> {
        let key = format!("{column}\u{0}{filter}");
        if let Some(mask) = self.node_mask_cache.get(dataset, &key).filter(|_| !super::volatile_filter(filter)) {
            return Ok(mask);
        }
        if !is_hnsw(index) {
            return Ok(None);
        }
        let rows = self.admitted_rows(dataset, filter).await?;
        let bits = match hnsw_partition::<ScalarQuantizer>(index).await? {
            Some(entry) => admitted_nodes(&entry.storage, &rows),
            None => match hnsw_partition::<FlatQuantizer>(index).await? {
                Some(entry) => admitted_nodes(&entry.storage, &rows),
                None => match hnsw_partition::<ProductQuantizer>(index).await? {
                    Some(entry) => admitted_nodes(&entry.storage, &rows),
                    None => None,
                },
            },
        };
        let mask = bits.map(|(bits, words)| Arc::new(NodeMask { bits, words }));
        self.node_mask_cache.insert(dataset, &key, mask.clone());
        Ok(mask)
    }
}

/// Whether the planner's `_distance`s are a quantised cosine index's own (see
/// `doubles_cosine`): `segments` are the column's index, `index` one of them opened. They are
/// where the index covers every row. Where rows are not indexed yet, or with `refine`, the
/// planner re-scores its candidates exactly (1 − cos) to merge them with its flat search
/// (measured: exact distances come back for IVF_PQ candidates then).
fn planned_distances_doubled(dataset: &Dataset, segments: &[IndexMetadata], index: &Arc<dyn VectorIndex>) -> bool {
    let mut covered = std::collections::BTreeSet::new();
    for segment in segments {
        match &segment.fragment_bitmap {
            Some(bitmap) => covered.extend(bitmap.iter()),
            None => return false,
        }
    }
    dataset.fragments().iter().all(|f| covered.contains(&(f.id as u32))) && doubles_cosine(index.index_type(), index.metric_type())
}

fn is_vector_index(index: &IndexMetadata) -> bool {
    index.index_details.as_ref().is_some_and(|d| d.type_url.ends_with("VectorIndexDetails"))
}

/// The IVF_PQ indexes with the dot metric among `indexes`, by name. Lance 14 folds new rows
/// into such an index wrongly: after a merge its distances for those rows came out ≈ 11 too
/// low on 32-d data (they took 195 of 200 result slots, recall 0.11; found by an adversarial
/// test), while cosine and l2 PQ indexes and every other kind merge correctly. `optimize`
/// retrains these instead (a build from all rows, as `create_index`).
async fn pq_dot_indexes(dataset: &Dataset, indexes: &[IndexMetadata]) -> Result<Vec<String>> {
    let metrics = lance_index::metrics::NoOpMetricsCollector;
    let mut names: Vec<String> = Vec::new();
    for index in indexes {
        let column = index.fields.first().and_then(|id| dataset.schema().field_by_id(*id));
        let (true, Some(column)) = (is_vector_index(index), column) else { continue };
        if names.contains(&index.name) {
            continue;
        }
        let opened = dataset.open_vector_index(&column.name, &index.uuid, &metrics).await.map_err(lance_error)?;
        if opened.index_type() == IndexType::IvfPq && opened.metric_type() == DistanceType::Dot {
            names.push(index.name.clone());
        }
    }
    Ok(names)
}

fn is_hnsw(index: &Arc<dyn VectorIndex>) -> bool {
    let any = index.as_any();
    any.is::<IVFIndex<HNSW, ScalarQuantizer>>() || any.is::<IVFIndex<HNSW, FlatQuantizer>>() || any.is::<IVFIndex<HNSW, ProductQuantizer>>()
}

/// The one partition of an IVF_HNSW_* index quantised by `Q` (from Lance's index cache), or
/// None for another index.
async fn hnsw_partition<Q: Quantization + 'static>(index: &Arc<dyn VectorIndex>) -> Result<Option<Arc<PartitionEntry<HNSW, Q>>>> {
    let Some(ivf) = index.as_any().downcast_ref::<IVFIndex<HNSW, Q>>() else { return Ok(None) };
    let metrics = lance_index::metrics::NoOpMetricsCollector;
    Ok(Some(ivf.load_partition(0, true, &metrics).await.map_err(lance_error)?))
}

/// The bit set of the nodes whose rows `rows` holds; None below `MIN_GRAPH_FILTER_SHARE`.
fn admitted_nodes(storage: &impl VectorStore, rows: &RowFilter) -> Option<(VisitedGenerator, Vec<u64>)> {
    let nodes = storage.len();
    let mut bits = VisitedGenerator::new(nodes);
    let mut words = vec![0u64; nodes.div_ceil(64)];
    let mut admitted = bits.generate(nodes);
    for (node, row) in storage.row_ids().enumerate() {
        if rows.contains(*row) {
            admitted.insert(node as u32);
            words[node / 64] |= 1 << (node % 64);
        }
    }
    if (admitted.count_ones() as f64) < MIN_GRAPH_FILTER_SHARE * nodes as f64 {
        return None;
    }
    // Dropping the set would clear its bits; keep them (it only borrows `bits`).
    std::mem::forget(admitted);
    Some((bits, words))
}

impl NodeMask {
    /// The admitted rows nearest to `query` (k of them where k are admitted): (Lance
    /// `_distance`, row id).
    async fn search(&self, walks: &SqWalks, index: &Arc<dyn VectorIndex>, query: &Query) -> Result<Vec<(f32, u64)>> {
        if let Some(found) = walks.search(index, 0, query, Some(&self.words)).await? {
            return Ok(found);
        }
        if let Some(entry) = hnsw_partition::<ScalarQuantizer>(index).await? {
            return masked_search(index, &entry, query, &self.bits);
        }
        if let Some(entry) = hnsw_partition::<FlatQuantizer>(index).await? {
            return masked_search(index, &entry, query, &self.bits);
        }
        match hnsw_partition::<ProductQuantizer>(index).await? {
            Some(entry) => masked_search(index, &entry, query, &self.bits),
            None => Err(Error::internal("an HNSW node mask met another index")),
        }
    }
}

fn masked_search<Q: Quantization + 'static>(index: &Arc<dyn VectorIndex>, entry: &PartitionEntry<HNSW, Q>, query: &Query, bits: &VisitedGenerator) -> Result<Vec<(f32, u64)>> {
    let ivf = index.as_any().downcast_ref::<IVFIndex<HNSW, Q>>().ok_or_else(|| Error::internal("an HNSW node mask met another index"))?;
    if entry.index.is_empty() {
        return Ok(Vec::new());
    }
    // As Lance's partition search prepares it (residuals, where the quantiser uses them).
    let query = ivf.preprocess_query(0, query).map_err(lance_error)?;
    let params = HnswQueryParams::from(&query);
    let mut bits = bits.clone();
    let admitted = bits.generate(entry.storage.len());
    // Lance's HNSW search looks two neighbours ahead (`search_basic`); so does this one.
    let nodes = HNSW_VISITED
        .with(|visited| entry.index.search_inner(query.key.clone(), query.k, &params, Some(admitted), &mut visited.borrow_mut(), &entry.storage, Some(2)))
        .map_err(lance_error)?;
    Ok(one_per_row(nodes.into_iter().map(|node| (node.dist.0, entry.storage.row_id(node.id)))))
}

/// (distance, row id) hits, nearest first, with each row kept once: a multivector row has
/// several graph nodes, and its nearest stands for it (as in Lance).
fn one_per_row(hits: impl ExactSizeIterator<Item = (f32, u64)>) -> Vec<(f32, u64)> {
    let mut seen = std::collections::HashSet::with_capacity(hits.len());
    hits.filter(|(_, row)| seen.insert(*row)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{FixedSizeListArray, RecordBatchIterator};
    use arrow_schema::{DataType, Field, Schema};

    /// `rows` vectors of `dim` on a random 8-dimensional subspace plus a little noise (an ANN
    /// graph on full-rank random data is close to useless), fresh each run.
    fn low_rank(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let basis: Vec<f32> = (0..8 * dim).map(|_| uniform()).collect();
        let mut out = Vec::with_capacity(rows * dim);
        for _ in 0..rows {
            let weights: Vec<f32> = (0..8).map(|_| uniform()).collect();
            for d in 0..dim {
                out.push((0..8).map(|b| weights[b] * basis[b * dim + d]).sum::<f32>() + 0.01 * uniform());
            }
        }
        out
    }

    async fn sq_partition(dir: &std::path::Path, metric: DistanceType, data: &[f32], dim: usize) -> (Arc<dyn VectorIndex>, Arc<PartitionEntry<HNSW, ScalarQuantizer>>) {
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::FixedSizeList(item.clone(), dim as i32), true)]));
        let vectors = FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(data.to_vec())), None).unwrap();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(vectors)]).unwrap();
        let uri = dir.join("t.lance");
        let mut dataset = Dataset::write(RecordBatchIterator::new(vec![Ok(batch)], schema), uri.to_str().unwrap(), None).await.unwrap();
        let hnsw = HnswBuildParams::default().num_edges(12).ef_construction(80);
        let params = VectorIndexParams::with_ivf_hnsw_sq_params(metric, IvfBuildParams::new(1), hnsw, SQBuildParams::default());
        dataset.create_index(&["v"], IndexType::Vector, None, &params, true).await.unwrap();
        let store = Store::open(dir.join("store")).unwrap();
        let segments = store.vector_index_segments(&dataset, "v").await.unwrap();
        let metrics = lance_index::metrics::NoOpMetricsCollector;
        let index = dataset.open_vector_index("v", &segments[0].uuid, &metrics).await.unwrap();
        let entry = hnsw_partition::<ScalarQuantizer>(&index).await.unwrap().unwrap();
        (index, entry)
    }

    /// Our walk (kernels::hnsw) against Lance's own HNSW search of the same partition: the
    /// same rows at the same distances in the same order, with and without a node filter, for
    /// both metrics it takes, several (k, ef), on fresh data each run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn our_hnsw_walk_returns_lances_answer() {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let (rows, dim) = (3000, 24);
        for metric in [DistanceType::L2, DistanceType::Cosine] {
            let dir = tempfile::tempdir().unwrap();
            let data = low_rank(rows, dim, seed);
            let (_index, entry) = sq_partition(dir.path(), metric, &data, dim).await;
            let walk = SqWalk::build(&entry).unwrap().expect("an L2 or cosine SQ partition is walked by the kernel");
            let queries = low_rank(40, dim, seed.wrapping_add(1));
            let admitted: Vec<bool> = (0..entry.storage.len()).map(|node| node % 3 != 0).collect();
            let mut words = vec![0u64; admitted.len().div_ceil(64)];
            (0..admitted.len()).filter(|n| admitted[*n]).for_each(|n| words[n / 64] |= 1 << (n % 64));
            for (i, query) in queries.chunks_exact(dim).enumerate() {
                let mut query = query.to_vec();
                if metric == DistanceType::Cosine {
                    hyprstream_kernels::normalize(&mut query);
                }
                for (k, ef) in [(1, 1), (10, 10), (10, 50), (30, 200)] {
                    let params = HnswQueryParams { ef, lower_bound: None, upper_bound: None, dist_q_c: 0.0, use_acorn: false };
                    let lance = |filter: bool| {
                        let mut visited = VisitedGenerator::new(0);
                        let mut bits = VisitedGenerator::new(admitted.len());
                        let mut admitted_bits = bits.generate(admitted.len());
                        (0..admitted.len()).filter(|n| admitted[*n]).for_each(|n| admitted_bits.insert(n as u32));
                        let key: arrow_array::ArrayRef = Arc::new(Float32Array::from(query.clone()));
                        let nodes = entry
                            .index
                            .search_inner(key, k, &params, filter.then_some(admitted_bits), &mut visited, &entry.storage, Some(2))
                            .unwrap();
                        nodes.into_iter().map(|n| (n.dist.0, entry.storage.row_id(n.id))).collect::<Vec<_>>()
                    };
                    let (unfiltered, filtered) = (lance(false), lance(true));
                    assert_eq!(unfiltered.len(), k.min(rows));
                    let admitted_rows: std::collections::HashSet<u64> =
                        (0..admitted.len()).filter(|n| admitted[*n]).map(|n| entry.storage.row_id(n as u32)).collect();
                    assert!(!filtered.is_empty() && filtered.iter().all(|(_, row)| admitted_rows.contains(row)));
                    assert_eq!(walk.search(&query, k, ef, None), unfiltered, "seed {seed}, {metric:?}, query {i}, k {k}, ef {ef}");
                    assert_eq!(walk.search(&query, k, ef, Some(&words)), filtered, "seed {seed}, {metric:?}, query {i}, k {k}, ef {ef}, filtered");
                }
            }
        }
    }

}

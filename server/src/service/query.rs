//! Scans and k-nearest-neighbour searches (single or batched).
//!
//! An exact search ranks Lance row ids in the table's in-memory engine (CPU, or its GPU
//! mirror for large tables), or, for a pinned older version, by streaming that version's
//! (prefiltered) embedding column through `hyprstream-kernels`; it then fetches only the hit
//! rows. A filter is applied before ranking, so k rows come back whenever k rows match. A
//! batched search ranks all its queries in one pass over the rows and returns one stream with
//! a `_query` column.
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::{stream, StreamExt, TryStreamExt};
use hyprstream_kernels::{search_block, Neighbor, PreparedQuery, TopK};
use hyprstream_proto::columns::{DATA_TYPE, DISTANCE, EMBEDDING, ID, METADATA, QUERY};
use hyprstream_proto::schema_keys::{METRIC, SEARCH_PATH};
use hyprstream_proto::{Metric, Query, SearchHit};
use lance::dataset::Dataset;

use super::{table_dim, table_metric, validate_table_name, BatchStream, TableService};
use crate::error::{Error, Result};
use super::engine::TableEngine;
use tokio::sync::OwnedRwLockReadGuard;
use crate::store::{dataset_schema, vector_block, AnnQuery, IndexedHits, ScanSpec};

/// Largest k a search accepts.
pub const MAX_K: usize = 100_000;
/// Below this share of rows admitted by its filter, an ANN search is answered exactly in memory
/// (where the engine holds the version): a graph walk meets mostly rows it must skip. Measured
/// on 100k × 384, HNSW ef 120: 11 % admitted, walk 2.6 ms, exact 1.0 ms; 33 %, 1.2 vs 1.7 ms.
const EXACT_FILTER_SHARE: f64 = 0.2;
/// Search results are read and sent in chunks of hits: the first of this many rows, the next
/// sized to about `HIT_CHUNK_BYTES` by the rows of the one before.
const FIRST_HIT_CHUNK: usize = 256;
const HIT_CHUNK_BYTES: usize = 32 << 20;
const MAX_HIT_CHUNK: usize = 65_536;
/// Most query vectors one batched search takes.
pub const MAX_QUERIES: usize = 1024;
/// Most rows one batched search returns (queries × k).
pub const MAX_RESULT_ROWS: usize = 1_000_000;
/// ANN queries of one batch in flight at once (Lance parallelises inside each).
const ANN_CONCURRENCY: usize = 4;

pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: BatchStream,
}

/// A validated query against one opened table version.
struct Plan {
    dataset: Dataset,
    /// Columns the result carries (before `_distance`).
    columns: Vec<String>,
    schema: SchemaRef,
    search: Option<SearchPlan>,
}

struct SearchPlan {
    /// One per query vector (one for a single search).
    queries: Vec<PreparedQuery>,
    /// `vectors` / `texts` was used: the result carries `_query`.
    batched: bool,
    metric: Metric,
    k: usize,
    /// Which engine answers (reported in the result's schema metadata).
    path: SearchPath,
}

impl SearchPlan {
    fn dim(&self) -> usize {
        self.queries[0].dim()
    }

    fn kernel_metric(&self) -> hyprstream_kernels::Metric {
        self.queries[0].metric()
    }
}

/// Per query, its neighbours, nearest first.
type Hits = Vec<Vec<Neighbor>>;

/// What an exact search ranked.
struct Ranked {
    hits: Hits,
    /// The table version the row ids refer to.
    dataset: Dataset,
    path: SearchPath,
    /// The `id` of every hit (queries in order), when the engine already holds them: a
    /// search that asks for nothing else does not read Lance again.
    ids: Option<ArrayRef>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SearchPath {
    /// The table's in-memory engine, kept in step with the latest version.
    Memory,
    /// The same engine's GPU mirror (large tables, when a GPU is configured).
    MemoryGpu,
    /// A pinned older version: its vectors are streamed from Lance.
    VersionScan,
    /// A Lance vector index (`"exact": false` on an indexed table).
    Ann,
}

impl SearchPath {
    fn as_str(self) -> &'static str {
        match self {
            SearchPath::Memory => "exact_cpu",
            SearchPath::MemoryGpu => "exact_gpu",
            SearchPath::VersionScan => "exact_cpu_scan",
            SearchPath::Ann => "ann",
        }
    }
}

/// ANN knobs Lance would refuse mid-search (as an internal error) or misread.
fn validate_ann_knobs(q: &Query, k: usize) -> Result<()> {
    if q.nprobes == Some(0) {
        return Err(Error::invalid("nprobes must be at least 1 (IVF partitions to probe)"));
    }
    if q.refine == Some(0) {
        return Err(Error::invalid("refine must be at least 1 (it re-ranks refine × k candidates)"));
    }
    // Lance sizes its candidate heaps by these up front: unbounded, one request could make
    // the server allocate without limit. Past MAX_K candidates an exact search is the tool.
    let wanted = k.saturating_mul(q.refine.unwrap_or(1) as usize);
    if wanted > MAX_K {
        return Err(Error::invalid(format!(
            "k × refine is {wanted}, above the {MAX_K} candidates an ANN search can shortlist: lower refine, or search with \"exact\": true"
        )));
    }
    if let Some(ef) = q.ef {
        if ef > MAX_K {
            return Err(Error::invalid(format!(
                "ef {ef} is above {MAX_K}, the widest HNSW search this server runs: lower ef, or search with \"exact\": true"
            )));
        }
        // An HNSW search keeps ef candidates and must hand back k × refine of them.
        if ef < wanted {
            return Err(Error::invalid(format!(
                "ef {ef} is below the {wanted} candidates this search asks of the index (k × refine): use ef ≥ {wanted}"
            )));
        }
    }
    Ok(())
}

fn kernel_metric(metric: Metric) -> hyprstream_kernels::Metric {
    match metric {
        Metric::Cosine => hyprstream_kernels::Metric::Cosine,
        Metric::Dot => hyprstream_kernels::Metric::Dot,
        Metric::L2 => hyprstream_kernels::Metric::L2,
    }
}

/// A search reading at most this many vector components (≈ 1 MiB of f32, tens of
/// microseconds) runs on the request's own worker thread.
const INLINE_SEARCH_FLOATS: usize = 1 << 18;

impl TableService {
    /// `run`: the plan will be executed (`"text"` / `"texts"` are embedded); otherwise only
    /// its schema is wanted and the texts are checked but not embedded.
    async fn plan(&self, q: &Query, run: bool) -> Result<Plan> {
        validate_table_name(&q.table)?;
        let dataset = self.store().dataset(&q.table, q.version).await?;
        let table_schema = dataset_schema(&dataset);

        let mut columns: Vec<String> = match &q.columns {
            None => table_schema.fields().iter().map(|f| f.name().clone()).collect(),
            Some(cols) => {
                if cols.is_empty() {
                    return Err(Error::invalid("columns is empty: name at least one column, or leave the key out for all"));
                }
                if let Some(twice) = cols.iter().enumerate().find_map(|(i, c)| cols[..i].contains(c).then_some(c)) {
                    return Err(Error::invalid(format!("column '{twice}' is named twice in columns: name each column once")));
                }
                cols.clone()
            }
        };
        let wants_distance = columns.iter().any(|c| c == DISTANCE);
        let wants_query = columns.iter().any(|c| c == QUERY);
        columns.retain(|c| c != DISTANCE && c != QUERY);
        for c in &columns {
            if table_schema.field_with_name(c).is_err() {
                return Err(Error::invalid(format!(
                    "unknown column '{c}' in columns; table '{}' has: {}",
                    q.table,
                    table_schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let mut fields: Vec<Field> =
            columns.iter().map(|c| table_schema.field_with_name(c).expect("checked").clone()).collect();
        if wants_query && !q.is_batch() {
            return Err(Error::invalid("'_query' exists only in batched search results: send \"vectors\" (or \"texts\")"));
        }

        let ann_knobs = q.nprobes.is_some() || q.ef.is_some() || q.refine.is_some();
        let search = match self.query_vectors(q, &table_schema, run).await? {
            None => {
                if wants_distance {
                    return Err(Error::invalid("'_distance' exists only in search results: add a \"vector\""));
                }
                if q.k.is_some() || q.metric.is_some() || q.exact.is_some() || ann_knobs {
                    return Err(Error::invalid(
                        "\"k\", \"metric\", \"exact\", \"nprobes\", \"ef\" and \"refine\" apply to searches: add a \"vector\" (or \"text\")",
                    ));
                }
                None
            }
            Some(vectors) => {
                if q.limit.is_some() {
                    return Err(Error::invalid("\"limit\" applies to scans; a search returns \"k\" rows"));
                }
                let dim = table_dim(&table_schema).ok_or_else(|| {
                    Error::invalid(format!("table '{}' has no fixed-size 'embedding' column to search", q.table))
                })?;
                let batched = q.is_batch();
                for (i, vector) in vectors.iter().enumerate() {
                    let name = if batched { format!("vectors[{i}]") } else { "vector".to_string() };
                    if vector.len() != dim {
                        return Err(Error::invalid(format!(
                            "{name} has {} values; table '{}' has dim {dim}",
                            vector.len(),
                            q.table
                        )));
                    }
                    if let Some(j) = vector.iter().position(|v| !v.is_finite()) {
                        return Err(Error::invalid(format!(
                            "{name}[{j}] is not finite ({}): every value must be finite",
                            vector[j]
                        )));
                    }
                }
                let metric = q.metric.unwrap_or_else(|| table_metric(&table_schema));
                if metric == Metric::L2 {
                    // Past this, l2 distances from the query overflow float32 (all but those to
                    // rows very near it).
                    let (i, squares) = vectors
                        .iter()
                        .map(|v| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
                        .enumerate()
                        .fold((0, 0.0), |best, (i, s)| if s > best.1 { (i, s) } else { best });
                    if squares > f64::from(f32::MAX) {
                        let name = if batched { format!("vectors[{i}]") } else { "vector".to_string() };
                        return Err(Error::invalid(format!(
                            "{name}'s squared length {squares:e} is past float32's range (3.4e38), where l2 distances from it overflow: scale the vectors down (or search with metric cosine)"
                        )));
                    }
                }
                let k = q.k.unwrap_or(Query::DEFAULT_K);
                if k == 0 || k > MAX_K {
                    return Err(Error::invalid(format!("k must be between 1 and {MAX_K}, got {k}")));
                }
                if vectors.len() * k > MAX_RESULT_ROWS {
                    return Err(Error::invalid(format!(
                        "{} queries × k {k} = {} result rows; a batched search returns at most {MAX_RESULT_ROWS}: send fewer queries or a smaller k",
                        vectors.len(),
                        vectors.len() * k
                    )));
                }
                fields.push(Field::new(DISTANCE, DataType::Float32, false));
                if batched {
                    fields.push(Field::new(QUERY, DataType::UInt32, false));
                }
                if ann_knobs && q.exact != Some(false) {
                    return Err(Error::invalid("\"nprobes\", \"ef\" and \"refine\" tune ANN searches: add \"exact\": false"));
                }
                validate_ann_knobs(q, k)?;
                let queries: Vec<PreparedQuery> = vectors.into_iter().map(|v| PreparedQuery::new(kernel_metric(metric), v)).collect();
                // The index answers in its own metric only (Lance would rank every row by
                // another), and a cosine query without a direction (a zero vector) is at
                // distance 1 from every row: both are answered exactly. Text is embedded only
                // when the query runs, so a planned text query counts as having a direction.
                let directionless = queries.iter().any(PreparedQuery::is_zero_cosine) && (run || (q.text.is_none() && q.texts.is_none()));
                let index_answers = q.exact == Some(false)
                    && !directionless
                    && self.store().vector_index_metric(&dataset, EMBEDDING).await? == Some(super::indexes::distance_type(metric));
                let path = if index_answers {
                    SearchPath::Ann
                } else if q.version.is_some() {
                    SearchPath::VersionScan
                } else {
                    SearchPath::Memory
                };
                Some(SearchPlan { queries, batched, metric, k, path })
            }
        };
        let mut metadata = HashMap::new();
        if let Some(s) = &search {
            metadata.insert(SEARCH_PATH.to_string(), s.path.as_str().to_string());
            metadata.insert(METRIC.to_string(), s.metric.as_str().to_string());
        } else if columns.iter().any(|c| c == EMBEDDING) {
            // A scan's vectors carry the table's metric: a copy made by putting them into a
            // new table ranks as the original does (put reads this key).
            metadata.insert(METRIC.to_string(), super::table_metric(&table_schema).as_str().to_string());
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        Ok(Plan { dataset, columns, schema, search })
    }

    /// The query's vectors: `vector`, `vectors`, or `text` / `texts` embedded by the table's
    /// model (zero vectors of the table's dim when `embed` is false: enough to plan the
    /// result schema). None for a scan.
    async fn query_vectors(&self, q: &Query, table_schema: &Schema, embed: bool) -> Result<Option<Vec<Vec<f32>>>> {
        let given = [q.vector.is_some(), q.text.is_some(), q.vectors.is_some(), q.texts.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(Error::invalid("send one of \"vector\", \"text\", \"vectors\" or \"texts\", not several"));
        }
        let count = q.vectors.as_ref().map(Vec::len).or(q.texts.as_ref().map(Vec::len));
        if let Some(n) = count {
            let key = if q.vectors.is_some() { "vectors" } else { "texts" };
            if n == 0 {
                return Err(Error::invalid(format!("\"{key}\" is empty: send at least one query")));
            }
            if n > MAX_QUERIES {
                return Err(Error::invalid(format!(
                    "\"{key}\" has {n} queries; a batched search takes at most {MAX_QUERIES}: split it"
                )));
            }
        }
        if let Some(v) = &q.vector {
            return Ok(Some(vec![v.clone()]));
        }
        if let Some(vs) = &q.vectors {
            return Ok(Some(vs.clone()));
        }
        let texts = match (&q.text, &q.texts) {
            (Some(t), _) => vec![t.clone()],
            (_, Some(ts)) => ts.clone(),
            _ => return Ok(None),
        };
        let model = super::table_embedding_model(table_schema).ok_or_else(|| {
            Error::invalid(format!(
                "table '{}' has no embedding model, so text cannot be embedded: send vectors, or create the table with create_table {{\"name\", \"embedding_model\": \"all-minilm-l6-v2\"}}",
                q.table
            ))
        })?;
        if !embed {
            // Planned, not run: the model must exist (a dropped one fails here, as DoGet would).
            self.ensure_model_stored(&model).await?;
            return Ok(Some(vec![vec![0.0; super::table_dim(table_schema).unwrap_or(0)]; texts.len()]));
        }
        let (_, vectors) = self.embed(&model, texts).await?;
        Ok(Some(vectors))
    }

    /// The schema `q` would return, without running it.
    pub async fn query_schema(&self, q: &Query) -> Result<SchemaRef> {
        let plan = self.plan(q, false).await?;
        if let Some(filter) = &q.filter {
            // Plans the filter (no rows are read) so a bad one is reported here too.
            let spec = ScanSpec { filter: Some(filter.clone()), columns: Some(vec![ID.to_string()]), limit: Some(0), with_row_id: false };
            let (_schema, _unread_rows) = self.store().scan(&plan.dataset, &spec).await?;
        }
        Ok(plan.schema)
    }

    /// Runs a scan or a search.
    pub async fn query(&self, q: &Query) -> Result<QueryOutput> {
        let planning = std::time::Instant::now();
        let plan = self.plan(q, true).await?;
        let plan_time = planning.elapsed();
        match plan.search {
            None => {
                let spec = ScanSpec { filter: q.filter.clone(), columns: Some(plan.columns.clone()), limit: q.limit, with_row_id: false };
                let (_, batches) = self.store().scan(&plan.dataset, &spec).await?;
                // Same columns, the result's own schema (Lance's carries table metadata).
                let schema = plan.schema.clone();
                let batches = batches
                    .map(move |b| b.and_then(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(Error::from)))
                    .boxed();
                Ok(QueryOutput { schema: plan.schema, batches })
            }
            Some(ref search) => {
                let started = std::time::Instant::now();
                let ids_only = !plan.columns.is_empty() && plan.columns.iter().all(|c| c == ID);
                let ranked = match search.path {
                    SearchPath::Memory | SearchPath::MemoryGpu => {
                        self.search_memory(&q.table, plan.dataset.clone(), search, q.filter.clone(), ids_only).await?
                    }
                    SearchPath::Ann if self.filter_is_selective(&plan, search, q).await? => {
                        // Where a filter admits few rows, ranking them all is faster than a graph
                        // walk past the others, and exact (Lance's HNSW search does the same).
                        self.search_memory(&q.table, plan.dataset.clone(), search, q.filter.clone(), ids_only).await?
                    }
                    SearchPath::Ann => {
                        let hits = self.search_ann(&plan, search, q).await?;
                        let ids = match ids_only && q.version.is_none() {
                            true => self.engine_ids(&q.table, &plan.dataset, &hits).await?,
                            false => None,
                        };
                        Ranked { hits, dataset: plan.dataset.clone(), path: SearchPath::Ann, ids }
                    }
                    SearchPath::VersionScan => Ranked {
                        hits: self.search_scan(&plan.dataset, search, q.filter.clone()).await?,
                        dataset: plan.dataset.clone(),
                        path: search.path,
                        ids: None,
                    },
                };
                let rank_time = started.elapsed();
                // The engine picks CPU or GPU after syncing (by table size): report what answered.
                let mut metadata = plan.schema.metadata().clone();
                metadata.insert(SEARCH_PATH.to_string(), ranked.path.as_str().to_string());
                let schema = Arc::new(plan.schema.as_ref().clone().with_metadata(metadata));
                let path = ranked.path;
                let batches = Self::hit_rows(&plan, search, &schema, ranked);
                tracing::debug!(
                    table = %q.table,
                    path = path.as_str(),
                    queries = search.queries.len(),
                    plan_ms = plan_time.as_secs_f64() * 1e3,
                    rank_ms = rank_time.as_secs_f64() * 1e3,
                    "search ranked"
                );
                Ok(QueryOutput { schema, batches })
            }
        }
    }

    /// Search through the table's in-memory engine, first brought up to the latest version.
    async fn search_memory(
        &self,
        table: &str,
        mut dataset: Dataset,
        search: &SearchPlan,
        filter: Option<String>,
        ids_only: bool,
    ) -> Result<Ranked> {
        let slot = self.engines.slot(table, search.kernel_metric());
        let mut engine = super::engine::synced(&slot, &dataset, search.dim(), search.kernel_metric()).await?;
        if !engine.as_ref().expect("synced").reflects(&dataset) {
            // Another search synced it past the version we opened: read rows at its version,
            // unless that is another table's (this name dropped and created again meanwhile):
            // then the engine is brought to the table opened here.
            let state = engine.as_ref().expect("synced");
            match self.store().dataset(table, Some(state.version)).await {
                Ok(newer) if state.reflects(&newer) => dataset = newer,
                _ => {
                    // Either the engine is of an earlier table of this name, or `dataset` is:
                    // dropped while this search ran. Only the current table's is synced to.
                    let opened = crate::store::table_version(&dataset);
                    let current = self.store().dataset(table, Some(opened.0)).await;
                    if !current.is_ok_and(|d| crate::store::table_version(&d) == opened) {
                        return Err(Error::not_found(format!("table '{table}' was dropped while this search ran")));
                    }
                    drop(engine);
                    engine = super::engine::synced_exactly(&slot, &dataset, search.dim(), search.kernel_metric()).await?;
                }
            }
        }
        let state = engine.as_ref().expect("synced");
        let row_filter = match filter {
            None => None,
            Some(f) => Some(self.store().admitted_rows(&dataset, &f).await?),
        };
        let run = || state.search(&search.queries, search.k, row_filter.as_deref());
        // Handing this worker's other tasks to another thread (block_in_place) costs tens of
        // microseconds: more than a search of a small table takes.
        let scanned = state.index.len() * search.dim() * search.queries.len();
        let (hits, on_gpu) = if scanned <= INLINE_SEARCH_FLOATS && state.gpu.is_none() { run() } else { tokio::task::block_in_place(run) };
        let ids = if ids_only { state.ids_of(hits.iter().flatten()) } else { None };
        Ok(Ranked { hits, dataset, path: if on_gpu { SearchPath::MemoryGpu } else { SearchPath::Memory }, ids })
    }

    /// The ids of `hits` (row ids of `dataset`, the latest version) from the table's
    /// ids-only engine; None where it cannot say (the caller reads them from Lance).
    async fn engine_ids(&self, table: &str, dataset: &Dataset, hits: &Hits) -> Result<Option<ArrayRef>> {
        let slot = self.engines.ids_slot(table);
        let engine = super::engine::synced(&slot, dataset, 0, hyprstream_kernels::Metric::Cosine).await?;
        let state = engine.as_ref().expect("synced");
        // Row ids name rows of one version; another version's map might not.
        Ok(if state.reflects(dataset) { state.ids_of(hits.iter().flatten()) } else { None })
    }

    /// Whether an ANN search's filter admits under `EXACT_FILTER_SHARE` of the rows, and the
    /// in-memory engine holds this version to rank them exactly.
    async fn filter_is_selective(&self, plan: &Plan, search: &SearchPlan, q: &Query) -> Result<bool> {
        // A pinned version is searched by Lance (the engine could move past it meanwhile).
        let (Some(filter), None) = (&q.filter, q.version) else { return Ok(false) };
        let Some(engine) = self.loaded_engine(&q.table, &plan.dataset, search).await? else { return Ok(false) };
        let rows = engine.as_ref().map_or(0, |e| e.index.len());
        let admitted = self.store().admitted_rows(&plan.dataset, filter).await?;
        Ok((admitted.len() as f64) < EXACT_FILTER_SHARE * rows as f64)
    }

    /// Search through a Lance vector index (approximate; unindexed rows searched exactly),
    /// one Lance query per query vector. Distances follow the contract.
    async fn search_ann(&self, plan: &Plan, search: &SearchPlan, q: &Query) -> Result<Hits> {
        // Where the table's exact engine holds this version's vectors in memory, it does what
        // Lance's planner would otherwise read from disk: `refine` re-ranks the shortlist
        // (k × refine candidates) there, and rows written since the index was built are
        // searched there exactly.
        let engine = self.loaded_engine(&q.table, &plan.dataset, search).await?;
        // Lance's dot distance is 1 − q·x; the contract's is −q·x.
        let contract = |ids: Vec<u64>, distances: Vec<f32>| -> Vec<Neighbor> {
            ids.into_iter()
                .zip(distances)
                .map(|(id, d)| Neighbor { id, distance: if search.metric == Metric::Dot { d - 1.0 } else { d } })
                .collect()
        };
        // Futures built in a loop (not a closure over borrowed items: that trips the
        // higher-ranked lifetime check of tonic's Send bound).
        let mut answers = Vec::with_capacity(search.queries.len());
        for query in &search.queries {
            let ann = AnnQuery {
                column: EMBEDDING.to_string(),
                vector: query.vector().to_vec(),
                k: search.k,
                metric: super::indexes::distance_type(search.metric),
                filter: q.filter.clone(),
                nprobes: q.nprobes,
                ef: q.ef,
                refine: q.refine,
            };
            let engine = engine.as_ref();
            answers.push(async move {
                if let Some(state) = engine.and_then(|e| e.as_ref()) {
                    let shortlist = AnnQuery { k: ann.k * ann.refine.unwrap_or(1) as usize, refine: None, ..ann.clone() };
                    let found = match self.store().ann_search_indexed(&plan.dataset, &shortlist, true).await? {
                        Some(found) => Some(found),
                        // Through the planner (a filter, say): its shortlist is still re-ranked here.
                        None if ann.refine.is_some() => {
                            let (ids, distances) = self.store().ann_search(&plan.dataset, &shortlist).await?;
                            Some(IndexedHits { ids, distances, unindexed: Vec::new() })
                        }
                        None => None,
                    };
                    if let Some(found) = found {
                        let mut hits = match ann.refine {
                            Some(_) => state.index.rerank(query.vector(), &found.ids, ann.k),
                            None => Some(contract(found.ids, found.distances)),
                        };
                        if let Some(hits) = &mut hits {
                            if !found.unindexed.is_empty() {
                                hits.extend(state.index.search_segments(query.vector(), ann.k, &found.unindexed));
                                hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
                                hits.truncate(ann.k);
                            }
                            return Ok(std::mem::take(hits));
                        }
                    }
                }
                let (ids, distances) = self.store().ann_search(&plan.dataset, &ann).await?;
                Ok::<_, Error>(contract(ids, distances))
            });
        }
        stream::iter(answers).buffered(ANN_CONCURRENCY).try_collect().await
    }

    /// The table's exact engine for this search's metric at exactly `dataset`'s version (row
    /// ids name rows of one version), if it is loaded. One loaded at an older version is
    /// brought up to date first: that reads only what changed (a put or a delete since), not
    /// every vector, which a never-loaded engine would need (the caller leaves the work to
    /// Lance then).
    async fn loaded_engine(&self, table: &str, dataset: &Dataset, search: &SearchPlan) -> Result<Option<OwnedRwLockReadGuard<Option<TableEngine>>>> {
        let slot = self.engines.slot(table, search.kernel_metric());
        let loaded = |e: &Option<TableEngine>| e.as_ref().is_some_and(|e| e.index.dim() == search.dim());
        let behind = match slot.clone().try_read_owned() {
            Ok(engine) if !loaded(&engine) => return Ok(None),
            Ok(engine) if engine.as_ref().is_some_and(|e| e.reflects(dataset)) => return Ok(Some(engine)),
            Ok(engine) => engine.as_ref().is_some_and(|e| e.version <= dataset.version().version),
            // Being synced or loaded right now: not worth waiting for.
            Err(_) => return Ok(None),
        };
        if !behind {
            return Ok(None);
        }
        let engine = super::engine::synced(&slot, dataset, search.dim(), search.kernel_metric()).await?;
        let usable = engine.as_ref().is_some_and(|e| e.reflects(dataset) && e.index.dim() == search.dim());
        Ok(usable.then_some(engine))
    }

    /// Search of a pinned version: stream its (prefiltered) vectors through the kernels.
    async fn search_scan(&self, dataset: &Dataset, search: &SearchPlan, filter: Option<String>) -> Result<Hits> {
        let spec = ScanSpec { filter, columns: Some(vec![EMBEDDING.to_string()]), limit: None, with_row_id: true };
        let (_, mut batches) = self.store().scan(dataset, &spec).await?;
        let mut tops: Vec<TopK> = search.queries.iter().map(|_| TopK::new(search.k)).collect();
        let mut scratch = Vec::new();
        while let Some(batch) = batches.try_next().await? {
            let block = vector_block(&batch, EMBEDDING, search.dim())?;
            tokio::task::block_in_place(|| {
                for (query, top) in search.queries.iter().zip(&mut tops) {
                    search_block(query, block.matrix, Some(&block.valid), Some(block.row_ids), 0, &mut scratch, top);
                }
            });
        }
        Ok(tops.into_iter().map(TopK::into_sorted).collect())
    }

    /// The requested columns of the hit rows, queries in order and nearest first within each,
    /// with `_distance` (and `_query` for a batch), as `schema` (the plan's columns; its
    /// metadata names the path that answered). Rows are read chunk by chunk as the client
    /// takes the stream, so a batched search over large rows (`raw_data`) holds one chunk in
    /// memory, not queries × k rows.
    fn hit_rows(plan: &Plan, search: &SearchPlan, schema: &SchemaRef, ranked: Ranked) -> BatchStream {
        let hits: Vec<(u32, Neighbor)> =
            ranked.hits.into_iter().enumerate().flat_map(|(q, hits)| hits.into_iter().map(move |h| (q as u32, h))).collect();
        let columns = plan.columns.clone();
        let (schema, batched, dataset) = (schema.clone(), search.batched, ranked.dataset);
        let batch = move |hits: &[(u32, Neighbor)], fetched: Vec<ArrayRef>| -> Result<RecordBatch> {
            let mut fetched = fetched;
            fetched.push(Arc::new(Float32Array::from_iter_values(hits.iter().map(|(_, h)| h.distance))));
            if batched {
                fetched.push(Arc::new(UInt32Array::from_iter_values(hits.iter().map(|(q, _)| *q))));
            }
            let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(hits.len()));
            RecordBatch::try_new_with_options(schema.clone(), fetched, &options).map_err(Error::from)
        };
        if columns.is_empty() || hits.is_empty() || ranked.ids.is_some() {
            // Nothing to read (no columns, or the ids-only answer the engine already holds).
            let fetched = match ranked.ids {
                Some(ids) if !hits.is_empty() => columns.iter().map(|_| ids.clone()).collect(),
                _ => plan.schema.fields().iter().take(columns.len()).map(|f| arrow::array::new_empty_array(f.data_type())).collect(),
            };
            return stream::once(async move { batch(&hits, fetched) }).boxed();
        }
        stream::try_unfold((hits, 0usize, FIRST_HIT_CHUNK), move |(hits, done, chunk)| {
            let (dataset, columns, batch) = (dataset.clone(), columns.clone(), batch.clone());
            async move {
                if done == hits.len() {
                    return Ok(None);
                }
                let part = &hits[done..(done + chunk).min(hits.len())];
                // A row can answer several queries of a batch: read each once.
                let mut unique: Vec<u64> = part.iter().map(|(_, h)| h.id).collect();
                unique.sort_unstable();
                unique.dedup();
                let rows = crate::store::take_rows(&dataset, &unique, &columns).await?;
                let positions = UInt32Array::from_iter_values(part.iter().map(|(_, h)| unique.binary_search(&h.id).expect("taken") as u32));
                let fetched = rows.iter().map(|c| arrow::compute::take(c.as_ref(), &positions, None).map_err(Error::from)).collect::<Result<_>>()?;
                let out = batch(part, fetched)?;
                // The next chunk holds about HIT_CHUNK_BYTES, judged by this one's rows.
                let per_row = out.get_array_memory_size() / part.len().max(1);
                let next = (HIT_CHUNK_BYTES / per_row.max(1)).clamp(1, MAX_HIT_CHUNK);
                let done = done + part.len();
                Ok(Some((out, (hits, done, next))))
            }
        })
        .boxed()
    }

    /// The `search` action: hits as JSON-friendly structs (with `query` for a batch).
    pub async fn search_hits(&self, q: &Query) -> Result<Vec<SearchHit>> {
        if !q.is_search() {
            return Err(Error::invalid(
                "the search action needs a \"vector\" or \"vectors\" (or \"text\" / \"texts\" on a table with an embedding model)",
            ));
        }
        if q.columns.is_some() {
            return Err(Error::invalid(
                "the search action answers id, distance, data_type and metadata; \"columns\" chooses a DoGet search's columns: leave it out here, or search with DoGet",
            ));
        }
        validate_table_name(&q.table)?;
        let table_schema = dataset_schema(&self.store().dataset(&q.table, q.version).await?);
        let mut q = q.clone();
        q.columns = Some(
            [ID, DATA_TYPE, METADATA]
                .iter()
                .filter(|c| table_schema.field_with_name(c).is_ok())
                .map(|c| c.to_string())
                .collect(),
        );
        let output = self.query(&q).await?;
        let batches: Vec<RecordBatch> = output.batches.try_collect().await?;
        let mut hits = Vec::new();
        for batch in &batches {
            let ids = batch.column_by_name(ID).map(|c| c.as_string::<i32>());
            let types = batch.column_by_name(DATA_TYPE).map(|c| c.as_string::<i32>());
            let metas = batch.column_by_name(METADATA).map(|c| c.as_string::<i32>());
            let queries = batch.column_by_name(QUERY).map(|c| c.as_primitive::<arrow::datatypes::UInt32Type>());
            let distances = batch.column_by_name(DISTANCE).expect("search result").as_primitive::<arrow::datatypes::Float32Type>();
            for row in 0..batch.num_rows() {
                let text = |c: Option<&arrow::array::StringArray>| c.filter(|c| c.is_valid(row)).map(|c| c.value(row).to_string());
                hits.push(SearchHit {
                    query: queries.map(|c| c.value(row)),
                    id: text(ids).unwrap_or_default(),
                    distance: distances.value(row),
                    data_type: text(types),
                    metadata: text(metas).and_then(|m| serde_json::from_str(&m).ok()),
                });
            }
        }
        Ok(hits)
    }
}

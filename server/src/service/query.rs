//! Scans and exact k-nearest-neighbour searches.
//!
//! A search streams the (prefiltered) embedding column through `hyprstream-kernels`, keeps
//! the k best Lance row ids, then fetches only those rows: memory is one batch of vectors
//! plus k rows, and a filter can never starve the result of rows (k rows come back whenever
//! k rows match).
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::{stream, StreamExt, TryStreamExt};
use hyprstream_kernels::{search_block, Neighbor, PreparedQuery, RowFilter, TopK};
use hyprstream_proto::columns::{DATA_TYPE, DISTANCE, EMBEDDING, ID, METADATA};
use hyprstream_proto::schema_keys::{METRIC, SEARCH_PATH};
use hyprstream_proto::{Metric, Query, SearchHit};
use lance::dataset::Dataset;

use super::{table_dim, table_metric, validate_table_name, BatchStream, TableService};
use crate::error::{Error, Result};
use crate::store::{dataset_schema, row_ids, vector_block, AnnQuery, ScanSpec};

/// Largest k a search accepts.
pub const MAX_K: usize = 100_000;

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
    query: PreparedQuery,
    metric: Metric,
    k: usize,
    /// Which engine answers (reported in the result's schema metadata).
    path: SearchPath,
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

fn kernel_metric(metric: Metric) -> hyprstream_kernels::Metric {
    match metric {
        Metric::Cosine => hyprstream_kernels::Metric::Cosine,
        Metric::Dot => hyprstream_kernels::Metric::Dot,
        Metric::L2 => hyprstream_kernels::Metric::L2,
    }
}

impl TableService {
    /// `run`: the plan will be executed (a `"text"` query is embedded); otherwise only its
    /// schema is wanted and the text is checked but not embedded.
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
                cols.clone()
            }
        };
        let wants_distance = columns.iter().any(|c| c == DISTANCE);
        columns.retain(|c| c != DISTANCE);
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

        let ann_knobs = q.nprobes.is_some() || q.ef.is_some() || q.refine.is_some();
        let text_vector = self.text_vector(q, &table_schema, run).await?;
        let search = match text_vector.as_ref().or(q.vector.as_ref()) {
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
            Some(vector) => {
                if q.limit.is_some() {
                    return Err(Error::invalid("\"limit\" applies to scans; a search returns \"k\" rows"));
                }
                let dim = table_dim(&table_schema).ok_or_else(|| {
                    Error::invalid(format!("table '{}' has no fixed-size 'embedding' column to search", q.table))
                })?;
                if vector.len() != dim {
                    return Err(Error::invalid(format!(
                        "vector has {} values; table '{}' has dim {dim}",
                        vector.len(),
                        q.table
                    )));
                }
                if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
                    return Err(Error::invalid(format!("vector[{i}] is not finite ({}): every value must be finite", vector[i])));
                }
                let k = q.k.unwrap_or(Query::DEFAULT_K);
                if k == 0 || k > MAX_K {
                    return Err(Error::invalid(format!("k must be between 1 and {MAX_K}, got {k}")));
                }
                let metric = q.metric.unwrap_or_else(|| table_metric(&table_schema));
                fields.push(Field::new(DISTANCE, DataType::Float32, false));
                if ann_knobs && q.exact != Some(false) {
                    return Err(Error::invalid("\"nprobes\", \"ef\" and \"refine\" tune ANN searches: add \"exact\": false"));
                }
                let path = if q.exact == Some(false) && self.store().has_vector_index(&dataset, EMBEDDING).await? {
                    SearchPath::Ann
                } else if q.version.is_some() {
                    SearchPath::VersionScan
                } else {
                    SearchPath::Memory
                };
                Some(SearchPlan { query: PreparedQuery::new(kernel_metric(metric), vector.clone()), metric, k, path })
            }
        };
        let mut metadata = HashMap::new();
        if let Some(s) = &search {
            metadata.insert(SEARCH_PATH.to_string(), s.path.as_str().to_string());
            metadata.insert(METRIC.to_string(), s.metric.as_str().to_string());
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        Ok(Plan { dataset, columns, schema, search })
    }

    /// A `"text"` query's vector, embedded by the table's model (a zero vector of the table's
    /// dim when `embed` is false: enough to plan the result schema).
    async fn text_vector(&self, q: &Query, table_schema: &Schema, embed: bool) -> Result<Option<Vec<f32>>> {
        let Some(text) = &q.text else { return Ok(None) };
        if q.vector.is_some() {
            return Err(Error::invalid("send either \"vector\" or \"text\", not both"));
        }
        let model = super::table_embedding_model(table_schema).ok_or_else(|| {
            Error::invalid(format!(
                "table '{}' has no embedding model, so \"text\" cannot be embedded: send a \"vector\", or create the table with create_table {{\"name\", \"embedding_model\": \"all-minilm-l6-v2\"}}",
                q.table
            ))
        })?;
        if !embed {
            return Ok(Some(vec![0.0; super::table_dim(table_schema).unwrap_or(0)]));
        }
        let (_, mut vectors) = self.embed(&model, vec![text.clone()]).await?;
        Ok(vectors.pop())
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
        let plan = self.plan(q, true).await?;
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
            Some(ref search) if search.path == SearchPath::Ann => {
                let batch = self.search_ann(&plan, search, q).await?;
                Ok(QueryOutput { schema: plan.schema, batches: stream::iter([Ok(batch)]).boxed() })
            }
            Some(ref search) => {
                let started = std::time::Instant::now();
                let (hits, dataset, path) = match search.path {
                    SearchPath::Memory | SearchPath::MemoryGpu => {
                        self.search_memory(&q.table, plan.dataset.clone(), search, q.filter.clone()).await?
                    }
                    SearchPath::VersionScan | SearchPath::Ann => {
                        (self.search_scan(&plan.dataset, search, q.filter.clone()).await?, plan.dataset.clone(), search.path)
                    }
                };
                let ranked = started.elapsed();
                // The engine picks CPU or GPU after syncing (by table size): report what answered.
                let mut metadata = plan.schema.metadata().clone();
                metadata.insert(SEARCH_PATH.to_string(), path.as_str().to_string());
                let schema = Arc::new(plan.schema.as_ref().clone().with_metadata(metadata));
                let batch = self.hit_rows(&plan, &schema, &dataset, &hits).await?;
                tracing::debug!(
                    table = %q.table,
                    path = path.as_str(),
                    rank_ms = ranked.as_secs_f64() * 1e3,
                    fetch_ms = (started.elapsed() - ranked).as_secs_f64() * 1e3,
                    "search answered"
                );
                Ok(QueryOutput { schema, batches: stream::iter([Ok(batch)]).boxed() })
            }
        }
    }

    /// Search through the table's in-memory engine, first brought up to the latest version.
    /// Returns the hits, the dataset version they refer to, and which device answered.
    async fn search_memory(
        &self,
        table: &str,
        mut dataset: Dataset,
        search: &SearchPlan,
        filter: Option<String>,
    ) -> Result<(Vec<Neighbor>, Dataset, SearchPath)> {
        let slot = self.engines.slot(table, search.query.metric());
        let mut engine = slot.write().await;
        if engine.as_ref().is_some_and(|e| e.version > dataset.version().version) {
            // Another search already synced past the version we opened: use the newer one.
            dataset = self.store().dataset(table, None).await?;
        }
        super::engine::sync(&mut engine, &dataset, search.query.dim(), search.query.metric()).await?;
        let engine = engine.downgrade();
        let row_filter = match filter {
            None => None,
            Some(f) => Some(self.filter_rows(&dataset, f).await?),
        };
        let state = engine.as_ref().expect("synced");
        if let Some(gpu) = state.gpu.as_ref().filter(|_| state.index.len() >= super::gpu::GPU_MIN_ROWS) {
            let result = tokio::task::block_in_place(|| {
                gpu.lock().expect("gpu mirror poisoned").search(search.query.vector(), search.k, row_filter.as_ref())
            });
            match result {
                Ok(hits) => return Ok((hits, dataset, SearchPath::MemoryGpu)),
                // The CPU index holds the same rows: answer from it.
                Err(e) => tracing::warn!(table, error = %e, "GPU search failed; answered on the CPU"),
            }
        }
        let hits = tokio::task::block_in_place(|| state.index.search(search.query.vector(), search.k, row_filter.as_ref()));
        Ok((hits, dataset, SearchPath::Memory))
    }

    /// Search through a Lance vector index (approximate; unindexed rows searched exactly).
    async fn search_ann(&self, plan: &Plan, search: &SearchPlan, q: &Query) -> Result<RecordBatch> {
        let ann = AnnQuery {
            column: EMBEDDING.to_string(),
            vector: search.query.vector().to_vec(),
            k: search.k,
            metric: super::indexes::distance_type(search.metric),
            filter: q.filter.clone(),
            columns: plan.columns.clone(),
            nprobes: q.nprobes,
            ef: q.ef,
            refine: q.refine,
        };
        let batch = self.store().ann_search(&plan.dataset, &ann).await?;
        let distance = batch
            .column_by_name(DISTANCE)
            .ok_or_else(|| Error::internal("ANN result has no _distance"))?;
        let distance = arrow::compute::cast(distance, &DataType::Float32)?;
        let distance = distance.as_primitive::<arrow::datatypes::Float32Type>();
        // Lance's dot distance is 1 − q·x; the contract's is −q·x.
        let distance: Float32Array = match search.metric {
            Metric::Dot => distance.unary(|d| d - 1.0),
            _ => distance.clone(),
        };
        let mut columns: Vec<Arc<dyn Array>> = plan
            .columns
            .iter()
            .map(|c| batch.column_by_name(c).cloned().ok_or_else(|| Error::internal(format!("ANN result lacks {c}"))))
            .collect::<Result<_>>()?;
        columns.push(Arc::new(distance));
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(plan.schema.clone(), columns, &options).map_err(Error::from)
    }

    /// The row ids a filter admits (the prefilter of a search).
    async fn filter_rows(&self, dataset: &Dataset, filter: String) -> Result<RowFilter> {
        let spec = ScanSpec { filter: Some(filter), columns: Some(Vec::new()), limit: None, with_row_id: true };
        let (_, mut batches) = self.store().scan(dataset, &spec).await?;
        let mut ids = Vec::new();
        while let Some(batch) = batches.try_next().await? {
            ids.extend_from_slice(row_ids(&batch)?);
        }
        Ok(RowFilter::new(ids))
    }

    /// Search of a pinned version: stream its (prefiltered) vectors through the kernels.
    async fn search_scan(&self, dataset: &Dataset, search: &SearchPlan, filter: Option<String>) -> Result<Vec<Neighbor>> {
        let spec = ScanSpec { filter, columns: Some(vec![EMBEDDING.to_string()]), limit: None, with_row_id: true };
        let (_, mut batches) = self.store().scan(dataset, &spec).await?;
        let mut top = TopK::new(search.k);
        let mut scratch = Vec::new();
        while let Some(batch) = batches.try_next().await? {
            let block = vector_block(&batch, EMBEDDING, search.query.dim())?;
            tokio::task::block_in_place(|| {
                search_block(&search.query, block.matrix, Some(&block.valid), Some(block.row_ids), 0, &mut scratch, &mut top)
            });
        }
        Ok(top.into_sorted())
    }

    /// The requested columns of the hit rows, best first, with `_distance`, as `schema` (the
    /// plan's columns; its metadata names the path that answered).
    async fn hit_rows(&self, plan: &Plan, schema: &SchemaRef, dataset: &Dataset, hits: &[Neighbor]) -> Result<RecordBatch> {
        let row_ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
        let mut columns: Vec<Arc<dyn Array>> = if plan.columns.is_empty() || hits.is_empty() {
            plan.schema.fields().iter().take(plan.columns.len()).map(|f| arrow::array::new_empty_array(f.data_type())).collect()
        } else {
            self.store().take_rows(dataset, &row_ids, &plan.columns).await?
        };
        columns.push(Arc::new(Float32Array::from_iter_values(hits.iter().map(|h| h.distance))));
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(hits.len()));
        RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(Error::from)
    }

    /// The `search` action: hits as JSON-friendly structs.
    pub async fn search_hits(&self, q: &Query) -> Result<Vec<SearchHit>> {
        if q.vector.is_none() && q.text.is_none() {
            return Err(Error::invalid("the search action needs a \"vector\" (or \"text\" on a table with an embedding model)"));
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
            let distances = batch.column_by_name(DISTANCE).expect("search result").as_primitive::<arrow::datatypes::Float32Type>();
            for row in 0..batch.num_rows() {
                let text = |c: Option<&arrow::array::StringArray>| c.filter(|c| c.is_valid(row)).map(|c| c.value(row).to_string());
                hits.push(SearchHit {
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

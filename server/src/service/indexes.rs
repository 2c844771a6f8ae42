//! Index management: validating `create_index` requests and running `optimize`.
use std::time::Instant;

use hyprstream_proto::actions::{CreateIndex, IndexKind};
use hyprstream_proto::columns::EMBEDDING;
use hyprstream_proto::{IndexInfo, Metric, OptimizeSummary};
use lance_linalg::distance::DistanceType;

use super::{table_dim, table_metric, validate_name, validate_table_name, TableService};
use crate::error::{Error, Result};
use crate::store::{dataset_schema, IndexSpec};

/// Most IVF partitions accepted.
const MAX_PARTITIONS: usize = 65_536;
/// HNSW graph degree accepted (hnswlib and Lance use 16-48; Lance refuses under 4).
const HNSW_M: std::ops::RangeInclusive<usize> = 4..=256;
/// Largest HNSW build beam accepted (hnswlib's guides stop at a few hundred).
const MAX_EF_CONSTRUCTION: usize = 10_000;

pub fn distance_type(metric: Metric) -> DistanceType {
    match metric {
        Metric::Cosine => DistanceType::Cosine,
        Metric::Dot => DistanceType::Dot,
        Metric::L2 => DistanceType::L2,
    }
}

/// PQ sub-vectors: as many as give 16-wide (else 8, 4, 2, 1) sub-vectors that tile `dim`.
fn default_sub_vectors(dim: usize) -> usize {
    [16, 8, 4, 2, 1].iter().find(|w| dim % **w == 0).map(|w| dim / w).unwrap_or(1)
}

impl TableService {
    /// Builds the index a `create_index` body asks for; returns it, the new version and
    /// the build time in seconds. `started` is called once the request is checked, as the
    /// build begins (a refused request never calls it).
    pub async fn create_index(&self, req: CreateIndex, on_start: impl FnOnce()) -> Result<(IndexInfo, u64, f64)> {
        validate_table_name(&req.table)?;
        let started = Instant::now();
        let _guard = self.write_lock(&req.table).await?;
        let dataset = self.store().dataset(&req.table, None).await?;
        let schema = dataset_schema(&dataset);
        let column = match (&req.column, req.kind.is_vector()) {
            (Some(c), _) => c.clone(),
            (None, true) => EMBEDDING.to_string(),
            (None, false) => {
                return Err(Error::invalid("a btree or bitmap index needs \"column\" (e.g. \"id\" or \"data_type\")"))
            }
        };
        let field = schema.field_with_name(&column).map_err(|_| {
            Error::invalid(format!("table '{}' has no column '{column}'", req.table))
        })?;
        // A vector index trains on the rows that have a vector (Lance's IVF_PQ build commits a
        // broken index when fewer than 256 of them do, however many rows there are).
        let counted = req.kind.is_vector().then(|| format!("`{column}` IS NOT NULL"));
        let rows = self.store().count_rows(&dataset, counted).await? as usize;
        let spec = if req.kind.is_vector() {
            let dim = match field.data_type() {
                arrow_schema::DataType::FixedSizeList(item, n)
                    if (column == EMBEDDING || table_dim(&schema).is_some()) && item.data_type().is_floating() =>
                {
                    *n as usize
                }
                other => {
                    return Err(Error::invalid(format!(
                        "a vector index needs a fixed_size_list<float32> column; '{column}' is {other}"
                    )))
                }
            };
            let partitions = req.num_partitions.unwrap_or_else(|| default_partitions(req.kind, rows));
            if partitions == 0 || partitions > MAX_PARTITIONS {
                return Err(Error::invalid(format!("num_partitions must be between 1 and {MAX_PARTITIONS}")));
            }
            if rows < partitions.max(2) {
                return Err(Error::invalid(format!(
                    "table '{}' has {rows} rows with a vector: too few to train {partitions} IVF partitions (exact search serves small tables)",
                    req.table
                )));
            }
            let metric = distance_type(req.metric.unwrap_or_else(|| table_metric(&schema)));
            match req.kind {
                IndexKind::IvfFlat => IndexSpec::IvfFlat { partitions, metric },
                IndexKind::IvfPq => {
                    let sub_vectors = req.num_sub_vectors.unwrap_or_else(|| default_sub_vectors(dim));
                    if sub_vectors == 0 || dim % sub_vectors != 0 {
                        return Err(Error::invalid(format!("num_sub_vectors must divide dim {dim}, got {sub_vectors}")));
                    }
                    if rows < 256 {
                        return Err(Error::invalid(format!(
                            "ivf_pq trains 256 centroids per sub-vector: it needs at least 256 rows with a vector, table '{}' has {rows}",
                            req.table
                        )));
                    }
                    IndexSpec::IvfPq { partitions, sub_vectors, metric }
                }
                _ => {
                    let m = req.m.unwrap_or(20);
                    let ef_construction = req.ef_construction.unwrap_or(m.max(150));
                    // Checked here, before `started`: Lance refuses m < 4 only once the build
                    // runs, and allocates ef_construction-sized buffers (2^40 aborted the
                    // process).
                    if !(HNSW_M.contains(&m)) {
                        return Err(Error::invalid(format!(
                            "m must be between {} and {}, got {m}",
                            HNSW_M.start(),
                            HNSW_M.end()
                        )));
                    }
                    if ef_construction < m || ef_construction > MAX_EF_CONSTRUCTION {
                        return Err(Error::invalid(format!(
                            "ef_construction must be between m ({m}) and {MAX_EF_CONSTRUCTION}, got {ef_construction}"
                        )));
                    }
                    IndexSpec::IvfHnsw { partitions, m, ef_construction, metric, quantized: req.kind == IndexKind::IvfHnswSq }
                }
            }
        } else {
            // Lance builds scalar indexes on flat columns only (a blob column such as
            // raw_data is a struct inside Lance); it says so only once the build has begun.
            if field.data_type().is_nested() || crate::store::is_blob(field) {
                return Err(Error::invalid(format!(
                    "a btree or bitmap index needs a flat column (numbers, strings, booleans, times, binary); '{column}' is {}",
                    if crate::store::is_blob(field) { "a blob column".to_string() } else { field.data_type().to_string() }
                )));
            }
            if req.kind == IndexKind::Btree {
                IndexSpec::BTree
            } else {
                IndexSpec::Bitmap
            }
        };
        if (req.metric.is_some() || req.num_partitions.is_some()) && !req.kind.is_vector() {
            return Err(Error::invalid("metric and num_partitions apply to vector indexes (ivf_*) only"));
        }
        if req.num_sub_vectors.is_some() && req.kind != IndexKind::IvfPq {
            return Err(Error::invalid("num_sub_vectors applies to ivf_pq only"));
        }
        if (req.m.is_some() || req.ef_construction.is_some()) && !req.kind.is_hnsw() {
            return Err(Error::invalid("m and ef_construction apply to ivf_hnsw_sq and ivf_hnsw_flat only"));
        }
        // Lance's own default name, made explicit so the built index can be found by it.
        let name = req.name.clone().unwrap_or_else(|| format!("{column}_idx"));
        validate_name("index", &name)?;
        let existing = self.store().indexes(&dataset).await?;
        if let Some(other) = existing.iter().find(|i| i.name == name && i.columns.first() != Some(&column)) {
            return Err(Error::already_exists(format!(
                "index '{name}' already exists on column '{}': choose another \"name\"",
                other.columns.join(", ")
            )));
        }
        tracing::info!(table = %req.table, column = %column, kind = ?req.kind, rows, "building index");
        on_start();
        let mut dataset = self.store().create_index(&req.table, dataset, &column, Some(name.clone()), &spec).await?;
        // One vector index and one scalar index per column: the new one replaces the column's
        // index of its sort under any other name (only once it is built, so a failed build
        // leaves the old one in place).
        let mut replaced: Vec<&str> = existing
            .iter()
            .filter(|i| i.name != name && i.columns.first() == Some(&column) && i.vector == req.kind.is_vector())
            .map(|i| i.name.as_str())
            .collect();
        replaced.sort_unstable();
        replaced.dedup();
        for old in replaced {
            dataset = self.store().drop_index(&req.table, dataset, old).await?;
        }
        let index = self
            .store()
            .indexes(&dataset)
            .await?
            .into_iter()
            .find(|i| i.name == name)
            .map(|i| IndexInfo { name: i.name, columns: i.columns, index_type: i.index_type })
            .ok_or_else(|| Error::internal("index built but not listed"))?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(table = %req.table, index = %index.name, seconds, version = dataset.version().version, "index built");
        Ok((index, dataset.version().version, seconds))
    }

    pub async fn optimize(&self, table: &str) -> Result<OptimizeSummary> {
        validate_table_name(table)?;
        let _guard = self.write_lock(table).await?;
        let dataset = self.store().dataset(table, None).await?;
        let done = self.store().optimize(table, dataset).await?;
        tracing::info!(table, removed = done.fragments_removed, added = done.fragments_added, "optimized");
        Ok(OptimizeSummary {
            table: table.to_string(),
            fragments_removed: done.fragments_removed,
            fragments_added: done.fragments_added,
            version: done.dataset.version().version,
        })
    }
}

/// IVF partitions when the request names none. IVF_FLAT and IVF_PQ scan whole partitions, so
/// ≈ √rows keeps each probe small; an HNSW partition is a graph searched in ≈ log time, and
/// each probed partition is one more graph search, so HNSW kinds take Lance's own layout of
/// one partition per 2^20 rows.
fn default_partitions(kind: IndexKind, rows: usize) -> usize {
    if kind.is_hnsw() {
        (rows >> 20).max(1)
    } else {
        ((rows as f64).sqrt() as usize).clamp(1, 4096)
    }
}

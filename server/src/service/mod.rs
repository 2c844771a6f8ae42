//! The domain: tables of multimodal rows, their versions, and queries over them.
//!
//! Everything here is callable without a network (the Flight edge only parses, calls and
//! encodes), and every write to a table goes through that table's lock, so concurrent puts
//! from many clients are applied one after another and none is lost.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_schema::{Schema, SchemaRef};
use futures::stream::BoxStream;
use hyprstream_proto::actions::{CreateTable, Delete, Restore};
use hyprstream_proto::columns::{EMBEDDING, EMBEDDING_MODEL_VERSION};
use hyprstream_proto::model_columns::TABLE as MODELS_TABLE;
use hyprstream_proto::schema_keys::{EMBEDDING_MODEL, METRIC as TABLE_METRIC};
use hyprstream_proto::{
    ColumnInfo, DeleteSummary, DropSummary, Health, IndexInfo, Metric, RestoreSummary, TableDescription,
    TableSummary, VersionInfo,
};
use lance::dataset::Dataset;

use crate::error::{Error, Result};
use crate::store::{dataset_schema, Store};

mod engine;
pub mod gpu;
mod indexes;
pub mod ingest;
pub mod models;
mod put;
mod query;
mod reembed;

pub use query::QueryOutput;

/// Largest accepted vector dimension.
pub const MAX_DIM: usize = 65_536;

/// Write locks kept before the ones nobody uses are swept (see `write_lock`).
const WRITE_LOCKS_SWEEP_AT: usize = 1024;

pub struct TableService {
    store: Store,
    write_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One read guard per write running detached from its request (see `write_pass`).
    detached_writes: Arc<tokio::sync::RwLock<()>>,
    shutting_down: std::sync::atomic::AtomicBool,
    engines: engine::Engines,
    model_cache: models::ModelCache,
    model_device: burn::tensor::Device<crate::ml::ModelBackend>,
    started: Instant,
}

/// Fails if this write's caller has gone (see `CALLER_GONE`): called when a write takes its
/// table's lock and again just before it commits (embedding a put's texts can outlast the
/// client's deadline), so a write whose client was told it failed is never applied later.
pub(crate) fn ensure_caller(table: &str) -> Result<()> {
    if CALLER_GONE.try_with(|gone| gone.load(std::sync::atomic::Ordering::Acquire)).unwrap_or(false) {
        tracing::info!(table, "write abandoned by its caller before its commit; nothing written");
        return Err(Error::internal(format!("the caller went away before this write to '{table}' committed; nothing was written")));
    }
    Ok(())
}

tokio::task_local! {
    /// Set for a write the edge runs detached from its request: true once that request is
    /// gone (the client cancelled or timed out).
    pub static CALLER_GONE: Arc<std::sync::atomic::AtomicBool>;
}

/// Table names: `^[A-Za-z_][A-Za-z0-9_]{0,63}$`, so a name is always a safe directory name.
pub fn validate_table_name(name: &str) -> Result<()> {
    validate_name("table", name)
}

/// Names of tables and indexes: 1-64 characters A-Z, a-z, 0-9 or _, not starting with a digit.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid {what} name '{}': use 1-64 characters A-Z, a-z, 0-9 or _, not starting with a digit",
            crate::error::quoted(name)
        )))
    }
}

/// The metric a table was created with (schema metadata `hyprstream.metric`; cosine if unset).
pub fn table_metric(schema: &Schema) -> Metric {
    schema.metadata().get(TABLE_METRIC).and_then(|m| Metric::parse(m)).unwrap_or_default()
}

/// The table's embedding model (schema metadata `hyprstream.embedding_model`), if it has one.
pub fn table_embedding_model(schema: &Schema) -> Option<String> {
    schema.metadata().get(EMBEDDING_MODEL).cloned()
}

/// `create_table`, `drop_table` and `delete` leave the `models` table to the model actions (a
/// deleted row would be a model missing a layer).
fn refuse_models_table(name: &str) -> Result<()> {
    if name == MODELS_TABLE {
        return Err(Error::invalid(format!(
            "'{MODELS_TABLE}' holds the stored models: use import_model / drop_model (it can be scanned and its layers upserted like any table)"
        )));
    }
    Ok(())
}

/// Length of the table's `embedding` vectors.
pub fn table_dim(schema: &Schema) -> Option<usize> {
    match schema.field_with_name(EMBEDDING).ok()?.data_type() {
        arrow_schema::DataType::FixedSizeList(_, n) => Some(*n as usize),
        _ => None,
    }
}

impl TableService {
    pub fn new(store: Store) -> Self {
        TableService {
            store,
            write_locks: Mutex::new(HashMap::new()),
            detached_writes: Default::default(),
            shutting_down: Default::default(),
            engines: Default::default(),
            model_cache: Default::default(),
            model_device: Default::default(),
            started: Instant::now(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Held by a write that runs detached from its request (so it reaches its commit even if
    /// the client goes away): `drain_writes` waits for every one of them.
    pub async fn write_pass(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.detached_writes.clone().read_owned().await
    }

    /// Waits until the detached writes have finished (at shutdown, after the last request).
    pub async fn drain_writes(&self) {
        let _all = self.detached_writes.write().await;
    }

    /// Serialises writers of one table; readers never wait. The holder's base version is the
    /// one on disk (see `Store::refresh_latest`). A write whose caller has gone by the time the
    /// lock is free (`CALLER_GONE`) stops here, before it changes anything: its client was told
    /// it failed, and a retry must not find it applied later.
    pub(crate) async fn write_lock(&self, table: &str) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        let lock = {
            let mut locks = self.write_locks.lock().expect("write-lock map poisoned");
            // A lock is made before the table is looked up, so calls naming tables that never
            // existed add entries: once there are many, those no writer holds or waits on
            // (only the map has them) go.
            if locks.len() >= WRITE_LOCKS_SWEEP_AT {
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(table.to_string()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        ensure_caller(table)?;
        self.store.refresh_latest(table).await;
        Ok(guard)
    }

    /// Whether the server has been asked to stop (long multi-commit work ends between commits).
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, std::sync::atomic::Ordering::Release);
    }

    async fn open(&self, table: &str, version: Option<u64>) -> Result<Dataset> {
        validate_table_name(table)?;
        self.store.dataset(table, version).await
    }

    pub async fn create_table(&self, req: CreateTable) -> Result<TableDescription> {
        validate_table_name(&req.name)?;
        refuse_models_table(&req.name)?;
        let dim = match (&req.embedding_model, req.dim) {
            (Some(model), dim) => {
                let encoder = self.encoder(model).await?;
                if dim.is_some_and(|d| d != encoder.dim) {
                    return Err(Error::invalid(format!(
                        "dim {} does not match model '{model}', which makes {}-d vectors: leave \"dim\" out",
                        dim.unwrap_or(0),
                        encoder.dim
                    )));
                }
                encoder.dim
            }
            (None, Some(dim)) => dim,
            (None, None) => {
                return Err(Error::invalid(
                    "create_table needs \"dim\" (the vector length), or \"embedding_model\" to take it from a stored model",
                ))
            }
        };
        if dim == 0 || dim > MAX_DIM {
            return Err(Error::invalid(format!("dim must be between 1 and {MAX_DIM}, got {dim}")));
        }
        let _guard = self.write_lock(&req.name).await?;
        if self.store.exists(&req.name) {
            return Err(Error::already_exists(format!(
                "table '{}' already exists (drop_table it first, or put rows into it)",
                req.name
            )));
        }
        let mut schema = ingest::multimodal_schema(dim);
        schema.metadata.insert(TABLE_METRIC.to_string(), req.metric.as_str().to_string());
        if let Some(model) = &req.embedding_model {
            // Which model version embedded each row, so rows can be re-embedded when it changes.
            let mut fields: Vec<arrow_schema::Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(arrow_schema::Field::new(EMBEDDING_MODEL_VERSION, arrow_schema::DataType::Utf8, true));
            schema = Schema::new_with_metadata(fields, schema.metadata.clone());
            schema.metadata.insert(EMBEDDING_MODEL.to_string(), model.clone());
        }
        self.store
            .write(&req.name, lance::dataset::WriteMode::Create, Arc::new(schema), Vec::new())
            .await?;
        tracing::info!(table = %req.name, dim, metric = req.metric.as_str(), model = ?req.embedding_model, "table created");
        self.describe(&req.name).await
    }

    pub async fn drop_table(&self, name: &str) -> Result<DropSummary> {
        validate_table_name(name)?;
        refuse_models_table(name)?;
        let _guard = self.write_lock(name).await?;
        self.store.drop_table(name).await?;
        self.engines.forget(name);
        tracing::info!(table = %name, "table dropped");
        Ok(DropSummary { table: name.to_string(), dropped: true })
    }

    pub async fn list_tables(&self) -> Result<Vec<TableSummary>> {
        let mut tables = Vec::new();
        for name in self.store.list()? {
            // A table dropped between listing and opening is simply not listed.
            let Ok(dataset) = self.store.dataset(&name, None).await else { continue };
            let rows = self.store.count_rows(&dataset, None).await?;
            tables.push(TableSummary { name, rows, version: dataset.version().version });
        }
        Ok(tables)
    }

    pub async fn describe(&self, name: &str) -> Result<TableDescription> {
        let dataset = self.open(name, None).await?;
        let schema = dataset_schema(&dataset);
        let versions = self.store.versions(&dataset).await?.into_iter().map(|v| v.version).collect();
        let indexes = self
            .store
            .indexes(&dataset)
            .await?
            .into_iter()
            .map(|i| IndexInfo { name: i.name, columns: i.columns, index_type: i.index_type })
            .collect();
        Ok(TableDescription {
            name: name.to_string(),
            rows: self.store.count_rows(&dataset, None).await?,
            dim: table_dim(&schema),
            metric: table_metric(&schema),
            embedding_model: table_embedding_model(&schema),
            version: dataset.version().version,
            versions,
            schema: schema
                .fields()
                .iter()
                .map(|f| ColumnInfo {
                    name: f.name().clone(),
                    data_type: match f.metadata().get("ARROW:extension:name") {
                        Some(ext) if ext == "arrow.json" => "JSON".to_string(),
                        _ => f.data_type().to_string(),
                    },
                    nullable: f.is_nullable(),
                    blob: crate::store::is_blob(f),
                })
                .collect(),
            indexes,
        })
    }

    /// The table's schema as clients read it.
    pub async fn schema(&self, name: &str) -> Result<(SchemaRef, u64)> {
        let dataset = self.open(name, None).await?;
        let rows = self.store.count_rows(&dataset, None).await?;
        Ok((Arc::new(dataset_schema(&dataset)), rows))
    }

    pub async fn delete(&self, req: Delete) -> Result<DeleteSummary> {
        validate_table_name(&req.table)?;
        refuse_models_table(&req.table)?;
        if req.filter.trim().is_empty() {
            return Err(Error::invalid("delete needs a non-empty filter (use \"true\" to delete every row)"));
        }
        let _guard = self.write_lock(&req.table).await?;
        let dataset = self.open(&req.table, None).await?;
        let (deleted, dataset) = self.store.delete(&req.table, dataset, &req.filter).await?;
        tracing::info!(table = %req.table, deleted, version = dataset.version().version, "rows deleted");
        Ok(DeleteSummary { table: req.table, deleted, version: dataset.version().version })
    }

    pub async fn versions(&self, name: &str) -> Result<Vec<VersionInfo>> {
        let dataset = self.open(name, None).await?;
        Ok(self
            .store
            .versions(&dataset)
            .await?
            .into_iter()
            .map(|v| VersionInfo { version: v.version, timestamp: v.timestamp.to_rfc3339() })
            .collect())
    }

    pub async fn restore(&self, req: Restore) -> Result<RestoreSummary> {
        validate_table_name(&req.table)?;
        let _guard = self.write_lock(&req.table).await?;
        let dataset = self.store.restore(&req.table, req.version).await?;
        tracing::info!(table = %req.table, restored = req.version, version = dataset.version().version, "version restored");
        Ok(RestoreSummary { table: req.table, restored: req.version, version: dataset.version().version })
    }

    pub fn health(&self) -> Result<Health> {
        Ok(Health {
            status: "ok".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            tables: self.store.list()?.len(),
        })
    }
}

/// A stream of result batches with its schema known up front.
pub type BatchStream = BoxStream<'static, Result<arrow::array::RecordBatch>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_safe_directory_names() {
        for ok in ["a", "_x", "sherlock_data", "T1", &"a".repeat(64)] {
            assert!(validate_table_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a.b", "../x", "a b", "é", &"a".repeat(65)] {
            assert!(validate_table_name(bad).is_err(), "{bad}");
        }
    }

    /// The domain runs without a network: put, search and delete straight on the service.
    #[tokio::test(flavor = "multi_thread")]
    async fn put_search_delete_without_a_network() {
        use arrow::array::{FixedSizeListArray, Float32Array, StringArray};
        use futures::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let service = TableService::new(Store::open(dir.path()).unwrap());
        let schema = Arc::new(Schema::new(vec![
            arrow_schema::Field::new("id", arrow_schema::DataType::Utf8, false),
            ingest::embedding_field(2),
        ]));
        let vectors = FixedSizeListArray::try_new(
            Arc::new(arrow_schema::Field::new("item", arrow_schema::DataType::Float32, true)),
            2,
            Arc::new(Float32Array::from(vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7])),
            None,
        )
        .unwrap();
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["x", "y", "xy"])), Arc::new(vectors)],
        )
        .unwrap();
        let summary = service.put("t", hyprstream_proto::PutMode::Upsert, &schema, vec![batch]).await.unwrap();
        assert_eq!(summary.inserted, 3);
        let q = hyprstream_proto::Query::search("t", vec![0.0, 1.0], 1);
        let ids = |out: QueryOutput| async move {
            let batches: Vec<_> = out.batches.try_collect().await.unwrap();
            batches
                .iter()
                .flat_map(|b| {
                    use arrow::array::AsArray;
                    b.column(0).as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(service.query(&q).await.unwrap()).await, vec!["y"]);
        service.delete(Delete { table: "t".into(), filter: "id = 'y'".into() }).await.unwrap();
        assert_eq!(ids(service.query(&q).await.unwrap()).await, vec!["xy"]);
    }
}

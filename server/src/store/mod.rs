//! Lance storage: each table is one Lance dataset, `<data-dir>/<table>.lance`.
//!
//! This layer knows Lance and Arrow, not gRPC or the Hyprstream table rules: it writes,
//! reads, versions and deletes datasets, and turns Lance's errors into domain errors.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchIterator};
use arrow_schema::SchemaRef;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use lance::dataset::builder::DatasetBuilder;
use lance::dataset::{Dataset, MergeInsertBuilder, WhenMatched, WhenNotMatched, WriteMode, WriteParams};
use lance::index::DatasetIndexExt;
use lance::session::Session;

use crate::error::{Error, Result};
use hyprstream_kernels::RowFilter;

mod cache;
mod errors;
mod indexes;
pub use cache::{table_version, TableVersion};
pub use errors::lance_error;
pub use indexes::{AnnQuery, Compaction, IndexSpec, IndexedHits};

const DATASET_SUFFIX: &str = ".lance";
/// Where a dropped table's directory goes before it is deleted (table names hold no dot, so
/// it is never a table).
const TRASH_DIR: &str = ".dropped";

/// What a scan reads.
#[derive(Debug, Default, Clone)]
pub struct ScanSpec {
    pub filter: Option<String>,
    pub columns: Option<Vec<String>>,
    pub limit: Option<u64>,
    /// Adds Lance's `_rowid` column (stable row ids, used to fetch search results).
    pub with_row_id: bool,
}

/// How a merge on the key column treats rows whose key is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMatch {
    Replace,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeCounts {
    pub inserted: u64,
    pub updated: u64,
}

#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub name: String,
    pub columns: Vec<String>,
    pub index_type: String,
    /// A vector index (else a scalar one).
    pub vector: bool,
}

pub struct Store {
    root: PathBuf,
    /// Shared caches (metadata, indexes) for every dataset this server opens.
    session: Arc<Session>,
    /// The latest version of each table this server has opened or written. Every write goes
    /// through this store and refreshes its entry, so a read of the latest version needs no
    /// trip to the manifest (that trip was most of a small query's latency).
    latest: std::sync::Mutex<LatestDatasets>,
    /// Per (dataset, column): what its ANN searches need to know of the vector index at the
    /// version last searched (see `indexes::index_facts`).
    index_facts_cache: cache::VersionCache<indexes::IndexFacts>,
    /// Per (dataset, filter): the rows the filter admits at the version last searched (see
    /// `admitted_rows`).
    admitted_cache: cache::VersionCache<Arc<RowFilter>>,
    /// Per (dataset, column and filter): the index's graph nodes the filter admits (see
    /// `indexes::node_mask`).
    node_mask_cache: cache::VersionCache<Option<Arc<indexes::NodeMask>>>,
    /// HNSW partitions laid out for our walk (see `indexes::SqWalks`).
    sq_walks: Arc<indexes::SqWalks>,
}

/// See `Store::latest`.
#[derive(Default)]
struct LatestDatasets {
    datasets: std::collections::HashMap<String, Dataset>,
    /// How many times each table's entry was forgotten (dropped, created again, restored).
    /// A read that opened a table before it was forgotten may hold an earlier table of that
    /// name, with higher version numbers than the new one's: it is not remembered.
    forgotten: std::collections::HashMap<String, u64>,
}

impl LatestDatasets {
    fn generation(&self, table: &str) -> u64 {
        self.forgotten.get(table).copied().unwrap_or(0)
    }
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| {
            Error::internal(format!("cannot create data directory {}: {e}", root.display()))
        })?;
        // Files of tables dropped while a previous run was removing them.
        let trash = root.join(TRASH_DIR);
        if trash.exists() {
            if let Err(e) = std::fs::remove_dir_all(&trash) {
                tracing::warn!(path = %trash.display(), error = %e, "cannot remove dropped tables' files");
            }
        }
        Ok(Store {
            root,
            session: Arc::new(Session::default()),
            latest: Default::default(),
            index_facts_cache: cache::VersionCache::new(256),
            // A row set is 8 bytes a row: 32 of 1M-row tables are 256 MB at most.
            admitted_cache: cache::VersionCache::new(32),
            node_mask_cache: cache::VersionCache::new(32),
            sq_walks: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, table: &str) -> PathBuf {
        self.root.join(format!("{table}{DATASET_SUFFIX}"))
    }

    fn uri(&self, table: &str) -> String {
        self.path(table).to_string_lossy().into_owned()
    }

    pub fn exists(&self, table: &str) -> bool {
        self.path(table).join("_versions").is_dir()
    }

    /// Table names, sorted: every `<name>.lance` dataset directory under the root.
    pub fn list(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| {
            Error::internal(format!("cannot read data directory {}: {e}", self.root.display()))
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let table = name.strip_suffix(DATASET_SUFFIX)?.to_string();
                self.exists(&table).then_some(table)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Remembers a dataset this store has just written (writers of a table are serialised
    /// with its drop, so it is the current table's).
    fn remember(&self, table: &str, dataset: &Dataset) {
        let generation = self.generation(table);
        self.remember_opened(table, dataset, generation);
    }

    /// The table's forget count now; see `remember_opened`.
    fn generation(&self, table: &str) -> u64 {
        self.latest.lock().expect("dataset cache poisoned").generation(table)
    }

    /// Remembers `dataset`, opened when the table's forget count was `generation`, unless it
    /// was forgotten since (the dataset may be of a dropped table) or a newer one is known.
    fn remember_opened(&self, table: &str, dataset: &Dataset, generation: u64) {
        let mut latest = self.latest.lock().expect("dataset cache poisoned");
        let newer = latest.datasets.get(table).is_none_or(|d| d.version().version <= dataset.version().version);
        if newer && latest.generation(table) == generation {
            latest.datasets.insert(table.to_string(), dataset.clone());
        }
    }

    fn forget(&self, table: &str) {
        {
            let mut latest = self.latest.lock().expect("dataset cache poisoned");
            // Counted for tables that exist or were known (a read of a name that never existed
            // must not grow the map).
            if latest.datasets.remove(table).is_some() || self.exists(table) {
                *latest.forgotten.entry(table.to_string()).or_default() += 1;
            }
        }
        let uri = self.uri(table);
        self.index_facts_cache.forget(&uri);
        self.admitted_cache.forget(&uri);
        self.node_mask_cache.forget(&uri);
    }

    /// Makes sure the remembered latest version of `table` is the one on disk. Writers call it
    /// under the table's write lock before they read their base version: a write that
    /// committed but never reached `remember` (its task died between the two) must not leave
    /// the next write basing itself on the version before, where an upsert of the same id
    /// would insert it a second time.
    pub async fn refresh_latest(&self, table: &str) {
        let cached = self.latest.lock().expect("dataset cache poisoned").datasets.get(table).cloned();
        if let Some(dataset) = cached {
            // One existence check of manifest N+1 (listing every version grows with the table).
            if !matches!(dataset.has_successor_version().await, Ok(false)) {
                tracing::warn!(table, version = dataset.version().version, "the remembered latest version was behind the disk; reloading");
                self.forget(table);
            }
        }
    }

    /// Opens the latest version, or `version` when given.
    pub async fn dataset(&self, table: &str, version: Option<u64>) -> Result<Dataset> {
        if !self.exists(table) {
            self.forget(table);
            return Err(Error::not_found(format!("table '{table}' does not exist")));
        }
        let generation = {
            let latest = self.latest.lock().expect("dataset cache poisoned");
            if let (None, Some(d)) = (version, latest.datasets.get(table)) {
                return Ok(d.clone());
            }
            latest.generation(table)
        };
        let mut builder = DatasetBuilder::from_uri(self.uri(table)).with_session(self.session.clone());
        if let Some(v) = version {
            builder = builder.with_version(v);
        }
        let dataset = builder.load().await.map_err(|e| match version {
            // Dropped while it was being opened (its files went mid-read).
            _ if !self.exists(table) => Error::not_found(format!("table '{table}' does not exist (it was dropped as this call opened it)")),
            // The table exists (checked above), so a missing manifest means a missing version.
            Some(v) if matches!(
                e,
                lance::Error::VersionNotFound { .. } | lance::Error::NotFound { .. } | lance::Error::DatasetNotFound { .. }
            ) => {
                Error::not_found(format!("table '{table}' has no version {v} (see the `versions` action)"))
            }
            _ => lance_error(e),
        })?;
        if version.is_none() {
            self.remember_opened(table, &dataset, generation);
        }
        Ok(dataset)
    }

    fn params(&self, mode: WriteMode) -> WriteParams {
        WriteParams { mode, session: Some(self.session.clone()), ..Default::default() }
    }

    /// Writes `batches` as a new version: a new table (Create), added rows (Append), or the
    /// table's whole new content (Overwrite). One commit: all rows or none.
    pub async fn write(
        &self,
        table: &str,
        mode: WriteMode,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<Dataset> {
        let creating = matches!(mode, WriteMode::Create);
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        let dataset = Dataset::write(reader, self.uri(table).as_str(), Some(self.params(mode)))
            .await
            .map_err(|e| match e {
                lance::Error::DatasetAlreadyExists { .. } => {
                    Error::already_exists(format!("table '{table}' already exists"))
                }
                e => lance_error(e),
            })?;
        if creating {
            // A table of this name may have been dropped and made again.
            self.forget(table);
        }
        self.remember(table, &dataset);
        Ok(dataset)
    }

    /// Inserts rows whose `key` is new; rows whose key is stored are replaced (or fail the
    /// whole merge). One commit.
    pub async fn merge(
        &self,
        table: &str,
        dataset: Dataset,
        keys: &[&str],
        on_match: OnMatch,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<(Dataset, MergeCounts)> {
        let mut builder = MergeInsertBuilder::try_new(Arc::new(dataset), keys.iter().map(|k| k.to_string()).collect())
            .map_err(lance_error)?;
        builder
            .when_matched(match on_match {
                OnMatch::Replace => WhenMatched::UpdateAll,
                OnMatch::Fail => WhenMatched::Fail,
            })
            .when_not_matched(WhenNotMatched::InsertAll);
        let job = builder.try_build().map_err(lance_error)?;
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        let (dataset, stats) = job.execute_reader(reader).await.map_err(|e| match on_match {
            // Lance reports a key collision under WhenMatched::Fail only in its message.
            OnMatch::Fail if e.to_string().contains("found matching row") => Error::already_exists(format!(
                "append: some `{}` values already exist in the table; use mode \"upsert\" to replace them",
                keys.join(", ")
            )),
            _ => lance_error(e),
        })?;
        let dataset = Arc::try_unwrap(dataset).unwrap_or_else(|d| (*d).clone());
        self.remember(table, &dataset);
        Ok((dataset, MergeCounts { inserted: stats.num_inserted_rows, updated: stats.num_updated_rows }))
    }

    /// Deletes the rows matching `filter`; returns how many and the new dataset.
    pub async fn delete(&self, table: &str, mut dataset: Dataset, filter: &str) -> Result<(u64, Dataset)> {
        check_filter(filter)?;
        let result = dataset.delete(filter).await.map_err(|e| lance_query_error(e, filter))?;
        let dataset = Arc::try_unwrap(result.new_dataset).unwrap_or_else(|d| (*d).clone());
        self.remember(table, &dataset);
        Ok((result.num_deleted_rows, dataset))
    }

    /// Makes `version` the latest, as a new version.
    pub async fn restore(&self, table: &str, version: u64) -> Result<Dataset> {
        let mut old = self.dataset(table, Some(version)).await?;
        old.restore().await.map_err(lance_error)?;
        self.forget(table);
        self.dataset(table, None).await
    }

    /// Removes the table's directory and every version in it.
    pub async fn drop_table(&self, table: &str) -> Result<()> {
        if !self.exists(table) {
            return Err(Error::not_found(format!("table '{table}' does not exist")));
        }
        self.forget(table);
        // Renamed first (one atomic step), so readers see the table either whole or gone,
        // never a directory whose manifests are half deleted; then removed at leisure.
        let trash = self.root.join(TRASH_DIR);
        std::fs::create_dir_all(&trash).map_err(|e| Error::internal(format!("cannot create {}: {e}", trash.display())))?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let doomed = trash.join(format!("{table}-{nanos}"));
        std::fs::rename(self.path(table), &doomed).map_err(|e| Error::internal(format!("cannot remove table '{table}': {e}")))?;
        if let Err(e) = tokio::fs::remove_dir_all(&doomed).await {
            // The table is gone for every reader already; only disk space is left behind
            // (removed at the next start).
            tracing::warn!(table, path = %doomed.display(), error = %e, "dropped table's files not removed");
        }
        Ok(())
    }

    /// Drops the index `name`; returns the new dataset version.
    pub async fn drop_index(&self, table: &str, mut dataset: Dataset, name: &str) -> Result<Dataset> {
        dataset.drop_index(name).await.map_err(lance_error)?;
        self.remember(table, &dataset);
        Ok(dataset)
    }

    pub async fn versions(&self, dataset: &Dataset) -> Result<Vec<lance::dataset::Version>> {
        let mut versions = dataset.versions().await.map_err(lance_error)?;
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    pub async fn count_rows(&self, dataset: &Dataset, filter: Option<String>) -> Result<u64> {
        if let Some(f) = &filter {
            check_filter(f)?;
        }
        let f = filter.clone();
        dataset
            .count_rows(filter)
            .await
            .map(|n| n as u64)
            .map_err(|e| match f {
                Some(f) => lance_query_error(e, &f),
                None => lance_error(e),
            })
    }

    pub async fn indexes(&self, dataset: &Dataset) -> Result<Vec<IndexEntry>> {
        use lance::index::DatasetIndexInternalExt;
        let indexes = dataset.load_indices().await.map_err(lance_error)?;
        let schema = dataset.schema();
        let mut entries: Vec<IndexEntry> = Vec::with_capacity(indexes.len());
        for index in indexes.iter() {
            // `optimize` adds segments to an index (rows put since it was built): one entry each.
            if entries.iter().any(|e| e.name == index.name) {
                continue;
            }
            let columns: Vec<String> =
                index.fields.iter().filter_map(|id| schema.field_by_id(*id).map(|f| f.name.clone())).collect();
            let details = index.index_details.as_ref().map(|d| d.type_url.rsplit('.').next().unwrap_or_default());
            let vector = details == Some("VectorIndexDetails");
            let index_type = match (details, columns.first()) {
                // Every vector index has the same details message; the opened index knows
                // its kind (IVF_PQ, IVF_HNSW_SQ, …).
                (Some("VectorIndexDetails"), Some(column)) => {
                    let metrics = lance_index::metrics::NoOpMetricsCollector;
                    let opened = dataset.open_vector_index(column, &index.uuid, &metrics).await.map_err(lance_error)?;
                    opened.index_type().to_string()
                }
                (details, _) => details.unwrap_or_default().to_string(),
            };
            entries.push(IndexEntry { name: index.name.clone(), columns, index_type, vector });
        }
        Ok(entries)
    }

    /// The rows of `dataset` that `filter` admits (a search's prefilter), worked out once per
    /// version: a scan of the filter's columns costs milliseconds, a search far less.
    pub async fn admitted_rows(&self, dataset: &Dataset, filter: &str) -> Result<Arc<RowFilter>> {
        let volatile = volatile_filter(filter);
        if let Some(rows) = self.admitted_cache.get(dataset, filter).filter(|_| !volatile) {
            return Ok(rows);
        }
        let spec = ScanSpec { filter: Some(filter.to_string()), columns: Some(Vec::new()), limit: None, with_row_id: true };
        let (_, mut batches) = self.scan(dataset, &spec).await?;
        let mut ids = Vec::new();
        while let Some(batch) = batches.try_next().await? {
            ids.extend_from_slice(row_ids(&batch)?);
        }
        let rows = Arc::new(RowFilter::new(ids));
        if !volatile {
            self.admitted_cache.insert(dataset, filter, rows.clone());
        }
        Ok(rows)
    }

    /// Streams the rows of `dataset` that `spec` selects. Errors in the filter or column
    /// list surface here, before any row is sent.
    pub async fn scan(
        &self,
        dataset: &Dataset,
        spec: &ScanSpec,
    ) -> Result<(SchemaRef, BoxStream<'static, Result<RecordBatch>>)> {
        let mut scanner = dataset.scan();
        if let Some(columns) = &spec.columns {
            scanner.project(columns).map_err(|e| Error::invalid(format!("columns: {}", short(&e))))?;
        }
        if let Some(filter) = &spec.filter {
            check_filter(filter)?;
            scanner.filter(filter).map_err(|e| lance_query_error(e, filter))?;
        }
        if let Some(limit) = spec.limit {
            let limit = i64::try_from(limit).map_err(|_| Error::invalid("limit is too large"))?;
            scanner.limit(Some(limit), None).map_err(lance_error)?;
        }
        if spec.with_row_id {
            scanner.with_row_id();
        }
        // Blob columns come back as their bytes, not as blob descriptions.
        scanner.blob_handling(lance::datatypes::BlobHandling::AllBinary);
        let query_error = |e| match &spec.filter {
            Some(f) => lance_query_error(e, f),
            None => lance_error(e),
        };
        let schema = scanner.schema().await.map_err(query_error)?;
        let stream = scanner.try_into_stream().await.map_err(query_error)?;
        // A filter can also fail on the rows it meets (a division by zero, an overflow): that
        // is still the filter's error, not the server's.
        let (filter, uri) = (spec.filter.clone(), dataset.uri().to_string());
        let stream = stream
            .map_err(move |e| match &filter {
                _ if dropped(&uri) => dropped_error(),
                Some(f) => lance_query_error(e, f),
                None => lance_error(e),
            })
            .and_then(|batch| async move { client_batch(batch) });
        Ok((Arc::new(client_schema(&schema)), stream.boxed()))
    }
}

/// `columns` of the rows with these Lance row ids, in the given order. Blob columns are
/// read through Lance's blob files (a take returns only their descriptions).
pub async fn take_rows(dataset: &Dataset, row_ids: &[u64], columns: &[String]) -> Result<Vec<arrow_array::ArrayRef>> {
    take_rows_of(dataset, row_ids, columns).await.map_err(|e| if dropped(dataset.uri()) { dropped_error() } else { e })
}

/// Whether the table at `uri` was dropped: the files of a read in progress are gone.
fn dropped(uri: &str) -> bool {
    !Path::new(uri).exists()
}

fn dropped_error() -> Error {
    Error::not_found("the table was dropped while this read was in progress")
}

async fn take_rows_of(dataset: &Dataset, row_ids: &[u64], columns: &[String]) -> Result<Vec<arrow_array::ArrayRef>> {
    let schema = dataset_schema(dataset);
    let (blobs, plain): (Vec<&String>, Vec<&String>) =
        columns.iter().partition(|c| schema.field_with_name(c).is_ok_and(is_blob));
    let mut taken: std::collections::HashMap<&String, arrow_array::ArrayRef> = std::collections::HashMap::new();
    if !plain.is_empty() {
        let projection = lance::dataset::ProjectionRequest::from_columns(&plain, dataset.schema());
        let batch = client_batch(dataset.take_rows(row_ids, projection).await.map_err(lance_error)?)?;
        for c in &plain {
            let column = batch.column_by_name(c).ok_or_else(|| Error::internal(format!("take lost column {c}")))?;
            taken.insert(c, column.clone());
        }
    }
    let shared = Arc::new(dataset.clone());
    for c in blobs {
        let files = shared.take_blobs(row_ids, c.as_str()).await.map_err(lance_error)?;
        let mut values = arrow_array::builder::LargeBinaryBuilder::new();
        for file in files {
            match file {
                Some(f) => values.append_value(f.read().await.map_err(lance_error)?),
                None => values.append_null(),
            }
        }
        taken.insert(c, Arc::new(values.finish()));
    }
    columns.iter().map(|c| taken.remove(c).ok_or_else(|| Error::internal(format!("take lost column {c}")))).collect()
}

/// A filter over the clock or chance admits other rows each time: what it admits is not
/// cached.
fn volatile_filter(filter: &str) -> bool {
    // SQL lets spaces and comments sit between a function's name and its parenthesis.
    let lowered = filter.to_ascii_lowercase();
    let (mut compact, mut rest) = (String::with_capacity(lowered.len()), lowered.as_str());
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, tail)| tail);
        } else if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, tail)| tail);
        } else {
            if !c.is_whitespace() {
                compact.push(c);
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    ["now(", "today(", "random(", "uuid(", "current_date", "current_time", "to_unixtime("].iter().any(|f| compact.contains(f))
}

/// Lance parses a filter as one SQL expression and ignores whatever follows a `;` ("true;
/// garbage" selects every row): refused instead, so a filter means what it says.
fn check_filter(filter: &str) -> Result<()> {
    let mut quote: Option<char> = None;
    for c in filter.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, ';') => {
                return Err(Error::invalid(format!(
                    "invalid filter '{}': a filter is one SQL expression; remove the ';' and what follows it",
                    crate::error::quoted(filter)
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A Lance error raised while planning a user's filter: almost always the filter itself, so
/// anything but a storage (I/O) or not-found failure is reported as the filter's fault.
fn lance_query_error(e: lance::Error, filter: &str) -> Error {
    use crate::error::ErrorKind;
    // Reading the rows can fail too (a file gone or damaged): that is the server's failure.
    let storage_failure = matches!(e, lance::Error::IO { .. } | lance::Error::CorruptFile { .. });
    let mapped = lance_error(e);
    let storage_failure = storage_failure || (mapped.kind == ErrorKind::Internal && mapped.message.contains("I/O"));
    match mapped.kind {
        ErrorKind::InvalidArgument | ErrorKind::Internal if !storage_failure => {
            Error::invalid(format!("invalid filter '{}': {}", crate::error::quoted(filter), mapped.message))
        }
        _ => mapped,
    }
}

fn short(e: &lance::Error) -> String {
    errors::strip_location(&e.to_string())
}

const BLOB_META_KEY: &str = "lance-encoding:blob";
const BLOB_V2_EXTENSION: &str = "lance.blob.v2";

/// Whether Lance stores this field with its blob encoding.
pub fn is_blob(field: &arrow_schema::Field) -> bool {
    field.metadata().contains_key(BLOB_META_KEY)
        || field.metadata().get("ARROW:extension:name").is_some_and(|e| e == BLOB_V2_EXTENSION)
}

/// The schema clients see. Lance keeps JSON columns as JSONB (`lance.json` on large_binary)
/// and describes blob columns as structs; clients get `arrow.json` text and plain
/// large_binary back, the forms they sent.
pub fn client_schema(schema: &arrow_schema::Schema) -> arrow_schema::Schema {
    let fields: Vec<arrow_schema::Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if is_blob(f) {
                arrow_schema::Field::new(f.name(), arrow_schema::DataType::LargeBinary, f.is_nullable())
                    .with_metadata([(BLOB_META_KEY.to_string(), "true".to_string())].into())
            } else {
                lance_arrow::json::lance_json_to_arrow_json(f)
            }
        })
        .collect();
    arrow_schema::Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// A batch in the form clients see (see [`client_schema`]).
pub fn client_batch(batch: RecordBatch) -> Result<RecordBatch> {
    let has_jsonb = batch.schema().fields().iter().any(|f| lance_arrow::json::is_json_field(f));
    if !has_jsonb {
        return Ok(batch);
    }
    lance_arrow::json::convert_lance_json_to_arrow(&batch)
        .map_err(|e| Error::internal(format!("cannot decode a JSON column: {e}")))
}

/// The dataset's schema as clients see it.
pub fn dataset_schema(dataset: &Dataset) -> arrow_schema::Schema {
    client_schema(&arrow_schema::Schema::from(dataset.schema()))
}

/// Lance's stable row-id column, added by [`ScanSpec::with_row_id`].
pub const ROW_ID: &str = "_rowid";

/// The `_rowid` values of a scanned batch.
pub fn row_ids(batch: &RecordBatch) -> Result<&[u64]> {
    use arrow_array::cast::AsArray;
    let column = batch.column_by_name(ROW_ID).ok_or_else(|| Error::internal("scan lost _rowid"))?;
    Ok(column.as_primitive::<arrow_array::types::UInt64Type>().values())
}

/// A scanned batch of vectors as a row-major matrix view (no copy), with row ids and which
/// rows have a vector (a null row's slots hold arbitrary values and must be skipped).
pub struct VectorBlock<'a> {
    pub row_ids: &'a [u64],
    pub matrix: &'a [f32],
    pub valid: Vec<bool>,
}

pub fn vector_block<'a>(batch: &'a RecordBatch, column: &str, dim: usize) -> Result<VectorBlock<'a>> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    let list = batch
        .column_by_name(column)
        .ok_or_else(|| Error::internal(format!("scan lost {column}")))?
        .as_fixed_size_list();
    let start = list.value_offset(0) as usize;
    let values = list.values().as_primitive::<arrow_array::types::Float32Type>();
    Ok(VectorBlock {
        row_ids: row_ids(batch)?,
        matrix: &values.values()[start..start + list.len() * dim],
        valid: (0..list.len()).map(|i| list.is_valid(i)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_over_the_clock_or_chance_are_volatile() {
        for filter in ["random() < 0.5", "RANDOM ( ) < 0.5", "random\n() < 0.5", "random/**/() < 0.5", "random -- x\n() < 0.5", "ts < now ()", "d = current_date", "d >= Today()"] {
            assert!(volatile_filter(filter), "{filter}");
        }
        for filter in ["id = 'r-1'", "json_get_int(metadata, 'chapter') = 2", "n % 5 <> 0"] {
            assert!(!volatile_filter(filter), "{filter}");
        }
    }

    /// A read that opened a table before it was dropped and made again (the new table has
    /// lower version numbers) must not leave the dropped table as the name's latest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_from_before_a_drop_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new("n", arrow_schema::DataType::Int64, false)]));
        let rows = |n: i64| vec![RecordBatch::try_new(schema.clone(), vec![Arc::new(arrow_array::Int64Array::from(vec![n]))]).unwrap()];
        store.write("t", WriteMode::Create, schema.clone(), rows(1)).await.unwrap();
        for n in 2..=4 {
            store.write("t", WriteMode::Append, schema.clone(), rows(n)).await.unwrap();
        }
        // A slow reader: its count taken, then the table opened from disk (version 4, 4 rows).
        let generation = store.generation("t");
        let old = DatasetBuilder::from_uri(store.uri("t")).load().await.unwrap();
        assert_eq!(old.version().version, 4);
        store.drop_table("t").await.unwrap();
        store.write("t", WriteMode::Create, schema.clone(), rows(9)).await.unwrap();
        // The reader finishes after the drop and the new create.
        store.remember_opened("t", &old, generation);
        let latest = store.dataset("t", None).await.unwrap();
        assert_eq!((latest.version().version, latest.count_rows(None).await.unwrap()), (1, 1));
        // A read of a name that never existed leaves no count behind.
        assert!(store.dataset("never", None).await.is_err());
        assert!(!store.latest.lock().unwrap().forgotten.contains_key("never"));
    }

    #[test]
    fn a_semicolon_is_refused_outside_quotes_only() {
        assert!(check_filter("id = 'a;b' AND `c;d` = 1 AND \"e;f\" = 2").is_ok());
        assert!(check_filter("true; DELETE FROM t").is_err());
        assert!(check_filter("id = 'it''s'; true").is_err());
    }
}

//! Re-embedding: a table's rows that its model embedded under older weights get vectors from
//! the model's current version (after a layer write, a restore of `models`, a re-import).
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow_schema::SchemaRef;
use futures::TryStreamExt;
use hyprstream_proto::columns::{DATA_TYPE, EMBEDDING, EMBEDDING_MODEL_VERSION, RAW_DATA};
use hyprstream_proto::{PutMode, ReembedProgress};
use tokio::sync::mpsc;

use super::{table_embedding_model, validate_table_name, TableService};
use crate::error::{Error, Result};
use crate::store::{dataset_schema, ScanSpec};

/// Rows per commit: the write lock is held for one chunk's embedding at a time, so other
/// writes to the table interleave, and an interrupted run keeps what it committed.
const CHUNK: u64 = 512;

impl TableService {
    /// Re-embeds, chunk by chunk, the text rows whose `embedding_model_version` is set and
    /// differs from the model's current version. Each chunk is read, embedded and upserted
    /// under the table's write lock, so a row deleted or replaced meanwhile is never brought
    /// back. Rows sent with the client's own vector (no version) are left alone.
    pub async fn reembed(&self, table: &str, progress: mpsc::Sender<ReembedProgress>) -> Result<ReembedProgress> {
        validate_table_name(table)?;
        let started = Instant::now();
        let schema = dataset_schema(&self.store().dataset(table, None).await?);
        let model = table_embedding_model(&schema).ok_or_else(|| {
            Error::invalid(format!("table '{table}' has no embedding model: its vectors are the client's, nothing to re-embed"))
        })?;
        let mut report = ReembedProgress {
            stage: "started".into(),
            table: table.to_string(),
            model: model.clone(),
            model_version: String::new(),
            total: 0,
            done: 0,
            version: None,
            seconds: 0.0,
        };
        loop {
            if self.shutting_down() {
                return Err(Error::unavailable(format!(
                    "the server is stopping: {} of {} rows of '{table}' re-embedded and committed; run reembed again to finish",
                    report.done, report.total
                )));
            }
            let encoder = self.encoder(&model).await?;
            let _guard = self.write_lock(table).await?;
            let dataset = self.store().dataset(table, None).await?;
            // Dropped and made again with another model meanwhile: the put below would embed
            // with that one, and its rows would never stop looking stale.
            if table_embedding_model(&dataset_schema(&dataset)).as_deref() != Some(model.as_str()) {
                return Err(Error::failed_precondition(format!(
                    "table '{table}' no longer embeds with model '{model}' (it was dropped or made again during reembed); {} rows were re-embedded",
                    report.done
                )));
            }
            let stale = format!(
                "{EMBEDDING_MODEL_VERSION} IS NOT NULL AND {EMBEDDING_MODEL_VERSION} <> '{}' AND {DATA_TYPE} = 'text'",
                encoder.version
            );
            // At the start, and whenever the model's weights changed meanwhile (rows done
            // under the previous version are stale again): what is left to do.
            if report.model_version != encoder.version {
                report.model_version = encoder.version.clone();
                report.total = report.done + self.store().count_rows(&dataset, Some(stale.clone())).await?;
                if report.stage == "started" {
                    // Progress is cumulative: a message a slow reader misses is replaced by
                    // the next one, and the table's lock is never held waiting for the reader.
                    let _ = progress.try_send(report.clone());
                }
            }
            let spec = ScanSpec { filter: Some(stale), columns: None, limit: Some(CHUNK), with_row_id: false };
            let (schema, batches) = self.store().scan(&dataset, &spec).await?;
            // The rows as a client would send them: no table metadata (a put refuses the
            // model's key there).
            let schema = Arc::new(schema.as_ref().clone().with_metadata(Default::default()));
            let batches: Vec<RecordBatch> = batches.try_collect().await?;
            let batches = batches.iter().map(|b| without_vectors(&schema, b)).collect::<Result<Vec<_>>>()?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                break;
            }
            // Upserted without vectors: the put embeds them with the current model and stamps
            // its version, in one commit.
            let summary = self.put_locked(table, PutMode::Upsert, &schema, batches).await?;
            if summary.embedded == 0 {
                break;
            }
            report.done += summary.embedded;
            report.version = Some(summary.version);
            report.stage = "progress".into();
            report.seconds = started.elapsed().as_secs_f64();
            tracing::info!(table, model = %model, done = report.done, total = report.total, version = summary.version, "re-embedding");
            let _ = progress.try_send(report.clone());
        }
        report.stage = "done".into();
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(table, model = %model, rows = report.done, seconds = report.seconds, "re-embedded");
        Ok(report)
    }
}

/// The rows of `batch` that have text, as `schema`, with their vectors cleared (so the put
/// embeds them again).
fn without_vectors(schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
    let raw = batch.column_by_name(RAW_DATA).ok_or_else(|| Error::internal("a model table without raw_data"))?;
    let with_text = BooleanArray::from((0..batch.num_rows()).map(|i| raw.is_valid(i)).collect::<Vec<_>>());
    let batch = arrow::compute::filter_record_batch(batch, &with_text)?;
    let index = schema.index_of(EMBEDDING)?;
    let mut columns = batch.columns().to_vec();
    columns[index] = arrow::array::new_null_array(schema.field(index).data_type(), batch.num_rows());
    RecordBatch::try_new(schema.clone(), columns).map_err(Error::from)
}

//! DoPut: one stream of rows, validated as a whole, committed as one Lance version.
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::buffer::NullBuffer;
use arrow_schema::{DataType, Schema};
use hyprstream_proto::columns::{DATA_TYPE, EMBEDDING, EMBEDDING_MODEL_VERSION, ID, RAW_DATA};
use hyprstream_proto::model_columns::TABLE as MODELS_TABLE;
use hyprstream_proto::schema_keys::METRIC as TABLE_METRIC;
use hyprstream_proto::{Metric, PutMode, PutSummary};
use lance::dataset::WriteMode;

use super::ingest::{self, Ingest};
use super::{table_embedding_model, table_metric, validate_table_name, TableService};
use crate::error::{Error, Result};
use crate::store::{dataset_schema, OnMatch};

impl TableService {
    /// Applies a put. Validation covers every row before anything is written, and the write
    /// is a single commit, so a failing put leaves the table exactly as it was.
    pub async fn put(&self, table: &str, mode: PutMode, input: &Schema, batches: Vec<RecordBatch>) -> Result<PutSummary> {
        validate_table_name(table)?;
        if table == MODELS_TABLE {
            return self.put_model_layers(mode, input, batches).await;
        }
        let _guard = self.write_lock(table).await?;
        self.put_locked(table, mode, input, batches).await
    }

    /// A put by a caller that holds `table`'s write lock (and has checked its name).
    pub(crate) async fn put_locked(&self, table: &str, mode: PutMode, input: &Schema, batches: Vec<RecordBatch>) -> Result<PutSummary> {
        let existing = if self.store().exists(table) { Some(self.store().dataset(table, None).await?) } else { None };

        let summary = match (mode, existing) {
            (PutMode::Overwrite, Some(dataset)) if table_embedding_model(&dataset_schema(&dataset)).is_some() => {
                // A table with an embedding model keeps its schema (and model) on overwrite.
                let table_schema = dataset_schema(&dataset);
                let model = table_embedding_model(&table_schema).expect("matched");
                let metric = table_metric(&table_schema);
                if input.metadata().contains_key(TABLE_METRIC) && requested_metric(input)? != metric {
                    return Err(Error::invalid(format!(
                        "table '{table}' embeds with model '{model}' and ranks by {}; an overwrite keeps its schema and metric (drop the table and create_table it again to change them)",
                        metric.as_str()
                    )));
                }
                let (ingest, embedded, not_embedded) =
                    self.embed_missing(&model, ingest::prepare(input, batches, Some(&table_schema))?).await?;
                let rows = ingest.rows as u64;
                super::ensure_caller(table)?;
                let dataset = self.store().write(table, WriteMode::Overwrite, ingest.schema, ingest.batches).await?;
                PutSummary { embedded, not_embedded, ..written(table, rows, 0, &dataset) }
            }
            (PutMode::Overwrite, existing) => {
                // An overwrite replaces the schema: a metric it names is the table's from now on.
                let metric = match &existing {
                    Some(d) if !input.metadata().contains_key(TABLE_METRIC) => table_metric(&dataset_schema(d)),
                    _ => requested_metric(input)?,
                };
                let ingest = with_metric(ingest::prepare(input, batches, None)?, metric);
                let rows = ingest.rows as u64;
                let write_mode = if existing.is_some() { WriteMode::Overwrite } else { WriteMode::Create };
                super::ensure_caller(table)?;
                let dataset = self.store().write(table, write_mode, ingest.schema, ingest.batches).await?;
                written(table, rows, 0, &dataset)
            }
            (_, None) => {
                let metric = requested_metric(input)?;
                let ingest = with_metric(ingest::prepare(input, batches, None)?, metric);
                let rows = ingest.rows as u64;
                super::ensure_caller(table)?;
                let dataset = self.store().write(table, WriteMode::Create, ingest.schema, ingest.batches).await?;
                tracing::info!(table, rows, "table created by put");
                written(table, rows, 0, &dataset)
            }
            (mode, Some(dataset)) => {
                let table_schema = dataset_schema(&dataset);
                let metric = table_metric(&table_schema);
                if input.metadata().contains_key(TABLE_METRIC) && requested_metric(input)? != metric {
                    return Err(Error::invalid(format!(
                        "table '{table}' ranks by {}; an {} cannot change its metric (an overwrite can). Rows scanned from another table carry its metric as schema metadata '{TABLE_METRIC}' = '{}': drop that key to put them here",
                        metric.as_str(),
                        if mode == PutMode::Append { "append" } else { "upsert" },
                        requested_metric(input)?.as_str(),
                    )));
                }
                let ingest = ingest::prepare(input, batches, Some(&table_schema))?;
                if ingest.rows == 0 {
                    return Ok(written(table, 0, 0, &dataset));
                }
                let (ingest, embedded, not_embedded) = match table_embedding_model(&table_schema) {
                    Some(model) => self.embed_missing(&model, ingest).await?,
                    None => (ingest, 0, 0),
                };
                let on_match = if mode == PutMode::Append { OnMatch::Fail } else { OnMatch::Replace };
                super::ensure_caller(table)?;
                let (dataset, counts) =
                    self.store().merge(table, dataset, &[ID], on_match, ingest.schema, ingest.batches).await?;
                PutSummary { embedded, not_embedded, ..written(table, counts.inserted, counts.updated, &dataset) }
            }
        };
        tracing::info!(
            table,
            mode = ?mode,
            inserted = summary.inserted,
            updated = summary.updated,
            embedded = summary.embedded,
            not_embedded = summary.not_embedded,
            version = summary.version,
            "put committed"
        );
        Ok(summary)
    }

    /// Fills in the vectors of rows sent without one: `text` rows are embedded from their
    /// UTF-8 `raw_data` by the table's model (all in one batched pass, before the commit) and
    /// stamped with the model version in `embedding_model_version`. Other rows without a
    /// vector (images on a text model, text without `raw_data`) stay null and are counted.
    /// Returns the rows and (embedded, not embedded).
    async fn embed_missing(&self, model: &str, mut ingest: Ingest) -> Result<(Ingest, u64, u64)> {
        // The server maintains `embedding_model_version`: what a client sent there is dropped
        // (a row with the client's own vector has none).
        for batch in ingest.batches.iter_mut() {
            *batch = without_model_versions(batch)?;
        }
        let mut texts = Vec::new();
        let mut slots: Vec<(usize, usize)> = Vec::new();
        let mut not_embedded = 0u64;
        let mut offset = 0;
        for (b, batch) in ingest.batches.iter().enumerate() {
            let vectors = batch.column_by_name(EMBEDDING).expect("model tables have an embedding column");
            let types = batch.column_by_name(DATA_TYPE).map(|c| c.as_string::<i32>());
            let raw = batch.column_by_name(RAW_DATA).map(|c| c.as_binary::<i64>());
            for row in 0..batch.num_rows() {
                if vectors.is_valid(row) {
                    continue;
                }
                let is_text = types.is_some_and(|t| t.is_valid(row) && t.value(row) == "text");
                match raw {
                    Some(raw) if is_text && raw.is_valid(row) => {
                        let text = std::str::from_utf8(raw.value(row)).map_err(|_| {
                            Error::invalid(format!(
                                "row {}: data_type is 'text' but raw_data is not valid UTF-8; send the text as UTF-8 bytes",
                                offset + row
                            ))
                        })?;
                        texts.push(text.to_string());
                        slots.push((b, row));
                    }
                    _ => not_embedded += 1,
                }
            }
            offset += batch.num_rows();
        }
        if texts.is_empty() {
            return Ok((ingest, 0, not_embedded));
        }
        let embedded = texts.len() as u64;
        let (encoder, vectors) = self.embed(model, texts).await?;
        let dim = ingest.dim.or_else(|| super::table_dim(&ingest.schema)).unwrap_or(0);
        if encoder.dim != dim {
            return Err(Error::invalid(format!(
                "model '{model}' makes {}-d vectors but the table's dim is {dim}",
                encoder.dim
            )));
        }
        let mut by_batch: Vec<Vec<(usize, Vec<f32>)>> = vec![Vec::new(); ingest.batches.len()];
        for ((b, row), v) in slots.into_iter().zip(vectors) {
            by_batch[b].push((row, v));
        }
        for (batch, filled) in ingest.batches.iter_mut().zip(by_batch) {
            if filled.is_empty() {
                continue;
            }
            *batch = with_embeddings(batch, dim, &filled, &encoder.version)?;
        }
        Ok((ingest, embedded, not_embedded))
    }
}

/// `batch` with `embedding_model_version` all null (unchanged if it has none or is null already).
fn without_model_versions(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    match schema.index_of(EMBEDDING_MODEL_VERSION) {
        Ok(vi) if batch.column(vi).null_count() < batch.num_rows() => {
            let mut columns = batch.columns().to_vec();
            columns[vi] = arrow::array::new_null_array(schema.field(vi).data_type(), batch.num_rows());
            RecordBatch::try_new(schema, columns).map_err(Error::from)
        }
        _ => Ok(batch.clone()),
    }
}

/// `batch` with `filled` (row, vector) written into `embedding` and the model version into
/// `embedding_model_version`.
fn with_embeddings(batch: &RecordBatch, dim: usize, filled: &[(usize, Vec<f32>)], version: &str) -> Result<RecordBatch> {
    let schema = batch.schema();
    let index = schema.index_of(EMBEDDING)?;
    let old = batch.column(index).as_fixed_size_list();
    let mut values: Vec<f32> = old.values().as_primitive::<arrow::datatypes::Float32Type>().values().to_vec();
    let mut valid: Vec<bool> = (0..old.len()).map(|r| old.is_valid(r)).collect();
    let first = old.offset() * dim;
    for (row, vector) in filled {
        values[first + row * dim..first + (row + 1) * dim].copy_from_slice(vector);
        valid[*row] = true;
    }
    let values = values[first..first + old.len() * dim].to_vec();
    let DataType::FixedSizeList(item, _) = schema.field(index).data_type() else { unreachable!("checked by ingest") };
    let vectors = FixedSizeListArray::try_new(item.clone(), dim as i32, Arc::new(Float32Array::from(values)), Some(NullBuffer::from(valid)))?;
    let mut columns = batch.columns().to_vec();
    columns[index] = Arc::new(vectors);
    if let Ok(vi) = schema.index_of(EMBEDDING_MODEL_VERSION) {
        let old = batch.column(vi).as_string::<i32>();
        let mut versions: Vec<Option<String>> = old.iter().map(|v| v.map(String::from)).collect();
        for (row, _) in filled {
            versions[*row] = Some(version.to_string());
        }
        columns[vi] = Arc::new(StringArray::from(versions));
    }
    RecordBatch::try_new(schema, columns).map_err(Error::from)
}

/// The summary of a committed put (nothing embedded).
fn written(table: &str, inserted: u64, updated: u64, dataset: &lance::dataset::Dataset) -> PutSummary {
    PutSummary { table: table.to_string(), inserted, updated, version: dataset.version().version, embedded: 0, not_embedded: 0 }
}

/// A new table's metric: the stream's schema metadata `hyprstream.metric` if set, else cosine.
fn requested_metric(input: &Schema) -> Result<Metric> {
    match input.metadata().get(TABLE_METRIC) {
        None => Ok(Metric::default()),
        Some(m) => Metric::parse(m).ok_or_else(|| {
            Error::invalid(format!("schema metadata {TABLE_METRIC} = '{m}': use cosine, dot or l2"))
        }),
    }
}

fn with_metric(mut ingest: Ingest, metric: Metric) -> Ingest {
    let mut schema = (*ingest.schema).clone();
    schema.metadata.insert(TABLE_METRIC.to_string(), metric.as_str().to_string());
    let schema = Arc::new(schema);
    ingest.batches = ingest
        .batches
        .into_iter()
        // The sent schema's metadata may name another metric: the columns are what is kept.
        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()).expect("same columns"))
        .collect();
    ingest.schema = schema;
    ingest
}

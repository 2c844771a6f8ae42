//! DoPut: one stream of rows, validated as a whole, committed as one Lance version.
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_schema::Schema;
use hyprstream_proto::columns::ID;
use hyprstream_proto::schema_keys::METRIC as TABLE_METRIC;
use hyprstream_proto::{Metric, PutMode, PutSummary};
use lance::dataset::WriteMode;

use super::ingest::{self, Ingest};
use super::{table_metric, validate_table_name, TableService};
use crate::error::{Error, Result};
use crate::store::{dataset_schema, OnMatch};

impl TableService {
    /// Applies a put. Validation covers every row before anything is written, and the write
    /// is a single commit, so a failing put leaves the table exactly as it was.
    pub async fn put(&self, table: &str, mode: PutMode, input: &Schema, batches: Vec<RecordBatch>) -> Result<PutSummary> {
        validate_table_name(table)?;
        let _guard = self.write_lock(table).await;
        let existing = if self.store().exists(table) { Some(self.store().dataset(table, None).await?) } else { None };

        let summary = match (mode, existing) {
            (PutMode::Overwrite, existing) => {
                let metric = match &existing {
                    Some(d) => table_metric(&dataset_schema(d)),
                    None => requested_metric(input)?,
                };
                let ingest = with_metric(ingest::prepare(input, batches, None)?, metric);
                let rows = ingest.rows as u64;
                let write_mode = if existing.is_some() { WriteMode::Overwrite } else { WriteMode::Create };
                let dataset = self.store().write(table, write_mode, ingest.schema, ingest.batches).await?;
                PutSummary { table: table.to_string(), inserted: rows, updated: 0, version: dataset.version().version }
            }
            (_, None) => {
                let metric = requested_metric(input)?;
                let ingest = with_metric(ingest::prepare(input, batches, None)?, metric);
                let rows = ingest.rows as u64;
                let dataset = self.store().write(table, WriteMode::Create, ingest.schema, ingest.batches).await?;
                tracing::info!(table, rows, "table created by put");
                PutSummary { table: table.to_string(), inserted: rows, updated: 0, version: dataset.version().version }
            }
            (mode, Some(dataset)) => {
                let table_schema = dataset_schema(&dataset);
                let ingest = ingest::prepare(input, batches, Some(&table_schema))?;
                if ingest.rows == 0 {
                    let version = dataset.version().version;
                    return Ok(PutSummary { table: table.to_string(), inserted: 0, updated: 0, version });
                }
                let on_match = if mode == PutMode::Append { OnMatch::Fail } else { OnMatch::Replace };
                let (dataset, counts) =
                    self.store().merge(table, dataset, ID, on_match, ingest.schema, ingest.batches).await?;
                PutSummary {
                    table: table.to_string(),
                    inserted: counts.inserted,
                    updated: counts.updated,
                    version: dataset.version().version,
                }
            }
        };
        tracing::info!(
            table,
            mode = ?mode,
            inserted = summary.inserted,
            updated = summary.updated,
            version = summary.version,
            "put committed"
        );
        Ok(summary)
    }
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
        .map(|b| b.with_schema(schema.clone()).expect("only metadata differs"))
        .collect();
    ingest.schema = schema;
    ingest
}

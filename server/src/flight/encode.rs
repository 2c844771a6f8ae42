//! Domain results → Flight messages.
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, SchemaAsIpc};
use arrow_schema::{Schema, SchemaRef};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;
use tonic::Status;

use super::status::to_status;
use crate::error::Error;
use crate::service::BatchStream;

/// Largest FlightData message the server sends (batches are split to fit).
pub const MAX_FLIGHT_DATA_BYTES: usize = 4 << 20;

pub fn record_batches(schema: SchemaRef, batches: BatchStream) -> BoxStream<'static, Result<FlightData, Status>> {
    let batches = batches.map_err(|e| FlightError::Tonic(Box::new(to_status(e))));
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_max_flight_data_size(MAX_FLIGHT_DATA_BYTES)
        .build(batches)
        .map_err(Status::from)
        .boxed()
}

/// A schema in its IPC form (FlightInfo.schema, SchemaResult.schema).
pub fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let options = arrow::ipc::writer::IpcWriteOptions::default();
    let result: arrow_flight::SchemaResult = SchemaAsIpc::new(schema, &options)
        .try_into()
        .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))?;
    Ok(result.schema)
}

pub fn json_bytes<T: Serialize>(value: &T) -> Result<bytes::Bytes, Error> {
    serde_json::to_vec(value).map(Into::into).map_err(|e| Error::internal(format!("cannot encode result: {e}")))
}

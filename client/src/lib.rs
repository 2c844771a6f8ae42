//! Rust client for the Hyprstream Flight server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hyprstream_client::ClientError> {
//! use hyprstream_client::HyprstreamClient;
//! let mut client = HyprstreamClient::connect("grpc://127.0.0.1:50051").await?;
//! let hits = client.search("sherlock_data", vec![0.1; 384], 5).await?;
//! # Ok(()) }
//! ```
//!
//! The wire shapes (tickets, commands, action bodies and results) come from
//! `hyprstream-proto`; this crate shares no code with the server.
use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, ActionType, FlightClient, FlightDescriptor, FlightInfo, Ticket};
use futures::{Stream, TryStreamExt};
use hyprstream_proto::actions::{names, CreateTable, Delete, Embed, ImportModel, ModelFormat, ModelRef, NoArgs, Restore, TableRef};
use hyprstream_proto::{
    DeleteSummary, DropSummary, EmbedResult, Health, ImportProgress, Metric, ReembedProgress, ModelDescription, ModelSummary, PutCommand,
    PutMode, PutSummary, Query, RestoreSummary, SearchHit, TableDescription, TableSummary, VersionInfo,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use hyprstream_proto as proto;

/// Largest gRPC message sent or accepted (matches the server's limit).
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;
/// Batches are split into FlightData messages of at most this size.
const MAX_FLIGHT_DATA_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a gRPC error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("flight: {0}")]
    Flight(String),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC status code, when the server refused the call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

impl From<FlightError> for ClientError {
    fn from(e: FlightError) -> Self {
        match e {
            FlightError::Tonic(status) => ClientError::Status(status),
            FlightError::Arrow(e) => ClientError::Arrow(e),
            other => ClientError::Flight(other.to_string()),
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(Box::new(s))
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Result rows with the schema the server declared (present even when there are no rows).
#[derive(Debug, Clone)]
pub struct Rows {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Rows {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// All rows in one batch.
    pub fn concat(&self) -> Result<RecordBatch> {
        Ok(arrow::compute::concat_batches(&self.schema, &self.batches)?)
    }
}

#[derive(Debug)]
pub struct HyprstreamClient {
    flight: FlightClient,
}

/// `batch` as a batch of `schema`: its columns, in order, cast to the schema's types.
fn fit_to(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    let misfit = |e: String| ClientError::Protocol(format!("a batch does not match the put's schema: {e}"));
    if batch.num_columns() != schema.fields().len() {
        return Err(misfit(format!("it has {} columns, the schema {}", batch.num_columns(), schema.fields().len())));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| arrow::compute::cast(column, field.data_type()).map_err(|e| misfit(format!("column '{}': {e}", field.name()))))
        .collect::<Result<Vec<_>>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(|e| misfit(e.to_string()))
}

/// `grpc://host:port` (Flight's scheme) → `http://host:port` (tonic's).
fn endpoint_uri(url: &str) -> Result<String> {
    if let Some(rest) = url.strip_prefix("grpc://").or_else(|| url.strip_prefix("grpc+tcp://")) {
        Ok(format!("http://{rest}"))
    } else if url.starts_with("grpc+tls://") || url.starts_with("https://") {
        // This client has no TLS: connecting in plaintext instead would send data in the clear.
        Err(ClientError::Connect(format!("{url}: this client speaks plaintext gRPC only (grpc://host:port); TLS is not supported")))
    } else if url.contains("://") {
        Ok(url.to_string())
    } else {
        Ok(format!("http://{url}"))
    }
}

impl HyprstreamClient {
    /// Connects to `grpc://host:port` (or `http://…`, or `host:port`).
    pub async fn connect(url: &str) -> Result<Self> {
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint_uri(url)?)
            .map_err(|e| ClientError::Connect(format!("{url}: {e}")))?;
        let channel = endpoint.connect().await.map_err(|e| ClientError::Connect(format!("{url}: {e}")))?;
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(HyprstreamClient { flight: FlightClient::new_from_inner(inner) })
    }

    /// The underlying arrow-flight client, for calls this crate does not wrap.
    pub fn flight(&mut self) -> &mut FlightClient {
        &mut self.flight
    }

    pub async fn handshake(&mut self, payload: impl Into<bytes::Bytes>) -> Result<bytes::Bytes> {
        Ok(self.flight.handshake(payload).await?)
    }

    /// Upserts rows into `table` (created if absent) as one commit.
    pub async fn put(&mut self, table: &str, batches: Vec<RecordBatch>) -> Result<PutSummary> {
        self.put_with_mode(table, PutMode::Upsert, batches).await
    }

    pub async fn put_with_mode(&mut self, table: &str, mode: PutMode, batches: Vec<RecordBatch>) -> Result<PutSummary> {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| ClientError::Protocol("put needs at least one batch (its schema)".into()))?;
        // The row count goes with the put: the server refuses a stream that ends short.
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        self.put_counted(table, mode, schema, futures::stream::iter(batches.into_iter().map(Ok)), Some(rows)).await
    }

    /// Streams batches to `table`; the server commits them all at once when the stream ends.
    /// If `batches` fails, the call is cancelled and nothing is committed: the error is
    /// returned.
    pub async fn put_stream<S>(&mut self, table: &str, mode: PutMode, schema: SchemaRef, batches: S) -> Result<PutSummary>
    where
        S: Stream<Item = Result<RecordBatch>> + Send + 'static,
    {
        self.put_counted(table, mode, schema, batches, None).await
    }

    async fn put_counted<S>(&mut self, table: &str, mode: PutMode, schema: SchemaRef, batches: S, rows: Option<u64>) -> Result<PutSummary>
    where
        S: Stream<Item = Result<RecordBatch>> + Send + 'static,
    {
        let command = PutCommand { table: table.to_string(), mode, rows };
        let descriptor = FlightDescriptor::new_cmd(serde_json::to_vec(&command).expect("serialisable"));
        // arrow-flight ends the upload normally at the first failed item, and the server would
        // commit what it had. Instead the stream stops there without ending, and the call is
        // dropped (the HTTP/2 stream is reset, so the server refuses the put).
        let (failed_tx, failed_rx) = futures::channel::oneshot::channel::<ClientError>();
        let declared = schema.clone();
        let batches = futures::stream::unfold((Box::pin(batches), Some(failed_tx)), move |(mut batches, failed)| {
            let declared = declared.clone();
            async move {
            // A batch that does not fit the declared schema would fail inside the encoder,
            // which (like an input error) ends the upload normally: fitted here instead, as
            // the encoder does (each column cast to the declared type), so a misfit cancels
            // the call.
            let next = futures::StreamExt::next(&mut batches).await.map(|item| item.and_then(|batch| fit_to(&declared, batch)));
            match next {
                Some(Ok(batch)) => Some((Ok(batch), (batches, failed))),
                Some(Err(e)) => {
                    if let Some(failed) = failed {
                        let _ = failed.send(e);
                    }
                    futures::future::pending().await
                }
                None => None,
            }
            }
        });
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(MAX_FLIGHT_DATA_BYTES)
            .with_flight_descriptor(Some(descriptor))
            .build(batches.map_err(|e: ClientError| FlightError::ExternalError(Box::new(e))));
        let call = std::pin::pin!(self.flight.do_put(data));
        let mut results = match futures::future::select(call, failed_rx).await {
            futures::future::Either::Left((results, _)) => results?,
            futures::future::Either::Right((Ok(e), _)) => return Err(e),
            // The batches ended without failing: the call decides.
            futures::future::Either::Right((Err(_), call)) => call.await?,
        };
        let result = results
            .try_next()
            .await?
            .ok_or_else(|| ClientError::Protocol("DoPut returned no PutResult".into()))?;
        serde_json::from_slice(&result.app_metadata)
            .map_err(|e| ClientError::Protocol(format!("PutResult metadata is not a put summary: {e}")))
    }

    /// Runs a scan or search ticket.
    pub async fn query(&mut self, query: &Query) -> Result<Rows> {
        self.query_ticket(query.to_json()).await
    }

    /// DoGet of a ticket built by the caller (any JSON the protocol accepts, e.g. a base64
    /// `vector`), read to the end.
    pub async fn query_ticket(&mut self, ticket: impl Into<bytes::Bytes>) -> Result<Rows> {
        let mut stream = self.flight.do_get(Ticket::new(ticket)).await?;
        let mut batches = Vec::new();
        while let Some(batch) = stream.try_next().await? {
            batches.push(batch);
        }
        let schema = stream
            .schema()
            .cloned()
            .ok_or_else(|| ClientError::Protocol("DoGet stream carried no schema".into()))?;
        Ok(Rows { schema, batches })
    }

    pub async fn scan(&mut self, table: &str) -> Result<Rows> {
        self.query(&Query::scan(table)).await
    }

    /// The k rows nearest `vector`, best first, with a `_distance` column.
    pub async fn search(&mut self, table: &str, vector: Vec<f32>, k: usize) -> Result<Rows> {
        self.query(&Query::search(table, vector, k)).await
    }

    /// The k rows nearest each of `vectors`, in one pass over the table: one stream with a
    /// `_query` column (the query's position in `vectors`), grouped by query, best first.
    pub async fn search_batch(&mut self, table: &str, vectors: Vec<Vec<f32>>, k: usize) -> Result<Rows> {
        self.query(&Query::search_batch(table, vectors, k)).await
    }

    /// Runs an action with a JSON body; returns each result body.
    pub async fn action_raw(&mut self, name: &str, body: impl Into<bytes::Bytes>) -> Result<Vec<bytes::Bytes>> {
        let stream = self.flight.do_action(Action::new(name, body)).await?;
        Ok(stream.try_collect().await?)
    }

    /// Runs an action whose single result is a JSON document of type `T`.
    pub async fn action<B: Serialize, T: DeserializeOwned>(&mut self, name: &str, body: &B) -> Result<T> {
        let body = serde_json::to_vec(body).expect("serialisable");
        let results = self.action_raw(name, body).await?;
        let first = results
            .first()
            .ok_or_else(|| ClientError::Protocol(format!("action '{name}' returned no result")))?;
        serde_json::from_slice(first).map_err(|e| ClientError::Protocol(format!("action '{name}' result: {e}")))
    }

    pub async fn create_table(&mut self, name: &str, dim: usize, metric: Metric) -> Result<TableDescription> {
        let req = CreateTable { name: name.into(), dim: Some(dim), metric, embedding_model: None };
        self.action(names::CREATE_TABLE, &req).await
    }

    /// A table whose rows and `"text"` queries are embedded by a stored model (dim from the model).
    pub async fn create_table_with_model(&mut self, name: &str, model: &str, metric: Metric) -> Result<TableDescription> {
        let req = CreateTable { name: name.into(), dim: None, metric, embedding_model: Some(model.into()) };
        self.action(names::CREATE_TABLE, &req).await
    }

    /// The k rows nearest to `text` (embedded by the table's model), best first.
    pub async fn search_text(&mut self, table: &str, text: &str, k: usize) -> Result<Rows> {
        self.query(&Query::search_text(table, text, k)).await
    }

    /// Re-embeds the table's rows embedded under an older version of its model (the whole
    /// progress stream, ending with `done`).
    pub async fn reembed(&mut self, table: &str) -> Result<Vec<ReembedProgress>> {
        let body = serde_json::json!({ "table": table }).to_string();
        self.action_raw(names::REEMBED, body)
            .await?
            .iter()
            .map(|r| serde_json::from_slice(r).map_err(|e| ClientError::Protocol(format!("reembed result: {e}"))))
            .collect()
    }

    /// Imports a Hugging Face model directory (a path on the server) into the `models` table;
    /// returns every progress message, the last being `done`.
    pub async fn import_model(&mut self, name: &str, path: &str) -> Result<Vec<ImportProgress>> {
        let body = serde_json::to_vec(&ImportModel { name: name.into(), path: path.into(), format: ModelFormat::Auto })
            .expect("serialisable");
        self.action_raw(names::IMPORT_MODEL, body)
            .await?
            .iter()
            .map(|r| serde_json::from_slice(r).map_err(|e| ClientError::Protocol(format!("import_model result: {e}"))))
            .collect()
    }

    pub async fn list_models(&mut self) -> Result<Vec<ModelSummary>> {
        self.action(names::LIST_MODELS, &NoArgs {}).await
    }

    pub async fn describe_model(&mut self, name: &str) -> Result<ModelDescription> {
        self.action(names::DESCRIBE_MODEL, &ModelRef { name: name.into() }).await
    }

    pub async fn drop_model(&mut self, name: &str) -> Result<ModelSummary> {
        self.action(names::DROP_MODEL, &ModelRef { name: name.into() }).await
    }

    /// Unit-length embeddings of `texts` from a stored model.
    pub async fn embed(&mut self, model: &str, texts: &[&str]) -> Result<EmbedResult> {
        let req = Embed { model: model.into(), texts: texts.iter().map(|t| t.to_string()).collect() };
        self.action(names::EMBED, &req).await
    }

    pub async fn drop_table(&mut self, name: &str) -> Result<DropSummary> {
        self.action(names::DROP_TABLE, &TableRef { name: name.into() }).await
    }

    pub async fn list_tables(&mut self) -> Result<Vec<TableSummary>> {
        self.action(names::LIST_TABLES, &NoArgs {}).await
    }

    pub async fn describe_table(&mut self, name: &str) -> Result<TableDescription> {
        self.action(names::DESCRIBE_TABLE, &TableRef { name: name.into() }).await
    }

    pub async fn delete(&mut self, table: &str, filter: &str) -> Result<DeleteSummary> {
        self.action(names::DELETE, &Delete { table: table.into(), filter: filter.into() }).await
    }

    pub async fn versions(&mut self, table: &str) -> Result<Vec<VersionInfo>> {
        self.action(names::VERSIONS, &TableRef { name: table.into() }).await
    }

    pub async fn restore(&mut self, table: &str, version: u64) -> Result<RestoreSummary> {
        self.action(names::RESTORE, &Restore { table: table.into(), version }).await
    }

    pub async fn health(&mut self) -> Result<Health> {
        self.action(names::HEALTH, &NoArgs {}).await
    }

    /// The `search` action: hits as JSON structs (what grpcurl users get).
    pub async fn search_hits(&mut self, query: &Query) -> Result<Vec<SearchHit>> {
        self.action(names::SEARCH, query).await
    }

    pub async fn list_actions(&mut self) -> Result<Vec<ActionType>> {
        Ok(self.flight.list_actions().await?.try_collect().await?)
    }

    pub async fn list_flights(&mut self) -> Result<Vec<FlightInfo>> {
        Ok(self.flight.list_flights(bytes::Bytes::new()).await?.try_collect().await?)
    }

    pub async fn flight_info(&mut self, descriptor: FlightDescriptor) -> Result<FlightInfo> {
        Ok(self.flight.get_flight_info(descriptor).await?)
    }

    pub async fn schema(&mut self, descriptor: FlightDescriptor) -> Result<Schema> {
        Ok(self.flight.get_schema(descriptor).await?)
    }
}

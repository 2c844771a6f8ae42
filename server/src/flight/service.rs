//! `FlightService` for Hyprstream.
use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use hyprstream_proto::{PutCommand, Query, ACTIONS};
use tonic::{Request, Response, Status, Streaming};

use super::auth::Authenticator;
use super::encode::{json_bytes, record_batches, schema_bytes};
use super::request::{parse_descriptor, parse_put_descriptor, parse_ticket, Target, TicketRequest};
use super::status::to_status;
use super::actions;
use crate::error::Error;
use crate::service::TableService;

type Stream<T> = BoxStream<'static, Result<T, Status>>;

pub struct HyprstreamFlight {
    tables: Arc<TableService>,
    auth: Arc<dyn Authenticator>,
    /// See `ServerConfig::max_put_bytes`.
    max_put_bytes: usize,
}

impl HyprstreamFlight {
    pub fn new(tables: Arc<TableService>, auth: Arc<dyn Authenticator>, max_put_bytes: usize) -> Self {
        HyprstreamFlight { tables, auth, max_put_bytes }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.auth.authorize(request.metadata()).map_err(to_status)
    }

    /// FlightInfo for a whole table: its schema, row count and a ticket that scans it.
    async fn table_info(&self, table: &str) -> Result<FlightInfo, Status> {
        let (schema, rows) = self.tables.schema(table).await.map_err(to_status)?;
        let ticket = Query::scan(table).to_json();
        Ok(FlightInfo {
            schema: schema_bytes(&schema)?,
            flight_descriptor: Some(FlightDescriptor::new_path(vec![table.to_string()])),
            endpoint: vec![FlightEndpoint::new().with_ticket(Ticket::new(ticket))],
            total_records: rows as i64,
            total_bytes: -1,
            ordered: false,
            app_metadata: Default::default(),
        })
    }

    /// FlightInfo for a query command: the result schema and the query as its ticket.
    async fn query_info(&self, descriptor: FlightDescriptor, query: Query) -> Result<FlightInfo, Status> {
        let schema = self.tables.query_schema(&query).await.map_err(to_status)?;
        Ok(FlightInfo {
            schema: schema_bytes(&schema)?,
            flight_descriptor: Some(descriptor),
            endpoint: vec![FlightEndpoint::new().with_ticket(Ticket::new(query.to_json()))],
            total_records: -1,
            total_bytes: -1,
            // Search results come best first.
            ordered: query.is_search(),
            app_metadata: Default::default(),
        })
    }

    async fn info(&self, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        match parse_descriptor(&descriptor).map_err(to_status)? {
            Target::Table(table) => self.table_info(&table).await,
            Target::Query(query) => self.query_info(descriptor, query).await,
        }
    }
}

fn decode_error(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(status) => *status,
        other => Status::invalid_argument(format!("the put stream is not valid Arrow IPC: {other}")),
    }
}

#[tonic::async_trait]
impl FlightService for HyprstreamFlight {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let mut requests = request.into_inner();
        let first = requests.message().await?.unwrap_or_default();
        let payload = self.auth.handshake(&first.payload).map_err(to_status)?;
        let response = HandshakeResponse { protocol_version: first.protocol_version, payload };
        Ok(Response::new(stream::iter([Ok(response)]).boxed()))
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.authorize(&request)?;
        // Criteria, when given, is a table-name prefix.
        let prefix = String::from_utf8_lossy(&request.get_ref().expression).into_owned();
        let mut infos = Vec::new();
        for table in self.tables.store().list().map_err(to_status)? {
            if !table.starts_with(&prefix) {
                continue;
            }
            match self.table_info(&table).await {
                Ok(info) => infos.push(Ok(info)),
                // Dropped between listing and reading: not listed.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(self.info(request.into_inner()).await?))
    }

    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        self.authorize(&request)?;
        // Every query is planned at once, so the first poll is already complete
        // (no descriptor to poll again, progress 1.0).
        let info = self.info(request.into_inner()).await?;
        let poll = PollInfo::new().with_info(info).try_with_progress(1.0).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(poll))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        self.authorize(&request)?;
        let descriptor = request.into_inner();
        let schema = match parse_descriptor(&descriptor).map_err(to_status)? {
            Target::Table(table) => self.tables.schema(&table).await.map_err(to_status)?.0,
            Target::Query(query) => self.tables.query_schema(&query).await.map_err(to_status)?,
        };
        Ok(Response::new(SchemaResult { schema: schema_bytes(&schema)? }))
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        self.authorize(&request)?;
        let query = match parse_ticket(&request.get_ref().ticket).map_err(to_status)? {
            TicketRequest::Query(query) => query,
            TicketRequest::Embed(req) => {
                let output = self.tables.embed_rows(&req).await.map_err(to_status)?;
                return Ok(Response::new(record_batches(output.schema, output.batches)));
            }
        };
        let started = std::time::Instant::now();
        let output = self.tables.query(&query).await.map_err(to_status)?;
        tracing::debug!(table = %query.table, search = query.is_search(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "do_get planned");
        Ok(Response::new(record_batches(output.schema, output.batches)))
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        self.authorize(&request)?;
        let mut messages = request.into_inner();
        let first = messages
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("DoPut stream is empty: send a schema message first"))?;
        let PutCommand { table, mode, rows: expected_rows } = parse_put_descriptor(first.flight_descriptor.as_ref()).map_err(to_status)?;

        // Bytes as they arrive on the wire, and as decoded: a compressed stream (IPC lz4/zstd)
        // holds many times its wire size once decoded. A decoded batch's slices are counted,
        // not its buffers (an uncompressed batch's columns share one message buffer).
        let mut decoded = 0usize;
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = received.clone();
        let data = stream::once(async { Ok(first) }).chain(messages.map_err(FlightError::from)).inspect_ok(move |m: &FlightData| {
            counter.fetch_add(m.data_body.len() + m.data_header.len(), std::sync::atomic::Ordering::Relaxed);
        });
        let mut decoder = FlightRecordBatchStream::new_from_flight_data(data);
        let mut batches = Vec::new();
        while let Some(batch) = decoder.try_next().await.map_err(decode_error)? {
            decoded += batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum::<usize>();
            if received.load(std::sync::atomic::Ordering::Relaxed).max(decoded) > self.max_put_bytes {
                // Refused before the whole stream is read: nothing was written.
                return Err(Status::resource_exhausted(format!(
                    "this put passed {} bytes (the server's --max-put-bytes) at batch {}: split the rows into several puts (each commits one version)",
                    self.max_put_bytes,
                    batches.len() + 1
                )));
            }
            batches.push(batch);
        }
        let schema = decoder
            .schema()
            .cloned()
            .ok_or_else(|| Status::invalid_argument("DoPut stream has no schema message"))?;
        let sent: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if let Some(expected) = expected_rows.filter(|&n| n != sent) {
            return Err(Status::invalid_argument(format!(
                "the put's descriptor says {expected} rows and the stream carried {sent}: nothing was written (did the sender stop partway?)"
            )));
        }
        // Every row is here: from now on the put runs to its commit whatever the client does.
        let summary = actions::to_completion(&self.tables, |t| async move { t.put(&table, mode, &schema, batches).await })
            .await
            .map_err(to_status)?;
        let result = PutResult { app_metadata: json_bytes(&summary).map_err(to_status)? };
        Ok(Response::new(stream::iter([Ok(result)]).boxed()))
    }

    async fn do_exchange(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.authorize(&request)?;
        Err(Status::unimplemented(
            "DoExchange is not offered: use DoPut to write rows, DoGet to scan or search, DoAction for the rest",
        ))
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        self.authorize(&request)?;
        let action = request.into_inner();
        let bodies = actions::run(&self.tables, &action.r#type, &action.body).await.map_err(|e: Error| {
            tracing::debug!(action = %action.r#type, error = %e, "action refused");
            to_status(e)
        })?;
        let results = bodies.map(|body| body.map(|body| arrow_flight::Result { body }).map_err(to_status));
        Ok(Response::new(results.boxed()))
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        self.authorize(&request)?;
        let actions = ACTIONS.iter().map(|a| {
            Ok(ActionType {
                r#type: a.name.to_string(),
                description: format!("{} Example body: {}", a.description, a.example),
            })
        });
        Ok(Response::new(stream::iter(actions.collect::<Vec<_>>()).boxed()))
    }
}

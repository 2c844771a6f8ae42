//! Every Flight method answers: info, schema, listing, polling, handshake, actions.
use arrow_flight::FlightDescriptor;
use hyprstream_client::proto::Query;
use tonic::Code;

use crate::common::*;

const DIM: usize = 6;

#[tokio::test(flavor = "multi_thread")]
async fn flight_info_schema_list_and_poll_describe_tables_and_queries() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("t", vec![batch(&random_rows("f", 12, DIM), DIM)]).await.unwrap();
    client.put("u", vec![batch(&random_rows("g", 3, DIM), DIM)]).await.unwrap();

    let info = client.flight_info(FlightDescriptor::new_path(vec!["t".into()])).await.unwrap();
    assert_eq!(info.total_records, 12);
    let schema = info.clone().try_decode_schema().unwrap();
    assert!(schema.field_with_name("embedding").is_ok());
    // Its ticket scans the table.
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let query: Query = serde_json::from_slice(&ticket.ticket).unwrap();
    assert_eq!(client.query(&query).await.unwrap().num_rows(), 12);

    // A command descriptor: the result schema of a search, and its ticket runs it.
    let search = Query { columns: Some(vec!["id".into()]), ..Query::search("t", random_vector(DIM), 4) };
    let info = client.flight_info(FlightDescriptor::new_cmd(search.to_json())).await.unwrap();
    let names: Vec<String> = info.clone().try_decode_schema().unwrap().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, vec!["id", "_distance"]);
    let query: Query = serde_json::from_slice(&info.endpoint[0].ticket.as_ref().unwrap().ticket).unwrap();
    assert_eq!(client.query(&query).await.unwrap().num_rows(), 4);

    let schema = client.schema(FlightDescriptor::new_path(vec!["u".into()])).await.unwrap();
    assert_eq!(schema.fields().len(), 5);
    assert_status(client.schema(FlightDescriptor::new_path(vec!["nope".into()])).await, Code::NotFound, "nope");
    assert_status(
        client.flight_info(FlightDescriptor::new_cmd(r#"{"table": "t", "filter": "id ==="}"#)).await,
        Code::InvalidArgument,
        "filter",
    );
    // A bulk-embedding ticket is DoGet only; as a command it says so (not "unknown field").
    let embed = r#"{"embed": {"model": "m", "texts": ["x"]}}"#;
    assert_status(client.flight_info(FlightDescriptor::new_cmd(embed)).await, Code::InvalidArgument, "send it as a DoGet ticket");
    assert_status(client.schema(FlightDescriptor::new_cmd(embed)).await, Code::InvalidArgument, "send it as a DoGet ticket");
    assert_status(client.flight_info(FlightDescriptor::new_cmd("")).await, Code::InvalidArgument, "the command descriptor is empty");
    // `"embed": null` is a malformed embed ticket, not an unknown key of a query.
    assert_status(raw_ticket(&mut client, r#"{"embed": null}"#).await, Code::InvalidArgument, "embed ticket: invalid type: null");
    // A scan that returns vectors carries the table's metric: a copy made by putting the
    // scanned rows into a new table ranks as the original (it used to become cosine).
    client.create_table("l2t", DIM, hyprstream_client::proto::Metric::L2).await.unwrap();
    client.put("l2t", vec![batch(&random_rows("l", 5, DIM), DIM)]).await.unwrap();
    let scanned = client.scan("l2t").await.unwrap();
    assert_eq!(scanned.schema.metadata().get("hyprstream.metric").map(String::as_str), Some("l2"));
    let copy: Vec<arrow::array::RecordBatch> =
        scanned.batches.iter().map(|b| b.clone().with_schema(scanned.schema.clone()).unwrap()).collect();
    client.put("l2copy", copy).await.unwrap();
    assert_eq!(client.describe_table("l2copy").await.unwrap().metric, hyprstream_client::proto::Metric::L2);
    let ids = client.query(&Query { columns: Some(vec!["id".into()]), ..Query::scan("t") }).await.unwrap();
    assert!(ids.schema.metadata().is_empty(), "no vectors, no metric: {:?}", ids.schema.metadata());

    let flights = client.list_flights().await.unwrap();
    let mut listed: Vec<(String, i64)> = flights
        .iter()
        .map(|f| (f.flight_descriptor.as_ref().unwrap().path[0].clone(), f.total_records))
        .collect();
    listed.sort();
    assert_eq!(listed, vec![("l2copy".to_string(), 5), ("l2t".to_string(), 5), ("t".to_string(), 12), ("u".to_string(), 3)]);

    let poll = client.flight().poll_flight_info(FlightDescriptor::new_path(vec!["t".into()])).await.unwrap();
    assert_eq!(poll.progress, Some(1.0));
    assert!(poll.flight_descriptor.is_none(), "complete at once");
    assert_eq!(poll.info.unwrap().total_records, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_actions_and_exchange_answer() {
    let server = Server::start();
    let mut client = server.client().await;
    client.handshake("hello").await.unwrap();

    let actions = client.list_actions().await.unwrap();
    let names: Vec<&str> = actions.iter().map(|a| a.r#type.as_str()).collect();
    for expected in ["create_table", "drop_table", "list_tables", "describe_table", "delete", "search", "versions", "restore", "health"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert!(actions.iter().all(|a| a.description.contains("Example body:")));

    let health = client.health().await.unwrap();
    assert_eq!(health.status, "ok");
    assert!(!health.version.is_empty());

    // The search action returns JSON rows for grpcurl users.
    let rows = random_rows("s", 20, DIM);
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();
    let q = rows[3].embedding.clone().unwrap();
    let hits = client.search_hits(&Query::search("t", q, 2)).await.unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].id, "s-3");
    assert!(hits[0].distance.abs() < 1e-5);
    assert_eq!(hits[0].metadata.as_ref().unwrap()["chapter"], 3);
    assert_eq!(hits[0].data_type.as_deref(), Some("text"));

    let exchange = client.flight().do_exchange(futures::stream::empty()).await;
    match exchange {
        Err(arrow_flight::error::FlightError::Tonic(s)) => assert_eq!(s.code(), Code::Unimplemented),
        other => panic!("DoExchange should be UNIMPLEMENTED, got {:?}", other.map(|_| ())),
    }
}

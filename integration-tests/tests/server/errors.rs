//! Bad input: a precise status, a message that says what to fix, and stored data unchanged.
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use hyprstream_client::proto::{Metric, Query};
use hyprstream_client::HyprstreamClient;
use tonic::Code;

use crate::common::*;

const DIM: usize = 4;

/// A table with known content, and a check that it still has exactly that content.
async fn fixture(client: &mut HyprstreamClient) -> (u64, u64) {
    client.put("t", vec![batch(&random_rows("ok", 10, DIM), DIM)]).await.unwrap();
    let d = client.describe_table("t").await.unwrap();
    (d.rows, d.version)
}

async fn unchanged(client: &mut HyprstreamClient, before: (u64, u64)) {
    let d = client.describe_table("t").await.unwrap();
    assert_eq!((d.rows, d.version), before, "a refused request must not change the table");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_queries_are_invalid_argument_or_not_found() {
    let server = Server::start();
    let mut client = server.client().await;
    let before = fixture(&mut client).await;

    assert_status(client.scan("missing").await, Code::NotFound, "table 'missing' does not exist");
    assert_status(raw_ticket(&mut client, "{not json").await, Code::InvalidArgument, "ticket");
    assert_status(raw_ticket(&mut client, r#"{"table": "t", "vectr": [1]}"#).await, Code::InvalidArgument, "unknown field `vectr`");
    assert_status(client.search("t", vec![1.0; DIM + 1], 3).await, Code::InvalidArgument, "dim 4");
    // 1e39 overflows f32: a non-finite value.
    assert_status(raw_ticket(&mut client, r#"{"table": "t", "vector": [1e39, 0, 0, 0]}"#).await, Code::InvalidArgument, "finite");
    // Base64 vectors: not base64, bytes that are not whole float32s, the wrong length, NaN.
    use hyprstream_client::proto::vector::encode_base64;
    assert_status(raw_ticket(&mut client, r#"{"table": "t", "vector": "not base64!"}"#).await, Code::InvalidArgument, "base64 of little-endian float32");
    assert_status(raw_ticket(&mut client, r#"{"table": "t", "vector": "AAAAAAA="}"#).await, Code::InvalidArgument, "5 bytes, not a whole number of float32");
    let short = format!(r#"{{"table": "t", "vector": "{}"}}"#, encode_base64(&[1.0; DIM - 1]));
    assert_status(raw_ticket(&mut client, short).await, Code::InvalidArgument, "dim 4");
    let nan = format!(r#"{{"table": "t", "vectors": [[1, 0, 0, 0], "{}"]}}"#, encode_base64(&[0.0, f32::NAN, 0.0, 0.0]));
    assert_status(raw_ticket(&mut client, nan).await, Code::InvalidArgument, "vectors[1][1] is not finite");
    assert_status(
        client.query(&Query { filter: Some("id ==== 3".into()), ..Query::scan("t") }).await,
        Code::InvalidArgument,
        "filter",
    );
    assert_status(
        client.query(&Query { filter: Some("no_such_column = 1".into()), ..Query::search("t", vec![1.0; DIM], 3) }).await,
        Code::InvalidArgument,
        "filter",
    );
    // A filter failing on the rows it meets is still the filter's error.
    for query in [Query::scan("t"), Query::search("t", vec![1.0; DIM], 3)] {
        assert_status(client.query(&Query { filter: Some("1/0 = 1".into()), ..query }).await, Code::InvalidArgument, "invalid filter '1/0 = 1'");
    }
    // Lance would ignore what follows a ';' (here: select every row).
    assert_status(client.query(&Query { filter: Some("id = 'ok-1'; true".into()), ..Query::scan("t") }).await, Code::InvalidArgument, "remove the ';'");
    assert_eq!(client.query(&Query { filter: Some("id = 'a;b'".into()), ..Query::scan("t") }).await.unwrap().num_rows(), 0);
    // Messages quote the request cut short, so the explanation after it still gets through.
    let long = "x".repeat(20_000);
    assert_status(client.scan(&long).await, Code::InvalidArgument, "… (19800 more characters)': use 1-64 characters");
    let long_filter = format!("nosuch = '{}'", "z".repeat(20_000));
    assert_status(client.query(&Query { filter: Some(long_filter), ..Query::scan("t") }).await, Code::InvalidArgument, "nosuch");
    assert_status(client.scan("bad-name").await, Code::InvalidArgument, "invalid table name");
    assert_status(client.scan("../etc").await, Code::InvalidArgument, "invalid table name");
    assert_status(client.search("t", vec![1.0; DIM], 0).await, Code::InvalidArgument, "k must be");
    assert_status(
        client.query(&Query { columns: Some(vec!["nope".into()]), ..Query::scan("t") }).await,
        Code::InvalidArgument,
        "unknown column 'nope'",
    );
    // A column named twice: for scans and searches alike, before any row is read.
    for query in [Query::scan("t"), Query::search("t", vec![1.0; DIM], 3)] {
        let twice = Query { columns: Some(vec!["id".into(), "embedding".into(), "id".into()]), ..query };
        assert_status(client.query(&twice).await, Code::InvalidArgument, "column 'id' is named twice");
    }
    // The search action answers fixed fields; it refuses `columns` rather than ignore it.
    assert_status(
        client.action_raw("search", r#"{"table": "t", "vector": [1, 0, 0, 0], "columns": ["n"]}"#).await,
        Code::InvalidArgument,
        "leave it out here, or search with DoGet",
    );
    // Tickets that are not a JSON object say what one looks like.
    assert_status(raw_ticket(&mut client, "").await, Code::InvalidArgument, "the ticket is empty; a ticket is a JSON object");
    assert_status(raw_ticket(&mut client, "[]").await, Code::InvalidArgument, "the ticket is not a JSON object");
    unchanged(&mut client, before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_puts_change_nothing() {
    let server = Server::start();
    let mut client = server.client().await;
    let before = fixture(&mut client).await;

    // Null id.
    let mut b = batch(&random_rows("x", 3, DIM), DIM);
    let ids: ArrayRef = Arc::new(StringArray::from(vec![Some("x-0"), None, Some("x-2")]));
    let schema = Arc::new(Schema::new(b.schema().fields().iter().map(|f| if f.name() == "id" { Arc::new(Field::new("id", DataType::Utf8, true)) } else { f.clone() }).collect::<Vec<_>>()));
    let mut cols = b.columns().to_vec();
    cols[0] = ids;
    b = RecordBatch::try_new(schema, cols).unwrap();
    assert_status(client.put("t", vec![b]).await, Code::InvalidArgument, "row 1 is null");

    // Duplicate id within one put, across two batches.
    let rows = random_rows("dup", 3, DIM);
    assert_status(client.put("t", vec![batch(&rows, DIM), batch(&rows[..1], DIM)]).await, Code::InvalidArgument, "'dup-0' appears more than once");

    // Bad data_type.
    let mut rows = random_rows("dt", 3, DIM);
    rows[1].data_type = "video";
    assert_status(client.put("t", vec![batch(&rows, DIM)]).await, Code::InvalidArgument, "must be 'text' or 'image'");

    // Row numbers count from the put's first row, across its batches.
    let mut rows = random_rows("rn", 6, DIM);
    rows[4].data_type = "video";
    assert_status(client.put("t", vec![batch(&rows[..3], DIM), batch(&rows[3..], DIM)]).await, Code::InvalidArgument, "row 4 (id 'rn-4')");
    rows[4].data_type = "text";
    rows[5].embedding = Some(vec![f32::INFINITY; DIM]);
    assert_status(client.put("t", vec![batch(&rows[..3], DIM), batch(&rows[3..], DIM)]).await, Code::InvalidArgument, "row 5 has a non-finite value");

    // Invalid metadata JSON.
    let mut rows = random_rows("js", 3, DIM);
    rows[2].metadata = Some("{chapter: 3".into());
    assert_status(client.put("t", vec![batch(&rows, DIM)]).await, Code::InvalidArgument, "not valid JSON");

    // Metadata Lance's JSONB column would not store as sent: deep nesting (thousands of
    // levels once overflowed the server's stack), a key twice, a number past f64.
    for (metadata, message) in [
        (format!("{}{}", "[".repeat(5000), "]".repeat(5000)), "nested deeper than 64 levels"),
        (r#"{"x": 1, "x": 2}"#.to_string(), "\"x\" appears twice"),
        (r#"{"x": 1e400}"#.to_string(), "number out of range"),
    ] {
        let mut rows = random_rows("js", 3, DIM);
        rows[1].metadata = Some(metadata);
        assert_status(client.put("t", vec![batch(&rows, DIM)]).await, Code::InvalidArgument, message);
    }

    // raw_data of numbers, an embedding of integers (the table exists: no first-put schema).
    let ints = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("raw_data", DataType::Int64, true)]));
    let b = RecordBatch::try_new(ints, vec![Arc::new(StringArray::from(vec!["e"])) as ArrayRef, Arc::new(Int64Array::from(vec![7]))]).unwrap();
    assert_status(client.put("t", vec![b]).await, Code::InvalidArgument, "raw_data");
    let item = Arc::new(Field::new("item", DataType::Int32, true));
    let vectors = arrow::array::FixedSizeListArray::try_new(item.clone(), DIM as i32, Arc::new(arrow::array::Int32Array::from(vec![1; DIM])), None).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("embedding", DataType::FixedSizeList(item, DIM as i32), true)]));
    let b = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["e"])) as ArrayRef, Arc::new(vectors)]).unwrap();
    assert_status(client.put("t", vec![b]).await, Code::InvalidArgument, "float32");

    // Wrong vector length for the table.
    assert_status(client.put("t", vec![batch(&random_rows("w", 2, DIM + 2), DIM + 2)]).await, Code::InvalidArgument, "dim is 4");

    // Non-finite vector values.
    let mut rows = random_rows("nan", 2, DIM);
    rows[0].embedding = Some(vec![f32::NAN, 0.0, 0.0, 0.0]);
    assert_status(client.put("t", vec![batch(&rows, DIM)]).await, Code::InvalidArgument, "non-finite");

    // Schema mismatch: a column the table does not have, and a wrong type.
    let extra = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("pages", DataType::Int64, true)]));
    let b = RecordBatch::try_new(extra, vec![Arc::new(StringArray::from(vec!["e"])) as ArrayRef, Arc::new(Int64Array::from(vec![3]))]).unwrap();
    assert_status(client.put("t", vec![b]).await, Code::InvalidArgument, "column 'pages' is not in the table");
    let wrong = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("data_type", DataType::Int64, true)]));
    let b = RecordBatch::try_new(wrong, vec![Arc::new(StringArray::from(vec!["e"])) as ArrayRef, Arc::new(Int64Array::from(vec![3]))]).unwrap();
    assert_status(client.put("t", vec![b]).await, Code::InvalidArgument, "data_type");

    // No id column at all.
    let noid = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)]));
    let b = RecordBatch::try_new(noid, vec![Arc::new(StringArray::from(vec!["e"])) as ArrayRef]).unwrap();
    assert_status(client.put("t", vec![b]).await, Code::InvalidArgument, "no 'id' column");

    // Invalid table name on put.
    assert_status(client.put("1abc", vec![batch(&random_rows("n", 1, DIM), DIM)]).await, Code::InvalidArgument, "invalid table name");

    unchanged(&mut client, before).await;
    // ... and the server still serves.
    assert_eq!(client.scan("t").await.unwrap().num_rows(), 10);
}

/// A put is held in memory until it commits: past `--max-put-bytes` it is refused as it
/// arrives, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn puts_past_the_size_limit_are_refused_whole() {
    let server = Server::start_args(&["--max-put-bytes", "1000000"]);
    let mut client = server.client().await;
    let before = fixture(&mut client).await;
    let mut rows = random_rows("big", 200, DIM);
    for row in &mut rows {
        row.raw = vec![7; 10_000];
    }
    let batches: Vec<RecordBatch> = rows.chunks(20).map(|c| batch(c, DIM)).collect();
    assert_status(client.put("t", batches).await, Code::ResourceExhausted, "split the rows into several puts");
    unchanged(&mut client, before).await;
    // The same rows in puts under the limit go in.
    for part in rows.chunks(50) {
        client.put("t", vec![batch(part, DIM)]).await.unwrap();
    }
    assert_eq!(client.describe_table("t").await.unwrap().rows, 210);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_actions_are_refused_precisely() {
    let server = Server::start();
    let mut client = server.client().await;
    let before = fixture(&mut client).await;

    assert_status(client.create_table("t", DIM, Metric::Cosine).await, Code::AlreadyExists, "already exists");
    assert_status(client.create_table("z", 0, Metric::Cosine).await, Code::InvalidArgument, "dim must be");
    assert_status(client.action_raw("create_table", r#"{"name": "z", "dim": 3, "metric": "hamming"}"#).await, Code::InvalidArgument, "unknown variant `hamming`");
    assert_status(client.action_raw("no_such_action", "{}").await, Code::InvalidArgument, "unknown action 'no_such_action'");
    assert_status(client.action_raw("delete", r#"{"table": "t"}"#).await, Code::InvalidArgument, "missing field `filter`");
    assert_status(client.delete("t", "id >>> 2").await, Code::InvalidArgument, "filter");
    assert_status(client.delete("t", "  ").await, Code::InvalidArgument, "non-empty filter");
    assert_status(client.delete("missing", "true").await, Code::NotFound, "missing");
    assert_status(client.drop_table("missing").await, Code::NotFound, "missing");
    assert_status(client.action_raw("describe_table", "[1, 2]").await, Code::InvalidArgument, "describe_table");
    assert_status(client.action_raw("search", r#"{"table": "t"}"#).await, Code::InvalidArgument, "vector");
    assert_status(client.delete("t", "id = 'ok-1'; true").await, Code::InvalidArgument, "remove the ';'");
    // A deleted layer would leave a model that cannot load: models go through drop_model.
    assert_status(client.delete("models", "layer_id = 3").await, Code::InvalidArgument, "drop_model");
    unchanged(&mut client, before).await;
}

/// A put may not name a table's embedding model (create_table does, checking the model) nor
/// store a column under a name results add or Lance keeps for itself: refused, nothing written.
/// Other `hyprstream.*` keys (a search result's, put back) are not the table's and are dropped.
#[tokio::test(flavor = "multi_thread")]
async fn puts_naming_a_model_or_a_reserved_column_are_refused() {
    let server = Server::start();
    let mut client = server.client().await;
    let before = fixture(&mut client).await;
    let b = batch(&random_rows("m", 5, DIM), DIM);
    let with_meta = |key: &str, value: &str| {
        let mut meta = b.schema().metadata().clone();
        meta.insert(key.into(), value.into());
        b.clone().with_schema(Arc::new(b.schema().as_ref().clone().with_metadata(meta))).unwrap()
    };
    for key in ["hyprstream.embedding_model", "hyprstream.embedding_model_version"] {
        assert_status(client.put("m", vec![with_meta(key, "all-minilm-l6-v2")]).await, Code::InvalidArgument, "create_table");
    }
    for name in ["_query", "_distance", "_rowid", "_rowaddr"] {
        let mut fields = b.schema().fields().to_vec();
        fields.push(Arc::new(Field::new(name, DataType::Int64, true)));
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(Int64Array::from(vec![1i64; 5])) as ArrayRef);
        let extra = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        assert_status(client.put("m", vec![extra]).await, Code::InvalidArgument, &format!("column '{name}' is a reserved name"));
    }
    assert_status(client.describe_table("m").await, Code::NotFound, "m");
    unchanged(&mut client, before).await;

    // A search result's path key put back is dropped; the metric a put names is kept.
    client.put("m", vec![with_meta("hyprstream.search_path", "exact_cpu")]).await.unwrap();
    let scanned = client.scan("m").await.unwrap();
    assert!(!scanned.schema.metadata().contains_key("hyprstream.search_path"), "{:?}", scanned.schema.metadata());
    client.put("l", vec![with_meta("hyprstream.metric", "l2")]).await.unwrap();
    assert_eq!(client.describe_table("l").await.unwrap().metric, Metric::L2);
}

/// A column beyond the five takes its first put's type; later puts may send another width of
/// the same kind (pyarrow's string into a table Polars made with large_string), nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn other_columns_take_another_width_of_their_kind_only() {
    let server = Server::start();
    let mut client = server.client().await;
    let put_title = |title: ArrayRef, id: &str| {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("title", title.data_type().clone(), true)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec![id])) as ArrayRef, title]).unwrap()
    };
    client.put("ext", vec![put_title(Arc::new(arrow::array::LargeStringArray::from(vec!["A Study in Scarlet"])), "a")]).await.unwrap();
    client.put("ext", vec![put_title(Arc::new(StringArray::from(vec!["The Sign of the Four"])), "b")]).await.unwrap();
    let titles: Vec<String> = client
        .scan("ext")
        .await
        .unwrap()
        .batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column_by_name("title").unwrap(), &DataType::Utf8).unwrap();
            c.as_any().downcast_ref::<StringArray>().unwrap().iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(titles, ["A Study in Scarlet", "The Sign of the Four"]);
    assert_status(client.put("ext", vec![put_title(Arc::new(Int64Array::from(vec![3])), "c")]).await, Code::InvalidArgument, "column 'title' has type Int64");
    assert_eq!(client.describe_table("ext").await.unwrap().rows, 2);
}

/// A put whose input fails partway (a bad line in a file the client reads) commits nothing:
/// the client cancels the call instead of ending the upload, and returns the input's error.
#[tokio::test(flavor = "multi_thread")]
async fn a_put_whose_input_fails_partway_commits_nothing() {
    let server = Server::start();
    let mut client = server.client().await;
    let before = fixture(&mut client).await;
    let rows = random_rows("half", 40, DIM);
    for mode in [hyprstream_client::proto::PutMode::Upsert, hyprstream_client::proto::PutMode::Overwrite] {
        let items: Vec<hyprstream_client::Result<RecordBatch>> =
            rows.chunks(10).take(2).map(|c| Ok(batch(c, DIM))).chain([Err(hyprstream_client::ClientError::Protocol("line 21 is not valid".into()))]).collect();
        let failing = futures::stream::iter(items);
        match client.put_stream("t", mode, batch(&rows[..1], DIM).schema(), failing).await {
            Err(hyprstream_client::ClientError::Protocol(m)) => assert_eq!(m, "line 21 is not valid"),
            other => panic!("expected the input's error, got {other:?}"),
        }
    }
    // A batch that does not fit the declared schema (a column short) fails inside
    // arrow-flight's encoder, which ends the upload normally too: an overwrite then emptied
    // the table. It is caught before the encoder and cancels the call the same way.
    for mode in [hyprstream_client::proto::PutMode::Upsert, hyprstream_client::proto::PutMode::Overwrite] {
        let good = batch(&rows[..10], DIM);
        let mut short = good.clone();
        short.remove_column(short.schema().index_of("metadata").unwrap());
        let (mismatched, strict) = (short, good.schema());
        let items: Vec<hyprstream_client::Result<RecordBatch>> = vec![Ok(good), Ok(mismatched)];
        match client.put_stream("t", mode, strict, futures::stream::iter(items)).await {
            Err(hyprstream_client::ClientError::Protocol(m)) => assert!(m.contains("does not match the put's schema"), "{m}"),
            other => panic!("expected the mismatch, got {other:?}"),
        }
    }
    // The server saw the calls cancelled: no version was committed, and it still serves.
    unchanged(&mut client, before).await;
    assert_eq!(client.scan("t").await.unwrap().num_rows(), 10);
}

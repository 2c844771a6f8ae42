//! Ingest → scan → search, checked against a float64 brute force computed here.
use hyprstream_client::proto::{Metric, Query};

use crate::common::*;

const DIM: usize = 24;

#[tokio::test(flavor = "multi_thread")]
async fn ingest_scan_and_search_match_brute_force_for_every_metric() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("r", 600, DIM);
    let summary = client.put("sherlock_data", vec![batch(&rows[..300], DIM), batch(&rows[300..], DIM)]).await.unwrap();
    assert_eq!((summary.inserted, summary.updated), (600, 0));

    let scanned = client.scan("sherlock_data").await.unwrap();
    assert_eq!(scanned.num_rows(), 600);
    let mut ids = string_column(&scanned, "id");
    ids.sort();
    let mut expected: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected);

    for metric in ["cosine", "dot", "l2"] {
        let q = random_vector(DIM);
        let query = Query { metric: Metric::parse(metric), ..Query::search("sherlock_data", q.clone(), 7) };
        let found = client.query(&query).await.unwrap();
        assert_eq!(found.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some("exact_cpu"));
        let want = brute_force(&rows, &q, metric, 7, |_| true);
        let got_ids = string_column(&found, "id");
        let got_d = distances(&found);
        assert_eq!(got_ids.len(), 7, "{metric}");
        for (i, (id, d)) in want.iter().enumerate() {
            assert!((got_d[i] as f64 - d).abs() <= 1e-4 * d.abs().max(1.0), "{metric} rank {i}: {} vs {d}", got_d[i]);
            if &got_ids[i] != id {
                // only a tie may reorder
                assert!((want.iter().find(|w| w.0 == got_ids[i]).map(|w| w.1).unwrap_or(f64::MAX) - d).abs() < 1e-5, "{metric} rank {i}: {} vs {id}", got_ids[i]);
            }
        }
        // Rows come back whole: raw bytes and metadata of the best hit match what was put.
        let best = rows.iter().find(|r| r.id == got_ids[0]).unwrap();
        let raw = found.batches[0].column_by_name("raw_data").unwrap();
        use arrow::array::AsArray;
        assert_eq!(raw.as_binary::<i64>().value(0), best.raw.as_slice());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_table_metric_is_the_default_and_distances_follow_the_contract() {
    let server = Server::start();
    let mut client = server.client().await;
    client.create_table("l2_table", 2, Metric::L2).await.unwrap();
    let rows = vec![
        Row { id: "a".into(), embedding: Some(vec![0.0, 0.0]), data_type: "text", raw: b"a".to_vec(), metadata: None },
        Row { id: "b".into(), embedding: Some(vec![3.0, 4.0]), data_type: "text", raw: b"b".to_vec(), metadata: None },
    ];
    client.put("l2_table", vec![batch(&rows, 2)]).await.unwrap();
    let found = client.search("l2_table", vec![3.0, 0.0], 2).await.unwrap();
    assert_eq!(string_column(&found, "id"), vec!["a", "b"]); // 9 < 16
    assert_eq!(distances(&found), vec![9.0, 16.0]); // squared euclidean
    let dot = client.query(&Query { metric: Some(Metric::Dot), ..Query::search("l2_table", vec![1.0, 1.0], 2) }).await.unwrap();
    assert_eq!(string_column(&dot, "id"), vec!["b", "a"]);
    assert_eq!(distances(&dot), vec![-7.0, -0.0]);
    let cos = client.query(&Query { metric: Some(Metric::Cosine), ..Query::search("l2_table", vec![0.0, 2.0], 2) }).await.unwrap();
    assert_eq!(string_column(&cos, "id"), vec!["b", "a"]);
    let d = distances(&cos);
    assert!((d[0] - 0.2).abs() < 1e-6 && d[1] == 1.0, "{d:?}"); // 1 - 4/5; zero vector → 1
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_run_before_ranking_including_metadata_fields() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("m", 400, DIM);
    client.put("docs", vec![batch(&rows, DIM)]).await.unwrap();

    // A metadata key: only chapter-3 rows, and k of them although most near rows are filtered out.
    let q = random_vector(DIM);
    let query = Query {
        filter: Some("json_get_int(metadata, 'chapter') = 3".into()),
        ..Query::search("docs", q.clone(), 10)
    };
    let found = client.query(&query).await.unwrap();
    let want = brute_force(&rows, &q, "cosine", 10, |r| r.metadata.as_deref().unwrap().contains("\"chapter\": 3"));
    assert_eq!(string_column(&found, "id"), want.iter().map(|w| w.0.clone()).collect::<Vec<_>>());

    // A string key combined with a column predicate.
    let query = Query {
        filter: Some("json_get_string(metadata, 'story') = 'odd' AND data_type = 'image'".into()),
        ..Query::search("docs", q.clone(), 1000)
    };
    let found = client.query(&query).await.unwrap();
    let want = brute_force(&rows, &q, "cosine", 1000, |r| r.data_type == "image" && r.metadata.as_deref().unwrap().contains("odd"));
    assert!(!want.is_empty());
    assert_eq!(string_column(&found, "id"), want.iter().map(|w| w.0.clone()).collect::<Vec<_>>());

    // Scans take the same filters, and a limit.
    let scan = client
        .query(&Query { filter: Some("json_get_int(metadata, 'chapter') = 0".into()), limit: Some(5), ..Query::scan("docs") })
        .await
        .unwrap();
    assert_eq!(scan.num_rows(), 5);
    let all = client.query(&Query { filter: Some("json_get_int(metadata, 'chapter') = 0".into()), ..Query::scan("docs") }).await.unwrap();
    assert_eq!(all.num_rows(), rows.iter().filter(|r| r.metadata.as_deref().unwrap().contains("\"chapter\": 0")).count());
}

#[tokio::test(flavor = "multi_thread")]
async fn k_beyond_the_row_count_returns_every_row_and_empty_tables_return_none() {
    let server = Server::start();
    let mut client = server.client().await;
    client.create_table("empty", DIM, Metric::Cosine).await.unwrap();
    let found = client.search("empty", random_vector(DIM), 5).await.unwrap();
    assert_eq!(found.num_rows(), 0);
    assert!(found.schema.field_with_name("_distance").is_ok());

    let mut rows = random_rows("k", 6, DIM);
    rows[2].embedding = None; // a row without a vector is stored but never ranked
    client.put("empty", vec![batch(&rows, DIM)]).await.unwrap();
    let found = client.search("empty", random_vector(DIM), 50).await.unwrap();
    assert_eq!(found.num_rows(), 5);
    assert!(!string_column(&found, "id").contains(&"k-2".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn columns_select_what_comes_back() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("t", vec![batch(&random_rows("c", 20, DIM), DIM)]).await.unwrap();
    let q = Query { columns: Some(vec!["id".into(), "metadata".into()]), ..Query::search("t", random_vector(DIM), 3) };
    let found = client.query(&q).await.unwrap();
    let names: Vec<&str> = found.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["id", "metadata", "_distance"]);
    let scan = client.query(&Query { columns: Some(vec!["data_type".into()]), ..Query::scan("t") }).await.unwrap();
    assert_eq!(scan.schema.fields().len(), 1);
    assert_eq!(scan.num_rows(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_embeddings_and_utf8_raw_data_are_normalised_on_ingest() {
    use arrow::array::{ArrayRef, ListBuilder, Float64Builder, StringArray, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let server = Server::start();
    let mut client = server.client().await;
    // What pyarrow makes from Python lists: list<double>, and text as utf8.
    let mut emb = ListBuilder::new(Float64Builder::new());
    for v in [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] {
        emb.values().append_slice(&v);
        emb.append(true);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("embedding", DataType::List(Arc::new(Field::new("item", DataType::Float64, true))), true),
        Field::new("data_type", DataType::Utf8, true),
        Field::new("raw_data", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
        Field::new("extra", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["x", "y"])),
        Arc::new(emb.finish()),
        Arc::new(StringArray::from(vec!["text", "text"])),
        Arc::new(StringArray::from(vec!["hello", "world"])),
        Arc::new(StringArray::from(vec![r#"{"a": 1}"#, r#"{"a": 2}"#])),
        Arc::new(StringArray::from(vec!["kept", "too"])),
    ];
    client.put("norm", vec![RecordBatch::try_new(schema, columns).unwrap()]).await.unwrap();
    let d = client.describe_table("norm").await.unwrap();
    assert_eq!(d.dim, Some(3));
    let types: Vec<(String, String)> = d.schema.iter().map(|c| (c.name.clone(), c.data_type.clone())).collect();
    assert!(types.contains(&("embedding".into(), "FixedSizeList(3 x Float32)".into())) || types.iter().any(|(n, t)| n == "embedding" && t.starts_with("FixedSizeList")), "{types:?}");
    assert!(types.contains(&("raw_data".into(), "LargeBinary".into())), "{types:?}");
    assert!(d.schema.iter().any(|c| c.name == "raw_data" && c.blob), "a first put stores raw_data as a blob too");
    assert!(types.contains(&("metadata".into(), "JSON".into())), "{types:?}");
    assert!(types.iter().any(|(n, _)| n == "extra"));
    let found = client.search("norm", vec![0.0, 1.0, 0.0], 1).await.unwrap();
    assert_eq!(string_column(&found, "id"), vec!["y"]);
    assert_eq!(string_column(&found, "extra"), vec!["too"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_of_tens_of_megabytes_is_one_commit() {
    let server = Server::start();
    let mut client = server.client().await;
    let dim = 512;
    let rows = random_rows("big", 24_000, dim); // ≈ 49 MB of vectors in one batch
    let summary = client.put("big", vec![batch(&rows, dim)]).await.unwrap();
    assert_eq!(summary.inserted, 24_000);
    assert_eq!(client.versions("big").await.unwrap().len(), 1);
    let q = rows[123].embedding.clone().unwrap();
    let found = client.search("big", q, 1).await.unwrap();
    assert_eq!(string_column(&found, "id"), vec!["big-123"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn base64_vectors_answer_exactly_like_arrays() {
    use hyprstream_client::proto::vector::encode_base64;
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("b", 200, DIM);
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();
    let (q1, q2) = (random_vector(DIM), random_vector(DIM));

    let array = client.search("t", q1.clone(), 7).await.unwrap();
    let ticket = serde_json::json!({"table": "t", "vector": encode_base64(&q1), "k": 7}).to_string();
    let binary = client.query_ticket(ticket).await.unwrap();
    assert_eq!(string_column(&binary, "id"), string_column(&array, "id"));
    assert_eq!(distances(&binary), distances(&array), "the same f32 values, bit for bit");

    // A batch may mix both forms.
    let batch_array = client.query(&Query::search_batch("t", vec![q1.clone(), q2.clone()], 5)).await.unwrap();
    let ticket = serde_json::json!({"table": "t", "vectors": [encode_base64(&q1), q2], "k": 5}).to_string();
    let batch_mixed = client.query_ticket(ticket).await.unwrap();
    assert_eq!(string_column(&batch_mixed, "id"), string_column(&batch_array, "id"));
    assert_eq!(query_column(&batch_mixed), query_column(&batch_array));
    assert_eq!(distances(&batch_mixed), distances(&batch_array));

    // The `search` action takes the same body.
    let body = serde_json::json!({"table": "t", "vector": encode_base64(&q1), "k": 7}).to_string();
    let hits = client.action_raw("search", body).await.unwrap();
    let hits: Vec<serde_json::Value> = serde_json::from_slice(&hits[0]).unwrap();
    assert_eq!(hits.iter().map(|h| h["id"].as_str().unwrap().to_string()).collect::<Vec<_>>(), string_column(&array, "id"));
}

/// Rows whose vectors are `leads` in their first two components and zero after.
fn rows_leading_with(prefix: &str, leads: &[[f32; 2]]) -> Vec<Row> {
    let mut rows = random_rows(prefix, leads.len(), DIM);
    for (row, lead) in rows.iter_mut().zip(leads) {
        let mut e = vec![0.0f32; DIM];
        e[..2].copy_from_slice(lead);
        row.embedding = Some(e);
    }
    rows
}

/// Dot products past float32's range (values near 1e19) still rank, pinned to ±3.4e38, and the
/// in-memory engine (latest version) and the scan of a pinned version agree: no row is dropped
/// and no distance is ±∞.
#[tokio::test(flavor = "multi_thread")]
async fn overflowing_distances_rank_alike_on_the_engine_and_a_pinned_version() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = rows_leading_with("h", &[[4e19f32, 0.0], [5e19, 0.0], [1.0, 1.0], [-3e38, 3e38]]);
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();
    let pinned = client.describe_table("t").await.unwrap().version;
    let mut extra = random_rows("x", 1, DIM);
    let mut e = vec![0.0f32; DIM];
    e[0] = 0.5;
    extra[0].embedding = Some(e);
    client.put("t", vec![batch(&extra, DIM)]).await.unwrap();

    let mut q = vec![0.0f32; DIM];
    q[0] = 5e19;
    let search = Query { metric: Some(Metric::Dot), ..Query::search("t", q, 10) };
    let latest = client.query(&search).await.unwrap();
    let old = client.query(&Query { version: Some(pinned), ..search }).await.unwrap();
    let path = |r: &hyprstream_client::Rows| r.schema.metadata().get("hyprstream.search_path").cloned().unwrap_or_default();
    assert_eq!((path(&latest).as_str(), path(&old).as_str()), ("exact_cpu", "exact_cpu_scan"));
    assert_eq!(string_column(&latest, "id"), ["h-0", "h-1", "h-2", "x-0", "h-3"]);
    assert_eq!(distances(&latest), [-f32::MAX, -f32::MAX, -5e19, -2.5e19, f32::MAX]);
    assert_eq!(string_column(&old, "id"), ["h-0", "h-1", "h-2", "h-3"]);
    assert_eq!(distances(&old), [-f32::MAX, -f32::MAX, -5e19, f32::MAX]);
}

/// Cosine over rows whose squares and dot product leave float32's range (components ≈ 3e38):
/// only the direction counts, on the in-memory engine and on the scan of a pinned version
/// alike (the scan used to get NaN for such a row and drop it).
#[tokio::test(flavor = "multi_thread")]
async fn cosine_of_rows_past_float32_squares_ranks_alike_on_the_engine_and_a_pinned_version() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = rows_leading_with("c", &[[3e38f32, 3e38], [1.0, 0.0], [-3e38, -3e38], [0.0, 0.0]]);
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();
    let pinned = client.describe_table("t").await.unwrap().version;
    client.put("t", vec![batch(&random_rows("x", 1, DIM), DIM)]).await.unwrap();

    let mut q = vec![0.0f32; DIM];
    q[..2].copy_from_slice(&[1.0, 1.0]);
    let search = Query { filter: Some("id LIKE 'c-%'".into()), ..Query::search("t", q, 10) };
    let latest = client.query(&search).await.unwrap();
    let old = client.query(&Query { version: Some(pinned), ..search }).await.unwrap();
    let expected = [0.0f32, 1.0 - std::f32::consts::FRAC_1_SQRT_2, 1.0, 2.0];
    for rows in [&latest, &old] {
        assert_eq!(string_column(rows, "id"), ["c-0", "c-1", "c-3", "c-2"]);
        for (d, e) in distances(rows).iter().zip(expected) {
            assert!((d - e).abs() < 1e-5, "{:?} vs {expected:?}", distances(rows));
        }
    }
}

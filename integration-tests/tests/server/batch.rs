//! Batched searches (`"vectors"`): one request, one pass over the rows, one stream with a
//! `_query` column; every query's answer equals the float64 reference, on every path.
use arrow::array::AsArray;
use arrow_flight::FlightDescriptor;
use hyprstream_client::proto::{Metric, Query, SearchHit};
use hyprstream_client::Rows;
use tonic::Code;

use crate::common::*;

const DIM: usize = 24;

/// Checks a batched result against the reference: rows grouped by query in order, each group
/// the k best rows `keep` admits (ties may swap ids, never distances).
#[track_caller]
fn check_batch(rows: &[Row], found: &Rows, queries: &[Vec<f32>], metric: &str, k: usize, keep: &dyn Fn(&Row) -> bool) {
    let (ids, dists, qs) = (string_column(found, "id"), distances(found), query_column(found));
    let mut at = 0;
    for (qi, q) in queries.iter().enumerate() {
        let want = brute_force(rows, q, metric, k, keep);
        for (rank, (id, d)) in want.iter().enumerate() {
            let i = at + rank;
            assert_eq!(qs[i], qi as u32, "{metric}: row {i} should answer query {qi}");
            assert!((dists[i] as f64 - d).abs() <= 1e-4 * d.abs().max(1.0), "{metric} q{qi} rank {rank}: {} vs {d}", dists[i]);
            if &ids[i] != id {
                let theirs = want.iter().find(|w| w.0 == ids[i]).map_or(f64::MAX, |w| w.1);
                assert!((theirs - d).abs() < 1e-5, "{metric} q{qi} rank {rank}: {} vs {id}", ids[i]);
            }
        }
        at += want.len();
    }
    assert_eq!(ids.len(), at, "{metric}: no rows beyond each query's k");
}

/// A batched search over large rows is read and sent in chunks of hits (memory: one chunk,
/// not queries × k rows); the chunks together are the whole answer, in order.
#[tokio::test(flavor = "multi_thread")]
async fn batched_search_over_large_rows_streams_in_chunks() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut rows = random_rows("big", 300, DIM);
    for (i, row) in rows.iter_mut().enumerate() {
        row.raw = vec![i as u8; 20_000];
    }
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();
    let queries: Vec<Vec<f32>> = (0..40).map(|_| random_vector(DIM)).collect();
    let found = client.query(&Query::search_batch("t", queries.clone(), 40)).await.unwrap();
    assert!(found.batches.len() >= 2, "1600 hits of 20 kB rows come in several batches, got {}", found.batches.len());
    check_batch(&rows, &found, &queries, "cosine", 40, &|_| true);
    let raw = found.batches.iter().flat_map(|b| b.column_by_name("raw_data").unwrap().as_binary::<i64>().iter().map(|v| v.unwrap().to_vec()).collect::<Vec<_>>());
    for (id, bytes) in string_column(&found, "id").iter().zip(raw) {
        assert_eq!(bytes, rows.iter().find(|r| &r.id == id).unwrap().raw, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batched_search_equals_the_reference_for_every_metric_filter_and_version() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut rows = random_rows("r", 600, DIM);
    client.put("t", vec![batch(&rows[..300], DIM)]).await.unwrap();
    let first_version = client.describe_table("t").await.unwrap().version;
    client.put("t", vec![batch(&rows[300..], DIM)]).await.unwrap();

    // The same query twice and a stored row's own vector: one row answers several queries.
    let mut queries: Vec<Vec<f32>> = (0..4).map(|_| random_vector(DIM)).collect();
    queries.push(queries[1].clone());
    queries.push(rows[42].embedding.clone().unwrap());
    for metric in ["cosine", "dot", "l2"] {
        let query = Query { metric: Metric::parse(metric), ..Query::search_batch("t", queries.clone(), 7) };
        let found = client.query(&query).await.unwrap();
        assert_eq!(found.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some("exact_cpu"));
        check_batch(&rows, &found, &queries, metric, 7, &|_| true);
        // Whole rows come back for repeated hits too.
        let raw: Vec<Vec<u8>> = found
            .batches
            .iter()
            .flat_map(|b| b.column_by_name("raw_data").unwrap().as_binary::<i64>().iter().map(|v| v.unwrap().to_vec()).collect::<Vec<_>>())
            .collect();
        for (id, bytes) in string_column(&found, "id").iter().zip(raw) {
            assert_eq!(bytes, rows.iter().find(|r| &r.id == id).unwrap().raw);
        }
        // Asking for ids only (answered from the engine's id copy) gives the same rows.
        let ids_only = client.query(&Query { columns: Some(vec!["id".into()]), ..query.clone() }).await.unwrap();
        let names: Vec<&str> = ids_only.schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, vec!["id", "_distance", "_query"]);
        assert_eq!(string_column(&ids_only, "id"), string_column(&found, "id"));
        assert_eq!(query_column(&ids_only), query_column(&found));
    }

    // A prefilter applies to every query; a filter matching fewer than k rows returns them all.
    let filtered = Query { filter: Some("data_type = 'image'".into()), ..Query::search_batch("t", queries.clone(), 5) };
    check_batch(&rows, &client.query(&filtered).await.unwrap(), &queries, "cosine", 5, &|r| r.data_type == "image");
    let one = Query { filter: Some("id = 'r-7'".into()), ..Query::search_batch("t", queries.clone(), 5) };
    let found = client.query(&one).await.unwrap();
    assert_eq!(query_column(&found), (0..queries.len() as u32).collect::<Vec<_>>());
    assert!(string_column(&found, "id").iter().all(|id| id == "r-7"));

    // A pinned version is answered from that version's rows.
    let pinned = Query { version: Some(first_version), ..Query::search_batch("t", queries.clone(), 4) };
    let found = client.query(&pinned).await.unwrap();
    assert_eq!(found.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some("exact_cpu_scan"));
    check_batch(&rows[..300], &found, &queries, "cosine", 4, &|_| true);

    // Writes are seen by the next batch, ids included: r-5 moves, r-42 is deleted.
    let mut moved = rows[5].clone();
    moved.embedding = Some(random_vector(DIM));
    client.put("t", vec![batch(&[moved.clone()], DIM)]).await.unwrap();
    client.delete("t", "id = 'r-42'").await.unwrap();
    rows[5] = moved.clone();
    rows.retain(|r| r.id != "r-42");
    let after = vec![moved.embedding.clone().unwrap(), queries[5].clone()];
    let found = client.query(&Query { columns: Some(vec!["id".into()]), ..Query::search_batch("t", after.clone(), 3) }).await.unwrap();
    check_batch(&rows, &found, &after, "cosine", 3, &|_| true);
    assert_eq!(string_column(&found, "id")[0], "r-5");
    assert!(!string_column(&found, "id").contains(&"r-42".to_string()));

    // The search action reports which query each hit answers.
    let hits: Vec<SearchHit> = client.search_hits(&Query::search_batch("t", after.clone(), 2)).await.unwrap();
    assert_eq!(hits.iter().map(|h| h.query).collect::<Vec<_>>(), vec![Some(0), Some(0), Some(1), Some(1)]);
    assert_eq!(hits[0].id, "r-5");
    let single: Vec<SearchHit> = client.search_hits(&Query::search("t", after[0].clone(), 1)).await.unwrap();
    assert_eq!(single[0].query, None);

    // GetFlightInfo / GetSchema plan the batch without running it.
    let descriptor = FlightDescriptor::new_cmd(Query::search_batch("t", after, 2).to_json());
    let schema = client.schema(descriptor).await.unwrap();
    assert_eq!(schema.field_with_name("_query").unwrap().data_type(), &arrow::datatypes::DataType::UInt32);
}

/// l2 over rows clustered far from the origin (1000 ± 0.01 per dim): the distances are tiny
/// beside |q|² + |x|², which a batched pass must not lose to cancellation. A batch answers
/// exactly as the same vectors searched one at a time, to the reference's 1e-5 relative.
#[tokio::test(flavor = "multi_thread")]
async fn batched_l2_far_from_the_origin_equals_single_searches() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut rows = random_rows("f", 400, DIM);
    for row in &mut rows {
        row.embedding = row.embedding.take().map(|e| e.iter().map(|v| 1000.0 + 0.01 * v).collect());
    }
    client.put("far", vec![batch(&rows, DIM)]).await.unwrap();
    let queries: Vec<Vec<f32>> = rows[..5].iter().map(|r| r.embedding.clone().unwrap()).collect();
    let batched = client.query(&Query { metric: Metric::parse("l2"), ..Query::search_batch("far", queries.clone(), 5) }).await.unwrap();
    let (ids, dists) = (string_column(&batched, "id"), distances(&batched));
    assert_eq!(ids.len(), 25);
    for (qi, q) in queries.iter().enumerate() {
        let single = client.query(&Query { metric: Metric::parse("l2"), ..Query::search("far", q.clone(), 5) }).await.unwrap();
        assert_eq!(&ids[qi * 5..qi * 5 + 5], &string_column(&single, "id")[..], "query {qi}: batched and single searches differ");
        assert_eq!(&dists[qi * 5..qi * 5 + 5], &distances(&single)[..], "query {qi}");
        assert_eq!(ids[qi * 5], format!("f-{qi}"), "a stored row is its own nearest");
        for ((id, d), (want_id, want)) in ids[qi * 5..].iter().zip(&dists[qi * 5..]).zip(brute_force(&rows, q, "l2", 5, |_| true)) {
            assert!((*d as f64 - want).abs() <= 1e-5 * want + 1e-12, "query {qi}: {id} at {d} vs {want_id} at {want}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_batched_searches_are_refused_precisely() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("t", vec![batch(&random_rows("b", 10, DIM), DIM)]).await.unwrap();
    let before = client.describe_table("t").await.unwrap().version;
    let v = || random_vector(DIM);

    assert_status(client.search_batch("t", vec![], 3).await, Code::InvalidArgument, "\"vectors\" is empty");
    assert_status(client.search_batch("t", vec![v(), vec![1.0; DIM + 1]], 3).await, Code::InvalidArgument, "vectors[1] has 25 values");
    // 1e39 overflows f32: a non-finite value (JSON has no NaN).
    let ticket = format!(r#"{{"table": "t", "vectors": [{:?}, [0, 0, 0, 1e39{}]]}}"#, v(), ", 0".repeat(DIM - 4));
    assert_status(raw_ticket(&mut client, ticket).await, Code::InvalidArgument, "vectors[1][3] is not finite");
    assert_status(
        client.query(&Query { vector: Some(v()), ..Query::search_batch("t", vec![v()], 3) }).await,
        Code::InvalidArgument,
        "send one of",
    );
    assert_status(client.search_batch("t", vec![v(); 1025], 1).await, Code::InvalidArgument, "at most 1024");
    assert_status(client.search_batch("t", vec![v(); 100], 20_000).await, Code::InvalidArgument, "at most 1000000");
    assert_status(
        client.query(&Query { columns: Some(vec!["id".into(), "_query".into()]), ..Query::search("t", v(), 3) }).await,
        Code::InvalidArgument,
        "'_query' exists only in batched",
    );
    assert_status(client.query(&Query { texts: Some(vec!["a".into()]), ..Query::scan("t") }).await, Code::InvalidArgument, "no embedding model");
    assert_status(client.search_batch("missing", vec![v()], 3).await, Code::NotFound, "table 'missing' does not exist");
    assert_eq!(client.describe_table("t").await.unwrap().version, before);
}

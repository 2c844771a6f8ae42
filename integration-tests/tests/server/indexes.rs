//! ANN and scalar indexes built through Lance, searched with `"exact": false`.
use hyprstream_client::proto::{IndexProgress, Metric, OptimizeSummary, PutMode, Query};
use hyprstream_client::{HyprstreamClient, Rows};
use tonic::Code;

use crate::common::*;

const DIM: usize = 32;

async fn create_index(client: &mut HyprstreamClient, body: serde_json::Value) -> Vec<IndexProgress> {
    let results = client.action_raw("create_index", body.to_string()).await.unwrap();
    results.iter().map(|r| serde_json::from_slice(r).unwrap()).collect()
}

fn ann(table: &str, q: Vec<f32>, k: usize) -> Query {
    Query { exact: Some(false), ..Query::search(table, q, k) }
}

/// The server probes an index itself when nothing else is asked. A filter that admits every
/// row must not change the answer: it goes through Lance's planner where the index has several
/// partitions, else through the server's filtered graph walk (table "t").
async fn assert_direct_equals_planned(client: &mut HyprstreamClient, kind: &str, nprobes: Option<usize>) {
    for _ in 0..3 {
        let direct = Query { nprobes, ef: Some(100), ..ann("t", random_vector(DIM), 10) };
        let planned = Query { filter: Some("id IS NOT NULL".into()), ..direct.clone() };
        let (d, p) = (client.query(&direct).await.unwrap(), client.query(&planned).await.unwrap());
        assert_eq!(d.num_rows(), 10, "{kind}");
        let (dd, pd) = (distances(&d), distances(&p));
        for (a, b) in dd.iter().zip(&pd) {
            assert!((a - b).abs() <= 1e-6, "{kind}: {a} vs {b}");
        }
        // Rows at equal distance (PQ codes tie) may come in either order, and at the last
        // distance either may be the one cut off: ids are compared by distance group.
        let (di, pi) = (string_column(&d, "id"), string_column(&p, "id"));
        let last = dd[dd.len() - 1];
        let group = |ids: &[String], ds: &[f32], at: f32| {
            let mut g: Vec<String> = ids.iter().zip(ds).filter(|(_, x)| (**x - at).abs() <= 1e-6).map(|(id, _)| id.clone()).collect();
            g.sort();
            g
        };
        for &at in dd.iter().filter(|x| (**x - last).abs() > 1e-6) {
            assert_eq!(group(&di, &dd, at), group(&pi, &pd, at), "{kind}: {di:?} vs {pi:?}");
        }
    }
}

/// How many rows of `found` exact search also returned; each of them must carry the exact
/// distance (within `tolerance`).
fn shared_with_exact_distances(found: &Rows, exact: &Rows, tolerance: f32) -> usize {
    let (exact_ids, exact_d) = (string_column(exact, "id"), distances(exact));
    let mut shared = 0;
    for (id, d) in string_column(found, "id").iter().zip(distances(found)) {
        if let Some(at) = exact_ids.iter().position(|e| e == id) {
            shared += 1;
            assert!((d - exact_d[at]).abs() <= tolerance, "{id}: {d} vs exact {}", exact_d[at]);
        }
    }
    shared
}

#[tokio::test(flavor = "multi_thread")]
async fn ivf_flat_probing_every_partition_equals_exact_search_and_sees_new_rows() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("i", 3000, DIM);
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();

    let progress = create_index(&mut client, serde_json::json!({"table": "t", "type": "ivf_flat", "num_partitions": 8})).await;
    assert_eq!(progress.iter().map(|p| p.stage.as_str()).collect::<Vec<_>>(), vec!["started", "done"]);
    let done = progress.last().unwrap();
    assert_eq!(done.index.as_ref().unwrap().columns, vec!["embedding"]);
    let described = client.describe_table("t").await.unwrap();
    assert_eq!(described.indexes.len(), 1);
    assert_eq!(described.version, done.version.unwrap());
    // A filter that fails only on the rows it meets, in a search Lance's planner answers (a
    // pinned version): the filter's fault (it was INTERNAL there), named in the message.
    let failing = Query { filter: Some("1/0 = 1".into()), version: Some(described.version), ..ann("t", random_vector(DIM), 5) };
    assert_status(client.query(&failing).await, Code::InvalidArgument, "invalid filter '1/0 = 1'");

    for _ in 0..3 {
        let q = random_vector(DIM);
        let exact = client.search("t", q.clone(), 10).await.unwrap();
        let approx = client.query(&Query { nprobes: Some(8), ..ann("t", q.clone(), 10) }).await.unwrap();
        assert_eq!(approx.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some("ann"));
        assert_eq!(string_column(&approx, "id"), string_column(&exact, "id"));
        for (a, e) in distances(&approx).iter().zip(distances(&exact)) {
            assert!((a - e).abs() < 1e-4, "{a} vs {e}");
        }
    }

    // A batch through the index: one Lance query per vector, stitched with `_query`.
    let queries: Vec<Vec<f32>> = (0..3).map(|_| random_vector(DIM)).collect();
    let exact = client.search_batch("t", queries.clone(), 10).await.unwrap();
    let approx = client
        .query(&Query { exact: Some(false), nprobes: Some(8), ..Query::search_batch("t", queries, 10) })
        .await
        .unwrap();
    assert_eq!(approx.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some("ann"));
    assert_eq!(query_column(&approx), query_column(&exact));
    assert_eq!(string_column(&approx, "id"), string_column(&exact, "id"));

    // Ids only: the same rows, named from the server's id map instead of a Lance take.
    let q = random_vector(DIM);
    let full = client.query(&Query { nprobes: Some(8), ..ann("t", q.clone(), 10) }).await.unwrap();
    let ids_only = client.query(&Query { nprobes: Some(8), columns: Some(vec!["id".into()]), ..ann("t", q.clone(), 10) }).await.unwrap();
    assert_eq!(ids_only.schema.fields().len(), 2);
    assert_eq!(string_column(&ids_only, "id"), string_column(&full, "id"));
    assert_eq!(distances(&ids_only), distances(&full));
    // ... and the map follows writes: a moved row is found under its id, a deleted one never.
    let best = string_column(&full, "id")[0].clone();
    client.delete("t", &format!("id = '{best}'")).await.unwrap();
    let after = client.query(&Query { nprobes: Some(8), columns: Some(vec!["id".into()]), ..ann("t", q.clone(), 10) }).await.unwrap();
    assert!(!string_column(&after, "id").contains(&best));
    assert_eq!(string_column(&after, "id")[..9], string_column(&full, "id")[1..]);
    let mut moved = rows[7].clone();
    moved.embedding = Some(q.clone());
    client.put("t", vec![batch(&[moved], DIM)]).await.unwrap();
    let after = client.query(&Query { nprobes: Some(8), columns: Some(vec!["id".into()]), ..ann("t", q, 1) }).await.unwrap();
    assert_eq!(string_column(&after, "id"), vec!["i-7"]);

    // Rows added after the build are found (Lance searches unindexed fragments exactly) ...
    let fresh = random_rows("fresh", 5, DIM);
    client.put("t", vec![batch(&fresh, DIM)]).await.unwrap();
    let q = fresh[2].embedding.clone().unwrap();
    let hit = client.query(&Query { nprobes: Some(1), ..ann("t", q.clone(), 1) }).await.unwrap();
    assert_eq!(string_column(&hit, "id"), vec!["fresh-2"]);
    // ... and still after optimize folds them in and compacts.
    let summary: OptimizeSummary = client.action("optimize", &serde_json::json!({"table": "t"})).await.unwrap();
    assert!(summary.version > done.version.unwrap());
    let hit = client.query(&Query { nprobes: Some(8), ..ann("t", q.clone(), 1) }).await.unwrap();
    assert_eq!(string_column(&hit, "id"), vec!["fresh-2"]);
    // The exact engine follows the compaction too.
    let exact = client.search("t", q, 1).await.unwrap();
    assert_eq!(string_column(&exact, "id"), vec!["fresh-2"]);
    assert_eq!(client.describe_table("t").await.unwrap().rows, 3004);
}

#[tokio::test(flavor = "multi_thread")]
async fn hnsw_and_pq_indexes_answer_with_useful_recall_and_filters() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("h", 3000, DIM);
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();
    create_index(&mut client, serde_json::json!({"table": "t", "type": "ivf_hnsw_sq", "num_partitions": 4})).await;

    let mut found = 0;
    let queries = 10;
    for _ in 0..queries {
        let q = random_vector(DIM);
        let exact = string_column(&client.search("t", q.clone(), 10).await.unwrap(), "id");
        let approx = string_column(&client.query(&Query { nprobes: Some(4), ef: Some(200), ..ann("t", q, 10) }).await.unwrap(), "id");
        found += approx.iter().filter(|id| exact.contains(id)).count();
    }
    let recall = found as f64 / (10 * queries) as f64;
    assert!(recall >= 0.8, "recall@10 {recall}");

    assert_direct_equals_planned(&mut client, "ivf_hnsw_sq", Some(4)).await;

    // A prefilter applies to ANN searches too.
    let q = random_vector(DIM);
    let filtered = client
        .query(&Query { filter: Some("json_get_int(metadata, 'chapter') = 2".into()), nprobes: Some(4), ..ann("t", q.clone(), 10) })
        .await
        .unwrap();
    let ids = string_column(&filtered, "id");
    assert_eq!(ids.len(), 10);
    for id in ids {
        let i: usize = id.trim_start_matches("h-").parse().unwrap();
        assert_eq!(i % 5, 2, "{id} is not in chapter 2");
    }

    // IVF_PQ replaces the index; the search still answers k rows, refine re-ranks exactly.
    create_index(&mut client, serde_json::json!({"table": "t", "type": "ivf_pq", "num_partitions": 4})).await;
    // `refine` through Lance first: the exact engine is still at the version before this index.
    let q = random_vector(DIM);
    let refined = Query { refine: Some(4), nprobes: Some(4), ..ann("t", q.clone(), 10) };
    let by_lance = client.query(&refined).await.unwrap();
    // An exact search brings the engine to this version; now refine re-ranks in memory.
    let exact = client.search("t", q.clone(), 10).await.unwrap();
    let in_memory = client.query(&refined).await.unwrap();
    assert_eq!(string_column(&in_memory, "id"), string_column(&by_lance, "id"));
    for (a, b) in distances(&in_memory).iter().zip(distances(&by_lance)) {
        assert!((a - b).abs() <= 1e-5, "in-memory refine {a} vs Lance refine {b}");
    }
    assert!(shared_with_exact_distances(&in_memory, &exact, 1e-5) > 0);
    let top = client.query(&Query { refine: Some(10), nprobes: Some(4), metric: None, ..ann("t", rows[7].embedding.clone().unwrap(), 3) }).await.unwrap();
    assert_eq!(string_column(&top, "id")[0], "h-7");
    assert!(distances(&top)[0].abs() < 1e-4);
    assert_direct_equals_planned(&mut client, "ivf_pq", Some(4)).await;

    // IVF_HNSW_FLAT: the graph over the float32 vectors, so its distances are exact ones.
    create_index(&mut client, serde_json::json!({"table": "t", "type": "ivf_hnsw_flat", "num_partitions": 4, "m": 12, "ef_construction": 100})).await;
    let described = client.describe_table("t").await.unwrap();
    assert_eq!(described.indexes.iter().map(|i| i.index_type.as_str()).collect::<Vec<_>>(), vec!["IVF_HNSW_FLAT"]);
    let mut found = 0;
    for _ in 0..queries {
        let q = random_vector(DIM);
        let exact = client.search("t", q.clone(), 10).await.unwrap();
        let approx = client.query(&Query { nprobes: Some(4), ef: Some(200), ..ann("t", q, 10) }).await.unwrap();
        found += shared_with_exact_distances(&approx, &exact, 1e-4);
    }
    let recall = found as f64 / (10 * queries) as f64;
    assert!(recall >= 0.9, "IVF_HNSW_FLAT recall@10 {recall}");
    assert_direct_equals_planned(&mut client, "ivf_hnsw_flat", Some(4)).await;

    // By default an HNSW index is one graph (Lance's layout up to 2^20 rows); with one
    // partition a search without `nprobes` answers exactly like the planner's.
    let done = create_index(&mut client, serde_json::json!({"table": "t", "type": "ivf_hnsw_flat"})).await;
    assert_eq!(done.last().unwrap().stage, "done");
    assert_direct_equals_planned(&mut client, "ivf_hnsw_flat, one partition", None).await;
}

/// A server with table "t" of 3000 random rows (ids `prefix-N`) and a one-graph HNSW index
/// of `kind` (M 16, ef_construction 200) over them.
async fn hnsw_table(prefix: &str, kind: &str) -> (Server, HyprstreamClient, Vec<Row>) {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows(prefix, 3000, DIM);
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();
    create_index(&mut client, serde_json::json!({"table": "t", "type": kind, "m": 16, "ef_construction": 200})).await;
    (server, client, rows)
}

fn search_path(found: &Rows) -> &str {
    found.schema.metadata().get("hyprstream.search_path").map(String::as_str).unwrap_or_default()
}

/// A filtered ANN search returns only rows the filter admits, k of them, near the exact
/// filtered answer: through a graph walk that skips refused rows (most rows admitted), exactly
/// in memory (few admitted, engine loaded) or through Lance's planner (few, engine not loaded).
/// The filter's rows are worked out once per version: a delete must still take rows out.
#[tokio::test(flavor = "multi_thread")]
async fn filtered_ann_searches_return_only_admitted_rows() {
    let (_server, mut client, rows) = hnsw_table("f", "ivf_hnsw_sq").await;
    const SQ: f32 = 0.02;
    let chapter = |id: &str| rows.iter().position(|r| r.id == id).unwrap() % 5;
    // 80 % of rows admitted; then 7 % (ids f-8…, f-9…).
    let broad = "json_get_int(metadata, 'chapter') <> 2";
    let narrow = "id >= 'f-8'";
    let queries: Vec<Vec<f32>> = (0..10).map(|_| random_vector(DIM)).collect();
    let filtered = |filter: &str, q: &Vec<f32>| Query { ef: Some(100), filter: Some(filter.into()), ..ann("t", q.clone(), 10) };

    // Before any exact search: the engine is not loaded.
    for q in &queries[..3] {
        let found = client.query(&filtered(broad, q)).await.unwrap();
        assert_eq!(search_path(&found), "ann");
        assert!(string_column(&found, "id").iter().all(|id| chapter(id) != 2));
        let found = client.query(&filtered(narrow, q)).await.unwrap();
        assert_eq!(search_path(&found), "ann");
        assert_eq!(found.num_rows(), 10);
        assert!(string_column(&found, "id").iter().all(|id| id.as_str() >= "f-8"));
    }

    let mut shared = 0;
    for q in &queries {
        let exact = client.query(&Query { filter: Some(broad.into()), ..Query::search("t", q.clone(), 10) }).await.unwrap();
        let found = client.query(&filtered(broad, q)).await.unwrap();
        assert_eq!(search_path(&found), "ann");
        let ids = string_column(&found, "id");
        assert_eq!(ids.len(), 10);
        assert!(ids.iter().all(|id| chapter(id) != 2), "a refused row came back: {ids:?}");
        shared += shared_with_exact_distances(&found, &exact, SQ);
        // Few rows admitted and the engine loaded (by the exact search): ranked exactly.
        let exact = client.query(&Query { filter: Some(narrow.into()), ..Query::search("t", q.clone(), 10) }).await.unwrap();
        let found = client.query(&filtered(narrow, q)).await.unwrap();
        assert_eq!(search_path(&found), "exact_cpu");
        assert_eq!(string_column(&found, "id"), string_column(&exact, "id"));
    }
    assert!(shared >= 90, "filtered recall@10 {shared}/100");

    // Deleting admitted rows, the query's nearest among them, makes a new version: they go.
    let q = &queries[0];
    let before = string_column(&client.query(&filtered(broad, q)).await.unwrap(), "id");
    let gone = &before[..3];
    let delete = gone.iter().map(|id| format!("id = '{id}'")).collect::<Vec<_>>().join(" OR ");
    assert_eq!(client.delete("t", &delete).await.unwrap().deleted, 3);
    let after = string_column(&client.query(&filtered(broad, q)).await.unwrap(), "id");
    assert_eq!(after.len(), 10);
    assert!(after.iter().all(|id| !gone.contains(id) && chapter(id) != 2), "{after:?}");
    assert!(after.contains(&before[3]), "{after:?}");
}

/// Deleted rows stay in an index until it is rebuilt: searches must skip them and still
/// answer k live rows, for a few deletions (the server searches past them itself) and for
/// many (Lance's planner prefilters), with and without `refine`.
#[tokio::test(flavor = "multi_thread")]
async fn ann_searches_skip_deleted_rows_and_still_answer_k() {
    let (_server, mut client, rows) = hnsw_table("d", "ivf_hnsw_flat").await;
    let target = rows[7].embedding.clone().unwrap();
    let before = client.query(&Query { ef: Some(100), ..ann("t", target.clone(), 10) }).await.unwrap();
    let before = string_column(&before, "id");
    assert_eq!(before[0], "d-7");
    // An exact search loads the in-memory engine at this version; the deletes below put it behind.
    client.search("t", target.clone(), 10).await.unwrap();

    // The row itself, its next two neighbours and twenty rows elsewhere.
    let mut gone: Vec<String> = before[..3].to_vec();
    gone.extend((100..120).map(|i| format!("d-{i}")));
    let filter = gone.iter().map(|id| format!("id = '{id}'")).collect::<Vec<_>>().join(" OR ");
    assert_eq!(client.delete("t", &filter).await.unwrap().deleted, 23);

    let check = |found: &Rows, exact: &Rows, what: &str| {
        let ids = string_column(found, "id");
        assert_eq!(ids.len(), 10, "{what}");
        assert!(ids.iter().all(|id| !gone.contains(id)), "{what}: a deleted row came back: {ids:?}");
        shared_with_exact_distances(found, exact, 1e-4)
    };
    let mut shared = 0;
    let queries: Vec<Vec<f32>> = std::iter::once(target.clone()).chain((0..9).map(|_| random_vector(DIM))).collect();
    for q in &queries {
        let exact = client.search("t", q.clone(), 10).await.unwrap();
        for ef in [10, 100] {
            let found = client.query(&Query { ef: Some(ef), ..ann("t", q.clone(), 10) }).await.unwrap();
            let n = check(&found, &exact, &format!("ef {ef}"));
            if ef == 100 {
                shared += n;
            }
        }
        // The shortlist re-ranked by the in-memory engine, brought up to the deletes.
        let refined = client.query(&Query { ef: Some(100), refine: Some(3), ..ann("t", q.clone(), 10) }).await.unwrap();
        check(&refined, &exact, "refine 3");
    }
    assert!(shared >= 95, "recall@10 after deletes: {shared}/100");
    let first = client.query(&Query { ef: Some(100), ..ann("t", target.clone(), 10) }).await.unwrap();
    assert_eq!(string_column(&first, "id")[0], before[3], "the nearest live row comes first");

    // Past a thousand deleted rows the planner prefilters; the answer is as good.
    let many_gone = |id: &String| id.starts_with("d-2") || gone.contains(id);
    let newly_gone = rows.iter().filter(|r| r.id.starts_with("d-2") && !gone.contains(&r.id)).count();
    assert!(newly_gone > 1024);
    assert_eq!(client.delete("t", "id >= 'd-2' AND id < 'd-3'").await.unwrap().deleted as usize, newly_gone);
    for q in &queries[..3] {
        let exact = client.search("t", q.clone(), 10).await.unwrap();
        let found = client.query(&Query { ef: Some(100), ..ann("t", q.clone(), 10) }).await.unwrap();
        let ids = string_column(&found, "id");
        assert_eq!(ids.len(), 10);
        assert!(ids.iter().all(|id| !many_gone(id)), "a deleted row came back: {ids:?}");
        assert!(shared_with_exact_distances(&found, &exact, 1e-4) >= 8);
    }
}

/// Rows put after an index was built are found by ANN searches before `optimize` folds them
/// in: by Lance's planner, or by the server's in-memory engine once an exact search has
/// loaded it. Distances follow the contract (1 − cos) for a quantised index too.
#[tokio::test(flavor = "multi_thread")]
async fn ann_searches_find_rows_put_after_the_index_with_contract_distances() {
    let (_server, mut client, rows) = hnsw_table("a", "ivf_hnsw_sq").await;
    // IVF_HNSW_SQ ranks by 8-bit codes: its distances are the exact ones up to that rounding.
    const SQ: f32 = 0.02;
    let queries: Vec<Vec<f32>> = (0..10).map(|_| random_vector(DIM)).collect();
    for q in &queries[..3] {
        let exact = client.search("t", q.clone(), 10).await.unwrap();
        for filter in [None, Some("id IS NOT NULL".to_string())] {
            let found = client.query(&Query { ef: Some(100), filter, ..ann("t", q.clone(), 10) }).await.unwrap();
            assert!(shared_with_exact_distances(&found, &exact, SQ) >= 8);
        }
    }

    // New rows, each close to an indexed one: exact search ranks them near the top.
    let mut added = random_rows("b", 200, DIM);
    for (row, near) in added.iter_mut().zip(&rows) {
        let v = near.embedding.as_ref().unwrap();
        row.embedding = Some(v.iter().map(|x| x + 0.01).collect());
    }
    client.put_with_mode("t", PutMode::Append, vec![batch(&added, DIM)]).await.unwrap();
    let target = added[5].embedding.clone().unwrap();
    for q in std::iter::once(&target).chain(&queries) {
        let exact = client.search("t", q.clone(), 10).await.unwrap();
        for (what, query) in [
            ("in memory", Query { ef: Some(100), ..ann("t", q.clone(), 10) }),
            ("in memory, refine 2", Query { ef: Some(100), refine: Some(2), ..ann("t", q.clone(), 10) }),
            ("planner", Query { ef: Some(100), filter: Some("id IS NOT NULL".into()), ..ann("t", q.clone(), 10) }),
        ] {
            let found = client.query(&query).await.unwrap();
            assert_eq!(found.num_rows(), 10, "{what}");
            let d = distances(&found);
            assert!(d.windows(2).all(|w| w[0] <= w[1]), "{what}: not nearest first: {d:?}");
            assert!(shared_with_exact_distances(&found, &exact, SQ) >= 8, "{what}");
        }
    }
    let first = client.query(&Query { ef: Some(100), ..ann("t", target.clone(), 3) }).await.unwrap();
    assert_eq!(string_column(&first, "id")[0], "b-5");
    assert!(distances(&first)[0].abs() < 1e-5);
}

#[tokio::test(flavor = "multi_thread")]
async fn scalar_indexes_keep_filters_correct() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("s", 500, DIM);
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();
    create_index(&mut client, serde_json::json!({"table": "t", "type": "btree", "column": "id"})).await;
    create_index(&mut client, serde_json::json!({"table": "t", "type": "bitmap", "column": "data_type"})).await;
    let mut kinds: Vec<String> = client.describe_table("t").await.unwrap().indexes.into_iter().map(|i| i.index_type).collect();
    kinds.sort();
    assert_eq!(kinds, vec!["BTreeIndexDetails", "BitmapIndexDetails"]);
    let images = client.query(&Query { filter: Some("data_type = 'image'".into()), ..Query::scan("t") }).await.unwrap();
    assert_eq!(images.num_rows(), rows.iter().filter(|r| r.data_type == "image").count());
    let one = client.query(&Query { filter: Some("id = 's-42'".into()), ..Query::scan("t") }).await.unwrap();
    assert_eq!(string_column(&one, "id"), vec!["s-42"]);
}

/// An index is reported by the name it was built under; a new vector (scalar) index on a
/// column replaces the column's vector (scalar) index whatever its name; names are checked.
#[tokio::test(flavor = "multi_thread")]
async fn named_indexes_replace_the_columns_index_of_their_sort() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("t", vec![batch(&random_rows("n", 400, DIM), DIM)]).await.unwrap();
    let built = |progress: Vec<IndexProgress>| {
        let index = progress.last().unwrap().index.clone().unwrap();
        (index.name, index.index_type)
    };
    let listed = |d: hyprstream_client::proto::TableDescription| {
        let mut names: Vec<(String, String)> = d.indexes.into_iter().map(|i| (i.name, i.columns.join(","))).collect();
        names.sort();
        names
    };
    let first = create_index(&mut client, serde_json::json!({"table": "t", "type": "ivf_flat"})).await;
    assert_eq!(built(first), ("embedding_idx".to_string(), "IVF_FLAT".to_string()));
    create_index(&mut client, serde_json::json!({"table": "t", "type": "btree", "column": "id", "name": "by_id"})).await;
    let second = create_index(&mut client, serde_json::json!({"table": "t", "type": "ivf_pq", "name": "second"})).await;
    assert_eq!(built(second), ("second".to_string(), "IVF_PQ".to_string()));
    let described = client.describe_table("t").await.unwrap();
    assert_eq!(listed(described), vec![("by_id".to_string(), "id".to_string()), ("second".to_string(), "embedding".to_string())]);
    // The new index answers.
    let q = random_vector(DIM);
    assert_eq!(client.query(&Query { nprobes: Some(4), ..ann("t", q, 5) }).await.unwrap().num_rows(), 5);
    // `optimize` folds new rows in as another segment of the same index: still one entry.
    client.put("t", vec![batch(&random_rows("m", 50, DIM), DIM)]).await.unwrap();
    client.action_raw("optimize", serde_json::json!({"table": "t"}).to_string()).await.unwrap();
    let described = client.describe_table("t").await.unwrap();
    assert_eq!(listed(described), vec![("by_id".to_string(), "id".to_string()), ("second".to_string(), "embedding".to_string())]);

    let before = client.describe_table("t").await.unwrap().version;
    assert_status(
        client.action_raw("create_index", serde_json::json!({"table": "t", "type": "bitmap", "column": "data_type", "name": "second"}).to_string()).await,
        Code::AlreadyExists,
        "index 'second' already exists on column 'embedding'",
    );
    for name in ["", "../x", "a/b", &"n".repeat(65)] {
        assert_status(
            client.action_raw("create_index", serde_json::json!({"table": "t", "type": "ivf_flat", "name": name}).to_string()).await,
            Code::InvalidArgument,
            "invalid index name",
        );
    }
    assert_eq!(client.describe_table("t").await.unwrap().version, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_index_requests_are_refused() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("small", vec![batch(&random_rows("x", 100, DIM), DIM)]).await.unwrap();
    let before = client.describe_table("small").await.unwrap().version;
    let call = |body: serde_json::Value| body.to_string();
    assert_status(client.action_raw("create_index", call(serde_json::json!({"table": "nope", "type": "ivf_flat"}))).await, Code::NotFound, "nope");
    assert_status(client.action_raw("create_index", call(serde_json::json!({"table": "small", "type": "ivf_pq"}))).await, Code::InvalidArgument, "at least 256 rows");
    // 300 rows, 60 without a vector: IVF_PQ trains on 240, too few (Lance would commit a broken
    // index); a table without any vector has nothing to index.
    let mut rows = random_rows("n", 300, DIM);
    rows[..60].iter_mut().for_each(|r| r.embedding = None);
    client.put("nulls", vec![batch(&rows, DIM)]).await.unwrap();
    let nulls_before = client.describe_table("nulls").await.unwrap().version;
    assert_status(client.action_raw("create_index", call(serde_json::json!({"table": "nulls", "type": "ivf_pq"}))).await, Code::InvalidArgument, "has 240");
    rows.iter_mut().for_each(|r| r.embedding = None);
    client.put("nulls", vec![batch(&rows, DIM)]).await.unwrap();
    let nulls_before = nulls_before + 1;
    assert_status(client.action_raw("create_index", call(serde_json::json!({"table": "nulls", "type": "ivf_flat"}))).await, Code::InvalidArgument, "0 rows with a vector");
    assert_eq!(client.describe_table("nulls").await.unwrap().version, nulls_before);
    assert_status(client.action_raw("create_index", call(serde_json::json!({"table": "small", "type": "btree"}))).await, Code::InvalidArgument, "needs \"column\"");
    assert_status(client.action_raw("create_index", call(serde_json::json!({"table": "small", "type": "annoy"}))).await, Code::InvalidArgument, "unknown variant");
    assert_status(client.action_raw("create_index", call(serde_json::json!({"table": "small", "type": "ivf_flat", "column": "data_type"}))).await, Code::InvalidArgument, "fixed_size_list");
    assert_status(client.action_raw("create_index", call(serde_json::json!({"table": "small", "type": "ivf_flat", "m": 8}))).await, Code::InvalidArgument, "apply to ivf_hnsw_sq and ivf_hnsw_flat only");
    // HNSW sizes: ef_construction 2^40 once aborted the server (an allocation of 8 TB); m < 4
    // and ef_construction < m Lance refused only after `started`.
    for (m, ef, needle) in [(3, 100, "m must be between 4 and 256"), (1000, 2000, "m must be between"), (16, 8, "ef_construction must be between m (16)"), (16, 1u64 << 40, "and 10000")] {
        let body = serde_json::json!({"table": "small", "type": "ivf_hnsw_flat", "num_partitions": 1, "m": m, "ef_construction": ef});
        assert_status(client.action_raw("create_index", call(body)).await, Code::InvalidArgument, needle);
    }
    // Scalar indexes need a flat column of numbers, strings, booleans or times.
    for column in ["raw_data", "embedding"] {
        let body = serde_json::json!({"table": "small", "type": "bitmap", "column": column});
        assert_status(client.action_raw("create_index", call(body)).await, Code::InvalidArgument, "needs a flat column");
    }
    for extra in [serde_json::json!({"metric": "l2"}), serde_json::json!({"num_partitions": 4})] {
        let mut body = serde_json::json!({"table": "small", "type": "btree", "column": "id"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        assert_status(client.action_raw("create_index", call(body)).await, Code::InvalidArgument, "apply to vector indexes");
    }
    // A refused build ends the call with its status and no `started` before it.
    for body in [
        serde_json::json!({"table": "small", "type": "ivf_pq"}),
        serde_json::json!({"table": "small", "type": "ivf_hnsw_sq", "m": 2}),
        serde_json::json!({"table": "small", "type": "btree", "column": "raw_data"}),
    ] {
        let mut stream = client.flight().do_action(arrow_flight::Action::new("create_index", call(body.clone()))).await.unwrap();
        match futures::StreamExt::next(&mut stream).await {
            Some(Err(arrow_flight::error::FlightError::Tonic(status))) => assert_eq!(status.code(), Code::InvalidArgument, "{body}: {status}"),
            other => panic!("{body}: expected the refusal first, got {other:?}"),
        }
    }
    // Under cosine Lance trains PQ on vectors that are not all zeros: 300 rows, half of them
    // zero, is too few, and that is the request's fault, not the server's.
    let mut rows = random_rows("z", 300, DIM);
    rows[..150].iter_mut().for_each(|r| r.embedding = Some(vec![0.0; DIM]));
    client.put("zeros", vec![batch(&rows, DIM)]).await.unwrap();
    assert_status(client.action_raw("create_index", call(serde_json::json!({"table": "zeros", "type": "ivf_pq", "num_partitions": 2}))).await, Code::InvalidArgument, "Not enough rows to train PQ");
    // A vector index on a fixed-size list of integers: refused before the build (Lance found it
    // only while building, as INTERNAL).
    {
        use arrow::array::{Array, FixedSizeListArray, RecordBatch};
        use arrow::datatypes::{Field, Int32Type, Schema};
        use std::sync::Arc;
        let base = batch(&random_rows("i", 300, DIM), DIM);
        let codes = FixedSizeListArray::from_iter_primitive::<Int32Type, _, _>((0..300).map(|i| Some(vec![Some(i); 8])), 8);
        let mut fields = base.schema().fields().to_vec();
        fields.push(Arc::new(Field::new("codes", codes.data_type().clone(), true)));
        let mut columns = base.columns().to_vec();
        columns.push(Arc::new(codes));
        client.put("ints", vec![RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()]).await.unwrap();
        let body = serde_json::json!({"table": "ints", "type": "ivf_flat", "column": "codes", "num_partitions": 2});
        assert_status(client.action_raw("create_index", call(body)).await, Code::InvalidArgument, "fixed_size_list<float32>");
    }
    assert_status(client.query(&Query { nprobes: Some(3), ..Query::search("small", random_vector(DIM), 3) }).await, Code::InvalidArgument, "\"exact\": false");
    assert_status(client.query(&Query { ef: Some(5), ..ann("small", random_vector(DIM), 10) }).await, Code::InvalidArgument, "ef 5 is below the 10 candidates");
    assert_status(client.query(&Query { ef: Some(15), refine: Some(2), ..ann("small", random_vector(DIM), 10) }).await, Code::InvalidArgument, "use ef ≥ 20");
    assert_status(client.query(&Query { nprobes: Some(0), ..ann("small", random_vector(DIM), 3) }).await, Code::InvalidArgument, "nprobes must be at least 1");
    assert_status(client.query(&Query { refine: Some(0), ..ann("small", random_vector(DIM), 3) }).await, Code::InvalidArgument, "refine must be at least 1");
    // Lance sizes its heaps by ef and k × refine: these once aborted the server.
    assert_status(client.query(&Query { ef: Some(1 << 40), ..ann("small", random_vector(DIM), 3) }).await, Code::InvalidArgument, "ef 1099511627776 is above 100000");
    assert_status(client.query(&Query { refine: Some(u32::MAX), ..ann("small", random_vector(DIM), 3) }).await, Code::InvalidArgument, "above the 100000 candidates");
    assert_eq!(client.describe_table("small").await.unwrap().version, before);
    // exact: false on a table without a vector index is answered exactly.
    let found = client.query(&ann("small", random_vector(DIM), 3)).await.unwrap();
    assert_eq!(found.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some("exact_cpu"));
    assert_eq!(found.num_rows(), 3);
}

/// What an index cannot answer as asked is answered exactly: a search in another metric than
/// the index's (Lance would rank every row by it), and a cosine query without a direction (a
/// zero vector, at distance 1 from every row). A cosine query's scale never matters, even
/// where its squared length is outside float32; an l2 query's does, and one whose every
/// distance would be infinite is refused.
#[tokio::test(flavor = "multi_thread")]
async fn searches_the_index_cannot_answer_are_exact_and_cosine_ignores_scale() {
    let (_server, mut client, rows) = hnsw_table("z", "ivf_hnsw_flat").await;
    let q = rows[7].embedding.clone().unwrap();

    let zero = client.query(&Query { ef: Some(100), ..ann("t", vec![0.0; DIM], 5) }).await.unwrap();
    assert_eq!(search_path(&zero), "exact_cpu");
    assert_eq!(zero.num_rows(), 5);
    assert!(distances(&zero).iter().all(|d| (d - 1.0).abs() < 1e-6), "{:?}", distances(&zero));

    for scale in [1e-25f32, 1e25] {
        let scaled: Vec<f32> = q.iter().map(|x| x * scale).collect();
        for query in [Query::search("t", scaled.clone(), 3), Query { ef: Some(100), ..ann("t", scaled, 3) }] {
            let found = client.query(&query).await.unwrap();
            assert_eq!(string_column(&found, "id")[0], "z-7", "scale {scale}");
            assert!(distances(&found)[0].abs() < 1e-5, "scale {scale}: {:?}", distances(&found));
        }
    }

    let exact = client.query(&Query { metric: Some(Metric::L2), ..Query::search("t", q.clone(), 10) }).await.unwrap();
    let other_metric = client.query(&Query { metric: Some(Metric::L2), ef: Some(100), ..ann("t", q.clone(), 10) }).await.unwrap();
    assert_eq!(search_path(&other_metric), "exact_cpu");
    assert_eq!(string_column(&other_metric, "id"), string_column(&exact, "id"));
    assert_eq!(distances(&other_metric), distances(&exact));

    let huge: Vec<f32> = q.iter().map(|x| x * 1e25).collect();
    assert_status(client.query(&Query { metric: Some(Metric::L2), ..Query::search("t", huge, 3) }).await, Code::InvalidArgument, "past float32's range");
}

/// `optimize` folds rows put after an IVF_PQ index into it. Lance 14 merges them into a dot
/// index with distances far too small (they took 195 of 200 result slots where their share is
/// 40): the server retrains such an index instead, so later rows rank as fairly as the rest.
#[tokio::test(flavor = "multi_thread")]
async fn optimize_keeps_a_dot_pq_index_fair_to_rows_put_after_it() {
    let server = Server::start();
    let mut client = server.client().await;
    client.create_table("p", DIM, Metric::Dot).await.unwrap();
    client.put_with_mode("p", PutMode::Append, vec![batch(&random_rows("early", 4000, DIM), DIM)]).await.unwrap();
    create_index(&mut client, serde_json::json!({"table": "p", "type": "ivf_pq", "num_sub_vectors": 8})).await;
    client.put_with_mode("p", PutMode::Append, vec![batch(&random_rows("late", 1000, DIM), DIM)]).await.unwrap();
    let _: OptimizeSummary = client.action("optimize", &serde_json::json!({"table": "p"})).await.unwrap();
    let (mut late, mut shared) = (0, 0);
    for _ in 0..20 {
        let q = random_vector(DIM);
        let found = client.query(&Query { nprobes: Some(1000), ..ann("p", q.clone(), 10) }).await.unwrap();
        assert_eq!(search_path(&found), "ann");
        let ids = string_column(&found, "id");
        late += ids.iter().filter(|id| id.starts_with("late-")).count();
        let exact = client.search("p", q, 10).await.unwrap();
        shared += ids.iter().filter(|id| string_column(&exact, "id").contains(id)).count();
    }
    // A fair share is 40 of 200 (1000 of 5000 rows); recall of 8 sub-vectors on random data ≈ 0.6.
    assert!(late <= 80, "rows put after the index took {late} of 200 slots");
    assert!(shared >= 80, "recall {:.2}", shared as f64 / 200.0);
}

//! Writes over time: upsert, append, overwrite, delete, versions, restore, restart, concurrency.
use hyprstream_client::proto::{PutMode, Query};

use crate::common::*;

const DIM: usize = 8;

#[tokio::test(flavor = "multi_thread")]
async fn upsert_replaces_existing_ids_and_inserts_new_ones() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("u", 10, DIM);
    let first = client.put("t", vec![batch(&rows, DIM)]).await.unwrap();

    let mut changed = rows[..4].to_vec();
    for r in &mut changed {
        r.raw = b"replaced".to_vec();
    }
    changed.extend(random_rows("new", 3, DIM));
    let second = client.put("t", vec![batch(&changed, DIM)]).await.unwrap();
    assert_eq!((second.inserted, second.updated), (3, 4));
    assert!(second.version > first.version);

    let all = client.scan("t").await.unwrap();
    assert_eq!(all.num_rows(), 13);
    let replaced = client.query(&Query { filter: Some("id = 'u-2'".into()), ..Query::scan("t") }).await.unwrap();
    use arrow::array::AsArray;
    assert_eq!(replaced.batches[0].column_by_name("raw_data").unwrap().as_binary::<i64>().value(0), b"replaced");
    // The replaced row's new vector is what search sees.
    let found = client.search("t", changed[0].embedding.clone().unwrap(), 1).await.unwrap();
    assert_eq!(string_column(&found, "id"), vec!["u-0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn append_refuses_existing_ids_and_overwrite_replaces_everything() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("a", 5, DIM);
    client.put_with_mode("t", PutMode::Append, vec![batch(&rows, DIM)]).await.unwrap();
    let before = client.describe_table("t").await.unwrap();

    let mut dup = random_rows("b", 3, DIM);
    dup.push(rows[0].clone());
    assert_status(client.put_with_mode("t", PutMode::Append, vec![batch(&dup, DIM)]).await, tonic::Code::AlreadyExists, "already exist");
    let after = client.describe_table("t").await.unwrap();
    assert_eq!((after.rows, after.version), (before.rows, before.version), "a refused append changes nothing");

    let fresh = random_rows("c", 2, DIM);
    let s = client.put_with_mode("t", PutMode::Overwrite, vec![batch(&fresh, DIM)]).await.unwrap();
    assert_eq!(s.inserted, 2);
    let ids = string_column(&client.scan("t").await.unwrap(), "id");
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| id.starts_with("c-")));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_rows_never_come_back_from_search_or_scan() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("d", 50, DIM);
    client.put("t", vec![batch(&rows, DIM)]).await.unwrap();
    let target = rows[17].embedding.clone().unwrap();
    assert_eq!(string_column(&client.search("t", target.clone(), 1).await.unwrap(), "id"), vec!["d-17"]);

    let del = client.delete("t", "id = 'd-17' OR json_get_int(metadata, 'chapter') = 4").await.unwrap();
    let expected = rows.iter().filter(|r| r.id == "d-17" || r.metadata.as_deref().unwrap().contains("\"chapter\": 4")).count();
    assert_eq!(del.deleted as usize, expected);
    let found = client.search("t", target, 50).await.unwrap();
    let ids = string_column(&found, "id");
    assert_eq!(ids.len(), 50 - expected);
    assert!(!ids.contains(&"d-17".to_string()));
    assert_eq!(client.scan("t").await.unwrap().num_rows(), 50 - expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_are_readable_and_restorable() {
    let server = Server::start();
    let mut client = server.client().await;
    let v1 = client.put("t", vec![batch(&random_rows("v1", 3, DIM), DIM)]).await.unwrap().version;
    let v2 = client.put("t", vec![batch(&random_rows("v2", 4, DIM), DIM)]).await.unwrap().version;
    let del = client.delete("t", "true").await.unwrap();
    assert_eq!(del.deleted, 7);

    let versions: Vec<u64> = client.versions("t").await.unwrap().iter().map(|v| v.version).collect();
    assert!(versions.contains(&v1) && versions.contains(&v2) && versions.contains(&del.version), "{versions:?}");
    // Reads at a version see that version.
    let at_v1 = client.query(&Query { version: Some(v1), ..Query::scan("t") }).await.unwrap();
    assert_eq!(at_v1.num_rows(), 3);
    let at_v2 = client.query(&Query { version: Some(v2), ..Query::search("t", random_vector(DIM), 100) }).await.unwrap();
    assert_eq!(at_v2.num_rows(), 7);
    assert_eq!(client.scan("t").await.unwrap().num_rows(), 0);

    let restored = client.restore("t", v2).await.unwrap();
    assert_eq!(restored.restored, v2);
    assert!(restored.version > del.version, "restore is a new version; history is kept");
    assert_eq!(client.scan("t").await.unwrap().num_rows(), 7);
    assert_status(client.restore("t", 999).await, tonic::Code::NotFound, "no version 999");
    assert_status(client.query(&Query { version: Some(999), ..Query::scan("t") }).await, tonic::Code::NotFound, "version");
}

/// A restore can bring deleted rows back: searches of the in-memory engine (loaded before the
/// delete, synced after it) must find them again, as a scan does.
#[tokio::test(flavor = "multi_thread")]
async fn searches_see_rows_a_restore_brings_back() {
    let server = Server::start();
    let mut client = server.client().await;
    let rows = random_rows("r", 20, DIM);
    let before = client.put("t", vec![batch(&rows, DIM)]).await.unwrap().version;
    let all = |found: &hyprstream_client::Rows| {
        let mut ids = string_column(found, "id");
        ids.sort();
        ids
    };
    let search = Query { columns: Some(vec!["id".into()]), ..Query::search("t", random_vector(DIM), 100) };
    let mut ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    assert_eq!(all(&client.query(&search).await.unwrap()), ids);
    client.delete("t", "id = 'r-3' OR id = 'r-7'").await.unwrap();
    assert_eq!(client.query(&search).await.unwrap().num_rows(), 18);
    client.restore("t", before).await.unwrap();
    assert_eq!(all(&client.query(&search).await.unwrap()), ids, "rows restored after a delete");
    // An upsert then a restore: the replaced row's old version comes back, the new one goes.
    let restore_to = client.describe_table("t").await.unwrap().version;
    let mut moved = rows[5].clone();
    moved.embedding = Some(vec![1.0; DIM]);
    client.put("t", vec![batch(&[moved], DIM)]).await.unwrap();
    assert_eq!(client.query(&search).await.unwrap().num_rows(), 20);
    client.restore("t", restore_to).await.unwrap();
    let found = client.query(&Query::search("t", rows[5].embedding.clone().unwrap(), 1)).await.unwrap();
    assert_eq!(string_column(&found, "id"), vec!["r-5"]);
    assert!(distances(&found)[0].abs() < 1e-5, "r-5 is back with its original vector");
    assert_eq!(all(&client.query(&search).await.unwrap()), ids);

    // The engine first loaded after a delete never held the deleted rows: a restore must still
    // bring them back.
    let before = client.put("u", vec![batch(&rows, DIM)]).await.unwrap().version;
    client.delete("u", "id = 'r-1' OR id = 'r-2'").await.unwrap();
    let search = Query { columns: Some(vec!["id".into()]), ..Query::search("u", random_vector(DIM), 100) };
    assert_eq!(client.query(&search).await.unwrap().num_rows(), 18);
    client.restore("u", before).await.unwrap();
    assert_eq!(all(&client.query(&search).await.unwrap()), ids, "rows deleted before the engine loaded, restored");
}

/// An overwrite replaces the schema, the metric it names included; an upsert or append that
/// names another metric is refused, not silently ignored.
#[tokio::test(flavor = "multi_thread")]
async fn overwrite_can_change_the_metric_other_puts_cannot() {
    let server = Server::start();
    let mut client = server.client().await;
    client.create_table("t", DIM, hyprstream_client::proto::Metric::Dot).await.unwrap();
    client.put("t", vec![batch(&random_rows("a", 5, DIM), DIM)]).await.unwrap();
    let with_metric = |rows: &[Row], metric: &str| {
        let b = batch(rows, DIM);
        let schema = b.schema().as_ref().clone().with_metadata([("hyprstream.metric".to_string(), metric.to_string())].into());
        arrow::array::RecordBatch::try_new(std::sync::Arc::new(schema), b.columns().to_vec()).unwrap()
    };
    let before = client.describe_table("t").await.unwrap().version;
    assert_status(client.put("t", vec![with_metric(&random_rows("b", 2, DIM), "l2")]).await, tonic::Code::InvalidArgument, "cannot change its metric");
    assert_status(
        client.put_with_mode("t", PutMode::Append, vec![with_metric(&random_rows("b", 2, DIM), "cosine")]).await,
        tonic::Code::InvalidArgument,
        "an append cannot change its metric",
    );
    assert_eq!(client.describe_table("t").await.unwrap().version, before);
    // The same metric named again is fine.
    client.put("t", vec![with_metric(&random_rows("c", 1, DIM), "dot")]).await.unwrap();

    let rows = random_rows("x", 6, DIM);
    client.put_with_mode("t", PutMode::Overwrite, vec![with_metric(&rows, "l2")]).await.unwrap();
    let described = client.describe_table("t").await.unwrap();
    assert_eq!((described.rows, described.metric.as_str()), (6, "l2"));
    // Searches now rank by squared euclidean distance.
    let q = random_vector(DIM);
    let found = client.search("t", q.clone(), 6).await.unwrap();
    let want = brute_force(&rows, &q, "l2", 6, |_: &Row| true);
    assert!((distances(&found)[0] as f64 - want[0].1).abs() < 1e-4, "{:?} vs {want:?}", distances(&found));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_keeps_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let rows = random_rows("p", 40, DIM);
    {
        let mut server = Server::start_in(dir.path().to_path_buf());
        let mut client = server.client().await;
        client.put("kept", vec![batch(&rows, DIM)]).await.unwrap();
        client.delete("kept", "id = 'p-0'").await.unwrap();
        assert!(server.stop().success(), "SIGTERM is a clean exit");
    }
    let server = Server::start_in(dir.path().to_path_buf());
    let mut client = server.client().await;
    let d = client.describe_table("kept").await.unwrap();
    assert_eq!(d.rows, 39);
    assert_eq!(d.versions.len(), 2);
    let found = client.search("kept", rows[5].embedding.clone().unwrap(), 1).await.unwrap();
    assert_eq!(string_column(&found, "id"), vec!["p-5"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_puts_from_several_clients_lose_nothing() {
    let server = Server::start();
    let clients = 6;
    let puts_per_client = 8;
    let rows_per_put = 25;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = hyprstream_client::HyprstreamClient::connect(&url).await.unwrap();
            for p in 0..puts_per_client {
                let rows = random_rows(&format!("c{c}p{p}"), rows_per_put, DIM);
                client.put("shared", vec![batch(&rows, DIM)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut client = server.client().await;
    let d = client.describe_table("shared").await.unwrap();
    assert_eq!(d.rows as usize, clients * puts_per_client * rows_per_put);
    assert_eq!(d.versions.len(), clients * puts_per_client);
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_can_be_created_listed_described_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // Files a previous run left while removing a dropped table go at startup.
    std::fs::create_dir_all(dir.path().join(".dropped/old-1/_versions")).unwrap();
    let server = Server::start_in(dir.path().to_path_buf());
    assert!(!dir.path().join(".dropped/old-1").exists());
    let mut client = server.client().await;
    let created = client.create_table("alpha", 16, hyprstream_client::proto::Metric::Dot).await.unwrap();
    assert_eq!((created.dim, created.metric, created.rows), (Some(16), hyprstream_client::proto::Metric::Dot, 0));
    let names: Vec<String> = created.schema.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, vec!["id", "embedding", "data_type", "raw_data", "metadata"]);
    let blobs: Vec<&str> = created.schema.iter().filter(|c| c.blob).map(|c| c.name.as_str()).collect();
    assert_eq!(blobs, vec!["raw_data"], "raw_data is stored with Lance's blob encoding");
    client.put("beta", vec![batch(&random_rows("b", 3, DIM), DIM)]).await.unwrap();
    let tables = client.list_tables().await.unwrap();
    assert_eq!(tables.iter().map(|t| (t.name.as_str(), t.rows)).collect::<Vec<_>>(), vec![("alpha", 0), ("beta", 3)]);
    assert_eq!(client.health().await.unwrap().tables, 2);
    assert!(client.drop_table("alpha").await.unwrap().dropped);
    assert_status(client.describe_table("alpha").await, tonic::Code::NotFound, "alpha");
    assert_eq!(client.list_tables().await.unwrap().len(), 1);
    // The table's directory was moved aside in one step, then removed.
    assert!(!dir.path().join("alpha.lance").exists());
    assert_eq!(std::fs::read_dir(dir.path().join(".dropped")).unwrap().count(), 0);
    // A dropped name can be made again.
    client.create_table("alpha", 4, hyprstream_client::proto::Metric::L2).await.unwrap();
    assert_eq!(client.describe_table("alpha").await.unwrap().dim, Some(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_put_commits_all_of_it_or_none_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 512;
    let rows = random_rows("s", 24_000, dim);
    let mut server = Server::start_in(dir.path().to_path_buf());
    let mut client = server.client().await;
    client.put("t", vec![batch(&rows[..10], dim)]).await.unwrap();
    let url = server.url.clone();
    let big = batch(&rows[10..], dim);
    let put = tokio::spawn(async move {
        let mut c = hyprstream_client::HyprstreamClient::connect(&url).await.unwrap();
        c.put("t", vec![big]).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = server.stop();
        (server, status)
    });
    let answer = put.await.unwrap();
    let (_stopped, status) = status.await.unwrap();
    assert!(status.success(), "SIGTERM is a clean exit");

    let server = Server::start_in(dir.path().to_path_buf());
    let mut client = server.client().await;
    let stored = client.describe_table("t").await.unwrap().rows;
    match answer {
        Ok(summary) => assert_eq!((stored, summary.inserted), (24_000, 23_990), "an acknowledged put is durable"),
        Err(_) => assert!(stored == 10 || stored == 24_000, "a put cut off by shutdown is all or nothing, found {stored} rows"),
    }
    // Whatever happened, the table is readable and searchable.
    let found = client.search("t", rows[3].embedding.clone().unwrap(), 1).await.unwrap();
    assert_eq!(string_column(&found, "id"), vec!["s-3"]);
}

/// A commit the server did not see (its write was cut off between Lance's commit and the
/// server's record of it; here, made by a second server on the same directory) is the base of
/// the next write: an upsert of a row committed there updates it instead of storing its id
/// twice, an append of it is refused, and a delete removes it.
#[tokio::test(flavor = "multi_thread")]
async fn writes_base_themselves_on_the_version_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start_in(dir.path().to_path_buf());
    let second = Server::start_in(dir.path().to_path_buf());
    let (mut a, mut b) = (first.client().await, second.client().await);
    a.put("t", vec![batch(&random_rows("a", 3, DIM), DIM)]).await.unwrap();
    assert_eq!(a.scan("t").await.unwrap().num_rows(), 3, "the first server now remembers this version");
    let late = random_rows("late", 1, DIM);
    b.put("t", vec![batch(&late, DIM)]).await.unwrap();

    let again = a.put("t", vec![batch(&late, DIM)]).await.unwrap();
    assert_eq!((again.inserted, again.updated), (0, 1), "the row committed behind the server's back is updated");
    let ids = string_column(&a.scan("t").await.unwrap(), "id");
    assert_eq!(ids.iter().filter(|id| *id == "late-0").count(), 1, "{ids:?}");
    assert_eq!(ids.len(), 4);
    let more = random_rows("more", 1, DIM);
    b.put("t", vec![batch(&more, DIM)]).await.unwrap();
    assert_status(a.put_with_mode("t", PutMode::Append, vec![batch(&more, DIM)]).await, tonic::Code::AlreadyExists, "already exist");
    b.put("t", vec![batch(&random_rows("gone", 1, DIM), DIM)]).await.unwrap();
    assert_eq!(a.delete("t", "id = 'gone-0'").await.unwrap().deleted, 1);
    assert_eq!(a.scan("t").await.unwrap().num_rows(), 5);
}

/// Writes whose clients went away: one still waiting for its table's write lock never begins
/// (its client was told it failed); one that has begun (an index build) reaches its commit,
/// even when the server is stopped meanwhile: the process ends after it.
#[tokio::test(flavor = "multi_thread")]
async fn writes_abandoned_by_their_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path().to_path_buf());
    let mut client = server.client().await;
    for chunk in random_rows("w", 40_000, DIM).chunks(10_000) {
        client.put("t", vec![batch(chunk, DIM)]).await.unwrap();
    }
    let before = client.describe_table("t").await.unwrap().version;
    let body = serde_json::json!({"table": "t", "type": "ivf_hnsw_flat", "num_partitions": 1, "m": 32, "ef_construction": 400});
    let mut build = client.flight().do_action(arrow_flight::Action::new("create_index", body.to_string())).await.unwrap();
    let started = futures::StreamExt::next(&mut build).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&started).contains("started"));
    // A put behind the build, given up by its client.
    let mut other = server.client().await;
    let late = tokio::time::timeout(std::time::Duration::from_millis(300), other.put("t", vec![batch(&random_rows("late", 1, DIM), DIM)])).await;
    assert!(late.is_err(), "the put waits behind the build");
    drop(build);
    let stopped = tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
    assert!(stopped.success(), "SIGTERM is a clean exit");

    let server = Server::start_in(dir.path().to_path_buf());
    let mut client = server.client().await;
    let described = client.describe_table("t").await.unwrap();
    assert_eq!(described.indexes.len(), 1, "the build ran to its commit before the server stopped");
    assert_eq!(described.rows, 40_000, "the abandoned put never began");
    assert_eq!(described.version, before + 1);
}

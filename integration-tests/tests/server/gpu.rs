//! Exact search on the GPU through the real server (`--device cuda:0`). It needs an NVIDIA GPU
//! and driver, so it is ignored by default; `scripts/gpu-run.sh` runs it on a GPU machine
//! (`server-tests gpu:: --ignored`) from the binaries `make gpu-check` packs.
use hyprstream_client::proto::Query;

use crate::common::*;

const DIM: usize = 96;
/// Above the server's GPU threshold (16 384 rows).
const ROWS: usize = 20_000;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-run.sh runs it there"]
async fn exact_search_on_the_gpu_matches_the_reference_and_follows_writes() {
    let server = Server::start_args(&["--device", "cuda:0"]);
    let mut client = server.client().await;
    for metric in ["cosine", "dot", "l2"] {
        let table = format!("g_{metric}");
        let mut rows = random_rows("r", ROWS, DIM);
        let with_metric = |rows: &[Row]| {
            let b = batch(rows, DIM);
            let mut meta = b.schema().metadata().clone();
            meta.insert("hyprstream.metric".into(), metric.into());
            let schema = std::sync::Arc::new(b.schema().as_ref().clone().with_metadata(meta));
            b.with_schema(schema).unwrap()
        };
        let b = with_metric(&rows);
        for chunk in 0..4 {
            client.put(&table, vec![b.slice(chunk * ROWS / 4, ROWS / 4)]).await.unwrap();
        }
        let check = |rows: &Vec<Row>, found: &hyprstream_client::Rows, q: &[f32], k: usize, keep: &dyn Fn(&Row) -> bool| {
            assert_eq!(found.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some("exact_gpu"));
            let want = brute_force(rows, q, metric, k, keep);
            let got = distances(found);
            assert_eq!(got.len(), want.len());
            for (g, (_, w)) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0), "{metric}: {g} vs {w}");
            }
        };
        for k in [1, 10, 100] {
            let q = random_vector(DIM);
            let found = client.search(&table, q.clone(), k).await.unwrap();
            check(&rows, &found, &q, k, &|_| true);
        }
        // A batch: one tiled-SGEMM pass on the device, every query equal to the reference.
        let queries: Vec<Vec<f32>> = (0..70).map(|_| random_vector(DIM)).collect();
        let found = client.search_batch(&table, queries.clone(), 10).await.unwrap();
        assert_eq!(found.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some("exact_gpu"));
        let (got, which) = (distances(&found), query_column(&found));
        assert_eq!(got.len(), 70 * 10);
        for (qi, q) in queries.iter().enumerate() {
            for (rank, (_, w)) in brute_force(&rows, q, metric, 10, |_| true).iter().enumerate() {
                let g = got[qi * 10 + rank];
                assert_eq!(which[qi * 10 + rank], qi as u32);
                assert!((g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0), "{metric} batch q{qi}: {g} vs {w}");
            }
        }
        // Prefilter → device mask.
        let q = random_vector(DIM);
        let query = Query { filter: Some("data_type = 'image'".into()), ..Query::search(&table, q.clone(), 10) };
        check(&rows, &client.query(&query).await.unwrap(), &q, 10, &|r| r.data_type == "image");
        // A deleted row is never returned; a new row is found by the very next search.
        let target = rows[123].embedding.clone().unwrap();
        client.delete(&table, "id = 'r-123'").await.unwrap();
        let found = client.search(&table, target.clone(), 5).await.unwrap();
        assert!(!string_column(&found, "id").contains(&"r-123".to_string()));
        rows.retain(|r| r.id != "r-123");
        check(&rows, &found, &target, 5, &|_| true);
        let fresh = random_rows("new", 1, DIM);
        client.put(&table, vec![batch(&fresh, DIM)]).await.unwrap();
        let found = client.search(&table, fresh[0].embedding.clone().unwrap(), 1).await.unwrap();
        assert_eq!(string_column(&found, "id"), vec!["new-0".to_string()]);
        rows.extend(fresh);

        // Rewriting every row twice (the same ids, new vectors) leaves twice as many deleted
        // rows on the device as live ones: the mirror compacts them away (once they outnumber
        // the live rows) and still answers exactly.
        let mut rewritten = Vec::new();
        for _ in 0..2 {
            rewritten = random_rows("r", ROWS, DIM);
            client.put(&table, vec![with_metric(&rewritten)]).await.unwrap();
        }
        rows.retain(|r| r.id.starts_with("new-"));
        rows.extend(rewritten);
        for k in [1, 10] {
            let q = random_vector(DIM);
            check(&rows, &client.search(&table, q.clone(), k).await.unwrap(), &q, k, &|_| true);
        }
        let target = rows[ROWS / 2].embedding.clone().unwrap();
        let found = client.search(&table, target.clone(), 3).await.unwrap();
        check(&rows, &found, &target, 3, &|_| true);
        assert_eq!(string_column(&found, "id")[0], rows[ROWS / 2].id);
    }
}

/// Figures, not a pass/fail timing: one table of 1M × 384 searched through Flight by the same
/// server binary with `--device cuda:0` and then, restarted over the same data, `--device cpu`.
/// `scripts/gpu-run.sh` prints them for `docs/benchmarks.md`; the test fails only on wrong paths
/// or wrong answers (GPU and CPU must return the same ids).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-run.sh runs it there"]
async fn exact_search_latency_through_flight_gpu_and_cpu() {
    const ROWS: usize = 1_000_000;
    const DIM: usize = 384;
    const CHUNK: usize = 50_000;
    const QUERIES: usize = 256;
    let dir = tempfile::tempdir().unwrap();
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| random_vector(DIM)).collect();
    let mut answers: Vec<Vec<Vec<String>>> = Vec::new();
    for (device, path) in [("cuda:0", "exact_gpu"), ("cpu", "exact_cpu")] {
        let server = Server::start_with(dir.path().to_path_buf(), &["--device", device]);
        let mut client = server.client().await;
        if answers.is_empty() {
            let started = std::time::Instant::now();
            for chunk in 0..ROWS / CHUNK {
                let rows = random_rows(&format!("c{chunk}"), CHUNK, DIM);
                client.put("big", vec![batch(&rows, DIM)]).await.unwrap();
            }
            println!("put {ROWS} x {DIM} through Flight: {:.1} s", started.elapsed().as_secs_f64());
        }
        let started = std::time::Instant::now();
        let first = client.search("big", queries[0].clone(), 10).await.unwrap();
        println!("[{device}] first search (engine load): {:.2} s", started.elapsed().as_secs_f64());
        assert_eq!(first.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some(path));
        let mut ids = Vec::new();
        // Whole rows (Lance fetches them) and ids only (the engine names them).
        for ids_only in [false, true] {
            let mut times = Vec::new();
            for q in &queries {
                let query = Query { columns: ids_only.then(|| vec!["id".to_string()]), ..Query::search("big", q.clone(), 10) };
                let started = std::time::Instant::now();
                let found = client.query(&query).await.unwrap();
                times.push(started.elapsed().as_secs_f64() * 1e3);
                if ids_only {
                    ids.push(string_column(&found, "id"));
                }
            }
            times.sort_by(f64::total_cmp);
            println!(
                "[{device}] {ROWS} x {DIM} cosine k=10 through Flight, {}: p50 {:.2} ms, p99 {:.2} ms ({} threads on this machine)",
                if ids_only { "ids only" } else { "whole rows" },
                times[QUERIES / 2],
                times[QUERIES * 99 / 100],
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
            );
        }
        // Batches of 64 in one ticket each.
        let started = std::time::Instant::now();
        let mut batched = Vec::new();
        for chunk in queries.chunks(64) {
            let found = client
                .query(&Query { columns: Some(vec!["id".into()]), ..Query::search_batch("big", chunk.to_vec(), 10) })
                .await
                .unwrap();
            assert_eq!(found.schema.metadata().get("hyprstream.search_path").map(String::as_str), Some(path));
            batched.extend(string_column(&found, "id").chunks(10).map(<[String]>::to_vec).collect::<Vec<_>>());
        }
        println!("[{device}] batches of 64 through Flight: {:.0} QPS", QUERIES as f64 / started.elapsed().as_secs_f64());
        let same = batched.iter().zip(&ids).filter(|(b, s)| b == s).count();
        assert!(same >= QUERIES - 2, "[{device}] batched and single searches agree on only {same} of {QUERIES}");
        answers.push(ids);
    }
    // Ties at the 10th place could reorder; the sets must agree for nearly every query.
    let same = answers[0].iter().zip(&answers[1]).filter(|(g, c)| g == c).count();
    assert!(same >= QUERIES - 2, "GPU and CPU agree on only {same} of {QUERIES} result lists");
}

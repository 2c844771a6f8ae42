//! Exact search on the GPU through the real server (`--device cuda:0`). It needs an NVIDIA GPU
//! and driver, so it is ignored by default; `scripts/gpu-run.sh` runs it on a GPU machine
//! (`server-tests gpu:: --ignored`) from the binaries `make gpu-check` packs.
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
        let b = batch(&rows, DIM);
        let mut meta = b.schema().metadata().clone();
        meta.insert("hyprstream.metric".into(), metric.into());
        let schema = std::sync::Arc::new(b.schema().as_ref().clone().with_metadata(meta));
        let b = b.with_schema(schema).unwrap();
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
        // Prefilter → device mask.
        let q = random_vector(DIM);
        let query = hyprstream_client::proto::Query {
            filter: Some("data_type = 'image'".into()),
            ..hyprstream_client::proto::Query::search(&table, q.clone(), 10)
        };
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
    }
}

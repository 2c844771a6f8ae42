//! The `hyprstream` CLI against the real server: put a JSON-lines file, scan, search,
//! describe, delete, versions, restore, actions.
use std::process::Command;

use crate::common::*;

fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let bin = server_binary().with_file_name("hyprstream");
    let out = Command::new(&bin).arg("--url").arg(&server.url).args(args).output().expect("run hyprstream CLI");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn ok(server: &Server, args: &[&str]) -> String {
    let (success, stdout, stderr) = cli(server, args);
    assert!(success, "hyprstream {args:?} failed: {stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_drives_every_verb() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({
                "id": format!("c-{i}"),
                "embedding": [i as f32, 1.0, 0.5],
                "data_type": "text",
                "raw_data": format!("passage {i}"),
                "metadata": {"chapter": i % 2, "story": "The Sign of the Four"},
            })
            .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();

    let put: serde_json::Value = serde_json::from_str(&ok(&server, &["--json", "put", "cli", file.to_str().unwrap()])).unwrap();
    assert_eq!(put["inserted"], 6);

    let scanned = ok(&server, &["--json", "scan", "cli", "--filter", "json_get_int(metadata, 'chapter') = 1", "--columns", "id"]);
    let mut ids: Vec<String> = scanned.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    assert_eq!(ids, vec!["c-1", "c-3", "c-5"]);

    let found = ok(&server, &["--json", "search", "cli", "--vector", "4,1,0.5", "-k", "2", "--metric", "l2", "--columns", "id"]);
    let first: serde_json::Value = serde_json::from_str(found.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "c-4");
    assert_eq!(first["_distance"], 0.0);

    let vector_file = dir.path().join("q.json");
    std::fs::write(&vector_file, "[5, 1, 0.5]").unwrap();
    let parquet = dir.path().join("hits.parquet");
    ok(&server, &["search", "cli", "--vector-file", vector_file.to_str().unwrap(), "-k", "3", "--parquet", parquet.to_str().unwrap()]);
    assert!(std::fs::metadata(&parquet).unwrap().len() > 0);
    // A JSON array of arrays is one batched search: rows carry `_query`.
    std::fs::write(&vector_file, "[[4, 1, 0.5], [2, 1, 0.5]]").unwrap();
    let found = ok(&server, &["--json", "search", "cli", "--vector-file", vector_file.to_str().unwrap(), "-k", "1", "--metric", "l2", "--columns", "id"]);
    let rows: Vec<serde_json::Value> = found.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.iter().map(|r| (r["id"].as_str().unwrap(), r["_query"].as_u64().unwrap())).collect::<Vec<_>>(), vec![("c-4", 0), ("c-2", 1)]);

    let table = ok(&server, &["scan", "cli", "--limit", "2", "--columns", "id,data_type"]);
    assert!(table.contains("| id ") && table.contains("data_type"), "{table}");

    let described: serde_json::Value = serde_json::from_str(&ok(&server, &["--json", "describe", "cli"])).unwrap();
    assert_eq!(described["dim"], 3);
    assert_eq!(described["rows"], 6);

    let deleted: serde_json::Value = serde_json::from_str(&ok(&server, &["--json", "delete", "cli", "--filter", "id = 'c-0'"])).unwrap();
    assert_eq!(deleted["deleted"], 1);
    let versions: Vec<serde_json::Value> = serde_json::from_str(&ok(&server, &["--json", "versions", "cli"])).unwrap();
    assert_eq!(versions.len(), 2);
    ok(&server, &["restore", "cli", &versions[0]["version"].to_string()]);
    let health: serde_json::Value = serde_json::from_str(&ok(&server, &["--json", "action", "health"])).unwrap();
    assert_eq!(health["status"], "ok");
    assert!(ok(&server, &["tables"]).contains("cli"));
    assert!(ok(&server, &["actions"]).contains("create_index"));

    // Errors come out as the server's message and a non-zero exit.
    let (success, _, stderr) = cli(&server, &["search", "cli", "--vector", "1,2"]);
    assert!(!success);
    assert!(stderr.contains("dim 3"), "{stderr}");
    let (success, _, stderr) = cli(&server, &["describe", "nope"]);
    assert!(!success && stderr.contains("does not exist"), "{stderr}");
}

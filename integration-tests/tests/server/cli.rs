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

/// `put` of a JSON-lines file reads every line: a field first seen late is kept (it used to be
/// dropped after line 1000, taking an upserted row's vector with it), a column of integers
/// then a fraction keeps the fraction, and `scan --json` → `put` stores the same bytes
/// (`raw_data` as text, or `{"base64": …}` when it is not UTF-8; it used to come back as hex).
#[tokio::test(flavor = "multi_thread")]
async fn cli_put_reads_every_line_and_round_trips_scans() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("late.jsonl");
    let mut lines: Vec<String> = (0..1200)
        .map(|i| serde_json::json!({"id": format!("r-{i}"), "data_type": "text", "raw_data": format!("passage {i}"), "n": i, "empty": null}).to_string())
        .collect();
    lines.push(
        serde_json::json!({"id": "late-1", "embedding": [0.5, 0.5], "data_type": "text", "raw_data": {"base64": "//79AA=="}, "n": 2.75, "metadata": {"story": "late"}})
            .to_string(),
    );
    std::fs::write(&file, lines.join("\n")).unwrap();
    let put: serde_json::Value = serde_json::from_str(&ok(&server, &["--json", "put", "late", file.to_str().unwrap()])).unwrap();
    assert_eq!((put["inserted"].as_u64(), put["updated"].as_u64()), (Some(1201), Some(0)), "{put}");
    let dump = ok(&server, &["--json", "scan", "late", "--filter", "id = 'late-1'"]);
    let row: serde_json::Value = serde_json::from_str(dump.lines().next().unwrap()).unwrap();
    assert_eq!(row["embedding"], serde_json::json!([0.5, 0.5]), "{row}");
    assert_eq!(row["n"], 2.75);
    assert_eq!(row["raw_data"], serde_json::json!({"base64": "//79AA=="}), "not UTF-8: base64");
    assert_eq!(row["metadata"], r#"{"story":"late"}"#);
    // Keys come in the order of the columns asked for.
    let ordered = ok(&server, &["--json", "scan", "late", "--columns", "n,id", "--filter", "id = 'late-1'"]);
    assert_eq!(ordered.trim(), r#"{"n":2.75,"id":"late-1"}"#);

    // The scan's output put back: the same bytes, text rows as text.
    let copy = dir.path().join("copy.jsonl");
    std::fs::write(&copy, ok(&server, &["--json", "scan", "late", "--filter", "id IN ('late-1', 'r-7')"])).unwrap();
    ok(&server, &["put", "copied", copy.to_str().unwrap()]);
    let copied = ok(&server, &["--json", "scan", "copied", "--columns", "id,raw_data"]);
    let mut rows: Vec<serde_json::Value> = copied.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    rows.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
    assert_eq!(rows[0]["raw_data"], serde_json::json!({"base64": "//79AA=="}));
    assert_eq!(rows[1]["raw_data"], "passage 7");

    // Any binary column survives the same round trip (written as {"base64": …}).
    {
        use arrow::array::{Array, AsArray, LargeBinaryArray, RecordBatch};
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let mut client = server.client().await;
        let base = batch(&random_rows("b", 2, 3), 3);
        let mut fields = base.schema().fields().to_vec();
        fields.push(Arc::new(Field::new("thumb", DataType::LargeBinary, true)));
        let mut columns = base.columns().to_vec();
        columns.push(Arc::new(LargeBinaryArray::from_iter_values([b"\x89PNG\xff".as_slice(), b"text".as_slice()])));
        client.put("thumbs", vec![RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()]).await.unwrap();
        let dump = dir.path().join("thumbs.jsonl");
        std::fs::write(&dump, ok(&server, &["--json", "scan", "thumbs"])).unwrap();
        ok(&server, &["put", "thumbs2", dump.to_str().unwrap()]);
        let bytes = |rows: &hyprstream_client::Rows, column: &str| -> Vec<(String, Vec<u8>)> {
            let mut out = Vec::new();
            for b in &rows.batches {
                let ids = b.column_by_name("id").unwrap().as_string::<i32>();
                let values = arrow::compute::cast(b.column_by_name(column).unwrap(), &DataType::LargeBinary).unwrap();
                let values = values.as_binary::<i64>();
                for i in 0..b.num_rows() {
                    out.push((ids.value(i).to_string(), if values.is_null(i) { Vec::new() } else { values.value(i).to_vec() }));
                }
            }
            out.sort();
            out
        };
        let (original, copy) = (client.scan("thumbs").await.unwrap(), client.scan("thumbs2").await.unwrap());
        for column in ["thumb", "raw_data"] {
            assert_eq!(bytes(&copy, column), bytes(&original, column), "{column}");
        }
    }

    // A bad line is named; nothing is written.
    std::fs::write(&file, "{\"id\": \"x\", \"raw_data\": {\"base64\": \"***\"}}\n").unwrap();
    let (success, _, stderr) = cli(&server, &["put", "late", file.to_str().unwrap()]);
    assert!(!success && stderr.contains("line 1: \"base64\" is not base64"), "{stderr}");
    // A key twice in one object is refused (the server refuses such metadata; serde_json
    // would have kept the last value silently).
    std::fs::write(&file, "{\"id\": \"x\", \"metadata\": {\"dup\": 1, \"dup\": 2}}\n").unwrap();
    let (success, _, stderr) = cli(&server, &["put", "late", file.to_str().unwrap()]);
    assert!(!success && stderr.contains("key 'dup' appears twice"), "{stderr}");

    // CSV: types from the whole file (a fraction on the last line), an empty column as text.
    let csv = dir.path().join("rows.csv");
    let mut text = String::from("id,data_type,score,note\n");
    for i in 0..1100 {
        text.push_str(&format!("s-{i},text,{i},\n"));
    }
    text.push_str("s-last,text,0.5,\n");
    std::fs::write(&csv, text).unwrap();
    ok(&server, &["put", "csv", csv.to_str().unwrap()]);
    let last: serde_json::Value = serde_json::from_str(ok(&server, &["--json", "scan", "csv", "--filter", "id = 's-last'"]).lines().next().unwrap()).unwrap();
    assert_eq!(last["score"], 0.5, "{last}");
    let described: serde_json::Value = serde_json::from_str(&ok(&server, &["--json", "describe", "csv"])).unwrap();
    let note = described["schema"].as_array().unwrap().iter().find(|c| c["name"] == "note").unwrap().clone();
    assert_eq!(note["type"], "Utf8", "{note}");

    // Query values past float32 say so (they used to travel as JSON null).
    let (success, _, stderr) = cli(&server, &["search", "late", "--vector", "1e39,0.2"]);
    assert!(!success && stderr.contains("not a finite float32"), "{stderr}");
    // No TLS in this client: refused rather than sent in the clear.
    let bin = server_binary().with_file_name("hyprstream");
    let out = Command::new(&bin).args(["--url", "grpc+tls://127.0.0.1:1", "tables"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("TLS is not supported"));
}

//! Starting and stopping the real server; building test rows; a float64 brute-force reference.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, FixedSizeListBuilder, Float32Builder, LargeBinaryArray, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use hyprstream_client::{ClientError, HyprstreamClient, Rows};
use rand::Rng;

pub fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("HYPRSTREAM_SERVER_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/server-HASH → target/<profile>/hyprstream-server
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("hyprstream-server");
    assert!(bin.exists(), "{} not built: run `make test` (it builds the server first)", bin.display());
    bin
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl Server {
    pub fn start() -> Server {
        let temp = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut s = Server::start_in(temp.path().to_path_buf());
        s._temp = Some(temp);
        s
    }

    /// Starts a server over an existing data directory (for restart tests).
    pub fn start_in(data_dir: PathBuf) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// A server over a fresh directory with extra command-line arguments.
    pub fn start_args(args: &[&str]) -> Server {
        let temp = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut s = Server::start_with(temp.path().to_path_buf(), args);
        s._temp = Some(temp);
        s
    }

    /// A server over an existing data directory with extra command-line arguments.
    pub fn start_with(data_dir: PathBuf, args: &[&str]) -> Server {
        let mut child = Command::new(server_binary())
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--addr")
            .arg("127.0.0.1:0")
            .env("HYPRSTREAM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hyprstream-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("hyprstream-server listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("server did not report its address");
        Server { child: Some(child), url: format!("grpc://{addr}"), _temp: None }
    }

    pub async fn client(&self) -> HyprstreamClient {
        HyprstreamClient::connect(&self.url).await.expect("connect")
    }

    /// SIGTERM, then wait: returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.kill().ok();
        panic!("server did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// One test row.
#[derive(Clone, Debug)]
pub struct Row {
    pub id: String,
    pub embedding: Option<Vec<f32>>,
    pub data_type: &'static str,
    pub raw: Vec<u8>,
    pub metadata: Option<String>,
}

pub fn random_vector(dim: usize) -> Vec<f32> {
    let mut rng = rand::rng();
    (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `n` text rows `{prefix}-{i}` with random vectors and metadata {"chapter": i % 5, "story": …}.
pub fn random_rows(prefix: &str, n: usize, dim: usize) -> Vec<Row> {
    (0..n)
        .map(|i| Row {
            id: format!("{prefix}-{i}"),
            embedding: Some(random_vector(dim)),
            data_type: if i % 7 == 0 { "image" } else { "text" },
            raw: format!("passage {i} of {prefix}").into_bytes(),
            metadata: Some(format!(r#"{{"chapter": {}, "story": "{}"}}"#, i % 5, if i % 2 == 0 { "even" } else { "odd" })),
        })
        .collect()
}

pub fn json_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true).with_metadata(
        [("ARROW:extension:name".to_string(), "arrow.json".to_string())].into_iter().collect(),
    )
}

pub fn batch(rows: &[Row], dim: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("embedding", DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim as i32), true),
        Field::new("data_type", DataType::Utf8, true),
        Field::new("raw_data", DataType::LargeBinary, true),
        json_field("metadata"),
    ]));
    let mut emb = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32);
    for r in rows {
        match &r.embedding {
            Some(v) => {
                emb.values().append_slice(v);
                emb.append(true);
            }
            None => {
                emb.values().append_slice(&vec![0.0; dim]);
                emb.append(false);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.id.clone()))),
        Arc::new(emb.finish()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.data_type))),
        Arc::new(LargeBinaryArray::from_iter_values(rows.iter().map(|r| r.raw.clone()))),
        Arc::new(StringArray::from(rows.iter().map(|r| r.metadata.clone()).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(schema, columns).expect("test batch")
}

/// Distance by the contract's definitions, in float64.
pub fn reference_distance(metric: &str, q: &[f32], x: &[f32]) -> f64 {
    let dot: f64 = q.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
    match metric {
        "dot" => -dot,
        "l2" => q.iter().zip(x).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum(),
        _ => {
            let nq: f64 = q.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let nx: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            if nq == 0.0 || nx == 0.0 { 1.0 } else { 1.0 - dot / (nq * nx) }
        }
    }
}

/// The k best (id, distance) among `rows` that `keep` admits, nearest first.
pub fn brute_force(rows: &[Row], q: &[f32], metric: &str, k: usize, keep: impl Fn(&Row) -> bool) -> Vec<(String, f64)> {
    let mut all: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| keep(r))
        .filter_map(|r| r.embedding.as_ref().map(|e| (r.id.clone(), reference_distance(metric, q, e))))
        .collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

pub fn string_column(rows: &Rows, name: &str) -> Vec<String> {
    use arrow::array::AsArray;
    rows.batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
            c.as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_string()).collect::<Vec<_>>()
        })
        .collect()
}

pub fn distances(rows: &Rows) -> Vec<f32> {
    use arrow::array::AsArray;
    rows.batches
        .iter()
        .flat_map(|b| b.column_by_name("_distance").expect("_distance").as_primitive::<arrow::datatypes::Float32Type>().values().to_vec())
        .collect()
}

/// DoGet with a hand-written ticket (what serde would not write: 1e39, typos).
pub async fn raw_ticket(c: &mut HyprstreamClient, ticket: impl Into<bytes::Bytes>) -> Result<(), ClientError> {
    use futures::TryStreamExt;
    let mut stream = c.flight().do_get(arrow_flight::Ticket::new(ticket)).await?;
    stream.try_next().await?;
    Ok(())
}

/// The `_query` column of a batched search result.
pub fn query_column(rows: &Rows) -> Vec<u32> {
    use arrow::array::AsArray;
    rows.batches
        .iter()
        .flat_map(|b| b.column_by_name("_query").expect("_query").as_primitive::<arrow::datatypes::UInt32Type>().values().to_vec())
        .collect()
}

/// Asserts the call failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, ClientError>, code: tonic::Code, needle: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} ({needle}), got Ok({v:?})"),
        Err(ClientError::Status(s)) => {
            assert_eq!(s.code(), code, "status for '{needle}': {}", s.message());
            assert!(
                s.message().to_lowercase().contains(&needle.to_lowercase()),
                "message '{}' should mention '{needle}'",
                s.message()
            );
        }
        Err(other) => panic!("expected status {code:?}, got {other}"),
    }
}

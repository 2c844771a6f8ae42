//! Models as data: import into the `models` table, embedding fidelity against the reference
//! fixtures, auto-embedding on put, text search, layer writes checked against the architecture.
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int32Array, LargeBinaryArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use hyprstream_client::proto::Query;
use hyprstream_client::HyprstreamClient;
use tonic::Code;

use crate::common::*;

const MODEL: &str = "all-minilm-l6-v2";

/// This crate's directory, read when the test runs (cargo sets it then too). The path baked in
/// at compile time goes stale when a clone elsewhere reuses the shared target dir: cargo
/// keeps the built binary, since nothing it tracks changed.
fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn fixtures() -> PathBuf {
    crate_dir().join("fixtures")
}

/// The model directory `make models` unpacks (HYPRSTREAM_MODELS_DIR overrides `./models`).
fn model_dir() -> String {
    let root = std::env::var("HYPRSTREAM_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate_dir().join("../models"));
    let dir = root.join(MODEL);
    assert!(dir.join("model.safetensors").exists(), "{} missing: run `make models`", dir.display());
    dir.canonicalize().unwrap().display().to_string()
}

/// A copy of the model directory with `file` holding `text` (the weights linked, not copied).
fn broken_copy(file: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = PathBuf::from(model_dir());
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let to = dir.path().join(&name);
        if entry.file_type().unwrap().is_dir() || name == "model.safetensors" {
            std::os::unix::fs::symlink(entry.path(), to).unwrap();
        } else {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
    std::fs::write(dir.path().join(file), text).unwrap();
    dir
}

async fn import(client: &mut HyprstreamClient) -> Vec<hyprstream_client::proto::ImportProgress> {
    client.import_model(MODEL, &model_dir()).await.expect("import_model")
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The `weights` blob and metadata of one stored layer, read by a plain DoGet scan.
async fn stored_layer(client: &mut HyprstreamClient, layer: i32) -> (Vec<u8>, serde_json::Value) {
    let q = Query { filter: Some(format!("model_name = '{MODEL}' AND layer_id = {layer}")), ..Query::scan("models") };
    let rows = client.query(&q).await.unwrap();
    let batch = rows.batches.iter().find(|b| b.num_rows() > 0).expect("layer row");
    let weights = batch.column_by_name("weights").unwrap().as_binary::<i64>().value(0).to_vec();
    let meta = batch.column_by_name("metadata").unwrap().as_string::<i32>().value(0).to_string();
    (weights, serde_json::from_str(&meta).unwrap())
}

/// The JSON header of a safetensors buffer.
fn safetensors_header(bytes: &[u8]) -> (usize, serde_json::Value) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (8 + n, serde_json::from_slice(&bytes[8..8 + n]).unwrap())
}

/// A copy of a layer's safetensors buffer with `f` applied to every value of one f32 tensor.
fn with_tensor(layer: &[u8], tensor: &str, f: impl Fn(f32) -> f32) -> Vec<u8> {
    let (start, header) = safetensors_header(layer);
    let offsets = header[tensor]["data_offsets"].as_array().unwrap();
    let (a, b) = (start + offsets[0].as_u64().unwrap() as usize, start + offsets[1].as_u64().unwrap() as usize);
    let mut changed = layer.to_vec();
    for chunk in changed[a..b].chunks_exact_mut(4) {
        let v = f(f32::from_le_bytes(chunk.try_into().unwrap()));
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    changed
}

/// A copy of a layer's safetensors buffer with one more f32 tensor `name` (shape [1]).
fn with_extra_tensor(layer: &[u8], name: &str) -> Vec<u8> {
    let (start, mut header) = safetensors_header(layer);
    let data = &layer[start..];
    header[name] = serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [data.len(), data.len() + 4]});
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.extend_from_slice(&1.0f32.to_le_bytes());
    out
}

fn layer_put(model: &str, layer: i32, weights: Vec<u8>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("model_name", DataType::Utf8, false),
        Field::new("layer_id", DataType::Int32, false),
        Field::new("weights", DataType::LargeBinary, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![model])),
        Arc::new(Int32Array::from(vec![layer])),
        Arc::new(LargeBinaryArray::from_iter_values([weights])),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn import_describe_scan_and_embed_like_the_reference() {
    let server = Server::start();
    let mut client = server.client().await;
    assert_status(client.embed(MODEL, &["x"]).await, Code::NotFound, "import_model");

    let progress = import(&mut client).await;
    let stages: Vec<&str> = progress.iter().map(|p| p.stage.as_str()).collect();
    assert_eq!(stages.first(), Some(&"reading"));
    assert_eq!(stages.iter().filter(|s| **s == "layer").count(), 8, "embeddings + 6 blocks + head: {stages:?}");
    let done = progress.last().unwrap();
    assert_eq!(done.stage, "done");
    let summary = done.summary.clone().unwrap();
    assert_eq!((summary.num_layers, summary.dim, summary.architecture.as_str()), (8, Some(384), "bert"));
    assert_eq!(summary.version.len(), 16);

    let models = client.list_models().await.unwrap();
    assert_eq!(models, vec![summary.clone()]);
    let d = client.describe_model(MODEL).await.unwrap();
    assert_eq!(d.max_seq_length, Some(256));
    assert_eq!(d.config["num_hidden_layers"], 6);
    let block = d.layers.iter().find(|l| l.layer_id == 1).unwrap();
    assert_eq!(block.name, "encoder.layer.0");
    let q = block.tensors.iter().find(|t| t.name == "encoder.layer.0.attention.self.query.weight").unwrap();
    assert_eq!(q.shape, vec![384, 384]);

    // The models table is a table: scan it, read a layer's safetensors blob like Python would.
    let scanned = client.scan("models").await.unwrap();
    assert_eq!(scanned.num_rows(), 8);
    let (blob, meta) = stored_layer(&mut client, 0).await;
    let (data_start, header) = safetensors_header(&blob);
    assert_eq!(header["embeddings.word_embeddings.weight"]["shape"], serde_json::json!([30522, 384]));
    assert_eq!(header["embeddings.word_embeddings.weight"]["dtype"], "F32");
    assert!(blob.len() > data_start + 30522 * 384 * 4);
    assert_eq!(meta["layer"], "embeddings");
    assert!(meta["tokenizer"].as_str().unwrap().contains("[CLS]"));

    // Fidelity: every reference sentence at cosine ≥ 0.9999 against the float64 forward.
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("minilm_embeddings.json")).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 50);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let result = client.embed(MODEL, &texts).await.unwrap();
    assert_eq!((result.dim, result.version.as_str(), result.embeddings.len()), (384, summary.version.as_str(), cases.len()));
    let mut worst = (1.0f64, "");
    for (case, ours) in cases.iter().zip(&result.embeddings) {
        let reference: Vec<f64> = case["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let c = cosine(ours, &reference);
        let max_diff = ours.iter().zip(&reference).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(c >= 0.9999 && max_diff < 1e-3, "{:?}: cosine {c}, max |diff| {max_diff}", case["text"]);
        if c < worst.0 {
            worst = (c, case["text"].as_str().unwrap());
        }
    }
    eprintln!("embedding fidelity: worst 1 - cosine {:.2e} ({:?})", 1.0 - worst.0, &worst.1[..worst.1.len().min(40)]);

    // The Arrow form of `embed` (DoGet ticket) carries the same vectors.
    let ticket = serde_json::json!({"embed": {"model": MODEL, "texts": texts[..3]}}).to_string();
    let mut stream = client.flight().do_get(arrow_flight::Ticket::new(ticket)).await.unwrap();
    use futures::TryStreamExt;
    let mut rows = 0;
    while let Some(batch) = stream.try_next().await.unwrap() {
        let vectors = batch.column_by_name("embedding").unwrap().as_fixed_size_list();
        for r in 0..batch.num_rows() {
            let v = vectors.value(r);
            let v = v.as_primitive::<arrow::datatypes::Float32Type>().values();
            assert_eq!(v, &result.embeddings[rows + r][..]);
        }
        rows += batch.num_rows();
    }
    assert_eq!(rows, 3);

    // Bad input.
    assert_status(client.import_model(MODEL, &model_dir()).await, Code::AlreadyExists, "drop_model");
    assert_status(client.import_model("other", "/no/such/dir").await, Code::InvalidArgument, "does not exist");
    assert_status(client.import_model("bad name!", &model_dir()).await, Code::InvalidArgument, "invalid model name");
    assert_status(client.describe_model("nope").await, Code::NotFound, "model 'nope' not found");
    assert_status(client.create_table_with_model("t", "nope", Default::default()).await, Code::NotFound, "import_model");
    assert_status(client.drop_table("models").await, Code::InvalidArgument, "drop_model");
    // Directories that would import but never run are refused at import: a tokenizer that is
    // not one, a layer config.json promises and the weights lack, no room for text.
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("{}/config.json", model_dir())).unwrap()).unwrap();
    let mut more_layers = config.clone();
    more_layers["num_hidden_layers"] = serde_json::json!(7);
    for (file, text, needle) in [
        ("tokenizer.json", "{}".to_string(), "tokenizer.json is not a tokenizer"),
        ("config.json", more_layers.to_string(), "no tensors for layer 7 (encoder.layer.6.*)"),
        ("sentence_bert_config.json", r#"{"max_seq_length": 1}"#.to_string(), "max_seq_length 1 leaves no room"),
    ] {
        let dir = broken_copy(file, &text);
        assert_status(client.import_model("broken", dir.path().to_str().unwrap()).await, Code::InvalidArgument, needle);
    }
    assert_eq!(client.list_models().await.unwrap().len(), 1, "nothing of a refused import is kept");

    // drop_model removes the rows; the model is then unknown.
    client.drop_model(MODEL).await.unwrap();
    assert!(client.list_models().await.unwrap().is_empty());
    assert_status(client.embed(MODEL, &["x"]).await, Code::NotFound, "not found");
    assert_status(client.drop_model(MODEL).await, Code::NotFound, "not found");
}

#[derive(serde::Deserialize)]
struct Passage {
    id: String,
    story: String,
    chapter: Option<i64>,
    text: String,
}

#[derive(serde::Deserialize)]
struct HandChecked {
    query: String,
    expected_id: String,
}

fn passages_batch(passages: &[Passage]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("data_type", DataType::Utf8, true),
        Field::new("raw_data", DataType::LargeBinary, true),
        json_field("metadata"),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(passages.iter().map(|p| p.id.clone()))),
        Arc::new(StringArray::from_iter_values(passages.iter().map(|_| "text"))),
        Arc::new(LargeBinaryArray::from_iter_values(passages.iter().map(|p| p.text.as_bytes()))),
        Arc::new(StringArray::from_iter_values(
            passages.iter().map(|p| serde_json::json!({"story": p.story, "chapter": p.chapter}).to_string()),
        )),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_embedding_on_put_and_text_search_over_sherlock() {
    let server = Server::start();
    let mut client = server.client().await;
    import(&mut client).await;
    let version = client.list_models().await.unwrap()[0].version.clone();

    let table = client.create_table_with_model("sherlock", MODEL, Default::default()).await.unwrap();
    assert_eq!((table.dim, table.embedding_model.as_deref()), (Some(384), Some(MODEL)));
    assert!(table.schema.iter().any(|c| c.name == "embedding_model_version"));

    let passages: Vec<Passage> = std::fs::read_to_string(fixtures().join("sherlock-slice.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(passages.len() >= 100);
    let summary = client.put("sherlock", vec![passages_batch(&passages)]).await.unwrap();
    assert_eq!((summary.inserted, summary.embedded, summary.not_embedded), (passages.len() as u64, passages.len() as u64, 0));

    // An image row without a vector on a text model: stored, left null, counted.
    let image = Row { id: "img-1".into(), embedding: None, data_type: "image", raw: vec![0x89, b'P', b'N', b'G'], metadata: None };
    let summary = client.put("sherlock", vec![batch(&[image], 384)]).await.unwrap();
    assert_eq!((summary.inserted, summary.embedded, summary.not_embedded), (1, 0, 1));
    // An overwrite keeps a model table's schema and metric: one naming another metric is
    // refused, and the table is untouched.
    let other = Row { id: "img-2".into(), embedding: None, data_type: "image", raw: vec![1], metadata: None };
    let b = batch(&[other], 384);
    let mut meta = b.schema().metadata().clone();
    meta.insert("hyprstream.metric".into(), "l2".into());
    let b = b.clone().with_schema(Arc::new(b.schema().as_ref().clone().with_metadata(meta))).unwrap();
    let rows_before = client.describe_table("sherlock").await.unwrap().rows;
    assert_status(
        client.put_with_mode("sherlock", hyprstream_client::proto::PutMode::Overwrite, vec![b]).await,
        Code::InvalidArgument,
        "keeps its schema and metric",
    );
    assert_eq!(client.describe_table("sherlock").await.unwrap().rows, rows_before);

    // Every text row carries the model version that embedded it; the image row none.
    let rows = client
        .query(&Query { columns: Some(vec!["id".into(), "embedding_model_version".into()]), ..Query::scan("sherlock") })
        .await
        .unwrap();
    let ids = string_column(&rows, "id");
    let versions = string_column(&rows, "embedding_model_version");
    for (id, v) in ids.iter().zip(&versions) {
        assert_eq!(v.as_str(), if id == "img-1" { "" } else { version.as_str() }, "{id}");
    }

    // Hand-checked queries: the obviously right passage ranks first.
    let queries: Vec<HandChecked> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("sherlock-queries.json")).unwrap()).unwrap();
    assert!(queries.len() >= 5);
    for q in &queries {
        let hits = client.search_text("sherlock", &q.query, 5).await.unwrap();
        let top = string_column(&hits, "id");
        assert_eq!(top[0], q.expected_id, "query {:?}: got {top:?}", q.query);
        assert!(!top.contains(&"img-1".to_string()), "rows without a vector are never ranked");
    }
    // All of them in one batched request ("texts", embedded in one call): the same first hits.
    let texts = Query { texts: Some(queries.iter().map(|q| q.query.clone()).collect()), k: Some(5), ..Query::scan("sherlock") };
    let found = client.query(&texts).await.unwrap();
    let (ids, which) = (string_column(&found, "id"), query_column(&found));
    assert_eq!(which.len(), 5 * queries.len());
    for (i, q) in queries.iter().enumerate() {
        assert_eq!(ids[i * 5], q.expected_id, "batched query {:?}", q.query);
        assert_eq!(which[i * 5], i as u32);
    }
    // The search action takes text too (grpcurl users).
    let hits = client.search_hits(&Query::search_text("sherlock", &queries[0].query, 3)).await.unwrap();
    assert_eq!(hits[0].id, queries[0].expected_id);

    // A text row sent with its own vector keeps it (no model version stamped).
    let own = Row { id: "own".into(), embedding: Some(vec![0.05; 384]), data_type: "text", raw: b"my vector".to_vec(), metadata: None };
    let summary = client.put("sherlock", vec![batch(&[own], 384)]).await.unwrap();
    assert_eq!(summary.embedded, 0);

    // Bad input.
    let bad_utf8 = Row { id: "bad".into(), embedding: None, data_type: "text", raw: vec![0xff, 0xfe], metadata: None };
    let before = client.describe_table("sherlock").await.unwrap().version;
    assert_status(client.put("sherlock", vec![batch(&[bad_utf8], 384)]).await, Code::InvalidArgument, "not valid UTF-8");
    assert_eq!(client.describe_table("sherlock").await.unwrap().version, before, "a refused put changes nothing");
    let mixed = Query { vector: Some(vec![0.0; 384]), ..Query::search_text("sherlock", "x", 3) };
    assert_status(client.query(&mixed).await, Code::InvalidArgument, "send one of");
    client.put("plain", vec![batch(&random_rows("p", 5, 8), 8)]).await.unwrap();
    assert_status(client.search_text("plain", "a hound", 3).await, Code::InvalidArgument, "embedding_model");
    assert_status(
        client.create_table_with_model("sherlock2", "no-such-model", Default::default()).await,
        Code::NotFound,
        "no-such-model",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn layer_writes_are_checked_and_a_new_version_is_served_without_restart() {
    let server = Server::start();
    let mut client = server.client().await;
    import(&mut client).await;
    let before = client.embed(MODEL, &["The game is afoot."]).await.unwrap();
    let models_version = client.describe_model(MODEL).await.unwrap().table_version;

    // Not safetensors at all.
    assert_status(client.put("models", vec![layer_put(MODEL, 1, b"garbage".to_vec())]).await, Code::InvalidArgument, "safetensors");
    // Valid safetensors, wrong shape for the architecture.
    let header = br#"{"encoder.layer.0.attention.self.query.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let mut small = (header.len() as u64).to_le_bytes().to_vec();
    small.extend_from_slice(header);
    small.extend_from_slice(&[0u8; 16]);
    assert_status(client.put("models", vec![layer_put(MODEL, 1, small)]).await, Code::InvalidArgument, "layer 1");
    // A layer the model does not have, and a model that is not stored.
    let (layer1, _) = stored_layer(&mut client, 1).await;
    assert_status(client.put("models", vec![layer_put(MODEL, 42, layer1.clone())]).await, Code::InvalidArgument, "no layer 42");
    assert_status(client.put("models", vec![layer_put("ghost", 1, layer1.clone())]).await, Code::NotFound, "ghost");
    // A tensor the layer never had (here another layer's name) would be stored but never used.
    let extra = with_extra_tensor(&layer1, "encoder.layer.5.output.dense.bias");
    assert_status(client.put("models", vec![layer_put(MODEL, 1, extra)]).await, Code::InvalidArgument, "has no tensor 'encoder.layer.5.output.dense.bias'");
    assert_status(
        client.put_with_mode("models", hyprstream_client::proto::PutMode::Overwrite, vec![layer_put(MODEL, 1, layer1.clone())]).await,
        Code::InvalidArgument,
        "cannot be overwritten",
    );
    // Nothing of that reached the served model.
    let d = client.describe_model(MODEL).await.unwrap();
    assert_eq!(d.table_version, models_version, "refused layer writes must not commit");
    assert_eq!(client.embed(MODEL, &["The game is afoot."]).await.unwrap(), before);

    // A valid new layer 1 (the output LayerNorm's bias shifted): accepted, and served by the
    // next call without a restart, under a new model version.
    let changed = with_tensor(&layer1, "encoder.layer.0.output.LayerNorm.bias", |v| v + 0.5);
    let summary = client.put("models", vec![layer_put(MODEL, 1, changed)]).await.unwrap();
    assert_eq!((summary.inserted, summary.updated), (0, 1));
    let after = client.embed(MODEL, &["The game is afoot."]).await.unwrap();
    assert_ne!(after.version, before.version, "new weights, new model version");
    let c = cosine(&after.embeddings[0], &before.embeddings[0].iter().map(|v| *v as f64).collect::<Vec<_>>());
    assert!(c < 0.9999, "the changed layer must change the embedding (cosine {c})");
    // Writing the original back restores the original model exactly.
    client.put("models", vec![layer_put(MODEL, 1, layer1.clone())]).await.unwrap();
    assert_eq!(client.embed(MODEL, &["The game is afoot."]).await.unwrap(), before);

    // Finite weights that overflow float32 inside the network: every call that embeds fails
    // with FAILED_PRECONDITION, and no NaN vector is stored.
    client.create_table_with_model("notes", MODEL, Default::default()).await.unwrap();
    let note = |id: &str| Row { id: id.into(), embedding: None, data_type: "text", raw: b"The game is afoot.".to_vec(), metadata: None };
    client.put("notes", vec![batch(&[note("n-1")], 384)]).await.unwrap();
    let notes_version = client.describe_table("notes").await.unwrap().version;
    let huge = with_tensor(&layer1, "encoder.layer.0.output.dense.weight", |v| v.signum() * 3.0e38);
    client.put("models", vec![layer_put(MODEL, 1, huge)]).await.unwrap();
    assert_status(client.embed(MODEL, &["The game is afoot."]).await, Code::FailedPrecondition, "non-finite embedding");
    assert_status(client.put("notes", vec![batch(&[note("n-2")], 384)]).await, Code::FailedPrecondition, "nothing was written");
    assert_status(client.search_text("notes", "a hound", 3).await, Code::FailedPrecondition, "non-finite");
    assert_eq!(client.describe_table("notes").await.unwrap().version, notes_version, "the refused put wrote nothing");
    client.put("models", vec![layer_put(MODEL, 1, layer1)]).await.unwrap();
    assert_eq!(client.embed(MODEL, &["The game is afoot."]).await.unwrap(), before);
    client.put("notes", vec![batch(&[note("n-2")], 384)]).await.unwrap();
    assert_eq!(string_column(&client.search_text("notes", "The game is afoot.", 1).await.unwrap(), "id").len(), 1);
}

/// Rows embedded by a model whose weights then change get vectors from its new version with
/// `reembed`: exactly what `embed` gives for their text, stamped with the new version. Rows
/// with the client's own vector, and rows without text, are left as they are.
#[tokio::test(flavor = "multi_thread")]
async fn rows_reembed_when_their_model_changes() {
    let server = Server::start();
    let mut client = server.client().await;
    import(&mut client).await;
    client.create_table_with_model("notes", MODEL, Default::default()).await.unwrap();
    let texts = ["The game is afoot.", "You see, but you do not observe.", "Elementary."];
    let mut rows: Vec<Row> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Row { id: format!("n-{i}"), embedding: None, data_type: "text", raw: t.as_bytes().to_vec(), metadata: None })
        .collect();
    rows.push(Row { id: "own".into(), embedding: Some(vec![0.05; 384]), data_type: "text", raw: b"mine".to_vec(), metadata: None });
    rows.push(Row { id: "img".into(), embedding: None, data_type: "image", raw: vec![0x89, b'P'], metadata: None });
    client.put("notes", vec![batch(&rows, 384)]).await.unwrap();
    let old_version = client.list_models().await.unwrap()[0].version.clone();

    // Nothing is stale yet: no commit.
    let table_version = client.describe_table("notes").await.unwrap().version;
    let report = client.reembed("notes").await.unwrap();
    let last = report.last().unwrap();
    assert_eq!((last.stage.as_str(), last.total, last.done, last.version), ("done", 0, 0, None));
    assert_eq!(client.describe_table("notes").await.unwrap().version, table_version);

    // New weights for layer 1: a new model version; the stored rows keep the old vectors.
    let (layer1, _) = stored_layer(&mut client, 1).await;
    client.put("models", vec![layer_put(MODEL, 1, with_tensor(&layer1, "encoder.layer.0.output.LayerNorm.bias", |v| v + 0.5))]).await.unwrap();
    let new_version = client.list_models().await.unwrap()[0].version.clone();
    assert_ne!(new_version, old_version);
    let report = client.reembed("notes").await.unwrap();
    let stages: Vec<&str> = report.iter().map(|p| p.stage.as_str()).collect();
    assert_eq!(stages, ["started", "progress", "done"]);
    assert_eq!((report[0].total, report[2].done, report[2].model_version.as_str()), (3, 3, new_version.as_str()));

    let scanned = client.scan("notes").await.unwrap();
    let ids = string_column(&scanned, "id");
    let versions = string_column(&scanned, "embedding_model_version");
    let fresh = client.embed(MODEL, &texts).await.unwrap();
    for batch in &scanned.batches {
        use arrow::array::Array;
        let vectors = batch.column_by_name("embedding").unwrap().as_fixed_size_list().clone();
        let batch_ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        for row in 0..batch.num_rows() {
            let id = batch_ids.value(row);
            match id.strip_prefix("n-") {
                Some(i) => {
                    let stored = vectors.value(row);
                    let stored = stored.as_primitive::<arrow::datatypes::Float32Type>().values();
                    let want = &fresh.embeddings[i.parse::<usize>().unwrap()];
                    for (s, w) in stored.iter().zip(want) {
                        assert!((s - w).abs() <= 1e-6, "{id}: {s} vs {w}");
                    }
                }
                None if id == "own" => assert_eq!(vectors.value(row).as_primitive::<arrow::datatypes::Float32Type>().values()[0], 0.05),
                None => assert!(vectors.is_null(row), "{id}"),
            }
        }
    }
    for (id, v) in ids.iter().zip(&versions) {
        let want = if id.starts_with("n-") { new_version.as_str() } else { "" };
        assert_eq!(v.as_str(), want, "{id}");
    }
    // Run again: nothing left.
    assert_eq!(client.reembed("notes").await.unwrap().last().unwrap().total, 0);
    // Bad requests.
    client.put("plain", vec![batch(&random_rows("p", 3, 8), 8)]).await.unwrap();
    assert_status(client.reembed("plain").await, Code::InvalidArgument, "no embedding model");
    assert_status(client.reembed("nope").await, Code::NotFound, "nope");
    // Planning a text query (GetFlightInfo) checks that its model is stored.
    let text_query = arrow_flight::FlightDescriptor::new_cmd(Query::search_text("notes", "a hound", 3).to_json());
    client.flight_info(text_query.clone()).await.unwrap();
    client.drop_model(MODEL).await.unwrap();
    assert_status(client.flight_info(text_query).await, Code::NotFound, "import_model");
}

/// A put into a table with a model whose client gives up while its texts are being embedded
/// is not committed afterwards (the client was told it failed): a retried append then
/// succeeds instead of finding its ids stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_put_given_up_while_embedding_is_not_committed_later() {
    let server = Server::start();
    let mut client = server.client().await;
    import(&mut client).await;
    client.create_table_with_model("notes", MODEL, Default::default()).await.unwrap();
    let rows: Vec<Row> = (0..400)
        .map(|i| Row {
            id: format!("n-{i}"),
            embedding: None,
            data_type: "text",
            raw: format!("Note {i}: the game is afoot, and the hound was seen on the moor again.").into_bytes(),
            metadata: None,
        })
        .collect();
    let append = hyprstream_client::proto::PutMode::Append;
    let given_up =
        tokio::time::timeout(std::time::Duration::from_millis(300), client.put_with_mode("notes", append, vec![batch(&rows, 384)])).await;
    assert!(given_up.is_err(), "embedding 400 texts outlasts the deadline");
    // A write behind it on the same table runs once the abandoned put has finished.
    let mut other = server.client().await;
    other.put("notes", vec![batch(&[Row { id: "after".into(), embedding: None, data_type: "image", raw: vec![1], metadata: None }], 384)]).await.unwrap();
    assert_eq!(other.describe_table("notes").await.unwrap().rows, 1, "the given-up put wrote nothing");
    let retried = client.put_with_mode("notes", append, vec![batch(&rows, 384)]).await.unwrap();
    assert_eq!((retried.inserted, retried.embedded), (400, 400));
}

//! Models as data: the `models` table (one row per layer: `model_name`, `layer_id`,
//! `weights` = a safetensors blob, `metadata` JSON), importing Hugging Face directories into
//! it, and the encoders served from it.
//!
//! Encoders are built from the table's rows, never from the original files, and cached per
//! model with the content version they were built from: a write to a model's rows (a new
//! table version) is picked up by the next call, without a restart.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, LargeBinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::{StreamExt, TryStreamExt};
use hyprstream_proto::model_columns::{LAYER_ID, METADATA, MODEL_NAME, TABLE, WEIGHTS};
use hyprstream_proto::actions::{ImportModel, ModelFormat};
use hyprstream_proto::{ImportProgress, LayerInfo, ModelDescription, ModelSummary, PutSummary, TensorInfo};
use lance::dataset::WriteMode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::ingest::{metadata_field, raw_data_field};
use super::TableService;
use crate::error::{Error, Result};
use crate::ml::bert::BertConfig;
use crate::ml::encoder::TextEncoder;
use crate::ml::weights::{bert_layers, check_bert_layer, load_bert, read_safetensors, write_safetensors, NamedTensor};
use crate::ml::ModelBackend;
use crate::store::{OnMatch, ScanSpec};

/// The architectures this server can serve.
const BERT: &str = "bert";

/// Model names: 1-128 characters of A-Z a-z 0-9 . _ - (they appear in SQL filters, quoted).
pub fn validate_model_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid model name '{}': use 1-128 characters A-Z, a-z, 0-9, '.', '_' or '-'",
            crate::error::quoted(name)
        )))
    }
}

/// The `models` table's schema: the paper's `models(model_name, layer_id, weights, metadata)`.
pub fn models_schema() -> SchemaRef {
    let weights = raw_data_field();
    let weights = Field::new(WEIGHTS, DataType::LargeBinary, true).with_metadata(weights.metadata().clone());
    let metadata = metadata_field();
    let metadata = Field::new(METADATA, DataType::Utf8, true).with_metadata(metadata.metadata().clone());
    Arc::new(Schema::new(vec![
        Field::new(MODEL_NAME, DataType::Utf8, false),
        Field::new(LAYER_ID, DataType::Int32, false),
        weights,
        metadata,
    ]))
}

/// A model as its rows hold it.
pub struct StoredModel {
    pub name: String,
    pub architecture: String,
    pub config: Value,
    pub tokenizer: Option<String>,
    pub max_seq_length: Option<usize>,
    pub pooling: Option<String>,
    pub layers: BTreeMap<i32, StoredLayer>,
    /// sha256 over every layer's `layer_id` and weight bytes, in layer order (16 hex digits).
    pub version: String,
}

pub struct StoredLayer {
    pub name: String,
    pub tensors: Vec<NamedTensor>,
    pub metadata: Value,
    pub bytes: u64,
}

impl StoredModel {
    fn bert_config(&self) -> Result<BertConfig> {
        BertConfig::from_json(&self.config).map_err(|e| Error::invalid(format!("model '{}': {e}", self.name)))
    }

    pub fn summary(&self) -> ModelSummary {
        ModelSummary {
            name: self.name.clone(),
            architecture: self.architecture.clone(),
            num_layers: self.layers.len(),
            dim: self.config.get("hidden_size").and_then(Value::as_u64).map(|d| d as usize),
            version: self.version.clone(),
            bytes: self.layers.values().map(|l| l.bytes).sum(),
        }
    }

    pub fn describe(&self, table_version: u64) -> ModelDescription {
        ModelDescription {
            summary: self.summary(),
            max_seq_length: self.max_seq_length,
            pooling: self.pooling.clone(),
            config: self.config.clone(),
            layers: self.layers.iter().map(|(&id, l)| layer_info(id, &l.name, &l.tensors)).collect(),
            table_version,
        }
    }
}

fn layer_info(id: i32, name: &str, tensors: &[NamedTensor]) -> LayerInfo {
    LayerInfo {
        layer_id: id,
        name: name.to_string(),
        tensors: tensors
            .iter()
            .map(|t| TensorInfo { name: t.name.clone(), shape: t.shape.clone(), dtype: "F32".into() })
            .collect(),
        bytes: tensors.iter().map(NamedTensor::bytes).sum(),
    }
}

/// An encoder ready to embed, with the content version of the rows it was built from.
pub struct LoadedEncoder {
    pub name: String,
    pub version: String,
    pub dim: usize,
    encoder: TextEncoder<ModelBackend>,
}

impl LoadedEncoder {
    /// Embeds on blocking threads (the forward pass is CPU-bound and multi-threaded), in
    /// chunks so a large put logs its progress.
    pub async fn embed(self: &Arc<Self>, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        const CHUNK: usize = 256;
        let started = Instant::now();
        let total = texts.len();
        let mut out = Vec::with_capacity(total);
        for chunk in texts.chunks(CHUNK) {
            let (this, chunk) = (self.clone(), chunk.to_vec());
            let vectors = tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                this.encoder.embed(&refs)
            })
            .await
            .map_err(|e| Error::internal(format!("embedding task failed: {e}")))?
            .map_err(|e| Error::internal(format!("model '{}': {e}", self.name)))?;
            // Finite weights can still overflow float32 inside the network. A non-finite
            // vector would be stored (or searched with) as if it were an embedding, so the
            // whole call fails instead and nothing is written.
            if let Some(row) = vectors.iter().position(|v| v.iter().any(|x| !x.is_finite())) {
                return Err(Error::failed_precondition(format!(
                    "model '{}' (version {}) produced a non-finite embedding for text {} of this request: its weights overflow float32; fix or replace the model's layers (nothing was written)",
                    self.name,
                    self.version,
                    out.len() + row
                )));
            }
            out.extend(vectors);
            if total > CHUNK {
                tracing::info!(model = %self.name, done = out.len(), total, seconds = started.elapsed().as_secs_f64(), "embedding");
            }
        }
        tracing::debug!(model = %self.name, texts = total, ms = started.elapsed().as_secs_f64() * 1e3, "embedded");
        Ok(out)
    }
}

/// Encoders built from the `models` table, by model name, with the table version they were
/// last checked against.
#[derive(Default)]
pub struct ModelCache {
    encoders: Mutex<HashMap<String, (u64, Arc<LoadedEncoder>)>>,
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!(
        "model '{name}' not found in the '{TABLE}' table: import it with import_model {{\"name\": \"{name}\", \"path\": \"<directory>\"}} (list_models shows what is stored)"
    ))
}

fn quote(name: &str) -> String {
    name.replace('\'', "''")
}

/// Reads a JSON file of a model directory.
fn read_json(dir: &Path, file: &str) -> Result<Option<Value>> {
    let path = dir.join(file);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}

/// A Hugging Face-style directory read into rows, checked against its architecture.
struct ImportedModel {
    config: BertConfig,
    rows: Vec<(i32, Vec<u8>, Value, LayerInfo)>,
}

fn read_hf_directory(name: &str, dir: &Path) -> Result<ImportedModel> {
    let config_json = read_json(dir, "config.json")?
        .ok_or_else(|| Error::invalid(format!("{}: no config.json (a Hugging Face model directory has one)", dir.display())))?;
    let model_type = config_json.get("model_type").and_then(Value::as_str).unwrap_or("");
    if model_type != BERT {
        return Err(Error::invalid(format!(
            "model_type '{model_type}' is not served here: this server runs BERT-family encoders (model_type 'bert', e.g. all-MiniLM-L6-v2)"
        )));
    }
    let config = BertConfig::from_json(&config_json).map_err(Error::invalid)?;
    let tokenizer = std::fs::read_to_string(dir.join("tokenizer.json"))
        .map_err(|e| Error::invalid(format!("{}: tokenizer.json: {e}", dir.display())))?;
    // Checked now, not at first use: a model that imports must be able to embed.
    let parsed = tokenizers::Tokenizer::from_bytes(tokenizer.as_bytes())
        .map_err(|e| Error::invalid(format!("{}: tokenizer.json is not a tokenizer: {e}", dir.display())))?;
    if parsed.get_vocab_size(true) > config.vocab_size {
        return Err(Error::invalid(format!(
            "{}: tokenizer.json has {} tokens, more than config.json's vocab_size {}: they belong to different models",
            dir.display(),
            parsed.get_vocab_size(true),
            config.vocab_size
        )));
    }
    // sentence-transformers: the sequence limit and the pooling mode.
    let max_seq_length = read_json(dir, "sentence_bert_config.json")?
        .and_then(|c| c.get("max_seq_length").and_then(Value::as_u64))
        .map(|n| n as usize)
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
    if max_seq_length < 3 {
        return Err(Error::invalid(format!(
            "{}: max_seq_length {max_seq_length} leaves no room for text beside [CLS] and [SEP] (sentence_bert_config.json, or max_position_embeddings)",
            dir.display()
        )));
    }
    if let Some(pooling) = read_json(dir, "1_Pooling/config.json")? {
        if pooling.get("pooling_mode_mean_tokens").and_then(Value::as_bool) != Some(true) {
            return Err(Error::invalid(format!("{}: only mean pooling is served (1_Pooling/config.json)", dir.display())));
        }
    }
    let weights_path = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights_path).map_err(|e| {
        Error::invalid(format!("{}: {e} (weights are read from model.safetensors)", weights_path.display()))
    })?;
    let tensors = read_safetensors(&bytes).map_err(|e| Error::invalid(format!("{}: {e}", weights_path.display())))?;
    drop(bytes);

    let layers = bert_layers(&config, tensors);
    // Every layer config.json promises must be there: a model missing one imports but can
    // never run.
    for id in 0..=config.num_hidden_layers as i32 {
        if !layers.iter().any(|l| l.id == id) {
            let what = if id == 0 { "embeddings.*".to_string() } else { format!("encoder.layer.{}.*", id - 1) };
            return Err(Error::invalid(format!(
                "model '{name}': model.safetensors has no tensors for layer {id} ({what}); config.json says num_hidden_layers {} (a 'bert.' prefix on tensor names is dropped, no other)",
                config.num_hidden_layers
            )));
        }
    }
    let mut rows = Vec::new();
    for layer in layers {
        check_bert_layer(&config, layer.id, &layer.tensors).map_err(|e| Error::invalid(format!("model '{name}': {e}")))?;
        let info = layer_info(layer.id, &layer.name, &layer.tensors);
        let mut metadata = json!({
            "architecture": BERT,
            "layer": layer.name,
            "tensors": info.tensors,
        });
        if layer.id == 0 {
            // The embedding layer carries what the whole model needs to run.
            metadata["config"] = config_json.clone();
            metadata["tokenizer"] = Value::String(tokenizer.clone());
            metadata["max_seq_length"] = json!(max_seq_length);
            metadata["pooling"] = json!("mean");
            metadata["normalize"] = json!(true);
        }
        let blob = write_safetensors(&layer.tensors).map_err(Error::internal)?;
        rows.push((layer.id, blob, metadata, info));
    }
    Ok(ImportedModel { config, rows })
}

fn model_batch(name: &str, rows: &[(i32, Vec<u8>, Value)]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![name; rows.len()])),
        Arc::new(Int32Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
        Arc::new(LargeBinaryArray::from_iter_values(rows.iter().map(|r| r.1.as_slice()))),
        Arc::new(StringArray::from(rows.iter().map(|r| r.2.to_string()).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(models_schema(), columns).map_err(Error::from)
}

impl TableService {
    /// Imports a model directory as rows of the `models` table (one commit). `progress`
    /// receives `reading`, one `layer` per layer, then `done`.
    pub async fn import_model(&self, req: ImportModel, progress: mpsc::Sender<ImportProgress>) -> Result<ModelSummary> {
        validate_model_name(&req.name)?;
        let started = Instant::now();
        let path = std::path::PathBuf::from(&req.path);
        if !path.exists() {
            return Err(Error::invalid(format!("path '{}' does not exist on the server", req.path)));
        }
        let format = match req.format {
            ModelFormat::Auto if path.is_dir() => ModelFormat::Hf,
            ModelFormat::Auto if path.extension().is_some_and(|e| e == "gguf") => ModelFormat::Gguf,
            ModelFormat::Auto => {
                return Err(Error::invalid(format!(
                    "'{}' is neither a Hugging Face model directory nor a .gguf file",
                    req.path
                )))
            }
            f => f,
        };
        if format == ModelFormat::Gguf {
            return Err(Error::invalid(
                "format 'gguf' (LLaMA-family text generators) cannot be imported by this server yet; it serves BERT-family encoders from Hugging Face directories (format 'hf')",
            ));
        }
        if !path.is_dir() {
            return Err(Error::invalid(format!("format 'hf' needs a directory; '{}' is a file", req.path)));
        }
        let step = |stage: &str| ImportProgress {
            stage: stage.into(),
            model: req.name.clone(),
            layer: None,
            summary: None,
            seconds: started.elapsed().as_secs_f64(),
        };
        let _ = progress.send(step("reading")).await;

        let _guard = self.write_lock(TABLE).await?;
        if self.stored_model(&req.name).await?.is_some() {
            return Err(Error::already_exists(format!(
                "model '{}' is already stored; drop_model it first to import it again",
                req.name
            )));
        }
        let (name, dir) = (req.name.clone(), path.clone());
        let imported = tokio::task::spawn_blocking(move || read_hf_directory(&name, &dir))
            .await
            .map_err(|e| Error::internal(format!("import task failed: {e}")))??;
        let mut rows = Vec::new();
        for (id, blob, metadata, info) in imported.rows {
            let _ = progress.send(ImportProgress { layer: Some(info), ..step("layer") }).await;
            rows.push((id, blob, metadata));
        }
        let batch = model_batch(&req.name, &rows)?;
        if self.store().exists(TABLE) {
            self.store().write(TABLE, WriteMode::Append, models_schema(), vec![batch]).await?;
        } else {
            self.store().write(TABLE, WriteMode::Create, models_schema(), vec![batch]).await?;
        }
        let stored = self.stored_model(&req.name).await?.ok_or_else(|| Error::internal("imported model not readable"))?;
        let summary = stored.summary();
        tracing::info!(
            model = %req.name,
            layers = summary.num_layers,
            hidden = imported.config.hidden_size,
            version = %summary.version,
            seconds = started.elapsed().as_secs_f64(),
            "model imported"
        );
        let _ = progress.send(ImportProgress { summary: Some(summary.clone()), ..step("done") }).await;
        Ok(summary)
    }

    /// The `models` table's latest version, or `None` if no model was ever imported.
    async fn models_version(&self) -> Result<Option<u64>> {
        if !self.store().exists(TABLE) {
            return Ok(None);
        }
        Ok(Some(self.store().dataset(TABLE, None).await?.version().version))
    }

    /// Reads one model's rows (weights included).
    /// `NOT_FOUND` unless model `name` is stored (reads no weights: for planning a text query).
    pub async fn ensure_model_stored(&self, name: &str) -> Result<()> {
        if self.store().exists(TABLE) {
            let dataset = self.store().dataset(TABLE, None).await?;
            if self.store().count_rows(&dataset, Some(format!("{MODEL_NAME} = '{}'", quote(name)))).await? > 0 {
                return Ok(());
            }
        }
        Err(not_found(name))
    }

    pub async fn stored_model(&self, name: &str) -> Result<Option<StoredModel>> {
        if !self.store().exists(TABLE) {
            return Ok(None);
        }
        let dataset = self.store().dataset(TABLE, None).await?;
        let spec = ScanSpec { filter: Some(format!("{MODEL_NAME} = '{}'", quote(name))), ..Default::default() };
        let (_, stream) = self.store().scan(&dataset, &spec).await?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        let mut layers = BTreeMap::new();
        let mut hasher = Sha256::new();
        let mut raw: BTreeMap<i32, (Vec<u8>, Value)> = BTreeMap::new();
        for batch in &batches {
            let ids = batch.column_by_name(LAYER_ID).expect("models schema").as_primitive::<arrow::datatypes::Int32Type>();
            let weights = batch.column_by_name(WEIGHTS).expect("models schema").as_binary::<i64>();
            let metadata = batch.column_by_name(METADATA).expect("models schema").as_string::<i32>();
            for row in 0..batch.num_rows() {
                let meta = if metadata.is_valid(row) {
                    serde_json::from_str(metadata.value(row)).unwrap_or(Value::Null)
                } else {
                    Value::Null
                };
                raw.insert(ids.value(row), (weights.value(row).to_vec(), meta));
            }
        }
        if raw.is_empty() {
            return Ok(None);
        }
        for (id, (bytes, metadata)) in raw {
            hasher.update(id.to_le_bytes());
            hasher.update(&bytes);
            let tensors = read_safetensors(&bytes)
                .map_err(|e| Error::internal(format!("model '{name}' layer {id}: stored weights unreadable: {e}")))?;
            let layer_name = metadata.get("layer").and_then(Value::as_str).unwrap_or("").to_string();
            layers.insert(id, StoredLayer { name: layer_name, bytes: tensors.iter().map(NamedTensor::bytes).sum(), tensors, metadata });
        }
        let first = &layers.values().next().expect("non-empty").metadata;
        let digest = hasher.finalize();
        Ok(Some(StoredModel {
            name: name.to_string(),
            architecture: first.get("architecture").and_then(Value::as_str).unwrap_or("unknown").to_string(),
            config: layers.get(&0).and_then(|l| l.metadata.get("config").cloned()).unwrap_or(Value::Null),
            tokenizer: layers.get(&0).and_then(|l| l.metadata.get("tokenizer").and_then(Value::as_str).map(String::from)),
            max_seq_length: layers
                .get(&0)
                .and_then(|l| l.metadata.get("max_seq_length").and_then(Value::as_u64))
                .map(|n| n as usize),
            pooling: layers.get(&0).and_then(|l| l.metadata.get("pooling").and_then(Value::as_str).map(String::from)),
            layers,
            version: digest.iter().take(8).map(|b| format!("{b:02x}")).collect(),
        }))
    }

    /// Names of the stored models.
    async fn model_names(&self) -> Result<Vec<String>> {
        if !self.store().exists(TABLE) {
            return Ok(Vec::new());
        }
        let dataset = self.store().dataset(TABLE, None).await?;
        let spec = ScanSpec { columns: Some(vec![MODEL_NAME.to_string()]), ..Default::default() };
        let (_, stream) = self.store().scan(&dataset, &spec).await?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        let mut names: Vec<String> = batches
            .iter()
            .flat_map(|b| b.column(0).as_string::<i32>().iter().flatten().map(String::from).collect::<Vec<_>>())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub async fn list_models(&self) -> Result<Vec<ModelSummary>> {
        let mut out = Vec::new();
        for name in self.model_names().await? {
            if let Some(model) = self.stored_model(&name).await? {
                out.push(model.summary());
            }
        }
        Ok(out)
    }

    pub async fn describe_model(&self, name: &str) -> Result<ModelDescription> {
        validate_model_name(name)?;
        let version = self.models_version().await?.unwrap_or(0);
        let model = self.stored_model(name).await?.ok_or_else(|| not_found(name))?;
        Ok(model.describe(version))
    }

    pub async fn drop_model(&self, name: &str) -> Result<ModelSummary> {
        validate_model_name(name)?;
        let _guard = self.write_lock(TABLE).await?;
        let model = self.stored_model(name).await?.ok_or_else(|| not_found(name))?;
        let dataset = self.store().dataset(TABLE, None).await?;
        self.store().delete(TABLE, dataset, &format!("{MODEL_NAME} = '{}'", quote(name))).await?;
        self.model_cache.encoders.lock().expect("model cache poisoned").remove(name);
        tracing::info!(model = %name, "model dropped");
        Ok(model.summary())
    }

    /// The encoder for `name`, built from the `models` table and cached; rebuilt when the
    /// model's rows changed since (checked against the table version on every call).
    pub async fn encoder(&self, name: &str) -> Result<Arc<LoadedEncoder>> {
        validate_model_name(name)?;
        let table_version = self.models_version().await?.ok_or_else(|| not_found(name))?;
        let cached = self.model_cache.encoders.lock().expect("model cache poisoned").get(name).cloned();
        if let Some((checked, encoder)) = &cached {
            if *checked == table_version {
                return Ok(encoder.clone());
            }
        }
        let model = self.stored_model(name).await?.ok_or_else(|| not_found(name))?;
        let encoder = match cached {
            // Another model's rows changed the table version; this one is the same content.
            Some((_, encoder)) if encoder.version == model.version => encoder,
            _ => Arc::new(self.build_encoder(model).await?),
        };
        self.model_cache
            .encoders
            .lock()
            .expect("model cache poisoned")
            .insert(name.to_string(), (table_version, encoder.clone()));
        Ok(encoder)
    }

    async fn build_encoder(&self, model: StoredModel) -> Result<LoadedEncoder> {
        if model.architecture != BERT {
            return Err(Error::invalid(format!("model '{}' has architecture '{}', not a text encoder", model.name, model.architecture)));
        }
        let config = model.bert_config()?;
        let device = self.model_device.clone();
        let started = Instant::now();
        let name = model.name.clone();
        tokio::task::spawn_blocking(move || {
            let tensors: BTreeMap<i32, Vec<NamedTensor>> =
                model.layers.into_iter().map(|(id, l)| (id, l.tensors)).collect();
            let bert = load_bert::<ModelBackend>(&config, &tensors, &device)
                .map_err(|e| Error::invalid(format!("model '{}': {e}", model.name)))?;
            let tokenizer = model.tokenizer.ok_or_else(|| Error::invalid(format!("model '{}' has no tokenizer in layer 0's metadata", model.name)))?;
            let max_seq = model.max_seq_length.unwrap_or(config.max_position_embeddings);
            let encoder = TextEncoder::new(&config, bert, &tokenizer, max_seq, device)
                .map_err(|e| Error::invalid(format!("model '{}': {e}", model.name)))?;
            tracing::info!(model = %model.name, version = %model.version, seconds = started.elapsed().as_secs_f64(), "encoder loaded from the models table");
            Ok(LoadedEncoder { name: model.name, version: model.version, dim: config.hidden_size, encoder })
        })
        .await
        .map_err(|e| Error::internal(format!("loading model '{name}' failed: {e}")))?
    }

    /// `embed`: unit vectors for `texts` from model `name`.
    pub async fn embed(&self, name: &str, texts: Vec<String>) -> Result<(Arc<LoadedEncoder>, Vec<Vec<f32>>)> {
        let encoder = self.encoder(name).await?;
        let vectors = encoder.embed(texts).await?;
        Ok((encoder, vectors))
    }

    /// DoPut into the `models` table: replaces (or adds) layers of stored models. Every row
    /// is checked against its model's architecture before anything is written; the server
    /// keeps each row's metadata (a row's `metadata` is rebuilt from its tensors).
    pub(super) async fn put_model_layers(&self, mode: hyprstream_proto::PutMode, input: &Schema, batches: Vec<RecordBatch>) -> Result<PutSummary> {
        if mode == hyprstream_proto::PutMode::Overwrite {
            return Err(Error::invalid(format!(
                "the '{TABLE}' table cannot be overwritten: upsert layers, or use import_model / drop_model"
            )));
        }
        for needed in [MODEL_NAME, LAYER_ID, WEIGHTS] {
            input.index_of(needed).map_err(|_| {
                Error::invalid(format!("a put into '{TABLE}' needs columns {MODEL_NAME} (utf8), {LAYER_ID} (int32), {WEIGHTS} (binary safetensors)"))
            })?;
        }
        let _guard = self.write_lock(TABLE).await?;
        let mut models: HashMap<String, StoredModel> = HashMap::new();
        let mut rows: HashMap<String, Vec<(i32, Vec<u8>, Value)>> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        let mut index = 0usize;
        for batch in &batches {
            let names = arrow::compute::cast(batch.column(input.index_of(MODEL_NAME)?), &DataType::Utf8)
                .map_err(|e| Error::invalid(format!("column {MODEL_NAME}: {e}")))?;
            let names = names.as_string::<i32>();
            // A checked cast: the default one turns a value past int32 into a null.
            let options = arrow::compute::CastOptions { safe: false, ..Default::default() };
            let ids = arrow::compute::cast_with_options(batch.column(input.index_of(LAYER_ID)?), &DataType::Int32, &options)
                .map_err(|e| Error::invalid(format!("column {LAYER_ID} must hold int32 layer ids: {e}")))?;
            let ids = ids.as_primitive::<arrow::datatypes::Int32Type>();
            let weights = arrow::compute::cast(batch.column(input.index_of(WEIGHTS)?), &DataType::LargeBinary)
                .map_err(|e| Error::invalid(format!("column {WEIGHTS}: {e}")))?;
            let weights = weights.as_binary::<i64>();
            for row in 0..batch.num_rows() {
                let at = index + row;
                if names.is_null(row) || ids.is_null(row) || weights.is_null(row) {
                    return Err(Error::invalid(format!("row {at}: {MODEL_NAME}, {LAYER_ID} and {WEIGHTS} must not be null")));
                }
                let (name, id) = (names.value(row).to_string(), ids.value(row));
                if !seen.insert((name.clone(), id)) {
                    return Err(Error::invalid(format!("row {at}: model '{name}' layer {id} appears twice in the put")));
                }
                if !models.contains_key(&name) {
                    let model = self.stored_model(&name).await?.ok_or_else(|| not_found(&name))?;
                    models.insert(name.clone(), model);
                }
                let model = &models[&name];
                let Some(stored) = model.layers.get(&id) else {
                    return Err(Error::invalid(format!(
                        "row {at}: model '{name}' has no layer {id} (its layers: {:?})",
                        model.layers.keys().collect::<Vec<_>>()
                    )));
                };
                let tensors = read_safetensors(weights.value(row))
                    .map_err(|e| Error::invalid(format!("row {at}: {WEIGHTS} of model '{name}' layer {id}: {e}")))?;
                if model.architecture == BERT {
                    check_bert_layer(&model.bert_config()?, id, &tensors)
                        .map_err(|e| Error::invalid(format!("row {at}: model '{name}': {e}")))?;
                }
                // A layer keeps the tensors it was imported with: one it never had (another
                // layer's, a typo) would be stored and listed but never used.
                if let Some(extra) = tensors.iter().find(|t| !stored.tensors.iter().any(|s| s.name == t.name)) {
                    return Err(Error::invalid(format!(
                        "row {at}: model '{name}' layer {id} has no tensor '{}' (its tensors: {})",
                        extra.name,
                        stored.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                }
                let info = layer_info(id, &stored.name, &tensors);
                let mut metadata = stored.metadata.clone();
                metadata["tensors"] = json!(info.tensors);
                let blob = write_safetensors(&tensors).map_err(Error::internal)?;
                rows.entry(name).or_default().push((id, blob, metadata));
            }
            index += batch.num_rows();
        }
        let batches = rows.iter().map(|(name, rows)| model_batch(name, rows)).collect::<Result<Vec<_>>>()?;
        if batches.is_empty() {
            let version = self.models_version().await?.unwrap_or(0);
            return Ok(PutSummary { table: TABLE.into(), inserted: 0, updated: 0, version, embedded: 0, not_embedded: 0 });
        }
        let dataset = self.store().dataset(TABLE, None).await?;
        let on_match = if mode == hyprstream_proto::PutMode::Append { OnMatch::Fail } else { OnMatch::Replace };
        let (dataset, counts) =
            self.store().merge(TABLE, dataset, &[MODEL_NAME, LAYER_ID], on_match, models_schema(), batches).await?;
        tracing::info!(models = ?rows.keys().collect::<Vec<_>>(), layers = index, version = dataset.version().version, "model layers replaced");
        Ok(PutSummary {
            table: TABLE.into(),
            inserted: counts.inserted,
            updated: counts.updated,
            version: dataset.version().version,
            embedded: 0,
            not_embedded: 0,
        })
    }
}

/// Most texts one `embed` call takes (larger jobs: several calls, or a DoPut with auto-embedding).
pub const MAX_EMBED_TEXTS: usize = 10_000;

impl TableService {
    /// The `embed` action: unit vectors for the texts, from a stored model.
    pub async fn embed_texts(&self, req: &hyprstream_proto::actions::Embed) -> Result<(Arc<LoadedEncoder>, Vec<Vec<f32>>)> {
        if req.texts.len() > MAX_EMBED_TEXTS {
            return Err(Error::invalid(format!(
                "embed takes at most {MAX_EMBED_TEXTS} texts per call, got {}",
                req.texts.len()
            )));
        }
        self.embed(&req.model, req.texts.clone()).await
    }

    /// A DoGet `{"embed": {...}}` ticket: one batch of (`text` utf8, `embedding`
    /// fixed_size_list<float32>[dim]), schema metadata naming the model and its version.
    pub async fn embed_rows(&self, req: &hyprstream_proto::actions::Embed) -> Result<super::QueryOutput> {
        let (encoder, vectors) = self.embed_texts(req).await?;
        let metadata = HashMap::from([
            (hyprstream_proto::schema_keys::EMBEDDING_MODEL.to_string(), encoder.name.clone()),
            ("hyprstream.embedding_model_version".to_string(), encoder.version.clone()),
        ]);
        let schema = Arc::new(Schema::new_with_metadata(
            vec![Field::new("text", DataType::Utf8, false), super::ingest::embedding_field(encoder.dim)],
            metadata,
        ));
        let values: Vec<f32> = vectors.into_iter().flatten().collect();
        let DataType::FixedSizeList(item, _) = schema.field(1).data_type() else { unreachable!() };
        let vectors = arrow::array::FixedSizeListArray::try_new(
            item.clone(),
            encoder.dim as i32,
            Arc::new(arrow::array::Float32Array::from(values)),
            None,
        )?;
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(req.texts.clone())), Arc::new(vectors)])?;
        Ok(super::QueryOutput { schema, batches: futures::stream::iter([Ok(batch)]).boxed() })
    }
}

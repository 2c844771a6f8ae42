//! JSON results: DoPut's PutResult metadata and DoAction result bodies.
use serde::{Deserialize, Serialize};

use crate::query::Metric;

/// `PutResult.app_metadata` of a DoPut.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PutSummary {
    pub table: String,
    pub inserted: u64,
    pub updated: u64,
    pub version: u64,
    /// Rows the table's embedding model embedded in this put (text rows sent without a vector).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub embedded: u64,
    /// Rows sent without a vector that the model cannot embed (e.g. images on a text model):
    /// stored with a null embedding, so search never returns them until they get one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_embedded: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    /// Arrow type, as Arrow displays it (e.g. `FixedSizeList(384 x Float32)`).
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
    /// Stored with Lance's blob encoding (large values kept out of the column pages).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blob: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TableSummary {
    pub name: String,
    pub rows: u64,
    pub version: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TableDescription {
    pub name: String,
    pub rows: u64,
    /// Length of the `embedding` vectors; absent for a table without one.
    pub dim: Option<usize>,
    pub metric: Metric,
    /// The model that embeds rows put without a vector and `"text"` queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    pub version: u64,
    pub versions: Vec<u64>,
    pub schema: Vec<ColumnInfo>,
    pub indexes: Vec<IndexInfo>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IndexInfo {
    pub name: String,
    pub columns: Vec<String>,
    #[serde(rename = "type")]
    pub index_type: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VersionInfo {
    pub version: u64,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeleteSummary {
    pub table: String,
    pub deleted: u64,
    pub version: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RestoreSummary {
    pub table: String,
    /// The version whose contents are now the latest.
    pub restored: u64,
    /// The new latest version.
    pub version: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DropSummary {
    pub table: String,
    pub dropped: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SearchHit {
    /// Batched searches: which query (its position in `vectors` / `texts`) this hit answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<u32>,
    pub id: String,
    pub distance: f32,
    pub data_type: Option<String>,
    /// The row's metadata JSON, parsed.
    pub metadata: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub uptime_secs: f64,
    pub tables: usize,
}

/// One message of `create_index`'s result stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IndexProgress {
    /// `started`, then `done`.
    pub stage: String,
    pub table: String,
    pub index: Option<IndexInfo>,
    /// The table version with the index (on `done`).
    pub version: Option<u64>,
    pub seconds: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OptimizeSummary {
    pub table: String,
    pub fragments_removed: u64,
    pub fragments_added: u64,
    pub version: u64,
}

/// One row of `list_models`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub architecture: String,
    /// Rows (layers) the model has in the `models` table.
    pub num_layers: usize,
    /// Embedding length of an encoder.
    pub dim: Option<usize>,
    /// Content version: the first 16 hex digits of the sha256 over the model's stored layers.
    /// Rows record it in `embedding_model_version`.
    pub version: String,
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LayerInfo {
    pub layer_id: i32,
    /// `embeddings`, `encoder.layer.N`, `head` (tensors past the encoder, e.g. a pooler).
    pub name: String,
    pub tensors: Vec<TensorInfo>,
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelDescription {
    #[serde(flatten)]
    pub summary: ModelSummary,
    pub max_seq_length: Option<usize>,
    pub pooling: Option<String>,
    /// The architecture's configuration (Hugging Face `config.json`).
    pub config: serde_json::Value,
    pub layers: Vec<LayerInfo>,
    /// Version of the `models` table the description was read from.
    pub table_version: u64,
}

/// One message of `reembed`'s result stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReembedProgress {
    /// `started` (with `total`), `progress` after each committed chunk, then `done`.
    pub stage: String,
    pub table: String,
    pub model: String,
    /// The model version rows are re-embedded with.
    pub model_version: String,
    /// Rows embedded under another version when the work started.
    pub total: u64,
    /// Rows re-embedded so far.
    pub done: u64,
    /// The table version after the last commit (none before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub seconds: f64,
}

/// One message of `import_model`'s result stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ImportProgress {
    /// `reading`, `layer` (one per layer written), then `done`.
    pub stage: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<LayerInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<ModelSummary>,
    pub seconds: f64,
}

/// Result of `embed`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EmbedResult {
    pub model: String,
    pub version: String,
    pub dim: usize,
    pub embeddings: Vec<Vec<f32>>,
}

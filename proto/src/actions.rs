//! DoAction types: names, one-line descriptions, example bodies, and typed bodies.
use serde::{Deserialize, Serialize};

use crate::query::Metric;

/// What ListActions answers, and the source of the action table in `docs/protocol.md`.
pub struct ActionSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub example: &'static str,
}

pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "create_table",
        description: "Create an empty multimodal table (id, embedding[dim], data_type, raw_data, metadata).",
        example: r#"{"name": "sherlock_data", "dim": 384, "metric": "cosine"}  or  {"name": "sherlock_data", "embedding_model": "all-minilm-l6-v2"}"#,
    },
    ActionSpec {
        name: "drop_table",
        description: "Delete a table and all its versions.",
        example: r#"{"name": "sherlock_data"}"#,
    },
    ActionSpec {
        name: "list_tables",
        description: "List tables with their row counts and latest versions.",
        example: "{}",
    },
    ActionSpec {
        name: "describe_table",
        description: "Schema, rows, dim, metric, current version, versions and indexes of a table.",
        example: r#"{"name": "sherlock_data"}"#,
    },
    ActionSpec {
        name: "delete",
        description: "Delete the rows matching an SQL filter; returns the count and the new version.",
        example: r#"{"table": "sherlock_data", "filter": "id = 'a-1'"}"#,
    },
    ActionSpec {
        name: "search",
        description: "k-nearest-neighbour search (same keys as a search ticket); returns JSON rows {id, distance, data_type, metadata}.",
        example: r#"{"table": "sherlock_data", "vector": [0.1, 0.2, 0.3], "k": 5}"#,
    },
    ActionSpec {
        name: "versions",
        description: "List the table's versions with their timestamps.",
        example: r#"{"table": "sherlock_data"}"#,
    },
    ActionSpec {
        name: "restore",
        description: "Make an earlier version the latest (as a new version; history is kept).",
        example: r#"{"table": "sherlock_data", "version": 2}"#,
    },
    ActionSpec {
        name: "create_index",
        description: "Build an index through Lance (streams progress): ivf_pq, ivf_hnsw_sq, ivf_hnsw_flat, ivf_flat on embedding; btree, bitmap on a scalar column.",
        example: r#"{"table": "sherlock_data", "type": "ivf_hnsw_sq", "num_partitions": 16}"#,
    },
    ActionSpec {
        name: "optimize",
        description: "Compact small fragments and fold rows added since an index was built into it.",
        example: r#"{"table": "sherlock_data"}"#,
    },
    ActionSpec {
        name: "import_model",
        description: "Import a model (Hugging Face directory: config.json, model.safetensors, tokenizer.json) into the `models` table, one row per layer (streams progress).",
        example: r#"{"name": "all-minilm-l6-v2", "path": "models/all-minilm-l6-v2", "format": "auto"}"#,
    },
    ActionSpec {
        name: "list_models",
        description: "Models stored in the `models` table: architecture, layers, embedding dim, version.",
        example: "{}",
    },
    ActionSpec {
        name: "describe_model",
        description: "A model's configuration, layers and tensors (names, shapes, dtypes).",
        example: r#"{"name": "all-minilm-l6-v2"}"#,
    },
    ActionSpec {
        name: "drop_model",
        description: "Delete a model's rows from the `models` table.",
        example: r#"{"name": "all-minilm-l6-v2"}"#,
    },
    ActionSpec {
        name: "embed",
        description: "Embed texts with a stored model; returns JSON vectors (a DoGet ticket {\"embed\": {...}} returns Arrow).",
        example: r#"{"model": "all-minilm-l6-v2", "texts": ["a study in scarlet"]}"#,
    },
    ActionSpec {
        name: "reembed",
        description: "Give rows the table's model embedded under older weights vectors from its current version (streams progress; a commit per chunk).",
        example: r#"{"table": "sherlock"}"#,
    },
    ActionSpec {
        name: "health",
        description: "Server version, uptime and table count.",
        example: "{}",
    },
];

/// Action names as constants, so client and server cannot drift apart.
pub mod names {
    pub const CREATE_TABLE: &str = "create_table";
    pub const DROP_TABLE: &str = "drop_table";
    pub const LIST_TABLES: &str = "list_tables";
    pub const DESCRIBE_TABLE: &str = "describe_table";
    pub const DELETE: &str = "delete";
    pub const SEARCH: &str = "search";
    pub const VERSIONS: &str = "versions";
    pub const RESTORE: &str = "restore";
    pub const HEALTH: &str = "health";
    pub const CREATE_INDEX: &str = "create_index";
    pub const OPTIMIZE: &str = "optimize";
    pub const IMPORT_MODEL: &str = "import_model";
    pub const LIST_MODELS: &str = "list_models";
    pub const DESCRIBE_MODEL: &str = "describe_model";
    pub const DROP_MODEL: &str = "drop_model";
    pub const EMBED: &str = "embed";
    pub const REEMBED: &str = "reembed";
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateTable {
    #[serde(alias = "table")]
    pub name: String,
    /// Vector length; taken from the model when `embedding_model` is given.
    #[serde(default)]
    pub dim: Option<usize>,
    #[serde(default)]
    pub metric: Metric,
    /// A model in the `models` table: rows put without an embedding are embedded by it, and
    /// searches may send `"text"`.
    #[serde(default)]
    pub embedding_model: Option<String>,
}

/// Where `import_model` reads a model from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// Decided from the path: a directory is `hf`, a `.gguf` file is `gguf`.
    #[default]
    Auto,
    /// A Hugging Face-style directory: config.json, model.safetensors, tokenizer.json.
    Hf,
    Gguf,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImportModel {
    pub name: String,
    /// A path on the server's file system.
    pub path: String,
    #[serde(default)]
    pub format: ModelFormat,
}

/// Body of actions that name one model (`describe_model`, `drop_model`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    #[serde(alias = "model")]
    pub name: String,
}

/// Body of `embed`, and of a DoGet ticket `{"embed": {...}}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Embed {
    pub model: String,
    pub texts: Vec<String>,
}

/// Body of actions that name one table (`drop_table`, `describe_table`, `versions`).
/// Both `"name"` and `"table"` are accepted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableRef {
    #[serde(alias = "table")]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    #[serde(alias = "name")]
    pub table: String,
    pub filter: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Restore {
    #[serde(alias = "name")]
    pub table: String,
    pub version: u64,
}

/// Body of actions that take no arguments (`list_tables`, `health`); an empty body is accepted too.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    IvfPq,
    IvfHnswSq,
    /// HNSW over the full-precision vectors (no quantisation: more memory, recall like
    /// hnswlib's at the same `ef`).
    IvfHnswFlat,
    IvfFlat,
    Btree,
    Bitmap,
}

impl IndexKind {
    pub fn is_vector(self) -> bool {
        matches!(self, IndexKind::IvfPq | IndexKind::IvfHnswSq | IndexKind::IvfHnswFlat | IndexKind::IvfFlat)
    }

    pub fn is_hnsw(self) -> bool {
        matches!(self, IndexKind::IvfHnswSq | IndexKind::IvfHnswFlat)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateIndex {
    pub table: String,
    #[serde(rename = "type")]
    pub kind: IndexKind,
    /// Default `embedding` for vector indexes; required for scalar ones.
    #[serde(default)]
    pub column: Option<String>,
    /// Vector indexes: default the table's metric.
    #[serde(default)]
    pub metric: Option<Metric>,
    /// IVF partitions (default ≈ √rows).
    #[serde(default)]
    pub num_partitions: Option<usize>,
    /// PQ sub-vectors (must divide dim; default dim/16 or the nearest that divides).
    #[serde(default)]
    pub num_sub_vectors: Option<usize>,
    /// HNSW edges per node (default 20).
    #[serde(default)]
    pub m: Option<usize>,
    /// HNSW build breadth (default 150).
    #[serde(default)]
    pub ef_construction: Option<usize>,
    #[serde(default)]
    pub name: Option<String>,
}

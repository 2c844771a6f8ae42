//! DoGet tickets (scan and search) and DoPut commands.
use serde::{Deserialize, Serialize};

/// Distance metric. Distances are "smaller is closer":
/// cosine = 1 − cos(q, x); l2 = squared euclidean; dot = −(q · x).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    #[default]
    Cosine,
    Dot,
    L2,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
            Metric::L2 => "l2",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "cosine" => Some(Metric::Cosine),
            "dot" => Some(Metric::Dot),
            "l2" => Some(Metric::L2),
            _ => None,
        }
    }
}

/// A DoGet ticket, a `for_command` descriptor, or the body of the `search` action.
/// Without `vector` it is a scan; with it, an exact k-nearest-neighbour search.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub table: String,
    /// SQL predicate (Lance/DataFusion syntax); applied before ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Columns to return; default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Scan: at most this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Read this table version instead of the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Search: the query vector (length = the table's dim, finite values): an array of
    /// numbers or a base64 string of little-endian float32 bytes (see [`crate::vector`]).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::vector::deserialize_opt")]
    pub vector: Option<Vec<f32>>,
    /// Search by text: embedded by the table's `embedding_model` (instead of `vector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Batched search: many query vectors answered in one pass over the rows. The result
    /// carries a `_query` column (the query's position in this list), rows grouped by query,
    /// nearest first within each. Each entry in either form of `vector`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::vector::deserialize_opt_many")]
    pub vectors: Option<Vec<Vec<f32>>>,
    /// Batched search by text (embedded in one call), like `vectors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub texts: Option<Vec<String>>,
    /// Search: number of neighbours (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Search: metric (default the table's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// Search: `false` lets a vector index (ANN) answer; default `true` (exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<bool>,
    /// ANN: IVF partitions to probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nprobes: Option<usize>,
    /// ANN: HNSW search breadth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef: Option<usize>,
    /// ANN: re-rank `refine × k` candidates with exact distances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refine: Option<u32>,
}

impl Query {
    pub const DEFAULT_K: usize = 10;

    pub fn scan(table: impl Into<String>) -> Self {
        Query { table: table.into(), ..Default::default() }
    }

    pub fn search(table: impl Into<String>, vector: Vec<f32>, k: usize) -> Self {
        Query { table: table.into(), vector: Some(vector), k: Some(k), ..Default::default() }
    }

    pub fn search_text(table: impl Into<String>, text: impl Into<String>, k: usize) -> Self {
        Query { table: table.into(), text: Some(text.into()), k: Some(k), ..Default::default() }
    }

    /// Many query vectors in one search (`_query` in the result says which row answers which).
    pub fn search_batch(table: impl Into<String>, vectors: Vec<Vec<f32>>, k: usize) -> Self {
        Query { table: table.into(), vectors: Some(vectors), k: Some(k), ..Default::default() }
    }

    pub fn is_search(&self) -> bool {
        self.vector.is_some() || self.text.is_some() || self.is_batch()
    }

    /// A batched search (`vectors` or `texts`): its result has a `_query` column.
    pub fn is_batch(&self) -> bool {
        self.vectors.is_some() || self.texts.is_some()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Query always serialises")
    }
}

/// How a DoPut stream is applied to its table.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum PutMode {
    /// New ids are inserted, rows with existing ids are replaced.
    #[default]
    Upsert,
    /// Rows are inserted; an id that already exists fails the whole put (ALREADY_EXISTS).
    Append,
    /// The table's rows (and schema) are replaced by the stream.
    Overwrite,
}

/// `FlightDescriptor::for_command` body of a DoPut.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PutCommand {
    pub table: String,
    #[serde(default)]
    pub mode: PutMode,
    /// How many rows the put carries. The server commits when the stream ends normally, which
    /// a sender that failed partway may also do (pyarrow closing its writer): with `rows`, a
    /// stream that ends with another count is refused and nothing is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

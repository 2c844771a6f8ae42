//! The Hyprstream wire contract, shared by the server and the client without sharing code.
//!
//! Flight carries opaque bytes in tickets, command descriptors and action bodies; Hyprstream
//! fills them with UTF-8 JSON whose shapes are defined here (and documented in
//! `docs/protocol.md`). Unknown keys are rejected, so a typo is an error rather than a
//! silently ignored option.

pub mod actions;
pub mod query;
pub mod results;
pub mod vector;

pub use actions::{ActionSpec, ACTIONS};
pub use query::{Metric, PutCommand, PutMode, Query};
pub use results::*;

/// FileDescriptorSet of `proto/Flight.proto` (with its imports), for gRPC reflection.
pub const FLIGHT_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flight_descriptor.bin"));

/// Column names of the multimodal table schema (the paper's `sherlock_data`).
pub mod columns {
    pub const ID: &str = "id";
    pub const EMBEDDING: &str = "embedding";
    pub const DATA_TYPE: &str = "data_type";
    pub const RAW_DATA: &str = "raw_data";
    pub const METADATA: &str = "metadata";
    /// Added to search results: the distance to the query, smaller is closer.
    pub const DISTANCE: &str = "_distance";
    /// Added to batched search results: the position of the query (in `vectors` / `texts`)
    /// that the row answers.
    pub const QUERY: &str = "_query";
    /// On tables with an embedding model: the model version that produced the row's
    /// embedding (null when the client sent the vector).
    pub const EMBEDDING_MODEL_VERSION: &str = "embedding_model_version";
}

/// Column names of the `models` table (the paper's Foundational Model Storage).
pub mod model_columns {
    pub const TABLE: &str = "models";
    pub const MODEL_NAME: &str = "model_name";
    pub const LAYER_ID: &str = "layer_id";
    pub const WEIGHTS: &str = "weights";
    pub const METADATA: &str = "metadata";
}

/// Schema-metadata keys the server sets on result streams and stored tables.
pub mod schema_keys {
    /// On search results: which engine answered (`exact_cpu`, …).
    pub const SEARCH_PATH: &str = "hyprstream.search_path";
    /// On stored tables: the table's default metric; on search results: the metric used.
    pub const METRIC: &str = "hyprstream.metric";
    /// On stored tables: the name of the table's embedding model.
    pub const EMBEDDING_MODEL: &str = "hyprstream.embedding_model";
}

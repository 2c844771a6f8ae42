//! Hyprstream server: Arrow Flight over Lance multimodal tables.
//!
//! Layers, outermost first: [`flight`] (the gRPC edge) → [`service`] (the domain, testable
//! without a network) → [`store`] (Lance). Only `flight` knows about gRPC.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub mod error;
pub mod flight;
pub mod ml;
pub mod service;
pub mod store;

use flight::auth::{AllowAll, Authenticator};
use flight::HyprstreamFlight;
use service::TableService;
use store::Store;

/// Largest gRPC message accepted or sent: a DoPut batch of tens of MB fits.
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub addr: String,
    /// Where models run (`--device`).
    pub device: ml::Device,
    /// Models imported at startup unless already stored: (name, Hugging Face directory).
    pub import_models: Vec<(String, PathBuf)>,
    /// Most bytes of Arrow data one DoPut may carry (`--max-put-bytes`): a put is validated
    /// whole and committed as one version, so it is held in memory until then.
    pub max_put_bytes: usize,
}

/// Default `max_put_bytes`: 1M rows of 384-d vectors (1.5 GB) fit, with room for ids and text.
pub const DEFAULT_MAX_PUT_BYTES: usize = 4 << 30;

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, addr: impl Into<String>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            addr: addr.into(),
            device: ml::Device::Auto,
            import_models: Vec::new(),
            max_put_bytes: DEFAULT_MAX_PUT_BYTES,
        }
    }
}

/// Imports the startup models that the `models` table does not hold yet.
async fn import_startup_models(tables: &TableService, models: &[(String, PathBuf)]) -> anyhow_lite::Result<()> {
    for (name, path) in models {
        let stored = tables.stored_model(name).await.map_err(|e| anyhow_lite::msg(e.to_string()))?;
        if stored.is_some() {
            tracing::info!(model = %name, "model already stored");
            continue;
        }
        // Progress goes to the log here; nobody reads the channel.
        let (progress, _) = tokio::sync::mpsc::channel(1);
        let request = hyprstream_proto::actions::ImportModel {
            name: name.clone(),
            path: path.display().to_string(),
            format: hyprstream_proto::actions::ModelFormat::Auto,
        };
        tables
            .import_model(request, progress)
            .await
            .map_err(|e| anyhow_lite::msg(format!("importing model '{name}' from {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Binds, then serves until `shutdown` resolves. In-flight calls finish before it returns;
/// a put that had not committed by then is not committed at all (Lance commits are atomic).
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow_lite::Result<()> {
    let store = Store::open(&config.data_dir).map_err(|e| anyhow_lite::msg(e.to_string()))?;
    ml::resolve_device(config.device).map_err(anyhow_lite::msg)?;
    service::gpu::configure(config.device).map_err(anyhow_lite::msg)?;
    let tables = Arc::new(TableService::new(store));
    import_startup_models(&tables, &config.import_models).await?;
    let auth: Arc<dyn Authenticator> = Arc::new(AllowAll);
    let flight = FlightServiceServer::new(HyprstreamFlight::new(tables.clone(), auth, config.max_put_bytes))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hyprstream_proto::FLIGHT_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| anyhow_lite::msg(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hyprstream_proto::FLIGHT_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| anyhow_lite::msg(format!("reflection: {e}")))?;

    let listener = TcpListener::bind(&config.addr)
        .await
        .map_err(|e| anyhow_lite::msg(format!("cannot listen on {}: {e}", config.addr)))?;
    let local = listener.local_addr().map_err(|e| anyhow_lite::msg(e.to_string()))?;
    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), "hyprstream-server listening");
    on_bound(local);

    tonic::transport::Server::builder()
        .add_service(flight)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // No Nagle: a DoGet answer is several small writes (schema, batches, trailers), and
        // Nagle + delayed ACK would hold each reply back ~40 ms.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), {
            // Long multi-commit work (reembed) ends at its next commit once asked to stop.
            let tables = tables.clone();
            async move {
                shutdown.await;
                tables.begin_shutdown();
            }
        })
        .await
        .map_err(|e| anyhow_lite::msg(format!("server error: {e}")))?;
    // Writes whose clients went away still run to their commit (an index build may take a
    // while): the process ends after them.
    tables.drain_writes().await;
    tracing::info!("hyprstream-server stopped");
    Ok(())
}

/// A minimal error type for the binary's top level (keeps anyhow out of the library).
pub mod anyhow_lite {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
    pub fn msg(m: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
        m.into().into()
    }
}

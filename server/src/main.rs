//! `hyprstream-server`: serves Hyprstream's Flight API over a local data directory.
use std::path::PathBuf;

use clap::Parser;
use hyprstream_server::{serve, ServerConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "hyprstream-server", version, about = "Arrow Flight server over Lance multimodal tables")]
struct Args {
    /// Directory holding the tables (one Lance dataset each).
    #[arg(long, env = "HYPRSTREAM_DATA_DIR", default_value = "./hyprstream-data")]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "HYPRSTREAM_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// Where exact search runs: `cpu`, `cuda:N` (that GPU, required) or `auto` (GPU 0 when a
    /// CUDA driver is found at run time). Models run on the CPU in every case.
    #[arg(long, env = "HYPRSTREAM_DEVICE", default_value = "auto")]
    device: hyprstream_server::ml::Device,
    /// `NAME=DIR`: import the Hugging Face model directory DIR as model NAME at startup,
    /// unless the `models` table already holds NAME (repeatable; env: comma-separated).
    #[arg(long = "import-model", env = "HYPRSTREAM_IMPORT_MODELS", value_delimiter = ',', value_parser = parse_import)]
    import_models: Vec<(String, PathBuf)>,
    /// Most bytes of Arrow data one DoPut may carry (a put is held in memory until it commits
    /// as one version): larger loads are split into several puts.
    #[arg(long, env = "HYPRSTREAM_MAX_PUT_BYTES", default_value_t = hyprstream_server::DEFAULT_MAX_PUT_BYTES)]
    max_put_bytes: usize,
    /// Log format: `text` or `json`.
    #[arg(long, env = "HYPRSTREAM_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() {
    let args = Args::parse();
    let filter = EnvFilter::try_from_env("HYPRSTREAM_LOG").unwrap_or_else(|_| EnvFilter::new("info,lance=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let config = ServerConfig {
        data_dir: args.data_dir,
        addr: args.addr,
        device: args.device,
        import_models: args.import_models,
        max_put_bytes: args.max_put_bytes,
    };
    let result = runtime.block_on(serve(config, shutdown_signal(), |addr| {
        // One line on stdout that scripts and tests wait for.
        println!("hyprstream-server listening on {addr}");
    }));
    if let Err(e) = result {
        tracing::error!(error = %e, "hyprstream-server failed");
        std::process::exit(1);
    }
}

fn parse_import(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.to_string(), PathBuf::from(dir))),
        _ => Err(format!("'{s}': use NAME=DIR, e.g. all-minilm-l6-v2=models/all-minilm-l6-v2")),
    }
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received; finishing in-flight calls (a second signal stops at once)");
    // A second signal does not wait for in-flight work (an index build may take minutes):
    // what had not committed is not committed (Lance commits are atomic).
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::warn!("second signal: stopping now");
        std::process::exit(130);
    });
    #[cfg(unix)]
    tokio::spawn(async {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
            tracing::warn!("second signal: stopping now");
            std::process::exit(143);
        }
    });
}

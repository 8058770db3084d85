//! The `prism` command line: `prism dev` and `prism serve --config FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use prism::config::{Config, DEFAULT_LISTEN};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "prism",
    version,
    about = "Prism data access gateway: gRPC in front, sandboxed wasm patterns, pluggable backends"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the built-in KeyValue pattern as namespace `default` on an embedded MemStore.
    Dev {
        /// Address to listen on.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
    /// Serve everything a TOML config file describes.
    Serve {
        /// The config file (see README.md for its shape).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides [server] listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Start-up errors name a config field; prefix the file they are in.
    let (config, source) = match cli.command {
        Command::Dev { listen } => (Config::dev(listen), "prism dev".to_string()),
        Command::Serve {
            config: path,
            listen,
        } => match Config::load(&path) {
            Ok(mut c) => {
                if let Some(listen) = listen {
                    c.server.listen = listen;
                }
                (c, path.display().to_string())
            }
            Err(e) => {
                eprintln!("prism: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prism: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match runtime.block_on(prism::server::start(config)) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("prism: {source}: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(server)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prism: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(server: prism::server::RunningServer) -> anyhow::Result<()> {
    // A stable line on stdout so scripts and test fixtures know where to connect.
    println!("prism: serving on {}", server.local_addr());
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    server.shutdown().await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

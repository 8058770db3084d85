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
    /// Ask a running Prism whether it is serving (grpc.health.v1): exit 0
    /// if SERVING, 1 otherwise. For container and orchestrator health checks.
    Health {
        /// The server to ask.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        addr: SocketAddr,
        /// A service to check (a namespace name, or `prism.v1.KeyValue`); empty = the server.
        #[arg(long, default_value = "")]
        service: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
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
    if let Command::Health {
        addr,
        service,
        timeout_ms,
    } = &cli.command
    {
        return health(*addr, service, *timeout_ms);
    }
    // Start-up errors name a config field; prefix the file they are in.
    let (config, source) = match cli.command {
        Command::Health { .. } => return ExitCode::FAILURE,
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
    // Handlers first: a SIGTERM that arrives right after the line below is
    // printed must drain, not kill the process.
    let signal = shutdown_signal();
    // A stable line on stdout so scripts and test fixtures know where to connect.
    println!("prism: serving on {}", server.local_addr());
    signal.await;
    tracing::info!("shutting down: draining in-flight requests");
    server.shutdown().await?;
    Ok(())
}

/// Registers SIGINT/SIGTERM handlers now; the future resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            (term, int) => {
                let e = term
                    .err()
                    .or(int.err())
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; falling back to Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `prism health`: one grpc.health.v1 Check, exit 0 only for SERVING.
fn health(addr: SocketAddr, service: &str, timeout_ms: u64) -> ExitCode {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prism health: {e}");
            return ExitCode::FAILURE;
        }
    };
    let check = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await?;
        anyhow::Ok(reply.into_inner().status)
    };
    let outcome = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), check).await
    });
    match outcome {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN");
            println!("{name}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("prism health: {addr}: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("prism health: {addr}: no answer within {timeout_ms} ms");
            ExitCode::FAILURE
        }
    }
}

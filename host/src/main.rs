//! The `prism` command line: `prism dev`, `prism serve --config FILE`, and
//! the clients of a running server (`prism admin`, `prism health`) and of
//! pattern authors (`prism pattern`).

mod cli;

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
    /// How log lines are written to stderr: `text` (colour only on a
    /// terminal) or `json` (one object per line, for log shippers).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "PRISM_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Administer a running Prism: namespaces, pattern uploads, deploys,
    /// canaries, shadows, promote and rollback.
    Admin(cli::admin::AdminArgs),
    /// Write and check patterns: scaffold a crate, check a component.
    #[command(subcommand)]
    Pattern(cli::pattern::PatternCommand),
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
    // Clients say only what went wrong; servers narrate.
    let level = match cli.command {
        Command::Dev { .. } | Command::Serve { .. } => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Escape codes only where a person reads them: a log file or a
        // pipe gets plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // Start-up errors name a config field; prefix the file they are in.
    let (config, source) = match cli.command {
        Command::Health {
            addr,
            service,
            timeout_ms,
        } => return cli::health::run(addr, &service, timeout_ms),
        Command::Admin(args) => return cli::admin::run(args),
        Command::Pattern(command) => return cli::pattern::run(command),
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

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

/// mimalloc, not glibc's malloc: a published or delivered message makes
/// a dozen short-lived allocations across the gRPC, wasm and broker
/// layers, and glibc's spent a fifth of the process's CPU on them
/// (arena locks, `malloc_consolidate`); see issue 14's note.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Also serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Also export traces over OTLP/gRPC to this collector (overrides [telemetry] otlp_endpoint).
        #[arg(long, value_name = "URL", env = "PRISM_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
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
        /// Overrides [telemetry] metrics_listen (Prometheus metrics at http://ADDR/metrics).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Also export traces over OTLP/gRPC to this collector (overrides [telemetry] otlp_endpoint).
        #[arg(long, value_name = "URL", env = "PRISM_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    // Clients say only what went wrong; servers narrate (set up below, once
    // the config says whether spans are exported too).
    if !matches!(cli.command, Command::Dev { .. } | Command::Serve { .. }) {
        init_logs(log_format, "warn", None);
    }
    // Start-up errors name a config field; prefix the file they are in.
    let (config, source, file) = match cli.command {
        Command::Health {
            addr,
            service,
            timeout_ms,
        } => return cli::health::run(addr, &service, timeout_ms),
        Command::Admin(args) => return cli::admin::run(args),
        Command::Pattern(command) => return cli::pattern::run(command),
        Command::Dev {
            listen,
            metrics_listen,
            otlp_endpoint,
        } => {
            let mut c = Config::dev(listen);
            c.telemetry.metrics_listen = metrics_listen;
            c.telemetry.otlp_endpoint = otlp_endpoint;
            if let Err(e) = c.check_telemetry() {
                eprintln!("prism: {e}");
                return ExitCode::from(2);
            }
            (c, "prism dev".to_string(), None)
        }
        Command::Serve {
            config: path,
            listen,
            metrics_listen,
            otlp_endpoint,
        } => {
            let file = ConfigFile {
                path,
                listen,
                metrics_listen,
                otlp_endpoint,
            };
            match file.load() {
                Ok(c) => (c, file.path.display().to_string(), Some(file)),
                Err(e) => {
                    eprintln!("prism: {e}");
                    return ExitCode::from(2);
                }
            }
        }
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
    // The OTLP exporter's channel lives on the runtime.
    let tracer = {
        let _runtime = runtime.enter();
        match prism::telemetry::traces::init(&config.telemetry) {
            Ok(tracer) => tracer,
            Err(e) => {
                eprintln!("prism: {source}: {e}");
                return ExitCode::from(2);
            }
        }
    };
    init_logs(log_format, "info", tracer);
    let server = match runtime.block_on(prism::server::start(config)) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("prism: {source}: {e}");
            return ExitCode::from(2);
        }
    };
    let served = runtime.block_on(run(server, file));
    // The last spans leave while the runtime still runs the exporter's channel.
    prism::telemetry::traces::shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prism: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines on stderr (`RUST_LOG` overrides `level`) and, with a tracer,
/// the spans of [`prism::telemetry::traces::TARGET`] exported over OTLP.
/// Those spans are not log lines: the log layer does not see them.
fn init_logs(format: LogFormat, level: &str, tracer: Option<opentelemetry_sdk::trace::Tracer>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let span_target = prism::telemetry::traces::TARGET;
    // Static directives only: the filter then decides once per callsite,
    // and the many disabled `trace!`s of h2 and hyper cost nothing per
    // request (a filter function would be asked at every one).
    // h2 warns once per connection it sends GOAWAY for a reset flood: a
    // line an attacker can have written as often as it reconnects. Prism
    // bounds its own refusal lines; RUST_LOG=h2=warn brings those back.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},h2=error")));
    let filter = match format!("{span_target}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs.json().boxed(),
        // Escape codes only where a person reads them: a log file or a
        // pipe gets plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    let spans = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target(span_target, tracing::Level::TRACE))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .init();
}

/// `prism serve`'s config file and the flags that override it (applied
/// again at every reload, so a reload sees what start-up saw).
struct ConfigFile {
    path: PathBuf,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    otlp_endpoint: Option<String>,
}

impl ConfigFile {
    fn load(&self) -> Result<Config, prism::config::ConfigError> {
        let mut c = Config::load(&self.path)?;
        if let Some(listen) = self.listen {
            c.server.listen = listen;
        }
        if self.metrics_listen.is_some() {
            c.telemetry.metrics_listen = self.metrics_listen;
        }
        if self.otlp_endpoint.is_some() {
            c.telemetry.otlp_endpoint = self.otlp_endpoint.clone();
            c.check_telemetry()?;
        }
        Ok(c)
    }
}

async fn run(
    server: prism::server::RunningServer,
    config_file: Option<ConfigFile>,
) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives right after the line below is
    // printed must drain, not kill the process.
    let signal = shutdown_signal();
    let reloads = reload_signal();
    // A stable line on stdout so scripts and test fixtures know where to connect.
    println!("prism: serving on {}", server.local_addr());
    if let Some(metrics) = server.metrics_addr() {
        println!("prism: metrics on http://{metrics}/metrics");
    }
    tokio::pin!(signal);
    let mut reloads = reloads;
    loop {
        tokio::select! {
            _ = &mut signal => break,
            hangup = async { reloads.as_mut()?.recv().await }, if reloads.is_some() => {
                if hangup.is_none() {
                    // The signal stream ended: no more reloads, keep serving.
                    reloads = None;
                    continue;
                }
                // A shutdown signal during a reload wins: the reload is dropped.
                tokio::select! {
                    _ = &mut signal => break,
                    () = reload(&server, config_file.as_ref()) => {}
                }
            }
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    server.shutdown().await?;
    Ok(())
}

/// SIGHUP: read the config file again and apply its namespaces; a file
/// that does not load, or a change only a restart can apply, is refused
/// with the reason and the running config keeps serving.
async fn reload(server: &prism::server::RunningServer, config_file: Option<&ConfigFile>) {
    let Some(file) = config_file else {
        tracing::warn!("SIGHUP ignored: prism dev has no config file to reload");
        return;
    };
    let path = &file.path;
    let config = match file.load() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "config reload refused; still serving the previous config");
            return;
        }
    };
    match server.reload(&config).await {
        Ok(done) => {
            for name in &done.managed_by_admin {
                tracing::warn!(namespace = %name, "config reload: this namespace is managed through Admin (kept in the state dir); its change in the file is not applied");
            }
            tracing::info!(
                file = %path.display(),
                added = ?done.added,
                changed = ?done.changed,
                removed = ?done.removed,
                "config reloaded"
            );
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "config reload refused; still serving the previous config");
        }
    }
}

#[cfg(unix)]
fn reload_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config reloads need a restart");
            None
        }
    }
}

#[cfg(not(unix))]
fn reload_signal() -> Option<NoSignal> {
    None
}

#[cfg(not(unix))]
struct NoSignal;

#[cfg(not(unix))]
impl NoSignal {
    async fn recv(&mut self) -> Option<()> {
        None
    }
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

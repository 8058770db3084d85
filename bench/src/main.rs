//! `just bench`: Prism measured against baselines taken in the same run by
//! the same load generator, written to bench/results.json and printed.
//! Servers under test run as their own processes (`procs.rs`): the real
//! `prism` binary, the tonic echo and the guest-less path; redis-server and
//! nats-server likewise.
//!
//! - `kv`: gRPC KV GET/SET through Prism (MemStore, Redis, PostgreSQL) vs
//!   the echo, the guest-less path, redis-rs direct and tokio-postgres
//!   direct, at concurrency 1 and 64; KV GET with metrics on and with
//!   tracing on (unsampled) vs plain.
//! - `auth`: KV GET with JWT auth on vs off; first-sight vs cached token
//!   verification.
//! - `security`: KV GET on a TLS listener vs plaintext (c1 p50, c64
//!   throughput), and RSS growth per 10 000 refused unauthenticated calls
//!   with made-up namespaces (vs a 1 MiB goal).
//! - `pubsub`: delivered msg/s to 1, 10, 100 subscribers and publish→deliver
//!   p50, through Prism (NATS, embedded broker) vs async-nats direct, and
//!   publish→deliver vs a tonic echo round trip (the gRPC floor); on
//!   Redis Streams (1 and 10 subscribers) vs redis-rs XADD/XREAD direct.
//! - `registry`: enumerate 1 000 identities by filter vs Redis read
//!   directly, multicast to 100 / 1 000 listeners vs async-nats, register
//!   throughput vs KV SET.
//! - `tenancy`: a healthy namespace beside a CPU-bound neighbour, and 1 000
//!   namespaces (start-up, memory).
//! - `admin`: deploy-to-serving time of a new and of an uploaded pattern
//!   version (vs goals), and KV GET p99 while versions swap vs steady.
//! - `inprocess`: the wasm hop, instantiation, namespace start-up, quota check.
//!
//! `--quick` runs every section with short measurements (under a minute),
//! printing the same table; with `--guard bench/guard.json` the run fails
//! when a guarded row is out of its bound (`guard.rs`): the perf regression
//! guard CI runs.

mod admin;
mod auth;
mod echo;
mod fleet;
mod guard;
mod inprocess;
mod kv;
mod load;
mod pg_direct;
mod postgres;
mod procs;
mod pubsub;
mod registry;
mod report;
mod security;
mod streams;
mod tenancy;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::report::Report;

/// The allocator of the `prism` binary: the echo and guest-less baselines
/// this binary serves, and its load generator, use it too, so a ratio
/// measures Prism's own work rather than the allocators' difference.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Prism benchmarks with same-run baselines")]
struct Args {
    /// Seconds of measurement per gRPC scenario.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Short measurements everywhere (a regression guard, under a minute).
    #[arg(long)]
    quick: bool,
    /// Fail when a row named in this file is worse than its bound (see guard.rs).
    #[arg(long)]
    guard: Option<std::path::PathBuf>,
    /// Run only these sections (comma-separated: kv, auth, security, pubsub, registry, tenancy, admin, fleet, inprocess).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Value size in bytes for GET/SET.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results.json"))]
    out: std::path::PathBuf,
    #[command(subcommand)]
    serve: Option<Serve>,
}

/// Baseline servers, run as child processes by the bench itself.
#[derive(Subcommand)]
enum Serve {
    /// A bare tonic KeyValue echo.
    #[command(hide = true)]
    ServeEcho {
        #[arg(long)]
        payload: usize,
    },
    /// Prism's host path without the guest.
    #[command(hide = true)]
    ServeDirect,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.serve {
        Some(Serve::ServeEcho { payload }) => {
            return rt.block_on(echo::serve_echo(vec![0x5Au8; payload]));
        }
        Some(Serve::ServeDirect) => return rt.block_on(echo::serve_direct()),
        None => {}
    }
    let report = rt.block_on(run(&args))?;
    report.write(&args.out)?;
    report.print();
    println!("\nwrote {}", args.out.display());
    if let Some(guard) = &args.guard {
        guard::check(&report, guard, !args.only.is_empty())?;
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let payload = vec![0x5Au8; args.payload];
    let seconds = if args.quick { 0.6 } else { args.seconds };
    let measure = Duration::from_secs_f64(seconds);

    let run = |section: &str| args.only.is_empty() || args.only.iter().any(|s| s == section);

    if run("kv") {
        let servers = kv::start(&payload).await?;
        kv::memstore_rows(&mut report, &servers, &payload, measure).await?;
        kv::redis_rows(&mut report, &servers, &payload, measure).await?;
        postgres::postgres_rows(&mut report, &servers, &payload, measure).await?;
        kv::telemetry_rows(&mut report, &servers, &payload, measure).await?;
        for server in [servers.echo, servers.prism, servers.direct] {
            server.stop().await?;
        }
    }
    if run("auth") {
        auth::rows(&mut report, &payload, measure).await?;
    }
    if run("security") {
        security::rows(&mut report, &payload, measure).await?;
    }
    if run("pubsub") {
        pubsub::rows(&mut report, &payload, args.quick).await?;
        streams::rows(&mut report, &payload, args.quick).await?;
    }
    if run("registry") {
        registry::rows(&mut report, args.quick).await?;
    }
    if run("tenancy") {
        let measure = measure.max(Duration::from_secs(1));
        tenancy::noisy_neighbour_rows(&mut report, &payload, measure).await?;
        tenancy::scale_rows(&mut report).await?;
    }
    if run("admin") {
        admin::rows(&mut report, &payload, measure.max(Duration::from_secs(1))).await?;
    }
    if run("fleet") {
        fleet::rows(&mut report, args.quick).await?;
    }
    if run("inprocess") {
        inprocess::rows(&mut report, &payload).await?;
    }
    Ok(report)
}

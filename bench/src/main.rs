//! `just bench`: Prism measured against baselines taken in the same run by
//! the same load generator, written to bench/results.json and printed.
//!
//! - gRPC KV GET/SET through Prism (MemStore) vs a bare tonic echo server
//!   with the same payload, at concurrency 1 and 64.
//! - The wasm hop: the same GET in-process through the pattern vs straight
//!   to the backend (a bench-only path).
//! - Instantiation: one pattern instance, and a whole new namespace.
//! - PubSub: delivered msg/s to 1, 10, 100 subscribers and publish→deliver
//!   p50, through Prism (NATS, embedded broker) vs async-nats direct.

mod echo;
mod load;
mod pubsub;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use prism::backend::Backends;
use prism::config::{Config, DEFAULT_NAMESPACE};
use prism::namespace::Namespace;
use prism::pb;
use prism::runtime::Runtime;
use prism_acceptance::servers::RedisServer;

use crate::load::{Op, Target, run_interleaved};
use crate::report::{Report, Row};

#[derive(Parser)]
#[command(about = "Prism benchmarks with same-run baselines")]
struct Args {
    /// Seconds of measurement per gRPC scenario.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Value size in bytes for GET/SET.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results.json"))]
    out: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&args))?;
    report.write(&args.out)?;
    report.print();
    println!("\nwrote {}", args.out.display());
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let payload = vec![0x5Au8; args.payload];
    let measure = Duration::from_secs_f64(args.seconds);

    let echo = echo::start(payload.clone()).await?;
    let prism = prism::server::start(Config::dev("127.0.0.1:0".parse()?)).await?;
    let prism_channel = load::connect(prism.local_addr()).await?;
    let echo_channel = load::connect(echo).await?;
    let direct = echo::start_direct(prism.namespaces().clone()).await?;
    let direct_channel = load::connect(direct).await?;
    pb::key_value_client::KeyValueClient::new(prism_channel.clone())
        .set(pb::SetRequest {
            key: load::BENCH_KEY.into(),
            value: payload.clone(),
            ttl_ms: None,
        })
        .await?;

    for op in [Op::Get, Op::Set] {
        for concurrency in [1usize, 64] {
            let targets = [
                Target::Grpc(echo_channel.clone()),
                Target::Grpc(prism_channel.clone()),
                Target::Grpc(direct_channel.clone()),
            ];
            let results = run_interleaved(&targets, op, concurrency, measure, &payload).await?;
            let [base, ours, no_guest] = <[_; 3]>::try_from(results)
                .map_err(|_| anyhow::anyhow!("three targets, three results"))?;
            let tag = format!("{}_c{concurrency}", op.name());
            report.push(Row::new(
                format!("prism_{tag}_throughput"),
                ours.throughput,
                "req/s",
                format!("tonic_echo_{tag}_throughput"),
                base.throughput,
            ));
            report.push(Row::new(
                format!("prism_{tag}_p50"),
                ours.p50_us,
                "us",
                format!("tonic_echo_{tag}_p50"),
                base.p50_us,
            ));
            report.push(Row::new(
                format!("prism_{tag}_p99"),
                ours.p99_us,
                "us",
                format!("tonic_echo_{tag}_p99"),
                base.p99_us,
            ));
            // The bench-only path: same host, no guest; the gap is the wasm hop over gRPC.
            report.push(Row::new(
                format!("prism_{tag}_p50"),
                ours.p50_us,
                "us",
                format!("prism_without_guest_{tag}_p50"),
                no_guest.p50_us,
            ));
        }
    }

    redis_rows(&mut report, &payload, measure).await?;
    pubsub::rows(&mut report, &payload).await?;

    // The wasm hop, in-process: pattern + capability + MemStore vs MemStore alone.
    let namespace = prism.namespaces().get(DEFAULT_NAMESPACE)?.clone();
    let kv = namespace.keyvalue()?.clone();
    let slot = kv.pool().slots().kv.clone();
    let scoped = slot
        .scoped(load::BENCH_KEY)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let iterations = 100_000;
    let with_guest = time_per_op(iterations, || {
        let kv = kv.clone();
        async move {
            kv.get(load::BENCH_KEY.to_string())
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    let direct = time_per_op(iterations, || {
        let backend = slot.backend().clone();
        let key = scoped.clone();
        async move {
            backend
                .get(&key)
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    report.push(Row::new(
        "kv_get_in_process_through_pattern",
        with_guest,
        "us",
        "kv_get_in_process_backend_only",
        direct,
    ));
    report.push(Row::new(
        "wasm_hop_per_request",
        with_guest - direct,
        "us",
        "target_wasm_hop",
        5.0,
    ));

    // Instantiation: one more instance of the running namespace's pattern.
    let pool = kv.pool().clone();
    let instantiate = time_per_op(200, || {
        let pool = pool.clone();
        async move {
            pool.instantiate()
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    report.push(Row::new(
        "pattern_instantiate",
        instantiate,
        "us",
        "pooled_kv_get_in_process",
        with_guest,
    ));

    // A whole new namespace (component cached, pool built, first instance configured).
    let config = Config::dev("127.0.0.1:0".parse()?);
    let runtime = Runtime::new(&config.runtime, 64 << 20)?;
    let backends = Backends::build(&config.backends)?;
    let ns_config = config
        .namespaces
        .get(DEFAULT_NAMESPACE)
        .context("dev config has no default namespace")?
        .clone();
    Namespace::start("warmup", &ns_config, &config, &runtime, &backends).await?;
    let rounds = 20;
    let started = Instant::now();
    for i in 0..rounds {
        let ns = Namespace::start(
            &format!("bench-{i}"),
            &ns_config,
            &config,
            &runtime,
            &backends,
        )
        .await?;
        drop(Arc::new(ns));
    }
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    report.push(Row::new(
        "new_namespace_ready",
        ready_ms,
        "ms",
        "target_new_namespace_ready",
        10.0,
    ));

    prism.shutdown().await?;
    Ok(report)
}

/// Mean microseconds per call of `f`, run sequentially `n` times after a warm-up.
async fn time_per_op<F, Fut>(n: u32, mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..n / 10 {
        f().await?;
    }
    let started = Instant::now();
    for _ in 0..n {
        f().await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

/// KV through Prism on Redis vs redis-rs straight to the same redis-server.
async fn redis_rows(report: &mut Report, payload: &[u8], measure: Duration) -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let toml = format!(
        "[backends.cache]\ntype = \"redis\"\nurl = \"{}\"\n[namespaces.default]\npattern = \"keyvalue\"\nslots = {{ kv = \"cache\" }}\n",
        redis.url()
    );
    let mut config = Config::parse(&toml, "bench.toml".as_ref(), ".".into())?;
    config.server.listen = "127.0.0.1:0".parse()?;
    let prism = prism::server::start(config).await?;
    let channel = load::connect(prism.local_addr()).await?;
    pb::key_value_client::KeyValueClient::new(channel.clone())
        .set(pb::SetRequest {
            key: load::BENCH_KEY.into(),
            value: payload.to_vec(),
            ttl_ms: None,
        })
        .await?;
    let stored_key = format!("{DEFAULT_NAMESPACE}/{}", load::BENCH_KEY);
    let direct = Target::Redis(redis.connect().await?, stored_key);
    for op in [Op::Get, Op::Set] {
        for concurrency in [1usize, 64] {
            let targets = [direct.clone(), Target::Grpc(channel.clone())];
            let results = run_interleaved(&targets, op, concurrency, measure, payload).await?;
            let [base, ours] = <[_; 2]>::try_from(results)
                .map_err(|_| anyhow::anyhow!("two targets, two results"))?;
            let tag = format!("{}_c{concurrency}", op.name());
            report.push(Row::new(
                format!("prism_redis_{tag}_throughput"),
                ours.throughput,
                "req/s",
                format!("redis_rs_direct_{tag}_throughput"),
                base.throughput,
            ));
            report.push(Row::new(
                format!("prism_redis_{tag}_p50"),
                ours.p50_us,
                "us",
                format!("redis_rs_direct_{tag}_p50"),
                base.p50_us,
            ));
            report.push(Row::new(
                format!("prism_redis_{tag}_added_p50"),
                ours.p50_us - base.p50_us,
                "us",
                "target_redis_added_p50",
                50.0,
            ));
        }
    }
    prism.shutdown().await?;
    Ok(())
}

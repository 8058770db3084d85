//! KeyValue over gRPC: Prism (its own process) on MemStore against a bare
//! tonic echo and against Prism's host path without the guest (each its own
//! process), and Prism on Redis against redis-rs straight to the same
//! server, the echo and Prism on MemStore — interleaved within each group.

use std::time::Duration;

use prism::pb;
use prism_acceptance::servers::RedisServer;

use crate::load::{self, Op, Target, run_interleaved};
use crate::procs::Server;
use crate::report::{Report, Row};

pub struct Servers {
    pub echo: Server,
    pub prism: Server,
    pub direct: Server,
}

const DEV_CONFIG: &str = "[backends.mem]\ntype = \"memstore\"\n[namespaces.default]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n";

pub async fn start(payload: &[u8]) -> anyhow::Result<Servers> {
    let len = payload.len().to_string();
    let servers = Servers {
        echo: Server::baseline(&["serve-echo", "--payload", &len]).await?,
        prism: Server::prism(DEV_CONFIG).await?,
        direct: Server::baseline(&["serve-direct"]).await?,
    };
    for addr in [servers.prism.addr, servers.direct.addr] {
        seed(&load::connect(addr).await?, payload).await?;
    }
    Ok(servers)
}

async fn seed(channel: &tonic::transport::Channel, payload: &[u8]) -> anyhow::Result<()> {
    pb::key_value_client::KeyValueClient::new(channel.clone())
        .set(pb::SetRequest {
            key: load::BENCH_KEY.into(),
            value: payload.to_vec(),
            ttl_ms: None,
        })
        .await?;
    Ok(())
}

pub async fn memstore_rows(
    report: &mut Report,
    servers: &Servers,
    payload: &[u8],
    measure: Duration,
) -> anyhow::Result<()> {
    let echo = load::connect(servers.echo.addr).await?;
    let prism = load::connect(servers.prism.addr).await?;
    let direct = load::connect(servers.direct.addr).await?;
    for op in [Op::Get, Op::Set] {
        for concurrency in [1usize, 64] {
            let targets = [
                Target::Grpc(echo.clone()),
                Target::Grpc(prism.clone()),
                Target::Grpc(direct.clone()),
            ];
            let results = run_interleaved(&targets, op, concurrency, measure, payload).await?;
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
                format!("prism_{tag}_p50_vs_no_guest"),
                ours.p50_us,
                "us",
                format!("prism_without_guest_{tag}_p50"),
                no_guest.p50_us,
            ));
        }
    }
    Ok(())
}

/// Prism on Redis vs redis-rs direct to the same server; the echo and Prism
/// on MemStore run in the same interleaved group so the Redis path can be
/// read against the gRPC ceiling and against Prism's own MemStore path.
pub async fn redis_rows(
    report: &mut Report,
    servers: &Servers,
    payload: &[u8],
    measure: Duration,
) -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let toml = format!(
        "[backends.cache]\ntype = \"redis\"\nurl = \"{}\"\n[namespaces.default]\npattern = \"keyvalue\"\nslots = {{ kv = \"cache\" }}\n",
        redis.url()
    );
    let on_redis = Server::prism(&toml).await?;
    let channel = load::connect(on_redis.addr).await?;
    seed(&channel, payload).await?;
    let stored_key = format!("default/{}", load::BENCH_KEY);
    let direct = Target::Redis(redis.connect().await?, stored_key);
    let echo = load::connect(servers.echo.addr).await?;
    let memstore = load::connect(servers.prism.addr).await?;
    for op in [Op::Get, Op::Set] {
        for concurrency in [1usize, 64] {
            let targets = [
                direct.clone(),
                Target::Grpc(channel.clone()),
                Target::Grpc(memstore.clone()),
                Target::Grpc(echo.clone()),
            ];
            let results = run_interleaved(&targets, op, concurrency, measure, payload).await?;
            let [base, ours, mem, echo] = <[_; 4]>::try_from(results)
                .map_err(|_| anyhow::anyhow!("four targets, four results"))?;
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
                format!("prism_redis_{tag}_vs_memstore_throughput"),
                ours.throughput,
                "req/s",
                format!("prism_memstore_{tag}_throughput"),
                mem.throughput,
            ));
            // A difference of p50s means something only without queueing (c=1).
            if concurrency == 1 {
                report.push(Row::target(
                    format!("prism_redis_{tag}_added_p50"),
                    ours.p50_us - base.p50_us,
                    "us",
                    "target_redis_added_p50",
                    50.0,
                ));
                report.push(Row::target(
                    format!("prism_redis_{tag}_added_over_echo_and_redis_p50"),
                    ours.p50_us - (echo.p50_us + base.p50_us),
                    "us",
                    "target_redis_added_over_echo_and_redis_p50",
                    15.0,
                ));
            }
        }
    }
    on_redis.stop().await?;
    Ok(())
}

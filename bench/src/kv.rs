//! KeyValue over gRPC: Prism (its own process) on MemStore against a bare
//! tonic echo and against Prism's host path without the guest (each its own
//! process), and Prism on Redis against redis-rs straight to the same
//! server, the echo and Prism on MemStore — interleaved within each group.
//! Every gRPC target, baselines included, is loaded through the Rust client
//! (`prism-client`), so client-side cost is the same on both sides of a row.

use std::time::Duration;

use anyhow::Context;
use prism_acceptance::servers::RedisServer;
use prism_client::KeyValue;

use crate::load::{self, Op, Target, drive, run_interleaved};
use crate::procs::{Server, cpu_seconds};
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
        seed(&key_value(addr).await?, payload).await?;
    }
    Ok(servers)
}

/// Every gRPC target of these rows, the baselines included, is loaded
/// through the same Rust client, each on a connection of its own.
pub async fn key_value(addr: std::net::SocketAddr) -> anyhow::Result<KeyValue> {
    Ok(load::client(addr).await?.key_value("default"))
}

pub async fn seed(kv: &KeyValue, payload: &[u8]) -> anyhow::Result<()> {
    kv.set(load::BENCH_KEY, payload.to_vec()).await?;
    Ok(())
}

pub async fn memstore_rows(
    report: &mut Report,
    servers: &Servers,
    payload: &[u8],
    measure: Duration,
) -> anyhow::Result<()> {
    let echo = key_value(servers.echo.addr).await?;
    let prism = key_value(servers.prism.addr).await?;
    let direct = key_value(servers.direct.addr).await?;
    for op in [Op::Get, Op::Set] {
        for concurrency in [1usize, 64] {
            let targets = [
                Target::Client(echo.clone()),
                Target::Client(prism.clone()),
                Target::Client(direct.clone()),
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
            // How far one round's Prism/echo ratio strays from another's in
            // this very group: the run's own measure of its noise, so a
            // throughput ratio is read against it (ratio = worst / best).
            if concurrency > 1
                && let Some((worst, best)) = load::round_ratio_range(&ours, &base)
            {
                report.push(Row::new(
                    format!("prism_{tag}_worst_round_vs_echo"),
                    worst,
                    "x",
                    format!("prism_{tag}_best_round_vs_echo"),
                    best,
                ));
            }
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
    let on_redis_kv = key_value(on_redis.addr).await?;
    seed(&on_redis_kv, payload).await?;
    let stored_key = format!("default/{}", load::BENCH_KEY);
    let direct = Target::Redis(redis.connect().await?, stored_key);
    let echo = key_value(servers.echo.addr).await?;
    let memstore = key_value(servers.prism.addr).await?;
    for op in [Op::Get, Op::Set] {
        for concurrency in [1usize, 64] {
            let targets = [
                direct.clone(),
                Target::Client(on_redis_kv.clone()),
                Target::Client(memstore.clone()),
                Target::Client(echo.clone()),
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
    cpu_rows(
        report,
        &redis,
        (&on_redis, &on_redis_kv),
        (&servers.prism, &memstore),
        payload,
        measure,
    )
    .await?;
    on_redis.stop().await?;
    Ok(())
}

/// Where the Redis path's CPU goes at c=64: CPU time per GET of Prism on
/// Redis, of redis-server serving it, and of Prism on MemStore, from /proc
/// (user + system, every thread) over three interleaved slices of each. On
/// a 2-core box that is CPU-bound at c=64, throughput follows CPU per
/// request, so these rows say in which process the Redis-vs-MemStore gap
/// is spent.
async fn cpu_rows(
    report: &mut Report,
    redis: &RedisServer,
    on_redis: (&Server, &KeyValue),
    on_mem: (&Server, &KeyValue),
    payload: &[u8],
    measure: Duration,
) -> anyhow::Result<()> {
    let redis_pid = redis.pid().context("redis-server has exited")?;
    // (Prism's CPU, redis-server's CPU) per request, in µs.
    let mut redis_path = (0.0, 0.0);
    let mut mem_path = 0.0;
    // One slice of GETs at c=64; the requests it made, counted over all three.
    let slice = |kv: &KeyValue| {
        let target = Target::Client(kv.clone());
        async move {
            let hist = drive(target, Op::Get, 64, measure / 3, payload).await?;
            anyhow::Ok(hist.len().max(1) as f64 * 3.0)
        }
    };
    for _ in 0..3 {
        let (prism_before, redis_before) = (on_redis.0.cpu_seconds()?, cpu_seconds(redis_pid)?);
        let requests = slice(on_redis.1).await?;
        redis_path.0 += (on_redis.0.cpu_seconds()? - prism_before) / requests * 1e6;
        redis_path.1 += (cpu_seconds(redis_pid)? - redis_before) / requests * 1e6;
        let before = on_mem.0.cpu_seconds()?;
        let requests = slice(on_mem.1).await?;
        mem_path += (on_mem.0.cpu_seconds()? - before) / requests * 1e6;
    }
    report.push(Row::new(
        "prism_redis_kv_get_c64_cpu_per_request",
        redis_path.0,
        "us",
        "prism_memstore_kv_get_c64_cpu_per_request",
        mem_path,
    ));
    report.push(Row::new(
        "redis_server_cpu_per_prism_kv_get_c64",
        redis_path.1,
        "us",
        "prism_memstore_kv_get_c64_cpu_per_request",
        mem_path,
    ));
    Ok(())
}

/// What observability costs on the data path: Prism on MemStore as it runs
/// by default, against the same config with a Prometheus listener, and with
/// OTLP tracing on at sample ratio 0 (every span is made and dropped
/// unsampled; nothing is exported, so no collector's speed is measured).
/// Interleaved, each its own process.
pub async fn telemetry_rows(
    report: &mut Report,
    servers: &Servers,
    payload: &[u8],
    measure: Duration,
) -> anyhow::Result<()> {
    let with_metrics = Server::prism(&format!(
        "[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n{DEV_CONFIG}"
    ))
    .await?;
    // Port 9 (discard): nothing is sampled, so nothing is ever sent there.
    let with_traces = Server::prism(&format!(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:9\"\ntrace_sample_ratio = 0.0\n{DEV_CONFIG}"
    ))
    .await?;
    let plain = key_value(servers.prism.addr).await?;
    let metrics = key_value(with_metrics.addr).await?;
    let traces = key_value(with_traces.addr).await?;
    for kv in [&metrics, &traces] {
        seed(kv, payload).await?;
    }
    for concurrency in [1usize, 64] {
        let targets = [
            Target::Client(plain.clone()),
            Target::Client(metrics.clone()),
            Target::Client(traces.clone()),
        ];
        let results = run_interleaved(&targets, Op::Get, concurrency, measure, payload).await?;
        let [off, on, traced] = <[_; 3]>::try_from(results)
            .map_err(|_| anyhow::anyhow!("three targets, three results"))?;
        let tag = format!("{}_c{concurrency}", Op::Get.name());
        let (figure, unit, pick): (&str, &str, fn(&load::LoadResult) -> f64) = if concurrency == 1 {
            ("p50", "us", |o| o.p50_us)
        } else {
            ("throughput", "req/s", |o| o.throughput)
        };
        report.push(Row::new(
            format!("prism_{tag}_metrics_on_{figure}"),
            pick(&on),
            unit,
            format!("prism_{tag}_metrics_off_{figure}"),
            pick(&off),
        ));
        report.push(Row::new(
            format!("prism_{tag}_traces_unsampled_{figure}"),
            pick(&traced),
            unit,
            format!("prism_{tag}_traces_off_{figure}"),
            pick(&off),
        ));
    }
    with_metrics.stop().await?;
    with_traces.stop().await?;
    Ok(())
}

//! Tenancy figures: a healthy namespace's GETs while a neighbour keeps 8
//! CPU-bound calls in flight vs the same with the neighbour idle (rounds
//! interleaved on one Prism process), and start-up time and resident memory
//! of 1 000 namespaces vs one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use prism::pb;
use prism_acceptance::guest_component;
use tonic::Request;
use tonic::transport::Channel;

use crate::load::{self, LoadResult, Op, Target};
use crate::procs::Server;
use crate::report::{Report, Row};

/// CPU-bound calls the noisy neighbour keeps in flight.
const SPINNERS: usize = 8;
/// The neighbour's call deadline: each spinning call lasts this long.
const NOISY_DEADLINE_MS: u64 = 1000;
/// Concurrency of the healthy namespace's GETs.
const HEALTHY_CONCURRENCY: usize = 16;

pub async fn noisy_neighbour_rows(
    report: &mut Report,
    payload: &[u8],
    measure: Duration,
) -> anyhow::Result<()> {
    let toml = format!(
        "[backends.mem]\ntype = \"memstore\"\n\
         [namespaces.default]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n\
         [namespaces.noisy]\npattern = {:?}\nslots = {{ kv = \"mem\" }}\n\
         limits = {{ call_deadline_ms = {NOISY_DEADLINE_MS}, max_instances = 16 }}\n",
        guest_component("test_faulty").display().to_string()
    );
    let server = Server::prism(&toml).await?;
    let channel = load::connect(server.addr).await?;
    pb::key_value_client::KeyValueClient::new(channel.clone())
        .set(pb::SetRequest {
            key: load::BENCH_KEY.into(),
            value: payload.to_vec(),
            ttl_ms: None,
        })
        .await?;
    let healthy = Target::Grpc(channel.clone());
    // Warm-up, both ways.
    load::drive(
        healthy.clone(),
        Op::Get,
        HEALTHY_CONCURRENCY,
        Duration::from_millis(300),
        payload,
    )
    .await?;

    const ROUNDS: u32 = 3;
    let slice = measure / ROUNDS;
    let mut quiet = (new_histogram()?, 0.0);
    let mut noisy = (new_histogram()?, 0.0);
    let spun = Arc::new(AtomicU64::new(0));
    for _ in 0..ROUNDS {
        let started = std::time::Instant::now();
        quiet.0.add(
            load::drive(
                healthy.clone(),
                Op::Get,
                HEALTHY_CONCURRENCY,
                slice,
                payload,
            )
            .await?,
        )?;
        quiet.1 += started.elapsed().as_secs_f64();

        let stop = Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = (0..SPINNERS)
            .map(|_| tokio::spawn(spin(channel.clone(), stop.clone(), spun.clone())))
            .collect();
        // Let every spinner get into its call before measuring.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        noisy.0.add(
            load::drive(
                healthy.clone(),
                Op::Get,
                HEALTHY_CONCURRENCY,
                slice,
                payload,
            )
            .await?,
        )?;
        noisy.1 += started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        // Spinning calls in flight run to their deadline: wait them out so
        // the next quiet slice is quiet.
        for s in spinners {
            s.await?;
        }
    }
    anyhow::ensure!(
        spun.load(Ordering::Relaxed) >= SPINNERS as u64,
        "the noisy neighbour's calls did not run"
    );
    let quiet = result(&quiet);
    let noisy = result(&noisy);
    report.push(Row::new(
        "prism_kv_get_noisy_neighbour_throughput",
        noisy.throughput,
        "req/s",
        "prism_kv_get_quiet_neighbour_throughput",
        quiet.throughput,
    ));
    report.push(Row::new(
        "prism_kv_get_noisy_neighbour_p99",
        noisy.p99_us,
        "us",
        "prism_kv_get_quiet_neighbour_p99",
        quiet.p99_us,
    ));
    report.push(Row::target(
        "prism_kv_get_noisy_neighbour_p99_ms",
        noisy.p99_us / 1000.0,
        "ms",
        "target_noisy_neighbour_p99",
        50.0,
    ));
    server.stop().await?;
    Ok(())
}

/// One spinner: keeps one CPU-bound call in flight in the noisy namespace.
async fn spin(channel: Channel, stop: Arc<AtomicBool>, spun: Arc<AtomicU64>) {
    let mut client = pb::key_value_client::KeyValueClient::new(channel);
    while !stop.load(Ordering::Relaxed) {
        let mut request = Request::new(pb::GetRequest {
            key: "fault:loop".into(),
        });
        request.metadata_mut().insert(
            prism::namespace::NAMESPACE_METADATA,
            tonic::metadata::MetadataValue::from_static("noisy"),
        );
        // Fails at its deadline (INTERNAL) by design.
        let _ = client.get(request).await;
        spun.fetch_add(1, Ordering::Relaxed);
    }
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?)
}

fn result((hist, secs): &(Histogram<u64>, f64)) -> LoadResult {
    LoadResult {
        throughput: hist.len() as f64 / secs,
        p50_us: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
        rounds: Vec::new(),
    }
}

/// A config with `n` KeyValue namespaces on one MemStore.
fn many_namespaces(n: usize) -> String {
    let mut toml = String::from("[backends.mem]\ntype = \"memstore\"\n");
    for i in 0..n {
        toml.push_str(&format!(
            "[namespaces.t{i:04}]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n"
        ));
    }
    toml
}

pub async fn scale_rows(report: &mut Report) -> anyhow::Result<()> {
    const N: usize = 1000;
    // Once so the component cache is warm for both (a restart is warm too).
    Server::prism(&many_namespaces(1)).await?.stop().await?;
    let one = Server::prism(&many_namespaces(1)).await?;
    let many = Server::prism(&many_namespaces(N)).await?;
    // Every namespace answers.
    let channel = load::connect(many.addr).await?;
    for i in [0, N / 2, N - 1] {
        let mut request = Request::new(pb::ExistsRequest { key: "k".into() });
        request.metadata_mut().insert(
            prism::namespace::NAMESPACE_METADATA,
            format!("t{i:04}").parse()?,
        );
        pb::key_value_client::KeyValueClient::new(channel.clone())
            .exists(request)
            .await?;
    }
    let (rss_one, rss_many) = (one.rss_kib()?, many.rss_kib()?);
    report.push(Row::new(
        "startup_1000_namespaces",
        many.started_in.as_secs_f64() * 1000.0,
        "ms",
        "startup_1_namespace",
        one.started_in.as_secs_f64() * 1000.0,
    ));
    report.push(Row::target(
        "startup_1000_namespaces_vs_target",
        many.started_in.as_secs_f64() * 1000.0,
        "ms",
        "target_startup_1000_namespaces",
        2000.0,
    ));
    report.push(Row::target(
        "rss_per_idle_namespace",
        rss_many.saturating_sub(rss_one) as f64 / (N - 1) as f64,
        "KiB",
        "target_rss_per_idle_namespace",
        256.0,
    ));
    one.stop().await?;
    many.stop().await?;
    Ok(())
}

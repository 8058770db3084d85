//! Pattern lifecycle figures, on the real `prism` binary over the Admin API:
//! deploy-to-serving time of a new version (upload + deploy + first call
//! answered, the component never compiled before) and of an uploaded one
//! (deploy + first call), against their goals; and the data path's p99
//! while versions are swapped under it vs the same load with no swaps
//! (rounds interleaved on one process).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use prism::pb;
use prism::pb::admin_client::AdminClient;
use prism_acceptance::guest_component;
use tonic::transport::Channel;

use crate::load::{self, Op, Target};
use crate::procs::Server;
use crate::report::{Report, Row};

/// Concurrency of the GETs measured during swaps.
const CONCURRENCY: usize = 16;
/// Pause between two deploys while the swap slice runs.
const SWAP_EVERY: Duration = Duration::from_millis(20);

/// The built-in KeyValue component with a custom section naming `n`: the
/// same code under a new digest, so Prism has never compiled it (a typical
/// pattern, as a new build of it would be).
pub(crate) fn variant(base: &[u8], n: u32) -> Vec<u8> {
    fn leb(mut v: u32, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"prism-bench-variant";
    let payload = n.to_le_bytes();
    let mut body = Vec::new();
    leb(name.len() as u32, &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(&payload);
    let mut out = base.to_vec();
    out.push(0); // custom section
    leb(body.len() as u32, &mut out);
    out.extend_from_slice(&body);
    out
}

pub(crate) async fn upload(
    admin: &mut AdminClient<Channel>,
    bytes: Vec<u8>,
) -> anyhow::Result<String> {
    let chunks: Vec<pb::UploadPatternChunk> = bytes
        .chunks(256 << 10)
        .map(|data| pb::UploadPatternChunk {
            label: "bench variant".into(),
            data: data.to_vec(),
        })
        .collect();
    Ok(admin
        .upload_pattern(tokio_stream::iter(chunks))
        .await?
        .into_inner()
        .digest)
}

async fn deploy(admin: &mut AdminClient<Channel>, digest: &str) -> anyhow::Result<()> {
    admin
        .deploy_pattern(pb::DeployPatternRequest {
            namespace: "default".into(),
            pattern: digest.into(),
            canary_percent: 0,
            shadow: false,
        })
        .await?;
    Ok(())
}

async fn first_get(channel: &Channel) -> anyhow::Result<()> {
    pb::key_value_client::KeyValueClient::new(channel.clone())
        .get(pb::GetRequest {
            key: load::BENCH_KEY.into(),
        })
        .await?;
    Ok(())
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?)
}

pub async fn rows(report: &mut Report, payload: &[u8], measure: Duration) -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let toml = format!(
        "[runtime]\ncache_dir = {:?}\n\
         [backends.mem]\ntype = \"memstore\"\n\
         [namespaces.default]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n\
         [admin]\nallow_unauthenticated = true\nstate_dir = {:?}\n",
        cache.path().display().to_string(),
        state.path().display().to_string()
    );
    let server = Server::prism(&toml).await?;
    let channel = load::connect(server.addr).await?;
    let mut admin = AdminClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    pb::key_value_client::KeyValueClient::new(channel.clone())
        .set(pb::SetRequest {
            key: load::BENCH_KEY.into(),
            value: payload.to_vec(),
            ttl_ms: None,
        })
        .await?;
    let path = guest_component("keyvalue");
    let base = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;

    // A new version: its bytes reach Prism, are checked, compiled, started,
    // configured and swapped in, and answer a call.
    const COLD_ROUNDS: u32 = 5;
    let mut cold_ms = Vec::new();
    let mut digests = Vec::new();
    for n in 0..COLD_ROUNDS {
        let bytes = variant(&base, n);
        let started = Instant::now();
        let digest = upload(&mut admin, bytes).await?;
        deploy(&mut admin, &digest).await?;
        first_get(&channel).await?;
        cold_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        digests.push(digest);
    }
    // An uploaded (compiled) version: deploy and first call only.
    const WARM_ROUNDS: usize = 20;
    let mut warm_ms = Vec::new();
    for i in 0..WARM_ROUNDS {
        let started = Instant::now();
        deploy(&mut admin, &digests[i % digests.len()]).await?;
        first_get(&channel).await?;
        warm_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report.push(Row::target(
        "admin_deploy_to_serving_uncached_ms",
        median(&mut cold_ms),
        "ms",
        "target_deploy_uncached_ms",
        100.0,
    ));
    report.push(Row::target(
        "admin_deploy_to_serving_cached_ms",
        median(&mut warm_ms),
        "ms",
        "target_deploy_cached_ms",
        5.0,
    ));

    // The data path during swaps vs steady, interleaved.
    let target = Target::Grpc(channel.clone());
    load::drive(
        target.clone(),
        Op::Get,
        CONCURRENCY,
        Duration::from_millis(300),
        payload,
    )
    .await?;
    const ROUNDS: u32 = 3;
    let slice = measure / ROUNDS;
    let mut steady = new_histogram()?;
    let mut swapping = new_histogram()?;
    let swaps = Arc::new(AtomicU64::new(0));
    for _ in 0..ROUNDS {
        steady.add(load::drive(target.clone(), Op::Get, CONCURRENCY, slice, payload).await?)?;

        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (mut admin, digests, stop, swaps) =
                (admin.clone(), digests.clone(), stop.clone(), swaps.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    deploy(&mut admin, &digests[i % digests.len()]).await?;
                    swaps.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    tokio::time::sleep(SWAP_EVERY).await;
                }
                anyhow::Ok(())
            })
        };
        // Every GET must succeed: `drive` fails the bench on any error.
        swapping.add(load::drive(target.clone(), Op::Get, CONCURRENCY, slice, payload).await?)?;
        stop.store(true, Ordering::Relaxed);
        swapper.await??;
    }
    let swaps = swaps.load(Ordering::Relaxed);
    ensure!(
        swaps >= 3,
        "only {swaps} deploys ran during the swap slices"
    );
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    report.push(Row::new(
        "prism_kv_get_p99_during_swaps",
        p99(&swapping),
        "us",
        "prism_kv_get_p99_steady",
        p99(&steady),
    ));
    let secs = (slice * ROUNDS).as_secs_f64();
    report.push(Row::new(
        "prism_kv_get_throughput_during_swaps",
        swapping.len() as f64 / secs,
        "req/s",
        "prism_kv_get_throughput_steady",
        steady.len() as f64 / secs,
    ));
    println!("admin: {swaps} deploys during the swap slices, every GET answered");
    server.stop().await
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

//! The one load generator every scenario uses: N concurrent loops over one
//! connection (an HTTP/2 channel, or a multiplexed Redis connection; for
//! PostgreSQL, a fixed set of connections taken in turn) for a fixed time,
//! latencies in an HDR histogram.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prism::pb;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prism::pb::key_value_client::KeyValueClient;
use prism::pb::registry_client::RegistryClient;
use tonic::transport::Channel;

use crate::pg_direct::Direct;

pub const BENCH_KEY: &str = "bench:key";

#[derive(Clone, Copy)]
pub enum Op {
    Get,
    Set,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "kv_get",
            Op::Set => "kv_set",
        }
    }
}

pub struct LoadResult {
    pub throughput: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Throughput of each interleaved round (empty where not interleaved),
    /// so a row can show how far one round strays from another.
    pub rounds: Vec<f64>,
}

/// The length of one interleaved slice: rounds of 333 ms let a ratio swing
/// by ±7 % between back-to-back groups (stop 25), so a measurement is cut
/// into more, shorter slices — each still thousands of requests at c64.
const SLICE: Duration = Duration::from_millis(250);

/// How many interleaved rounds `measure` is cut into: at least 3 (a quick
/// run's 0.6 s), at most 12 (a full run's 3 s in slices of 250 ms).
pub fn rounds_for(measure: Duration) -> u32 {
    ((measure.as_secs_f64() / SLICE.as_secs_f64()).round() as u32).clamp(3, 12)
}

/// The lowest and highest per-round ratio of `ours` to `base` (rounds taken
/// in the same turn of the interleaving), or None without rounds.
pub fn round_ratio_range(ours: &LoadResult, base: &LoadResult) -> Option<(f64, f64)> {
    let ratios: Vec<f64> = ours
        .rounds
        .iter()
        .zip(&base.rounds)
        .filter(|(_, b)| **b > 0.0)
        .map(|(o, b)| o / b)
        .collect();
    let min = ratios.iter().copied().reduce(f64::min)?;
    let max = ratios.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// A Rust client (`prism-client`) on its own connection, set up to add
/// nothing a raw stub does not do: no `grpc-timeout` (and so no timer per
/// call) and no retries.
pub async fn client(addr: SocketAddr) -> anyhow::Result<prism_client::Client> {
    Ok(prism_client::Client::builder()
        .endpoint(format!("http://{addr}"))
        .request_timeout(None)
        .max_attempts(1)
        .connect()
        .await?)
}

/// Loads each target in turn, in interleaved rounds (see [`rounds_for`]), so
/// drift on a shared machine (frequency, neighbours) hits baseline and
/// subject alike.
pub async fn run_interleaved(
    targets: &[Target],
    op: Op,
    concurrency: usize,
    measure: Duration,
    payload: &[u8],
) -> anyhow::Result<Vec<LoadResult>> {
    let rounds = rounds_for(measure);
    let slice = measure / rounds;
    for target in targets {
        // Warm up connections, instance pools and caches first.
        drive(
            target.clone(),
            op,
            concurrency,
            Duration::from_millis(300),
            payload,
        )
        .await?;
    }
    let mut totals: Vec<(Histogram<u64>, f64, Vec<f64>)> = Vec::new();
    for _ in targets {
        totals.push((
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?,
            0.0,
            Vec::with_capacity(rounds as usize),
        ));
    }
    for _ in 0..rounds {
        for (target, (hist, secs, per_round)) in targets.iter().zip(totals.iter_mut()) {
            let started = Instant::now();
            let round = drive(target.clone(), op, concurrency, slice, payload).await?;
            let elapsed = started.elapsed().as_secs_f64();
            per_round.push(round.len() as f64 / elapsed);
            hist.add(round)?;
            *secs += elapsed;
        }
    }
    Ok(totals
        .into_iter()
        .map(|(h, secs, rounds)| LoadResult {
            throughput: h.len() as f64 / secs,
            p50_us: h.value_at_quantile(0.50) as f64 / 1000.0,
            p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
            rounds,
        })
        .collect())
}

/// What a scenario loads: Prism (or the echo) over gRPC, or Redis directly.
#[derive(Clone)]
pub enum Target {
    /// Requests name no namespace (`default`).
    Grpc(Channel),
    /// KeyValue through the Rust client (`prism-client`), namespace
    /// `default`: what an application would write. Built with no request
    /// timeout and no retries, so a call is one request, as with `Grpc`.
    Client(prism_client::KeyValue),
    /// redis-rs on one multiplexed connection, on the key Prism stores for `BENCH_KEY`.
    Redis(redis::aio::MultiplexedConnection, String),
    /// tokio-postgres on as many connections as Prism's pool, running PgKv's
    /// statements on the row Prism stores for `BENCH_KEY`.
    Postgres(Arc<Direct>),
    /// Like `Grpc`, with this `authorization` value (built once) on every call.
    GrpcAuth(
        Channel,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    ),
    /// Registry.Register in namespace `devices` (whatever the op), cycling
    /// over 1 000 identities so registrations replace as well as add.
    Register(Channel, Arc<AtomicU64>),
}

impl Target {
    async fn call(&mut self, op: Op, payload: &[u8]) -> anyhow::Result<()> {
        match (self, op) {
            (Target::Grpc(channel), Op::Get) => {
                let mut client = KeyValueClient::new(channel.clone());
                client
                    .get(pb::GetRequest {
                        key: BENCH_KEY.into(),
                    })
                    .await?;
            }
            (Target::Grpc(channel), Op::Set) => {
                let mut client = KeyValueClient::new(channel.clone());
                let request = pb::SetRequest {
                    key: BENCH_KEY.into(),
                    value: payload.to_vec(),
                    ttl_ms: None,
                };
                client.set(request).await?;
            }
            (Target::Client(kv), Op::Get) => {
                kv.get(BENCH_KEY).await?;
            }
            (Target::Client(kv), Op::Set) => {
                // Copied per call, as the `Grpc` arm does.
                kv.set(BENCH_KEY, payload.to_vec()).await?;
            }
            (Target::GrpcAuth(channel, bearer), op) => {
                let bearer = bearer.clone();
                let mut client = KeyValueClient::new(channel.clone());
                match op {
                    Op::Get => {
                        let mut request = tonic::Request::new(pb::GetRequest {
                            key: BENCH_KEY.into(),
                        });
                        request.metadata_mut().insert("authorization", bearer);
                        client.get(request).await?;
                    }
                    Op::Set => {
                        let mut request = tonic::Request::new(pb::SetRequest {
                            key: BENCH_KEY.into(),
                            value: payload.to_vec(),
                            ttl_ms: None,
                        });
                        request.metadata_mut().insert("authorization", bearer);
                        client.set(request).await?;
                    }
                }
            }
            (Target::Redis(conn, key), Op::Get) => {
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(&*key).query_async(conn).await?;
            }
            (Target::Redis(conn, key), Op::Set) => {
                let _: () = redis::cmd("SET")
                    .arg(&*key)
                    .arg(payload)
                    .query_async(conn)
                    .await?;
            }
            (Target::Postgres(pg), Op::Get) => pg.get(payload).await?,
            (Target::Postgres(pg), Op::Set) => pg.set(payload).await?,
            (Target::Register(channel, counter), _) => {
                let n = counter.fetch_add(1, Ordering::Relaxed) % 1000;
                let mut request = tonic::Request::new(pb::RegisterRequest {
                    identity: format!("device-{n}"),
                    metadata: Some(pb::MapValue {
                        fields: [(
                            "floor".to_string(),
                            pb::Value {
                                kind: Some(pb::value::Kind::IntValue((n % 10) as i64)),
                            },
                        )]
                        .into(),
                    }),
                    ttl_ms: None,
                    replace: true,
                });
                request.metadata_mut().insert(
                    prism::namespace::NAMESPACE_METADATA,
                    tonic::metadata::MetadataValue::from_static("devices"),
                );
                RegistryClient::new(channel.clone())
                    .register(request)
                    .await?;
            }
        }
        Ok(())
    }
}

pub async fn drive(
    target: Target,
    op: Op,
    concurrency: usize,
    duration: Duration,
    payload: &[u8],
) -> anyhow::Result<Histogram<u64>> {
    let until = Instant::now() + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut target = target.clone();
        let payload = payload.to_vec();
        workers.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            while Instant::now() < until {
                let t = Instant::now();
                target.call(op, &payload).await?;
                h.record(t.elapsed().as_nanos() as u64)?;
            }
            anyhow::Ok(h)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for w in workers {
        total.add(w.await??)?;
    }
    Ok(total)
}

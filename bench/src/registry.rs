//! Multicast Registry figures, Prism in its own process:
//! - enumerate 1 000 identities with a two-condition filter (registry on
//!   Redis) vs the same selection by a client reading the same Redis hash
//!   directly (redis-rs HGETALL, JSON decode, the same predicate in Rust);
//! - multicast to 100 and 1 000 listening identities (messaging on NATS),
//!   until the broker accepted all, vs the same fan-out published straight
//!   to NATS with async-nats (publish per subject, one flush) to as many
//!   live subscribers;
//! - register throughput at c=64 vs KV SET through the same Prism.
//!
//! Each pair is measured in interleaved rounds after a warm-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prism::pb;
use prism::pb::registry_client::RegistryClient;
use prism_acceptance::registry::{filter, map};
use prism_acceptance::servers::{NatsServer, RedisServer};
use serde_json::json;
use tonic::Request;
use tonic::transport::Channel;

use crate::load::{self, Op, Target, run_interleaved};
use crate::procs::Server;
use crate::report::{Report, Row};

fn request<T>(message: T) -> Request<T> {
    request_in("devices", message)
}

fn request_in<T>(namespace: &'static str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        prism::namespace::NAMESPACE_METADATA,
        tonic::metadata::MetadataValue::from_static(namespace),
    );
    r
}

fn client(channel: &Channel) -> RegistryClient<Channel> {
    RegistryClient::new(channel.clone()).max_decoding_message_size(64 << 20)
}

async fn register_all(channel: &Channel, namespace: &'static str, n: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let c = client(channel);
        tasks.push(tokio::spawn(async move {
            let mut c = c;
            for i in (worker..n).step_by(8) {
                let kind = if i % 2 == 0 { "sensor" } else { "actuator" };
                c.register(request_in(
                    namespace,
                    pb::RegisterRequest {
                        identity: format!("dev-{i:05}"),
                        metadata: Some(map(
                            json!({"type": kind, "floor": i % 10, "name": format!("device {i}")}),
                        )),
                        ttl_ms: None,
                        replace: true,
                    },
                ))
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn p50(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Microseconds of each of `n` sequential runs of `f`.
async fn sample<F, Fut>(n: usize, mut f: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f().await?;
        out.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

pub async fn rows(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let nats = NatsServer::start().await?;
    let config = format!(
        "[backends.reg]\ntype = \"redis\"\nurl = \"{}\"\n[backends.bus]\ntype = \"nats\"\nurl = \"{}\"\n\
         [backends.mem]\ntype = \"memstore\"\n\
         [namespaces.devices]\npattern = \"multicast-registry\"\nslots = {{ registry = \"reg\", messaging = \"bus\" }}\n\
         [namespaces.devices_mem]\npattern = \"multicast-registry\"\nslots = {{ registry = \"mem\", messaging = \"mem\" }}\n\
         [namespaces.default]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n",
        redis.url(),
        nats.url()
    );
    let prism = Server::prism(&config).await?;
    let channel = load::connect(prism.addr).await?;
    let rounds = if quick { 2 } else { 4 };
    let per_round = if quick { 20 } else { 50 };

    // Enumerate 1 000 with {"type": "sensor", "floor.gte": 5}: 200 match.
    register_all(&channel, "devices", 1000).await?;
    register_all(&channel, "devices_mem", 1000).await?;
    let wanted = json!({"type": "sensor", "floor.gte": 5});
    let enumerate_in = |namespace: &'static str| {
        let mut c = client(&channel);
        let f = filter(wanted.clone());
        async move {
            let page = c
                .enumerate(request_in(
                    namespace,
                    pb::EnumerateRequest {
                        filter: f,
                        cursor: String::new(),
                        limit: 1000,
                    },
                ))
                .await?
                .into_inner();
            anyhow::ensure!(
                page.identities.len() == 200 && page.next_cursor.is_empty(),
                "enumerate returned {} (cursor {:?})",
                page.identities.len(),
                page.next_cursor
            );
            Ok(())
        }
    };
    let conn = redis.connect().await?;
    let records_key = "prism:reg:{devices}:records".to_string();
    let direct_once = || {
        let mut conn = conn.clone();
        let key = records_key.clone();
        async move {
            let all: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            let mut matched = 0;
            for stored in all.values() {
                // `<registered_at>:<ttl>:<metadata>`, as Prism stores it.
                let metadata = stored.splitn(3, ':').nth(2).unwrap_or("{}");
                let metadata: serde_json::Value = serde_json::from_str(metadata)?;
                if metadata["type"] == "sensor"
                    && metadata["floor"].as_f64().is_some_and(|f| f >= 5.0)
                {
                    matched += 1;
                }
            }
            anyhow::ensure!(matched == 200, "direct matched {matched}");
            Ok(())
        }
    };
    let enumerate_once = || enumerate_in("devices");
    let enumerate_mem = || enumerate_in("devices_mem");
    sample(10, enumerate_once).await?;
    sample(10, enumerate_mem).await?;
    sample(10, direct_once).await?;
    let (mut ours, mut mem, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.extend(sample(per_round, enumerate_once).await?);
        mem.extend(sample(per_round, enumerate_mem).await?);
        base.extend(sample(per_round, direct_once).await?);
    }
    report.push(Row::new(
        "prism_registry_enumerate_1000_filtered_memstore_p50",
        p50(mem) / 1000.0,
        "ms",
        "prism_registry_enumerate_1000_filtered_redis_p50",
        p50(ours.clone()) / 1000.0,
    ));
    report.push(Row::new(
        "prism_registry_enumerate_1000_filtered_p50",
        p50(ours.clone()) / 1000.0,
        "ms",
        "redis_rs_direct_hgetall_filter_1000_p50",
        p50(base) / 1000.0,
    ));
    report.push(Row::target(
        "prism_registry_enumerate_1000_filtered_p50_vs_target",
        p50(ours) / 1000.0,
        "ms",
        "target_registry_enumerate_1000",
        1.0,
    ));

    // Multicast to 100 and 1 000 listening identities.
    let direct = async_nats::connect(nats.url()).await?;
    for n in [100usize, 1000] {
        let fanout = format!("fan{n}");
        let mut listeners = Vec::with_capacity(n);
        let mut c = client(&channel);
        for i in 0..n {
            c.register(request(pb::RegisterRequest {
                identity: format!("{fanout}-{i:05}"),
                metadata: Some(map(json!({"group": fanout}))),
                ttl_ms: None,
                replace: true,
            }))
            .await?;
            let mut stream = c
                .listen(request(pb::ListenRequest {
                    identity: format!("{fanout}-{i:05}"),
                    buffer: 4096,
                }))
                .await?
                .into_inner();
            stream.message().await?; // live
            // Drained in the background so listeners never push back.
            listeners.push(tokio::spawn(async move {
                while let Ok(Some(_)) = stream.message().await {}
            }));
        }
        let group_filter = filter(json!({"group": fanout}));
        let multicast_once = || {
            let mut c = client(&channel);
            let f = group_filter.clone();
            async move {
                let r = c
                    .multicast(request(pb::MulticastRequest {
                        filter: f,
                        payload: vec![7u8; 128],
                        metadata: HashMap::new(),
                    }))
                    .await?
                    .into_inner();
                anyhow::ensure!(
                    r.target_count as usize == n && r.delivered_count as usize == n,
                    "{r:?}"
                );
                Ok(())
            }
        };
        // The baseline delivers to as many live subscribers as Prism does.
        let subjects: Vec<String> = (0..n).map(|i| format!("bench.fan.{n}.{i}")).collect();
        let mut direct_subscribers = Vec::with_capacity(n);
        for subject in &subjects {
            let mut sub = direct.subscribe(subject.clone()).await?;
            direct_subscribers.push(tokio::spawn(async move {
                use futures::StreamExt;
                while sub.next().await.is_some() {}
            }));
        }
        direct.flush().await?;
        let payload = Bytes::from(vec![7u8; 128]);
        let direct_once = || {
            let direct = direct.clone();
            let subjects = subjects.clone();
            let payload = payload.clone();
            async move {
                for s in subjects {
                    direct.publish(s, payload.clone()).await?;
                }
                direct.flush().await?;
                Ok(())
            }
        };
        sample(5, multicast_once).await?;
        sample(5, direct_once).await?;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.extend(sample(per_round / 2, multicast_once).await?);
            base.extend(sample(per_round / 2, direct_once).await?);
        }
        report.push(Row::new(
            format!("prism_registry_multicast_{n}_listening_p50"),
            p50(ours.clone()) / 1000.0,
            "ms",
            format!("async_nats_direct_fanout_{n}_p50"),
            p50(base) / 1000.0,
        ));
        if n == 1000 {
            report.push(Row::target(
                "prism_registry_multicast_1000_listening_p50_vs_target",
                p50(ours) / 1000.0,
                "ms",
                "target_registry_multicast_1000",
                5.0,
            ));
        }
        for l in listeners.into_iter().chain(direct_subscribers) {
            l.abort();
        }
    }

    // Register throughput at c=64 vs KV SET, same process, interleaved.
    let measure = Duration::from_secs_f64(if quick { 0.6 } else { 3.0 });
    let targets = [
        Target::Grpc(channel.clone()),
        Target::Register(channel.clone(), Arc::new(AtomicU64::new(0))),
    ];
    let results = run_interleaved(&targets, Op::Set, 64, measure, &[0x5A; 128]).await?;
    let [set, register] =
        <[_; 2]>::try_from(results).map_err(|_| anyhow::anyhow!("two targets, two results"))?;
    report.push(Row::new(
        "prism_registry_register_c64_throughput",
        register.throughput,
        "req/s",
        "prism_kv_set_c64_same_process_throughput",
        set.throughput,
    ));
    prism.stop().await?;
    Ok(())
}

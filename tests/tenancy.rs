//! Tenancy over real gRPC: a CPU-bound neighbour cannot stall a healthy
//! namespace; per-namespace quotas (request rate, calls in flight, stored
//! bytes and keys on MemStore and on a real redis-server, open
//! subscriptions) refuse with RESOURCE_EXHAUSTED naming the quota and write
//! nothing; 1 000 namespaces start on the default instance pool and each
//! answers; the server-wide instance limit refuses clearly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prism_acceptance::pubsub::{Sub, subscribe_request};
use prism_acceptance::servers::RedisServer;
use prism_acceptance::{TestServer, eventually, guest_component, pb, start};
use tonic::Code;

fn set(key: &str, value: &[u8]) -> pb::SetRequest {
    pb::SetRequest {
        key: key.into(),
        value: value.to_vec(),
        ttl_ms: None,
    }
}

fn get(key: &str) -> pb::GetRequest {
    pb::GetRequest { key: key.into() }
}

/// Calls of `ns` in flight (admitted, running or waiting for their turn).
fn in_flight(t: &TestServer, ns: &str) -> u32 {
    t.namespaces()
        .get(ns)
        .map(|n| n.admission.load().0)
        .unwrap_or(0)
}

fn busy(t: &TestServer, ns: &str) -> usize {
    t.namespaces()
        .get(ns)
        .ok()
        .and_then(|n| n.keyvalue().ok().map(|kv| kv.pool().stats().busy))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_bound_neighbour_does_not_stall_a_healthy_namespace() -> anyhow::Result<()> {
    let config = format!(
        r#"
[backends.mem]
type = "memstore"
[namespaces.noisy]
pattern = {:?}
slots = {{ kv = "mem" }}
limits = {{ call_deadline_ms = 2000, max_instances = 16 }}
[namespaces.healthy]
pattern = "keyvalue"
slots = {{ kv = "mem" }}
"#,
        guest_component("test_faulty").display().to_string()
    );
    let t = start(&config).await?;
    // Eight CPU-bound calls kept in flight for the whole measurement.
    let stop = Arc::new(AtomicBool::new(false));
    let ended = Arc::new(AtomicU64::new(0));
    let mut spinners = Vec::new();
    for _ in 0..8 {
        let (mut kv, stop, ended) = (t.kv("noisy"), stop.clone(), ended.clone());
        spinners.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let code = kv.get(get("fault:loop")).await.err().map(|s| s.code());
                codes.push(code);
                ended.fetch_add(1, Ordering::Relaxed);
            }
            codes
        }));
    }
    // Measure only once all eight are in flight and one is computing.
    let t_ref = &t;
    let running = eventually(Duration::from_secs(10), || async move {
        in_flight(t_ref, "noisy") >= 8 && busy(t_ref, "noisy") >= 1
    })
    .await;
    anyhow::ensure!(running, "the spinning calls never all started");

    let mut healthy = t.kv("healthy");
    let mut latencies = Vec::new();
    let measuring = Instant::now();
    let ended_before = ended.load(Ordering::Relaxed);
    for i in 0..300u32 {
        let started = Instant::now();
        healthy
            .set(set(&format!("k{}", i % 10), &i.to_le_bytes()))
            .await?;
        let value = healthy
            .get(get(&format!("k{}", i % 10)))
            .await?
            .into_inner()
            .value;
        assert_eq!(value, i.to_le_bytes());
        latencies.push(started.elapsed());
    }
    let measured = measuring.elapsed();
    // The neighbour kept spinning through the measurement.
    let still_busy = in_flight(&t, "noisy");
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        for code in s.await? {
            assert!(
                matches!(code, Some(Code::Internal) | Some(Code::ResourceExhausted)),
                "a spinning call ended with {code:?}"
            );
        }
    }
    assert!(
        still_busy >= 1,
        "the noisy namespace was idle by the end of the measurement"
    );
    latencies.sort();
    // Recorded, not asserted (timing belongs in `just bench`).
    println!(
        "healthy set+get beside 8 spinning calls: 300 in {measured:?}, p50 {:?}, p99 {:?}, max {:?}; {} spinning calls ended meanwhile",
        latencies[150],
        latencies[296],
        latencies[299],
        ended.load(Ordering::Relaxed) - ended_before
    );
    let stats = t.namespaces().get("noisy")?.keyvalue()?.pool().stats();
    assert!(stats.long_calls >= 1, "{stats:?}");
    t.stop().await
}

fn quota_config(backend: &str, limits: &str) -> String {
    format!(
        "{backend}\n[namespaces.limited]\npattern = \"keyvalue\"\nslots = {{ kv = \"store\" }}\nlimits = {{ {limits} }}\n\
         [namespaces.free]\npattern = \"keyvalue\"\nslots = {{ kv = \"store\" }}\n"
    )
}

async fn storage_quota_case(backend: &str) -> anyhow::Result<()> {
    // Keys are stored as "limited/<key>": "limited/k1" (10) + 20 = 30 bytes.
    let t = start(&quota_config(
        backend,
        "max_stored_bytes = 200, max_stored_keys = 3",
    ))
    .await?;
    let mut kv = t.kv("limited");
    for key in ["k1", "k2", "k3"] {
        kv.set(set(key, &[7u8; 20])).await?;
    }
    // A fourth key: over max_stored_keys.
    let err = kv.set(set("k4", b"x")).await.err();
    let (code, message) = err
        .map(|s| (s.code(), s.message().to_string()))
        .unwrap_or((Code::Ok, String::new()));
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("max_stored_keys quota (3 keys)"),
        "{message}"
    );
    assert!(
        message.contains("namespaces.limited.limits.max_stored_keys"),
        "{message}"
    );
    assert_eq!(
        kv.get(get("k4")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );
    // Growing a value past max_stored_bytes: refused, old value kept.
    let err = kv.set(set("k1", &[9u8; 150])).await.err();
    assert!(
        err.as_ref().is_some_and(
            |s| s.code() == Code::ResourceExhausted && s.message().contains("max_stored_bytes")
        ),
        "{err:?}"
    );
    assert_eq!(kv.get(get("k1")).await?.into_inner().value, vec![7u8; 20]);
    // A batch that would cross the quota writes nothing.
    let batch = pb::BatchSetRequest {
        entries: vec![set("k2", b"small"), set("k5", b"new")],
    };
    assert_eq!(
        kv.batch_set(batch).await.err().map(|s| s.code()),
        Some(Code::ResourceExhausted)
    );
    assert_eq!(kv.get(get("k2")).await?.into_inner().value, vec![7u8; 20]);
    assert_eq!(
        kv.get(get("k5")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );
    // Deleting frees room; overwriting in place within the quota works.
    kv.delete(pb::DeleteRequest { key: "k3".into() }).await?;
    kv.set(set("k5", &[1u8; 20])).await?;
    kv.set(set("k1", &[2u8; 20])).await?;
    assert_eq!(kv.get(get("k5")).await?.into_inner().value, vec![1u8; 20]);
    // Expired keys stop counting.
    kv.batch_delete(pb::BatchDeleteRequest {
        keys: vec!["k2".into(), "k5".into()],
    })
    .await?;
    kv.set(pb::SetRequest {
        key: "t1".into(),
        value: vec![0; 10],
        ttl_ms: Some(300),
    })
    .await?;
    kv.set(pb::SetRequest {
        key: "t2".into(),
        value: vec![0; 10],
        ttl_ms: Some(300),
    })
    .await?;
    assert_eq!(
        kv.set(set("k6", b"x")).await.err().map(|s| s.code()),
        Some(Code::ResourceExhausted)
    );
    let mut kv2 = kv.clone();
    let freed = eventually(Duration::from_secs(5), || {
        let mut kv = kv2.clone();
        async move { kv.set(set("k6", b"x")).await.is_ok() }
    })
    .await;
    kv2.get(get("k1")).await?;
    assert!(freed, "keys past their TTL still counted against the quota");
    // The other namespace on the same backend is not limited.
    let mut free = t.kv("free");
    for i in 0..10 {
        free.set(set(&format!("f{i}"), &[0u8; 50])).await?;
    }
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_quota_on_memstore() -> anyhow::Result<()> {
    storage_quota_case("[backends.store]\ntype = \"memstore\"\n").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_quota_on_redis() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    storage_quota_case(&format!(
        "[backends.store]\ntype = \"redis\"\nurl = \"{}\"\n",
        redis.url()
    ))
    .await?;
    // The ledger lives beside the data, outside every namespace's key space.
    let mut conn = redis.connect().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("__prism:quota:*")
        .query_async(&mut conn)
        .await?;
    assert!(
        keys.iter().all(|k| k.starts_with("__prism:quota:limited:")),
        "{keys:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_quota_refuses_past_the_burst() -> anyhow::Result<()> {
    let t = start(&quota_config(
        "[backends.store]\ntype = \"memstore\"\n",
        "requests_per_second = 1, burst = 5",
    ))
    .await?;
    let mut kv = t.kv("limited");
    let mut refused = None;
    for i in 0..20 {
        match kv.set(set(&format!("r{i}"), b"v")).await {
            Ok(_) => {}
            Err(status) => {
                refused = Some((i, status));
                break;
            }
        }
    }
    let (at, status) = refused.ok_or_else(|| anyhow::anyhow!("no request was refused"))?;
    assert!((5..=6).contains(&at), "refused at request {at}");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("requests_per_second quota (1/s, burst 5)"),
        "{}",
        status.message()
    );
    // The refused write did nothing (checked on the backend itself: the
    // namespace is out of tokens), and the other namespace is not limited.
    let slot = t
        .namespaces()
        .get("limited")?
        .keyvalue()?
        .pool()
        .slots()
        .kv
        .clone();
    let stored = slot.backend().get(&format!("limited/r{at}")).await?;
    assert_eq!(stored, None, "a refused write reached the store");
    assert!(slot.backend().get("limited/r0").await?.is_some());
    let mut other = t.kv("free");
    assert!(
        other.set(set("x", b"v")).await.is_ok(),
        "the other namespace was limited"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_and_subscription_quotas() -> anyhow::Result<()> {
    let config = format!(
        r#"
[backends.mem]
type = "memstore"
[namespaces.calls]
pattern = {:?}
slots = {{ kv = "mem" }}
limits = {{ max_concurrent_calls = 2, call_deadline_ms = 1500 }}
[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "mem" }}
limits = {{ max_subscriptions = 2 }}
"#,
        guest_component("test_faulty").display().to_string()
    );
    let t = start(&config).await?;
    // Two calls in flight (blocked until their deadline), the third refused at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut kv = t.kv("calls");
        held.push(tokio::spawn(
            async move { kv.get(get("fault:sleep")).await },
        ));
    }
    let t_ref = &t;
    anyhow::ensure!(
        eventually(Duration::from_secs(10), || async move {
            busy(t_ref, "calls") >= 2
        })
        .await,
        "the two calls never started"
    );
    let err = t.kv("calls").get(get("k")).await.err();
    assert!(
        err.as_ref()
            .is_some_and(|s| s.code() == Code::ResourceExhausted
                && s.message().contains("max_concurrent_calls quota of 2")),
        "{err:?}"
    );
    for h in held {
        let _ = h.await?;
    }
    // Free again once they ended.
    assert_eq!(
        t.kv("calls").get(get("k")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );

    let mut ps = t.pubsub("events");
    let first = Sub::open(&mut ps, subscribe_request("a")).await?;
    let second = Sub::open(&mut ps, subscribe_request("b")).await?;
    let err = ps.subscribe(subscribe_request("c")).await.err();
    assert!(
        err.as_ref()
            .is_some_and(|s| s.code() == Code::ResourceExhausted
                && s.message().contains("max_subscriptions quota of 2")),
        "{err:?}"
    );
    drop(first);
    // The slot frees when the stream ends.
    let mut reopened = None;
    for _ in 0..100 {
        match Sub::open(&mut ps, subscribe_request("c")).await {
            Ok(sub) => {
                reopened = Some(sub);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(
        reopened.is_some(),
        "the closed subscription's slot was never freed"
    );
    drop(second);
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_namespaces_start_and_each_answers() -> anyhow::Result<()> {
    let mut config = String::from("[backends.mem]\ntype = \"memstore\"\n");
    for i in 0..1000 {
        config.push_str(&format!(
            "[namespaces.t{i:04}]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n"
        ));
    }
    let started = Instant::now();
    let t = start(&config).await?;
    println!("1000 namespaces ready in {:?}", started.elapsed());
    for i in 0..1000 {
        let ns = format!("t{i:04}");
        let mut kv = t.kv(&ns);
        kv.set(set("who", ns.as_bytes())).await?;
        assert_eq!(kv.get(get("who")).await?.into_inner().value, ns.as_bytes());
    }
    // Each namespace has its own instances: 1000 were made, none shared.
    let instantiated: u64 = t
        .namespaces()
        .iter()
        .map(|ns| {
            ns.keyvalue()
                .map(|kv| kv.pool().stats().instantiated)
                .unwrap_or(0)
        })
        .sum();
    assert!(instantiated >= 1000, "{instantiated}");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_wide_instance_limit_refuses_clearly() -> anyhow::Result<()> {
    // Three instances in all: one warm per namespace leaves one to spare.
    let config = format!(
        r#"
[runtime]
total_instances = 3
limits = {{ max_instances = 3 }}
[backends.mem]
type = "memstore"
[namespaces.a]
pattern = {:?}
slots = {{ kv = "mem" }}
limits = {{ max_instances = 3, call_deadline_ms = 1500 }}
[namespaces.b]
pattern = "keyvalue"
slots = {{ kv = "mem" }}
"#,
        guest_component("test_faulty").display().to_string()
    );
    let t = start(&config).await?;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut kv = t.kv("a");
        calls.push(tokio::spawn(async move {
            kv.get(get("fault:sleep")).await.err()
        }));
    }
    let mut exhausted = 0;
    for c in calls {
        let status = c
            .await?
            .ok_or_else(|| anyhow::anyhow!("a sleeping call succeeded"))?;
        match status.code() {
            Code::Internal => assert!(status.message().contains("call deadline"), "{status:?}"),
            Code::ResourceExhausted => {
                assert!(
                    status.message().contains("runtime.total_instances"),
                    "{status:?}"
                );
                exhausted += 1;
            }
            other => anyhow::bail!("unexpected {other:?}: {}", status.message()),
        }
    }
    assert_eq!(exhausted, 1, "exactly one call found no instance");
    // Namespace b kept its warm instance throughout.
    let mut b = t.kv("b");
    b.set(set("k", b"v")).await?;
    assert_eq!(b.get(get("k")).await?.into_inner().value, b"v");
    t.stop().await
}

//! Tenancy over real gRPC: a CPU-bound neighbour cannot stall a healthy
//! namespace; per-namespace quotas (request rate, calls in flight, stored
//! bytes and keys on MemStore and on a real redis-server, open
//! subscriptions and registry listeners) refuse with RESOURCE_EXHAUSTED
//! naming the quota and write nothing, and quotas set in `[runtime.limits]`
//! apply to namespaces that set none; PubSub and Registry arguments past
//! the host's capability bounds are refused and publish or store nothing;
//! 1 000 namespaces start on the default instance pool and each answers;
//! the server-wide instance limit refuses clearly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prism_acceptance::pubsub::{Sub, publish_request, subscribe_request};
use prism_acceptance::registry;
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
    // Each namespace has its own instances: every one of the 1000 pools
    // made at least one (a shared instance would leave pools at zero).
    let mut pools = 0;
    for ns in t.namespaces().iter() {
        let made = ns
            .keyvalue()
            .map(|kv| kv.pool().stats().instantiated)
            .unwrap_or(0);
        assert!(
            made >= 1,
            "namespace {} served without an instance of its own",
            ns.name
        );
        pools += 1;
    }
    assert_eq!(pools, 1000);
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

/// A refusal by the host's capability bound: `code`, `expected` in the
/// message, and none of the pattern's own wording (its limits name the
/// setting that raises them, "(setting max_…)").
fn host_refused(
    what: &str,
    outcome: Option<tonic::Status>,
    code: Code,
    expected: &str,
) -> anyhow::Result<()> {
    let status = outcome.ok_or_else(|| anyhow::anyhow!("{what}: accepted, expected {code:?}"))?;
    anyhow::ensure!(
        status.code() == code && status.message().contains(expected),
        "{what}: expected {code:?} with {expected:?}, got {:?}: {}",
        status.code(),
        status.message()
    );
    anyhow::ensure!(
        !status.message().contains("(setting"),
        "{what}: refused by the pattern, not the host: {}",
        status.message()
    );
    Ok(())
}

fn batch_message(payload: Vec<u8>) -> pb::BatchMessage {
    pb::BatchMessage {
        payload,
        metadata: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_arguments_past_the_host_bounds_are_refused_and_publish_nothing()
-> anyhow::Result<()> {
    // The pattern's own limits are raised past the host's, so every case
    // below reaches the host's pubsub capability, which is what refuses;
    // the gRPC limit is raised too, so the server's decoder does not refuse
    // first (96 MiB).
    let t = start(
        r#"
[server]
max_message_bytes = 100663296
[backends.bus]
type = "memstore"
[namespaces.wide]
pattern = "pubsub"
slots = { pubsub = "bus" }
limits = { call_deadline_ms = 20000, memory_limit_mib = 128 }
[namespaces.wide.settings]
max_batch = 20000
max_payload_bytes = 67108864
max_metadata_entries = 4096
max_metadata_bytes = 4194304
max_topic_bytes = 8192
"#,
    )
    .await?;
    let mut ps = t.pubsub("wide");
    let mut sub = Sub::open(&mut ps, subscribe_request("t")).await?;

    // 10 001 messages in one publish: host MAX_MESSAGES (10 000).
    let batch = pb::PublishBatchRequest {
        topic: "t".into(),
        messages: (0..10_001).map(|_| batch_message(b"x".to_vec())).collect(),
    };
    host_refused(
        "batch",
        ps.publish_batch(batch).await.err(),
        Code::InvalidArgument,
        "10001 messages in one publish; the host accepts at most 10000",
    )?;
    // One payload over host MAX_PAYLOAD_BYTES (32 MiB).
    host_refused(
        "payload",
        ps.publish(publish_request("t", &vec![1u8; (32 << 20) + 1]))
            .await
            .err(),
        Code::InvalidArgument,
        "message 0: payload is 33554433 bytes; the host limit is 33554432",
    )?;
    // 1 025 metadata entries: host MAX_METADATA_ENTRIES (1 024).
    let mut many = publish_request("t", b"m");
    many.metadata = (0..1025)
        .map(|i| (format!("k{i:04}"), "v".into()))
        .collect();
    host_refused(
        "metadata entries",
        ps.publish(many).await.err(),
        Code::InvalidArgument,
        "message 0: metadata has 1025 entries, 6150 bytes; the host limits are 1024 entries, 1048576 bytes",
    )?;
    // One metadata value of 1 MiB: over host MAX_METADATA_BYTES with its key.
    let mut heavy = publish_request("t", b"m");
    heavy.metadata.insert("k".into(), "v".repeat(1 << 20));
    host_refused(
        "metadata bytes",
        ps.publish(heavy).await.err(),
        Code::InvalidArgument,
        "message 0: metadata has 1 entries, 1048577 bytes",
    )?;
    // Three 22 MiB payloads, each within the per-message bound: 66 MiB in
    // one call is over host MAX_PUBLISH_BYTES (64 MiB). The suite's client
    // sends at most 64 MiB, so this one may send more.
    let mut big = prism::pb::pub_sub_client::PubSubClient::with_interceptor(
        t.channel(),
        prism_acceptance::Namespace::new("wide"),
    )
    .max_encoding_message_size(128 << 20);
    let batch = pb::PublishBatchRequest {
        topic: "t".into(),
        messages: (0..3).map(|_| batch_message(vec![2u8; 22 << 20])).collect(),
    };
    host_refused(
        "publish bytes",
        big.publish_batch(batch).await.err(),
        Code::InvalidArgument,
        "publish holds 69206016 bytes; the host accepts at most 67108864 per call",
    )?;
    // A topic over host MAX_TOPIC_BYTES (4 096), published and subscribed.
    let giant_topic = "a".repeat(5000);
    host_refused(
        "topic (publish)",
        ps.publish(publish_request(&giant_topic, b"m")).await.err(),
        Code::InvalidArgument,
        "topic is 5000 bytes; the host accepts 1 to 4096 bytes",
    )?;
    host_refused(
        "topic (subscribe)",
        ps.subscribe(subscribe_request(&giant_topic)).await.err(),
        Code::InvalidArgument,
        "topic is 5000 bytes; the host accepts 1 to 4096 bytes",
    )?;

    // Nothing reached the broker: the subscriber's first message is the
    // one published after the refusals, and nothing else follows or was dropped.
    ps.publish(publish_request("t", b"after")).await?;
    let first = sub
        .next(Duration::from_secs(10))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the message published after the refusals never came"))?;
    anyhow::ensure!(
        first.payload[..] == *b"after",
        "a refused publish was delivered"
    );
    let more = sub.next(Duration::from_millis(300)).await?;
    anyhow::ensure!(more.is_none(), "an extra message was delivered: {more:?}");
    anyhow::ensure!(sub.dropped == 0, "{} messages were dropped", sub.dropped);
    // No refused call left a subscription slot taken: only `sub` is open.
    anyhow::ensure!(t.namespaces().get("wide")?.admission.load().1 == 1);
    t.stop().await
}

fn register(identity: &str, metadata: serde_json::Value) -> pb::RegisterRequest {
    pb::RegisterRequest {
        identity: identity.into(),
        metadata: Some(registry::map(metadata)),
        ttl_ms: None,
        replace: false,
    }
}

async fn identities(reg: &mut prism_acceptance::RegClient) -> anyhow::Result<Vec<String>> {
    let page = reg
        .enumerate(pb::EnumerateRequest {
            filter: Default::default(),
            cursor: String::new(),
            limit: 1000,
        })
        .await?
        .into_inner();
    let mut ids: Vec<String> = page.identities.into_iter().map(|i| i.identity).collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_arguments_past_the_host_bounds_are_refused_and_store_nothing()
-> anyhow::Result<()> {
    // The pattern's limits are raised past the host's (max_identities stays
    // low: the pattern hands it to the host, whose backend enforces it
    // atomically), so the host's registry and pubsub capabilities refuse.
    let t = start(
        r#"
[server]
max_message_bytes = 50331648
[backends.reg]
type = "memstore"
[backends.bus]
type = "memstore"
[namespaces.wide]
pattern = "multicast-registry"
slots = { registry = "reg", messaging = "bus" }
limits = { call_deadline_ms = 20000, memory_limit_mib = 128 }
[namespaces.wide.settings]
max_identity_bytes = 8192
max_metadata_bytes = 4194304
max_ttl_ms = 1000000000000000
max_payload_bytes = 67108864
max_identities = 3
"#,
    )
    .await?;
    let mut reg = t.registry("wide");
    reg.register(register("ok-1", serde_json::json!({"n": 1})))
        .await?;

    // An identity over host MAX_IDENTITY_BYTES (4 096), on every call that names one.
    let giant = "x".repeat(5000);
    let expected = "identity is 5000 bytes; the host accepts 1 to 4096 bytes";
    host_refused(
        "register giant identity",
        reg.register(register(&giant, serde_json::json!({})))
            .await
            .err(),
        Code::InvalidArgument,
        expected,
    )?;
    host_refused(
        "get giant identity",
        reg.get(pb::GetIdentityRequest {
            identity: giant.clone(),
        })
        .await
        .err(),
        Code::InvalidArgument,
        expected,
    )?;
    host_refused(
        "heartbeat giant identity",
        reg.heartbeat(pb::HeartbeatRequest {
            identity: giant.clone(),
        })
        .await
        .err(),
        Code::InvalidArgument,
        expected,
    )?;
    // Its inbox topic is over the host's pubsub MAX_TOPIC_BYTES.
    host_refused(
        "listen giant identity",
        reg.listen(pb::ListenRequest {
            identity: giant.clone(),
            buffer: 0,
        })
        .await
        .err(),
        Code::InvalidArgument,
        "the host accepts 1 to 4096 bytes",
    )?;
    // Metadata over host MAX_METADATA_BYTES (1 MiB) as compact JSON.
    host_refused(
        "giant metadata",
        reg.register(register(
            "big-meta",
            serde_json::json!({"blob": "m".repeat(1 << 20)}),
        ))
        .await
        .err(),
        Code::InvalidArgument,
        "metadata is 1048587 bytes; the host limit is 1048576",
    )?;
    // A TTL over host MAX_TTL_MS (ten years).
    let mut long = register("long-ttl", serde_json::json!({}));
    long.ttl_ms = Some(315_360_000_001);
    host_refused(
        "ttl",
        reg.register(long).await.err(),
        Code::InvalidArgument,
        "ttl must be 1 to 315360000000 ms",
    )?;

    // Multicasts the host's pubsub capability refuses (publish-each): a
    // payload over MAX_PAYLOAD_BYTES, and more metadata entries than
    // MAX_METADATA_ENTRIES (the pattern has no limit of its own on these).
    let mut inbox = registry::Inbox::open(&mut reg, "ok-1").await?;
    host_refused(
        "multicast payload",
        reg.multicast(pb::MulticastRequest {
            filter: Default::default(),
            payload: vec![3u8; (32 << 20) + 1],
            metadata: Default::default(),
        })
        .await
        .err(),
        Code::InvalidArgument,
        "payload is 33554433 bytes; the host limit is 33554432",
    )?;
    host_refused(
        "multicast metadata",
        reg.multicast(pb::MulticastRequest {
            filter: Default::default(),
            payload: b"m".to_vec(),
            metadata: (0..2000)
                .map(|i| (format!("k{i:04}"), "v".into()))
                .collect(),
        })
        .await
        .err(),
        Code::InvalidArgument,
        "the host limits are 1024 entries",
    )?;
    let sent = reg
        .multicast(pb::MulticastRequest {
            filter: Default::default(),
            payload: b"after".to_vec(),
            metadata: Default::default(),
        })
        .await?
        .into_inner();
    assert_eq!((sent.target_count, sent.delivered_count), (1, 1));
    let first = inbox
        .next(Duration::from_secs(10))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the multicast after the refusals never came"))?;
    anyhow::ensure!(
        first.payload[..] == *b"after",
        "a refused multicast was delivered"
    );

    // max_identities (3): the fourth new identity is RESOURCE_EXHAUSTED and
    // not stored; replacing an existing one is not a new identity.
    for id in ["ok-2", "ok-3"] {
        reg.register(register(id, serde_json::json!({}))).await?;
    }
    let full = reg
        .register(register("ok-4", serde_json::json!({})))
        .await
        .err();
    anyhow::ensure!(
        full.as_ref()
            .is_some_and(|s| s.code() == Code::ResourceExhausted
                && s.message()
                    .contains("already holds its limit of 3 identities")),
        "{full:?}"
    );
    let mut again = register("ok-1", serde_json::json!({"n": 2}));
    again.replace = true;
    reg.register(again).await?;

    // Read back: only what was accepted is there.
    assert_eq!(identities(&mut reg).await?, ["ok-1", "ok-2", "ok-3"]);
    for id in ["big-meta", "long-ttl", "ok-4"] {
        let got = reg
            .get(pb::GetIdentityRequest {
                identity: id.into(),
            })
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(got, Some(Code::NotFound), "{id} was stored");
    }
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_listeners_count_against_the_subscription_quota() -> anyhow::Result<()> {
    let t = start(&format!(
        "{}[namespaces.devices.limits]\nmax_subscriptions = 2\n",
        registry::registry_config(
            "[backends.reg]\ntype = \"memstore\"\n[backends.bus]\ntype = \"memstore\"\n",
            &["devices", "other"],
            "",
        )
    ))
    .await?;
    let mut reg = t.registry("devices");
    for id in ["d1", "d2", "d3"] {
        reg.register(register(id, serde_json::json!({}))).await?;
    }
    let first = registry::Inbox::open(&mut reg, "d1").await?;
    let mut second = registry::Inbox::open(&mut reg, "d2").await?;
    let streams = |t: &TestServer| {
        t.namespaces()
            .get("devices")
            .map(|n| n.admission.load().1)
            .unwrap_or(0)
    };
    assert_eq!(streams(&t), 2);
    // A third listener: over the quota, refused before the pattern runs.
    let err = reg
        .listen(pb::ListenRequest {
            identity: "d3".into(),
            buffer: 0,
        })
        .await
        .err();
    assert!(
        err.as_ref()
            .is_some_and(|s| s.code() == Code::ResourceExhausted
                && s.message()
                    .contains("max_subscriptions quota of 2 open subscriptions and listeners")
                && s.message()
                    .contains("namespaces.devices.limits.max_subscriptions")),
        "{err:?}"
    );
    assert_eq!(streams(&t), 2, "the refused listener kept a slot");
    // The quota is the namespace's own: another namespace still listens.
    let mut other = t.registry("other");
    let mut elsewhere = registry::Inbox::open(&mut other, "d3").await?;

    // Closing a listener frees its slot once the server sees the stream end.
    drop(first);
    let mut third = None;
    for _ in 0..250 {
        match registry::Inbox::open(&mut reg, "d3").await {
            Ok(inbox) => {
                third = Some(inbox);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut third =
        third.ok_or_else(|| anyhow::anyhow!("the closed listener's slot was never freed"))?;
    assert_eq!(streams(&t), 2);
    // Both live listeners are real: a multicast reaches each.
    let sent = reg
        .multicast(pb::MulticastRequest {
            filter: Default::default(),
            payload: b"hello".to_vec(),
            metadata: Default::default(),
        })
        .await?
        .into_inner();
    assert_eq!(sent.delivered_count, 3);
    for inbox in [&mut second, &mut third] {
        let got = inbox.next(Duration::from_secs(10)).await?;
        assert_eq!(got.map(|m| m.payload.to_vec()), Some(b"hello".to_vec()));
    }
    // The other namespace's listener of the same identity heard nothing.
    let leaked = elsewhere.next(Duration::from_millis(300)).await?;
    assert!(leaked.is_none(), "{leaked:?}");
    t.stop().await
}

/// Sets until one is refused; the index and status of the refusal.
async fn set_until_refused(
    kv: &mut prism_acceptance::KvClient,
    prefix: &str,
    max: usize,
) -> Option<(usize, tonic::Status)> {
    for i in 0..max {
        if let Err(status) = kv.set(set(&format!("{prefix}{i}"), b"v")).await {
            return Some((i, status));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_quota_in_runtime_limits_is_inherited_and_overridden() -> anyhow::Result<()> {
    // `inherits` sets no limits; `burst8` sets only its burst (the rate
    // stays the runtime's); `unlimited` turns the rate quota off (0).
    let t = start(
        r#"
[runtime]
limits = { requests_per_second = 1, burst = 4 }
[backends.store]
type = "memstore"
[namespaces.inherits]
pattern = "keyvalue"
slots = { kv = "store" }
[namespaces.burst8]
pattern = "keyvalue"
slots = { kv = "store" }
limits = { burst = 8 }
[namespaces.unlimited]
pattern = "keyvalue"
slots = { kv = "store" }
limits = { requests_per_second = 0 }
"#,
    )
    .await?;
    for (ns, burst) in [("inherits", 4), ("burst8", 8)] {
        let (at, status) = set_until_refused(&mut t.kv(ns), "r", 40)
            .await
            .ok_or_else(|| anyhow::anyhow!("{ns}: no request was refused"))?;
        // The burst, plus at most one token refilled meanwhile.
        assert!((burst..=burst + 1).contains(&at), "{ns}: refused at {at}");
        assert_eq!(status.code(), Code::ResourceExhausted, "{ns}");
        assert!(
            status
                .message()
                .contains(&format!("requests_per_second quota (1/s, burst {burst})")),
            "{ns}: {}",
            status.message()
        );
        // The refused write did nothing.
        let slot = t
            .namespaces()
            .get(ns)?
            .keyvalue()?
            .pool()
            .slots()
            .kv
            .clone();
        assert_eq!(slot.backend().get(&format!("{ns}/r{at}")).await?, None);
        assert!(slot.backend().get(&format!("{ns}/r0")).await?.is_some());
    }
    let refused = set_until_refused(&mut t.kv("unlimited"), "r", 40).await;
    assert!(refused.is_none(), "{refused:?}");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_quota_in_runtime_limits_is_inherited_and_overridden() -> anyhow::Result<()> {
    let t = start(
        r#"
[runtime]
limits = { max_stored_keys = 2 }
[backends.store]
type = "memstore"
[namespaces.inherits]
pattern = "keyvalue"
slots = { kv = "store" }
[namespaces.own]
pattern = "keyvalue"
slots = { kv = "store" }
limits = { max_stored_keys = 4 }
[namespaces.unlimited]
pattern = "keyvalue"
slots = { kv = "store" }
limits = { max_stored_keys = 0 }
"#,
    )
    .await?;
    for (ns, keys) in [("inherits", 2), ("own", 4)] {
        let mut kv = t.kv(ns);
        let (at, status) = set_until_refused(&mut kv, "k", 20)
            .await
            .ok_or_else(|| anyhow::anyhow!("{ns}: no write was refused"))?;
        assert_eq!(at, keys, "{ns}");
        assert_eq!(status.code(), Code::ResourceExhausted, "{ns}");
        assert!(
            status
                .message()
                .contains(&format!("max_stored_keys quota ({keys} keys)")),
            "{ns}: {}",
            status.message()
        );
        assert_eq!(
            kv.get(get(&format!("k{at}"))).await.err().map(|s| s.code()),
            Some(Code::NotFound),
            "{ns}: the refused key was stored"
        );
    }
    let refused = set_until_refused(&mut t.kv("unlimited"), "k", 20).await;
    assert!(refused.is_none(), "{refused:?}");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_quota_in_runtime_limits_is_inherited_and_overridden() -> anyhow::Result<()> {
    let t = start(&format!(
        r#"
[runtime]
limits = {{ max_concurrent_calls = 1, call_deadline_ms = 1500 }}
[backends.mem]
type = "memstore"
[namespaces.one]
pattern = {faulty:?}
slots = {{ kv = "mem" }}
[namespaces.three]
pattern = {faulty:?}
slots = {{ kv = "mem" }}
limits = {{ max_concurrent_calls = 3 }}
"#,
        faulty = guest_component("test_faulty").display().to_string()
    ))
    .await?;
    // One sleeping call in `one`, two in `three`, all held to the deadline.
    let mut held = Vec::new();
    for (ns, n) in [("one", 1), ("three", 2)] {
        for _ in 0..n {
            let mut kv = t.kv(ns);
            held.push(tokio::spawn(
                async move { kv.get(get("fault:sleep")).await },
            ));
        }
    }
    let t_ref = &t;
    anyhow::ensure!(
        eventually(Duration::from_secs(10), || async move {
            busy(t_ref, "one") >= 1 && busy(t_ref, "three") >= 2
        })
        .await,
        "the sleeping calls never started"
    );
    // `one` inherited the runtime's quota of 1: refused at once.
    let err = t.kv("one").get(get("k")).await.err();
    assert!(
        err.as_ref()
            .is_some_and(|s| s.code() == Code::ResourceExhausted
                && s.message().contains("max_concurrent_calls quota of 1")),
        "{err:?}"
    );
    // `three` overrides it: a third call is admitted and answered.
    assert_eq!(
        t.kv("three").get(get("k")).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );
    for h in held {
        let outcome = h.await?.err().map(|s| s.code());
        assert_eq!(
            outcome,
            Some(Code::Internal),
            "a held call did not hit its deadline"
        );
    }
    t.stop().await
}

/// Calls that wait on a stalled backend are waiting, not computing: they
/// must not be taken for long calls (which queue for the namespace's one
/// compute slot and could run out their deadline there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_stalled_backend_is_not_computing() -> anyhow::Result<()> {
    const CALLS: usize = 32;
    let redis = RedisServer::start().await?;
    let t = start(&format!(
        "[backends.cache]\ntype = \"redis\"\nurl = \"{}\"\ntimeout_ms = 10000\n\
         [namespaces.default]\npattern = \"keyvalue\"\nslots = {{ kv = \"cache\" }}\n\
         limits = {{ compute_slots = 1 }}\n",
        redis.url()
    ))
    .await?;
    t.kv("default")
        .set(pb::SetRequest {
            key: "k".into(),
            value: b"v".to_vec(),
            ttl_ms: None,
        })
        .await?;
    let pool = || -> anyhow::Result<prism::runtime::pool::PoolStats> {
        Ok(t.namespaces().get("default")?.keyvalue()?.pool().stats())
    };
    let before = pool()?.long_calls;
    redis.signal("STOP")?;
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let mut kv = t.kv("default");
            tokio::spawn(async move {
                kv.get(pb::GetRequest { key: "k".into() })
                    .await
                    .map(|r| r.into_inner().value)
            })
        })
        .collect();
    // Every call is inside its kv.get, awaiting the stopped server...
    let all_waiting = eventually(Duration::from_secs(10), || {
        let busy = pool().map(|s| s.busy).unwrap_or_default();
        async move { busy >= CALLS }
    })
    .await;
    // ...for many epoch ticks (5 ms each).
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.signal("CONT")?;
    assert!(
        all_waiting,
        "the calls never all reached the backend: {:?}",
        pool()?
    );
    for call in calls {
        assert_eq!(call.await??, b"v");
    }
    let stats = pool()?;
    assert_eq!(
        stats.long_calls, before,
        "calls that only waited on the backend were taken for computing: {stats:?}"
    );
    t.stop().await
}

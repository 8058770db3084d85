//! Redis-specific behaviour against a real redis-server: killed under load
//! (every acknowledged write still there afterwards), down at start-up,
//! acknowledged writes replayed from the AOF after a kill, MULTI batches
//! all-or-nothing when Redis refuses or dies mid-batch, malformed URLs, and
//! MemStore and Redis namespaces served side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prism_acceptance::servers::{RedisServer, free_port};
use prism_acceptance::{TestServer, eventually, pb, start};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn config(url: &str) -> String {
    format!(
        r#"
[backends.cache]
type = "redis"
url = "{url}"
timeout_ms = 500

[namespaces.orders]
pattern = "keyvalue"
slots = {{ kv = "cache" }}
"#
    )
}

async fn health(t: &TestServer, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(t.channel());
    let reply = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

async fn health_becomes(t: &TestServer, status: ServingStatus) -> bool {
    eventually(Duration::from_secs(10), || async {
        health(t, "orders").await == Some(status)
    })
    .await
}

/// What each request of the background load saw.
#[derive(Default)]
struct Observed {
    ok: u64,
    errors: Vec<(Code, String)>,
    slowest: Duration,
    ok_after_mark: u64,
    /// Per key: the last value acknowledged and the last one attempted.
    last: std::collections::HashMap<String, (u64, u64)>,
}

fn start_load(
    t: &TestServer,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Observed>>,
    mark: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let mut kv = t.kv("orders");
            let (stop, seen, mark) = (stop.clone(), seen.clone(), mark.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let started = Instant::now();
                    let key = format!("load:{w}:{}", i % 100);
                    seen.lock().last.entry(key.clone()).or_default().1 = i;
                    let result = kv
                        .set(pb::SetRequest {
                            key: key.clone(),
                            value: i.to_le_bytes().to_vec(),
                            ttl_ms: None,
                        })
                        .await;
                    let took = started.elapsed();
                    let failed = {
                        let mut seen = seen.lock();
                        seen.slowest = seen.slowest.max(took);
                        match result {
                            Ok(_) => {
                                seen.ok += 1;
                                seen.last.entry(key).or_default().0 = i;
                                if mark.load(Ordering::Relaxed) {
                                    seen.ok_after_mark += 1;
                                }
                                false
                            }
                            Err(s) => {
                                seen.errors.push((s.code(), s.message().to_string()));
                                true
                            }
                        }
                    };
                    if failed {
                        // Back off a little so a dead backend is not spun against.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_fails_fast_and_recovers_without_restart() -> anyhow::Result<()> {
    // Durable, so what was acknowledged before the kill can be checked after.
    let mut redis = RedisServer::start_durable().await?;
    let t = start(&config(&redis.url())).await?;
    anyhow::ensure!(
        health_becomes(&t, ServingStatus::Serving).await,
        "namespace never became SERVING"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Observed::default()));
    let restarted = Arc::new(AtomicBool::new(false));
    let load = start_load(&t, stop.clone(), seen.clone(), restarted.clone());
    anyhow::ensure!(
        eventually(Duration::from_secs(10), || async { seen.lock().ok > 200 }).await,
        "no load got through"
    );

    redis.kill();
    let saw_unavailable = eventually(Duration::from_secs(10), || async {
        !seen.lock().errors.is_empty()
    })
    .await;
    anyhow::ensure!(
        saw_unavailable,
        "requests kept succeeding after redis-server was killed"
    );
    anyhow::ensure!(
        health_becomes(&t, ServingStatus::NotServing).await,
        "health did not report NOT_SERVING"
    );

    redis.restart().await?;
    restarted.store(true, Ordering::Relaxed);
    let recovered = eventually(Duration::from_secs(15), || async {
        seen.lock().ok_after_mark > 100
    })
    .await;
    anyhow::ensure!(
        recovered,
        "Prism did not recover after redis-server came back"
    );
    anyhow::ensure!(
        health_becomes(&t, ServingStatus::Serving).await,
        "health did not return to SERVING"
    );

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    let (errors, slowest) = {
        let seen = seen.lock();
        (seen.errors.clone(), seen.slowest)
    };
    let port = redis.port();
    for (code, message) in &errors {
        assert_eq!(*code, Code::Unavailable, "{message}");
        assert!(
            message.contains(&format!("Redis 'cache' at 127.0.0.1:{port}")),
            "backend not named: {message}"
        );
    }
    // Generous bound: the point is "no hang", the backend timeout is 500 ms.
    assert!(
        slowest < Duration::from_secs(3),
        "a request hung for {slowest:?}"
    );
    // Every key holds its last acknowledged value, or a later attempt's whose
    // answer was lost in the outage; never an older one.
    let last = seen.lock().last.clone();
    let mut kv = t.kv("orders");
    let mut later = 0;
    for (key, (acked, attempted)) in &last {
        let stored = match kv.get(pb::GetRequest { key: key.clone() }).await {
            Ok(r) => u64::from_le_bytes(r.into_inner().value.as_slice().try_into()?),
            Err(s) if s.code() == Code::NotFound && *acked == 0 => continue,
            Err(s) => anyhow::bail!("{key}: {s:?}"),
        };
        assert!(
            stored >= *acked && stored <= *attempted,
            "{key}: stored {stored}, last acknowledged {acked}, last attempted {attempted}"
        );
        if stored > *acked {
            later += 1;
        }
    }
    println!(
        "after the kill: {} keys checked, each at its last acknowledged value ({later} at a later, unacknowledged one)",
        last.len()
    );
    t.stop().await
}

/// What this proves: Prism acknowledges a write only after Redis replied,
/// and Redis replays its AOF on restart. A process kill keeps the OS page
/// cache, so it cannot tell `appendfsync always` from `everysec` (that
/// needs a machine crash); the server runs with `always` regardless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_are_replayed_from_the_aof_after_a_kill() -> anyhow::Result<()> {
    let mut redis = RedisServer::start_durable().await?;
    let t = start(&config(&redis.url())).await?;
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let mut kv = t.kv("orders");
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let request = pb::SetRequest {
                    key: format!("durable:{i}"),
                    value: i.to_le_bytes().to_vec(),
                    ttl_ms: None,
                };
                if kv.set(request).await.is_ok() {
                    acked.lock().push(i);
                }
            }
        })
    };
    anyhow::ensure!(
        eventually(Duration::from_secs(20), || async {
            acked.lock().len() >= 300
        })
        .await,
        "writes too slow"
    );
    redis.kill(); // mid-stream, SIGKILL
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    redis.restart().await?;

    let acked = acked.lock().clone();
    let mut kv = t.kv("orders");
    let reconnected = eventually(Duration::from_secs(10), || {
        let mut kv = kv.clone();
        async move {
            kv.exists(pb::ExistsRequest {
                key: "durable:1".into(),
            })
            .await
            .is_ok()
        }
    })
    .await;
    anyhow::ensure!(reconnected, "Prism did not reconnect after the restart");
    for i in &acked {
        let value = kv
            .get(pb::GetRequest {
                key: format!("durable:{i}"),
            })
            .await?
            .into_inner()
            .value;
        assert_eq!(
            value,
            i.to_le_bytes(),
            "acknowledged write durable:{i} lost or changed"
        );
    }
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_startup_serves_unavailable_then_recovers() -> anyhow::Result<()> {
    let port = free_port()?;
    let t = start(&config(&format!("redis://:s3cret-pw@127.0.0.1:{port}"))).await?;
    anyhow::ensure!(
        health_becomes(&t, ServingStatus::NotServing).await,
        "expected NOT_SERVING while Redis is down"
    );
    let mut kv = t.kv("orders");
    let err = kv.get(pb::GetRequest { key: "k".into() }).await.err();
    let (code, message) = err
        .map(|s| (s.code(), s.message().to_string()))
        .unwrap_or((Code::Ok, String::new()));
    assert_eq!(code, Code::Unavailable, "{message}");
    assert!(
        message.contains(&format!("Redis 'cache' at 127.0.0.1:{port}")),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "password leaked: {message}");

    let _redis = RedisServer::start_on(
        port,
        &[
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "s3cret-pw",
        ],
    )
    .await?;
    let recovered = eventually(Duration::from_secs(15), || {
        let mut kv = kv.clone();
        async move {
            kv.set(pb::SetRequest {
                key: "k".into(),
                value: b"v".to_vec(),
                ttl_ms: None,
            })
            .await
            .is_ok()
        }
    })
    .await;
    anyhow::ensure!(recovered, "Prism did not start serving once Redis came up");
    assert_eq!(
        kv.get(pb::GetRequest { key: "k".into() })
            .await?
            .into_inner()
            .value,
        b"v"
    );
    anyhow::ensure!(
        health_becomes(&t, ServingStatus::Serving).await,
        "health did not become SERVING"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_urls_fail_startup_naming_the_field() -> anyhow::Result<()> {
    for url in [
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:notaport",
        "redis://[::1",
    ] {
        let err = match start(&config(url)).await {
            Ok(t) => {
                t.stop().await?;
                anyhow::bail!("{url} was accepted");
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("backends.cache.url"), "{url}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_and_redis_namespaces_side_by_side() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let toml = config(&redis.url())
        + "\n[backends.mem]\ntype = \"memstore\"\n[namespaces.default]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n";
    let t = start(&toml).await?;
    let (mut mem, mut orders) = (t.kv("default"), t.kv("orders"));
    mem.set(pb::SetRequest {
        key: "k".into(),
        value: b"in-memory".to_vec(),
        ttl_ms: None,
    })
    .await?;
    orders
        .set(pb::SetRequest {
            key: "k".into(),
            value: b"in-redis".to_vec(),
            ttl_ms: Some(60_000),
        })
        .await?;
    assert_eq!(
        mem.get(pb::GetRequest { key: "k".into() })
            .await?
            .into_inner()
            .value,
        b"in-memory"
    );
    assert_eq!(
        orders
            .get(pb::GetRequest { key: "k".into() })
            .await?
            .into_inner()
            .value,
        b"in-redis"
    );
    // Redis holds exactly the Redis namespace's key, scoped, with its TTL.
    let mut direct = redis.connect().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut direct).await?;
    assert_eq!(keys, vec!["orders/k".to_string()]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("orders/k")
        .query_async(&mut direct)
        .await?;
    assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");
    t.stop().await
}

/// One batch of `n` keys `b{batch}:{i}`, all holding the batch number.
fn batch(number: u64, n: usize, value_bytes: usize) -> pb::BatchSetRequest {
    let mut value = vec![0u8; value_bytes.max(8)];
    value[..8].copy_from_slice(&number.to_le_bytes());
    pb::BatchSetRequest {
        entries: (0..n)
            .map(|i| pb::SetRequest {
                key: format!("b{number}:{i}"),
                value: value.clone(),
                ttl_ms: None,
            })
            .collect(),
    }
}

async fn batch_keys_present(redis: &RedisServer, number: u64, n: usize) -> anyhow::Result<usize> {
    let mut conn = redis.connect().await?;
    let keys: Vec<String> = (0..n).map(|i| format!("orders/b{number}:{i}")).collect();
    let present: u64 = redis::cmd("EXISTS")
        .arg(&keys)
        .query_async(&mut conn)
        .await?;
    Ok(present as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_refused_mid_way_by_redis_writes_nothing() -> anyhow::Result<()> {
    // Redis runs out of memory part way through queueing the batch's MULTI:
    // it refuses the transaction (EXECABORT) and applies none of it.
    let redis =
        RedisServer::start_with(&["--save", "", "--appendonly", "no", "--maxmemory", "4mb"])
            .await?;
    let t = start(&config(&redis.url())).await?;
    let mut kv = t.kv("orders");
    kv.batch_set(batch(1, 10, 1024)).await?;
    assert_eq!(batch_keys_present(&redis, 1, 10).await?, 10);
    // 200 × 64 KiB = 12.5 MiB: far past maxmemory before the batch ends.
    let err = kv.batch_set(batch(2, 200, 64 << 10)).await.err();
    let status = err.ok_or_else(|| anyhow::anyhow!("a batch past maxmemory was accepted"))?;
    assert!(status.code() == Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("Redis 'cache'"),
        "{}",
        status.message()
    );
    assert_eq!(
        batch_keys_present(&redis, 2, 200).await?,
        0,
        "part of a refused batch was written"
    );
    // Smaller batches still go through.
    kv.batch_set(batch(3, 10, 1024)).await?;
    assert_eq!(batch_keys_present(&redis, 3, 10).await?, 10);
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_all_or_nothing_when_redis_dies_mid_stream() -> anyhow::Result<()> {
    const KEYS: usize = 50;
    let mut redis = RedisServer::start_durable().await?;
    let t = start(&config(&redis.url())).await?;
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let attempted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, attempted, stop) = (acked.clone(), attempted.clone(), stop.clone());
        let mut kv = t.kv("orders");
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                attempted.store(n, Ordering::Relaxed);
                if kv.batch_set(batch(n, KEYS, 256)).await.is_ok() {
                    acked.lock().push(n);
                }
            }
        })
    };
    anyhow::ensure!(
        eventually(Duration::from_secs(20), || async {
            acked.lock().len() >= 50
        })
        .await,
        "batches too slow"
    );
    redis.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    redis.restart().await?;
    let acked = acked.lock().clone();
    let attempted = attempted.load(Ordering::Relaxed);
    let mut partial = Vec::new();
    for n in 1..=attempted {
        let present = batch_keys_present(&redis, n, KEYS).await?;
        if present != 0 && present != KEYS {
            partial.push((n, present));
        }
        if acked.contains(&n) {
            assert_eq!(present, KEYS, "acknowledged batch {n} is missing keys");
        }
    }
    assert!(partial.is_empty(), "half-written batches: {partial:?}");
    println!(
        "{} batches acknowledged of {attempted} attempted; every batch all or nothing after the kill",
        acked.len()
    );
    t.stop().await
}

/// A Redis config on a `rediss://` URL with the TLS settings given.
fn tls_config(
    url: &str,
    tls_ca: Option<&std::path::Path>,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> String {
    let tls = prism_acceptance::tls::backend_tls_toml(tls_ca, client);
    config(url).replace("timeout_ms = 500\n", &format!("timeout_ms = 500\n{tls}"))
}

/// `rediss://` to a redis-server that speaks TLS on the port Prism is given
/// and requires a client certificate (both from a CA made here): with the
/// CA and the certificate the namespace is served and the key lands in
/// Redis; without the certificate, trusting only the system's roots, to an
/// address the certificate does not name, or in plaintext to the TLS port,
/// requests are UNAVAILABLE naming the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_client_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [ca, cert, key, client, client_key] = prism_acceptance::tls::test_pki(dir.path())?;
    let tls_port = free_port()?.to_string();
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca_s, cert_s, key_s) = (path(&ca), path(&cert), path(&key));
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert_s,
        "--tls-key-file",
        &key_s,
        "--tls-ca-cert-file",
        &ca_s,
        "--tls-auth-clients",
        "yes",
        // And an address the certificate does not name.
        "--bind",
        "127.0.0.1",
        "127.0.0.2",
    ])
    .await?;
    let url = format!("rediss://127.0.0.1:{tls_port}");

    let t = start(&tls_config(&url, Some(&ca), Some((&client, &client_key)))).await?;
    let mut orders = t.kv("orders");
    orders
        .set(pb::SetRequest {
            key: "k".into(),
            value: b"over tls".to_vec(),
            ttl_ms: None,
        })
        .await?;
    assert_eq!(
        orders
            .get(pb::GetRequest { key: "k".into() })
            .await?
            .into_inner()
            .value,
        b"over tls"
    );
    // The write went through the TLS port to this very server.
    let mut direct = redis.connect().await?;
    let stored: Vec<u8> = redis::cmd("GET")
        .arg("orders/k")
        .query_async(&mut direct)
        .await?;
    assert_eq!(stored, b"over tls");
    t.stop().await?;

    let plaintext = format!("redis://127.0.0.1:{tls_port}");
    for (case, config) in [
        ("no client certificate", tls_config(&url, Some(&ca), None)),
        (
            "the system's roots only",
            tls_config(&url, None, Some((&client, &client_key))),
        ),
        ("plaintext to the TLS port", config(&plaintext)),
        (
            "a host name the certificate does not name",
            tls_config(
                &url.replace("127.0.0.1", "127.0.0.2"),
                Some(&ca),
                Some((&client, &client_key)),
            ),
        ),
    ] {
        let t = start(&config).await?;
        let err = t
            .kv("orders")
            .get(pb::GetRequest { key: "k".into() })
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("{}", case))?;
        assert_eq!(err.code(), Code::Unavailable, "{case}: {err:?}");
        assert!(
            err.message().contains("Redis 'cache' at 127.0.0."),
            "{case}: {}",
            err.message()
        );
        t.stop().await?;
    }
    Ok(())
}

//! The sandbox: a deliberately faulty pattern (built by host/build.rs from
//! guest-patterns/test-faulty) spins forever, allocates without bound and
//! panics. Each fault fails only its own request with a clear INTERNAL, the
//! next request to that namespace succeeds, and a second namespace keeps
//! serving throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prism_acceptance::{KvClient, TestServer, guest_component, pb, start};
use tonic::Code;

fn config() -> String {
    format!(
        r#"
[backends.mem]
type = "memstore"

[namespaces.faulty]
pattern = {faulty:?}
slots = {{ kv = "mem" }}
limits = {{ call_deadline_ms = 300, memory_limit_mib = 16, max_instances = 4 }}

[namespaces.healthy]
pattern = "keyvalue"
slots = {{ kv = "mem" }}
"#,
        faulty = guest_component("test_faulty").display().to_string()
    )
}

/// Hammers the healthy namespace until told to stop; counts successes and failures.
fn background_traffic(
    mut kv: KvClient,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let key = format!("bg:{}", i % 50);
            let set = kv
                .set(pb::SetRequest {
                    key: key.clone(),
                    value: i.to_le_bytes().to_vec(),
                    ttl_ms: None,
                })
                .await;
            let get = kv.get(pb::GetRequest { key }).await;
            if set.is_ok() && get.is_ok() {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

async fn assert_fault_is_contained(
    t: &TestServer,
    fault_key: &str,
    expected: &str,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = background_traffic(t.kv("healthy"), stop.clone(), ok.clone(), failed.clone());

    let mut faulty = t.kv("faulty");
    let before = faulty_stats(t)?;
    let err = faulty
        .get(pb::GetRequest {
            key: fault_key.into(),
        })
        .await
        .err();
    let (code, message) = err
        .map(|s| (s.code(), s.message().to_string()))
        .unwrap_or((Code::Ok, String::new()));
    assert_eq!(code, Code::Internal, "{fault_key}: {message}");
    assert!(
        message.contains("namespace 'faulty'"),
        "{fault_key}: {message}"
    );
    assert!(
        message.contains(expected),
        "{fault_key}: expected {expected:?} in {message:?}"
    );
    assert_eq!(
        faulty_stats(t)?.discarded,
        before.discarded + 1,
        "{fault_key}: trapped instance was not discarded"
    );

    // The faulty namespace recovers on its very next request.
    faulty
        .set(pb::SetRequest {
            key: "after".into(),
            value: fault_key.as_bytes().to_vec(),
            ttl_ms: None,
        })
        .await?;
    assert_eq!(
        faulty
            .get(pb::GetRequest {
                key: "after".into()
            })
            .await?
            .into_inner()
            .value,
        fault_key.as_bytes()
    );

    stop.store(true, Ordering::Relaxed);
    traffic.await?;
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{fault_key}: the healthy namespace saw failures"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 0,
        "{fault_key}: the healthy namespace served nothing meanwhile"
    );
    Ok(())
}

fn faulty_stats(t: &TestServer) -> anyhow::Result<prism::runtime::pool::PoolStats> {
    let ns = t.server.namespaces().get("faulty")?;
    Ok(ns.keyvalue()?.pool().stats())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_hits_the_deadline() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    assert_fault_is_contained(&t, "fault:loop", "exceeded its call deadline of 300 ms").await?;
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_limit() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    assert_fault_is_contained(&t, "fault:memory", "exceeded its memory limit of 16 MiB").await?;
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_reported_with_its_message() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    assert_fault_is_contained(
        &t,
        "fault:panic",
        "panicked: faulty pattern panicked on purpose",
    )
    .await?;
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_faults_never_block_other_requests() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    // More simultaneous spinning calls than the namespace has instances: the
    // excess wait for a permit and then spin too; all fail, none hang.
    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut kv = t.kv("faulty");
        calls.push(tokio::spawn(async move {
            kv.get(pb::GetRequest {
                key: "fault:loop".into(),
            })
            .await
            .err()
            .map(|s| s.code())
        }));
    }
    let mut healthy = t.kv("healthy");
    healthy
        .set(pb::SetRequest {
            key: "k".into(),
            value: b"v".to_vec(),
            ttl_ms: None,
        })
        .await?;
    for call in calls {
        let code = call.await?;
        assert!(
            matches!(code, Some(Code::Internal) | Some(Code::ResourceExhausted)),
            "{code:?}"
        );
    }
    let mut faulty = t.kv("faulty");
    faulty
        .set(pb::SetRequest {
            key: "k".into(),
            value: b"v".to_vec(),
            ttl_ms: None,
        })
        .await?;
    t.stop().await
}

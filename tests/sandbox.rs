//! The sandbox: a deliberately faulty and hostile pattern (built by
//! host/build.rs from guest-patterns/test-faulty) spins, allocates without
//! bound, panics, recurses without end, sleeps inside a host call, probes
//! for files, sockets and environment, hands the host giant arguments and
//! returns oversized results; two more components import what Prism does
//! not provide or export no pattern world. Each fault fails only its own
//! request (or the load) with a clear status; the next request to that
//! namespace succeeds, and a second namespace keeps serving throughout —
//! measured while the fault is provably running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prism_acceptance::{KvClient, TestServer, eventually, guest_component, pb, start};
use tonic::Code;

/// Deadline of the faulty namespace: long enough that the healthy traffic
/// measured "during" a fault really overlaps it on a loaded machine.
const DEADLINE_MS: u64 = 1500;

fn config() -> String {
    format!(
        r#"
[telemetry]
metrics_listen = "127.0.0.1:0"

[backends.mem]
type = "memstore"

[namespaces.faulty]
pattern = {faulty:?}
slots = {{ kv = "mem" }}
limits = {{ call_deadline_ms = {DEADLINE_MS}, memory_limit_mib = 32, max_instances = 4 }}

# Giant arguments take real time to build and copy: a generous deadline, so
# what is tested is the host's refusal, not the clock.
[namespaces.hostile]
pattern = {faulty:?}
slots = {{ kv = "mem" }}
limits = {{ call_deadline_ms = 20000, memory_limit_mib = 128 }}

[namespaces.healthy]
pattern = "keyvalue"
slots = {{ kv = "mem" }}
"#,
        faulty = guest_component("test_faulty").display().to_string()
    )
}

/// Healthy-namespace traffic: writes a value, reads it back and compares.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(mut kv: KvClient) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f, l) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            latencies.clone(),
        );
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("bg:{}", i % 50);
                let value = i.to_le_bytes().to_vec();
                let started = Instant::now();
                let outcome = async {
                    kv.set(pb::SetRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ttl_ms: None,
                    })
                    .await?;
                    let got = kv.get(pb::GetRequest { key }).await?.into_inner().value;
                    Ok::<_, tonic::Status>(got)
                }
                .await;
                l.lock().push(started.elapsed());
                match outcome {
                    Ok(got) if got == value => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(got) => f.lock().push(format!("read back {got:?}, wrote {value:?}")),
                    Err(status) => f.lock().push(format!("{status:?}")),
                }
            }
        });
        Traffic {
            stop,
            ok,
            failures,
            latencies,
            task,
        }
    }

    /// Successful round trips so far.
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops; asserts nothing failed and something succeeded; prints latency.
    async fn finish(self, label: &str) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        let failures = self.failures.lock().clone();
        anyhow::ensure!(
            failures.is_empty(),
            "{label}: the healthy namespace saw failures: {failures:?}"
        );
        let mut latencies = self.latencies.lock().clone();
        latencies.sort();
        anyhow::ensure!(
            !latencies.is_empty(),
            "{label}: the healthy namespace served nothing meanwhile"
        );
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        // Recorded, not asserted: timing thresholds do not belong in tests.
        println!(
            "{label}: healthy set+get round trips during the fault: {} ok, p50 {:?}, p99 {:?}, max {:?}",
            self.ok.load(Ordering::Relaxed),
            at(0.5),
            at(0.99),
            at(1.0)
        );
        Ok(())
    }
}

fn stats(t: &TestServer, ns: &str) -> anyhow::Result<prism::runtime::pool::PoolStats> {
    Ok(t.namespaces().get(ns)?.keyvalue()?.pool().stats())
}

/// Faults that run until the host stops them: seen running before the
/// healthy traffic starts, so the traffic provably overlaps them.
const LASTING: &[&str] = &["fault:loop", "fault:sleep"];

/// Starts `fault_key` in `namespace`, waits until the call is running in
/// the pattern (or, for a fault over at once, finished), measures healthy
/// traffic until it ends and one call past it; returns its status.
async fn fault_during_traffic(
    t: &TestServer,
    namespace: &str,
    fault_key: &str,
) -> anyhow::Result<tonic::Status> {
    let before = stats(t, namespace)?;
    let mut faulty = t.kv(namespace);
    let key = fault_key.to_string();
    let call = tokio::spawn(async move { faulty.get(pb::GetRequest { key }).await });
    // The fault holds an instance before we measure, or is already over: a
    // panic or a refused argument ends in microseconds, so only the faults
    // that last (LASTING) are required to be seen running.
    let call_ref = &call;
    let busy = || stats(t, namespace).is_ok_and(|s| s.busy > before.busy);
    let running = eventually(Duration::from_secs(10), || async move {
        busy() || (!LASTING.contains(&fault_key) && call_ref.is_finished())
    })
    .await;
    anyhow::ensure!(
        running,
        "{fault_key}: the faulty call was never seen running in the pattern"
    );
    let traffic = Traffic::start(t.kv("healthy"));
    let outcome = call.await?;
    // At least one healthy round trip completes after the fault ends too.
    let seen = traffic.ok();
    let traffic_ref = &traffic;
    let after = eventually(Duration::from_secs(10), || async move {
        traffic_ref.ok() > seen
    })
    .await;
    anyhow::ensure!(
        after,
        "{fault_key}: no healthy call completed in the 10 s after the fault ended"
    );
    traffic.finish(fault_key).await?;
    match outcome {
        Ok(response) => anyhow::bail!(
            "{fault_key}: expected an error, got {} bytes",
            response.into_inner().value.len()
        ),
        Err(status) => Ok(status),
    }
}

/// The fault trapped: INTERNAL naming the namespace and `expected`, the
/// instance discarded, and the namespace serving again right after.
async fn assert_trap_contained(
    t: &TestServer,
    namespace: &str,
    fault_key: &str,
    expected: &str,
) -> anyhow::Result<()> {
    let before = stats(t, namespace)?;
    let status = fault_during_traffic(t, namespace, fault_key).await?;
    assert_eq!(status.code(), Code::Internal, "{fault_key}: {status:?}");
    assert!(
        status
            .message()
            .contains(&format!("namespace '{namespace}'")),
        "{fault_key}: {}",
        status.message()
    );
    assert!(
        status.message().contains(expected),
        "{fault_key}: expected {expected:?} in {:?}",
        status.message()
    );
    assert_eq!(
        stats(t, namespace)?.discarded,
        before.discarded + 1,
        "{fault_key}: trapped instance was not discarded"
    );
    assert_recovers(t, namespace, fault_key).await
}

/// The namespace's very next request succeeds, value read back.
async fn assert_recovers(t: &TestServer, namespace: &str, fault_key: &str) -> anyhow::Result<()> {
    let mut kv = t.kv(namespace);
    kv.set(pb::SetRequest {
        key: "after".into(),
        value: fault_key.as_bytes().to_vec(),
        ttl_ms: None,
    })
    .await?;
    assert_eq!(
        kv.get(pb::GetRequest {
            key: "after".into()
        })
        .await?
        .into_inner()
        .value,
        fault_key.as_bytes()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_hits_the_deadline() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    let expected = format!("exceeded its call deadline of {DEADLINE_MS} ms");
    assert_trap_contained(&t, "faulty", "fault:loop", &expected).await?;
    assert!(
        stats(&t, "faulty")?.long_calls >= 1,
        "the spinning call was not counted as a long call"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_limit() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    assert_trap_contained(
        &t,
        "faulty",
        "fault:memory",
        "exceeded its memory limit of 32 MiB",
    )
    .await?;
    t.stop().await
}

/// Traps are counted by kind on `/metrics`, and their calls as INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_are_counted_by_kind_in_metrics() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    let mut kv = t.kv("faulty");
    for key in [
        "fault:panic",
        "fault:memory",
        "fault:deep-stack",
        "fault:panic",
    ] {
        let Err(status) = kv.get(pb::GetRequest { key: key.into() }).await else {
            anyhow::bail!("{key}: expected a trap, got a value");
        };
        assert_eq!(status.code(), Code::Internal, "{key}: {status:?}");
    }
    assert_recovers(&t, "faulty", "metrics").await?;
    let text = t.scrape_metrics().await?;
    for line in [
        r#"prism_namespace_traps_total{namespace="faulty",kind="panic"} 2"#,
        r#"prism_namespace_traps_total{namespace="faulty",kind="memory_limit"} 1"#,
        r#"prism_namespace_traps_total{namespace="faulty",kind="stack_overflow"} 1"#,
        r#"prism_namespace_traps_total{namespace="faulty",kind="deadline"} 0"#,
        r#"prism_namespace_traps_total{namespace="healthy",kind="panic"} 0"#,
        r#"grpc_server_handled_total{namespace="faulty",grpc_service="prism.v1.KeyValue",grpc_method="Get",grpc_type="unary",grpc_code="Internal"} 4"#,
        r#"grpc_server_handled_total{namespace="faulty",grpc_service="prism.v1.KeyValue",grpc_method="Get",grpc_type="unary",grpc_code="OK"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_reported_with_its_message() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    assert_trap_contained(
        &t,
        "faulty",
        "fault:panic",
        "panicked: faulty pattern panicked on purpose",
    )
    .await?;
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_overflows_its_stack() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    // On the wasm stack itself: the host's stack bound traps.
    assert_trap_contained(&t, "faulty", "fault:deep-stack", "overflowed its stack").await?;
    // On Rust's shadow stack in linear memory: an out-of-bounds access.
    assert_trap_contained(
        &t,
        "faulty",
        "fault:recursion",
        "accessed memory out of bounds (for a Rust pattern usually a stack overflow",
    )
    .await?;
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_inside_a_host_call_is_cut_at_the_deadline() -> anyhow::Result<()> {
    // Epoch interruption cannot reach a guest blocked in WASI poll; the
    // host's own timer must.
    let t = start(&config()).await?;
    let started = Instant::now();
    let expected = format!("exceeded its call deadline of {DEADLINE_MS} ms");
    assert_trap_contained(&t, "faulty", "fault:sleep", &expected).await?;
    println!("fault:sleep ended after {:?}", started.elapsed());
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_holds_when_the_host_writes_into_the_guest() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    // 12 MiB stored; the pattern asks for it four times over in one call,
    // more than its 32 MiB: the host's copy into guest memory fails.
    let mut faulty = t.kv("faulty");
    faulty
        .set(pb::SetRequest {
            key: "big".into(),
            value: vec![3u8; 12 << 20],
            ttl_ms: None,
        })
        .await?;
    assert_trap_contained(
        &t,
        "faulty",
        "fault:big-lift",
        "exceeded its memory limit of 32 MiB",
    )
    .await?;
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giant_arguments_are_refused_before_the_backend() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    for (key, expected) in [
        (
            "fault:giant-batch",
            "1000000 keys in one call; the host accepts at most 10000",
        ),
        ("fault:giant-value", "the host limit is 33554432 bytes"),
    ] {
        let status = fault_during_traffic(&t, "hostile", key).await?;
        assert_eq!(status.code(), Code::InvalidArgument, "{key}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{key}: {}",
            status.message()
        );
        assert_recovers(&t, "hostile", key).await?;
    }
    // Nothing reached the store.
    let mut hostile = t.kv("hostile");
    let missing = hostile
        .exists(pb::ExistsRequest {
            key: "giant".into(),
        })
        .await?
        .into_inner();
    assert!(!missing.exists, "a refused write reached the store");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_results_are_refused_with_a_clear_status() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    // 20 MiB from `get`: more than the server sends in one message (16 MiB).
    let status = fault_during_traffic(&t, "hostile", "fault:huge-result").await?;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("server.max_message_bytes"),
        "{}",
        status.message()
    );
    // Two million keys from one scan page.
    let status = t
        .kv("hostile")
        .scan(pb::ScanRequest {
            prefix: "fault:many-keys".into(),
            cursor: String::new(),
            limit: 10,
        })
        .await
        .err()
        .map(|s| (s.code(), s.message().to_string()));
    assert!(
        matches!(&status, Some((Code::ResourceExhausted, m)) if m.contains("server.max_message_bytes")),
        "{status:?}"
    );
    assert_recovers(&t, "hostile", "fault:huge-result").await?;
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_files_sockets_environment_or_stdin() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    let report = t
        .kv("hostile")
        .get(pb::GetRequest {
            key: "fault:ambient".into(),
        })
        .await?
        .into_inner()
        .value;
    let report = String::from_utf8(report)?;
    println!("ambient authority probe:\n{report}");
    let lines: std::collections::BTreeMap<&str, &str> =
        report.lines().filter_map(|l| l.split_once('=')).collect();
    for probe in [
        "read_file",
        "read_dir",
        "create_file",
        "tcp_connect",
        "tcp_listen",
        "udp_bind",
    ] {
        let outcome = lines.get(probe).copied().unwrap_or("missing");
        assert!(
            outcome.starts_with("denied("),
            "{probe} was not denied: {outcome}"
        );
    }
    assert_eq!(lines.get("env_vars"), Some(&"0"), "{report}");
    assert_eq!(lines.get("args"), Some(&"0"), "{report}");
    assert_eq!(lines.get("stdin_bytes"), Some(&"0"), "{report}");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_that_do_not_fit_are_refused_at_load() -> anyhow::Result<()> {
    for (component, expected) in [
        ("test_bad_import", "test:hostile/spy"),
        (
            "test_wrong_world",
            "fits none of Prism's pattern worlds (prism:pattern/keyvalue: ",
        ),
    ] {
        let config = format!(
            "[backends.mem]\ntype = \"memstore\"\n[namespaces.x]\npattern = {:?}\nslots = {{ kv = \"mem\" }}\n",
            guest_component(component).display().to_string()
        );
        let err = start(&config)
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("namespaces.x.pattern"), "{component}: {err}");
        assert!(err.contains(expected), "{component}: {err}");
        if component == "test_bad_import" {
            assert!(err.contains("Prism does not provide"), "{err}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_spinning_calls_than_instances_never_hang() -> anyhow::Result<()> {
    let t = start(&config()).await?;
    // More simultaneous spinning calls than the namespace has instances: the
    // excess wait for an instance or a compute slot, then fail; none hang.
    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut kv = t.kv("faulty");
        calls.push(tokio::spawn(async move {
            kv.get(pb::GetRequest {
                key: "fault:loop".into(),
            })
            .await
            .err()
            .map(|s| (s.code(), s.message().to_string()))
        }));
    }
    for call in calls {
        let outcome = call.await?;
        assert!(
            matches!(&outcome, Some((Code::Internal, m)) if m.contains("call deadline"))
                || matches!(&outcome, Some((Code::ResourceExhausted, m)) if m.contains("compute_slots") || m.contains("max_instances")),
            "{outcome:?}"
        );
    }
    assert_recovers(&t, "faulty", "fault:loop").await?;
    t.stop().await
}

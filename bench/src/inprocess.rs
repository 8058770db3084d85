//! Figures of Prism's internals, measured in this process because they
//! have no network to cross: the wasm hop (pattern + capability + MemStore
//! vs MemStore alone), instantiating one instance, a new namespace warm
//! (cached component) and cold (compiled first), and one quota check.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use prism::admission::Admission;
use prism::backend::Backends;
use prism::config::{Config, DEFAULT_NAMESPACE, Quotas};
use prism::namespace::Namespace;
use prism::namespace::Platform;
use prism::patterns::PatternStore;
use prism::runtime::Runtime;

use crate::load;
use crate::report::{Report, Row};

pub async fn rows(report: &mut Report, payload: &[u8]) -> anyhow::Result<()> {
    let config = Config::dev("127.0.0.1:0".parse()?);
    let runtime = Arc::new(Runtime::new(&config.runtime, 64 << 20)?);
    let backends = Backends::build(&config.backends)?;
    let platform = Platform {
        config: config.clone(),
        runtime: runtime.clone(),
        backends: backends.clone(),
        patterns: PatternStore::new(None),
        prepared: Default::default(),
    };
    let ns_config = config
        .namespaces
        .get(DEFAULT_NAMESPACE)
        .context("dev config has no default namespace")?
        .clone();
    let namespace = Namespace::start(DEFAULT_NAMESPACE, &ns_config, &platform).await?;
    let kv = namespace.keyvalue()?.clone();
    kv.set(load::BENCH_KEY.to_string(), payload.to_vec(), None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // The wasm hop: pattern + capability + MemStore vs MemStore alone.
    let slot = kv.pool().slots().kv.clone();
    let scoped = slot
        .scoped(load::BENCH_KEY)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let iterations = 100_000;
    let with_guest = time_per_op(iterations, || {
        let kv = kv.clone();
        async move {
            kv.get(load::BENCH_KEY.to_string())
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    let direct = time_per_op(iterations, || {
        let backend = slot.backend().clone();
        let key = scoped.clone();
        async move {
            backend
                .get(&key)
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    report.push(Row::new(
        "kv_get_in_process_through_pattern",
        with_guest,
        "us",
        "kv_get_in_process_backend_only",
        direct,
    ));
    report.push(Row::target(
        "wasm_hop_per_request",
        with_guest - direct,
        "us",
        "target_wasm_hop",
        5.0,
    ));

    // Instantiation: one more instance of the running namespace's pattern.
    let pool = kv.pool().clone();
    let instantiate = time_per_op(200, || {
        let pool = pool.clone();
        async move {
            pool.instantiate()
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    report.push(Row::new(
        "pattern_instantiate",
        instantiate,
        "us",
        "pooled_kv_get_in_process",
        with_guest,
    ));

    // A whole new namespace, component cached: pool built, first instance configured.
    let rounds = 20;
    let started = Instant::now();
    for i in 0..rounds {
        let ns = Namespace::start(&format!("bench-{i}"), &ns_config, &platform).await?;
        drop(Arc::new(ns));
    }
    let warm_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    report.push(Row::target(
        "new_namespace_ready",
        warm_ms,
        "ms",
        "target_new_namespace_ready",
        10.0,
    ));

    // Cold: no cache anywhere, so the component is compiled; ready = it
    // answered its first request.
    let rounds = 3;
    let mut cold_ms = 0.0;
    for i in 0..rounds {
        let cache = tempfile::tempdir()?;
        let mut runtime_config = config.runtime.clone();
        runtime_config.cache_dir = Some(cache.path().to_path_buf());
        let cold = Platform {
            config: config.clone(),
            runtime: Arc::new(Runtime::new(&runtime_config, 64 << 20)?),
            backends: backends.clone(),
            patterns: PatternStore::new(None),
            prepared: Default::default(),
        };
        let started = Instant::now();
        let ns = Namespace::start(&format!("cold-{i}"), &ns_config, &cold).await?;
        let _ = ns.keyvalue()?.exists("first".to_string()).await;
        cold_ms += started.elapsed().as_secs_f64() * 1000.0;
    }
    report.push(Row::new(
        "new_namespace_ready_cold",
        cold_ms / f64::from(rounds),
        "ms",
        "new_namespace_ready_warm",
        warm_ms,
    ));

    // One admission check with every quota on (rate and concurrency).
    let admission = Arc::new(Admission::new(
        "bench",
        Quotas {
            requests_per_second: Some(u32::MAX),
            burst: u32::MAX,
            max_concurrent_calls: Some(1024),
            ..Quotas::default()
        },
    ));
    let n = 1_000_000u32;
    let started = Instant::now();
    for _ in 0..n {
        let guard = admission.call().map_err(|e| anyhow::anyhow!("{e}"))?;
        std::hint::black_box(&guard);
    }
    let check_ns = started.elapsed().as_secs_f64() * 1e9 / f64::from(n);
    report.push(Row::target(
        "quota_check_per_request",
        check_ns / 1000.0,
        "us",
        "target_quota_check",
        1.0,
    ));
    Ok(())
}

/// Mean microseconds per call of `f`, run sequentially `n` times after a warm-up.
async fn time_per_op<F, Fut>(n: u32, mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..n / 10 {
        f().await?;
    }
    let started = Instant::now();
    for _ in 0..n {
        f().await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

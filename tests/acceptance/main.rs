//! The acceptance suite: every case runs against every backend through
//! Prism over gRPC, with the same test bodies — the KeyValue part on
//! MemStore, Redis and PostgreSQL, the PubSub part on the embedded broker,
//! NATS, NATS JetStream, Redis pub/sub and Redis Streams, the Registry part
//! on {MemStore, Redis} registries × {embedded, NATS, JetStream} messaging,
//! Redis × Redis Streams and PostgreSQL × {embedded, NATS}. Prints a
//! compliance table per part and fails if any case fails anywhere.

mod kv_cases;
mod ps_cases;
mod reg_cases;

use std::process::ExitCode;
use std::time::Duration;

use prism_acceptance::backends::BackendUnderTest;
use prism_acceptance::matrix::{Matrix, Named, within};
use prism_acceptance::pubsub::BrokerUnderTest;
use prism_acceptance::registry::RegistryUnderTest;
use prism_acceptance::servers::{NatsServer, PostgresServer, RedisServer};

/// Longest one case may take before it counts as failed (hung).
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&filter)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("acceptance suite could not run: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(filter: &[String]) -> anyhow::Result<bool> {
    let selected =
        |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let mut matrix = Matrix::default();

    let backends = BackendUnderTest::all().await?;
    let cases: Vec<&kv_cases::Case> = kv_cases::CASES
        .iter()
        .filter(|c| selected(c.name))
        .collect();
    matrix
        .part("KeyValue", &cases, &backends, async |case, backend, _| {
            run_case(case, backend).await
        })
        .await;

    let brokers = BrokerUnderTest::all().await?;
    let cases: Vec<&ps_cases::Case> = ps_cases::CASES
        .iter()
        .filter(|c| selected(c.name))
        .collect();
    matrix
        .part("PubSub", &cases, &brokers, async |case, broker, _| {
            run_ps_case(case, broker).await
        })
        .await;

    let (redis, nats, postgres) = (
        RedisServer::start().await?,
        NatsServer::start().await?,
        PostgresServer::start().await?,
    );
    let pairs = RegistryUnderTest::all(&redis, &nats, &postgres);
    let cases: Vec<&reg_cases::Case> = reg_cases::CASES
        .iter()
        .filter(|c| selected(c.name))
        .collect();
    matrix
        .part(
            "Registry (registry+messaging)",
            &cases,
            &pairs,
            async |case, pair, i| run_reg_case(case, pair, i).await,
        )
        .await;

    Ok(matrix.finish())
}

impl Named for kv_cases::Case {
    fn name(&self) -> &str {
        self.name
    }
}

impl Named for ps_cases::Case {
    fn name(&self) -> &str {
        self.name
    }
}

impl Named for reg_cases::Case {
    fn name(&self) -> &str {
        self.name
    }
}

async fn run_ps_case(case: &ps_cases::Case, broker: &BrokerUnderTest) -> Result<(), String> {
    let server = broker
        .start_prism(&["alpha", "beta"], "max_payload_bytes = 65536")
        .await
        .map_err(|e| format!("prism did not start: {e:#}"))?;
    let ctx = ps_cases::Ctx {
        a: server.pubsub("alpha"),
        b: server.pubsub("beta"),
        unknown: server.pubsub("nowhere"),
        backend: broker.name,
    };
    let outcome = within(CASE_TIMEOUT, (case.run)(&ctx)).await;
    drop(ctx);
    server
        .stop()
        .await
        .map_err(|e| format!("prism did not stop cleanly: {e:#}"))?;
    outcome
}

async fn run_reg_case(
    case: &reg_cases::Case,
    pair: &RegistryUnderTest<'_>,
    index: usize,
) -> Result<(), String> {
    // Namespaces of the pair's own: inbox subjects differ between pairs.
    let (alpha, beta) = (format!("alpha{index}"), format!("beta{index}"));
    let server = pair
        .start_prism(&[&alpha, &beta], "")
        .await
        .map_err(|e| format!("prism did not start: {e:#}"))?;
    let ctx = reg_cases::Ctx {
        a: server.registry(&alpha),
        b: server.registry(&beta),
        at_least_once: pair.at_least_once(),
    };
    let outcome = within(CASE_TIMEOUT, (case.run)(&ctx)).await;
    drop(ctx);
    server
        .stop()
        .await
        .map_err(|e| format!("prism did not stop cleanly: {e:#}"))?;
    outcome
}

async fn run_case(case: &kv_cases::Case, backend: &BackendUnderTest) -> Result<(), String> {
    let server = backend
        .start_prism(&["alpha", "beta"])
        .await
        .map_err(|e| format!("prism did not start: {e:#}"))?;
    let ctx = kv_cases::Ctx {
        a: server.kv("alpha"),
        b: server.kv("beta"),
        backend: backend.name,
    };
    let outcome = within(CASE_TIMEOUT, (case.run)(&ctx)).await;
    server
        .stop()
        .await
        .map_err(|e| format!("prism did not stop cleanly: {e:#}"))?;
    outcome
}

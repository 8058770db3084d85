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
    let mut passed = 0;
    let mut failed = 0;

    let backends = BackendUnderTest::all().await?;
    let names: Vec<&str> = backends.iter().map(|b| b.name).collect();
    let cases: Vec<&kv_cases::Case> = kv_cases::CASES
        .iter()
        .filter(|c| selected(c.name))
        .collect();
    let mut results: Vec<Vec<Result<(), String>>> = Vec::new();
    for case in &cases {
        let mut row = Vec::new();
        for backend in &backends {
            let outcome = run_case(case, backend).await;
            report(backend.name, case.name, &outcome);
            row.push(outcome);
        }
        results.push(row);
    }
    let case_names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    print_table("KeyValue", &case_names, &names, &results);
    tally(&results, &mut passed, &mut failed);

    let brokers = BrokerUnderTest::all().await?;
    let names: Vec<&str> = brokers.iter().map(|b| b.name).collect();
    let cases: Vec<&ps_cases::Case> = ps_cases::CASES
        .iter()
        .filter(|c| selected(c.name))
        .collect();
    let mut results: Vec<Vec<Result<(), String>>> = Vec::new();
    for case in &cases {
        let mut row = Vec::new();
        for broker in &brokers {
            let outcome = run_ps_case(case, broker).await;
            report(broker.name, case.name, &outcome);
            row.push(outcome);
        }
        results.push(row);
    }
    let case_names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    print_table("PubSub", &case_names, &names, &results);
    tally(&results, &mut passed, &mut failed);

    let (redis, nats, postgres) = (
        RedisServer::start().await?,
        NatsServer::start().await?,
        PostgresServer::start().await?,
    );
    let pairs = RegistryUnderTest::all(&redis, &nats, &postgres);
    let names: Vec<&str> = pairs.iter().map(|p| p.name).collect();
    let cases: Vec<&reg_cases::Case> = reg_cases::CASES
        .iter()
        .filter(|c| selected(c.name))
        .collect();
    let mut results: Vec<Vec<Result<(), String>>> = Vec::new();
    for case in &cases {
        let mut row = Vec::new();
        for (i, pair) in pairs.iter().enumerate() {
            let outcome = run_reg_case(case, pair, i).await;
            report(pair.name, case.name, &outcome);
            row.push(outcome);
        }
        results.push(row);
    }
    let case_names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    print_table(
        "Registry (registry+messaging)",
        &case_names,
        &names,
        &results,
    );
    tally(&results, &mut passed, &mut failed);

    println!("\n{passed} passed, {failed} failed");
    Ok(failed == 0 && passed > 0)
}

fn report(backend: &str, case: &str, outcome: &Result<(), String>) {
    match outcome {
        Ok(()) => println!("test {backend}::{case} ... ok"),
        Err(e) => println!("test {backend}::{case} ... FAILED\n    {e}"),
    }
}

fn tally(results: &[Vec<Result<(), String>>], passed: &mut usize, failed: &mut usize) {
    let bad = results.iter().flatten().filter(|r| r.is_err()).count();
    *failed += bad;
    *passed += results.iter().flatten().count() - bad;
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
    let outcome = match tokio::time::timeout(CASE_TIMEOUT, (case.run)(&ctx)).await {
        Ok(result) => result.map_err(|e| format!("{e:#}")),
        Err(_) => Err(format!("timed out after {} s", CASE_TIMEOUT.as_secs())),
    };
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
    let outcome = match tokio::time::timeout(CASE_TIMEOUT, (case.run)(&ctx)).await {
        Ok(result) => result.map_err(|e| format!("{e:#}")),
        Err(_) => Err(format!("timed out after {} s", CASE_TIMEOUT.as_secs())),
    };
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
    let outcome = match tokio::time::timeout(CASE_TIMEOUT, (case.run)(&ctx)).await {
        Ok(result) => result.map_err(|e| format!("{e:#}")),
        Err(_) => Err(format!("timed out after {} s", CASE_TIMEOUT.as_secs())),
    };
    server
        .stop()
        .await
        .map_err(|e| format!("prism did not stop cleanly: {e:#}"))?;
    outcome
}

fn print_table(part: &str, cases: &[&str], backends: &[&str], results: &[Vec<Result<(), String>>]) {
    let width = cases.iter().map(|c| c.len()).max().unwrap_or(4).max(5);
    let col = backends.iter().map(|b| b.len()).max().unwrap_or(9).max(9);
    print!("\n{part} compliance\n{:<width$}", "case");
    for b in backends {
        print!("  {b:^col$}");
    }
    println!();
    for (case, row) in cases.iter().zip(results) {
        print!("{case:<width$}");
        for r in row {
            print!("  {:^col$}", if r.is_ok() { "pass" } else { "FAIL" });
        }
        println!();
    }
    print!("{:<width$}", "total");
    for (i, _) in backends.iter().enumerate() {
        let ok = results
            .iter()
            .filter(|row| row.get(i).is_some_and(|r| r.is_ok()))
            .count();
        print!("  {:^col$}", format!("{ok}/{}", results.len()));
    }
    println!();
}

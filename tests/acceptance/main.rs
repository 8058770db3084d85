//! The acceptance suite: every case runs against every backend (MemStore,
//! Redis) through Prism over gRPC, with the same test bodies. Prints a
//! per-backend compliance table and fails if any case fails anywhere.

mod kv_cases;

use std::process::ExitCode;
use std::time::Duration;

use prism_acceptance::backends::BackendUnderTest;

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
    let backends = BackendUnderTest::all().await?;
    let cases: Vec<&kv_cases::Case> = kv_cases::CASES
        .iter()
        .filter(|c| filter.is_empty() || filter.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    // results[case][backend]
    let mut results: Vec<Vec<Result<(), String>>> = Vec::new();
    for case in &cases {
        let mut row = Vec::new();
        for backend in &backends {
            let outcome = run_case(case, backend).await;
            match &outcome {
                Ok(()) => println!("test {}::{} ... ok", backend.name, case.name),
                Err(e) => println!("test {}::{} ... FAILED\n    {e}", backend.name, case.name),
            }
            row.push(outcome);
        }
        results.push(row);
    }
    print_table(&cases, &backends, &results);
    let failed = results.iter().flatten().filter(|r| r.is_err()).count();
    let passed = results.iter().flatten().count() - failed;
    println!("\n{passed} passed, {failed} failed");
    Ok(failed == 0 && passed > 0)
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

fn print_table(
    cases: &[&kv_cases::Case],
    backends: &[BackendUnderTest],
    results: &[Vec<Result<(), String>>],
) {
    let width = cases.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    print!("\nKeyValue compliance\n{:<width$}", "case");
    for b in backends {
        print!("  {:^9}", b.name);
    }
    println!();
    for (case, row) in cases.iter().zip(results) {
        print!("{:<width$}", case.name);
        for r in row {
            print!("  {:^9}", if r.is_ok() { "pass" } else { "FAIL" });
        }
        println!();
    }
    print!("{:<width$}", "total");
    for (i, _) in backends.iter().enumerate() {
        let ok = results
            .iter()
            .filter(|row| row.get(i).is_some_and(|r| r.is_ok()))
            .count();
        print!("  {:^9}", format!("{ok}/{}", results.len()));
    }
    println!();
}

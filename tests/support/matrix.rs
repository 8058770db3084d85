//! The acceptance matrix: every case of a part run against every target of
//! it (backend, broker, registry pair), a line per outcome as the test
//! harness prints them, a compliance table per part, and the totals over
//! all parts.

use std::future::Future;
use std::time::Duration;

use crate::backends::BackendUnderTest;
use crate::pubsub::BrokerUnderTest;
use crate::registry::RegistryUnderTest;

/// A case, or a target it runs against, as the matrix names it.
pub trait Named {
    fn name(&self) -> &str;
}

impl<N: Named + ?Sized> Named for &N {
    fn name(&self) -> &str {
        (**self).name()
    }
}

impl Named for BackendUnderTest {
    fn name(&self) -> &str {
        self.name
    }
}

impl Named for BrokerUnderTest {
    fn name(&self) -> &str {
        self.name
    }
}

impl Named for RegistryUnderTest<'_> {
    fn name(&self) -> &str {
        self.name
    }
}

/// The outcomes of the parts run so far.
#[derive(Default)]
pub struct Matrix {
    passed: usize,
    failed: usize,
}

impl Matrix {
    /// Runs each of `cases` against each of `targets` in turn — `run` gets
    /// the case, the target and the target's index — printing each outcome
    /// as it comes, then the part's table headed `title`.
    pub async fn part<C: Named, T: Named>(
        &mut self,
        title: &str,
        cases: &[C],
        targets: &[T],
        mut run: impl AsyncFnMut(&C, &T, usize) -> Result<(), String>,
    ) {
        let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
        let mut results: Vec<Vec<Result<(), String>>> = Vec::new();
        for case in cases {
            let mut row = Vec::new();
            for (i, target) in targets.iter().enumerate() {
                let outcome = run(case, target, i).await;
                report(target.name(), case.name(), &outcome);
                row.push(outcome);
            }
            results.push(row);
        }
        let case_names: Vec<&str> = cases.iter().map(|c| c.name()).collect();
        print_table(title, &case_names, &names, &results);
        tally(&results, &mut self.passed, &mut self.failed);
    }

    /// Prints the totals; true if nothing failed and something passed.
    pub fn finish(&self) -> bool {
        let (passed, failed) = (self.passed, self.failed);
        println!("\n{passed} passed, {failed} failed");
        failed == 0 && passed > 0
    }
}

/// One case's outcome, failed if it takes longer than `limit` (hung).
pub async fn within(
    limit: Duration,
    case: impl Future<Output = anyhow::Result<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(limit, case).await {
        Ok(result) => result.map_err(|e| format!("{e:#}")),
        Err(_) => Err(format!("timed out after {} s", limit.as_secs())),
    }
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

//! `--guard FILE`: the perf regression guard CI runs (`just bench-guard`).
//! Each row the file names must not be worse than its bound, in the row's
//! own better direction: its ratio to the same-run baseline (machine speed
//! cancels out), or its value where the baseline is zero (dropped messages).
//! Bounds sit well outside the run-to-run spread seen on the 2-core box, so
//! the guard fails on a regression (a path that got about twice as slow, a
//! fan-out that went back to one broker subscription per subscriber), not
//! on noise. Tighten a bound when a change makes a figure reliably better.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::report::{Better, Report, Row};

/// The file also holds `why`: the reasons for the bounds, for people.
#[derive(Deserialize)]
struct GuardFile {
    /// Row name -> the worst acceptable ratio (or value, for a zero baseline).
    rows: BTreeMap<String, f64>,
}

/// Checks `report` against the bounds in `path`. `partial`: only some
/// sections ran (`--only`), so rows from the others are not missing.
pub fn check(report: &Report, path: &Path, partial: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the guard file {}", path.display()))?;
    let guard: GuardFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a guard file", path.display()))?;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, &bound) in &guard.rows {
        let Some(row) = report.rows().iter().find(|r| &r.name == name) else {
            if !partial {
                // Rows are tracked by name across versions: a rename is a regression too.
                failures.push(format!(
                    "{name}: no such row in this run (renamed or removed?)"
                ));
            }
            continue;
        };
        checked += 1;
        if let Some(failure) = verdict(row, bound) {
            failures.push(failure);
        }
    }
    if failures.is_empty() {
        println!(
            "guard: {checked} rows within the bounds of {}",
            path.display()
        );
        return Ok(());
    }
    bail!(
        "perf regression guard ({}): {} of {} rows out of bounds:\n  {}",
        path.display(),
        failures.len(),
        guard.rows.len(),
        failures.join("\n  ")
    )
}

/// Why `row` breaks `bound`, or None when it keeps it.
fn verdict(row: &Row, bound: f64) -> Option<String> {
    let (figure, what) = if row.baseline_value == 0.0 {
        (row.value, format!("{} {}", row.value, row.unit))
    } else {
        (
            row.ratio,
            format!("ratio {:.3} to {}", row.ratio, row.baseline),
        )
    };
    let kept = match row.better {
        Better::Higher => figure >= bound,
        Better::Lower => figure <= bound,
    };
    // NaN (a figure that could not be measured) keeps no bound.
    if kept {
        return None;
    }
    let side = match row.better {
        Better::Higher => "at least",
        Better::Lower => "at most",
    };
    Some(format!("{}: {what}, must be {side} {bound}", row.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_each_rows_direction() {
        let rate = Row::new("r", 50.0, "req/s", "base", 100.0);
        assert!(verdict(&rate, 0.4).is_none());
        assert!(verdict(&rate, 0.6).is_some_and(|f| f.contains("at least 0.6")));
        let time = Row::new("t", 300.0, "us", "base", 100.0);
        assert!(verdict(&time, 4.0).is_none());
        assert!(verdict(&time, 2.0).is_some_and(|f| f.contains("at most 2")));
        let dropped = Row::target("d", 3.0, "msg", "target_dropped", 0.0);
        assert!(verdict(&dropped, 0.0).is_some_and(|f| f.contains("3 msg")));
        let none = Row::target("d", 0.0, "msg", "target_dropped", 0.0);
        assert!(verdict(&none, 0.0).is_none());
        let unmeasured = Row::new("n", f64::NAN, "req/s", "base", 100.0);
        assert!(verdict(&unmeasured, 0.1).is_some());
    }
}

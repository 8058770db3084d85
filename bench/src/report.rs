//! bench/results.json rows (name, value, unit, baseline, baseline_value,
//! ratio) and the printed table.

use std::path::Path;

use serde::Serialize;

#[derive(Serialize)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: String,
    pub baseline_value: f64,
    /// value / baseline_value.
    pub ratio: f64,
}

impl Row {
    pub fn new(
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline: impl Into<String>,
        baseline_value: f64,
    ) -> Row {
        let ratio = if baseline_value == 0.0 {
            f64::NAN
        } else {
            value / baseline_value
        };
        Row {
            name: name.into(),
            value,
            unit,
            baseline: baseline.into(),
            baseline_value,
            ratio,
        }
    }
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(&self.rows)? + "\n")?;
        Ok(())
    }

    pub fn print(&self) {
        println!(
            "{:<36} {:>12} {:<6} {:<38} {:>12} {:>7}",
            "name", "value", "unit", "baseline", "baseline", "ratio"
        );
        for r in &self.rows {
            println!(
                "{:<36} {:>12.2} {:<6} {:<38} {:>12.2} {:>7.3}",
                r.name, r.value, r.unit, r.baseline, r.baseline_value, r.ratio
            );
        }
    }
}

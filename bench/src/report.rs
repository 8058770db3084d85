//! bench/results.json rows (name, value, unit, baseline, baseline_value,
//! ratio, plus which direction is better and whether the baseline was
//! measured in this run or is a constant target) and the printed table.

use std::path::Path;

use serde::Serialize;

/// Which way a figure improves.
#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// What the baseline column holds.
#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BaselineKind {
    /// Measured in the same run by the same load generator.
    Measured,
    /// A constant goal, not a measurement.
    Target,
}

#[derive(Serialize)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: String,
    pub baseline_value: f64,
    /// value / baseline_value.
    pub ratio: f64,
    pub better: Better,
    pub baseline_kind: BaselineKind,
}

fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline == 0.0 {
        f64::NAN
    } else {
        value / baseline
    }
}

impl Row {
    /// A figure against a baseline measured in the same run. The unit
    /// decides the direction: rates are better higher, times lower.
    pub fn new(
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline: impl Into<String>,
        baseline_value: f64,
    ) -> Row {
        Row {
            name: name.into(),
            value,
            unit,
            baseline: baseline.into(),
            baseline_value,
            ratio: ratio(value, baseline_value),
            better: better_for(unit),
            baseline_kind: BaselineKind::Measured,
        }
    }

    /// A figure against a constant goal (`target_*`).
    pub fn target(
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: impl Into<String>,
        target_value: f64,
    ) -> Row {
        Row {
            baseline_kind: BaselineKind::Target,
            ..Row::new(name, value, unit, target, target_value)
        }
    }
}

fn better_for(unit: &str) -> Better {
    match unit {
        "req/s" | "msg/s" | "x" => Better::Higher,
        _ => Better::Lower,
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

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(&self.rows)? + "\n")?;
        Ok(())
    }

    pub fn print(&self) {
        println!(
            "{:<44} {:>12} {:<6} {:<8} {:<44} {:>12} {:>7}",
            "name",
            "value",
            "unit",
            "better",
            "baseline (T = constant target)",
            "baseline",
            "ratio"
        );
        for r in &self.rows {
            let better = match r.better {
                Better::Higher => "higher",
                Better::Lower => "lower",
            };
            let mark = match r.baseline_kind {
                BaselineKind::Measured => "",
                BaselineKind::Target => "T ",
            };
            println!(
                "{:<44} {:>12.2} {:<6} {:<8} {:<44} {:>12.2} {:>7.3}",
                r.name,
                r.value,
                r.unit,
                better,
                format!("{mark}{}", r.baseline),
                r.baseline_value,
                r.ratio
            );
        }
    }
}

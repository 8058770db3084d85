//! The Prometheus text exposition format (version 0.0.4): `# HELP` and
//! `# TYPE` once per family, then one line per series. Label values are
//! escaped as the format requires, so a namespace name can never break a
//! line or forge a series.

use std::fmt::Write;

use super::histogram::Histogram;

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One scrape's text, written family by family.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family; every series written until the next `family` call
    /// belongs to it (`name` without the `_bucket`/`_sum`/`_count` suffixes).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        self.text.push(' ');
        write_value(&mut self.text, value);
        self.text.push('\n');
    }

    /// `_bucket` series (cumulative, ending with `+Inf`), then `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let snapshot = histogram.snapshot();
        let mut cumulative = 0u64;
        for (bound, count) in snapshot.buckets() {
            cumulative += count;
            let le = format_bound(bound);
            let _ = write!(self.text, "{name}_bucket");
            write_labels(&mut self.text, labels, Some(le.as_str()));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let _ = write!(self.text, "{name}_bucket");
        write_labels(&mut self.text, labels, Some("+Inf"));
        let _ = writeln!(self.text, " {}", snapshot.count);
        let _ = write!(self.text, "{name}_sum");
        write_labels(&mut self.text, labels, None);
        self.text.push(' ');
        write_value(&mut self.text, snapshot.sum_seconds());
        self.text.push('\n');
        let _ = write!(self.text, "{name}_count");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", snapshot.count);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    out.push('}');
}

/// Backslash, double quote and line feed are the three characters a label
/// value must escape.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

fn format_bound(seconds: f64) -> String {
    let mut s = String::new();
    write_value(&mut s, seconds);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.family("m", Kind::Gauge, "help with \\ and\nnewline");
        e.sample("m", &[("namespace", "a\"b\\c\nd")], 1.0);
        let text = e.finish();
        assert!(text.contains("# HELP m help with \\\\ and\\nnewline\n"));
        assert!(
            text.contains("m{namespace=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        let mut e = Exposition::default();
        e.family("d_seconds", Kind::Histogram, "d");
        e.histogram("d_seconds", &[("x", "y")], &h);
        let text = e.finish();
        assert!(
            text.contains("d_seconds_bucket{x=\"y\",le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{x=\"y\",le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{x=\"y\",le=\"10\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{x=\"y\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("d_seconds_count{x=\"y\"} 3\n"), "{text}");
        assert!(
            text.contains("d_seconds_sum{x=\"y\"} 100.00305\n"),
            "{text}"
        );
    }
}

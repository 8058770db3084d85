//! `[telemetry]`: metrics and traces.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[telemetry]`: how Prism is observed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Serve Prometheus metrics at `http://<metrics_listen>/metrics`
    /// (plain HTTP, its own port); unset = no metrics listener.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Export traces over OTLP/gRPC to this collector
    /// (`http://collector:4317`, plaintext); unset = no spans are made at all.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of traces started here that are kept (0..=1); a caller's
    /// `traceparent` sampled flag decides for the traces it continues.
    #[serde(default = "default_trace_sample_ratio")]
    pub trace_sample_ratio: f64,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics_listen: None,
            otlp_endpoint: None,
            trace_sample_ratio: default_trace_sample_ratio(),
            service_name: default_service_name(),
        }
    }
}

fn default_trace_sample_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "prism".into()
}

//! OpenTelemetry traces over OTLP/gRPC (`[telemetry] otlp_endpoint`).
//!
//! Spans are `tracing` spans of target [`TARGET`], exported by
//! `tracing-opentelemetry`: request (server) → pattern call → capability →
//! backend command, and a consumer span per delivered PubSub message. W3C
//! `traceparent`/`tracestate` are read from gRPC metadata and written into
//! published messages' metadata, so a consumer's work joins the
//! publisher's trace. With no endpoint configured nothing is created: every
//! helper here checks [`enabled`] first (one relaxed load), so the data path
//! pays nothing for tracing it does not do.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;

/// The `tracing` target of every exported span (the OTLP layer's filter
/// passes these and nothing else: log events stay logs).
pub const TARGET: &str = "prism_trace";

/// W3C trace-context keys, in gRPC metadata and in PubSub message metadata.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// `trace_sample_ratio` as a threshold on a random u64.
static ROOT_THRESHOLD: AtomicU64 = AtomicU64::new(u64::MAX);
static ROOT_DRAWS: AtomicU64 = AtomicU64::new(0);

/// Whether spans are being exported.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether work here is part of a sampled trace: traces are on and a span
/// of ours is current. Unsampled work makes no spans at all (building a
/// span only to drop it costs about a quarter of a KV GET's throughput).
#[inline]
fn active() -> bool {
    enabled() && is_ours(&tracing::Span::current())
}

/// Whether `span` is one of Prism's exported spans (not none, and not some
/// library's span that only the log layer sees).
pub fn is_ours(span: &tracing::Span) -> bool {
    span.metadata().is_some_and(|m| m.target() == TARGET)
}

/// Whether a trace that starts here is kept (`trace_sample_ratio`). The
/// decision is made once, at the root; the SDK then keeps every span whose
/// parent is sampled.
pub fn sample_root() -> bool {
    let threshold = ROOT_THRESHOLD.load(Ordering::Relaxed);
    if threshold == u64::MAX {
        return true;
    }
    if threshold == 0 {
        return false;
    }
    // splitmix64 over a counter: uniform enough to sample by, and lock-free.
    let mut z = ROOT_DRAWS
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) < threshold
}

/// Whether a caller's context decides: a valid remote span context is
/// kept when it is sampled and dropped when not (W3C sampled flag).
pub fn parent_sampled(cx: &opentelemetry::Context) -> Option<bool> {
    use opentelemetry::trace::TraceContextExt;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.is_sampled())
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("[telemetry] otlp_endpoint {endpoint:?}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Builds the OTLP exporter and returns the tracer for the
/// `tracing-opentelemetry` layer; `None` when no endpoint is configured.
/// Must run inside the tokio runtime (the tonic channel lives on it).
pub fn init(
    config: &TelemetryConfig,
) -> Result<Option<opentelemetry_sdk::trace::Tracer>, TraceError> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TraceError::Exporter {
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        })?;
    // Parent-based: a caller's sampled flag is honoured. Roots are only
    // made for traces `sample_root` keeps, so the SDK keeps them all.
    let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    let ratio = config.trace_sample_ratio.clamp(0.0, 1.0);
    let threshold = if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio * u64::MAX as f64) as u64
    };
    ROOT_THRESHOLD.store(threshold, Ordering::Relaxed);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    let tracer = provider.tracer("prism");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(tracer))
}

/// Exports what is still buffered (at shutdown; a no-op without traces).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "could not flush the last spans to the OTLP endpoint");
        }
    }
}

/// The caller's trace context from request headers (none: a new trace).
pub fn extract_headers(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The trace context a message's metadata carries.
pub fn extract_metadata(metadata: &[(String, String)]) -> Option<opentelemetry::Context> {
    if !metadata.iter().any(|(k, _)| k == TRACEPARENT) {
        return None;
    }
    Some(TraceContextPropagator::new().extract(&MetadataCarrier(metadata)))
}

/// Writes `span`'s context into message metadata (replacing any trace
/// context already there), so whoever reads the message continues the trace.
pub fn inject_metadata(span: &tracing::Span, metadata: &mut Vec<(String, String)>) {
    let cx = span.context();
    let mut fields = Vec::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut FieldSink(&mut fields));
    if fields.is_empty() {
        return;
    }
    metadata.retain(|(k, _)| k != TRACEPARENT && k != TRACESTATE);
    metadata.extend(fields);
}

/// Runs `fut` inside a capability span (`kv.get`, `pubsub.publish`, ...).
pub async fn capability<F: Future>(name: &'static str, fut: F) -> F::Output {
    if !active() {
        return fut.await;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "capability",
        otel.name = name,
        otel.kind = "internal",
        prism.capability = name,
    );
    fut.instrument(span).await
}

/// Runs `fut`, one backend command, inside a client span naming the backend.
pub async fn command<F, T, E>(
    backend: Option<&crate::telemetry::backends::BackendStats>,
    operation: &'static str,
    fut: F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    if !active() {
        return fut.await;
    }
    let (name, kind) = backend
        .map(|b| (b.name(), b.kind()))
        .unwrap_or(("unbound", "none"));
    let span = tracing::info_span!(
        target: TARGET,
        "backend",
        otel.name = format!("{kind} {operation}"),
        otel.kind = "client",
        db.system = kind,
        db.operation = operation,
        prism.backend = name,
        otel.status_code = tracing::field::Empty,
        error.message = tracing::field::Empty,
    );
    let result = fut.instrument(span.clone()).await;
    if let Err(e) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("error.message", tracing::field::display(e));
    }
    result
}

/// The span of one pattern export (`Span::none()` without traces); the
/// call future is instrumented with it, so it follows the call onto the
/// background lane.
pub fn pattern_span(namespace: &str, export: &'static str) -> tracing::Span {
    if !active() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "pattern",
        otel.name = format!("pattern {export}"),
        otel.kind = "internal",
        prism.namespace = namespace,
        prism.export = export,
    )
}

/// The span of one delivered PubSub message, a child of the publisher's
/// context when the message carries one. `Span::none()` without traces.
pub fn delivery_span(namespace: &str, topic: &str, metadata: &[(String, String)]) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let parent = extract_metadata(metadata);
    let sampled = match parent.as_ref().and_then(parent_sampled) {
        Some(sampled) => sampled,
        None => sample_root(),
    };
    if !sampled {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "deliver",
        otel.name = format!("deliver {namespace}"),
        otel.kind = "consumer",
        prism.namespace = namespace,
        messaging.system = "prism",
        messaging.operation = "deliver",
        messaging.destination.name = topic,
    );
    if let Some(cx) = parent {
        let _ = span.set_parent(cx);
    }
    span
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataCarrier<'a>(&'a [(String, String)]);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct FieldSink<'a>(&'a mut Vec<(String, String)>);

impl Injector for FieldSink<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_in_headers_is_the_parent() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let cx = extract_headers(&headers);
        use opentelemetry::trace::TraceContextExt;
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
    }

    #[test]
    fn metadata_without_traceparent_has_no_context() {
        assert!(extract_metadata(&[("k".into(), "v".into())]).is_none());
        let with = [(
            TRACEPARENT.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        )];
        assert!(extract_metadata(&with).is_some());
    }
}

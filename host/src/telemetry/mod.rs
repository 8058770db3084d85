//! Telemetry: Prometheus metrics on their own HTTP listener, and
//! OpenTelemetry traces over OTLP.
//!
//! - [`requests`]: a gRPC layer counting calls by namespace, method and code;
//! - [`backends`]: backend health and command timing;
//! - [`scrape`]: one `/metrics` answer, from those and the live namespaces;
//! - [`http`]: the listener;
//! - [`traces`]: the OTLP exporter, trace-context propagation, and the
//!   pattern, capability, backend and delivery spans;
//! - [`request_span`]: the server span of each gRPC call.

pub mod backends;
pub mod exposition;
pub mod histogram;
pub mod http;
pub mod methods;
pub mod request_span;
pub mod requests;
pub mod scrape;
pub mod traces;

//! Telemetry instruments, on the bottom floor so every layer may record:
//!
//! - [`backends`]: backend health and command timing;
//! - [`histogram`]: the latency histogram the metrics share;
//! - [`methods`]: the gRPC methods metrics and spans are labelled by;
//! - [`exposition`]: the Prometheus text format;
//! - [`traces`]: the OTLP exporter, trace-context propagation, and the
//!   pattern, capability, backend and delivery spans.
//!
//! What reads them out lives beside the server (`server/`): the gRPC layers
//! that count calls and open their spans, and the `/metrics` listener.

pub mod backends;
pub mod exposition;
pub mod histogram;
pub mod methods;
pub mod traces;

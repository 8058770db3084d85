//! Telemetry: Prometheus metrics on their own HTTP listener.
//!
//! - [`requests`]: a gRPC layer counting calls by namespace, method and code;
//! - [`backends`]: backend health and command timing;
//! - [`scrape`]: one `/metrics` answer, from those and the live namespaces;
//! - [`http`]: the listener.

pub mod backends;
pub mod exposition;
pub mod histogram;
pub mod http;
pub mod methods;
pub mod requests;
pub mod scrape;

//! The Redis backends (`type = "redis"`): KV with storage quotas, the
//! registry, and PubSub on pub/sub (`stream = false`) or Streams
//! (`stream = true`), all on one shared connection per URL.

pub mod kv;
pub mod pubsub;
mod quota;
pub mod registry;
pub mod streams;

pub use kv::{RedisConfigError, RedisKv};
pub use pubsub::RedisBroker;
pub use registry::RedisRegistry;
pub use streams::RedisStreams;

/// A client for `config.url`: `rediss://` speaks TLS, trusting `tls_ca`
/// (else the system's roots) and presenting `tls_cert` when set.
pub(crate) fn client(
    config: &crate::config::RedisConfig,
) -> Result<redis::Client, RedisConfigError> {
    use kv::KindDescription;
    let unusable = |e: redis::RedisError| {
        RedisConfigError(format!("not a usable Redis URL ({})", e.kind_description()))
    };
    let tls = config.tls();
    if !tls.is_set() {
        return redis::Client::open(config.url.as_str()).map_err(unusable);
    }
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| RedisConfigError(format!("{field}: cannot read {}: {e}", path.display())))
    };
    let client_tls = match (tls.cert, tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("tls_cert", cert)?,
            client_key: read("tls_key", key)?,
        }),
        _ => None,
    };
    let root_cert = tls.ca.map(|ca| read("tls_ca", ca)).transpose()?;
    redis::Client::build_with_tls(
        config.url.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| RedisConfigError(format!("TLS set-up failed ({e})")))
}

//! Backends: one trait per capability over plain types, so capability code
//! never depends on a backend crate. The traits are [`kv`], [`pubsub`] and
//! [`registry`]; each ecosystem's implementations have a folder ([`mem`],
//! [`redis`], [`nats`], [`postgres`]); [`Backends::build`] makes them from
//! config (the one place that names them all).

pub mod control;
pub mod envelope;
pub mod kv;
pub mod mem;
pub mod nats;
pub mod postgres;
pub mod pubsub;
pub mod redis;
pub mod registry;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::BackendConfig;
use crate::telemetry::backends::BackendStats;

pub use kv::{KvBackend, KvEntry, QuotaKind, ScanPage, StorageQuota, Usage};
pub use mem::{MemBroker, MemStore};
pub use pubsub::PubSubBackend;
pub use redis::RedisKv;
pub use registry::RegistryBackend;

/// Ring size of the embedded broker's topics (subscribers asking for more get more).
const MEMBROKER_BUFFER: usize = 1024;

/// What a backend can fail with. Messages here may reach clients, so they
/// name the backend by its summary and never carry credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("{backend} is unavailable: {reason}")]
    Unavailable { backend: String, reason: String },
    #[error("{0}")]
    CapacityExceeded(String),
    /// A namespace quota (not the backend's own capacity) refused the write.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Internal(String),
}

impl BackendError {
    /// A cursor that no scan of this backend produced.
    pub fn malformed_cursor() -> BackendError {
        BackendError::InvalidArgument(
            "scan cursor is malformed; pass back the cursor a scan returned".into(),
        )
    }
}

/// A backend could not be built; `field` is the config field to fix.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BackendBuildError {
    pub field: String,
    pub message: String,
}

/// One configured backend: the capabilities it serves.
#[derive(Clone)]
struct Backend {
    kv: Option<Arc<dyn KvBackend>>,
    pubsub: Option<Arc<dyn PubSubBackend>>,
    registry: Option<Arc<dyn RegistryBackend>>,
}

/// The backends named in config, shared by every namespace bound to them.
#[derive(Default, Clone)]
pub struct Backends {
    by_name: BTreeMap<String, Backend>,
    /// Health and command timing, for metrics.
    stats: BTreeMap<String, Arc<BackendStats>>,
    /// The configured `type` of each.
    kinds: BTreeMap<String, &'static str>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.by_name.keys().map(|k| (k, self.summary(k))))
            .finish()
    }
}

impl Backends {
    /// Builds every configured backend (connections are made lazily, so an
    /// unreachable server does not stop start-up). Needs a tokio runtime.
    pub fn build(configs: &BTreeMap<String, BackendConfig>) -> Result<Backends, BackendBuildError> {
        let mut by_name = BTreeMap::new();
        let mut stats = BTreeMap::new();
        let mut kinds = BTreeMap::new();
        // Backends naming the same Redis URL share one multiplexed connection.
        let mut connections: BTreeMap<String, ::redis::aio::ConnectionManager> = BTreeMap::new();
        for (name, config) in configs {
            let url_error = |e: redis::RedisConfigError| build_error(name, e.to_string());
            let backend = match config {
                BackendConfig::Memstore(c) => Backend {
                    kv: Some(MemStore::new(name, c)),
                    pubsub: Some(MemBroker::new(name, MEMBROKER_BUFFER)),
                    registry: Some(mem::MemRegistry::new(name)),
                },
                BackendConfig::Redis(c) => {
                    let conn = match connections.get(&c.url) {
                        Some(conn) => conn.clone(),
                        None => {
                            let conn = RedisKv::connect(c).map_err(url_error)?;
                            connections.insert(c.url.clone(), conn.clone());
                            conn
                        }
                    };
                    let kv = RedisKv::with_connection(name, c, conn).map_err(url_error)?;
                    let pubsub: Arc<dyn PubSubBackend> = if c.stream {
                        redis::RedisStreams::new(c, kv.clone()).map_err(url_error)?
                    } else {
                        redis::RedisBroker::new(name, c, kv.clone(), MEMBROKER_BUFFER)
                            .map_err(url_error)?
                    };
                    Backend {
                        registry: Some(redis::RedisRegistry::new(kv.clone())),
                        kv: Some(kv),
                        pubsub: Some(pubsub),
                    }
                }
                BackendConfig::Postgres(c) => {
                    let db = postgres::Postgres::new(name, c)
                        .map_err(|e| build_error(name, e.to_string()))?;
                    Backend {
                        kv: Some(postgres::kv::PgKv::new(db.clone())),
                        pubsub: None,
                        registry: Some(postgres::registry::PgRegistry::new(db)),
                    }
                }
                BackendConfig::Nats(c) => Backend {
                    kv: None,
                    registry: None,
                    pubsub: Some(Arc::new(
                        nats::NatsBroker::new(name, c, MEMBROKER_BUFFER)
                            .map_err(|e| build_error(name, e.to_string()))?,
                    )),
                },
            };
            by_name.insert(name.clone(), backend);
            let kind = match config {
                BackendConfig::Memstore(_) => "memstore",
                BackendConfig::Redis(_) => "redis",
                BackendConfig::Nats(_) => "nats",
                BackendConfig::Postgres(_) => "postgres",
            };
            stats.insert(name.clone(), Arc::new(BackendStats::new(name, kind)));
            kinds.insert(name.clone(), kind);
        }
        Ok(Backends {
            by_name,
            stats,
            kinds,
        })
    }

    /// The backend's health and command statistics.
    pub fn stats(&self, name: &str) -> Option<Arc<BackendStats>> {
        self.stats.get(name).cloned()
    }

    /// The backend's configured `type` (`memstore`, `redis`, `nats`, `postgres`).
    pub fn kind(&self, name: &str) -> &'static str {
        self.kinds.get(name).copied().unwrap_or("unknown")
    }

    /// Every backend's name.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    /// One line naming the backend, for logs.
    pub fn summary(&self, name: &str) -> String {
        match self.by_name.get(name) {
            Some(Backend { kv: Some(kv), .. }) => kv.summary(),
            Some(Backend {
                pubsub: Some(ps), ..
            }) => ps.summary(),
            _ => format!("backend '{name}'"),
        }
    }

    /// Whether the backend answers (every capability it serves shares one server).
    pub async fn ping(&self, name: &str) -> Result<(), BackendError> {
        match self.by_name.get(name) {
            Some(Backend { kv: Some(kv), .. }) => kv.ping().await,
            Some(Backend {
                pubsub: Some(ps), ..
            }) => ps.ping().await,
            _ => Ok(()),
        }
    }

    pub fn kv(&self, name: &str) -> Option<Arc<dyn KvBackend>> {
        self.by_name.get(name).and_then(|b| b.kv.clone())
    }

    pub fn pubsub(&self, name: &str) -> Option<Arc<dyn PubSubBackend>> {
        self.by_name.get(name).and_then(|b| b.pubsub.clone())
    }

    pub fn registry(&self, name: &str) -> Option<Arc<dyn RegistryBackend>> {
        self.by_name.get(name).and_then(|b| b.registry.clone())
    }
}

/// A backend that cannot be built, blamed on its TLS field when the message
/// names one (`tls_ca: cannot read …`), else on its URL.
fn build_error(name: &str, message: String) -> BackendBuildError {
    let field = ["tls_ca", "tls_cert", "tls_key"]
        .into_iter()
        .find(|f| message.starts_with(&format!("{f}:")))
        .unwrap_or("url");
    BackendBuildError {
        field: format!("backends.{name}.{field}"),
        message,
    }
}

/// The control store on backend `name` (its own connections: Admin
/// traffic never queues behind data calls). Connects lazily.
pub fn open_control_store(
    name: &str,
    config: &BackendConfig,
) -> Result<Arc<dyn control::ControlStore>, String> {
    match config {
        BackendConfig::Postgres(c) => Ok(Arc::new(postgres::control::PgControl::new(name, c)?)),
        BackendConfig::Nats(c) if c.jetstream => {
            Ok(Arc::new(nats::control::NatsControl::new(name, c)?))
        }
        _ => Err(format!(
            "backend '{name}' cannot be a control store; it must be {}",
            crate::config::STORE_TYPES
        )),
    }
}

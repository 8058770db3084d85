//! Backends: one trait per capability over plain types, so capability code
//! never depends on a backend crate. Built from config in [`build`].

pub mod mem_registry;
pub mod membroker;
pub mod memstore;
pub mod nats;
mod nats_fanout;
pub mod nats_wire;
pub mod postgres;
pub mod postgres_kv;
pub mod postgres_registry;
pub mod pubsub;
pub mod redis;
pub mod redis_pubsub;
mod redis_quota;
pub mod redis_registry;
pub mod redis_streams;
pub mod registry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::BackendConfig;
use crate::telemetry::backends::BackendStats;

pub use membroker::MemBroker;
pub use memstore::MemStore;
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

/// What one namespace may store on a backend; the backend enforces it
/// atomically with each write (over it: nothing of the write happens).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageQuota {
    /// The namespace the quota belongs to (for errors).
    pub namespace: Arc<str>,
    /// Its key prefix (`"orders/"`): every key the quota covers starts with it.
    pub scope: Arc<str>,
    pub max_bytes: Option<u64>,
    pub max_keys: Option<u64>,
}

/// Which storage quota a write would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Bytes,
    Keys,
}

impl StorageQuota {
    /// The error for a write that would exceed `kind`.
    pub fn exceeded(&self, kind: QuotaKind) -> BackendError {
        let (field, limit, unit) = match kind {
            QuotaKind::Bytes => ("max_stored_bytes", self.max_bytes, "bytes"),
            QuotaKind::Keys => ("max_stored_keys", self.max_keys, "keys"),
        };
        BackendError::QuotaExceeded(format!(
            "namespace '{ns}' is at its {field} quota ({limit} {unit}); nothing was written: delete keys or raise namespaces.{ns}.limits.{field}",
            ns = self.namespace,
            limit = limit.unwrap_or_default(),
        ))
    }
}

/// What one namespace stores on a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Key plus value bytes (keys as the backend stores them, scope included).
    pub bytes: u64,
    pub keys: u64,
}

/// One page of a prefix scan. Keys are the backend's (already scoped) keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanPage {
    pub keys: Vec<String>,
    /// Opaque; present when more keys may follow.
    pub cursor: Option<String>,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct KvEntry {
    pub key: String,
    pub value: Bytes,
    pub ttl: Option<Duration>,
}

/// A key-value store. Keys arrive scoped by the capability layer; the backend
/// treats them as opaque strings.
#[async_trait]
pub trait KvBackend: Send + Sync {
    /// One line for logs and errors, e.g. "MemStore (12 keys)"; never secrets.
    fn summary(&self) -> String;
    /// Whether the backend answers; drives per-namespace health.
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError>;
    /// Overwrites value and TTL.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>)
    -> Result<(), BackendError>;
    /// Whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool, BackendError>;
    async fn exists(&self, key: &str) -> Result<bool, BackendError>;
    /// Live keys starting with `prefix` (literal), at most `limit`, after `cursor`.
    async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, BackendError>;
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError>;
    /// All entries or none (as far as the backend can promise).
    async fn set_many(&self, entries: Vec<KvEntry>) -> Result<(), BackendError>;
    /// How many of the keys existed.
    async fn delete_many(&self, keys: &[String]) -> Result<u64, BackendError>;
    /// `set_many` under a namespace quota; every key starts with `quota.scope`.
    async fn set_many_within(
        &self,
        quota: &StorageQuota,
        entries: Vec<KvEntry>,
    ) -> Result<(), BackendError>;
    /// `delete_many` in a namespace with a quota (keeps its usage exact).
    async fn delete_many_within(
        &self,
        quota: &StorageQuota,
        keys: &[String],
    ) -> Result<u64, BackendError>;
    /// What the namespace with key prefix `scope` stores (as far as the
    /// backend tracks it: Redis tracks namespaces that have a quota).
    async fn usage(&self, scope: &str) -> Result<Usage, BackendError>;
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
            let url_error = |e: redis::RedisConfigError| BackendBuildError {
                field: format!("backends.{name}.url"),
                message: e.to_string(),
            };
            let backend = match config {
                BackendConfig::Memstore(c) => Backend {
                    kv: Some(MemStore::new(name, c)),
                    pubsub: Some(MemBroker::new(name, MEMBROKER_BUFFER)),
                    registry: Some(mem_registry::MemRegistry::new(name)),
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
                        redis_streams::RedisStreams::new(c, kv.clone()).map_err(url_error)?
                    } else {
                        redis_pubsub::RedisBroker::new(name, c, kv.clone(), MEMBROKER_BUFFER)
                            .map_err(url_error)?
                    };
                    Backend {
                        registry: Some(redis_registry::RedisRegistry::new(kv.clone())),
                        kv: Some(kv),
                        pubsub: Some(pubsub),
                    }
                }
                BackendConfig::Postgres(c) => {
                    let db = postgres::Postgres::new(name, c).map_err(|e| BackendBuildError {
                        field: format!("backends.{name}.url"),
                        message: e.to_string(),
                    })?;
                    Backend {
                        kv: Some(postgres_kv::PgKv::new(db.clone())),
                        pubsub: None,
                        registry: Some(postgres_registry::PgRegistry::new(db)),
                    }
                }
                BackendConfig::Nats(c) => Backend {
                    kv: None,
                    registry: None,
                    pubsub: Some(Arc::new(
                        nats::NatsBroker::new(name, c, MEMBROKER_BUFFER).map_err(|e| {
                            BackendBuildError {
                                field: format!("backends.{name}.url"),
                                message: e.to_string(),
                            }
                        })?,
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

//! Backends: one trait per capability over plain types, so capability code
//! never depends on a backend crate. Built from config in [`build`].

pub mod membroker;
pub mod memstore;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::BackendConfig;

pub use memstore::MemStore;
pub use redis::RedisKv;

/// What a backend can fail with. Messages here may reach clients, so they
/// name the backend by its summary and never carry credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("{backend} is unavailable: {reason}")]
    Unavailable { backend: String, reason: String },
    #[error("{0}")]
    CapacityExceeded(String),
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
}

/// A backend could not be built; `field` is the config field to fix.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BackendBuildError {
    pub field: String,
    pub message: String,
}

/// The backends named in config, shared by every namespace bound to them.
#[derive(Default, Clone)]
pub struct Backends {
    kv: BTreeMap<String, Arc<dyn KvBackend>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.kv.iter().map(|(k, v)| (k, v.summary())))
            .finish()
    }
}

impl Backends {
    /// Builds every configured backend (connections are made lazily, so an
    /// unreachable server does not stop start-up). Needs a tokio runtime.
    pub fn build(configs: &BTreeMap<String, BackendConfig>) -> Result<Backends, BackendBuildError> {
        let mut kv: BTreeMap<String, Arc<dyn KvBackend>> = BTreeMap::new();
        // Backends naming the same Redis URL share one multiplexed connection.
        let mut connections: BTreeMap<String, ::redis::aio::ConnectionManager> = BTreeMap::new();
        for (name, config) in configs {
            let url_error = |e: redis::RedisConfigError| BackendBuildError {
                field: format!("backends.{name}.url"),
                message: e.to_string(),
            };
            let backend: Arc<dyn KvBackend> = match config {
                BackendConfig::Memstore(c) => MemStore::new(name, c),
                BackendConfig::Redis(c) => {
                    let conn = match connections.get(&c.url) {
                        Some(conn) => conn.clone(),
                        None => {
                            let conn = RedisKv::connect(c).map_err(url_error)?;
                            connections.insert(c.url.clone(), conn.clone());
                            conn
                        }
                    };
                    RedisKv::with_connection(name, c, conn).map_err(url_error)?
                }
            };
            kv.insert(name.clone(), backend);
        }
        Ok(Backends { kv })
    }

    /// Every backend by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<dyn KvBackend>)> {
        self.kv.iter()
    }

    pub fn kv(&self, name: &str) -> Option<Arc<dyn KvBackend>> {
        self.kv.get(name).cloned()
    }
}

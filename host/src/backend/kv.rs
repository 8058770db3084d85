//! The key-value backend trait and the plain types it speaks: keys arrive
//! scoped by the capability layer, and storage quotas are enforced by the
//! backend atomically with each write.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::BackendError;

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

//! The registry backend trait: identity records per namespace, with TTLs
//! that reads never look past. Times come from the caller (the capability
//! layer's clock), so every backend and every Prism process expire alike.

use async_trait::async_trait;

use super::BackendError;

/// Bytes of records one listing page carries at most (a page may be short
/// of its limit and carry a cursor because of it).
pub const LIST_BYTES: usize = 4 << 20;

/// One identity as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub identity: String,
    /// The pattern's encoding of the metadata (opaque here).
    pub metadata: String,
    pub registered_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub ttl_ms: Option<u64>,
}

impl IdentityRecord {
    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }
}

/// What a pattern asks to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIdentity {
    pub identity: String,
    pub metadata: String,
    pub ttl_ms: Option<u64>,
}

impl NewIdentity {
    /// The record as stored at `now_ms`.
    pub fn record(&self, now_ms: u64) -> IdentityRecord {
        IdentityRecord {
            identity: self.identity.clone(),
            metadata: self.metadata.clone(),
            registered_at_ms: now_ms,
            expires_at_ms: self.ttl_ms.map(|t| now_ms.saturating_add(t)),
            ttl_ms: self.ttl_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Stored(IdentityRecord),
    /// Not replaced: the live record that was already there.
    Exists(IdentityRecord),
}

/// One page of live records in identity order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryPage {
    pub records: Vec<IdentityRecord>,
    /// The last identity looked at, when more may follow.
    pub cursor: Option<String>,
}

/// A condition a pattern's filter implies for every record it can match:
/// the metadata, read as JSON, holds `value` (JSON text) at `path` (map
/// keys, outermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataEquals {
    pub path: Vec<String>,
    pub value: String,
}

/// The error for a namespace at its identity limit.
pub fn registry_full(namespace: &str, max: u64) -> BackendError {
    BackendError::QuotaExceeded(format!(
        "namespace '{namespace}' already holds its limit of {max} identities; unregister some or raise the max_identities setting"
    ))
}

/// Identity records of every namespace on one backend.
#[async_trait]
pub trait RegistryBackend: Send + Sync {
    /// One line for logs and errors; never secrets.
    fn summary(&self) -> String;
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Stores `entry` (registered now, expiring after its TTL). With
    /// `replace` false a live record is kept and returned as `Exists`. A new
    /// identity is refused when `namespace` holds `max_identities` live ones.
    async fn put(
        &self,
        namespace: &str,
        entry: NewIdentity,
        replace: bool,
        max_identities: u64,
        now_ms: u64,
    ) -> Result<PutOutcome, BackendError>;
    async fn get(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<Option<IdentityRecord>, BackendError>;
    /// Restarts a live record's TTL from `now_ms` (a record without a TTL
    /// is returned unchanged); None when it is not live.
    async fn renew(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<Option<IdentityRecord>, BackendError>;
    /// Whether a live record was removed (an expired one goes silently).
    async fn remove(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<bool, BackendError>;
    /// Live records with identities after `after`, at most `limit`.
    async fn list(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<RegistryPage, BackendError>;
    /// `list`, where the backend may leave out records that do not meet
    /// every condition (it may also keep them: the pattern still applies
    /// its whole filter). A page's cursor follows the same rule as `list`.
    /// Backends that cannot filter natively list everything.
    async fn list_where(
        &self,
        namespace: &str,
        conditions: &[MetadataEquals],
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<RegistryPage, BackendError> {
        let _ = conditions;
        self.list(namespace, after, limit, now_ms).await
    }
    async fn count(&self, namespace: &str, now_ms: u64) -> Result<u64, BackendError>;
}

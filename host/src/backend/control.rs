//! The control store: where a fleet of Prisms keeps Admin's documents
//! (one per namespace, one per upload) and the uploaded components' bytes,
//! so that every replica serves the same tenants and versions. It is a
//! configured backend (`[admin] store = "NAME"`): PostgreSQL (a table with
//! a revision column, LISTEN/NOTIFY) or NATS JetStream (a KV bucket and an
//! object store) — Prism keeps no store of its own.
//!
//! Documents are opaque bytes here; `admin/` gives them meaning. Every
//! write is a compare-and-set on the document's revision, revisions grow
//! across the whole store (so "every change after N" is one question), and
//! a removal is a tombstone (a document without a value), so a watcher
//! following the store learns of deletes too. Tombstones are forgotten
//! once they are older than `[admin] tombstone_ttl_ms`; a replica that
//! was away longer reads the store whole, where a document it holds and
//! the store does not is one removed. For a write, "no document" and "a
//! tombstone" are the same thing: both are expected as revision 0.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::backend::BackendError;

/// One document as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub key: String,
    /// The store-wide revision of its last write.
    pub revision: u64,
    /// None: removed (a tombstone).
    pub value: Option<Vec<u8>>,
}

/// Why a control store write did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// The document changed since the revision the writer read.
    #[error("'{key}' was changed by another writer (it is at revision {current}, not {expected})")]
    Conflict {
        key: String,
        expected: u64,
        current: u64,
    },
    #[error(transparent)]
    Store(#[from] BackendError),
}

#[async_trait]
pub trait ControlStore: Send + Sync {
    /// One line naming the store, for errors and logs (never a password).
    fn summary(&self) -> String;

    /// Every document (tombstones too) and the revision this answer is
    /// current as of (watching from there misses nothing).
    async fn load(&self) -> Result<(Vec<Document>, u64), BackendError>;

    /// Writes `value` (None: a tombstone) if the document is still at
    /// `expected` (0: it has no value — never written, removed, or
    /// forgotten). Returns the new revision.
    async fn put(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        expected: u64,
    ) -> Result<u64, ControlError>;

    /// The documents written after revision `after`, in revision order, as
    /// they are written; the stream ends with an error when the store goes away.
    async fn watch(
        &self,
        after: u64,
    ) -> Result<BoxStream<'static, Result<Document, BackendError>>, BackendError>;

    /// Keeps a component's bytes under its digest (the caller checked it).
    async fn put_blob(&self, digest: &str, bytes: Arc<[u8]>) -> Result<(), BackendError>;

    /// A component's bytes; None if the store has none under this digest.
    async fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, BackendError>;

    /// Forgets a component's bytes; absent is not an error.
    async fn delete_blob(&self, digest: &str) -> Result<(), BackendError>;

    /// Forgets the tombstones written more than `older_than` ago; returns
    /// how many went.
    async fn forget_tombstones(&self, older_than: std::time::Duration)
    -> Result<u64, BackendError>;

    /// Records what replica `replica` serves (its report replaces the last
    /// one); a report older than [`REPORT_TTL`] no longer counts.
    async fn report(&self, replica: &str, report: Vec<u8>) -> Result<(), BackendError>;

    /// The replicas' reports made within [`REPORT_TTL`].
    async fn reports(&self) -> Result<Vec<Vec<u8>>, BackendError>;
}

/// How long a replica's report counts: a replica that stopped reporting
/// (killed, cut off) leaves the fleet's status after this.
pub const REPORT_TTL: std::time::Duration = std::time::Duration::from_secs(10);

//! The `kv` capability: every key a guest names is prefixed with its
//! namespace before it reaches the backend, and stripped on the way back, so
//! a guest can neither see nor address another namespace's keys.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::guest_error;
use crate::backend::{BackendError, KvBackend, KvEntry, ScanPage};
use crate::runtime::bindings::prism::pattern::{kv, types};
use crate::runtime::bindings::{CapabilityError, Entry};

/// A hard bound on keys from any guest, user patterns included; patterns
/// apply their own (smaller) limits first.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// A hard bound on one scan page.
pub const MAX_SCAN_PAGE: u32 = 10_000;

/// One namespace's binding of the `kv` slot.
#[derive(Clone)]
pub struct KvSlot {
    backend: Arc<dyn KvBackend>,
    /// `"<namespace>/"`: namespace names cannot contain '/', so scopes never overlap.
    scope: Arc<str>,
}

impl KvSlot {
    pub fn new(namespace: &str, backend: Arc<dyn KvBackend>) -> KvSlot {
        KvSlot {
            backend,
            scope: format!("{namespace}/").into(),
        }
    }

    /// The slot of a namespace that binds no kv backend: every call answers
    /// unavailable instead of trapping, so a pattern can report it cleanly.
    pub fn unbound() -> KvSlot {
        KvSlot {
            backend: Arc::new(Unbound),
            scope: "".into(),
        }
    }

    pub fn backend(&self) -> &Arc<dyn KvBackend> {
        &self.backend
    }

    /// The backend key for a guest key, or invalid-argument past the hard bound.
    pub fn scoped(&self, key: &str) -> Result<String, CapabilityError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(CapabilityError::InvalidArgument(format!(
                "key is {} bytes; the host limit is {MAX_KEY_BYTES} bytes",
                key.len()
            )));
        }
        let mut scoped = String::with_capacity(self.scope.len() + key.len());
        scoped.push_str(&self.scope);
        scoped.push_str(key);
        Ok(scoped)
    }

    fn unscoped(&self, key: String) -> Option<String> {
        key.strip_prefix(&*self.scope).map(str::to_string)
    }

    fn scoped_all(&self, keys: &[String]) -> Result<Vec<String>, CapabilityError> {
        keys.iter().map(|k| self.scoped(k)).collect()
    }
}

/// The backend behind an unbound slot.
struct Unbound;

#[async_trait::async_trait]
impl KvBackend for Unbound {
    fn summary(&self) -> String {
        "no kv backend".into()
    }
    async fn get(&self, _: &str) -> Result<Option<Bytes>, BackendError> {
        Err(unbound())
    }
    async fn set(&self, _: &str, _: Bytes, _: Option<Duration>) -> Result<(), BackendError> {
        Err(unbound())
    }
    async fn delete(&self, _: &str) -> Result<bool, BackendError> {
        Err(unbound())
    }
    async fn exists(&self, _: &str) -> Result<bool, BackendError> {
        Err(unbound())
    }
    async fn scan(&self, _: &str, _: Option<&str>, _: usize) -> Result<ScanPage, BackendError> {
        Err(unbound())
    }
    async fn get_many(&self, _: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        Err(unbound())
    }
    async fn set_many(&self, _: Vec<KvEntry>) -> Result<(), BackendError> {
        Err(unbound())
    }
    async fn delete_many(&self, _: &[String]) -> Result<u64, BackendError> {
        Err(unbound())
    }
}

fn unbound() -> BackendError {
    BackendError::Unavailable {
        backend: "kv slot".into(),
        reason: "this namespace binds no backend to it".into(),
    }
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

impl types::Host for KvSlot {}

impl kv::Host for KvSlot {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, CapabilityError> {
        let key = self.scoped(&key)?;
        let value = self.backend.get(&key).await.map_err(guest_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), CapabilityError> {
        let key = self.scoped(&key)?;
        self.backend
            .set(&key, Bytes::from(value), ttl(ttl_ms))
            .await
            .map_err(guest_error)
    }

    async fn delete(&mut self, key: String) -> Result<bool, CapabilityError> {
        let key = self.scoped(&key)?;
        self.backend.delete(&key).await.map_err(guest_error)
    }

    async fn exists(&mut self, key: String) -> Result<bool, CapabilityError> {
        let key = self.scoped(&key)?;
        self.backend.exists(&key).await.map_err(guest_error)
    }

    async fn scan(
        &mut self,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<kv::ScanPage, CapabilityError> {
        let prefix = self.scoped(&prefix)?;
        let limit = limit.clamp(1, MAX_SCAN_PAGE) as usize;
        let page = self
            .backend
            .scan(&prefix, cursor.as_deref(), limit)
            .await
            .map_err(guest_error)?;
        // Every key the backend returns carries the scope; drop any that do not (defence in depth).
        let keys = page
            .keys
            .into_iter()
            .filter_map(|k| self.unscoped(k))
            .collect();
        Ok(kv::ScanPage {
            keys,
            cursor: page.cursor,
        })
    }

    async fn get_many(
        &mut self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, CapabilityError> {
        let keys = self.scoped_all(&keys)?;
        let values = self.backend.get_many(&keys).await.map_err(guest_error)?;
        Ok(values.into_iter().map(|v| v.map(|b| b.to_vec())).collect())
    }

    async fn set_many(&mut self, entries: Vec<Entry>) -> Result<(), CapabilityError> {
        let entries = entries
            .into_iter()
            .map(|e| {
                Ok(KvEntry {
                    key: self.scoped(&e.key)?,
                    value: Bytes::from(e.value),
                    ttl: ttl(e.ttl_ms),
                })
            })
            .collect::<Result<Vec<_>, CapabilityError>>()?;
        self.backend.set_many(entries).await.map_err(guest_error)
    }

    async fn delete_many(&mut self, keys: Vec<String>) -> Result<u32, CapabilityError> {
        let keys = self.scoped_all(&keys)?;
        let deleted = self.backend.delete_many(&keys).await.map_err(guest_error)?;
        Ok(u32::try_from(deleted).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemStore;
    use crate::config::MemStoreConfig;
    use kv::Host as _;

    #[tokio::test]
    async fn namespaces_sharing_a_backend_never_see_each_other() -> Result<(), CapabilityError> {
        let store: Arc<dyn KvBackend> = MemStore::new("shared", &MemStoreConfig::default());
        let mut a = KvSlot::new("a", store.clone());
        let mut b = KvSlot::new("b", store.clone());
        a.set("k".into(), b"from-a".to_vec(), None).await?;
        b.set("k".into(), b"from-b".to_vec(), None).await?;
        b.set("k2".into(), b"only-b".to_vec(), None).await?;
        assert_eq!(a.get("k".into()).await?, Some(b"from-a".to_vec()));
        assert_eq!(a.get("k2".into()).await?, None);
        assert_eq!(
            a.scan(String::new(), None, 100).await?.keys,
            vec!["k".to_string()]
        );
        // A prefix cannot climb out of the scope.
        assert!(a.scan("../b/".into(), None, 100).await?.keys.is_empty());
        assert!(a.delete("k2".into()).await.is_ok_and(|existed| !existed));
        assert_eq!(b.get("k2".into()).await?, Some(b"only-b".to_vec()));
        Ok(())
    }
}

//! The `kv` capability: every key a guest names is prefixed with its
//! namespace before it reaches the backend, and stripped on the way back, so
//! a guest can neither see nor address another namespace's keys.

use std::sync::Arc;

use super::slot::{Slot, SlotCore};
use std::time::Duration;

use bytes::Bytes;

use super::guest_error;
use crate::backend::{BackendError, KvBackend, KvEntry, ScanPage, StorageQuota, Usage};
use crate::capability::bindings::prism::pattern::{kv, types};
use crate::capability::bindings::{CapabilityError, Entry};

/// Hard bounds on what any guest (user patterns included) may hand the
/// host in one import call; patterns apply their own, smaller limits first.
/// Checked before the backend sees anything.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// One value.
pub const MAX_VALUE_BYTES: usize = 32 << 20;
/// Keys or entries in one batch call.
pub const MAX_BATCH: usize = 10_000;
/// Keys plus values of one batch write.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// A scan cursor (backends issue short ones).
pub const MAX_CURSOR_BYTES: usize = 4096;
/// A hard bound on one scan page.
pub const MAX_SCAN_PAGE: u32 = 10_000;

/// One namespace's binding of the `kv` slot.
#[derive(Clone)]
pub struct KvSlot {
    core: SlotCore<dyn KvBackend>,
    /// `"<namespace>/"`: namespace names cannot contain '/', so scopes never overlap.
    scope: Arc<str>,
    /// The namespace's storage quota, if it has one (enforced by the backend).
    quota: Option<Arc<StorageQuota>>,
}

impl KvSlot {
    /// `max_bytes` / `max_keys`: the namespace's storage quota (None = unlimited).
    pub fn new(
        namespace: &str,
        backend: Arc<dyn KvBackend>,
        max_bytes: Option<u64>,
        max_keys: Option<u64>,
    ) -> KvSlot {
        let scope: Arc<str> = format!("{namespace}/").into();
        let quota = (max_bytes.is_some() || max_keys.is_some()).then(|| {
            Arc::new(StorageQuota {
                namespace: namespace.into(),
                scope: scope.clone(),
                max_bytes,
                max_keys,
            })
        });
        KvSlot {
            core: SlotCore::new(backend),
            scope,
            quota,
        }
    }

    /// The slot of a namespace that binds no kv backend: every call answers
    /// unavailable instead of trapping, so a pattern can report it cleanly.
    pub fn unbound() -> KvSlot {
        KvSlot {
            core: SlotCore::new(Arc::new(Unbound)),
            scope: "".into(),
            quota: None,
        }
    }

    /// What this namespace stores on its backend.
    pub async fn usage(&self) -> Result<Usage, BackendError> {
        self.core.backend.usage(&self.scope).await
    }

    pub fn backend(&self) -> &Arc<dyn KvBackend> {
        &self.core.backend
    }

    /// Removes every key of this namespace (Admin's delete with purge);
    /// returns how many. Quota ledgers stay right: removal goes the usual way.
    pub async fn purge(&self) -> Result<u64, BackendError> {
        if self.core.read_only {
            return Ok(0);
        }
        let mut purged = 0;
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .core
                .clock
                .command(
                    "scan",
                    self.core
                        .backend
                        .scan(&self.scope, cursor.as_deref(), MAX_SCAN_PAGE as usize),
                )
                .await?;
            let keys: Vec<String> = page
                .keys
                .into_iter()
                .filter(|k| k.starts_with(&*self.scope))
                .collect();
            if !keys.is_empty() {
                purged += match &self.quota {
                    Some(quota) => {
                        self.core
                            .clock
                            .command(
                                "delete_many_within",
                                self.core.backend.delete_many_within(quota, &keys),
                            )
                            .await?
                    }
                    None => {
                        self.core
                            .clock
                            .command("delete_many", self.core.backend.delete_many(&keys))
                            .await?
                    }
                };
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(purged),
            }
        }
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
        check_batch(keys.len())?;
        keys.iter().map(|k| self.scoped(k)).collect()
    }

    async fn write(&self, entries: Vec<KvEntry>) -> Result<(), CapabilityError> {
        if self.core.read_only {
            return Ok(());
        }
        let written = match &self.quota {
            Some(quota) => {
                self.core
                    .clock
                    .command(
                        "set_many_within",
                        self.core.backend.set_many_within(quota, entries),
                    )
                    .await
            }
            None if entries.len() == 1 => {
                let mut entries = entries;
                match entries.pop() {
                    Some(e) => {
                        self.core
                            .clock
                            .command("set", self.core.backend.set(&e.key, e.value, e.ttl))
                            .await
                    }
                    None => Ok(()),
                }
            }
            None => {
                self.core
                    .clock
                    .command("set_many", self.core.backend.set_many(entries))
                    .await
            }
        };
        written.map_err(guest_error)
    }

    async fn remove(&self, keys: &[String]) -> Result<u64, CapabilityError> {
        if self.core.read_only {
            return Ok(0);
        }
        let removed = match &self.quota {
            Some(quota) => {
                self.core
                    .clock
                    .command(
                        "delete_many_within",
                        self.core.backend.delete_many_within(quota, keys),
                    )
                    .await
            }
            None => {
                self.core
                    .clock
                    .command("delete_many", self.core.backend.delete_many(keys))
                    .await
            }
        };
        removed.map_err(guest_error)
    }
}

fn check_batch(len: usize) -> Result<(), CapabilityError> {
    if len > MAX_BATCH {
        return Err(CapabilityError::InvalidArgument(format!(
            "{len} keys in one call; the host accepts at most {MAX_BATCH}"
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), CapabilityError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(CapabilityError::InvalidArgument(format!(
            "value is {} bytes; the host limit is {MAX_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

fn check_cursor(cursor: Option<&str>) -> Result<(), CapabilityError> {
    if cursor.is_some_and(|c| c.len() > MAX_CURSOR_BYTES) {
        return Err(guest_error(BackendError::malformed_cursor()));
    }
    Ok(())
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
    async fn set_many_within(&self, _: &StorageQuota, _: Vec<KvEntry>) -> Result<(), BackendError> {
        Err(unbound())
    }
    async fn delete_many_within(
        &self,
        _: &StorageQuota,
        _: &[String],
    ) -> Result<u64, BackendError> {
        Err(unbound())
    }
    async fn usage(&self, _: &str) -> Result<Usage, BackendError> {
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
        self.core
            .call("kv.get")
            .serve(async {
                let key = self.scoped(&key)?;
                let value = self
                    .core
                    .command("get", self.core.backend.get(&key))
                    .await?;
                Ok(value.map(|v| v.to_vec()))
            })
            .await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), CapabilityError> {
        self.core
            .call("kv.set")
            .serve(async {
                check_value(&value)?;
                let key = self.scoped(&key)?;
                self.write(vec![KvEntry {
                    key,
                    value: Bytes::from(value),
                    ttl: ttl(ttl_ms),
                }])
                .await
            })
            .await
    }

    async fn delete(&mut self, key: String) -> Result<bool, CapabilityError> {
        self.core
            .call("kv.delete")
            .serve(async {
                let key = self.scoped(&key)?;
                if self.quota.is_some() || self.core.read_only {
                    return Ok(self.remove(&[key]).await? > 0);
                }
                self.core
                    .command("delete", self.core.backend.delete(&key))
                    .await
            })
            .await
    }

    async fn exists(&mut self, key: String) -> Result<bool, CapabilityError> {
        self.core
            .call("kv.exists")
            .serve(async {
                let key = self.scoped(&key)?;
                self.core
                    .command("exists", self.core.backend.exists(&key))
                    .await
            })
            .await
    }

    async fn scan(
        &mut self,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<kv::ScanPage, CapabilityError> {
        self.core
            .call("kv.scan")
            .serve(async {
                let prefix = self.scoped(&prefix)?;
                check_cursor(cursor.as_deref())?;
                let limit = limit.clamp(1, MAX_SCAN_PAGE) as usize;
                let page = self
                    .core
                    .command(
                        "scan",
                        self.core.backend.scan(&prefix, cursor.as_deref(), limit),
                    )
                    .await?;
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
            })
            .await
    }

    async fn get_many(
        &mut self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, CapabilityError> {
        self.core
            .call("kv.get_many")
            .serve(async {
                let keys = self.scoped_all(&keys)?;
                let values = self
                    .core
                    .command("get_many", self.core.backend.get_many(&keys))
                    .await?;
                Ok(values.into_iter().map(|v| v.map(|b| b.to_vec())).collect())
            })
            .await
    }

    async fn set_many(&mut self, entries: Vec<Entry>) -> Result<(), CapabilityError> {
        self.core.call("kv.set_many").serve(async {
            check_batch(entries.len())?;
            let bytes: usize = entries.iter().map(|e| e.key.len() + e.value.len()).sum();
            if bytes > MAX_BATCH_BYTES {
                return Err(CapabilityError::InvalidArgument(format!(
                    "batch holds {bytes} bytes; the host accepts at most {MAX_BATCH_BYTES} per call"
                )));
            }
            let entries = entries
                .into_iter()
                .map(|e| {
                    check_value(&e.value)?;
                    Ok(KvEntry {
                        key: self.scoped(&e.key)?,
                        value: Bytes::from(e.value),
                        ttl: ttl(e.ttl_ms),
                    })
                })
                .collect::<Result<Vec<_>, CapabilityError>>()?;
            self.write(entries).await
        })
        .await
    }

    async fn delete_many(&mut self, keys: Vec<String>) -> Result<u32, CapabilityError> {
        self.core
            .call("kv.delete_many")
            .serve(async {
                let keys = self.scoped_all(&keys)?;
                let deleted = self.remove(&keys).await?;
                Ok(u32::try_from(deleted).unwrap_or(u32::MAX))
            })
            .await
    }
}

impl Slot for KvSlot {
    type Backend = dyn KvBackend;

    fn core_mut(&mut self) -> &mut SlotCore<dyn KvBackend> {
        &mut self.core
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
        let mut a = KvSlot::new("a", store.clone(), None, None);
        let mut b = KvSlot::new("b", store.clone(), None, None);
        a.set("k".into(), b"from-a".to_vec(), None).await?;
        b.set("k".into(), b"from-b".to_vec(), None).await?;
        b.set("k2".into(), b"only-b".to_vec(), None).await?;
        assert_eq!(a.get("k".into()).await?, Some(b"from-a".to_vec()));
        assert_eq!(a.get("k2".into()).await?, None);
        assert_eq!(
            a.scan(String::new(), None, 100).await?.keys,
            vec!["k".to_string()]
        );
        // Keys and prefixes are literal: naming b's scope or a relative path
        // from a reaches only a's own (literally named) keys, never b's.
        a.set("../b/k2".into(), b"a-literal".to_vec(), None).await?;
        assert!(a.scan("b/".into(), None, 100).await?.keys.is_empty());
        assert_eq!(
            a.scan("../b/".into(), None, 100).await?.keys,
            vec!["../b/k2".to_string()]
        );
        assert_eq!(a.get("../b/k2".into()).await?, Some(b"a-literal".to_vec()));
        assert!(a.delete("k2".into()).await.is_ok_and(|existed| !existed));
        assert_eq!(b.get("k2".into()).await?, Some(b"only-b".to_vec()));
        assert_eq!(
            store.get("b/k2").await.ok().flatten().as_deref(),
            Some(&b"only-b"[..])
        );
        assert_eq!(
            store.get("a/../b/k2").await.ok().flatten().as_deref(),
            Some(&b"a-literal"[..])
        );
        Ok(())
    }

    #[tokio::test]
    async fn storage_quota_refuses_writes_and_leaves_nothing_written() -> Result<(), CapabilityError>
    {
        let store: Arc<dyn KvBackend> = MemStore::new("shared", &MemStoreConfig::default());
        // "q/" + "k1" + 10 bytes = 14 bytes per entry.
        let mut q = KvSlot::new("q", store.clone(), Some(30), Some(3));
        let mut free = KvSlot::new("free", store.clone(), None, None);
        q.set("k1".into(), vec![1; 10], None).await?;
        q.set("k2".into(), vec![2; 10], None).await?;
        let over = q.set("k3".into(), vec![3; 10], None).await;
        assert!(
            matches!(&over, Err(CapabilityError::ResourceExhausted(m)) if m.contains("max_stored_bytes")),
            "{over:?}"
        );
        assert_eq!(q.get("k3".into()).await?, None);
        // A batch over the quota writes nothing.
        let batch = vec![
            Entry {
                key: "k4".into(),
                value: vec![4],
                ttl_ms: None,
            },
            Entry {
                key: "k5".into(),
                value: vec![5; 20],
                ttl_ms: None,
            },
        ];
        assert!(q.set_many(batch).await.is_err());
        assert_eq!(
            q.get_many(vec!["k4".into(), "k5".into()]).await?,
            vec![None, None]
        );
        // Overwriting in place within the quota works; deleting frees room.
        q.set("k1".into(), vec![9; 10], None).await?;
        assert!(q.delete("k2".into()).await?);
        q.set("k3".into(), vec![3; 10], None).await?;
        // Other namespaces on the same store are not affected.
        free.set("big".into(), vec![0; 1000], None).await?;
        let usage = q.usage().await.map_err(crate::capability::guest_error)?;
        assert_eq!(usage, Usage { bytes: 28, keys: 2 });
        // Host bounds come before the backend.
        let giant = q
            .get_many((0..=MAX_BATCH).map(|i| format!("k{i}")).collect())
            .await;
        assert!(
            matches!(giant, Err(CapabilityError::InvalidArgument(_))),
            "{giant:?}"
        );
        Ok(())
    }
}

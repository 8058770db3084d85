//! MemRegistry: the embedded registry backend. Each namespace's identities
//! sit in an ordered map (so listing resumes after a cursor identity) with
//! an expiry index; expired records are never returned, are forgotten on
//! the next write, and are swept in the background.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use crate::backend::BackendError;
use crate::backend::registry::LIST_BYTES;
use crate::backend::registry::{
    IdentityRecord, NewIdentity, PutOutcome, RegistryBackend, RegistryPage, registry_full,
};
use crate::clock::now_ms;

pub struct MemRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    spaces: RwLock<HashMap<String, Arc<Mutex<Space>>>>,
}

/// One namespace's identities.
#[derive(Default)]
struct Space {
    records: BTreeMap<String, IdentityRecord>,
    /// (expiry, identity) of every record with a TTL.
    expiries: BTreeSet<(u64, String)>,
}

impl Space {
    /// Forgets records whose TTL has passed.
    fn forget_expired(&mut self, now_ms: u64) -> usize {
        let mut forgotten = 0;
        while let Some((at, _)) = self.expiries.first()
            && *at <= now_ms
        {
            if let Some((at, identity)) = self.expiries.pop_first()
                && self
                    .records
                    .get(&identity)
                    .is_some_and(|r| r.expires_at_ms == Some(at))
            {
                self.records.remove(&identity);
                forgotten += 1;
            }
        }
        forgotten
    }

    fn insert(&mut self, record: IdentityRecord) {
        if let Some(old) = self.records.get(&record.identity)
            && let Some(at) = old.expires_at_ms
        {
            self.expiries.remove(&(at, record.identity.clone()));
        }
        if let Some(at) = record.expires_at_ms {
            self.expiries.insert((at, record.identity.clone()));
        }
        self.records.insert(record.identity.clone(), record);
    }

    fn live(&self, identity: &str, now_ms: u64) -> Option<&IdentityRecord> {
        self.records.get(identity).filter(|r| r.live(now_ms))
    }
}

/// How often expired identities are swept (reads never see them anyway).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl MemRegistry {
    /// A new registry; starts its sweeper when called inside a tokio runtime.
    pub fn new(name: &str) -> Arc<MemRegistry> {
        let inner = Arc::new(Inner {
            name: name.to_string(),
            spaces: RwLock::new(HashMap::new()),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(sweep_forever(Arc::downgrade(&inner)));
        }
        Arc::new(MemRegistry { inner })
    }

    fn space(&self, namespace: &str) -> Arc<Mutex<Space>> {
        if let Some(space) = self.inner.spaces.read().get(namespace) {
            return space.clone();
        }
        self.inner
            .spaces
            .write()
            .entry(namespace.to_string())
            .or_default()
            .clone()
    }
}

async fn sweep_forever(inner: Weak<Inner>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let spaces: Vec<Arc<Mutex<Space>>> = inner.spaces.read().values().cloned().collect();
        let now = now_ms();
        let forgotten: usize = spaces.iter().map(|s| s.lock().forget_expired(now)).sum();
        if forgotten > 0 {
            tracing::debug!(backend = %inner.name, forgotten, "swept expired identities");
        }
    }
}

#[async_trait]
impl RegistryBackend for MemRegistry {
    fn summary(&self) -> String {
        format!("MemStore registry '{}'", self.inner.name)
    }

    async fn put(
        &self,
        namespace: &str,
        entry: NewIdentity,
        replace: bool,
        max_identities: u64,
        now_ms: u64,
    ) -> Result<PutOutcome, BackendError> {
        let space = self.space(namespace);
        let mut space = space.lock();
        space.forget_expired(now_ms);
        if let Some(existing) = space.live(&entry.identity, now_ms) {
            if !replace {
                return Ok(PutOutcome::Exists(existing.clone()));
            }
        } else if max_identities > 0 && space.records.len() as u64 >= max_identities {
            return Err(registry_full(namespace, max_identities));
        }
        let record = entry.record(now_ms);
        space.insert(record.clone());
        Ok(PutOutcome::Stored(record))
    }

    async fn get(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<Option<IdentityRecord>, BackendError> {
        Ok(self.space(namespace).lock().live(identity, now_ms).cloned())
    }

    async fn renew(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<Option<IdentityRecord>, BackendError> {
        let space = self.space(namespace);
        let mut space = space.lock();
        let Some(mut record) = space.live(identity, now_ms).cloned() else {
            return Ok(None);
        };
        if let Some(ttl) = record.ttl_ms {
            record.expires_at_ms = Some(now_ms.saturating_add(ttl));
            space.insert(record.clone());
        }
        Ok(Some(record))
    }

    async fn remove(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<bool, BackendError> {
        let space = self.space(namespace);
        let mut space = space.lock();
        let Some(record) = space.records.remove(identity) else {
            return Ok(false);
        };
        if let Some(at) = record.expires_at_ms {
            space.expiries.remove(&(at, record.identity.clone()));
        }
        Ok(record.live(now_ms))
    }

    async fn list(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<RegistryPage, BackendError> {
        let limit = limit.max(1);
        let space = self.space(namespace);
        let space = space.lock();
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut live = space
            .records
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, record)| record)
            .filter(|record| record.live(now_ms));
        let mut records: Vec<IdentityRecord> = Vec::new();
        let mut bytes = 0;
        for record in live.by_ref().take(limit) {
            bytes += record.metadata.len() + record.identity.len();
            records.push(record.clone());
            if bytes >= LIST_BYTES {
                break;
            }
        }
        // A cursor only when another live record follows.
        let cursor = match live.next() {
            Some(_) => records.last().map(|r| r.identity.clone()),
            None => None,
        };
        Ok(RegistryPage { records, cursor })
    }

    async fn count(&self, namespace: &str, now_ms: u64) -> Result<u64, BackendError> {
        let space = self.space(namespace);
        let mut space = space.lock();
        space.forget_expired(now_ms);
        Ok(space.records.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(identity: &str, ttl_ms: Option<u64>) -> NewIdentity {
        NewIdentity {
            identity: identity.into(),
            metadata: "{}".into(),
            ttl_ms,
        }
    }

    #[tokio::test]
    async fn put_keep_replace_expire_and_renew() -> Result<(), BackendError> {
        let r = MemRegistry::new("mem");
        let stored = r.put("ns", entry("a", Some(100)), true, 10, 1000).await?;
        assert!(matches!(&stored, PutOutcome::Stored(rec) if rec.expires_at_ms == Some(1100)));
        let kept = r.put("ns", entry("a", None), false, 10, 1050).await?;
        assert!(matches!(&kept, PutOutcome::Exists(rec) if rec.registered_at_ms == 1000));
        // Renewed at 1090: expires at 1190, so live at 1150.
        let renewed = r.renew("ns", "a", 1090).await?;
        assert_eq!(renewed.and_then(|rec| rec.expires_at_ms), Some(1190));
        assert!(r.get("ns", "a", 1150).await?.is_some());
        // Never returned past its expiry, by any read.
        assert!(r.get("ns", "a", 1190).await?.is_none());
        assert!(r.renew("ns", "a", 1190).await?.is_none());
        assert!(r.list("ns", None, 10, 1190).await?.records.is_empty());
        assert_eq!(r.count("ns", 1190).await?, 0);
        assert!(!r.remove("ns", "a", 1190).await?);
        // Other namespaces never see it.
        r.put("ns", entry("b", None), true, 10, 2000).await?;
        assert!(r.get("other", "b", 2000).await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn limit_counts_only_live_identities() -> Result<(), BackendError> {
        let r = MemRegistry::new("mem");
        r.put("ns", entry("a", Some(10)), true, 2, 0).await?;
        r.put("ns", entry("b", None), true, 2, 0).await?;
        let full = r.put("ns", entry("c", None), true, 2, 5).await;
        assert!(
            matches!(full, Err(BackendError::QuotaExceeded(_))),
            "{full:?}"
        );
        // Re-registering an existing one is not a new identity.
        r.put("ns", entry("b", None), true, 2, 5).await?;
        // Once `a` expired there is room.
        r.put("ns", entry("c", None), true, 2, 20).await?;
        Ok(())
    }

    #[tokio::test]
    async fn pages_return_each_live_identity_once_in_order() -> Result<(), BackendError> {
        let r = MemRegistry::new("mem");
        for i in 0..250 {
            let ttl = if i % 10 == 0 { Some(5) } else { None };
            r.put("ns", entry(&format!("id{i:03}"), ttl), true, 0, 0)
                .await?;
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = r.list("ns", cursor.as_deref(), 40, 100).await?;
            assert!(page.records.len() <= 40);
            seen.extend(page.records.into_iter().map(|rec| rec.identity));
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let expected: Vec<String> = (0..250)
            .filter(|i| i % 10 != 0)
            .map(|i| format!("id{i:03}"))
            .collect();
        assert_eq!(seen, expected);
        Ok(())
    }
}

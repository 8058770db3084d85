//! MemStore: the embedded in-memory backend. A sharded ordered map (ordered
//! so prefix scans can resume from a cursor), TTLs expired lazily on read and
//! swept in the background, and hard capacity limits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::backend::{BackendError, KvBackend, KvEntry, QuotaKind, ScanPage, StorageQuota, Usage};
use crate::config::MemStoreConfig;

/// Shards keep writers to different keys off each other's locks.
const SHARDS: usize = 16;
/// Most expired keys one sweep removes from a shard while holding its lock.
const SWEEP_BATCH: usize = 10_000;

pub struct MemStore {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    max_bytes: u64,
    max_keys: u64,
    /// Key plus value bytes and keys of every stored entry, expired-but-unswept
    /// included, so the limit bounds real memory.
    total: Ledger,
    /// The same per namespace (the key's part before its first '/'), for
    /// namespace quotas and usage; kept for every write, checked on demand.
    scopes: RwLock<HashMap<Box<str>, Arc<Ledger>>>,
}

/// Bytes and keys held, reserved before a write and released after a removal.
#[derive(Default)]
struct Ledger {
    bytes: AtomicU64,
    keys: AtomicU64,
}

impl Ledger {
    /// Reserves room for `delta`'s growth, or fails reserving nothing.
    fn reserve(
        &self,
        delta: &Delta,
        max_bytes: Option<u64>,
        max_keys: Option<u64>,
    ) -> Result<(), QuotaKind> {
        if delta.grow > 0 {
            let after = self.bytes.fetch_add(delta.grow, Ordering::Relaxed) + delta.grow;
            if max_bytes.is_some_and(|max| after > max) {
                self.bytes.fetch_sub(delta.grow, Ordering::Relaxed);
                return Err(QuotaKind::Bytes);
            }
        }
        if delta.added > 0 {
            let after = self.keys.fetch_add(delta.added, Ordering::Relaxed) + delta.added;
            if max_keys.is_some_and(|max| after > max) {
                self.keys.fetch_sub(delta.added, Ordering::Relaxed);
                self.bytes.fetch_sub(delta.grow, Ordering::Relaxed);
                return Err(QuotaKind::Keys);
            }
        }
        Ok(())
    }

    fn release(&self, bytes: u64, keys: u64) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.keys.fetch_sub(keys, Ordering::Relaxed);
    }

    fn usage(&self) -> Usage {
        Usage {
            bytes: self.bytes.load(Ordering::Relaxed),
            keys: self.keys.load(Ordering::Relaxed),
        }
    }
}

/// How a write changes what is stored: bytes grown, bytes shrunk, keys added.
#[derive(Debug, Default, Clone, Copy)]
struct Delta {
    grow: u64,
    shrink: u64,
    added: u64,
}

impl Delta {
    /// Replacing `old` (if any) with an entry of `new` bytes.
    fn add(&mut self, old: Option<u64>, new: u64) {
        match old {
            Some(old) => {
                self.grow += new.saturating_sub(old);
                self.shrink += old.saturating_sub(new);
            }
            None => {
                self.grow += new;
                self.added += 1;
            }
        }
    }
}

/// The namespace part of a stored key.
fn scope_of(key: &str) -> Option<&str> {
    key.split_once('/').map(|(scope, _)| scope)
}

#[derive(Default)]
struct Shard {
    map: BTreeMap<String, Entry>,
    /// (expiry, key) of every entry with a TTL, so sweeping touches only expired keys.
    expiries: BTreeSet<(Instant, String)>,
}

impl Shard {
    /// Stores an entry and keeps the expiry index in step (no accounting).
    fn put(&mut self, key: String, value: Bytes, expires_at: Option<Instant>) {
        if let Some(at) = expires_at {
            self.expiries.insert((at, key.clone()));
        }
        let replaced = self.map.insert(key.clone(), Entry { value, expires_at });
        if let Some(at) = replaced.and_then(|e| e.expires_at)
            && Some(at) != expires_at
        {
            self.expiries.remove(&(at, key));
        }
    }
}

struct Entry {
    value: Bytes,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

fn entry_bytes(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl MemStore {
    /// A new store; starts its sweeper when called inside a tokio runtime.
    pub fn new(name: &str, config: &MemStoreConfig) -> Arc<MemStore> {
        let inner = Arc::new(Inner {
            name: name.to_string(),
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            max_bytes: config.max_bytes,
            max_keys: config.max_keys,
            total: Ledger::default(),
            scopes: RwLock::new(HashMap::new()),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let interval = Duration::from_millis(config.sweep_interval_ms.max(1));
            handle.spawn(sweep_forever(Arc::downgrade(&inner), interval));
        }
        Arc::new(MemStore { inner })
    }

    /// Keys stored, including expired ones not yet swept.
    pub fn stored_keys(&self) -> u64 {
        self.inner.total.keys.load(Ordering::Relaxed)
    }

    /// Removes expired entries now; returns how many.
    pub fn sweep(&self) -> usize {
        self.inner.sweep(Instant::now())
    }
}

async fn sweep_forever(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let removed = inner.sweep(Instant::now());
        if removed > 0 {
            tracing::debug!(backend = %inner.name, removed, "swept expired keys");
        }
    }
}

impl Inner {
    fn shard_index(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize % self.shards.len()
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        &self.shards[self.shard_index(key)]
    }

    fn full(&self, what: &str, limit: u64) -> BackendError {
        BackendError::CapacityExceeded(format!(
            "MemStore '{}' is full: it holds its limit of {limit} {what}; delete keys or raise backends.{}.max_{what}",
            self.name, self.name
        ))
    }

    /// The ledger of the namespace `key` belongs to, created on first use.
    fn scope_ledger(&self, key: &str) -> Option<Arc<Ledger>> {
        scope_of(key).map(|scope| self.ledger(scope))
    }

    /// The ledger of namespace `scope`, created on first use.
    fn ledger(&self, scope: &str) -> Arc<Ledger> {
        if let Some(ledger) = self.scopes.read().get(scope) {
            return ledger.clone();
        }
        self.scopes.write().entry(scope.into()).or_default().clone()
    }

    /// Reserves a write's growth in its namespace (against `quota`, if any)
    /// and in the whole store, then releases what it shrinks; on failure
    /// nothing is reserved.
    fn account(
        &self,
        scope: Option<&Ledger>,
        quota: Option<&StorageQuota>,
        delta: Delta,
    ) -> Result<(), BackendError> {
        if let Some(scope) = scope {
            let (max_bytes, max_keys) = quota.map_or((None, None), |q| (q.max_bytes, q.max_keys));
            scope
                .reserve(&delta, max_bytes, max_keys)
                .map_err(|kind| match quota {
                    Some(q) => q.exceeded(kind),
                    None => BackendError::Internal("unreachable quota".into()),
                })?;
        }
        if let Err(kind) = self
            .total
            .reserve(&delta, Some(self.max_bytes), Some(self.max_keys))
        {
            if let Some(scope) = scope {
                scope.release(delta.grow, delta.added);
            }
            return Err(match kind {
                QuotaKind::Bytes => self.full("bytes", self.max_bytes),
                QuotaKind::Keys => self.full("keys", self.max_keys),
            });
        }
        self.total.release(delta.shrink, 0);
        if let Some(scope) = scope {
            scope.release(delta.shrink, 0);
        }
        Ok(())
    }

    /// Forgets an entry that left the store (deleted or swept).
    fn forget(&self, key: &str, value: &[u8]) {
        let bytes = entry_bytes(key, value);
        self.total.release(bytes, 1);
        if let Some(scope) = self.scope_ledger(key) {
            scope.release(bytes, 1);
        }
    }

    /// Stores one entry in a shard the caller holds, reserving only the growth
    /// over what the replaced entry held; fails with nothing changed.
    fn insert(
        &self,
        shard: &mut Shard,
        key: String,
        value: Bytes,
        expires_at: Option<Instant>,
    ) -> Result<(), BackendError> {
        let mut delta = Delta::default();
        delta.add(
            shard.map.get(&key).map(|e| entry_bytes(&key, &e.value)),
            entry_bytes(&key, &value),
        );
        self.account(self.scope_ledger(&key).as_deref(), None, delta)?;
        shard.put(key, value, expires_at);
        Ok(())
    }

    fn remove(&self, key: &str, now: Instant) -> bool {
        let mut shard = self.shard(key).write();
        let Some(old) = shard.map.remove(key) else {
            return false;
        };
        if let Some(at) = old.expires_at {
            shard.expiries.remove(&(at, key.to_string()));
        }
        self.forget(key, &old.value);
        old.live(now)
    }

    /// Writes a batch all or nothing: every shard it touches is locked in
    /// index order (no deadlock), so the checks and the writes see one state.
    fn write_batch(
        &self,
        quota: Option<&StorageQuota>,
        entries: Vec<KvEntry>,
    ) -> Result<(), BackendError> {
        // The last write of a key wins, as if the batch were applied in order.
        let mut latest: BTreeMap<String, KvEntry> = BTreeMap::new();
        for entry in entries {
            latest.insert(entry.key.clone(), entry);
        }
        let mut by_shard: BTreeMap<usize, Vec<KvEntry>> = BTreeMap::new();
        for (_, entry) in latest {
            by_shard
                .entry(self.shard_index(&entry.key))
                .or_default()
                .push(entry);
        }
        let mut guards: Vec<_> = by_shard
            .keys()
            .map(|&i| (i, self.shards[i].write()))
            .collect();
        // Deltas per namespace (one, when a quota applies: the slot's own).
        let mut deltas: BTreeMap<Option<String>, Delta> = BTreeMap::new();
        for (index, guard) in &guards {
            for entry in by_shard.get(index).into_iter().flatten() {
                let old = guard
                    .map
                    .get(&entry.key)
                    .map(|e| entry_bytes(&entry.key, &e.value));
                deltas
                    .entry(scope_of(&entry.key).map(str::to_string))
                    .or_default()
                    .add(old, entry_bytes(&entry.key, &entry.value));
            }
        }
        let mut done: Vec<(Option<Arc<Ledger>>, Delta)> = Vec::new();
        for (scope, delta) in &deltas {
            let ledger = scope.as_deref().map(|s| (s, self.ledger(s)));
            let applies = |s: &str| quota.is_some_and(|q| q.scope.strip_suffix('/') == Some(s));
            let own_quota = ledger
                .as_ref()
                .and_then(|(s, _)| quota.filter(|_| applies(s)));
            let ledger = ledger.map(|(_, l)| l);
            if let Err(e) = self.account(ledger.as_deref(), own_quota, *delta) {
                // Undo the namespaces already accounted: nothing is written.
                for (ledger, delta) in done {
                    self.total.release(delta.grow, delta.added);
                    self.total.bytes.fetch_add(delta.shrink, Ordering::Relaxed);
                    if let Some(ledger) = ledger {
                        ledger.release(delta.grow, delta.added);
                        ledger.bytes.fetch_add(delta.shrink, Ordering::Relaxed);
                    }
                }
                return Err(e);
            }
            done.push((ledger, *delta));
        }
        let now = Instant::now();
        for (index, guard) in &mut guards {
            for entry in by_shard.remove(index).into_iter().flatten() {
                guard.put(entry.key, entry.value, entry.ttl.map(|t| now + t));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str, now: Instant) -> Option<Bytes> {
        let shard = self.shard(key).read();
        shard
            .map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            for _ in 0..SWEEP_BATCH {
                let Some((at, _)) = shard.expiries.first() else {
                    break;
                };
                if *at > now {
                    break;
                }
                let Some((at, key)) = shard.expiries.pop_first() else {
                    break;
                };
                // The index only holds current expiries, but check to be safe.
                if shard
                    .map
                    .get(&key)
                    .is_some_and(|e| e.expires_at == Some(at))
                    && let Some(old) = shard.map.remove(&key)
                {
                    self.forget(&key, &old.value);
                    removed += 1;
                }
            }
        }
        removed
    }
}

fn decode_cursor(cursor: &str) -> Result<String, BackendError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(BackendError::malformed_cursor)
}

#[async_trait]
impl KvBackend for MemStore {
    fn summary(&self) -> String {
        format!("MemStore '{}'", self.inner.name)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        Ok(self.inner.get(key, Instant::now()))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        let expires_at = ttl.map(|t| Instant::now() + t);
        let mut shard = self.inner.shard(key).write();
        self.inner
            .insert(&mut shard, key.to_string(), value, expires_at)
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        Ok(self.inner.remove(key, Instant::now()))
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let now = Instant::now();
        let shard = self.inner.shard(key).read();
        Ok(shard.map.get(key).is_some_and(|e| e.live(now)))
    }

    async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, BackendError> {
        let limit = limit.max(1);
        let after = cursor.map(decode_cursor).transpose()?;
        let start = match &after {
            Some(after) if after.as_str() >= prefix => Bound::Excluded(after.as_str()),
            _ => Bound::Included(prefix),
        };
        let now = Instant::now();
        let mut keys = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.read();
            keys.extend(
                shard
                    .map
                    .range::<str, _>((start, Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(_, e)| e.live(now))
                    .take(limit + 1)
                    .map(|(k, _)| k.clone()),
            );
        }
        keys.sort_unstable();
        let cursor = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().map(|k| URL_SAFE_NO_PAD.encode(k))
        } else {
            None
        };
        Ok(ScanPage { keys, cursor })
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        let now = Instant::now();
        Ok(keys.iter().map(|k| self.inner.get(k, now)).collect())
    }

    async fn set_many(&self, entries: Vec<KvEntry>) -> Result<(), BackendError> {
        self.inner.write_batch(None, entries)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<u64, BackendError> {
        let now = Instant::now();
        Ok(keys.iter().filter(|k| self.inner.remove(k, now)).count() as u64)
    }

    async fn set_many_within(
        &self,
        quota: &StorageQuota,
        entries: Vec<KvEntry>,
    ) -> Result<(), BackendError> {
        self.inner.write_batch(Some(quota), entries)
    }

    async fn delete_many_within(
        &self,
        _quota: &StorageQuota,
        keys: &[String],
    ) -> Result<u64, BackendError> {
        // Usage is kept for every namespace anyway.
        self.delete_many(keys).await
    }

    async fn usage(&self, scope: &str) -> Result<Usage, BackendError> {
        let scope = scope.strip_suffix('/').unwrap_or(scope);
        Ok(self
            .inner
            .scopes
            .read()
            .get(scope)
            .map(|l| l.usage())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_bytes: u64, max_keys: u64) -> Arc<MemStore> {
        MemStore::new(
            "test",
            &MemStoreConfig {
                max_bytes,
                max_keys,
                sweep_interval_ms: 1000,
            },
        )
    }

    #[tokio::test]
    async fn set_get_overwrite_delete() -> Result<(), BackendError> {
        let s = store(1 << 20, 100);
        assert_eq!(s.get("a").await?, None);
        s.set("a", Bytes::from_static(b"1"), None).await?;
        s.set("a", Bytes::from_static(b""), None).await?;
        assert_eq!(s.get("a").await?, Some(Bytes::new()));
        assert!(s.delete("a").await?);
        assert!(!s.delete("a").await?);
        assert_eq!(s.stored_keys(), 0);
        Ok(())
    }

    /// TTL behaviour at chosen instants (no sleeping): `at(ms)` is that many ms after `t0`.
    #[test]
    fn ttl_expires_and_overwrite_resets_it() -> Result<(), BackendError> {
        let s = store(1 << 20, 100);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let put = |key: &str, value: &'static [u8], expires: Option<Instant>| {
            let mut shard = s.inner.shard(key).write();
            s.inner.insert(
                &mut shard,
                key.to_string(),
                Bytes::from_static(value),
                expires,
            )
        };
        put("t", b"v", Some(at(2000)))?;
        assert!(s.inner.get("t", at(1500)).is_some());
        put("t", b"v2", Some(at(3500)))?;
        assert_eq!(s.inner.get("t", at(3000)), Some(Bytes::from_static(b"v2")));
        assert_eq!(s.inner.get("t", at(3500)), None);
        assert_eq!(s.inner.sweep(at(3000)), 0);
        assert_eq!(s.inner.sweep(at(3600)), 1);
        assert_eq!(s.stored_keys(), 0);

        put("p", b"v", Some(at(1000)))?;
        put("p", b"v", None)?;
        assert_eq!(s.inner.sweep(at(10_000)), 0);
        assert!(s.inner.get("p", at(10_000)).is_some());
        Ok(())
    }

    #[tokio::test]
    async fn expired_keys_are_hidden_from_every_read() -> Result<(), BackendError> {
        let s = store(1 << 20, 100);
        s.set(
            "gone",
            Bytes::from_static(b"v"),
            Some(Duration::from_millis(1)),
        )
        .await?;
        s.set("kept", Bytes::from_static(b"v"), None).await?;
        let later = Instant::now() + Duration::from_millis(5);
        while Instant::now() < later {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.get("gone").await?, None);
        assert!(!s.exists("gone").await?);
        assert_eq!(s.get_many(&["gone".into()]).await?, vec![None]);
        assert_eq!(s.scan("", None, 10).await?.keys, vec!["kept".to_string()]);
        assert!(
            !s.delete("gone").await?,
            "deleting an expired key reports it absent"
        );
        Ok(())
    }

    #[tokio::test]
    async fn scan_pages_return_each_key_once() -> Result<(), BackendError> {
        let s = store(1 << 24, 100_000);
        for i in 0..2500 {
            s.set(&format!("ns/k{i:05}"), Bytes::from_static(b"x"), None)
                .await?;
        }
        s.set("other/k1", Bytes::from_static(b"x"), None).await?;
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = s.scan("ns/", cursor.as_deref(), 333).await?;
            assert!(page.keys.len() <= 333);
            seen.extend(page.keys);
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        // Exactly the keys written, each once: sorted and compared whole, so a
        // repeat on a later page or a missing key both fail.
        let mut sorted = seen.clone();
        sorted.sort();
        let expected: Vec<String> = (0..2500).map(|i| format!("ns/k{i:05}")).collect();
        assert_eq!(sorted, expected);
        assert!(seen.iter().all(|k| k.starts_with("ns/")));
        Ok(())
    }

    #[tokio::test]
    async fn capacity_is_enforced_and_batches_are_all_or_nothing() -> Result<(), BackendError> {
        let s = store(20, 3);
        s.set("a", Bytes::from_static(b"0123456789"), None).await?;
        let err = s.set("b", Bytes::from_static(b"0123456789"), None).await;
        assert!(
            matches!(err, Err(BackendError::CapacityExceeded(_))),
            "{err:?}"
        );
        let batch = vec![
            KvEntry {
                key: "c".into(),
                value: Bytes::from_static(b"1"),
                ttl: None,
            },
            KvEntry {
                key: "d".into(),
                value: Bytes::from_static(b"1"),
                ttl: None,
            },
            KvEntry {
                key: "e".into(),
                value: Bytes::from_static(b"1"),
                ttl: None,
            },
        ];
        assert!(matches!(
            s.set_many(batch).await,
            Err(BackendError::CapacityExceeded(_))
        ));
        assert_eq!(
            s.get_many(&["c".into(), "d".into()]).await?,
            vec![None, None]
        );
        // Overwriting a key in a full store needs no more room than it frees.
        s.set("a", Bytes::from_static(b"9876543210"), None).await?;
        s.set("a", Bytes::from_static(b"0"), None).await?;
        s.set("b", Bytes::from_static(b"0123456789"), None).await?;
        Ok(())
    }

    #[tokio::test]
    async fn malformed_cursor_is_invalid_argument() {
        let s = store(100, 10);
        assert!(matches!(
            s.scan("", Some("%%%"), 10).await,
            Err(BackendError::InvalidArgument(_))
        ));
    }
}

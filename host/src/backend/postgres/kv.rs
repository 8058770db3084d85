//! PgKv: the `kv` capability on PostgreSQL. One row per key in
//! `<prefix>_kv (key bytea primary key, value bytea, expires_at timestamptz)`;
//! keys arrive scoped by the capability layer (`<namespace>/<key>`), so a
//! namespace is a key range.
//!
//! Expiry uses the database's clock (every Prism process on one database
//! agrees): reads filter on `expires_at`, and the backend's sweeper deletes
//! what has passed. Prefix scans are keyset-paginated over the primary key
//! (`key >= prefix AND key < successor(prefix)`), so a page costs an index
//! range, however many keys precede it. Batches are one statement each
//! (atomic without an explicit transaction); a namespace with a storage
//! quota writes in a transaction that holds the namespace's advisory lock,
//! measures its live usage and writes only within the quota.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

use super::Postgres;
use crate::backend::{BackendError, KvBackend, KvEntry, QuotaKind, ScanPage, StorageQuota, Usage};

/// A row is live when it has no expiry or its expiry is still ahead.
/// `now()` is the statement's (or transaction's) start: one instant for
/// every statement of a quota check.
const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";

/// Longest key the table takes: a btree index entry holds about 2700 bytes.
pub const MAX_KEY_BYTES: usize = 2048;

pub struct PgKv {
    db: Arc<Postgres>,
    sql: Statements,
}

/// Every statement's text, built once (prepared per connection, cached).
struct Statements {
    /// Scan pages by (after a cursor, bounded above): see [`Statements::scan`].
    scans: [String; 4],
    get: String,
    exists: String,
    set: String,
    delete: String,
    get_many: String,
    set_many: String,
    delete_many: String,
    usage: String,
    usage_all: String,
    sizes: String,
    lock: &'static str,
}

impl Statements {
    fn new(t: &str) -> Statements {
        let expiry = "CASE WHEN e IS NULL THEN NULL ELSE now() + e * interval '1 millisecond' END";
        Statements {
            scans: [(false, false), (false, true), (true, false), (true, true)]
                .map(|(a, b)| Statements::scan(t, a, b)),
            get: format!("SELECT value FROM {t} WHERE key = $1 AND {LIVE}"),
            exists: format!("SELECT 1 FROM {t} WHERE key = $1 AND {LIVE}"),
            set: format!(
                "INSERT INTO {t} (key, value, expires_at)
                 SELECT $1, $2, {expiry} FROM (SELECT $3::bigint AS e) ttl
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1 RETURNING {LIVE}"),
            get_many: format!("SELECT key, value FROM {t} WHERE key = ANY($1) AND {LIVE}"),
            set_many: format!(
                "INSERT INTO {t} (key, value, expires_at)
                 SELECT k, v, {expiry} FROM unnest($1::bytea[], $2::bytea[], $3::bigint[]) AS b(k, v, e)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
            ),
            delete_many: format!("DELETE FROM {t} WHERE key = ANY($1) RETURNING {LIVE}"),
            usage: format!(
                "SELECT coalesce(sum(octet_length(key) + octet_length(value)), 0)::bigint, count(*)
                 FROM {t} WHERE key >= $1 AND key < $2 AND {LIVE}"
            ),
            usage_all: format!(
                "SELECT coalesce(sum(octet_length(key) + octet_length(value)), 0)::bigint, count(*)
                 FROM {t} WHERE {LIVE}"
            ),
            sizes: format!(
                "SELECT key, octet_length(key) + octet_length(value) FROM {t} WHERE key = ANY($1) AND {LIVE}"
            ),
            lock: "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        }
    }

    /// A scan page: keys from `prefix` (or strictly after the cursor) up to
    /// the prefix's successor (none for the empty prefix).
    fn scan(t: &str, strict: bool, bounded: bool) -> String {
        let lower = if strict { ">" } else { ">=" };
        let upper = if bounded { " AND key < $3" } else { "" };
        format!("SELECT key FROM {t} WHERE key {lower} $1{upper} AND {LIVE} ORDER BY key LIMIT $2")
    }
}

impl PgKv {
    pub fn new(db: Arc<Postgres>) -> Arc<PgKv> {
        let sql = Statements::new(&db.kv_table);
        Arc::new(PgKv { db, sql })
    }

    async fn usage_of(
        &self,
        client: &impl tokio_postgres::GenericClient,
        scope: &str,
    ) -> Result<Usage, BackendError> {
        let row = match successor(scope.as_bytes()) {
            Some(hi) => {
                self.db
                    .bounded(client.query_one(&self.sql.usage, &[&scope.as_bytes(), &hi]))
                    .await?
            }
            None => {
                self.db
                    .bounded(client.query_one(&self.sql.usage_all, &[]))
                    .await?
            }
        };
        let (bytes, keys): (i64, i64) = (row.get(0), row.get(1));
        Ok(Usage {
            bytes: bytes.max(0) as u64,
            keys: keys.max(0) as u64,
        })
    }
}

/// The smallest byte string greater than every string starting with
/// `prefix`: the prefix with its last byte below 0xff incremented (None for
/// the empty prefix, or one of only 0xff bytes: no upper bound).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut hi = prefix.to_vec();
    while let Some(last) = hi.pop() {
        if last < 0xff {
            hi.push(last + 1);
            return Some(hi);
        }
    }
    None
}

fn ttl_ms(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| t.as_millis().clamp(1, i64::MAX as u128) as i64)
}

/// The batch with a repeated key written once, its last value winning (one
/// INSERT cannot touch a row twice).
fn last_write_wins(entries: Vec<KvEntry>) -> Vec<KvEntry> {
    let mut at: HashMap<String, usize> = HashMap::with_capacity(entries.len());
    let mut out: Vec<KvEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        match at.get(&e.key) {
            Some(&i) => out[i] = e,
            None => {
                at.insert(e.key.clone(), out.len());
                out.push(e);
            }
        }
    }
    out
}

/// The three arrays of a batch insert.
type Columns = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Option<i64>>);

/// Sorted by key: two overlapping batches then lock their rows in the same
/// order and cannot deadlock each other.
fn columns(entries: &[KvEntry]) -> Columns {
    let mut order: Vec<&KvEntry> = entries.iter().collect();
    order.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
    let entries = order;
    let keys = entries.iter().map(|e| e.key.as_bytes().to_vec()).collect();
    let values = entries.iter().map(|e| e.value.to_vec()).collect();
    let ttls = entries.iter().map(|e| ttl_ms(e.ttl)).collect();
    (keys, values, ttls)
}

/// Keys past what the primary key index holds are refused up front (the
/// other backends take them; PostgreSQL would fail the write).
fn check_key(key: &str) -> Result<(), BackendError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(BackendError::InvalidArgument(format!(
            "key is {} bytes with its namespace prefix; PostgreSQL backends take at most {MAX_KEY_BYTES} (lower the pattern's max_key_bytes setting)",
            key.len()
        )));
    }
    Ok(())
}

fn key_bytes(keys: &[String]) -> Vec<&[u8]> {
    keys.iter().map(|k| k.as_bytes()).collect()
}

fn encode_cursor(key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

fn decode_cursor(cursor: &str) -> Result<Vec<u8>, BackendError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| BackendError::malformed_cursor())
}

#[async_trait]
impl KvBackend for PgKv {
    fn summary(&self) -> String {
        self.db.summary().to_string()
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.db.ping().await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        let rows = self.db.query(&self.sql.get, &[&key.as_bytes()]).await?;
        Ok(rows.first().map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.db
            .query(
                &self.sql.set,
                &[&key.as_bytes(), &value.as_ref(), &ttl_ms(ttl)],
            )
            .await
            .map(drop)
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let rows = self.db.query(&self.sql.delete, &[&key.as_bytes()]).await?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let rows = self.db.query(&self.sql.exists, &[&key.as_bytes()]).await?;
        Ok(!rows.is_empty())
    }

    async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, BackendError> {
        let limit = limit.max(1);
        // A cursor is the last key a page returned, so it starts with the
        // (namespace-scoped) prefix; anything else was not made by a scan
        // of this prefix, and must not widen the range into other keys.
        let after = cursor.map(decode_cursor).transpose()?;
        if after
            .as_ref()
            .is_some_and(|c| !c.starts_with(prefix.as_bytes()))
        {
            return Err(BackendError::malformed_cursor());
        }
        let hi = successor(prefix.as_bytes());
        let sql = &self.sql.scans[usize::from(after.is_some()) * 2 + usize::from(hi.is_some())];
        let lower: &[u8] = after.as_deref().unwrap_or(prefix.as_bytes());
        // One row past the page says whether another page follows.
        let fetch = (limit as i64).saturating_add(1);
        let rows = match &hi {
            Some(hi) => {
                self.db
                    .query(sql, &[&lower, &fetch, &hi.as_slice()])
                    .await?
            }
            None => self.db.query(sql, &[&lower, &fetch]).await?,
        };
        let more = rows.len() > limit;
        let mut keys = Vec::with_capacity(rows.len().min(limit));
        let mut last: Option<Vec<u8>> = None;
        for row in rows.into_iter().take(limit) {
            let key: Vec<u8> = row.get(0);
            // Rows written by other clients may not be UTF-8; they cannot be
            // named through Prism, but the cursor still moves past them.
            if let Ok(k) = std::str::from_utf8(&key) {
                keys.push(k.to_string());
            }
            last = Some(key);
        }
        let cursor = if more {
            last.map(|k| encode_cursor(&k))
        } else {
            None
        };
        Ok(ScanPage { keys, cursor })
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .db
            .query(&self.sql.get_many, &[&key_bytes(keys)])
            .await?;
        let found: HashMap<Vec<u8>, Bytes> = rows
            .into_iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), Bytes::from(r.get::<_, Vec<u8>>(1))))
            .collect();
        Ok(keys
            .iter()
            .map(|k| found.get(k.as_bytes()).cloned())
            .collect())
    }

    async fn set_many(&self, entries: Vec<KvEntry>) -> Result<(), BackendError> {
        if entries.is_empty() {
            return Ok(());
        }
        entries.iter().try_for_each(|e| check_key(&e.key))?;
        let (keys, values, ttls) = columns(&last_write_wins(entries));
        self.db
            .query(&self.sql.set_many, &[&keys, &values, &ttls])
            .await
            .map(drop)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<u64, BackendError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let rows = self
            .db
            .query(&self.sql.delete_many, &[&key_bytes(keys)])
            .await?;
        Ok(rows.iter().filter(|r| r.get::<_, bool>(0)).count() as u64)
    }

    async fn set_many_within(
        &self,
        quota: &StorageQuota,
        entries: Vec<KvEntry>,
    ) -> Result<(), BackendError> {
        if entries.is_empty() {
            return Ok(());
        }
        entries.iter().try_for_each(|e| check_key(&e.key))?;
        let entries = last_write_wins(entries);
        let mut conn = self.db.conn().await?;
        let db = &self.db;
        let tx = db.bounded(conn.transaction()).await?;
        let lock = format!("prism-quota:{}:{}", db.kv_table, quota.scope);
        db.bounded(tx.execute(self.sql.lock, &[&lock])).await?;
        let usage = self.usage_of(&*tx, &quota.scope).await?;
        let names: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
        let old: HashMap<Vec<u8>, i64> = db
            .bounded(tx.query(&self.sql.sizes, &[&key_bytes(&names)]))
            .await?
            .into_iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, i32>(1) as i64))
            .collect();
        let mut bytes = usage.bytes as i128;
        let mut keys = usage.keys as i128;
        for e in &entries {
            match old.get(e.key.as_bytes()) {
                Some(size) => bytes -= *size as i128,
                None => keys += 1,
            }
            bytes += (e.key.len() + e.value.len()) as i128;
        }
        if quota.max_bytes.is_some_and(|max| bytes > max as i128) {
            return Err(quota.exceeded(QuotaKind::Bytes));
        }
        if quota.max_keys.is_some_and(|max| keys > max as i128) {
            return Err(quota.exceeded(QuotaKind::Keys));
        }
        let (k, v, t) = columns(&entries);
        db.bounded(tx.execute(&self.sql.set_many, &[&k, &v, &t]))
            .await?;
        db.bounded(tx.commit()).await
    }

    async fn delete_many_within(
        &self,
        quota: &StorageQuota,
        keys: &[String],
    ) -> Result<u64, BackendError> {
        // Deleting only frees room: no check, and no lock needed for the
        // quota's sake (a concurrent checked write measures after it commits).
        let _ = quota;
        self.delete_many(keys).await
    }

    async fn usage(&self, scope: &str) -> Result<Usage, BackendError> {
        let conn = self.db.conn().await?;
        self.usage_of(&**conn, scope).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_bounds_exactly_the_prefix() {
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(successor(b"\xff\xff"), None);
        assert_eq!(successor(b""), None);
        // UTF-8 keys sort by code point under byte order: é (c3 a9) is
        // inside "c3" and before "c3 aa".
        let hi = successor("caf".as_bytes()).unwrap_or_default();
        assert!("café".as_bytes() < hi.as_slice() && "cafe".as_bytes() < hi.as_slice());
        assert!("cag".as_bytes() >= hi.as_slice());
    }

    #[test]
    fn repeated_keys_keep_the_last_write() {
        let e = |k: &str, v: &'static [u8]| KvEntry {
            key: k.into(),
            value: Bytes::from_static(v),
            ttl: None,
        };
        let out = last_write_wins(vec![e("a", b"1"), e("b", b"2"), e("a", b"3")]);
        assert_eq!(out, vec![e("a", b"3"), e("b", b"2")]);
    }

    #[test]
    fn cursors_roundtrip_and_reject_garbage() {
        let c = encode_cursor(b"orders/\x00k");
        assert_eq!(decode_cursor(&c).ok(), Some(b"orders/\x00k".to_vec()));
        assert!(decode_cursor("not base64!").is_err());
    }
}

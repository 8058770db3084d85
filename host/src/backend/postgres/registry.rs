//! PgRegistry: the `registry` capability on PostgreSQL. One row per
//! identity in `<prefix>_registry`, keyed by (namespace, identity) in the
//! "C" collation, so listings page by keyset in the byte order every
//! registry backend shares.
//!
//! The metadata is stored as the pattern wrote it (`metadata text`, the
//! authority) and, when it is a JSON object, also as `doc jsonb` under a GIN
//! index: [`RegistryBackend::list_where`] pushes a pattern's equality
//! conditions down as `doc @> {...}`, so a selective enumerate reads only
//! the rows that can match instead of the whole namespace. Rows without a
//! `doc` (metadata that is not a JSON object) are left out by it: no
//! equality can hold on them. The pattern still evaluates its whole filter
//! on everything it gets.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::Postgres;
use crate::backend::BackendError;
use crate::backend::registry::LIST_BYTES;
use crate::backend::registry::{
    IdentityRecord, MetadataEquals, NewIdentity, PutOutcome, RegistryBackend, RegistryPage,
    registry_full,
};

/// A record is live at `$now` (a parameter: the capability layer's clock,
/// shared by every backend and Prism process).
const LIVE: &str = "(expires_at_ms IS NULL OR expires_at_ms > $2)";
const COLUMNS: &str = "identity, metadata, registered_at_ms, expires_at_ms, ttl_ms";

/// Longest identity the table takes (with the namespace, within what a
/// btree index entry holds).
const MAX_IDENTITY_BYTES: usize = 2048;

pub struct PgRegistry {
    db: Arc<Postgres>,
    sql: Statements,
}

struct Statements {
    /// Listing pages by (after a cursor, matching): see [`Statements::list`].
    lists: [String; 4],
    get: String,
    existing: String,
    count_upto: String,
    count: String,
    upsert: String,
    renew: String,
    remove: String,
}

impl Statements {
    fn new(t: &str) -> Statements {
        Statements {
            lists: [(false, false), (false, true), (true, false), (true, true)]
                .map(|(a, b)| Statements::list(t, a, b)),
            get: format!(
                "SELECT {COLUMNS} FROM {t} WHERE namespace = $1 AND {LIVE} AND identity = $3"
            ),
            existing: format!(
                "SELECT {COLUMNS} FROM {t} WHERE namespace = $1 AND {LIVE} AND identity = $3 FOR UPDATE"
            ),
            // Counting stops at the limit: a put never reads more rows than that.
            count_upto: format!(
                "SELECT count(*) FROM (SELECT 1 FROM {t} WHERE namespace = $1 AND {LIVE} LIMIT $3) n"
            ),
            count: format!("SELECT count(*) FROM {t} WHERE namespace = $1 AND {LIVE}"),
            upsert: format!(
                "INSERT INTO {t} (namespace, identity, metadata, doc, registered_at_ms, expires_at_ms, ttl_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (namespace, identity) DO UPDATE SET metadata = excluded.metadata,
                   doc = excluded.doc, registered_at_ms = excluded.registered_at_ms,
                   expires_at_ms = excluded.expires_at_ms, ttl_ms = excluded.ttl_ms"
            ),
            renew: format!(
                "UPDATE {t} SET expires_at_ms = CASE WHEN ttl_ms IS NULL THEN NULL ELSE $2 + ttl_ms END
                 WHERE namespace = $1 AND {LIVE} AND identity = $3 RETURNING {COLUMNS}"
            ),
            remove: format!(
                "DELETE FROM {t} WHERE namespace = $1 AND identity = $3 RETURNING {LIVE}"
            ),
        }
    }

    /// A listing page: after a cursor or from the start, with or without a
    /// pushed-down metadata condition. `$3` is the page size plus one; the
    /// cursor and the condition follow when present.
    fn list(t: &str, after: bool, matching: bool) -> String {
        let mut n = 3;
        let mut next = || {
            n += 1;
            n
        };
        let after = if after {
            format!(" AND identity > ${}", next())
        } else {
            String::new()
        };
        let matching = if matching {
            format!(" AND doc @> ${}", next())
        } else {
            String::new()
        };
        // The byte budget is applied in the server (a running total of
        // identity and metadata bytes, rows starting within it kept), so a
        // page of large records never crosses into Prism whole.
        let size = "octet_length(identity) + octet_length(metadata)";
        format!(
            "SELECT {COLUMNS}, upto >= {LIST_BYTES} FROM (
               SELECT {COLUMNS}, {size} AS size, sum({size}) OVER (ORDER BY identity) AS upto
               FROM {t} WHERE namespace = $1 AND {LIVE}{after}{matching} ORDER BY identity LIMIT $3
             ) page WHERE upto - size < {LIST_BYTES} ORDER BY identity"
        )
    }
}

impl PgRegistry {
    pub fn new(db: Arc<Postgres>) -> Arc<PgRegistry> {
        let sql = Statements::new(&db.registry_table);
        Arc::new(PgRegistry { db, sql })
    }

    async fn page(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
        matching: Option<Value>,
    ) -> Result<RegistryPage, BackendError> {
        let limit = limit.max(1);
        let sql =
            &self.sql.lists[usize::from(after.is_some()) * 2 + usize::from(matching.is_some())];
        let (now, fetch) = (ms(now_ms), (limit as i64).saturating_add(1));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&namespace, &now, &fetch];
        if let Some(after) = &after {
            params.push(after);
        }
        if let Some(doc) = &matching {
            params.push(doc);
        }
        let rows = self.db.query(sql, &params).await?;
        // The row past the page, or a page cut by the byte budget (whose
        // last row is where the running total reached it): more may follow.
        let full = rows.last().is_some_and(|r| r.get::<_, bool>(5));
        let more = rows.len() > limit || full;
        let records: Vec<IdentityRecord> = rows.iter().take(limit).map(record).collect();
        let cursor = if more {
            records.last().map(|r| r.identity.clone())
        } else {
            None
        };
        Ok(RegistryPage { records, cursor })
    }
}

fn ms(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn record(row: &Row) -> IdentityRecord {
    let opt = |i: usize| row.get::<_, Option<i64>>(i).map(|v| v.max(0) as u64);
    IdentityRecord {
        identity: row.get(0),
        metadata: row.get(1),
        registered_at_ms: row.get::<_, i64>(2).max(0) as u64,
        expires_at_ms: opt(3),
        ttl_ms: opt(4),
    }
}

/// The metadata as indexed JSON: a JSON object, with what jsonb cannot hold
/// (NUL characters) left out so the row still stores — map keys holding one
/// are dropped and strings holding one become `null`. Neither can make a
/// record that meets a pushed-down condition look as if it did not:
/// conditions never name such keys or values. None for anything else: no
/// equality on a field can hold on it, so `list_where` leaves it out.
fn indexed(metadata: &str) -> Option<Value> {
    fn clean(v: Value) -> Value {
        match v {
            Value::String(s) if s.contains('\0') => Value::Null,
            Value::Array(items) => Value::Array(items.into_iter().map(clean).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(k, _)| !k.contains('\0'))
                    .map(|(k, v)| (k, clean(v)))
                    .collect(),
            ),
            other => other,
        }
    }
    match serde_json::from_str::<Value>(metadata) {
        Ok(v @ Value::Object(_)) => Some(clean(v)),
        _ => None,
    }
}

/// The conditions as one containment document (`{"a": {"b": "x"}, ...}`).
/// None when none can be used; `Err(())` when they contradict each other
/// (no record can meet them all).
fn containment(conditions: &[MetadataEquals]) -> Result<Option<Value>, ()> {
    let mut doc = Map::new();
    let mut used = 0;
    for c in conditions {
        let value = match serde_json::from_str::<Value>(&c.value) {
            Ok(v @ (Value::String(_) | Value::Bool(_) | Value::Null)) => v,
            // Numbers compare by value in the pattern and by decimal in
            // jsonb; lists and maps by containment, not equality. Not pushed.
            _ => continue,
        };
        if c.path.is_empty()
            || c.path.iter().any(|s| s.contains('\0'))
            || value.as_str().is_some_and(|s| s.contains('\0'))
        {
            continue;
        }
        let mut at = &mut doc;
        let (last, parents) = match c.path.split_last() {
            Some(split) => split,
            None => continue,
        };
        for segment in parents {
            let slot = at
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            at = match slot {
                Value::Object(m) => m,
                _ => return Err(()),
            };
        }
        match at.get(last) {
            Some(existing) if *existing != value => return Err(()),
            _ => {
                at.insert(last.clone(), value);
            }
        }
        used += 1;
    }
    Ok((used > 0).then_some(Value::Object(doc)))
}

#[async_trait]
impl RegistryBackend for PgRegistry {
    fn summary(&self) -> String {
        format!("{} registry", self.db.summary())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.db.ping().await
    }

    async fn put(
        &self,
        namespace: &str,
        entry: NewIdentity,
        replace: bool,
        max_identities: u64,
        now_ms: u64,
    ) -> Result<PutOutcome, BackendError> {
        let db = &self.db;
        let mut conn = db.conn().await?;
        let tx = db.bounded(conn.transaction()).await?;
        if entry.identity.len() > MAX_IDENTITY_BYTES {
            return Err(BackendError::InvalidArgument(format!(
                "identity is {} bytes; PostgreSQL registries take at most {MAX_IDENTITY_BYTES} (the primary key index limit)",
                entry.identity.len()
            )));
        }
        let now = ms(now_ms);
        {
            // Puts of one namespace take turns, so "absent, so insert" and
            // the count are one step even across Prism processes.
            let lock = format!("prism-registry:{}:{namespace}", db.registry_table);
            db.bounded(tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&lock],
            ))
            .await?;
        }
        let existing = db
            .bounded(tx.query_opt(&self.sql.existing, &[&namespace, &now, &entry.identity]))
            .await?
            .map(|r| record(&r));
        match existing {
            Some(existing) if !replace => return Ok(PutOutcome::Exists(existing)),
            Some(_) => {}
            None if max_identities > 0 => {
                let max = ms(max_identities);
                let n: i64 = db
                    .bounded(tx.query_one(&self.sql.count_upto, &[&namespace, &now, &max]))
                    .await?
                    .get(0);
                if n >= max {
                    return Err(registry_full(namespace, max_identities));
                }
            }
            None => {}
        }
        let stored = entry.record(now_ms);
        let doc = indexed(&stored.metadata);
        let (expires, ttl) = (stored.expires_at_ms.map(ms), stored.ttl_ms.map(ms));
        db.bounded(tx.execute(
            &self.sql.upsert,
            &[
                &namespace,
                &stored.identity,
                &stored.metadata,
                &doc,
                &now,
                &expires,
                &ttl,
            ],
        ))
        .await?;
        db.bounded(tx.commit()).await?;
        Ok(PutOutcome::Stored(stored))
    }

    async fn get(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<Option<IdentityRecord>, BackendError> {
        let rows = self
            .db
            .query(&self.sql.get, &[&namespace, &ms(now_ms), &identity])
            .await?;
        Ok(rows.first().map(record))
    }

    async fn renew(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<Option<IdentityRecord>, BackendError> {
        let rows = self
            .db
            .query(&self.sql.renew, &[&namespace, &ms(now_ms), &identity])
            .await?;
        Ok(rows.first().map(record))
    }

    async fn remove(
        &self,
        namespace: &str,
        identity: &str,
        now_ms: u64,
    ) -> Result<bool, BackendError> {
        let rows = self
            .db
            .query(&self.sql.remove, &[&namespace, &ms(now_ms), &identity])
            .await?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    async fn list(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<RegistryPage, BackendError> {
        self.page(namespace, after, limit, now_ms, None).await
    }

    async fn list_where(
        &self,
        namespace: &str,
        conditions: &[MetadataEquals],
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<RegistryPage, BackendError> {
        match containment(conditions) {
            Ok(doc) => self.page(namespace, after, limit, now_ms, doc).await,
            Err(()) => Ok(RegistryPage::default()),
        }
    }

    async fn count(&self, namespace: &str, now_ms: u64) -> Result<u64, BackendError> {
        let rows = self
            .db
            .query(&self.sql.count, &[&namespace, &ms(now_ms)])
            .await?;
        Ok(rows
            .first()
            .map(|r| r.get::<_, i64>(0).max(0) as u64)
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(path: &[&str], value: &str) -> MetadataEquals {
        MetadataEquals {
            path: path.iter().map(|s| s.to_string()).collect(),
            value: value.into(),
        }
    }

    #[test]
    fn conditions_merge_into_one_containment_document() {
        let doc = containment(&[
            eq(&["type"], "\"sensor\""),
            eq(&["location", "building"], "\"HQ\""),
            eq(&["location", "lit"], "true"),
            // Not pushed: a number, a list, a NUL.
            eq(&["floor"], "2"),
            eq(&["tags"], "[\"a\"]"),
            eq(&["name"], "\"a\\u0000b\""),
        ]);
        assert_eq!(
            doc,
            Ok(Some(serde_json::json!({
                "type": "sensor",
                "location": {"building": "HQ", "lit": true}
            })))
        );
        assert_eq!(containment(&[eq(&["floor"], "2")]), Ok(None));
        assert_eq!(containment(&[]), Ok(None));
    }

    #[test]
    fn contradicting_conditions_match_nothing() {
        assert_eq!(
            containment(&[eq(&["type"], "\"a\""), eq(&["type"], "\"b\"")]),
            Err(())
        );
        assert_eq!(
            containment(&[eq(&["a"], "\"x\""), eq(&["a", "b"], "\"y\"")]),
            Err(())
        );
        assert_eq!(
            containment(&[eq(&["a"], "\"x\""), eq(&["a"], "\"x\"")]),
            Ok(Some(serde_json::json!({"a": "x"})))
        );
    }

    #[test]
    fn only_json_objects_are_indexed_and_nul_is_left_out() {
        assert_eq!(indexed("[1]"), None);
        assert_eq!(indexed("not json"), None);
        assert_eq!(
            indexed(r#"{"a":"x\u0000","b\u0000":1,"c":["y\u0000"],"d":"ok"}"#),
            Some(serde_json::json!({"a": null, "c": [null], "d": "ok"}))
        );
    }
}

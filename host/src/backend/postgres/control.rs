//! The control store on PostgreSQL: `<prefix>_control` holds one row per
//! document (key, revision, value; a NULL value is a tombstone), revisions
//! come from one sequence, and each write sends a NOTIFY on the channel
//! `<prefix>_control` that every replica LISTENs to. Writers take one
//! advisory lock for their short transaction, so revisions commit in the
//! order they are drawn and "every row after revision N" misses nothing.
//! Components sit in `<prefix>_control_blobs` by digest (bytea).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::Postgres;
use crate::backend::BackendError;
use crate::backend::control::{ControlError, ControlStore, Document, REPORT_TTL};
use crate::config::PostgresConfig;

/// How often a watcher asks for changes when no NOTIFY came (a
/// notification lost with a connection must not hide a change for long).
const POLL: Duration = Duration::from_secs(5);

/// Rows one watch query reads.
const PAGE: i64 = 500;

pub struct PgControl {
    tables: Arc<Tables>,
}

/// The database and the control tables' names (shared with the watch's task).
struct Tables {
    db: Arc<Postgres>,
    table: String,
    blobs: String,
    replicas: String,
    sequence: String,
    /// The NOTIFY channel (also the advisory lock's name).
    channel: String,
    ready: AtomicBool,
    creating: tokio::sync::Mutex<()>,
}

impl PgControl {
    pub fn new(name: &str, config: &PostgresConfig) -> Result<PgControl, String> {
        let db = Postgres::connector(name, config).map_err(|e| e.0)?;
        let prefix = config.table_prefix(name);
        let tables = Tables {
            db,
            table: format!("\"{prefix}_control\""),
            blobs: format!("\"{prefix}_control_blobs\""),
            replicas: format!("\"{prefix}_control_replicas\""),
            sequence: format!("\"{prefix}_control_revision\""),
            channel: format!("{prefix}_control"),
            ready: AtomicBool::new(false),
            creating: tokio::sync::Mutex::new(()),
        };
        Ok(PgControl {
            tables: Arc::new(tables),
        })
    }
}

impl Tables {
    /// A pooled connection with the control tables in place.
    async fn conn(&self) -> Result<deadpool_postgres::Object, BackendError> {
        let mut conn = self.db.connection().await?;
        if self.ready.load(Ordering::Acquire) {
            return Ok(conn);
        }
        let _creating = self.creating.lock().await;
        if !self.ready.load(Ordering::Acquire) {
            let (t, b, s, r) = (&self.table, &self.blobs, &self.sequence, &self.replicas);
            let ddl = format!(
                "CREATE SEQUENCE IF NOT EXISTS {s};
                CREATE TABLE IF NOT EXISTS {t} (
                    key text COLLATE \"C\" PRIMARY KEY,
                    revision bigint NOT NULL,
                    value bytea,
                    written_at timestamptz NOT NULL DEFAULT now()
                );
                -- Tables made before tombstones were forgotten.
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS written_at timestamptz NOT NULL DEFAULT now();
                CREATE INDEX IF NOT EXISTS \"{}_revision\" ON {t} (revision);
                CREATE TABLE IF NOT EXISTS {b} (
                    digest text PRIMARY KEY,
                    bytes bytea NOT NULL
                );
                CREATE TABLE IF NOT EXISTS {r} (
                    replica text PRIMARY KEY,
                    report bytea NOT NULL,
                    at timestamptz NOT NULL
                );",
                self.channel
            );
            self.db
                .create_locked(&mut conn, &format!("prism-schema:{}", self.channel), &ddl)
                .await?;
            self.ready.store(true, Ordering::Release);
        }
        Ok(conn)
    }

    async fn rows_after(&self, after: u64, limit: i64) -> Result<Vec<Document>, BackendError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT key, revision, value FROM {} WHERE revision > $1 ORDER BY revision LIMIT $2",
            self.table
        );
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self.db.bounded(conn.query(&sql, &[&after, &limit])).await?;
        Ok(rows
            .iter()
            .map(|row| Document {
                key: row.get(0),
                revision: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                value: row.get(2),
            })
            .collect())
    }

    /// Follows the table from `after` until the LISTEN connection or a
    /// query fails, sending each document; returns why it stopped.
    async fn follow(
        self: Arc<Self>,
        mut after: u64,
        out: tokio::sync::mpsc::Sender<Result<Document, BackendError>>,
    ) -> BackendError {
        let (client, mut connection) = match self
            .db
            .bounded(self.db.pg.connect(self.db.tls.clone()))
            .await
        {
            Ok(pair) => pair,
            Err(e) => return e,
        };
        // The connection's messages: notifications wake the reader below.
        let wake = Arc::new(tokio::sync::Notify::new());
        let (woken, summary) = (wake.clone(), self.db.summary.clone());
        let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            let why = loop {
                match messages.next().await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => woken.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.to_string(),
                    None => break "connection closed".to_string(),
                }
            };
            tracing::debug!(store = %summary, reason = %why, "control store LISTEN connection ended");
            let _ = gone_tx.send(why);
        });
        let listen = format!("LISTEN \"{}\"", self.channel);
        if let Err(e) = self.db.bounded(client.batch_execute(&listen)).await {
            return e;
        }
        loop {
            // Everything written so far (LISTEN came first, so nothing
            // written from here on goes unnoticed).
            loop {
                let docs = match self.rows_after(after, PAGE).await {
                    Ok(docs) => docs,
                    Err(e) => return e,
                };
                let full = docs.len() as i64 == PAGE;
                for doc in docs {
                    after = after.max(doc.revision);
                    if out.send(Ok(doc)).await.is_err() {
                        return BackendError::Internal("nobody watches any more".into());
                    }
                }
                if !full {
                    break;
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                why = &mut gone => {
                    return BackendError::Unavailable {
                        backend: self.db.summary.clone(),
                        reason: format!("the LISTEN connection ended ({})", why.unwrap_or_default()),
                    };
                }
                _ = out.closed() => {
                    return BackendError::Internal("nobody watches any more".into());
                }
            }
        }
    }
}

/// Takes the writers' lock for the rest of transaction `tx`: writers draw
/// and commit revisions under it, one at a time, in order.
async fn lock_writers(
    tx: &deadpool_postgres::Transaction<'_>,
    channel: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&channel],
    )
    .await
    .map(drop)
}

#[async_trait]
impl ControlStore for PgControl {
    fn summary(&self) -> String {
        self.tables.db.summary.clone()
    }

    async fn load(&self) -> Result<(Vec<Document>, u64), BackendError> {
        // Every revision drawn so far has committed once the writers' lock
        // is ours: the cursor covers them all, a forgotten tombstone's too
        // (the last row's revision alone would not).
        let drawn = {
            let mut conn = self.tables.conn().await?;
            let (s, channel) = (&self.tables.sequence, self.tables.channel.clone());
            let sql = format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {s}");
            let work = async {
                let tx = conn.transaction().await?;
                lock_writers(&tx, &channel).await?;
                let drawn: i64 = tx.query_one(&sql, &[]).await?.get(0);
                tx.commit().await?;
                Ok(drawn)
            };
            u64::try_from(self.tables.db.bounded(work).await?).unwrap_or(0)
        };
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.tables.rows_after(after, 10_000).await?;
            let done = page.len() < 10_000;
            after = page.last().map_or(after, |d| d.revision);
            all.extend(page);
            if done {
                return Ok((all, after.max(drawn)));
            }
        }
    }

    async fn put(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        expected: u64,
    ) -> Result<u64, ControlError> {
        let mut conn = self.tables.conn().await?;
        let (t, s) = (&self.tables.table, &self.tables.sequence);
        let write = if expected == 0 {
            format!(
                // A tombstone counts as no document.
                "INSERT INTO {t} (key, revision, value) VALUES ($1, nextval('{s}'), $2)
                 ON CONFLICT (key) DO UPDATE
                    SET value = EXCLUDED.value, revision = EXCLUDED.revision, written_at = now()
                    WHERE {t}.value IS NULL
                 RETURNING revision"
            )
        } else {
            format!(
                "UPDATE {t} SET value = $2, revision = nextval('{s}'), written_at = now()
                 WHERE key = $1 AND revision = $3 AND value IS NOT NULL RETURNING revision"
            )
        };
        let current = format!("SELECT revision FROM {t} WHERE key = $1 AND value IS NOT NULL");
        let expected_sql = i64::try_from(expected).unwrap_or(i64::MAX);
        let channel = self.tables.channel.clone();
        let work = async {
            let tx = conn.transaction().await?;
            lock_writers(&tx, &channel).await?;
            let rows = if expected == 0 {
                tx.query(&write, &[&key, &value]).await?
            } else {
                tx.query(&write, &[&key, &value, &expected_sql]).await?
            };
            let Some(row) = rows.first() else {
                let now = tx.query(&current, &[&key]).await?;
                let at: i64 = now.first().map_or(0, |r| r.get(0));
                tx.rollback().await?;
                return Ok(Err(u64::try_from(at).unwrap_or(0)));
            };
            let revision: i64 = row.get(0);
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&channel, &revision.to_string()],
            )
            .await?;
            tx.commit().await?;
            Ok(Ok(u64::try_from(revision).unwrap_or(0)))
        };
        match self.tables.db.bounded(work).await? {
            Ok(revision) => Ok(revision),
            Err(current) => Err(ControlError::Conflict {
                key: key.to_string(),
                expected,
                current,
            }),
        }
    }

    async fn watch(
        &self,
        after: u64,
    ) -> Result<BoxStream<'static, Result<Document, BackendError>>, BackendError> {
        // A first contact, so an unreachable store is reported here.
        drop(self.tables.conn().await?);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let me = self.tables.clone();
        tokio::spawn(async move {
            let why = me.follow(after, tx.clone()).await;
            let _ = tx.send(Err(why)).await;
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    async fn put_blob(&self, digest: &str, bytes: Arc<[u8]>) -> Result<(), BackendError> {
        let conn = self.tables.conn().await?;
        let sql = format!(
            "INSERT INTO {} (digest, bytes) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
            self.tables.blobs
        );
        let bytes: &[u8] = &bytes;
        self.tables
            .db
            .bounded(conn.execute(&sql, &[&digest, &bytes]))
            .await?;
        Ok(())
    }

    async fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let conn = self.tables.conn().await?;
        let sql = format!("SELECT bytes FROM {} WHERE digest = $1", self.tables.blobs);
        let rows = self.tables.db.bounded(conn.query(&sql, &[&digest])).await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn delete_blob(&self, digest: &str) -> Result<(), BackendError> {
        let conn = self.tables.conn().await?;
        let sql = format!("DELETE FROM {} WHERE digest = $1", self.tables.blobs);
        self.tables
            .db
            .bounded(conn.execute(&sql, &[&digest]))
            .await?;
        Ok(())
    }

    async fn forget_tombstones(&self, older_than: Duration) -> Result<u64, BackendError> {
        let conn = self.tables.conn().await?;
        let sql = format!(
            "DELETE FROM {} WHERE value IS NULL AND written_at < now() - make_interval(secs => $1)",
            self.tables.table
        );
        let age = older_than.as_secs_f64();
        self.tables.db.bounded(conn.execute(&sql, &[&age])).await
    }

    async fn report(&self, replica: &str, report: Vec<u8>) -> Result<(), BackendError> {
        let conn = self.tables.conn().await?;
        let r = &self.tables.replicas;
        // Reports of replicas long gone are dropped as they are written.
        let sql = format!(
            "WITH gone AS (DELETE FROM {r} WHERE at < now() - interval '1 hour')
             INSERT INTO {r} (replica, report, at) VALUES ($1, $2, now())
             ON CONFLICT (replica) DO UPDATE SET report = EXCLUDED.report, at = EXCLUDED.at"
        );
        self.tables
            .db
            .bounded(conn.execute(&sql, &[&replica, &report]))
            .await?;
        Ok(())
    }

    async fn reports(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        let conn = self.tables.conn().await?;
        let sql = format!(
            "SELECT report FROM {} WHERE at > now() - make_interval(secs => $1) ORDER BY replica",
            self.tables.replicas
        );
        let ttl = REPORT_TTL.as_secs_f64();
        let rows = self.tables.db.bounded(conn.query(&sql, &[&ttl])).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

//! PostgreSQL: the connection pool, schema set-up and error mapping shared
//! by the `kv` ([`kv`]) and `registry`
//! ([`registry`]) backends of one configured database.
//!
//! Connections are made lazily (Prism starts while the database is down),
//! every statement runs under the backend timeout, and the tables are
//! created on first use — under an advisory lock, because two Prism
//! processes meeting an empty database at once would otherwise race on
//! `CREATE TABLE IF NOT EXISTS` (it is not atomic against itself).

pub mod control;
pub mod kv;
pub mod registry;
mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use self::tls::MakeRustls;

use crate::backend::BackendError;
use crate::config::PostgresConfig;

/// Rows one sweep statement deletes, so a sweep never holds long locks.
const SWEEP_BATCH: i64 = 1000;

/// Connections single statements share (at most; never more than the pool).
const SHARED_CONNECTIONS: usize = 4;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PostgresConfigError(pub String);

/// One configured database: its pool and its two tables.
pub struct Postgres {
    /// "PostgreSQL 'pg' at 127.0.0.1:5432/prism": never the password.
    summary: String,
    pool: Pool,
    timeout: Duration,
    /// `"<prefix>_kv"`, quoted.
    pub(crate) kv_table: String,
    /// `"<prefix>_registry"`, quoted.
    pub(crate) registry_table: String,
    prefix: String,
    /// Whether the tables exist (as far as this process knows: a dropped
    /// table turns it off again, and the next request recreates them).
    schema_ready: AtomicBool,
    schema_lock: tokio::sync::Mutex<()>,
    /// Single statements run on a few shared connections: tokio-postgres
    /// pipelines concurrent queries on one connection, so a request never
    /// waits for a connection of its own. Transactions take one from `pool`.
    shared: Vec<tokio::sync::Mutex<Option<Shared>>>,
    next: AtomicUsize,
    pg: tokio_postgres::Config,
    tls: MakeRustls,
}

/// One shared connection and the statements prepared on it.
#[derive(Clone)]
struct Shared {
    client: Arc<Client>,
    statements: Arc<parking_lot::Mutex<HashMap<String, Statement>>>,
}

impl Postgres {
    /// The backend named `name`; starts its expiry sweeper (needs a tokio runtime).
    pub fn new(name: &str, config: &PostgresConfig) -> Result<Arc<Postgres>, PostgresConfigError> {
        let backend = Postgres::connector(name, config)?;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(sweep_forever(
                Arc::downgrade(&backend),
                Duration::from_millis(config.sweep_interval_ms),
            ));
        }
        Ok(backend)
    }

    /// The database's pool and settings, without the expiry sweeper (the
    /// control store shares the database, not the data tables).
    pub(crate) fn connector(
        name: &str,
        config: &PostgresConfig,
    ) -> Result<Arc<Postgres>, PostgresConfigError> {
        let (url, verify) = tls::read_sslmode(&config.url, &config.tls());
        let pg: tokio_postgres::Config = url.parse().map_err(|_| {
            PostgresConfigError(
                "not a usable PostgreSQL URL (postgres://user[:password]@host[:port]/database[?sslmode=disable|prefer|require|verify-ca|verify-full])"
                    .into(),
            )
        })?;
        // One connector for every mode: with `disable` tokio-postgres never calls it.
        let tls = MakeRustls::new(
            tls::client_config(&config.tls(), verify).map_err(PostgresConfigError)?,
        );
        let host = match pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let database = pg.get_dbname().unwrap_or("postgres").to_string();
        let summary = format!("PostgreSQL '{name}' at {host}:{port}/{database}");
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut pg = pg;
        pg.connect_timeout(timeout);
        pg.application_name("prism");
        // The server gives up when Prism does: a statement or lock wait past
        // the timeout is cancelled there too, so a connection handed back
        // to the pool after a timeout is not still busy.
        pg.options(format!(
            "-c statement_timeout={ms} -c lock_timeout={ms}",
            ms = config.timeout_ms
        ));
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| PostgresConfigError(format!("cannot set up the pool ({e})")))?;
        let prefix = config.table_prefix(name);
        let backend = Arc::new(Postgres {
            summary,
            pool,
            timeout,
            kv_table: format!("\"{prefix}_kv\""),
            registry_table: format!("\"{prefix}_registry\""),
            prefix,
            schema_ready: AtomicBool::new(false),
            schema_lock: tokio::sync::Mutex::new(()),
            shared: (0..SHARED_CONNECTIONS.min(config.pool_size))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            pg,
            tls,
        });
        Ok(backend)
    }

    pub(crate) fn summary(&self) -> &str {
        &self.summary
    }

    /// A pooled connection, with the tables in place.
    pub(crate) async fn conn(&self) -> Result<Object, BackendError> {
        let mut conn = self.connection().await?;
        if !self.schema_ready.load(Ordering::Acquire) {
            let _creating = self.schema_lock.lock().await;
            if !self.schema_ready.load(Ordering::Acquire) {
                self.create_schema(&mut conn).await?;
                self.schema_ready.store(true, Ordering::Release);
            }
        }
        Ok(conn)
    }

    /// One statement on a shared connection, prepared there once; the
    /// tables are created first if this is the first use.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, BackendError> {
        if !self.schema_ready.load(Ordering::Acquire) {
            drop(self.conn().await?);
        }
        let (index, shared) = self.shared_connection().await?;
        let result = async {
            let cached = shared.statements.lock().get(sql).cloned();
            let statement = match cached {
                Some(s) => s,
                None => {
                    let s = self.bounded(shared.client.prepare(sql)).await?;
                    shared.statements.lock().insert(sql.to_string(), s.clone());
                    s
                }
            };
            self.bounded(shared.client.query(&statement, params)).await
        }
        .await;
        if result.is_err() && (shared.client.is_closed() || result_timed_out(&result)) {
            // A connection that stopped answering may never report itself
            // closed (a silent peer): the next request dials a new one. Other
            // errors (a deadlock, a constraint) leave the connection in use.
            let mut slot = self.shared[index].lock().await;
            if slot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.client, &shared.client))
            {
                *slot = None;
            }
        }
        result
    }

    /// A shared connection, round robin; a closed one is replaced (the
    /// request that finds it closed waits for the new one, within the timeout).
    async fn shared_connection(&self) -> Result<(usize, Shared), BackendError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len().max(1);
        let slot = &self.shared[index];
        let mut slot = match tokio::time::timeout(self.timeout, slot.lock()).await {
            Ok(guard) => guard,
            Err(_) => return Err(self.timed_out()),
        };
        if let Some(shared) = slot.as_ref()
            && !shared.client.is_closed()
        {
            return Ok((index, shared.clone()));
        }
        let (client, connection) = self.bounded(self.pg.connect(self.tls.clone())).await?;
        let summary = self.summary.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(backend = %summary, error = %e, "shared connection closed");
            }
        });
        let shared = Shared {
            client: Arc::new(client),
            statements: Arc::default(),
        };
        *slot = Some(shared.clone());
        Ok((index, shared))
    }

    async fn connection(&self) -> Result<Object, BackendError> {
        match tokio::time::timeout(self.timeout, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.pool_error(e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// A statement prepared once per connection (the pool keeps the cache).
    pub(crate) async fn prepare(
        &self,
        conn: &Object,
        sql: &str,
    ) -> Result<Statement, BackendError> {
        self.bounded(conn.prepare_cached(sql)).await
    }

    async fn create_schema(&self, conn: &mut Object) -> Result<(), BackendError> {
        let (kv, reg, p) = (&self.kv_table, &self.registry_table, &self.prefix);
        // Keys are bytea: exact bytes, byte order for prefix scans, and no
        // collation or NUL rules of `text` in the way. Identities are text
        // in the "C" collation, so their order is the byte order every
        // other registry backend pages in.
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {kv} (
                key bytea PRIMARY KEY,
                value bytea NOT NULL,
                expires_at timestamptz
            );
            CREATE INDEX IF NOT EXISTS \"{p}_kv_expiry\" ON {kv} (expires_at) WHERE expires_at IS NOT NULL;
            CREATE TABLE IF NOT EXISTS {reg} (
                namespace text COLLATE \"C\" NOT NULL,
                identity text COLLATE \"C\" NOT NULL,
                metadata text NOT NULL,
                doc jsonb,
                registered_at_ms bigint NOT NULL,
                expires_at_ms bigint,
                ttl_ms bigint,
                PRIMARY KEY (namespace, identity)
            );
            CREATE INDEX IF NOT EXISTS \"{p}_registry_expiry\" ON {reg} (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
            CREATE INDEX IF NOT EXISTS \"{p}_registry_doc\" ON {reg} USING gin (doc jsonb_path_ops);"
        );
        // Byte order of keys and identities, and jsonb's text, assume UTF-8.
        let encoding: String = self
            .bounded(conn.query_one("SELECT current_setting('server_encoding')", &[]))
            .await?
            .get(0);
        if encoding != "UTF8" {
            return Err(BackendError::Unavailable {
                backend: self.summary.clone(),
                reason: format!(
                    "the database's encoding is {}; Prism needs a UTF8 database (CREATE DATABASE … ENCODING 'UTF8')",
                    encoding.chars().take(32).collect::<String>()
                ),
            });
        }
        self.create_locked(conn, &format!("prism-schema:{p}"), &ddl)
            .await?;
        tracing::info!(backend = %self.summary, tables = %format!("{p}_kv, {p}_registry"), "PostgreSQL tables ready");
        Ok(())
    }

    /// Runs `ddl` in one transaction holding the advisory lock `lock`: two
    /// Prisms meeting an empty database at once would otherwise race on
    /// `CREATE ... IF NOT EXISTS` (it is not atomic against itself).
    pub(crate) async fn create_locked(
        &self,
        conn: &mut Object,
        lock: &str,
        ddl: &str,
    ) -> Result<(), BackendError> {
        let work = async {
            let tx = conn.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&lock],
            )
            .await?;
            tx.batch_execute(ddl).await?;
            tx.commit().await
        };
        self.bounded(work).await
    }

    /// Runs one database call within the backend timeout, mapping its errors.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| self.error(&e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    pub(crate) fn timed_out(&self) -> BackendError {
        BackendError::Unavailable {
            backend: self.summary.clone(),
            reason: format!("{NO_ANSWER} {} ms", self.timeout.as_millis()),
        }
    }

    fn pool_error(&self, e: PoolError) -> BackendError {
        match e {
            PoolError::Backend(e) => self.error(&e),
            PoolError::Timeout(_) => self.timed_out(),
            other => BackendError::Unavailable {
                backend: self.summary.clone(),
                reason: format!("no connection ({other})"),
            },
        }
    }

    /// The one mapping of database errors: texts name the backend and the
    /// SQLSTATE, never the URL or the statement's input.
    pub(crate) fn error(&self, e: &tokio_postgres::Error) -> BackendError {
        let unavailable = |reason: String| BackendError::Unavailable {
            backend: self.summary.clone(),
            reason,
        };
        let Some(db) = e.as_db_error() else {
            // No server answer: the connection is gone or never came up.
            return if e.is_closed() {
                unavailable("connection lost".into())
            } else {
                unavailable(format!("connection failed ({})", short_io(e)))
            };
        };
        let code = db.code();
        let class = &code.code()[..2];
        if *code == SqlState::DISK_FULL
            || *code == SqlState::OUT_OF_MEMORY
            || *code == SqlState::PROGRAM_LIMIT_EXCEEDED
        {
            BackendError::CapacityExceeded(format!(
                "{} refused the write ({}); nothing was written",
                self.summary,
                code.code()
            ))
        } else if *code == SqlState::DATETIME_FIELD_OVERFLOW
            || *code == SqlState::INTERVAL_FIELD_OVERFLOW
        {
            BackendError::InvalidArgument(format!(
                "{} cannot store an expiry that far ahead (SQLSTATE {})",
                self.summary,
                code.code()
            ))
        } else if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *code == SqlState::UNTRANSLATABLE_CHARACTER
        {
            BackendError::InvalidArgument(format!(
                "{} cannot store this text (SQLSTATE {}: e.g. a NUL character)",
                self.summary,
                code.code()
            ))
        } else if *code == SqlState::UNDEFINED_TABLE {
            // Someone dropped the tables: make them again on the next request.
            self.schema_ready.store(false, Ordering::Release);
            unavailable("its tables were dropped; they are recreated on the next request".into())
        } else if matches!(class, "08" | "28" | "3D" | "40" | "53" | "57" | "58")
            || *code == SqlState::INSUFFICIENT_PRIVILEGE
        {
            // Connection, credentials, missing database, rolled-back
            // transaction (deadlock, serialization: worth retrying),
            // resources, operator intervention (shutdown, admin cancel,
            // statement timeout), system errors, privileges: the server is
            // not serving this backend now.
            unavailable(format!("server answered SQLSTATE {}", code.code()))
        } else {
            BackendError::Internal(format!("{}: SQLSTATE {}", self.summary, code.code()))
        }
    }

    /// Deletes rows past their TTL, a bounded batch at a time.
    async fn sweep(&self) -> Result<u64, BackendError> {
        let conn = self.conn().await?;
        let kv = format!(
            // The outer test again: a row rewritten (live again) after the
            // subquery picked it must stay. now() (not clock_timestamp())
            // lets the expiry index answer.
            "DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED) AND expires_at <= now()",
            t = self.kv_table
        );
        let reg = format!(
            "DELETE FROM {t} WHERE (namespace, identity) IN (SELECT namespace, identity FROM {t} WHERE expires_at_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED) AND expires_at_ms <= $1",
            t = self.registry_table
        );
        let (kv, reg) = (
            self.prepare(&conn, &kv).await?,
            self.prepare(&conn, &reg).await?,
        );
        let mut total = 0;
        loop {
            let now = crate::clock::now_ms() as i64;
            let a = self.bounded(conn.execute(&kv, &[&SWEEP_BATCH])).await?;
            let b = self
                .bounded(conn.execute(&reg, &[&now, &SWEEP_BATCH]))
                .await?;
            total += a + b;
            if a < SWEEP_BATCH as u64 && b < SWEEP_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), BackendError> {
        self.query("SELECT 1", &[]).await.map(drop)
    }
}

fn result_timed_out<T>(result: &Result<T, BackendError>) -> bool {
    matches!(result, Err(BackendError::Unavailable { reason, .. }) if reason.starts_with(NO_ANSWER))
}

/// How a timed-out call's reason starts.
const NO_ANSWER: &str = "no answer within";

/// The first line of a connection error, without addresses it may carry.
fn short_io(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    let source = e
        .source()
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    if source.contains("refused") {
        "connection refused".into()
    } else if source.contains("password") || source.contains("authentication") {
        "authentication failed".into()
    } else if source.contains("timed out") || source.contains("timeout") {
        "timed out".into()
    } else {
        source.chars().take(80).collect()
    }
}

async fn sweep_forever(backend: Weak<Postgres>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once: nothing is there to sweep before first use.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(backend) = backend.upgrade() else {
            return;
        };
        if !backend.schema_ready.load(Ordering::Acquire) {
            continue;
        }
        match backend.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(backend = %backend.summary, deleted = n, "swept expired rows"),
            Err(e) => {
                tracing::debug!(backend = %backend.summary, error = %e, "expiry sweep skipped")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            pool_size: 2,
            timeout_ms: 200,
            table: None,
            sweep_interval_ms: 1000,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    #[test]
    fn summary_and_errors_never_show_the_password() -> Result<(), PostgresConfigError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PostgresConfigError(e.to_string()))?;
        let _guard = rt.enter();
        let pg = Postgres::new("pg", &config("postgres://u:s3cret@127.0.0.1:1/db"))?;
        assert_eq!(pg.summary(), "PostgreSQL 'pg' at 127.0.0.1:1/db");
        let err = rt
            .block_on(pg.ping())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("PostgreSQL 'pg' at 127.0.0.1:1/db is unavailable"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        assert_eq!(pg.kv_table, "\"prism_pg_kv\"");
        // Every libpq sslmode parses; an unknown one does not.
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let url = format!("postgres://u@h/db?sslmode={mode}");
            assert!(Postgres::new("tls", &config(&url)).is_ok(), "{mode}");
        }
        assert!(Postgres::new("bad", &config("postgres://u@h/db?sslmode=allow-maybe")).is_err());
        assert!(Postgres::new("bad", &config("postgres://h:notaport/db")).is_err());
        Ok(())
    }
}

//! tokio-postgres straight to the server Prism's PgKv uses, running the very
//! statements PgKv runs: the direct baseline of the PostgreSQL rows
//! (`postgres.rs`), and a load `Target` (`load.rs`). Below both,
//! so the load generator does not depend on the rows that use it.
//!
//! The direct side holds as many connections as Prism's pool (`pool_size`,
//! 16 by default), each with GET and SET prepared once, a request taking the
//! next one in turn: at concurrency 64 both sides then spread the load over
//! the same number of server backends, so the database does the same work
//! and neither side is measured against a bigger (or a single) connection
//! set. One difference remains: tokio-postgres pipelines the requests that
//! share a connection, where Prism's pool lends a connection to one request
//! at a time.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use prism_acceptance::servers::PostgresServer;

/// Prism's default `pool_size`, which the config of `postgres_rows`
/// (`postgres.rs`) leaves as it is.
const POOL: usize = 16;

/// PgKv's GET (`Statements::new` in host/src/backend/postgres_kv.rs) on the
/// table of a backend named `pg`.
const GET_SQL: &str = "SELECT value FROM \"prism_pg_kv\" WHERE key = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())";

/// PgKv's SET upsert, as above (only its line breaks differ); the bench
/// writes with no TTL, so `$3` is NULL and `expires_at` too.
const SET_SQL: &str = "INSERT INTO \"prism_pg_kv\" (key, value, expires_at) \
     SELECT $1, $2, CASE WHEN e IS NULL THEN NULL ELSE clock_timestamp() + e * interval '1 millisecond' END FROM (SELECT $3::bigint AS e) ttl \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at";

/// tokio-postgres direct: `POOL` connections with PgKv's statements
/// prepared, taken round-robin, on the row Prism stores for `BENCH_KEY`.
pub struct Direct {
    conns: Vec<Conn>,
    next: AtomicUsize,
    /// `default/<BENCH_KEY>`: the key as the capability layer scopes it.
    key: Vec<u8>,
}

struct Conn {
    client: tokio_postgres::Client,
    get: tokio_postgres::Statement,
    set: tokio_postgres::Statement,
}

impl Direct {
    /// Needs the table in place (Prism creates it on first use), or the
    /// statements cannot be prepared.
    pub async fn connect(pg: &PostgresServer, key: Vec<u8>) -> anyhow::Result<Direct> {
        let mut conns = Vec::with_capacity(POOL);
        for _ in 0..POOL {
            // `client()` spawns the connection's task, which drives its socket.
            let client = pg.client().await?;
            let get = client.prepare(GET_SQL).await.context("preparing GET")?;
            let set = client.prepare(SET_SQL).await.context("preparing SET")?;
            conns.push(Conn { client, get, set });
        }
        Ok(Direct {
            conns,
            next: AtomicUsize::new(0),
            key,
        })
    }

    fn conn(&self) -> anyhow::Result<&Conn> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
        self.conns.get(i).context("no PostgreSQL connections")
    }

    /// One GET, checked to return `payload`: a missing row would be a
    /// cheaper query, and the row would measure something else.
    pub async fn get(&self, payload: &[u8]) -> anyhow::Result<()> {
        let conn = self.conn()?;
        // `query`, not `query_opt`, because that is what PgKv calls.
        let rows = conn
            .client
            .query(&conn.get, &[&self.key.as_slice()])
            .await?;
        let row = rows
            .first()
            .context("the bench key is not in prism_pg_kv")?;
        let value: Vec<u8> = row.try_get(0)?;
        anyhow::ensure!(
            value == payload,
            "prism_pg_kv holds {} bytes for the bench key, not the {}-byte payload",
            value.len(),
            payload.len()
        );
        Ok(())
    }

    pub async fn set(&self, payload: &[u8]) -> anyhow::Result<()> {
        let conn = self.conn()?;
        let ttl: Option<i64> = None;
        conn.client
            .query(&conn.set, &[&self.key.as_slice(), &payload, &ttl])
            .await?;
        Ok(())
    }
}

//! KeyValue on PostgreSQL: Prism (its own process, `kv` on a `postgres`
//! backend) against tokio-postgres straight to the same server running the
//! very statements Prism's PgKv runs, with Prism on MemStore in the same
//! interleaved group so the PostgreSQL path can also be read against Prism's
//! own in-memory one. The gap to the direct client is what Prism adds in
//! front of the database: gRPC, the guest, the pool and statement cache.
//!
//! The direct side holds as many connections as Prism's pool (`pool_size`,
//! 16 by default), each with GET and SET prepared once, a request taking the
//! next one in turn: at concurrency 64 both sides then spread the load over
//! the same number of server backends, so the database does the same work
//! and neither side is measured against a bigger (or a single) connection
//! set. One difference remains: tokio-postgres pipelines the requests that
//! share a connection, where Prism's pool lends a connection to one request
//! at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use prism_acceptance::servers::PostgresServer;

use crate::kv::{self, Servers};
use crate::load::{self, Op, Target, run_interleaved};
use crate::procs::Server;
use crate::report::{Report, Row};

/// Prism's default `pool_size`, which the config below leaves as it is.
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
    async fn connect(pg: &PostgresServer, key: Vec<u8>) -> anyhow::Result<Direct> {
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

/// Prism on PostgreSQL vs tokio-postgres direct to the same server, with
/// Prism on MemStore (`servers.prism`) in the same interleaved group.
pub async fn postgres_rows(
    report: &mut Report,
    servers: &Servers,
    payload: &[u8],
    measure: Duration,
) -> anyhow::Result<()> {
    let pg = PostgresServer::start().await?;
    let toml = format!(
        "[backends.pg]\ntype = \"postgres\"\nurl = \"{}\"\n[namespaces.default]\npattern = \"keyvalue\"\nslots = {{ kv = \"pg\" }}\n",
        pg.url()
    );
    let on_pg = Server::prism(&toml).await?;
    let on_pg_kv = kv::key_value(on_pg.addr).await?;
    // Through Prism first: it creates prism_pg_kv, which the direct side prepares against.
    kv::seed(&on_pg_kv, payload).await?;
    let stored_key = format!("default/{}", load::BENCH_KEY).into_bytes();
    let direct = Arc::new(Direct::connect(&pg, stored_key).await?);
    // Fails early, and clearly, if Prism stored the key elsewhere.
    direct.get(payload).await?;
    let memstore = kv::key_value(servers.prism.addr).await?;
    for op in [Op::Get, Op::Set] {
        for concurrency in [1usize, 64] {
            let targets = [
                Target::Postgres(direct.clone()),
                Target::Client(on_pg_kv.clone()),
                Target::Client(memstore.clone()),
            ];
            let results = run_interleaved(&targets, op, concurrency, measure, payload).await?;
            let [base, ours, mem] = <[_; 3]>::try_from(results)
                .map_err(|_| anyhow::anyhow!("three targets, three results"))?;
            let tag = format!("{}_c{concurrency}", op.name());
            report.push(Row::new(
                format!("prism_postgres_{tag}_throughput"),
                ours.throughput,
                "req/s",
                format!("tokio_postgres_direct_{tag}_throughput"),
                base.throughput,
            ));
            report.push(Row::new(
                format!("prism_postgres_{tag}_p50"),
                ours.p50_us,
                "us",
                format!("tokio_postgres_direct_{tag}_p50"),
                base.p50_us,
            ));
            report.push(Row::new(
                format!("prism_postgres_{tag}_vs_memstore_throughput"),
                ours.throughput,
                "req/s",
                format!("prism_memstore_{tag}_throughput"),
                mem.throughput,
            ));
        }
    }
    // Prism while its database is still up; the cluster is killed when
    // `pg`, declared first, drops last.
    on_pg.stop().await?;
    Ok(())
}

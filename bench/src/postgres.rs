//! KeyValue on PostgreSQL: Prism (its own process, `kv` on a `postgres`
//! backend) against tokio-postgres straight to the same server running the
//! very statements Prism's PgKv runs, with Prism on MemStore in the same
//! interleaved group so the PostgreSQL path can also be read against Prism's
//! own in-memory one. The gap to the direct client is what Prism adds in
//! front of the database: gRPC, the guest, the pool and statement cache.
//!
//! The direct side is [`Direct`](crate::pg_direct::Direct) (`pg_direct.rs`).

use std::sync::Arc;
use std::time::Duration;

use prism_acceptance::servers::PostgresServer;

use crate::kv::{self, Servers};
use crate::load::{self, Op, Target, run_interleaved};
use crate::pg_direct::Direct;
use crate::procs::Server;
use crate::report::{Report, Row};

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

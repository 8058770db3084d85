//! PostgreSQL-specific behaviour against a real server the test starts
//! (initdb + postgres on a free port): killed under load (every
//! acknowledged write still there after crash recovery, batches all or
//! nothing), down at start-up (UNAVAILABLE naming the backend, never the
//! password, then tables created on first use), two Prism processes meeting
//! an empty database at once, expired rows swept from the table, a storage
//! quota kept exactly, and registry filters pushed down to jsonb while the
//! pattern still decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prism_acceptance::registry::{filter, map};
use prism_acceptance::servers::PostgresServer;
use prism_acceptance::{eventually, pb, start};
use tonic::Code;

fn config(url: &str, extra_ns: &str) -> String {
    format!(
        r#"
[backends.pg]
type = "postgres"
url = "{url}"
timeout_ms = 500

[namespaces.orders]
pattern = "keyvalue"
slots = {{ kv = "pg" }}
{extra_ns}
"#
    )
}

fn set(key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> pb::SetRequest {
    pb::SetRequest {
        key: key.into(),
        value,
        ttl_ms,
    }
}

fn batch(number: u64, n: usize) -> pb::BatchSetRequest {
    pb::BatchSetRequest {
        entries: (0..n)
            .map(|i| set(&format!("batch:{number}:{i}"), vec![7; 128], None))
            .collect(),
    }
}

/// Rows of batch `number` in the table, read straight from PostgreSQL.
async fn batch_rows(pg: &PostgresServer, number: u64) -> anyhow::Result<i64> {
    let client = pg.client().await?;
    let pattern = format!("orders/batch:{number}:%");
    let row = client
        .query_one(
            "SELECT count(*) FROM prism_pg_kv WHERE convert_from(key, 'UTF8') LIKE $1",
            &[&pattern],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_loses_no_acknowledged_write_and_recovers() -> anyhow::Result<()> {
    let mut pg = PostgresServer::start().await?;
    let t = start(&config(&pg.url(), "")).await?;
    // Per key: (last acknowledged, last attempted) value.
    let last: Arc<Mutex<std::collections::HashMap<String, (u64, u64)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<(Code, String)>>> = Arc::default();
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let (ok, ok_after) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (stop, restarted) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut kv = t.kv("orders");
            let (last, errors, slowest) = (last.clone(), errors.clone(), slowest.clone());
            let (ok, ok_after, stop, restarted) = (
                ok.clone(),
                ok_after.clone(),
                stop.clone(),
                restarted.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("load:{w}:{}", i % 50);
                    last.lock().entry(key.clone()).or_default().1 = i;
                    let started = Instant::now();
                    let result = kv.set(set(&key, i.to_le_bytes().to_vec(), None)).await;
                    {
                        let mut s = slowest.lock();
                        *s = (*s).max(started.elapsed());
                    }
                    match result {
                        Ok(_) => {
                            last.lock().entry(key).or_default().0 = i;
                            ok.fetch_add(1, Ordering::Relaxed);
                            if restarted.load(Ordering::Relaxed) {
                                ok_after.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(s) => {
                            errors.lock().push((s.code(), s.message().to_string()));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    anyhow::ensure!(
        eventually(Duration::from_secs(15), || async {
            ok.load(Ordering::Relaxed) > 300
        })
        .await,
        "no load got through"
    );
    pg.kill().await;
    anyhow::ensure!(
        eventually(Duration::from_secs(10), || async {
            !errors.lock().is_empty()
        })
        .await,
        "writes kept succeeding after PostgreSQL was killed"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.restart().await?;
    restarted.store(true, Ordering::Relaxed);
    anyhow::ensure!(
        eventually(Duration::from_secs(20), || async {
            ok_after.load(Ordering::Relaxed) > 100
        })
        .await,
        "Prism did not recover after PostgreSQL came back"
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let port = pg.port();
    for (code, message) in errors.lock().iter() {
        assert_eq!(*code, Code::Unavailable, "{message}");
        assert!(
            message.contains(&format!("PostgreSQL 'pg' at 127.0.0.1:{port}/prism")),
            "backend not named: {message}"
        );
        assert!(!message.contains("s3cret"), "password leaked: {message}");
    }
    let slowest = *slowest.lock();
    // The point is "no hang": the statement timeout is 500 ms.
    assert!(
        slowest < Duration::from_secs(3),
        "a request hung for {slowest:?}"
    );
    // Every key holds its last acknowledged value, or a later attempt's
    // whose answer was lost in the crash; never an older one.
    let last = last.lock().clone();
    let mut kv = t.kv("orders");
    for (key, (acked, attempted)) in &last {
        let stored = match kv.get(pb::GetRequest { key: key.clone() }).await {
            Ok(r) => u64::from_le_bytes(r.into_inner().value.as_slice().try_into()?),
            Err(s) if s.code() == Code::NotFound && *acked == 0 => continue,
            Err(s) => anyhow::bail!("{key}: {s:?}"),
        };
        assert!(
            stored >= *acked && stored <= *attempted,
            "{key}: stored {stored}, last acknowledged {acked}, last attempted {attempted}"
        );
    }
    println!(
        "{} writes acknowledged, {} errors (all UNAVAILABLE), slowest {slowest:?}; {} keys at their last acknowledged value or later",
        ok.load(Ordering::Relaxed),
        errors.lock().len(),
        last.len()
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_all_or_nothing_when_postgres_dies_mid_stream() -> anyhow::Result<()> {
    const KEYS: usize = 50;
    let mut pg = PostgresServer::start().await?;
    let t = start(&config(&pg.url(), "")).await?;
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let attempted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, attempted, stop) = (acked.clone(), attempted.clone(), stop.clone());
        let mut kv = t.kv("orders");
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                attempted.store(n, Ordering::Relaxed);
                if kv.batch_set(batch(n, KEYS)).await.is_ok() {
                    acked.lock().push(n);
                }
            }
        })
    };
    anyhow::ensure!(
        eventually(Duration::from_secs(20), || async {
            acked.lock().len() >= 30
        })
        .await,
        "batches too slow"
    );
    pg.kill().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    pg.restart().await?;
    let acked = acked.lock().clone();
    let attempted = attempted.load(Ordering::Relaxed);
    let mut partial = Vec::new();
    for n in 1..=attempted {
        let rows = batch_rows(&pg, n).await?;
        if rows != 0 && rows != KEYS as i64 {
            partial.push((n, rows));
        }
        if acked.contains(&n) {
            assert_eq!(rows, KEYS as i64, "acknowledged batch {n} lost rows");
        }
    }
    assert!(partial.is_empty(), "half-written batches: {partial:?}");
    println!(
        "{} batches acknowledged of {attempted}; each all or nothing after crash recovery",
        acked.len()
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_startup_is_unavailable_then_tables_appear_on_first_use() -> anyhow::Result<()> {
    let mut pg = PostgresServer::start().await?;
    pg.kill().await;
    let t = start(&config(&pg.url(), "")).await?;
    let mut kv = t.kv("orders");
    let started = Instant::now();
    let err = kv
        .get(pb::GetRequest { key: "k".into() })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a get succeeded with PostgreSQL down"))?;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("PostgreSQL 'pg' at 127.0.0.1:"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("s3cret"), "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    pg.restart().await?;
    anyhow::ensure!(
        eventually(Duration::from_secs(15), || async {
            let mut kv = t.kv("orders");
            kv.set(set("k", b"v".to_vec(), None)).await.is_ok()
        })
        .await,
        "never recovered"
    );
    let client = pg.client().await?;
    let row = client
        .query_one(
            "SELECT convert_from(key, 'UTF8'), value FROM prism_pg_kv WHERE key = 'orders/k'::bytea",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "orders/k");
    assert_eq!(row.get::<_, Vec<u8>>(1), b"v");
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_meet_an_empty_database_and_share_it() -> anyhow::Result<()> {
    let pg = PostgresServer::start().await?;
    let toml = config(&pg.url(), "");
    let (a, b) = tokio::try_join!(start(&toml), start(&toml))?;
    // Both create tables on their first request, at the same moment.
    let (mut ka, mut kb) = (a.kv("orders"), b.kv("orders"));
    let (ra, rb) = tokio::join!(
        ka.set(set("from-a", b"1".to_vec(), None)),
        kb.set(set("from-b", b"2".to_vec(), None))
    );
    ra?;
    rb?;
    let got = kb
        .get(pb::GetRequest {
            key: "from-a".into(),
        })
        .await?
        .into_inner();
    assert_eq!(got.value, b"1");
    let got = ka
        .get(pb::GetRequest {
            key: "from-b".into(),
        })
        .await?
        .into_inner();
    assert_eq!(got.value, b"2");
    a.stop().await?;
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rows_are_swept_from_the_table() -> anyhow::Result<()> {
    let pg = PostgresServer::start().await?;
    let t = start(&format!(
        "[backends.pg]\ntype = \"postgres\"\nurl = \"{}\"\nsweep_interval_ms = 200\n[namespaces.orders]\npattern = \"keyvalue\"\nslots = {{ kv = \"pg\" }}\n",
        pg.url()
    ))
    .await?;
    let mut kv = t.kv("orders");
    for i in 0..20 {
        kv.set(set(&format!("short:{i}"), b"x".to_vec(), Some(300)))
            .await?;
    }
    kv.set(set("kept", b"x".to_vec(), None)).await?;
    let client = pg.client().await?;
    let rows = || async {
        client
            .query_one("SELECT count(*) FROM prism_pg_kv", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    };
    assert_eq!(rows().await, 21);
    anyhow::ensure!(
        eventually(Duration::from_secs(10), || async { rows().await == 1 }).await,
        "expired rows were not swept: {} left",
        rows().await
    );
    assert!(kv.get(pb::GetRequest { key: "kept".into() }).await.is_ok());
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_quota_is_exact_on_postgres() -> anyhow::Result<()> {
    let pg = PostgresServer::start().await?;
    let t = start(&config(
        &pg.url(),
        "[namespaces.orders.limits]\nmax_stored_keys = 10\n\n[namespaces.other]\npattern = \"keyvalue\"\nslots = { kv = \"pg\" }\n",
    ))
    .await?;
    let mut kv = t.kv("orders");
    // Thirty concurrent writers race for ten places: exactly 10 keys fit.
    let attempts: Vec<_> = (0..30)
        .map(|i| {
            let mut kv = t.kv("orders");
            tokio::spawn(
                async move { (i, kv.set(set(&format!("k{i}"), b"v".to_vec(), None)).await) },
            )
        })
        .collect();
    let (mut stored, mut refused, mut a_stored_key) = (0, 0, None);
    for a in attempts {
        let (i, result) = a.await?;
        match result {
            Ok(_) => {
                stored += 1;
                a_stored_key = Some(format!("k{i}"));
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("max_stored_keys"), "{}", s.message());
                refused += 1
            }
            Err(s) => anyhow::bail!("unexpected {s:?}"),
        }
    }
    assert_eq!((stored, refused), (10, 20));
    // Overwriting a stored key fits at the limit; a batch that would go
    // over writes nothing.
    let key = a_stored_key.ok_or_else(|| anyhow::anyhow!("no key was stored"))?;
    kv.set(set(&key, b"again".to_vec(), None)).await?;
    let over = kv.batch_set(batch(1, 2)).await;
    assert_eq!(over.err().map(|s| s.code()), Some(Code::ResourceExhausted));
    assert_eq!(batch_rows(&pg, 1).await?, 0);
    // Another namespace on the same table is not limited by this one.
    let mut other = t.kv("other");
    other.batch_set(batch(2, 20)).await?;
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_filters_are_pushed_down_and_the_pattern_still_decides() -> anyhow::Result<()> {
    // pg_stat_statements counts the rows each statement returned: what
    // left the database, so what was filtered there.
    let pg = PostgresServer::start_with(&["shared_preload_libraries=pg_stat_statements"]).await?;
    let client = pg.client().await?;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await?;
    let t = start(&format!(
        "[backends.pg]\ntype = \"postgres\"\nurl = \"{}\"\n[backends.bus]\ntype = \"memstore\"\n[namespaces.devices]\npattern = \"multicast-registry\"\nslots = {{ registry = \"pg\", messaging = \"bus\" }}\n",
        pg.url()
    ))
    .await?;
    let mut reg = t.registry("devices");
    for i in 0..600u32 {
        let kind = if i % 100 == 0 { "sensor" } else { "light" };
        let meta = serde_json::json!({
            "type": kind, "floor": i % 5, "location": {"building": if i % 2 == 0 { "HQ" } else { "Lab" }},
            "note": "nul\u{0}inside"
        });
        reg.register(pb::RegisterRequest {
            identity: format!("dev-{i:04}"),
            metadata: Some(map(meta)),
            ttl_ms: None,
            replace: false,
        })
        .await?;
    }
    let enumerate = |f: serde_json::Value| {
        let mut reg = t.registry("devices");
        async move {
            let mut names = Vec::new();
            let mut cursor = String::new();
            loop {
                let page = reg
                    .enumerate(pb::EnumerateRequest {
                        filter: filter(f.clone()),
                        limit: 50,
                        cursor: cursor.clone(),
                    })
                    .await?
                    .into_inner();
                names.extend(page.identities.into_iter().map(|i| i.identity));
                if page.next_cursor.is_empty() {
                    return anyhow::Ok(names);
                }
                cursor = page.next_cursor;
            }
        }
    };
    // Pushed down: type = sensor (a string) and building = HQ (nested).
    client
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await?;
    let sensors =
        enumerate(serde_json::json!({"type": "sensor", "location.building": "HQ"})).await?;
    let want: Vec<String> = (0..600)
        .step_by(100)
        .map(|i| format!("dev-{i:04}"))
        .collect();
    assert_eq!(sensors, want);
    // One containment query, and only the 6 matches left the database (the
    // pattern filtering 600 rows itself would have read them all).
    let row = client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(rows), 0)::bigint
             FROM pg_stat_statements WHERE query LIKE '%doc @>%' AND query LIKE '%prism_pg_registry%'",
            &[],
        )
        .await?;
    let (calls, rows): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        (calls, rows),
        (1, 6),
        "containment statements and rows returned"
    );
    // A number is not pushed down; the pattern compares 2 == 2.0 itself.
    let floor = enumerate(serde_json::json!({"type": "sensor", "floor": 0.0})).await?;
    assert_eq!(floor, want);
    // Contradicting equalities match nothing; an $or is left to the pattern.
    assert!(
        enumerate(serde_json::json!({"$and": [{"type": "a"}, {"type": "b"}]}))
            .await?
            .is_empty()
    );
    let either = enumerate(serde_json::json!({"$or": [{"type": "sensor"}, {"floor": 4}]})).await?;
    assert_eq!(either.len(), 6 + 120);
    // The rows are there as jsonb, and an index answers the containment
    // (sequential scans off: the planner may prefer one on 600 rows).
    let plan = client
        .simple_query(
            "SET enable_seqscan = off; EXPLAIN SELECT identity FROM prism_pg_registry WHERE doc @> '{\"type\": \"sensor\"}'",
        )
        .await?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        plan.contains("Index Scan"),
        "no index answers doc @>:\n{plan}"
    );
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM prism_pg_registry WHERE doc @> '{\"type\": \"sensor\"}'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(n, 6);
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_not_utf8_is_refused_with_the_reason() -> anyhow::Result<()> {
    let pg = PostgresServer::start().await?;
    let client = pg.client().await?;
    client
        .batch_execute("CREATE DATABASE ascii TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
        .await?;
    let url = pg.url();
    let url = format!(
        "{}/ascii",
        url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base)
    );
    let t = start(&config(&url, "")).await?;
    let mut kv = t.kv("orders");
    let err = kv
        .set(set("k", b"v".to_vec(), None))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a SQL_ASCII database was used"))?;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("encoding is SQL_ASCII") && err.message().contains("UTF8"),
        "{}",
        err.message()
    );
    t.stop().await
}

/// Whether every connection Prism holds to the database is encrypted, as
/// the server sees it (`pg_stat_ssl`), and how many there are.
async fn prism_connections(pg: &PostgresServer) -> anyhow::Result<(i64, i64)> {
    let row = pg
        .client()
        .await?
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'prism'",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// libpq's sslmodes against a server with TLS on, a certificate from a CA
/// made here, and a client certificate required on TLS connections:
/// `verify-full` with `tls_ca` and the client certificate serves, and every
/// connection Prism holds is encrypted; `require` without a CA encrypts
/// without checking; `verify-ca` accepts an address the certificate does
/// not name; `verify-full` trusting only the system's roots (which do not
/// know the test CA), to an address the certificate does not name, or
/// without the client certificate, is UNAVAILABLE naming the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_verify_full_encrypts_and_an_unknown_ca_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [ca, cert, key, client, client_key] = prism_acceptance::tls::test_pki(dir.path())?;
    let pg = PostgresServer::start_tls(&cert, &key, &ca).await?;
    let tls_backend = |mode: &str, tls_ca: Option<&std::path::Path>, with_client: bool| {
        let lines = prism_acceptance::tls::backend_tls_toml(
            tls_ca,
            with_client.then_some((client.as_path(), client_key.as_path())),
        );
        config(&format!("{}?sslmode={mode}", pg.url()), "")
            .replace("timeout_ms = 500\n", &format!("timeout_ms = 500\n{lines}"))
    };
    let get = |t: &prism_acceptance::TestServer| {
        let mut kv = t.kv("orders");
        async move {
            kv.get(pb::GetRequest {
                key: "tls:k".into(),
            })
            .await
        }
    };

    let t = start(&tls_backend("verify-full", Some(&ca), true)).await?;
    t.kv("orders")
        .set(set("tls:k", b"over tls".to_vec(), None))
        .await?;
    assert_eq!(get(&t).await?.into_inner().value, b"over tls".to_vec());
    let (total, encrypted) = prism_connections(&pg).await?;
    assert!(total > 0, "Prism holds no connection to the database");
    assert_eq!(encrypted, total, "a connection of Prism's is not encrypted");
    t.stop().await?;

    // `require` encrypts and does not check the certificate (libpq's meaning).
    let t = start(&tls_backend("require", None, true)).await?;
    assert_eq!(get(&t).await?.into_inner().value, b"over tls".to_vec());
    let (total, encrypted) = prism_connections(&pg).await?;
    assert!(
        total > 0 && encrypted == total,
        "{encrypted} of {total} encrypted"
    );
    t.stop().await?;

    // verify-ca checks the chain, not the name: an address the certificate
    // does not name is fine (and refused by verify-full below).
    let t = start(&tls_backend("verify-ca", Some(&ca), true).replace("@127.0.0.1:", "@127.0.0.2:"))
        .await?;
    assert_eq!(get(&t).await?.into_inner().value, b"over tls".to_vec());
    t.stop().await?;

    for (case, config) in [
        (
            "the system's roots only",
            tls_backend("verify-full", None, true),
        ),
        (
            "a host name the certificate does not name",
            tls_backend("verify-full", Some(&ca), true).replace("@127.0.0.1:", "@127.0.0.2:"),
        ),
        (
            "no client certificate",
            tls_backend("verify-full", Some(&ca), false),
        ),
    ] {
        let t = start(&config).await?;
        let err = get(&t)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("{}", case))?;
        assert_eq!(err.code(), Code::Unavailable, "{case}: {err:?}");
        assert!(
            err.message().contains("PostgreSQL 'pg' at 127.0.0."),
            "{case}: {}",
            err.message()
        );
        t.stop().await?;
    }
    Ok(())
}

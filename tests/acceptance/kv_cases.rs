//! KeyValue behaviour every backend must share (DESIGN.md "Semantics every
//! backend must share"), written once. `a` and `b` are clients of two
//! namespaces bound to the same backend instance.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use prism_acceptance::{KvClient, pb};
use tonic::Code;

pub struct Ctx {
    pub a: KvClient,
    pub b: KvClient,
    pub backend: &'static str,
}

type CaseFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

pub struct Case {
    pub name: &'static str,
    pub run: for<'a> fn(&'a Ctx) -> CaseFuture<'a>,
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        pub const CASES: &[Case] = &[$(Case { name: stringify!($name), run: |ctx| Box::pin($name(ctx)) }),*];
    };
}

cases!(
    set_then_get,
    missing_key_is_not_found,
    overwrite_replaces_value,
    binary_values_roundtrip,
    empty_value_is_a_value,
    one_mib_value,
    delete_existing_and_missing,
    exists_reports_presence,
    ttl_expires_within_a_second,
    overwrite_resets_ttl,
    no_ttl_persists,
    expired_keys_never_shown,
    scan_10000_keys_each_once,
    glob_metacharacters_and_unicode_keys,
    batch_get_set_delete,
    batch_set_is_all_or_nothing,
    concurrent_writers,
    thousand_concurrent_requests,
    namespaces_isolated_on_shared_backend,
);

fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> pb::SetRequest {
    pb::SetRequest {
        key: key.into(),
        value: value.to_vec(),
        ttl_ms,
    }
}

async fn get(kv: &KvClient, key: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut kv = kv.clone();
    kv.get(pb::GetRequest { key: key.into() })
        .await
        .map(|r| r.into_inner().value)
}

async fn exists(kv: &KvClient, key: &str) -> anyhow::Result<bool> {
    let mut kv = kv.clone();
    Ok(kv
        .exists(pb::ExistsRequest { key: key.into() })
        .await?
        .into_inner()
        .exists)
}

async fn put(kv: &KvClient, key: &str, value: &[u8], ttl_ms: Option<u64>) -> anyhow::Result<()> {
    let mut kv = kv.clone();
    kv.set(set(key, value, ttl_ms)).await?;
    Ok(())
}

/// Every key under `prefix`, following cursors; pages are at most `limit`.
async fn scan_all(kv: &KvClient, prefix: &str, limit: u32) -> anyhow::Result<Vec<String>> {
    let mut kv = kv.clone();
    let mut keys = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100_000 {
        let page = kv
            .scan(pb::ScanRequest {
                prefix: prefix.into(),
                cursor,
                limit,
            })
            .await?
            .into_inner();
        ensure!(
            limit == 0 || page.keys.len() <= limit as usize,
            "page of {} keys exceeds limit {limit}",
            page.keys.len()
        );
        keys.extend(page.keys);
        if page.next_cursor.is_empty() {
            return Ok(keys);
        }
        cursor = page.next_cursor;
    }
    bail!("scan did not finish")
}

fn code(result: Result<Vec<u8>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

async fn set_then_get(ctx: &Ctx) -> anyhow::Result<()> {
    put(&ctx.a, "user:1", b"alice", None).await?;
    ensure!(get(&ctx.a, "user:1").await? == b"alice");
    Ok(())
}

async fn missing_key_is_not_found(ctx: &Ctx) -> anyhow::Result<()> {
    let err = get(&ctx.a, "never-written").await.err();
    ensure!(
        err.as_ref().map(|s| s.code()) == Some(Code::NotFound),
        "{err:?}"
    );
    ensure!(
        err.is_some_and(|s| s.message().contains("never-written")),
        "message should name the key"
    );
    Ok(())
}

async fn overwrite_replaces_value(ctx: &Ctx) -> anyhow::Result<()> {
    put(&ctx.a, "k", b"first", None).await?;
    put(&ctx.a, "k", b"second", None).await?;
    ensure!(get(&ctx.a, "k").await? == b"second");
    Ok(())
}

async fn binary_values_roundtrip(ctx: &Ctx) -> anyhow::Result<()> {
    let value: Vec<u8> = (0..=255u8).chain([0x00, 0xFF, 0x00, 0xFF]).collect();
    put(&ctx.a, "bin", &value, None).await?;
    ensure!(get(&ctx.a, "bin").await? == value);
    Ok(())
}

async fn empty_value_is_a_value(ctx: &Ctx) -> anyhow::Result<()> {
    put(&ctx.a, "empty", b"", None).await?;
    ensure!(get(&ctx.a, "empty").await?.is_empty());
    ensure!(exists(&ctx.a, "empty").await?);
    Ok(())
}

async fn one_mib_value(ctx: &Ctx) -> anyhow::Result<()> {
    let value: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    put(&ctx.a, "big", &value, None).await?;
    ensure!(get(&ctx.a, "big").await? == value);
    Ok(())
}

async fn delete_existing_and_missing(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    put(&a, "d", b"v", None).await?;
    ensure!(
        a.delete(pb::DeleteRequest { key: "d".into() })
            .await?
            .into_inner()
            .existed
    );
    ensure!(code(get(&a, "d").await) == Code::NotFound);
    ensure!(
        !a.delete(pb::DeleteRequest { key: "d".into() })
            .await?
            .into_inner()
            .existed
    );
    Ok(())
}

async fn exists_reports_presence(ctx: &Ctx) -> anyhow::Result<()> {
    ensure!(!exists(&ctx.a, "e").await?);
    put(&ctx.a, "e", b"v", None).await?;
    ensure!(exists(&ctx.a, "e").await?);
    Ok(())
}

async fn ttl_expires_within_a_second(ctx: &Ctx) -> anyhow::Result<()> {
    // The contract: gone no later than a second after the TTL, and not
    // before it. Robust on a loaded machine: a read that *completed* before
    // 0.9 s must find the key; any read *started* after 2 s must not.
    let written = Instant::now();
    put(&ctx.a, "ttl", b"v", Some(1000)).await?;
    loop {
        let started = written.elapsed();
        let outcome = code(get(&ctx.a, "ttl").await);
        let completed = written.elapsed();
        match outcome {
            Code::Ok => ensure!(
                started <= Duration::from_millis(2000),
                "a read started after {started:?} still found a 1 s TTL key"
            ),
            Code::NotFound => {
                ensure!(
                    completed >= Duration::from_millis(900),
                    "expired early: gone by {completed:?}"
                );
                return Ok(());
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn overwrite_resets_ttl(ctx: &Ctx) -> anyhow::Result<()> {
    put(&ctx.a, "reset", b"v1", Some(600)).await?;
    put(&ctx.a, "extend", b"v1", Some(600)).await?;
    put(&ctx.a, "reset", b"v2", None).await?;
    put(&ctx.a, "extend", b"v2", Some(5000)).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await; // past the first TTL
    ensure!(
        get(&ctx.a, "reset").await? == b"v2",
        "overwrite without TTL must clear the old TTL"
    );
    ensure!(
        get(&ctx.a, "extend").await? == b"v2",
        "overwrite with a longer TTL must replace the old one"
    );
    Ok(())
}

async fn no_ttl_persists(ctx: &Ctx) -> anyhow::Result<()> {
    put(&ctx.a, "forever", b"v", None).await?;
    put(&ctx.a, "brief", b"v", Some(200)).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ensure!(get(&ctx.a, "forever").await? == b"v");
    // The neighbour with a TTL is gone (past 200 ms + the 1 s allowance).
    ensure!(
        code(get(&ctx.a, "brief").await) == Code::NotFound,
        "the 200 ms key outlived its TTL by a second"
    );
    Ok(())
}

async fn expired_keys_never_shown(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    for i in 0..20 {
        put(&a, &format!("exp:{i}"), b"v", Some(300)).await?;
    }
    put(&a, "exp:keep", b"v", None).await?;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for i in 0..20 {
        let key = format!("exp:{i}");
        ensure!(
            code(get(&a, &key).await) == Code::NotFound,
            "get returned expired {key}"
        );
        ensure!(!exists(&a, &key).await?, "exists reported expired {key}");
    }
    let keys = scan_all(&a, "exp:", 0).await?;
    ensure!(
        keys == vec!["exp:keep".to_string()],
        "scan returned {keys:?}"
    );
    let items = a
        .batch_get(pb::BatchGetRequest {
            keys: vec!["exp:0".into(), "exp:keep".into()],
        })
        .await?
        .into_inner()
        .items;
    ensure!(items.iter().map(|i| i.found).collect::<Vec<_>>() == vec![false, true]);
    Ok(())
}

async fn scan_10000_keys_each_once(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    for chunk in (0..10_000).collect::<Vec<u32>>().chunks(1000) {
        let entries = chunk
            .iter()
            .map(|i| set(&format!("scan:{i:05}"), b"x", None))
            .collect();
        a.batch_set(pb::BatchSetRequest { entries }).await?;
    }
    for other in ["scan", "scanner:1", "sca", "other:1"] {
        put(&a, other, b"x", None).await?;
    }
    let keys = scan_all(&a, "scan:", 1000).await?;
    let unique: HashSet<&String> = keys.iter().collect();
    ensure!(
        keys.len() == 10_000,
        "{} keys returned ({} unique), expected 10000",
        keys.len(),
        unique.len()
    );
    ensure!(unique.len() == 10_000, "duplicates across pages");
    ensure!(
        keys.iter().all(|k| k.starts_with("scan:")),
        "a key outside the prefix was returned"
    );
    let star = scan_all(&a, "scan:*", 0).await?;
    ensure!(
        star.len() == 10_000,
        "`scan:*` must mean the same as `scan:`"
    );
    Ok(())
}

async fn glob_metacharacters_and_unicode_keys(ctx: &Ctx) -> anyhow::Result<()> {
    let glob = ["g*[x]?\\1", "g*[x]?\\2"];
    let decoys = ["gA[x]?\\1", "g*[y]?\\1", "g*x?\\1", "g*[x]Z\\1"];
    let unicode = ["ключ:1", "ключ:2", "键🔑:1"];
    for k in glob.iter().chain(&decoys).chain(&unicode) {
        put(&ctx.a, k, k.as_bytes(), None).await?;
    }
    for k in glob.iter().chain(&unicode) {
        ensure!(get(&ctx.a, k).await? == k.as_bytes(), "round trip of {k:?}");
    }
    let mut found = scan_all(&ctx.a, "g*[x]?\\", 0).await?;
    found.sort();
    ensure!(
        found == glob.to_vec(),
        "glob characters must be literal in a prefix: {found:?}"
    );
    let mut found = scan_all(&ctx.a, "ключ:", 0).await?;
    found.sort();
    ensure!(found == vec!["ключ:1", "ключ:2"], "{found:?}");
    ensure!(scan_all(&ctx.a, "键", 0).await? == vec!["键🔑:1"]);
    Ok(())
}

async fn batch_get_set_delete(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    a.batch_set(pb::BatchSetRequest {
        entries: vec![set("b1", b"1", None), set("b2", b"", Some(60_000))],
    })
    .await?;
    let items = a
        .batch_get(pb::BatchGetRequest {
            keys: vec!["b1".into(), "nope".into(), "b2".into()],
        })
        .await?
        .into_inner()
        .items;
    let got: Vec<(String, bool, Vec<u8>)> = items
        .into_iter()
        .map(|i| (i.key, i.found, i.value))
        .collect();
    ensure!(
        got == vec![
            ("b1".into(), true, b"1".to_vec()),
            ("nope".into(), false, vec![]),
            ("b2".into(), true, vec![])
        ],
        "{got:?}"
    );
    let deleted = a
        .batch_delete(pb::BatchDeleteRequest {
            keys: vec!["b1".into(), "b2".into(), "nope".into()],
        })
        .await?;
    ensure!(deleted.into_inner().deleted == 2);
    ensure!(code(get(&a, "b1").await) == Code::NotFound);
    Ok(())
}

async fn batch_set_is_all_or_nothing(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let bad = pb::BatchSetRequest {
        entries: vec![
            set("ok1", b"1", None),
            set("", b"2", None),
            set("ok2", b"3", None),
        ],
    };
    let err = a.batch_set(bad).await.err().map(|s| s.code());
    ensure!(err == Some(Code::InvalidArgument), "{err:?}");
    ensure!(
        !exists(&a, "ok1").await? && !exists(&a, "ok2").await?,
        "a rejected batch wrote something"
    );
    Ok(())
}

async fn concurrent_writers(ctx: &Ctx) -> anyhow::Result<()> {
    let mut writers = Vec::new();
    for w in 0..16u32 {
        let kv = ctx.a.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..50u32 {
                put(&kv, &format!("cw:{w}:{i}"), &w.to_le_bytes(), None).await?;
                put(&kv, "cw:contended", &w.to_le_bytes(), None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let keys = scan_all(&ctx.a, "cw:", 0).await?;
    ensure!(keys.len() == 16 * 50 + 1, "{} keys", keys.len());
    let last = get(&ctx.a, "cw:contended").await?;
    ensure!(
        (0..16u32).any(|w| last == w.to_le_bytes()),
        "contended key holds a torn value: {last:?}"
    );
    Ok(())
}

async fn thousand_concurrent_requests(ctx: &Ctx) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let kv = ctx.a.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("c1k:{i}");
            put(&kv, &key, key.as_bytes(), None).await?;
            ensure!(get(&kv, &key).await? == key.as_bytes());
            anyhow::Ok(())
        }));
    }
    let mut failures = 0;
    let mut first = None;
    for t in tasks {
        if let Err(e) = t.await? {
            failures += 1;
            first.get_or_insert(e);
        }
    }
    ensure!(
        failures == 0,
        "{failures} of 1000 concurrent requests failed on {}; the first: {:#}",
        ctx.backend,
        first.unwrap_or_else(|| anyhow::anyhow!("none"))
    );
    Ok(())
}

async fn namespaces_isolated_on_shared_backend(ctx: &Ctx) -> anyhow::Result<()> {
    let (mut a, mut b) = (ctx.a.clone(), ctx.b.clone());
    put(&a, "shared", b"from-alpha", None).await?;
    put(&b, "shared", b"from-beta", None).await?;
    put(&a, "only-alpha", b"x", None).await?;
    ensure!(get(&a, "shared").await? == b"from-alpha");
    ensure!(get(&b, "shared").await? == b"from-beta");
    ensure!(code(get(&b, "only-alpha").await) == Code::NotFound);
    ensure!(!exists(&b, "only-alpha").await?);
    ensure!(
        scan_all(&b, "", 0).await? == vec!["shared".to_string()],
        "scan crossed namespaces on {}",
        ctx.backend
    );
    ensure!(
        !b.delete(pb::DeleteRequest {
            key: "only-alpha".into()
        })
        .await?
        .into_inner()
        .existed
    );
    let n = b
        .batch_delete(pb::BatchDeleteRequest {
            keys: vec!["only-alpha".into()],
        })
        .await?
        .into_inner()
        .deleted;
    ensure!(n == 0);
    ensure!(exists(&a, "only-alpha").await?);
    let items = b
        .batch_get(pb::BatchGetRequest {
            keys: vec!["only-alpha".into()],
        })
        .await?
        .into_inner()
        .items;
    ensure!(items.first().is_some_and(|i| !i.found));
    ensure!(
        a.exists(pb::ExistsRequest {
            key: "only-alpha".into()
        })
        .await?
        .into_inner()
        .exists
    );
    Ok(())
}

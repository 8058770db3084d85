//! The Admin API against a running server over real gRPC: namespaces
//! created, used, updated and deleted (MemStore and a real redis-server);
//! uploads of good and bad components; deploys that hot-swap under load
//! with no failed request; canary splits; shadow divergence; promote and
//! rollback; admin changes surviving a restart. The patterns deployed are
//! scaffolds made with `prism pattern new` and built with cargo.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use prism_acceptance::admin::{
    admin_client, admin_config, create, deploy, start_admin, start_with_patterns, upload,
    upload_bytes,
};
use prism_acceptance::backends::BackendUnderTest;
use prism_acceptance::pb;
use prism_acceptance::pb::admin_client::AdminClient;
use prism_acceptance::pubsub::{Sub, publish_request, subscribe_request};
use prism_acceptance::{KvClient, eventually, guest_component, scaffold, start};
use tokio::sync::OnceCell;
use tonic::Code;
use tonic::transport::Channel;

const VERSION_KEY: &str = "_pattern/version";

static V1: OnceCell<PathBuf> = OnceCell::const_new();
static V2: OnceCell<PathBuf> = OnceCell::const_new();
static REFUSES: OnceCell<PathBuf> = OnceCell::const_new();

/// The KeyValue scaffold as generated (answers version 0.1.0).
async fn v1() -> anyhow::Result<&'static PathBuf> {
    V1.get_or_try_init(|| scaffold::keyvalue("admin-kv-v1", "0.1.0"))
        .await
}

/// The same scaffold at version 0.2.0.
async fn v2() -> anyhow::Result<&'static PathBuf> {
    V2.get_or_try_init(|| scaffold::keyvalue("admin-kv-v2", "0.2.0"))
        .await
}

/// A version whose `configure` refuses the `max_value_bytes` setting.
async fn refuses_settings() -> anyhow::Result<&'static PathBuf> {
    REFUSES
        .get_or_try_init(|| {
            scaffold::build("admin-kv-refuses", "keyvalue", |src| {
                src.replace("\"max_value_bytes\" =>", "\"renamed_setting\" =>")
            })
        })
        .await
}

async fn version(kv: &mut KvClient) -> anyhow::Result<String> {
    let value = kv
        .get(pb::GetRequest {
            key: VERSION_KEY.into(),
        })
        .await?
        .into_inner()
        .value;
    Ok(String::from_utf8(value)?)
}

async fn put(kv: &mut KvClient, key: &str, value: &[u8]) -> Result<(), tonic::Status> {
    kv.set(pb::SetRequest {
        key: key.into(),
        value: value.to_vec(),
        ttl_ms: None,
    })
    .await
    .map(drop)
}

async fn get(kv: &mut KvClient, key: &str) -> Result<Vec<u8>, tonic::Status> {
    kv.get(pb::GetRequest { key: key.into() })
        .await
        .map(|r| r.into_inner().value)
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn namespaces_are_created_used_updated_and_deleted() -> anyhow::Result<()> {
    for backend in BackendUnderTest::all().await? {
        let state = tempfile::tempdir()?;
        let (server, mut admin) =
            start_admin(&admin_config(&backend.backend_toml(), state.path(), "")).await?;
        let ctx = backend.name;

        let info = admin
            .create_namespace(create("orders", "keyvalue", &[("kv", "store")]))
            .await?
            .into_inner();
        ensure!(info.source == "admin", "{ctx}: source {}", info.source);
        ensure!(info.pattern.as_ref().map(|p| p.world.as_str()) == Some("keyvalue"));
        ensure!(
            info.slots.len() == 1 && info.slots[0].healthy,
            "{ctx}: {:?}",
            info.slots
        );
        ensure!(info.live_instances >= 1);

        let mut kv = server.kv("orders");
        put(&mut kv, "k", b"0123456789abcdef").await?;
        ensure!(get(&mut kv, "k").await? == b"0123456789abcdef");

        // Bad definitions: each refused with the field to fix, nothing created.
        let again = admin
            .create_namespace(create("orders", "keyvalue", &[("kv", "store")]))
            .await;
        ensure!(code(again) == Code::AlreadyExists);
        let bad_backend = admin
            .create_namespace(create("x1", "keyvalue", &[("kv", "nope")]))
            .await
            .err()
            .context("unknown backend accepted")?;
        ensure!(bad_backend.code() == Code::InvalidArgument);
        ensure!(
            bad_backend.message().contains("namespaces.x1.slots.kv"),
            "{}",
            bad_backend.message()
        );
        let bad_pattern = admin
            .create_namespace(create("x2", "no-such-pattern", &[("kv", "store")]))
            .await;
        ensure!(code(bad_pattern) == Code::InvalidArgument);
        let bad_name = admin
            .create_namespace(create("bad name!", "keyvalue", &[("kv", "store")]))
            .await;
        ensure!(code(bad_name) == Code::InvalidArgument);
        let bad_limit = admin
            .create_namespace(pb::CreateNamespaceRequest {
                limits: HashMap::from([("max_instancez".to_string(), "3".to_string())]),
                ..create("x3", "keyvalue", &[("kv", "store")])
            })
            .await
            .err()
            .context("unknown limit accepted")?;
        ensure!(bad_limit.code() == Code::InvalidArgument);
        ensure!(
            bad_limit.message().contains("max_instancez"),
            "{}",
            bad_limit.message()
        );
        let listed = admin
            .list_namespaces(pb::ListNamespacesRequest {})
            .await?
            .into_inner();
        let names: Vec<&str> = listed.namespaces.iter().map(|n| n.name.as_str()).collect();
        ensure!(names == ["orders"], "{ctx}: {names:?}");
        let missing = admin
            .get_namespace(pb::GetNamespaceRequest { name: "x1".into() })
            .await;
        ensure!(code(missing) == Code::NotFound);

        // Update: settings reach the pattern; limits show resolved.
        let updated = admin
            .update_namespace(pb::UpdateNamespaceRequest {
                name: "orders".into(),
                settings: HashMap::from([("max_value_bytes".to_string(), "8".to_string())]),
                limits: HashMap::from([("max_instances".to_string(), "3".to_string())]),
                ..Default::default()
            })
            .await?
            .into_inner();
        ensure!(updated.limits.get("max_instances").map(String::as_str) == Some("3"));
        ensure!(updated.settings.get("max_value_bytes").map(String::as_str) == Some("8"));
        ensure!(updated.source == "admin");
        let too_big = put(&mut kv, "k2", b"0123456789").await;
        ensure!(
            code(too_big) == Code::InvalidArgument,
            "{ctx}: setting not applied"
        );
        ensure!(
            get(&mut kv, "k").await? == b"0123456789abcdef",
            "{ctx}: data lost by update"
        );
        let refused = admin
            .update_namespace(pb::UpdateNamespaceRequest {
                name: "orders".into(),
                settings: HashMap::from([("max_value_bytes".to_string(), "lots".to_string())]),
                ..Default::default()
            })
            .await
            .err()
            .context("a setting the pattern refuses was accepted")?;
        ensure!(refused.code() == Code::InvalidArgument, "{refused:?}");
        ensure!(
            code(put(&mut kv, "k3", b"12345").await) == Code::Ok,
            "old version stopped serving"
        );

        if backend.serves_pubsub() {
            // A PubSub namespace created at runtime: its stream ends when it is deleted.
            admin
                .create_namespace(create("feed", "pubsub", &[("pubsub", "store")]))
                .await?;
            let mut ps = server.pubsub("feed");
            let mut sub = Sub::open(&mut ps, subscribe_request("t")).await?;
            ps.publish(publish_request("t", b"hello")).await?;
            ensure!(sub.take(1, Duration::from_secs(5)).await?[0].payload[..] == *b"hello");
            admin
                .delete_namespace(pb::DeleteNamespaceRequest {
                    name: "feed".into(),
                    purge: false,
                })
                .await?;
            let ended = sub.end(Duration::from_secs(5)).await?;
            ensure!(
                matches!(&ended, Err(s) if s.code() == Code::NotFound),
                "{ctx}: stream ended with {ended:?}"
            );
            ensure!(code(ps.publish(publish_request("t", b"x")).await) == Code::NotFound);
        } else {
            // A backend without PubSub (PostgreSQL) refuses the slot, naming it.
            let refused = admin
                .create_namespace(create("feed", "pubsub", &[("pubsub", "store")]))
                .await
                .err()
                .context("a pubsub slot on a backend without PubSub was accepted")?;
            ensure!(
                refused.code() == Code::InvalidArgument
                    && refused.message().contains("cannot serve a pubsub slot"),
                "{ctx}: {refused:?}"
            );
        }

        // Delete without purge keeps the data; with purge removes it.
        admin
            .delete_namespace(pb::DeleteNamespaceRequest {
                name: "orders".into(),
                purge: false,
            })
            .await?;
        ensure!(code(get(&mut kv, "k").await) == Code::NotFound);
        admin
            .create_namespace(create("orders", "keyvalue", &[("kv", "store")]))
            .await?;
        ensure!(
            get(&mut kv, "k").await? == b"0123456789abcdef",
            "{ctx}: data lost without purge"
        );
        let purged = admin
            .delete_namespace(pb::DeleteNamespaceRequest {
                name: "orders".into(),
                purge: true,
            })
            .await?
            .into_inner()
            .purged;
        ensure!(purged == 2, "{ctx}: purged {purged} keys, expected 2");
        admin
            .create_namespace(create("orders", "keyvalue", &[("kv", "store")]))
            .await?;
        ensure!(
            code(get(&mut kv, "k").await) == Code::NotFound,
            "{ctx}: purge left data"
        );
        server.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn uploads_and_deploys_are_checked_and_a_refused_one_changes_nothing() -> anyhow::Result<()> {
    let (good, refuses) = (v2().await?.clone(), refuses_settings().await?.clone());
    let state = tempfile::tempdir()?;
    let config = admin_config(
        "[backends.store]\ntype = \"memstore\"\n",
        state.path(),
        "max_pattern_bytes = 2000000\n\n[namespaces.default]\npattern = \"keyvalue\"\nslots = { kv = \"store\" }\nsettings = { max_value_bytes = 100 }\n\n[namespaces.events]\npattern = \"pubsub\"\nslots = { pubsub = \"store\" }\n",
    );
    let (server, mut admin) = start_admin(&config).await?;

    let info = upload(&mut admin, &good).await?;
    ensure!(info.world == "keyvalue" && info.size > 0 && info.digest.len() == 64);
    ensure!(
        info.imports
            .iter()
            .any(|i| i.starts_with("prism:pattern/kv")),
        "{:?}",
        info.imports
    );
    let listed = admin
        .list_patterns(pb::ListPatternsRequest {})
        .await?
        .into_inner();
    ensure!(listed.patterns.iter().any(|p| p.digest == info.digest));
    ensure!(
        listed.patterns.iter().any(|p| p.label == "keyvalue"),
        "built-ins listed"
    );

    // Not a component at all, a core module, a component of no Prism world,
    // too large, empty: each refused with a reason.
    let junk = upload_bytes(&mut admin, b"definitely not wasm".to_vec(), "junk").await;
    let junk = junk.err().context("junk accepted")?;
    ensure!(junk.downcast_ref::<tonic::Status>().map(|s| s.code()) == Some(Code::InvalidArgument));
    let core = upload_bytes(&mut admin, b"\0asm\x01\0\0\0".to_vec(), "core.wasm").await;
    ensure!(core.is_err(), "a core module was accepted");
    let wrong = upload(&mut admin, &guest_component("test_wrong_world")).await;
    let wrong = wrong.err().context("wrong world accepted")?.to_string();
    ensure!(
        wrong.contains("fits none of Prism's pattern worlds"),
        "{wrong}"
    );
    let huge = upload_bytes(&mut admin, vec![0u8; 3_000_000], "huge").await;
    let huge = huge.err().context("oversized upload accepted")?;
    ensure!(
        huge.downcast_ref::<tonic::Status>().map(|s| s.code()) == Some(Code::ResourceExhausted),
        "{huge}"
    );
    let listed_after = admin
        .list_patterns(pb::ListPatternsRequest {})
        .await?
        .into_inner();
    ensure!(
        listed_after.patterns.len() == listed.patterns.len(),
        "a refused upload was kept"
    );

    // Deploys that cannot serve leave the namespace as it was.
    let mut kv = server.kv("default");
    put(&mut kv, "k", b"v").await?;
    let unknown = admin
        .deploy_pattern(deploy("default", &"ab".repeat(32), 0, false))
        .await;
    ensure!(code(unknown) == Code::NotFound);
    let cross_world = admin
        .deploy_pattern(deploy("events", &info.digest, 0, false))
        .await
        .err()
        .context("a keyvalue pattern deployed to a pubsub namespace")?;
    ensure!(cross_world.code() == Code::InvalidArgument);
    ensure!(
        cross_world.message().contains("world"),
        "{}",
        cross_world.message()
    );
    let refusing = upload(&mut admin, &refuses).await?;
    let refused = admin
        .deploy_pattern(deploy("default", &refusing.digest, 0, false))
        .await
        .err()
        .context("a version whose configure fails was deployed")?;
    ensure!(refused.code() == Code::InvalidArgument);
    ensure!(
        refused.message().contains("max_value_bytes")
            && refused.message().contains("keeps serving"),
        "{}",
        refused.message()
    );
    let now = admin
        .get_namespace(pb::GetNamespaceRequest {
            name: "default".into(),
        })
        .await?
        .into_inner();
    ensure!(now.pattern.map(|p| p.label) == Some("built-in pattern 'keyvalue'".to_string()));
    ensure!(
        now.source == "config",
        "a refused deploy changed the source: {}",
        now.source
    );
    ensure!(get(&mut kv, "k").await? == b"v");
    ensure!(
        code(get(&mut kv, VERSION_KEY).await) == Code::NotFound,
        "the built-in still serves"
    );

    // A good deploy swaps; the data stays.
    let deployed = admin
        .deploy_pattern(deploy("default", &info.digest[..12], 0, false))
        .await?
        .into_inner();
    ensure!(deployed.pattern.map(|p| p.digest) == Some(info.digest.clone()));
    ensure!(deployed.previous.is_some() && deployed.source == "config+admin");
    ensure!(version(&mut kv).await? == "0.2.0");
    ensure!(get(&mut kv, "k").await? == b"v");
    let no_rollout = admin
        .promote(pb::PromoteRequest {
            namespace: "default".into(),
        })
        .await;
    ensure!(code(no_rollout) == Code::FailedPrecondition);
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_hot_swap_under_load_fails_no_request() -> anyhow::Result<()> {
    let (_state, server, mut admin, d1, d2) =
        start_with_patterns("live", v1().await?, v2().await?).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for c in 0..6 {
        let mut kv = server.kv("live");
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = HashMap::<String, u64>::new();
            let mut problems = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("c{c}:{}", i % 50);
                // One call reads the version twice: both answers come from one version.
                let outcome = async {
                    put(&mut kv, &key, key.as_bytes()).await?;
                    let got = get(&mut kv, &key).await?;
                    let pair = kv
                        .batch_get(pb::BatchGetRequest {
                            keys: vec![VERSION_KEY.into(), VERSION_KEY.into()],
                        })
                        .await?
                        .into_inner()
                        .items;
                    anyhow::Ok((got, pair))
                }
                .await;
                match outcome {
                    Ok((got, pair)) => {
                        if got != key.as_bytes() {
                            problems.push(format!("{key} read back {got:?}"));
                        }
                        let versions: Vec<String> = pair
                            .iter()
                            .map(|i| String::from_utf8_lossy(&i.value).into_owned())
                            .collect();
                        if versions.len() != 2 || versions[0] != versions[1] {
                            problems.push(format!("one call mixed versions: {versions:?}"));
                        }
                        if let Some(v) = versions.first() {
                            if v != "0.1.0" && v != "0.2.0" {
                                problems.push(format!("answer from no known version: {v}"));
                            }
                            *seen.entry(v.clone()).or_default() += 1;
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        problems.push(format!("{e:#}"));
                    }
                }
            }
            (seen, problems)
        }));
    }
    // Swap back and forth while the clients run; every version that served
    // is watched, to see that the old ones are dropped once drained.
    let serving = || -> anyhow::Result<std::sync::Weak<prism::namespace::Version>> {
        Ok(Arc::downgrade(
            &server.namespaces().get("live")?.deployment().primary,
        ))
    };
    let mut versions = vec![serving()?];
    let mut swaps = 0;
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let digest = if round % 2 == 0 { &d2 } else { &d1 };
        admin
            .deploy_pattern(deploy("live", digest, 0, false))
            .await?;
        versions.push(serving()?);
        swaps += 1;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = HashMap::<String, u64>::new();
    let mut problems = Vec::new();
    for client in clients {
        let (s, p) = client.await?;
        for (v, n) in s {
            *seen.entry(v).or_default() += n;
        }
        problems.extend(p);
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    ensure!(
        failed == 0 && problems.is_empty(),
        "{failed} of {} rounds failed across {swaps} swaps; first problems: {:?}",
        ok + failed,
        &problems[..problems.len().min(5)]
    );
    ensure!(ok > 100, "only {ok} rounds ran");
    ensure!(
        seen.len() == 2,
        "both versions should have answered across the swaps: {seen:?}"
    );
    // Old versions drained and were dropped (nothing holds them, so their
    // instances are gone): only the current one lives.
    let current = versions.pop().context("no version served")?;
    versions.retain(|v| !v.ptr_eq(&current));
    let dropped = eventually(Duration::from_secs(10), || async {
        versions.iter().all(|v| v.upgrade().is_none())
    })
    .await;
    ensure!(
        dropped && current.upgrade().is_some(),
        "{} of {swaps} replaced versions are still alive after draining",
        versions.iter().filter(|v| v.upgrade().is_some()).count()
    );
    let info = admin
        .get_namespace(pb::GetNamespaceRequest {
            name: "live".into(),
        })
        .await?
        .into_inner();
    ensure!(info.rollout.is_none() && info.traps == 0, "{info:?}");
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn canary_splits_calls_then_promote_and_rollback() -> anyhow::Result<()> {
    let (_state, server, mut admin, d1, d2) =
        start_with_patterns("shop", v1().await?, v2().await?).await?;
    let info = admin
        .deploy_pattern(deploy("shop", &d2, 25, false))
        .await?
        .into_inner();
    let rollout = info.rollout.context("no rollout shown")?;
    ensure!(rollout.canary_percent == 25 && !rollout.shadow);

    // Several clients at once: exactly a quarter (the split is by the
    // namespace's call count, however the clients interleave).
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut kv = server.kv("shop");
        tasks.push(tokio::spawn(async move {
            let mut canary = 0u32;
            for _ in 0..250 {
                if version(&mut kv).await? == "0.2.0" {
                    canary += 1;
                }
            }
            anyhow::Ok(canary)
        }));
    }
    let mut canary = 0;
    for t in tasks {
        canary += t.await??;
    }
    ensure!(canary == 250, "canary served {canary} of 1000 calls at 25%");
    // One client's next 100 calls: 25 again, spread through them (never
    // two in a row at 25 %), not the first 25 in a row.
    let mut kv = server.kv("shop");
    let mut answers = Vec::new();
    for _ in 0..100 {
        answers.push(version(&mut kv).await? == "0.2.0");
    }
    let longest = answers
        .split(|by_canary| !by_canary)
        .map(<[bool]>::len)
        .max()
        .unwrap_or(0);
    let share = answers.iter().filter(|by_canary| **by_canary).count();
    ensure!(
        share == 25 && longest == 1,
        "100 calls at 25 %: {share} by the canary, {longest} in a row at most"
    );
    let info = admin
        .get_namespace(pb::GetNamespaceRequest {
            name: "shop".into(),
        })
        .await?
        .into_inner();
    let calls = info.rollout.context("rollout gone")?.calls;
    ensure!(
        u64::from(canary) + 25 == calls,
        "GetNamespace counts {calls}, clients saw {canary} + 25"
    );

    let promoted = admin
        .promote(pb::PromoteRequest {
            namespace: "shop".into(),
        })
        .await?
        .into_inner();
    ensure!(promoted.rollout.is_none());
    ensure!(promoted.pattern.map(|p| p.digest) == Some(d2.clone()));
    ensure!(promoted.previous.map(|p| p.digest) == Some(d1.clone()));
    let mut kv = server.kv("shop");
    for _ in 0..20 {
        ensure!(version(&mut kv).await? == "0.2.0");
    }
    let rolled = admin
        .rollback(pb::RollbackRequest {
            namespace: "shop".into(),
        })
        .await?
        .into_inner();
    ensure!(rolled.pattern.map(|p| p.digest) == Some(d1.clone()));
    for _ in 0..20 {
        ensure!(version(&mut kv).await? == "0.1.0");
    }
    // A canary rolled back: the primary never changed.
    admin.deploy_pattern(deploy("shop", &d2, 50, false)).await?;
    admin
        .rollback(pb::RollbackRequest {
            namespace: "shop".into(),
        })
        .await?;
    for _ in 0..20 {
        ensure!(version(&mut kv).await? == "0.1.0");
    }
    let both = admin.deploy_pattern(deploy("shop", &d2, 10, true)).await;
    ensure!(
        code(both) == Code::InvalidArgument,
        "canary and shadow at once"
    );
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn shadow_mirrors_reads_counts_divergences_and_writes_nothing() -> anyhow::Result<()> {
    let (_state, server, mut admin, _d1, d2) =
        start_with_patterns("mirror", v1().await?, v2().await?).await?;
    let mut kv = server.kv("mirror");
    put(&mut kv, "same", b"value").await?;
    admin.deploy_pattern(deploy("mirror", &d2, 0, true)).await?;

    // Reads both versions answer alike: mirrored, no divergence.
    for _ in 0..20 {
        ensure!(get(&mut kv, "same").await? == b"value");
        ensure!(code(get(&mut kv, "absent").await) == Code::NotFound);
    }
    let rollout = |info: pb::NamespaceInfo| info.rollout.context("shadow gone");
    let calm = eventually(Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move {
            let info = admin
                .get_namespace(pb::GetNamespaceRequest {
                    name: "mirror".into(),
                })
                .await;
            matches!(info, Ok(i) if i.get_ref().rollout.as_ref().is_some_and(|r| r.calls == 40))
        }
    })
    .await;
    ensure!(calm, "40 reads were not all mirrored");
    let info = admin
        .get_namespace(pb::GetNamespaceRequest {
            name: "mirror".into(),
        })
        .await?
        .into_inner();
    ensure!(
        rollout(info)?.divergences == 0,
        "identical answers counted as divergent"
    );

    // Every client sees the primary; the shadow answers differently.
    for _ in 0..10 {
        ensure!(
            version(&mut kv).await? == "0.1.0",
            "a shadow answered a client"
        );
    }
    let diverged = eventually(Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move {
            let info = admin
                .get_namespace(pb::GetNamespaceRequest { name: "mirror".into() })
                .await;
            matches!(info, Ok(i) if i.get_ref().rollout.as_ref().is_some_and(|r| r.divergences == 10))
        }
    })
    .await;
    let info = admin
        .get_namespace(pb::GetNamespaceRequest {
            name: "mirror".into(),
        })
        .await?
        .into_inner();
    let r = rollout(info)?;
    ensure!(diverged, "divergences: {} of 10", r.divergences);
    ensure!(
        r.divergence_samples
            .iter()
            .any(|s| s.starts_with("get") && s.contains("shadow")),
        "{:?}",
        r.divergence_samples
    );
    // Writes go to the primary only, once.
    put(&mut kv, "written", b"once").await?;
    ensure!(get(&mut kv, "written").await? == b"once");
    admin
        .rollback(pb::RollbackRequest {
            namespace: "mirror".into(),
        })
        .await?;
    ensure!(version(&mut kv).await? == "0.1.0");
    let info = admin
        .get_namespace(pb::GetNamespaceRequest {
            name: "mirror".into(),
        })
        .await?
        .into_inner();
    ensure!(info.rollout.is_none());
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn admin_changes_survive_a_restart() -> anyhow::Result<()> {
    let two = v2().await?.clone();
    let state = tempfile::tempdir()?;
    let config = admin_config(
        "[backends.store]\ntype = \"memstore\"\n",
        state.path(),
        "\n[namespaces.default]\npattern = \"keyvalue\"\nslots = { kv = \"store\" }\n\n[namespaces.gone]\npattern = \"keyvalue\"\nslots = { kv = \"store\" }\n\n[namespaces.canaried]\npattern = \"keyvalue\"\nslots = { kv = \"store\" }\n",
    );
    let (server, mut admin) = start_admin(&config).await?;
    let digest = upload(&mut admin, &two).await?.digest;
    admin
        .create_namespace(pb::CreateNamespaceRequest {
            settings: HashMap::from([("max_value_bytes".to_string(), "4".to_string())]),
            ..create("made", &digest, &[("kv", "store")])
        })
        .await?;
    admin
        .delete_namespace(pb::DeleteNamespaceRequest {
            name: "gone".into(),
            purge: false,
        })
        .await?;
    admin
        .deploy_pattern(deploy("default", &digest, 0, false))
        .await?;
    admin
        .deploy_pattern(deploy("canaried", &digest, 40, false))
        .await?;
    server.stop().await?;

    let (server, mut admin) = start_admin(&config).await?;
    let list = admin
        .list_namespaces(pb::ListNamespacesRequest {})
        .await?
        .into_inner();
    let by_name: HashMap<&str, &pb::NamespaceInfo> = list
        .namespaces
        .iter()
        .map(|n| (n.name.as_str(), n))
        .collect();
    let mut names: Vec<&str> = by_name.keys().copied().collect();
    names.sort();
    ensure!(
        names == ["canaried", "default", "made"],
        "after restart: {names:?}"
    );
    ensure!(by_name["made"].source == "admin");
    ensure!(by_name["default"].source == "config+admin");
    ensure!(
        by_name["default"].previous.is_some(),
        "rollback target lost"
    );
    let canary = by_name["canaried"]
        .rollout
        .as_ref()
        .context("canary lost")?;
    ensure!(canary.canary_percent == 40);
    let mut made = server.kv("made");
    ensure!(version(&mut made).await? == "0.2.0");
    ensure!(
        code(put(&mut made, "k", b"12345").await) == Code::InvalidArgument,
        "settings lost"
    );
    ensure!(version(&mut server.kv("default")).await? == "0.2.0");
    ensure!(code(get(&mut server.kv("gone"), "k").await) == Code::NotFound);
    let patterns = admin
        .list_patterns(pb::ListPatternsRequest {})
        .await?
        .into_inner();
    ensure!(
        patterns
            .patterns
            .iter()
            .any(|p| p.digest == digest && p.label == "test.wasm")
    );
    server.stop().await?;

    // A damaged state file stops the start with a message naming it.
    std::fs::write(state.path().join("state.json"), "{ torn")?;
    let Err(e) = start(&config).await else {
        bail!("started from a torn state file");
    };
    ensure!(e.to_string().contains("state.json"), "{e}");
    Ok(())
}

async fn served_digest(admin: &mut AdminClient<Channel>, name: &str) -> anyhow::Result<String> {
    let info = admin
        .get_namespace(pb::GetNamespaceRequest { name: name.into() })
        .await?
        .into_inner();
    Ok(info.pattern.context("no pattern")?.digest)
}

/// Checked components are kept by digest, so this is what keeps that
/// cache honest: a component the pattern store holds under a digest its
/// bytes no longer match is refused, with a message saying so; and a
/// component a namespace runs from a path is still no upload, though its
/// digest is known and it is compiled and checked.
#[tokio::test]
async fn a_damaged_upload_is_refused_and_a_path_component_is_no_upload() -> anyhow::Result<()> {
    let (one, two) = (v1().await?.clone(), v2().await?.clone());
    let state = tempfile::tempdir()?;
    let config = admin_config(
        "[backends.store]\ntype = \"memstore\"\n",
        state.path(),
        &format!(
            "\n[namespaces.default]\npattern = \"keyvalue\"\nslots = {{ kv = \"store\" }}\n\n[namespaces.bypath]\npattern = {:?}\nslots = {{ kv = \"store\" }}\n",
            one.display().to_string()
        ),
    );
    let (server, mut admin) = start_admin(&config).await?;
    ensure!(version(&mut server.kv("bypath")).await? == "0.1.0");
    let path_digest = prism::patterns::digest_of(&std::fs::read(&one)?);
    let refused = admin
        .deploy_pattern(deploy(
            "default",
            &format!("sha256:{path_digest}"),
            0,
            false,
        ))
        .await;
    ensure!(
        code(refused) == Code::NotFound,
        "a path's digest served as an upload"
    );
    let builtin_digest = served_digest(&mut admin, "default").await?;

    let digest = upload(&mut admin, &two).await?.digest;
    server.stop().await?;
    // The stored bytes are swapped for another component's.
    let stored = state.path().join("patterns").join(format!("{digest}.wasm"));
    ensure!(stored.is_file(), "no {}", stored.display());
    std::fs::copy(&one, &stored)?;

    let (server, mut admin) = start_admin(&config).await?;
    let Err(refused) = admin
        .deploy_pattern(deploy("default", &digest, 0, false))
        .await
    else {
        bail!("deployed a component whose bytes do not match its digest");
    };
    ensure!(refused.code() == Code::InvalidArgument, "{refused:?}");
    ensure!(
        refused.message().contains("does not match its digest"),
        "{}",
        refused.message()
    );
    // The namespace keeps its built-in pattern.
    ensure!(served_digest(&mut admin, "default").await? == builtin_digest);
    put(&mut server.kv("default"), "k", b"v").await?;
    ensure!(get(&mut server.kv("default"), "k").await? == b"v");
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_admin_api_is_off_without_auth_unless_allowed() -> anyhow::Result<()> {
    let server = start(
        "[backends.store]\ntype = \"memstore\"\n\n[namespaces.default]\npattern = \"keyvalue\"\nslots = { kv = \"store\" }\n",
    )
    .await?;
    let refused = admin_client(&server)
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .err()
        .context("Admin served with auth off and allow_unauthenticated unset")?;
    ensure!(refused.code() == Code::PermissionDenied);
    ensure!(
        refused.message().contains("allow_unauthenticated"),
        "{}",
        refused.message()
    );
    server.stop().await?;
    Ok(())
}

/// `prism admin ARGS` against `addr`; prints the command and its output so
/// `--nocapture` shows the session as a user would see it.
async fn cli(addr: &str, args: &[&str]) -> anyhow::Result<prism_acceptance::binary::Finished> {
    let mut full = vec!["admin", "--addr", addr];
    full.extend_from_slice(args);
    let done = prism_acceptance::binary::run(&full, Duration::from_secs(60)).await?;
    println!("$ prism {}\n{}{}", full.join(" "), done.stdout, done.stderr);
    Ok(done)
}

async fn cli_ok(addr: &str, args: &[&str]) -> anyhow::Result<String> {
    let done = cli(addr, args).await?;
    ensure!(
        done.status.success(),
        "prism admin {args:?} failed: {}",
        done.stderr
    );
    Ok(done.stdout)
}

/// How many of `n` GETs of the version key the new version (0.2.0) answered;
/// the built-in pattern answers NOT_FOUND for that key.
async fn answered_by_v2(kv: &mut KvClient, n: usize) -> anyhow::Result<usize> {
    let mut by_v2 = 0;
    for _ in 0..n {
        match version(kv).await {
            Ok(v) if v == "0.2.0" => by_v2 += 1,
            Ok(other) => bail!("answered by version {other}"),
            Err(e) => match e.downcast_ref::<tonic::Status>() {
                Some(s) if s.code() == Code::NotFound => {}
                _ => return Err(e),
            },
        }
    }
    Ok(by_v2)
}

#[tokio::test]
async fn the_cli_walks_scaffold_to_deploy_canary_promote_and_rollback() -> anyhow::Result<()> {
    let wasm = v2().await?.display().to_string();
    let checked = prism_acceptance::binary::run(
        &["pattern", "check", &wasm, "--json"],
        Duration::from_secs(60),
    )
    .await?;
    println!("$ prism pattern check {wasm} --json\n{}", checked.stdout);
    ensure!(checked.status.success(), "{}", checked.stderr);
    let report: serde_json::Value = serde_json::from_str(&checked.stdout)?;
    ensure!(report["world"] == "keyvalue", "{report}");
    ensure!(
        report["imports"].as_array().is_some_and(|i| i
            .iter()
            .any(|i| i.as_str().is_some_and(|s| s.contains("kv")))),
        "{report}"
    );

    let dev =
        prism_acceptance::binary::PrismProcess::start(&["dev", "--listen", "127.0.0.1:0"]).await?;
    let addr = dev.addr.to_string();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut kv = pb::key_value_client::KeyValueClient::with_interceptor(
        channel,
        prism_acceptance::Namespace::new("default"),
    );

    let listed = cli_ok(&addr, &["namespace", "list"]).await?;
    ensure!(
        listed
            .lines()
            .any(|l| l.starts_with("default") && l.contains("keyvalue")),
        "{listed}"
    );
    ensure!(answered_by_v2(&mut kv, 10).await? == 0);

    // Canary: the file is uploaded, then takes 30 % of the calls.
    let out = cli_ok(&addr, &["deploy", "default", &wasm, "--canary", "30"]).await?;
    ensure!(out.contains("30"), "{out}");
    // Any 100 calls in a row: exactly 30 (the README's promise).
    let share = answered_by_v2(&mut kv, 100).await?;
    ensure!(share == 30, "canary served {share} of 100 calls");
    let info: serde_json::Value =
        serde_json::from_str(&cli_ok(&addr, &["--json", "namespace", "get", "default"]).await?)?;
    ensure!(info["rollout"]["canary_percent"] == 30, "{info}");
    ensure!(
        info["rollout"]["calls"].as_u64() >= Some(share as u64),
        "{info}"
    );
    let patterns = cli_ok(&addr, &["patterns"]).await?;
    ensure!(
        patterns.contains("built-in") && patterns.lines().count() >= 5,
        "{patterns}"
    );

    // Promote: every call on the new version.
    cli_ok(&addr, &["promote", "default"]).await?;
    ensure!(answered_by_v2(&mut kv, 20).await? == 20);
    // Nothing left to promote: a clear error and a failing exit code.
    let again = cli(&addr, &["promote", "default"]).await?;
    ensure!(!again.status.success());
    ensure!(
        again.stderr.contains("no canary or shadow to promote"),
        "{}",
        again.stderr
    );
    // Rollback: the built-in version again.
    cli_ok(&addr, &["rollback", "default"]).await?;
    ensure!(answered_by_v2(&mut kv, 20).await? == 0);
    let info: serde_json::Value =
        serde_json::from_str(&cli_ok(&addr, &["--json", "namespace", "get", "default"]).await?)?;
    ensure!(
        info["pattern"]["label"] == "built-in pattern 'keyvalue'",
        "{info}"
    );

    // A namespace from the command line, used, then deleted.
    cli_ok(
        &addr,
        &[
            "namespace",
            "create",
            "scratch",
            "--pattern",
            "keyvalue",
            "--slot",
            "kv=mem",
        ],
    )
    .await?;
    cli_ok(&addr, &["namespace", "delete", "scratch"]).await?;
    let gone = cli(&addr, &["namespace", "get", "scratch"]).await?;
    ensure!(
        !gone.status.success() && gone.stderr.contains("scratch"),
        "{}",
        gone.stderr
    );
    let status = dev.terminate(Duration::from_secs(10)).await?;
    ensure!(status.success(), "prism dev exited with {status}");
    Ok(())
}

#[tokio::test]
async fn a_saved_canary_that_no_longer_starts_does_not_keep_the_server_down() -> anyhow::Result<()>
{
    let two = v2().await?.clone();
    let state = tempfile::tempdir()?;
    let config = admin_config(
        "[backends.store]\ntype = \"memstore\"\n",
        state.path(),
        "\n[namespaces.default]\npattern = \"keyvalue\"\nslots = { kv = \"store\" }\n",
    );
    let (server, mut admin) = start_admin(&config).await?;
    let digest = upload(&mut admin, &two).await?.digest;
    admin
        .deploy_pattern(deploy("default", &digest, 50, false))
        .await?;
    server.stop().await?;
    // The canary's component is gone (a lost disk, a hand-edited state dir).
    let mut removed = 0;
    for entry in walk(state.path())? {
        if entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy() == format!("{digest}.wasm"))
        {
            std::fs::remove_file(&entry)?;
            removed += 1;
        }
    }
    ensure!(
        removed == 1,
        "the uploaded component was not in the state dir"
    );

    let (server, mut admin) = start_admin(&config).await?;
    let info = admin
        .get_namespace(pb::GetNamespaceRequest {
            name: "default".into(),
        })
        .await?
        .into_inner();
    ensure!(
        info.rollout.is_none(),
        "the broken canary still routes: {info:?}"
    );
    let mut kv = server.kv("default");
    for _ in 0..10 {
        ensure!(
            code(get(&mut kv, VERSION_KEY).await) == Code::NotFound,
            "a call did not run on the built-in primary"
        );
    }
    server.stop().await?;
    // The drop was recorded: the next start does not meet it again.
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.path().join("state.json"))?)?;
    ensure!(
        kept["namespaces"]["default"]["rollout"].is_null()
            && kept["namespaces"]["default"].is_object(),
        "{kept}"
    );
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

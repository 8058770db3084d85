//! A fleet of `prism serve` processes on one control store is one service:
//! Admin changes made through any replica are served by every replica
//! (checked by data calls on each, not by status alone), racing
//! read-modify-writes lose nothing, a replica killed mid-deploy and a store
//! killed under load are recovered from, a replica joining late serves
//! everything before it answers, and removals' tombstones are forgotten
//! without a replica that stood still meanwhile missing the removals. Once
//! on a real PostgreSQL, once on a real nats-server with JetStream. And a
//! single Prism's state file moves into an empty store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use prism_acceptance::admin::upload_bytes;
use prism_acceptance::binary::PrismProcess;
use prism_acceptance::pb;
use prism_acceptance::pb::admin_client::AdminClient;
use prism_acceptance::pb::key_value_client::KeyValueClient;
use prism_acceptance::{KvClient, Namespace, NatsServer, PostgresServer, eventually, scaffold};
use tokio::sync::OnceCell;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const VERSION_KEY: &str = "_pattern/version";
const CONVERGE: Duration = Duration::from_secs(30);
/// `[admin] tombstone_ttl_ms` of the fleets here: short, so the store
/// forgets within the test (and every replica sweeps every 1.5 s).
const TOMBSTONE_TTL_MS: u64 = 3000;

/// How many tombstones the control store holds now.
type Tombstones = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<u64>> + Send>>
        + Send
        + Sync,
>;

static V1: OnceCell<PathBuf> = OnceCell::const_new();
static V2: OnceCell<PathBuf> = OnceCell::const_new();

/// The KeyValue scaffold at `version`, accepting any `tag_*` setting (so a
/// race of updates can each add one).
async fn scaffold_kv(cell: &'static OnceCell<PathBuf>, version: &str) -> anyhow::Result<Vec<u8>> {
    let name = format!("fleet-kv-{}", version.replace('.', "-"));
    let path = cell
        .get_or_try_init(|| {
            scaffold::build(&name, "keyvalue", |src| {
                src.replace(
                    "const VERSION: &str = \"0.1.0\";",
                    &format!("const VERSION: &str = \"{version}\";"),
                )
                .replace(
                    "\"max_value_bytes\" => {",
                    "k if k.starts_with(\"tag_\") => {}\n                \"max_value_bytes\" => {",
                )
            })
        })
        .await?;
    Ok(std::fs::read(path)?)
}

/// `bytes` with a custom section appended: another digest, the same component.
fn variant(bytes: &[u8], n: u8) -> Vec<u8> {
    let name = b"prism-test";
    let payload = [n];
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

/// Replicas of one service and the store under them.
struct Fleet {
    dir: tempfile::TempDir,
    store_toml: String,
    replicas: Vec<Option<PrismProcess>>,
}

impl Fleet {
    async fn start(store_toml: String, n: usize) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet {
            dir: tempfile::tempdir()?,
            store_toml,
            replicas: Vec::new(),
        };
        for i in 0..n {
            fleet.start_replica(i).await?;
        }
        Ok(fleet)
    }

    /// Starts replica `i` (again, after a kill: same config, same state dir).
    async fn start_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let state = self.dir.path().join(format!("replica-{i}"));
        let config = self.dir.path().join(format!("replica-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[backends.mem]\ntype = \"memstore\"\n\n{}\n[admin]\nallow_unauthenticated = true\nstate_dir = {:?}\nstore = \"control\"\ntombstone_ttl_ms = {TOMBSTONE_TTL_MS}\n",
                self.store_toml,
                state.display().to_string()
            ),
        )?;
        let config = config.display().to_string();
        let process = PrismProcess::start(&[
            "serve",
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .await
        .with_context(|| format!("starting replica {i}"))?;
        if self.replicas.len() <= i {
            self.replicas.resize_with(i + 1, || None);
        }
        self.replicas[i] = Some(process);
        Ok(())
    }

    fn replica(&self, i: usize) -> anyhow::Result<&PrismProcess> {
        self.replicas
            .get(i)
            .and_then(Option::as_ref)
            .with_context(|| format!("replica {i} is not running"))
    }

    fn channel(&self, i: usize) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.replica(i)?.addr))?.connect_lazy())
    }

    fn admin(&self, i: usize) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel(i)?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    fn kv(&self, i: usize, namespace: &str) -> anyhow::Result<KvClient> {
        Ok(KeyValueClient::with_interceptor(
            self.channel(i)?,
            Namespace::new(namespace),
        ))
    }

    fn running(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|i| self.replicas[*i].is_some())
            .collect()
    }

    /// Waits until `check` holds on every running replica.
    async fn converged<F, Fut>(&self, what: &str, check: F) -> anyhow::Result<()>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        for i in self.running() {
            let ok = eventually(CONVERGE, || async { check(i).await.unwrap_or(false) }).await;
            if !ok {
                let why = check(i)
                    .await
                    .err()
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_default();
                bail!(
                    "replica {i} does not serve {what} after {CONVERGE:?} ({why}); its log:\n{}",
                    self.replica(i).map(|r| r.stderr()).unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// The version of the pattern replica `i` answers namespace `ns` with.
    async fn version(&self, i: usize, ns: &str) -> anyhow::Result<String> {
        let value = self
            .kv(i, ns)?
            .get(pb::GetRequest {
                key: VERSION_KEY.into(),
            })
            .await?
            .into_inner()
            .value;
        Ok(String::from_utf8(value)?)
    }

    /// The versions `n` calls in a row on replica `i` were answered by.
    async fn versions(&self, i: usize, ns: &str, n: usize) -> anyhow::Result<Vec<String>> {
        let mut seen = Vec::new();
        for _ in 0..n {
            seen.push(self.version(i, ns).await?);
        }
        Ok(seen)
    }

    /// Replica `i`'s `prism_control_stale` gauge.
    async fn stale(&self, i: usize) -> anyhow::Result<f64> {
        let url = self.replica(i)?.metrics.clone().context("no metrics URL")?;
        let http = prism::auth::http_client(Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
        let text = http.get(url).send().await?.text().await?;
        text.lines()
            .find(|l| l.starts_with("prism_control_stale{store=\"control\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .context("no prism_control_stale sample")?
            .parse()
            .context("prism_control_stale is not a number")
    }

    async fn info(&self, i: usize, ns: &str) -> anyhow::Result<pb::NamespaceInfo> {
        Ok(self
            .admin(i)?
            .get_namespace(pb::GetNamespaceRequest { name: ns.into() })
            .await?
            .into_inner())
    }
}

fn create(name: &str, pattern: &str) -> pb::CreateNamespaceRequest {
    pb::CreateNamespaceRequest {
        name: name.into(),
        pattern: pattern.into(),
        slots: [("kv".to_string(), "mem".to_string())].into(),
        settings: Default::default(),
        limits: Default::default(),
    }
}

fn deploy(ns: &str, digest: &str, canary: u32, shadow: bool) -> pb::DeployPatternRequest {
    pb::DeployPatternRequest {
        namespace: ns.into(),
        pattern: digest.into(),
        canary_percent: canary,
        shadow,
    }
}

fn tag_update(ns: &str, tag: &str) -> pb::UpdateNamespaceRequest {
    pb::UpdateNamespaceRequest {
        name: ns.into(),
        settings: [(tag.to_string(), "1".to_string())].into(),
        ..Default::default()
    }
}

async fn set(kv: &mut KvClient, key: &str, value: &[u8]) -> Result<(), tonic::Status> {
    kv.set(pb::SetRequest {
        key: key.into(),
        value: value.to_vec(),
        ttl_ms: None,
    })
    .await
    .map(drop)
}

/// Every Admin change, each made through another replica, then served by all.
async fn lifecycle(fleet: &Fleet, v1: &str, v2: &str) -> anyhow::Result<()> {
    fleet.admin(0)?.create_namespace(create("t1", v1)).await?;
    fleet
        .converged("a namespace created through replica 0", |i| async move {
            Ok(fleet.version(i, "t1").await? == "0.1.0")
        })
        .await?;

    // Update (through replica 1): a setting every replica enforces.
    fleet
        .admin(1)?
        .update_namespace(pb::UpdateNamespaceRequest {
            name: "t1".into(),
            settings: [("max_value_bytes".to_string(), "8".to_string())].into(),
            ..Default::default()
        })
        .await?;
    fleet
        .converged("the update's max_value_bytes = 8", |i| async move {
            let mut kv = fleet.kv(i, "t1")?;
            match set(&mut kv, "k", b"123456789").await {
                Err(s) if s.code() == Code::InvalidArgument => {}
                _ => return Ok(false),
            }
            set(&mut kv, "k", b"12345678").await?;
            Ok(true)
        })
        .await?;

    // Deploy (through replica 2).
    fleet
        .admin(2)?
        .deploy_pattern(deploy("t1", v2, 0, false))
        .await?;
    fleet
        .converged("the deploy of 0.2.0", |i| async move {
            Ok(fleet.versions(i, "t1", 3).await? == ["0.2.0", "0.2.0", "0.2.0"])
        })
        .await?;

    // Every replica reports the revision it serves; namespace get on any
    // of them shows all three at the deploy's.
    fleet
        .converged(
            "a status listing every replica at one revision",
            |i| async move {
                let info = fleet.info(i, "t1").await?;
                Ok(info.revision > 0
                    && info.replicas.len() == 3
                    && info
                        .replicas
                        .iter()
                        .all(|r| r.revision == info.revision && !r.address.is_empty() && !r.stale))
            },
        )
        .await?;

    // Rollback (through replica 0) returns every replica to 0.1.0.
    fleet
        .admin(0)?
        .rollback(pb::RollbackRequest {
            namespace: "t1".into(),
        })
        .await?;
    fleet
        .converged("the rollback to 0.1.0", |i| async move {
            Ok(fleet.versions(i, "t1", 3).await? == ["0.1.0", "0.1.0", "0.1.0"])
        })
        .await?;

    // A canary of 50 (through replica 1): every replica alternates.
    fleet
        .admin(1)?
        .deploy_pattern(deploy("t1", v2, 50, false))
        .await?;
    fleet
        .converged("a canary of 50 %", |i| async move {
            let seen = fleet.versions(i, "t1", 4).await?;
            Ok(seen.iter().filter(|v| *v == "0.2.0").count() == 2
                && seen.iter().filter(|v| *v == "0.1.0").count() == 2)
        })
        .await?;

    // Promote (through replica 2): 0.2.0 everywhere.
    fleet
        .admin(2)?
        .promote(pb::PromoteRequest {
            namespace: "t1".into(),
        })
        .await?;
    fleet
        .converged("the promoted canary", |i| async move {
            Ok(fleet
                .versions(i, "t1", 4)
                .await?
                .iter()
                .all(|v| v == "0.2.0"))
        })
        .await?;

    // A shadow (through replica 0): reads answered by the primary and
    // mirrored to the shadow on every replica.
    fleet
        .admin(0)?
        .deploy_pattern(deploy("t1", v1, 0, true))
        .await?;
    fleet
        .converged("a shadow taking mirrored reads", |i| async move {
            let answers = fleet.versions(i, "t1", 3).await?;
            let rollout = fleet.info(i, "t1").await?.rollout.unwrap_or_default();
            Ok(answers.iter().all(|v| v == "0.2.0") && rollout.shadow && rollout.calls >= 3)
        })
        .await?;
    fleet
        .admin(1)?
        .rollback(pb::RollbackRequest {
            namespace: "t1".into(),
        })
        .await?;
    fleet
        .converged("the shadow dropped", |i| async move {
            Ok(fleet.info(i, "t1").await?.rollout.is_none())
        })
        .await?;

    // Delete (through replica 2): NOT_FOUND everywhere.
    fleet
        .admin(2)?
        .delete_namespace(pb::DeleteNamespaceRequest {
            name: "t1".into(),
            purge: false,
        })
        .await?;
    fleet
        .converged("the delete", |i| async move {
            match fleet.version(i, "t1").await {
                Err(e) => Ok(e
                    .downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.code() == Code::NotFound)),
                Ok(_) => Ok(false),
            }
        })
        .await
}

/// Two admins on two replicas, 100 read-modify-writes each on one namespace.
async fn race(fleet: &Fleet, v1: &str) -> anyhow::Result<()> {
    fleet
        .admin(0)?
        .create_namespace(create("raced", v1))
        .await?;
    fleet
        .converged("the raced namespace", |i| async move {
            Ok(fleet.info(i, "raced").await.is_ok())
        })
        .await?;
    let writer = |replica: usize, side: &'static str| {
        let admin = fleet.admin(replica);
        async move {
            let mut admin = admin?;
            let mut retried = 0u32;
            for n in 0..100 {
                loop {
                    match admin
                        .update_namespace(tag_update("raced", &format!("tag_{side}{n}")))
                        .await
                    {
                        Ok(_) => break,
                        // The server re-applies a lost race a few times; one
                        // that still loses is ABORTED, retryable.
                        Err(s) if s.code() == Code::Aborted => retried += 1,
                        Err(s) => bail!("update {side}{n} failed: {s}"),
                    }
                }
            }
            anyhow::Ok(retried)
        }
    };
    let (a, b) = tokio::join!(writer(0, "a"), writer(1, "b"));
    let (a, b) = (a?, b?);
    eprintln!("race: 2 x 100 updates, {a} + {b} ABORTED answers retried by the clients");
    fleet
        .converged("all 200 updates", |i| async move {
            let settings = fleet.info(i, "raced").await?.settings;
            let tags = settings.keys().filter(|k| k.starts_with("tag_")).count();
            ensure!(tags <= 200, "{tags} tags: more than were written");
            Ok(tags == 200)
        })
        .await
}

/// Replica 2 SIGKILLed while a deploy made through replica 0 reaches it.
async fn killed_mid_deploy(fleet: &mut Fleet, v1: &str, v2: &str) -> anyhow::Result<()> {
    fleet.admin(0)?.create_namespace(create("k1", v1)).await?;
    let f: &Fleet = fleet;
    f.converged("namespace k1", |i| async move {
        Ok(f.version(i, "k1").await? == "0.1.0")
    })
    .await?;
    let mut admin = fleet.admin(0)?;
    let deploying = tokio::spawn({
        let request = deploy("k1", v2, 0, false);
        async move { admin.deploy_pattern(request).await }
    });
    fleet.replica(2)?.signal("KILL").await?;
    fleet.replicas[2] = None;
    deploying.await??;
    let f: &Fleet = fleet;
    f.converged("the deploy, on the replicas left", |i| async move {
        Ok(f.version(i, "k1").await? == "0.2.0")
    })
    .await?;
    fleet.start_replica(2).await?;
    // Ready means caught up: the restarted replica serves the deploy at once.
    ensure!(
        fleet.version(2, "k1").await? == "0.2.0",
        "the restarted replica serves an old version"
    );
    Ok(())
}

/// The store killed under Admin and data load, then restarted.
async fn store_outage(
    fleet: &mut Fleet,
    v1: &str,
    kill: impl std::future::Future<Output = anyhow::Result<()>>,
    restart: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    {
        let fleet: &Fleet = fleet;
        fleet
            .admin(1)?
            .create_namespace(create("steady", v1))
            .await?;
        fleet
            .converged("namespace steady", |i| async move {
                Ok(fleet.version(i, "steady").await? == "0.1.0")
            })
            .await?;
    }
    kill.await?;
    // Data calls on every replica all succeed while the store is away.
    let (mut calls, mut failed) = (0u32, Vec::new());
    for round in 0..20 {
        for i in fleet.running() {
            let mut kv = fleet.kv(i, "steady")?;
            calls += 1;
            if let Err(s) = set(&mut kv, &format!("k{round}"), b"v").await {
                failed.push(format!("replica {i}: {s}"));
            }
        }
    }
    // A mutation is refused as UNAVAILABLE, naming the store.
    let refused = fleet
        .admin(0)?
        .create_namespace(create("during", v1))
        .await
        .err()
        .context("a namespace was created while the store was down")?;
    eprintln!(
        "outage: {calls} data calls, {} failed; create during it: {:?} {}",
        failed.len(),
        refused.code(),
        refused.message()
    );
    ensure!(
        failed.is_empty(),
        "data calls failed in the outage: {failed:?}"
    );
    ensure!(
        refused.code() == Code::Unavailable && refused.message().contains("control store"),
        "create during the outage: {refused:?}"
    );
    // `namespace get` says the answer is the last state applied.
    let f: &Fleet = fleet;
    f.converged("stale = true in namespace get", |i| async move {
        Ok(f.info(i, "steady").await?.stale)
    })
    .await?;
    // A replica restarted while the store is away serves its snapshot.
    fleet.replica(0)?.signal("KILL").await?;
    fleet.replicas[0] = None;
    fleet.start_replica(0).await?;
    ensure!(
        fleet.version(0, "steady").await? == "0.1.0",
        "a replica restarted in the outage does not serve its snapshot"
    );
    ensure!(
        fleet.stale(0).await? == 1.0 && fleet.info(0, "steady").await?.stale,
        "a replica serving its snapshot is not marked stale (metric and namespace get)"
    );
    restart.await?;
    let fleet: &Fleet = fleet;
    fleet
        .converged("prism_control_stale 0 again", |i| async move {
            Ok(fleet.stale(i).await? == 0.0 && !fleet.info(i, "steady").await?.stale)
        })
        .await?;
    // Changes work again, and every replica catches up without a restart.
    let created = eventually(CONVERGE, || async {
        match fleet.admin(0) {
            Ok(mut admin) => admin.create_namespace(create("after", v1)).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    ensure!(
        created,
        "no namespace could be created after the store came back"
    );
    fleet
        .converged("a namespace created after the outage", |i| async move {
            Ok(fleet.version(i, "after").await? == "0.1.0")
        })
        .await?;
    for i in fleet.running() {
        let info = fleet.info(i, "during").await;
        ensure!(
            info.is_err(),
            "replica {i} serves a namespace whose create was refused"
        );
    }
    Ok(())
}

/// A replica started after 50 namespaces and 5 uploads exist serves them all
/// as soon as it answers.
async fn late_joiner(fleet: &mut Fleet, v1_bytes: &[u8]) -> anyhow::Result<()> {
    let mut admin = fleet.admin(1)?;
    let mut digests = Vec::new();
    for n in 0..5 {
        digests.push(
            upload_bytes(&mut admin, variant(v1_bytes, n), &format!("variant {n}"))
                .await?
                .digest,
        );
    }
    for n in 0..50 {
        let pattern = &digests[n % digests.len()];
        admin
            .create_namespace(create(&format!("many-{n}"), pattern))
            .await?;
    }
    let joiner = fleet.replicas.len();
    fleet.start_replica(joiner).await?;
    for n in 0..50 {
        let ns = format!("many-{n}");
        ensure!(
            fleet.version(joiner, &ns).await? == "0.1.0",
            "the new replica does not serve {ns}"
        );
        let info = fleet.info(joiner, &ns).await?;
        let digest = info.pattern.map(|p| p.digest).unwrap_or_default();
        ensure!(
            digest == digests[n % digests.len()],
            "{ns} serves {digest} on the new replica"
        );
    }
    Ok(())
}

/// Removals leave tombstones that the store forgets after
/// `tombstone_ttl_ms`; a replica that stood still (SIGSTOP) through both
/// the removals and the forgetting still drops what was removed, and a
/// forgotten name can be created again.
async fn forgetting(
    fleet: &Fleet,
    v1: &str,
    v1_bytes: &[u8],
    tombstones: &Tombstones,
) -> anyhow::Result<()> {
    let mut admin = fleet.admin(0)?;
    let brief = upload_bytes(&mut admin, variant(v1_bytes, 7), "brief")
        .await?
        .digest;
    let brief: &str = &brief;
    admin.create_namespace(create("brief", v1)).await?;
    let patterns = |i: usize| async move {
        let list = fleet
            .admin(i)?
            .list_patterns(pb::ListPatternsRequest {})
            .await?
            .into_inner();
        anyhow::Ok(
            list.patterns
                .into_iter()
                .map(|p| p.digest)
                .collect::<Vec<_>>(),
        )
    };
    fleet
        .converged("namespace brief and its upload", |i| async move {
            Ok(fleet.version(i, "brief").await? == "0.1.0"
                && patterns(i).await?.iter().any(|d| d == brief))
        })
        .await?;
    let before = tombstones().await?;
    fleet.replica(2)?.signal("STOP").await?;
    let removed = async {
        admin
            .delete_namespace(pb::DeleteNamespaceRequest {
                name: "brief".into(),
                purge: false,
            })
            .await?;
        admin
            .delete_pattern(pb::DeletePatternRequest {
                digest: brief.to_string(),
            })
            .await?;
        let left = tombstones().await?;
        ensure!(
            left >= before + 2,
            "{left} tombstones after two removals ({before} before)"
        );
        let forgotten =
            eventually(CONVERGE, || async { matches!(tombstones().await, Ok(0)) }).await;
        ensure!(
            forgotten,
            "the store still holds {:?} tombstones {TOMBSTONE_TTL_MS} ms after the removals",
            tombstones().await
        );
        anyhow::Ok(left)
    }
    .await;
    fleet.replica(2)?.signal("CONT").await?;
    let left = removed?;
    eprintln!(
        "forgetting: {left} tombstones after the removals, 0 once {TOMBSTONE_TTL_MS} ms passed"
    );
    fleet
        .converged(
            "the removals, also on the replica that stood still",
            |i| async move {
                let gone = fleet
                    .info(i, "brief")
                    .await
                    .err()
                    .and_then(|e| e.downcast::<tonic::Status>().ok())
                    .is_some_and(|s| s.code() == Code::NotFound);
                Ok(gone && !patterns(i).await?.iter().any(|d| d == brief))
            },
        )
        .await?;
    // The name is free again: a create expects it absent, as it is.
    fleet
        .admin(1)?
        .create_namespace(create("brief", v1))
        .await?;
    fleet
        .converged("namespace brief created again", |i| async move {
            Ok(fleet.version(i, "brief").await? == "0.1.0")
        })
        .await
}

async fn fleet_is_one_service(
    store_toml: String,
    tombstones: Tombstones,
    kill: impl std::future::Future<Output = anyhow::Result<()>>,
    restart: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let v1_bytes = scaffold_kv(&V1, "0.1.0").await?;
    let v2_bytes = scaffold_kv(&V2, "0.2.0").await?;
    let mut fleet = Fleet::start(store_toml, 3).await?;
    // Uploaded through replica 0; the others fetch them from the store.
    let mut admin = fleet.admin(0)?;
    let v1 = upload_bytes(&mut admin, v1_bytes.clone(), "v1")
        .await?
        .digest;
    let v2 = upload_bytes(&mut admin, v2_bytes, "v2").await?.digest;
    lifecycle(&fleet, &v1, &v2).await.context("lifecycle")?;
    race(&fleet, &v1).await.context("race")?;
    killed_mid_deploy(&mut fleet, &v1, &v2)
        .await
        .context("replica killed mid-deploy")?;
    store_outage(&mut fleet, &v1, kill, restart)
        .await
        .context("store outage")?;
    late_joiner(&mut fleet, &v1_bytes)
        .await
        .context("late joiner")?;
    forgetting(&fleet, &v1, &v1_bytes, &tombstones)
        .await
        .context("forgetting tombstones")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_postgresql_is_one_service() -> anyhow::Result<()> {
    let pg = std::sync::Arc::new(tokio::sync::Mutex::new(PostgresServer::start().await?));
    let url = pg.lock().await.url();
    let store =
        format!("[backends.control]\ntype = \"postgres\"\nurl = \"{url}\"\ntimeout_ms = 1000\n");
    let (a, b, c) = (pg.clone(), pg.clone(), pg.clone());
    let tombstones: Tombstones = Box::new(move || {
        let pg = c.clone();
        Box::pin(async move {
            let client = pg.lock().await.client().await?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM prism_control_control WHERE value IS NULL",
                    &[],
                )
                .await?;
            Ok(u64::try_from(row.get::<_, i64>(0))?)
        })
    });
    fleet_is_one_service(
        store,
        tombstones,
        async move {
            a.lock().await.kill().await;
            Ok(())
        },
        async move { b.lock().await.restart().await },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_nats_jetstream_is_one_service() -> anyhow::Result<()> {
    let nats = std::sync::Arc::new(tokio::sync::Mutex::new(NatsServer::start().await?));
    let url = nats.lock().await.url();
    let store = format!(
        "[backends.control]\ntype = \"nats\"\nurl = \"{url}\"\njetstream = true\ntimeout_ms = 1000\n"
    );
    let (a, b) = (nats.clone(), nats.clone());
    let tombstones: Tombstones = Box::new(move || {
        let url = url.clone();
        Box::pin(async move {
            let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
            let kv = js.get_key_value("prism_control").await?;
            let keys: Vec<Result<String, _>> = kv.keys().await?.collect().await;
            let mut empty = 0;
            for key in keys {
                let key = key?;
                if kv.get(&key).await?.is_some_and(|v| v.is_empty()) {
                    empty += 1;
                }
            }
            Ok(empty)
        })
    });
    fleet_is_one_service(
        store,
        tombstones,
        async move {
            a.lock().await.kill();
            Ok(())
        },
        async move { b.lock().await.restart().await },
    )
    .await
}

/// A Prism that ran alone (Admin's changes in `state_dir/state.json`),
/// restarted with `[admin] store` naming an empty store: the store takes
/// its namespaces and uploads, so it — and a replica that never ran alone
/// — serve them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_prisms_admin_state_moves_into_an_empty_store() -> anyhow::Result<()> {
    let pg = PostgresServer::start().await?;
    let v2_bytes = scaffold_kv(&V2, "0.2.0").await?;
    let dir = tempfile::tempdir()?;
    let config = |name: &str, store: bool| -> anyhow::Result<String> {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[backends.mem]\ntype = \"memstore\"\n\n[backends.control]\ntype = \"postgres\"\nurl = \"{}\"\ntimeout_ms = 1000\n\n[admin]\nallow_unauthenticated = true\nstate_dir = {:?}\n{}",
                pg.url(),
                dir.path().join(name).display().to_string(),
                if store { "store = \"control\"\n" } else { "" }
            ),
        )?;
        Ok(path.display().to_string())
    };
    let serve = |config: String| async move {
        PrismProcess::start(&["serve", "--config", &config, "--listen", "127.0.0.1:0"]).await
    };
    let channel = |p: &PrismProcess| -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", p.addr))?.connect_lazy())
    };
    let version = |channel: Channel| async move {
        let value = KeyValueClient::with_interceptor(channel, Namespace::new("moved"))
            .get(pb::GetRequest {
                key: VERSION_KEY.into(),
            })
            .await?
            .into_inner()
            .value;
        anyhow::Ok(String::from_utf8(value)?)
    };

    let alone = serve(config("alone", false)?).await?;
    let mut admin = AdminClient::new(channel(&alone)?);
    let digest = upload_bytes(&mut admin, v2_bytes, "v2").await?.digest;
    admin.create_namespace(create("moved", &digest)).await?;
    ensure!(version(channel(&alone)?).await? == "0.2.0");
    let status = alone.terminate(Duration::from_secs(30)).await?;
    ensure!(status.success(), "the lone prism exited with {status}");

    // The same Prism (same state_dir) now with the store, then a replica
    // with an empty state_dir of its own: both serve the namespace on the
    // uploaded component, which the second can only have from the store.
    let first = serve(config("alone", true)?).await?;
    let second = serve(config("joiner", true)?).await?;
    for (which, p) in [("the imported replica", &first), ("a new replica", &second)] {
        ensure!(
            version(channel(p)?).await? == "0.2.0",
            "{which} does not serve the imported namespace"
        );
        let info = AdminClient::new(channel(p)?)
            .get_namespace(pb::GetNamespaceRequest {
                name: "moved".into(),
            })
            .await?
            .into_inner();
        ensure!(
            info.pattern.map(|v| v.digest) == Some(digest.clone()) && info.revision > 0,
            "{which}: the namespace is not the store's"
        );
    }
    let rows: i64 = pg
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM prism_control_control WHERE value IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        rows == 2,
        "{rows} documents in the store (a namespace and an upload)"
    );
    Ok(())
}

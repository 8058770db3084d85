//! A fleet on one control store (`[admin] store`), per store: how long from
//! an Admin answer until every one of 3 replicas serves the change (an
//! update's `max_value_bytes` refusing a value one byte over it, seen by a
//! data call on each), against the store's own change round trip measured
//! in the same run (PostgreSQL NOTIFY → LISTEN, NATS KV put → watch); and
//! deploy-to-serving across the fleet for a component never compiled,
//! beside the single-process row.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use prism::pb;
use prism::pb::admin_client::AdminClient;
use prism::pb::key_value_client::KeyValueClient;
use prism_acceptance::guest_component;
use prism_acceptance::servers::{NatsServer, PostgresServer};
use tonic::Code;
use tonic::transport::Channel;

use crate::admin::{upload, variant};
use crate::load;
use crate::procs::Server;
use crate::report::{Report, Row};

const REPLICAS: usize = 3;
/// Past this a replica is taken not to converge at all.
const GIVE_UP: Duration = Duration::from_secs(10);

struct Fleet {
    replicas: Vec<Server>,
    channels: Vec<Channel>,
    _state: tempfile::TempDir,
}

impl Fleet {
    async fn start(store_toml: &str) -> anyhow::Result<Fleet> {
        let state = tempfile::tempdir()?;
        let (mut replicas, mut channels) = (Vec::new(), Vec::new());
        for i in 0..REPLICAS {
            // A cache of its own: the uncached deploy must compile.
            let toml = format!(
                "[runtime]\ncache_dir = {:?}\n\
                 [backends.mem]\ntype = \"memstore\"\n{store_toml}\n\
                 [admin]\nallow_unauthenticated = true\nstore = \"control\"\nstate_dir = {:?}\n",
                state.path().join(format!("cache{i}")).display().to_string(),
                state.path().join(format!("r{i}")).display().to_string()
            );
            let server = Server::prism(&toml).await?;
            channels.push(load::connect(server.addr).await?);
            replicas.push(server);
        }
        Ok(Fleet {
            replicas,
            channels,
            _state: state,
        })
    }

    fn admin(&self, i: usize) -> AdminClient<Channel> {
        AdminClient::new(self.channels[i].clone()).max_encoding_message_size(64 << 20)
    }

    fn kv(&self, i: usize) -> KeyValueClient<Channel> {
        KeyValueClient::new(self.channels[i].clone())
    }

    /// Waits until every replica answers `serves`; returns how long the last took.
    async fn until_all<F, Fut>(&self, serves: F) -> anyhow::Result<Duration>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        for i in 0..REPLICAS {
            while !serves(i).await {
                if started.elapsed() > GIVE_UP {
                    bail!("replica {i} did not serve the change within {GIVE_UP:?}");
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        Ok(started.elapsed())
    }

    async fn stop(self) -> anyhow::Result<()> {
        for server in self.replicas {
            server.stop().await?;
        }
        Ok(())
    }
}

/// Whether replica `i` refuses a value of `limit + 1` bytes (the update
/// that set `max_value_bytes = limit`, below the last one, is served there).
async fn enforces(fleet: &Fleet, i: usize, limit: usize) -> bool {
    let mut kv = fleet.kv(i);
    let over = kv
        .set(pb::SetRequest {
            key: "fleet".into(),
            value: vec![1; limit + 1],
            ttl_ms: None,
        })
        .await;
    matches!(over, Err(s) if s.code() == Code::InvalidArgument)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// PostgreSQL's NOTIFY → LISTEN round trip, `rounds` times, in ms.
async fn postgres_round_trips(pg: &PostgresServer, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let (listener, mut connection) =
        tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                let _ = tx.send(Instant::now());
            }
        }
    });
    listener.batch_execute("LISTEN bench_round_trip").await?;
    let notifier = pg.client().await?;
    let mut out = Vec::new();
    for n in 0..rounds {
        let sent = Instant::now();
        notifier
            .execute(
                "SELECT pg_notify('bench_round_trip', $1)",
                &[&n.to_string()],
            )
            .await?;
        let got = tokio::time::timeout(GIVE_UP, rx.recv())
            .await
            .context("no notification")?
            .context("listener gone")?;
        out.push((got - sent).as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// A NATS KV put → watch round trip, `rounds` times, in ms.
async fn nats_round_trips(nats: &NatsServer, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    // The bucket's stream made directly (as Prism's control store does:
    // `create_key_value` cannot read a pre-2.10 server's account answer).
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "KV_bench_round_trip".into(),
        subjects: vec!["$KV.bench_round_trip.>".into()],
        max_messages_per_subject: 1,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    let kv = js.get_key_value("bench_round_trip").await?;
    let mut watch = kv.watch_all().await?;
    let mut out = Vec::new();
    for n in 0..rounds {
        let sent = Instant::now();
        kv.put("k", n.to_string().into()).await?;
        tokio::time::timeout(GIVE_UP, watch.next())
            .await
            .context("no watch entry")?
            .context("watch ended")??;
        out.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// One store's rows: `name` is `postgres` or `nats`.
async fn store_rows(
    report: &mut Report,
    name: &str,
    store_toml: &str,
    mut baseline: Vec<f64>,
    rounds: usize,
) -> anyhow::Result<()> {
    let owned = Fleet::start(store_toml).await?;
    let fleet = &owned;
    fleet
        .admin(0)
        .create_namespace(pb::CreateNamespaceRequest {
            name: "default".into(),
            pattern: "keyvalue".into(),
            slots: [("kv".to_string(), "mem".to_string())].into(),
            ..Default::default()
        })
        .await?;
    fleet
        .until_all(|i| async move {
            fleet
                .admin(i)
                .get_namespace(pb::GetNamespaceRequest {
                    name: "default".into(),
                })
                .await
                .is_ok()
        })
        .await?;
    let mut visible = Vec::new();
    for round in 0..rounds {
        // Each limit one below the last: a value one byte over it was
        // taken until the replica applied this update.
        let limit = 5000 - round;
        fleet
            .admin(round % REPLICAS)
            .update_namespace(pb::UpdateNamespaceRequest {
                name: "default".into(),
                settings: [("max_value_bytes".to_string(), limit.to_string())].into(),
                ..Default::default()
            })
            .await?;
        let took = fleet
            .until_all(|i| async move { enforces(fleet, i, limit).await })
            .await?;
        visible.push(took.as_secs_f64() * 1000.0);
    }
    let base50 = percentile(&mut baseline, 50.0);
    let base99 = percentile(&mut baseline, 99.0);
    report.push(Row::new(
        format!("admin_change_visible_on_all_replicas_p50_{name}"),
        percentile(&mut visible, 50.0),
        "ms",
        format!("{name}_change_round_trip_p50"),
        base50,
    ));
    report.push(Row::new(
        format!("admin_change_visible_on_all_replicas_p99_{name}"),
        percentile(&mut visible, 99.0),
        "ms",
        format!("{name}_change_round_trip_p99"),
        base99,
    ));

    // A component never compiled: uploaded and deployed through replica 0,
    // until every replica answers a call on it.
    let path = guest_component("keyvalue");
    let base = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut cold = Vec::new();
    for n in 0..3u32 {
        let started = Instant::now();
        let mut admin = fleet.admin(0);
        let digest = upload(&mut admin, variant(&base, 10_000 + n)).await?;
        admin
            .deploy_pattern(pb::DeployPatternRequest {
                namespace: "default".into(),
                pattern: digest.clone(),
                canary_percent: 0,
                shadow: false,
            })
            .await?;
        let digest = &digest;
        fleet
            .until_all(|i| async move {
                let info = fleet
                    .admin(i)
                    .get_namespace(pb::GetNamespaceRequest {
                        name: "default".into(),
                    })
                    .await;
                let serving =
                    info.is_ok_and(|r| r.into_inner().pattern.is_some_and(|p| &p.digest == digest));
                serving
                    && fleet
                        .kv(i)
                        .set(pb::SetRequest {
                            key: "fleet".into(),
                            value: vec![1],
                            ttl_ms: None,
                        })
                        .await
                        .is_ok()
            })
            .await?;
        cold.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let single = report
        .rows()
        .iter()
        .find(|r| r.name == "admin_deploy_to_serving_uncached_ms")
        .map(|r| r.value);
    let fleet_cold = percentile(&mut cold, 50.0);
    report.push(match single {
        Some(single) => Row::new(
            format!("admin_deploy_to_serving_fleet_uncached_ms_{name}"),
            fleet_cold,
            "ms",
            "admin_deploy_to_serving_uncached_ms",
            single,
        ),
        None => Row::target(
            format!("admin_deploy_to_serving_fleet_uncached_ms_{name}"),
            fleet_cold,
            "ms",
            "target_deploy_uncached_ms",
            100.0,
        ),
    });
    owned.stop().await
}

pub async fn rows(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let rounds = if quick { 10 } else { 40 };
    let pg = PostgresServer::start().await?;
    let baseline = postgres_round_trips(&pg, rounds * 2).await?;
    let toml = format!(
        "[backends.control]\ntype = \"postgres\"\nurl = \"{}\"\n",
        pg.url()
    );
    store_rows(report, "postgres", &toml, baseline, rounds).await?;
    drop(pg);
    let nats = NatsServer::start().await?;
    let baseline = nats_round_trips(&nats, rounds * 2).await?;
    let toml = format!(
        "[backends.control]\ntype = \"nats\"\nurl = \"{}\"\njetstream = true\n",
        nats.url()
    );
    store_rows(report, "nats", &toml, baseline, rounds).await
}

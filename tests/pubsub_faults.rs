//! PubSub fault tests against real brokers: a broker restart must not need
//! any client action (subscribers resume, publishing recovers), and while
//! the broker is down publishes fail with UNAVAILABLE instead of hanging.

use std::time::Duration;

use prism_acceptance::pubsub::{Sub, publish_request, pubsub_config, subscribe_request};
use prism_acceptance::servers::{NatsServer, RedisServer};
use prism_acceptance::{PsClient, eventually, pb, start};
use tonic::Code;

/// Whether publishing fails with UNAVAILABLE within 10 s (the broker is down).
async fn publishing_fails_unavailable(client: &PsClient) -> bool {
    eventually(Duration::from_secs(10), || {
        let mut c = client.clone();
        async move {
            matches!(c.publish(publish_request("live", b"lost")).await, Err(s) if s.code() == Code::Unavailable)
        }
    })
    .await
}

/// Publishes until one is accepted (the broker is back), then returns its id.
async fn publish_when_back(
    client: &PsClient,
    topic: &str,
    payload: &[u8],
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match client
            .clone()
            .publish(publish_request(topic, payload))
            .await
        {
            Ok(r) => return Ok(r.into_inner().id),
            Err(s) if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => anyhow::bail!("publish after restart: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_subscribers_resume_without_client_action() -> anyhow::Result<()> {
    for jetstream in [false, true] {
        let mut nats = NatsServer::start().await?;
        let backend = format!(
            "[backends.bus]\ntype = \"nats\"\nurl = \"{}\"\njetstream = {jetstream}\n",
            nats.url()
        );
        let server = start(&pubsub_config(&backend, &["alpha"], "")).await?;
        let mut client = server.pubsub("alpha");
        let request = pb::SubscribeRequest {
            group: if jetstream {
                "durable".into()
            } else {
                String::new()
            },
            ..subscribe_request("live")
        };
        let mut sub = Sub::open(&mut client, request).await?;
        client.publish(publish_request("live", b"before")).await?;
        anyhow::ensure!(sub.take(1, Duration::from_secs(5)).await?[0].payload[..] == *b"before");

        nats.kill();
        let down = publishing_fails_unavailable(&client).await;
        anyhow::ensure!(
            down,
            "jetstream={jetstream}: publishing to a dead NATS must fail with UNAVAILABLE"
        );

        nats.restart().await?;
        let id = publish_when_back(&client, "live", b"after").await?;
        // The subscription made before the restart gets it, with no client action.
        let mut got = None;
        while let Some(m) = sub.next(Duration::from_secs(15)).await? {
            if m.id == id {
                got = Some(m);
                break;
            }
        }
        anyhow::ensure!(
            got.is_some_and(|m| m.payload[..] == *b"after"),
            "jetstream={jetstream}: the subscriber did not resume after the restart"
        );
        server.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_subscribers_resume_without_client_action() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let backend = format!(
        "[backends.bus]\ntype = \"redis\"\nurl = \"{}\"\n",
        redis.url()
    );
    let server = start(&pubsub_config(&backend, &["alpha"], "")).await?;
    let mut client = server.pubsub("alpha");
    let mut sub = Sub::open(&mut client, subscribe_request("live")).await?;
    client.publish(publish_request("live", b"before")).await?;
    anyhow::ensure!(sub.take(1, Duration::from_secs(5)).await?[0].payload[..] == *b"before");
    redis.kill();
    let down = publishing_fails_unavailable(&client).await;
    anyhow::ensure!(
        down,
        "publishing to a dead Redis must fail with UNAVAILABLE"
    );
    redis.restart().await?;
    // Publishing may succeed before the pub/sub connection has re-subscribed;
    // keep publishing until the old subscription sees one.
    let resumed = eventually(Duration::from_secs(20), || {
        let mut c = client.clone();
        async move { c.publish(publish_request("live", b"after")).await.is_ok() }
    })
    .await;
    anyhow::ensure!(resumed, "publishing did not recover after the restart");
    let mut seen = false;
    for _ in 0..100 {
        if let Some(m) = sub.next(Duration::from_millis(200)).await?
            && m.payload[..] == *b"after"
        {
            seen = true;
            break;
        }
        let _ = client.publish(publish_request("live", b"after")).await;
    }
    anyhow::ensure!(seen, "the subscriber did not resume after Redis restarted");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pattern_and_unbound_errors_are_clear() -> anyhow::Result<()> {
    let server = start(
        "[backends.mem]\ntype = \"memstore\"\n\
         [namespaces.kv]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n\
         [namespaces.ps]\npattern = \"pubsub\"\nslots = { pubsub = \"mem\" }\n",
    )
    .await?;
    let r = server
        .pubsub("kv")
        .publish(publish_request("t", b"x"))
        .await;
    anyhow::ensure!(
        matches!(&r, Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("KeyValue")),
        "{r:?}"
    );
    let r = server.pubsub("kv").subscribe(subscribe_request("t")).await;
    anyhow::ensure!(
        matches!(&r, Err(s) if s.code() == Code::FailedPrecondition),
        "{:?}",
        r.err()
    );
    let r = server
        .kv("ps")
        .get(pb::GetRequest { key: "k".into() })
        .await;
    anyhow::ensure!(
        matches!(&r, Err(s) if s.code() == Code::FailedPrecondition),
        "{r:?}"
    );
    server.stop().await?;
    // A NATS backend cannot serve a kv slot: the config says so at start-up.
    let err = start(
        "[backends.bus]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:1\"\n\
         [namespaces.kv]\npattern = \"keyvalue\"\nslots = { kv = \"bus\" }\n",
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    anyhow::ensure!(
        err.contains("namespaces.kv.slots.kv") && err.contains("cannot serve a kv slot"),
        "{err}"
    );
    Ok(())
}

/// Which broker a through-the-restart run uses.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Broker {
    NatsCore,
    JetStream,
    Redis,
}

/// Everything one publisher and one subscriber saw across a broker kill
/// and restart, message by message.
#[derive(Default, Debug)]
struct Accounting {
    /// Publishes that returned OK (sequence numbers).
    acknowledged: Vec<u64>,
    /// Publishes that failed (UNAVAILABLE expected).
    failed: Vec<(u64, Code)>,
    /// Acknowledged publishes made while the broker was down.
    ok_during_outage: Vec<u64>,
    /// Sequence numbers as delivered, in order, repeats included.
    delivered: Vec<u64>,
}

impl Accounting {
    fn lost(&self) -> Vec<u64> {
        let delivered: std::collections::HashSet<u64> = self.delivered.iter().copied().collect();
        self.acknowledged
            .iter()
            .copied()
            .filter(|s| !delivered.contains(s))
            .collect()
    }

    fn duplicates(&self) -> usize {
        let unique: std::collections::HashSet<u64> = self.delivered.iter().copied().collect();
        self.delivered.len() - unique.len()
    }

    /// Delivered without an OK (the broker took it, the answer was lost).
    fn delivered_unacknowledged(&self) -> Vec<u64> {
        let acked: std::collections::HashSet<u64> = self.acknowledged.iter().copied().collect();
        let unique: std::collections::BTreeSet<u64> = self.delivered.iter().copied().collect();
        unique.into_iter().filter(|s| !acked.contains(s)).collect()
    }

    /// Delivered sequence numbers whose first delivery came after a
    /// higher one's (one publisher, each publish awaited: order holds).
    fn out_of_order(&self) -> Vec<u64> {
        let mut seen = std::collections::HashSet::new();
        let mut highest = 0;
        let mut late = Vec::new();
        for &s in &self.delivered {
            if seen.insert(s) {
                if s < highest {
                    late.push(s);
                }
                highest = highest.max(s);
            }
        }
        late
    }
}

/// Publishes sequence numbers every 2 ms while the broker is killed and
/// restarted under them; a subscriber (a durable group on JetStream) reads
/// throughout. Returns what each side saw.
async fn through_restart(broker: Broker) -> anyhow::Result<Accounting> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (mut nats, mut redis) = (None, None);
    let backend = match broker {
        Broker::NatsCore | Broker::JetStream => {
            let n = NatsServer::start().await?;
            let toml = format!(
                "[backends.bus]\ntype = \"nats\"\nurl = \"{}\"\njetstream = {}\ntimeout_ms = 500\n",
                n.url(),
                broker == Broker::JetStream
            );
            nats = Some(n);
            toml
        }
        Broker::Redis => {
            let r = RedisServer::start().await?;
            let toml = format!(
                "[backends.bus]\ntype = \"redis\"\nurl = \"{}\"\ntimeout_ms = 500\n",
                r.url()
            );
            redis = Some(r);
            toml
        }
    };
    let server = start(&pubsub_config(&backend, &["alpha"], "")).await?;
    let mut client = server.pubsub("alpha");
    let request = pb::SubscribeRequest {
        group: if broker == Broker::JetStream {
            "accounting".into()
        } else {
            String::new()
        },
        buffer: 10_000,
        ..subscribe_request("acct")
    };
    let mut sub = Sub::open(&mut client, request).await?;

    let down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (client, down, stop) = (client.clone(), down.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acc = Accounting::default();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let was_down = down.load(Ordering::Relaxed);
                let r = client
                    .clone()
                    .publish(publish_request("acct", &seq.to_be_bytes()))
                    .await;
                match r {
                    Ok(_) => {
                        acc.acknowledged.push(seq);
                        if was_down && down.load(Ordering::Relaxed) {
                            acc.ok_during_outage.push(seq);
                        }
                    }
                    Err(s) => acc.failed.push((seq, s.code())),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            acc
        })
    };
    let reader = tokio::spawn(async move {
        let mut delivered = Vec::new();
        // Reads until nothing new arrives for 5 s after the publisher
        // stopped; a stream that ends, or a payload that is not one of
        // ours, fails the test.
        while let Some(m) = sub.next(Duration::from_secs(5)).await? {
            let seq: [u8; 8] =
                m.payload.as_ref().try_into().map_err(|_| {
                    anyhow::anyhow!("a delivery that no publish sent: {:?}", m.payload)
                })?;
            delivered.push(u64::from_be_bytes(seq));
        }
        anyhow::Ok(delivered)
    });

    tokio::time::sleep(Duration::from_millis(600)).await;
    down.store(true, Ordering::Relaxed);
    if let Some(n) = nats.as_mut() {
        n.kill();
    }
    if let Some(r) = redis.as_mut() {
        r.kill();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    if let Some(n) = nats.as_mut() {
        n.restart().await?;
    }
    if let Some(r) = redis.as_mut() {
        r.restart().await?;
    }
    down.store(false, Ordering::Relaxed);
    // Publish on well past the recovery.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acc = publisher.await?;
    acc.delivered = reader.await??;
    server.stop().await?;
    Ok(acc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_accounted_for_through_a_broker_restart() -> anyhow::Result<()> {
    for broker in [Broker::JetStream, Broker::NatsCore, Broker::Redis] {
        let acc = through_restart(broker).await?;
        let lost = acc.lost();
        let unavailable = acc
            .failed
            .iter()
            .filter(|(_, c)| *c == Code::Unavailable)
            .count();
        // Reported in the test output whatever the outcome.
        println!(
            "{broker:?}: {} acknowledged, {} failed ({unavailable} UNAVAILABLE), {} OK while down, \
             {} delivered ({} duplicates, {} without an OK, {} out of order), {} acknowledged but lost{}",
            acc.acknowledged.len(),
            acc.failed.len(),
            acc.ok_during_outage.len(),
            acc.delivered.len(),
            acc.duplicates(),
            acc.delivered_unacknowledged().len(),
            acc.out_of_order().len(),
            lost.len(),
            if lost.is_empty() {
                String::new()
            } else {
                format!(" (seq {}..={})", lost[0], lost[lost.len() - 1])
            }
        );
        anyhow::ensure!(
            acc.acknowledged.len() > 200,
            "{broker:?}: too few publishes: {acc:?}"
        );
        anyhow::ensure!(unavailable > 0, "{broker:?}: the outage was never seen");
        anyhow::ensure!(
            acc.failed.iter().all(|(_, c)| *c == Code::Unavailable),
            "{broker:?}: a publish failed with something other than UNAVAILABLE: {:?}",
            acc.failed
        );
        // Delivered without an OK: only publishes that failed (the broker
        // took the message, the answer was lost), never an invented one.
        let failed: std::collections::HashSet<u64> = acc.failed.iter().map(|(s, _)| *s).collect();
        let unexplained: Vec<u64> = acc
            .delivered_unacknowledged()
            .into_iter()
            .filter(|s| !failed.contains(s))
            .collect();
        anyhow::ensure!(
            unexplained.is_empty(),
            "{broker:?}: delivered but never published: {unexplained:?}"
        );
        anyhow::ensure!(
            acc.out_of_order().is_empty(),
            "{broker:?}: first deliveries out of publish order: {:?}",
            acc.out_of_order()
        );
        let first_failure = acc.failed.first().map_or(u64::MAX, |(s, _)| *s);
        let last_failure = acc.failed.last().map_or(0, |(s, _)| *s);
        match broker {
            // At-least-once: nothing acknowledged is ever lost, and the
            // durable group resumes on its own after the restart.
            // Redelivered: only what was unacknowledged when the broker
            // went (around the outage), never the stream from the start.
            Broker::JetStream => {
                anyhow::ensure!(lost.is_empty(), "JetStream lost {lost:?}");
                let mut seen = std::collections::HashSet::new();
                let far: Vec<u64> = acc
                    .delivered
                    .iter()
                    .copied()
                    .filter(|s| !seen.insert(*s))
                    .filter(|s| *s + 500 < first_failure || *s > last_failure + 500)
                    .collect();
                anyhow::ensure!(
                    far.is_empty(),
                    "JetStream redelivered messages far from the outage: {far:?}"
                );
            }
            // At-most-once: losses are confined to the outage (published
            // while the broker was going down, or before the subscription
            // was re-made); everything well before and after arrives.
            Broker::NatsCore | Broker::Redis => {
                let outside: Vec<u64> = lost
                    .iter()
                    .copied()
                    .filter(|s| *s + 50 < first_failure || *s > last_failure + 500)
                    .collect();
                anyhow::ensure!(
                    outside.is_empty(),
                    "{broker:?}: lost messages far from the outage: {outside:?}"
                );
                anyhow::ensure!(
                    acc.duplicates() == 0,
                    "{broker:?}: duplicates on an at-most-once broker"
                );
            }
        }
        // Nothing published after recovery went missing: the last 200 OKs arrived.
        let tail: Vec<u64> = acc.acknowledged.iter().rev().take(200).copied().collect();
        anyhow::ensure!(
            tail.iter().all(|s| !lost.contains(s)),
            "{broker:?}: publishes after recovery were lost"
        );
    }
    Ok(())
}

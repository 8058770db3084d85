//! PubSub figures: delivered messages per second from one publisher to 1, 10
//! and 100 subscribers, and publish→deliver latency — through Prism (its own
//! process) on NATS against async-nats straight to the same nats-server, and
//! through Prism on its embedded broker. Every figure gets a warm-up and is
//! measured in interleaved rounds with its baseline. Only messages received
//! count as delivered; drops are their own rows, and a baseline that drops
//! or stalls fails the run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prism_acceptance::pubsub::pubsub_config;
use prism_acceptance::servers::NatsServer;
use prism_client::{OutgoingMessage, PubSub, SubscribeOptions, Subscription};

use crate::load;
use crate::procs::Server;
use crate::report::{Report, Row};

/// Messages published per subscriber count and round (about 60k deliveries).
pub(crate) fn messages_for(subscribers: usize, quick: bool) -> usize {
    let total = if quick { 20_000 } else { 60_000 };
    (total / subscribers).max(500)
}

pub(crate) const BATCH: usize = 100;

/// How the Prism side publishes its batches.
#[derive(Clone, Copy)]
pub(crate) enum Publish {
    /// Pipelined over one `PublishStream` (the client's `Publisher`).
    Stream,
    /// One `PublishBatch` call at a time (the path before `PublishStream`).
    Batch,
}
/// Interleaved rounds per fan-out group: a full run's rounds last 60–250 ms
/// each, and with 3 of them the 1->1 rows spread by ±25 % from run to run
/// (stop 26: 382–625 k msg/s); 9 cut that by √3 for about 15 s more. A
/// quick run keeps 3, so the guard's time is unchanged.
pub(crate) fn rounds(quick: bool) -> usize {
    if quick { 3 } else { 9 }
}
/// No delivery progress for this long: the run stalled.
const STALL: Duration = Duration::from_secs(10);

/// What one fan-out run saw.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fanout {
    pub(crate) received: u64,
    pub(crate) dropped: u64,
    pub(crate) secs: f64,
    pub(crate) stalled: bool,
}

impl Fanout {
    pub(crate) fn add(&mut self, other: Fanout) {
        self.received += other.received;
        self.dropped += other.dropped;
        self.secs += other.secs;
        self.stalled |= other.stalled;
    }

    pub(crate) fn rate(&self) -> f64 {
        self.received as f64 / self.secs
    }
}

pub async fn rows(report: &mut Report, payload: &[u8], quick: bool) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let nats_backend = format!(
        "[backends.bus]\ntype = \"nats\"\nurl = \"{}\"\n",
        nats.url()
    );
    let on_nats = Server::prism(&pubsub_config(&nats_backend, &["bench"], "")).await?;
    let on_mem = Server::prism(&pubsub_config(
        "[backends.bus]\ntype = \"memstore\"\n",
        &["bench"],
        "",
    ))
    .await?;
    // Prism is driven through the Rust client (`prism-client`).
    let prism_on_nats = load::client(on_nats.addr).await?.pub_sub("bench");
    let prism_on_mem = load::client(on_mem.addr).await?.pub_sub("bench");
    let direct = async_nats::connect(nats.url()).await?;

    let rounds = rounds(quick);
    for subscribers in [1usize, 10, 100] {
        let n = messages_for(subscribers, quick);
        // Warm-up: connections, instance pools, broker subjects.
        direct_fanout(&direct, subscribers, n / 10, payload).await?;
        for (pubsub, how) in [
            (&prism_on_nats, Publish::Stream),
            (&prism_on_nats, Publish::Batch),
            (&prism_on_mem, Publish::Stream),
        ] {
            prism_fanout(pubsub, subscribers, n / 10, payload, how).await?;
        }
        let (mut base, mut ours, mut unary, mut embedded) = (
            Fanout::default(),
            Fanout::default(),
            Fanout::default(),
            Fanout::default(),
        );
        for _ in 0..rounds {
            base.add(direct_fanout(&direct, subscribers, n, payload).await?);
            ours.add(prism_fanout(&prism_on_nats, subscribers, n, payload, Publish::Stream).await?);
            unary.add(prism_fanout(&prism_on_nats, subscribers, n, payload, Publish::Batch).await?);
            embedded
                .add(prism_fanout(&prism_on_mem, subscribers, n, payload, Publish::Stream).await?);
        }
        anyhow::ensure!(
            !base.stalled
                && base.dropped == 0
                && base.received == (n * subscribers * rounds) as u64,
            "baseline async-nats 1->{subscribers} lost messages or stalled: received {} of {}, dropped {}",
            base.received,
            n * subscribers * rounds,
            base.dropped
        );
        for (name, run) in [
            ("nats", &ours),
            ("nats_publish_batch", &unary),
            ("embedded", &embedded),
        ] {
            if run.stalled {
                eprintln!(
                    "warning: prism_{name} 1->{subscribers} stalled: received {} of {}",
                    run.received,
                    n * subscribers * rounds
                );
            }
        }
        report.push(Row::new(
            format!("prism_nats_delivered_1to{subscribers}"),
            ours.rate(),
            "msg/s",
            format!("async_nats_direct_delivered_1to{subscribers}"),
            base.rate(),
        ));
        // The same run publishing one PublishBatch at a time: what the
        // streaming publish is worth.
        report.push(Row::new(
            format!("prism_nats_delivered_1to{subscribers}_publish_batch"),
            unary.rate(),
            "msg/s",
            format!("async_nats_direct_delivered_1to{subscribers}"),
            base.rate(),
        ));
        report.push(Row::new(
            format!("prism_embedded_delivered_1to{subscribers}"),
            embedded.rate(),
            "msg/s",
            format!("async_nats_direct_delivered_1to{subscribers}"),
            base.rate(),
        ));
        for (name, run) in [("nats", &ours), ("embedded", &embedded)] {
            report.push(Row::target(
                format!("prism_{name}_dropped_1to{subscribers}"),
                run.dropped as f64,
                "msg",
                "target_dropped",
                0.0,
            ));
        }
        if subscribers == 1 {
            report.push(Row::target(
                "prism_embedded_delivered_1to1_vs_target",
                embedded.rate(),
                "msg/s",
                "target_embedded_delivered_1to1",
                500_000.0,
            ));
        }
    }

    // Latency, interleaved in rounds after a warm-up. The tonic echo's
    // unary round trip is the floor of any gRPC gateway's publish→deliver:
    // a message comes in over gRPC and goes out over gRPC.
    let echo = Server::baseline(&["serve-echo", "--payload", &payload.len().to_string()]).await?;
    let echo_kv = load::client(echo.addr).await?.key_value("default");
    let mut prism_nats = prism_latency(&prism_on_nats).await?;
    let mut prism_mem = prism_latency(&prism_on_mem).await?;
    let mut direct_sub = direct.subscribe("bench.latency").await?;
    direct.flush().await?;
    let samples = if quick { 200 } else { 500 };
    let mut base = Vec::new();
    let mut ours = Vec::new();
    let mut embedded = Vec::new();
    let mut echo_rtt = Vec::new();
    direct_latency(&direct, &mut direct_sub, payload, samples / 2).await?;
    prism_nats.sample(payload, samples / 2).await?;
    prism_mem.sample(payload, samples / 2).await?;
    echo_latency(&echo_kv, samples / 2).await?;
    for _ in 0..4 {
        base.extend(direct_latency(&direct, &mut direct_sub, payload, samples).await?);
        ours.extend(prism_nats.sample(payload, samples).await?);
        embedded.extend(prism_mem.sample(payload, samples).await?);
        echo_rtt.extend(echo_latency(&echo_kv, samples).await?);
    }
    let (base, ours, embedded, echo_rtt) = (p50(base), p50(ours), p50(embedded), p50(echo_rtt));
    report.push(Row::new(
        "prism_nats_publish_to_deliver_p50",
        ours,
        "us",
        "async_nats_direct_publish_to_deliver_p50",
        base,
    ));
    report.push(Row::new(
        "prism_embedded_publish_to_deliver_p50",
        embedded,
        "us",
        "async_nats_direct_publish_to_deliver_p50",
        base,
    ));
    report.push(Row::new(
        "prism_embedded_publish_to_deliver_p50_vs_echo_rtt",
        embedded,
        "us",
        "tonic_echo_kv_get_c1_p50_same_section",
        echo_rtt,
    ));
    report.push(Row::new(
        "prism_nats_publish_to_deliver_p50_vs_echo_rtt_plus_nats",
        ours,
        "us",
        "tonic_echo_c1_p50_plus_async_nats_direct_p50",
        echo_rtt + base,
    ));
    on_nats.stop().await?;
    on_mem.stop().await?;
    echo.stop().await?;
    Ok(())
}

/// Unary round trips to the tonic echo, through the same client as Prism's.
async fn echo_latency(kv: &prism_client::KeyValue, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        kv.get(load::BENCH_KEY).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// Waits until every subscriber accounted for `n` messages (received or
/// reported dropped), or delivery made no progress for [`STALL`].
pub(crate) async fn wait_all(
    received: &[Arc<AtomicU64>],
    dropped: &[Arc<AtomicU64>],
    n: u64,
) -> bool {
    let mut last = 0;
    let mut since = Instant::now();
    loop {
        let total: u64 = received
            .iter()
            .zip(dropped)
            .map(|(r, d)| (r.load(Ordering::Relaxed) + d.load(Ordering::Relaxed)).min(n))
            .sum();
        if total >= n * received.len() as u64 {
            return true;
        }
        if total != last {
            last = total;
            since = Instant::now();
        } else if since.elapsed() > STALL {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub(crate) fn counters(n: usize) -> Vec<Arc<AtomicU64>> {
    (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect()
}

fn sum(counters: &[Arc<AtomicU64>]) -> u64 {
    counters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

async fn direct_fanout(
    client: &async_nats::Client,
    subscribers: usize,
    n: usize,
    payload: &[u8],
) -> anyhow::Result<Fanout> {
    let subject = format!("bench.direct.{subscribers}.{}", prism::clock::now_ms());
    let received = counters(subscribers);
    let dropped = counters(subscribers);
    let mut tasks = Vec::new();
    for counter in &received {
        let mut sub = client.subscribe(subject.clone()).await?;
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            while sub.next().await.is_some() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    client.flush().await?;
    let payload = Bytes::copy_from_slice(payload);
    let started = Instant::now();
    for _ in 0..n {
        client.publish(subject.clone(), payload.clone()).await?;
    }
    client.flush().await?;
    Ok(finish(&received, &dropped, n, started, tasks).await)
}

pub(crate) async fn prism_fanout(
    pubsub: &PubSub,
    subscribers: usize,
    n: usize,
    payload: &[u8],
    how: Publish,
) -> anyhow::Result<Fanout> {
    let topic = format!("fanout.{subscribers}.{}", prism::clock::now_ms());
    let received = counters(subscribers);
    let dropped = counters(subscribers);
    let mut tasks = Vec::new();
    for (r, d) in received.iter().zip(&dropped) {
        // Returns once the subscription is confirmed live.
        let mut sub = pubsub
            .subscribe_with(&topic, SubscribeOptions::new().buffer(65_536))
            .await?;
        let (r, d) = (r.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            // Frame by frame, as the server sends them (drop reports included).
            while let Some(Ok(batch)) = sub.next_batch().await {
                r.fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
                d.fetch_add(batch.dropped, Ordering::Relaxed);
            }
        }));
    }
    let publisher = match how {
        Publish::Stream => Some(pubsub.publisher().await?),
        Publish::Batch => None,
    };
    let payload = Bytes::copy_from_slice(payload);
    let started = Instant::now();
    let mut sent = 0;
    let mut acks = std::collections::VecDeque::new();
    while sent < n {
        let count = BATCH.min(n - sent);
        let messages = (0..count).map(|_| OutgoingMessage::new(payload.clone()));
        match &publisher {
            Some(publisher) => {
                acks.push_back(publisher.send(&topic, messages).await?);
                // Acks are checked as they come, not left to pile up.
                while acks.len() > prism_client::PUBLISH_WINDOW {
                    if let Some(ack) = acks.pop_front() {
                        ack.await?;
                    }
                }
            }
            None => {
                pubsub.publish_many(&topic, messages).await?;
            }
        }
        sent += count;
    }
    for ack in acks {
        ack.await?;
    }
    Ok(finish(&received, &dropped, n, started, tasks).await)
}

/// Waits for the run to be delivered (or stall), stops the readers and
/// reports what they received in how long since `started`.
pub(crate) async fn finish(
    received: &[Arc<AtomicU64>],
    dropped: &[Arc<AtomicU64>],
    n: usize,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> Fanout {
    let complete = wait_all(received, dropped, n as u64).await;
    let secs = started.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Fanout {
        received: sum(received),
        dropped: sum(dropped),
        secs,
        stalled: !complete,
    }
}

fn p50(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn direct_latency(
    client: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
    payload: &[u8],
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let payload = Bytes::copy_from_slice(payload);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        client.publish("bench.latency", payload.clone()).await?;
        client.flush().await?;
        sub.next()
            .await
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// A live Prism subscription and a publisher on one topic, sampled in rounds.
struct PrismLatency {
    sub: Subscription,
    publisher: PubSub,
}

async fn prism_latency(pubsub: &PubSub) -> anyhow::Result<PrismLatency> {
    // Returns once the subscription is confirmed live.
    let sub = pubsub.subscribe("latency").await?;
    Ok(PrismLatency {
        sub,
        publisher: pubsub.clone(),
    })
}

impl PrismLatency {
    async fn sample(&mut self, payload: &[u8], n: usize) -> anyhow::Result<Vec<f64>> {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            self.publisher
                .publish_with_metadata("latency", payload.to_vec(), HashMap::new())
                .await?;
            // The next frame, as before the client.
            self.sub
                .next_batch()
                .await
                .ok_or_else(|| anyhow::anyhow!("subscription ended"))??;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok(samples)
    }
}

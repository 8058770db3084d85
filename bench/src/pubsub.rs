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
use prism::pb;
use prism_acceptance::pubsub::pubsub_config;
use prism_acceptance::servers::NatsServer;
use tonic::Request;
use tonic::transport::Channel;

use crate::load;
use crate::procs::Server;
use crate::report::{Report, Row};

/// Messages published per subscriber count and round (about 60k deliveries).
fn messages_for(subscribers: usize, quick: bool) -> usize {
    let total = if quick { 20_000 } else { 60_000 };
    (total / subscribers).max(500)
}

const BATCH: usize = 100;
const ROUNDS: usize = 3;
/// No delivery progress for this long: the run stalled.
const STALL: Duration = Duration::from_secs(10);

/// What one fan-out run saw.
#[derive(Default, Clone, Copy)]
struct Fanout {
    received: u64,
    dropped: u64,
    secs: f64,
    stalled: bool,
}

impl Fanout {
    fn add(&mut self, other: Fanout) {
        self.received += other.received;
        self.dropped += other.dropped;
        self.secs += other.secs;
        self.stalled |= other.stalled;
    }

    fn rate(&self) -> f64 {
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
    let nats_channel = load::connect(on_nats.addr).await?;
    let mem_channel = load::connect(on_mem.addr).await?;
    let direct = async_nats::connect(nats.url()).await?;

    for subscribers in [1usize, 10, 100] {
        let n = messages_for(subscribers, quick);
        // Warm-up: connections, instance pools, broker subjects.
        direct_fanout(&direct, subscribers, n / 10, payload).await?;
        prism_fanout(&nats_channel, subscribers, n / 10, payload).await?;
        prism_fanout(&mem_channel, subscribers, n / 10, payload).await?;
        let (mut base, mut ours, mut embedded) =
            (Fanout::default(), Fanout::default(), Fanout::default());
        for _ in 0..ROUNDS {
            base.add(direct_fanout(&direct, subscribers, n, payload).await?);
            ours.add(prism_fanout(&nats_channel, subscribers, n, payload).await?);
            embedded.add(prism_fanout(&mem_channel, subscribers, n, payload).await?);
        }
        anyhow::ensure!(
            !base.stalled
                && base.dropped == 0
                && base.received == (n * subscribers * ROUNDS) as u64,
            "baseline async-nats 1->{subscribers} lost messages or stalled: received {} of {}, dropped {}",
            base.received,
            n * subscribers * ROUNDS,
            base.dropped
        );
        for (name, run) in [("nats", &ours), ("embedded", &embedded)] {
            if run.stalled {
                eprintln!(
                    "warning: prism_{name} 1->{subscribers} stalled: received {} of {}",
                    run.received,
                    n * subscribers * ROUNDS
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

    // Latency, interleaved in rounds after a warm-up.
    let mut prism_nats = prism_latency(&nats_channel).await?;
    let mut prism_mem = prism_latency(&mem_channel).await?;
    let mut direct_sub = direct.subscribe("bench.latency").await?;
    direct.flush().await?;
    let samples = if quick { 200 } else { 500 };
    let mut base = Vec::new();
    let mut ours = Vec::new();
    let mut embedded = Vec::new();
    direct_latency(&direct, &mut direct_sub, payload, samples / 2).await?;
    prism_nats.sample(payload, samples / 2).await?;
    prism_mem.sample(payload, samples / 2).await?;
    for _ in 0..4 {
        base.extend(direct_latency(&direct, &mut direct_sub, payload, samples).await?);
        ours.extend(prism_nats.sample(payload, samples).await?);
        embedded.extend(prism_mem.sample(payload, samples).await?);
    }
    let base = p50(base);
    report.push(Row::new(
        "prism_nats_publish_to_deliver_p50",
        p50(ours),
        "us",
        "async_nats_direct_publish_to_deliver_p50",
        base,
    ));
    report.push(Row::new(
        "prism_embedded_publish_to_deliver_p50",
        p50(embedded),
        "us",
        "async_nats_direct_publish_to_deliver_p50",
        base,
    ));
    on_nats.stop().await?;
    on_mem.stop().await?;
    Ok(())
}

fn client(channel: &Channel) -> pb::pub_sub_client::PubSubClient<Channel> {
    pb::pub_sub_client::PubSubClient::new(channel.clone())
}

fn with_ns<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        prism::namespace::NAMESPACE_METADATA,
        tonic::metadata::MetadataValue::from_static("bench"),
    );
    r
}

/// Waits until every subscriber accounted for `n` messages (received or
/// reported dropped), or delivery made no progress for [`STALL`].
async fn wait_all(received: &[Arc<AtomicU64>], dropped: &[Arc<AtomicU64>], n: u64) -> bool {
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

fn counters(n: usize) -> Vec<Arc<AtomicU64>> {
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
    let complete = wait_all(&received, &dropped, n as u64).await;
    let secs = started.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Ok(Fanout {
        received: sum(&received),
        dropped: sum(&dropped),
        secs,
        stalled: !complete,
    })
}

async fn prism_fanout(
    channel: &Channel,
    subscribers: usize,
    n: usize,
    payload: &[u8],
) -> anyhow::Result<Fanout> {
    let topic = format!("fanout.{subscribers}.{}", prism::clock::now_ms());
    let received = counters(subscribers);
    let dropped = counters(subscribers);
    let mut tasks = Vec::new();
    for (r, d) in received.iter().zip(&dropped) {
        let request = pb::SubscribeRequest {
            topic: topic.clone(),
            buffer: 65_536,
            ..Default::default()
        };
        let mut stream = client(channel)
            .subscribe(with_ns(request))
            .await?
            .into_inner();
        stream.message().await?; // the confirmation
        let (r, d) = (r.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(frame)) = stream.message().await {
                if let Some(pb::subscribe_response::Event::Messages(b)) = frame.event {
                    r.fetch_add(b.messages.len() as u64, Ordering::Relaxed);
                    d.fetch_add(b.dropped, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut publisher = client(channel);
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let count = BATCH.min(n - sent);
        let messages = (0..count)
            .map(|_| pb::BatchMessage {
                payload: payload.to_vec(),
                metadata: HashMap::new(),
            })
            .collect();
        publisher
            .publish_batch(with_ns(pb::PublishBatchRequest {
                topic: topic.clone(),
                messages,
            }))
            .await?;
        sent += count;
    }
    let complete = wait_all(&received, &dropped, n as u64).await;
    let secs = started.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Ok(Fanout {
        received: sum(&received),
        dropped: sum(&dropped),
        secs,
        stalled: !complete,
    })
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
    stream: tonic::Streaming<pb::SubscribeResponse>,
    publisher: pb::pub_sub_client::PubSubClient<Channel>,
}

async fn prism_latency(channel: &Channel) -> anyhow::Result<PrismLatency> {
    let mut stream = client(channel)
        .subscribe(with_ns(pb::SubscribeRequest {
            topic: "latency".into(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    stream.message().await?;
    Ok(PrismLatency {
        stream,
        publisher: client(channel),
    })
}

impl PrismLatency {
    async fn sample(&mut self, payload: &[u8], n: usize) -> anyhow::Result<Vec<f64>> {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            self.publisher
                .publish(with_ns(pb::PublishRequest {
                    topic: "latency".into(),
                    payload: payload.to_vec(),
                    metadata: HashMap::new(),
                }))
                .await?;
            self.stream.message().await?;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok(samples)
    }
}

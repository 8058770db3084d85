//! PubSub figures: delivered messages per second from one publisher to 1, 10
//! and 100 subscribers, and publish→deliver latency — through Prism on NATS
//! against async-nats straight to the same nats-server in the same run, and
//! through Prism on its embedded broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prism::config::Config;
use prism::pb;
use prism_acceptance::pubsub::pubsub_config;
use prism_acceptance::servers::NatsServer;
use tonic::Request;
use tonic::transport::Channel;

use crate::load;
use crate::report::{Report, Row};

/// Messages published per subscriber count (about 200k deliveries each).
fn messages_for(subscribers: usize) -> usize {
    (200_000 / subscribers).max(2_000)
}

const BATCH: usize = 100;
const LATENCY_SAMPLES: usize = 2_000;

pub async fn rows(report: &mut Report, payload: &[u8]) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let nats_backend = format!(
        "[backends.bus]\ntype = \"nats\"\nurl = \"{}\"\n",
        nats.url()
    );
    let on_nats = start(&pubsub_config(&nats_backend, &["bench"], "")).await?;
    let on_mem = start(&pubsub_config(
        "[backends.bus]\ntype = \"memstore\"\n",
        &["bench"],
        "",
    ))
    .await?;
    let direct = async_nats::connect(nats.url()).await?;

    for subscribers in [1usize, 10, 100] {
        let n = messages_for(subscribers);
        let base = direct_fanout(&direct, subscribers, n, payload).await?;
        let ours = prism_fanout(&on_nats.1, subscribers, n, payload).await?;
        let embedded = prism_fanout(&on_mem.1, subscribers, n, payload).await?;
        report.push(Row::new(
            format!("prism_nats_delivered_1to{subscribers}"),
            ours,
            "msg/s",
            format!("async_nats_direct_delivered_1to{subscribers}"),
            base,
        ));
        report.push(Row::new(
            format!("prism_embedded_delivered_1to{subscribers}"),
            embedded,
            "msg/s",
            format!("async_nats_direct_delivered_1to{subscribers}"),
            base,
        ));
    }

    let base = direct_latency(&direct, payload).await?;
    let ours = prism_latency(&on_nats.1, payload).await?;
    let embedded = prism_latency(&on_mem.1, payload).await?;
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
    on_nats.0.shutdown().await?;
    on_mem.0.shutdown().await?;
    Ok(())
}

async fn start(toml: &str) -> anyhow::Result<(prism::server::RunningServer, Channel)> {
    let mut config = Config::parse(toml, "bench.toml".as_ref(), ".".into())?;
    config.server.listen = "127.0.0.1:0".parse()?;
    let server = prism::server::start(config).await?;
    let channel = load::connect(server.local_addr()).await?;
    Ok((server, channel))
}

fn client(channel: &Channel) -> pb::pub_sub_client::PubSubClient<Channel> {
    pb::pub_sub_client::PubSubClient::new(channel.clone())
}

fn with_ns<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        prism::namespace::NAMESPACE_METADATA,
        "bench"
            .parse()
            .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("bench")),
    );
    r
}

/// Waits until every subscriber counted `n` (received + dropped), or 10 s of no progress.
async fn wait_all(counters: &[Arc<AtomicU64>], n: u64) {
    let mut last = 0;
    let mut since = Instant::now();
    loop {
        let total: u64 = counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed).min(n))
            .sum();
        if total >= n * counters.len() as u64 {
            return;
        }
        if total != last {
            last = total;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_secs(10) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn direct_fanout(
    client: &async_nats::Client,
    subscribers: usize,
    n: usize,
    payload: &[u8],
) -> anyhow::Result<f64> {
    let subject = format!("bench.direct.{subscribers}");
    let mut counters = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut sub = client.subscribe(subject.clone()).await?;
        let counter = Arc::new(AtomicU64::new(0));
        counters.push(counter.clone());
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
    wait_all(&counters, n as u64).await;
    let elapsed = started.elapsed().as_secs_f64();
    let delivered: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    for t in tasks {
        t.abort();
    }
    Ok(delivered as f64 / elapsed)
}

async fn prism_fanout(
    channel: &Channel,
    subscribers: usize,
    n: usize,
    payload: &[u8],
) -> anyhow::Result<f64> {
    let topic = format!(
        "fanout.{subscribers}.{}",
        prism::capability::pubsub::now_ms()
    );
    let mut counters = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
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
        let counter = Arc::new(AtomicU64::new(0));
        counters.push(counter.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(frame)) = stream.message().await {
                if let Some(pb::subscribe_response::Event::Messages(b)) = frame.event {
                    counter.fetch_add(b.messages.len() as u64 + b.dropped, Ordering::Relaxed);
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
    wait_all(&counters, n as u64).await;
    let elapsed = started.elapsed().as_secs_f64();
    let delivered: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    for t in tasks {
        t.abort();
    }
    Ok(delivered as f64 / elapsed)
}

fn p50(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn direct_latency(client: &async_nats::Client, payload: &[u8]) -> anyhow::Result<f64> {
    let mut sub = client.subscribe("bench.latency").await?;
    client.flush().await?;
    let payload = Bytes::copy_from_slice(payload);
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let started = Instant::now();
        client.publish("bench.latency", payload.clone()).await?;
        client.flush().await?;
        sub.next()
            .await
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(p50(samples))
}

async fn prism_latency(channel: &Channel, payload: &[u8]) -> anyhow::Result<f64> {
    let mut stream = client(channel)
        .subscribe(with_ns(pb::SubscribeRequest {
            topic: "latency".into(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    stream.message().await?;
    let mut publisher = client(channel);
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let started = Instant::now();
        publisher
            .publish(with_ns(pb::PublishRequest {
                topic: "latency".into(),
                payload: payload.to_vec(),
                metadata: HashMap::new(),
            }))
            .await?;
        stream.message().await?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(p50(samples))
}

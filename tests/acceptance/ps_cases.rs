//! PubSub behaviour every broker must share, written once. `a` and `b` are
//! clients of two namespaces bound to the same broker instance. Topics and
//! group names carry the case name, so durable broker state (JetStream) of
//! one case never reaches another.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::ensure;
use prism_acceptance::pubsub::{Sub, publish_request, subscribe_request};
use prism_acceptance::{PsClient, pb};
use tonic::Code;

pub struct Ctx {
    pub a: PsClient,
    pub b: PsClient,
    /// A client naming a namespace the server does not have.
    pub unknown: PsClient,
    pub backend: &'static str,
}

impl Ctx {
    fn at_least_once(&self) -> bool {
        matches!(self.backend, "jetstream" | "redis-streams")
    }
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
    fan_out_to_every_subscriber,
    order_of_1000_messages,
    publish_stream_orders_and_answers_each_request,
    hundred_concurrent_subscribers,
    unsubscribe_stops_delivery,
    binary_payloads_and_metadata,
    topics_isolated_across_namespaces,
    consumer_group_gets_each_message_once,
    bad_input_publishes_nothing,
    slow_consumer_is_bounded,
    acks_and_redelivery,
);

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

async fn publish(client: &mut PsClient, topic: &str, payload: &[u8]) -> anyhow::Result<String> {
    Ok(client
        .publish(publish_request(topic, payload))
        .await?
        .into_inner()
        .id)
}

async fn fan_out_to_every_subscriber(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(Sub::open(&mut a, subscribe_request("fanout")).await?);
    }
    let id = publish(&mut a, "fanout", b"broadcast").await?;
    for sub in &mut subs {
        let m = sub.take(1, WAIT).await?;
        ensure!(
            m[0].payload[..] == *b"broadcast" && m[0].id == id,
            "{:?}",
            m[0]
        );
        ensure!(m[0].topic == "fanout", "topic {:?}", m[0].topic);
    }
    Ok(())
}

async fn order_of_1000_messages(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let mut first = Sub::open(&mut a, subscribe_request("ordered")).await?;
    let mut second = Sub::open(&mut a, subscribe_request("ordered")).await?;
    // 500 single publishes, then 5 batches of 100: order holds across both.
    for n in 0..500u32 {
        publish(&mut a, "ordered", &n.to_be_bytes()).await?;
    }
    for batch in 0..5u32 {
        let messages = (0..100u32)
            .map(|i| pb::BatchMessage {
                payload: (500 + batch * 100 + i).to_be_bytes().to_vec(),
                metadata: HashMap::new(),
            })
            .collect();
        let r = a
            .publish_batch(pb::PublishBatchRequest {
                topic: "ordered".into(),
                messages,
            })
            .await?
            .into_inner();
        ensure!(r.published.len() == 100, "{} ids", r.published.len());
    }
    for sub in [&mut first, &mut second] {
        let got = sub.take(1000, WAIT).await?;
        for (n, m) in got.iter().enumerate() {
            ensure!(
                m.payload[..] == (n as u32).to_be_bytes(),
                "message {n} out of order: {:?}",
                m.payload
            );
        }
    }
    Ok(())
}

/// PublishStream: requests sent without waiting are published in the order
/// sent and answered in order by sequence; a bad request fails alone
/// (nothing of it published) and the stream goes on; closing the request
/// side ends the answers with OK once all are answered.
async fn publish_stream_orders_and_answers_each_request(ctx: &Ctx) -> anyhow::Result<()> {
    const REQUESTS: u32 = 60;
    const PER_REQUEST: u32 = 20;
    const BAD: u32 = 17;
    let mut a = ctx.a.clone();
    // Read only after every answer: its buffer must hold the whole run,
    // or the default (1 024, drop_oldest) drops the oldest on a fast broker.
    let request = pb::SubscribeRequest {
        buffer: 4096,
        ..subscribe_request("streamed")
    };
    let mut sub = Sub::open(&mut a, request).await?;
    let (requests, outgoing) = tokio::sync::mpsc::unbounded_channel();
    let mut answers = a
        .publish_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(
            outgoing,
        ))
        .await?
        .into_inner();
    for r in 0..REQUESTS {
        let messages = (0..PER_REQUEST)
            .map(|i| pb::BatchMessage {
                payload: (r * PER_REQUEST + i).to_be_bytes().to_vec(),
                metadata: HashMap::new(),
            })
            .collect();
        let topic = if r == BAD { "has space" } else { "streamed" };
        requests.send(pb::PublishStreamRequest {
            sequence: u64::from(r) + 100,
            topic: topic.into(),
            messages,
        })?;
    }
    let mut ids = std::collections::HashSet::new();
    for r in 0..REQUESTS {
        let answer = tokio::time::timeout(WAIT, answers.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("answers ended after {r}"))?;
        ensure!(
            answer.sequence == u64::from(r) + 100,
            "answer {r}: {answer:?}"
        );
        if r == BAD {
            let error = answer.error.as_ref();
            ensure!(
                error.is_some_and(
                    |e| e.code == Code::InvalidArgument as i32 && e.message.contains("topic")
                ) && answer.published.is_empty(),
                "bad request {r}: {answer:?}"
            );
        } else {
            ensure!(
                answer.error.is_none() && answer.published.len() == PER_REQUEST as usize,
                "request {r}: {answer:?}"
            );
            ids.extend(answer.published.into_iter().map(|p| p.id));
        }
    }
    ensure!(
        ids.len() == ((REQUESTS - 1) * PER_REQUEST) as usize,
        "{} unique ids",
        ids.len()
    );
    drop(requests);
    let end = tokio::time::timeout(WAIT, answers.message()).await?;
    ensure!(matches!(end, Ok(None)), "after the last answer: {end:?}");
    let got = sub
        .take(((REQUESTS - 1) * PER_REQUEST) as usize, WAIT)
        .await?;
    let expected = (0..REQUESTS * PER_REQUEST).filter(|n| n / PER_REQUEST != BAD);
    for (m, n) in got.iter().zip(expected) {
        ensure!(
            m.payload[..] == n.to_be_bytes() && ids.contains(&m.id),
            "expected message {n}, got {:?}",
            m.payload
        );
    }
    ensure!(sub.next(QUIET).await?.is_none(), "more than was published");
    Ok(())
}

async fn hundred_concurrent_subscribers(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let mut opens = Vec::new();
    for _ in 0..100 {
        let mut client = ctx.a.clone();
        opens.push(tokio::spawn(async move {
            Sub::open(&mut client, subscribe_request("crowd")).await
        }));
    }
    let mut subs = Vec::new();
    for open in opens {
        subs.push(open.await??);
    }
    for n in 0..10u8 {
        publish(&mut a, "crowd", &[n]).await?;
    }
    let mut readers = Vec::new();
    for mut sub in subs {
        readers.push(tokio::spawn(async move { sub.take(10, WAIT).await }));
    }
    for reader in readers {
        let got = reader.await??;
        let payloads: Vec<u8> = got.iter().map(|m| m.payload[0]).collect();
        ensure!(payloads == (0..10).collect::<Vec<u8>>(), "{payloads:?}");
    }
    Ok(())
}

async fn unsubscribe_stops_delivery(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let mut leaving = Sub::open(&mut a, subscribe_request("leave")).await?;
    let mut staying = Sub::open(&mut a, subscribe_request("leave")).await?;
    a.unsubscribe(pb::UnsubscribeRequest {
        subscription_id: leaving.id.clone(),
    })
    .await?;
    ensure!(
        leaving.end(WAIT).await?.is_ok(),
        "unsubscribed stream must end OK"
    );
    publish(&mut a, "leave", b"after").await?;
    ensure!(staying.take(1, WAIT).await?[0].payload[..] == *b"after");
    // Unsubscribing twice: the subscription is gone.
    let again = a
        .unsubscribe(pb::UnsubscribeRequest {
            subscription_id: leaving.id.clone(),
        })
        .await;
    ensure!(
        matches!(&again, Err(s) if s.code() == Code::NotFound),
        "{again:?}"
    );
    // Cancelling the stream unsubscribes too.
    let cancelled = Sub::open(&mut a, subscribe_request("leave")).await?;
    let id = cancelled.id.clone();
    drop(cancelled);
    let gone = prism_acceptance::eventually(WAIT, || {
        let mut a = a.clone();
        let id = id.clone();
        async move {
            matches!(
                a.unsubscribe(pb::UnsubscribeRequest { subscription_id: id }).await,
                Err(s) if s.code() == Code::NotFound
            )
        }
    })
    .await;
    ensure!(gone, "a cancelled stream's subscription stayed registered");
    Ok(())
}

async fn binary_payloads_and_metadata(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let mut sub = Sub::open(&mut a, subscribe_request("bin")).await?;
    let all_bytes: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
    let metadata = HashMap::from([
        (
            "content-type".to_string(),
            "application/octet-stream".to_string(),
        ),
        ("trace.id".to_string(), "ünïcødé ✓".to_string()),
    ]);
    let before = now_ms();
    let r = a
        .publish(pb::PublishRequest {
            topic: "bin".into(),
            payload: all_bytes.clone(),
            metadata: metadata.clone(),
        })
        .await?
        .into_inner();
    publish(&mut a, "bin", b"").await?;
    let got = sub.take(2, WAIT).await?;
    ensure!(got[0].payload == all_bytes, "payload changed");
    ensure!(got[0].metadata == metadata, "{:?}", got[0].metadata);
    ensure!(
        got[0].id == r.id && !r.id.is_empty(),
        "id {} vs {}",
        got[0].id,
        r.id
    );
    ensure!(
        got[0].timestamp_ms >= before && got[0].timestamp_ms <= now_ms(),
        "timestamp {}",
        got[0].timestamp_ms
    );
    ensure!(
        got[0].delivery_attempt == 1,
        "attempt {}",
        got[0].delivery_attempt
    );
    ensure!(got[1].payload.is_empty() && got[1].id != got[0].id);
    Ok(())
}

async fn topics_isolated_across_namespaces(ctx: &Ctx) -> anyhow::Result<()> {
    let (mut a, mut b) = (ctx.a.clone(), ctx.b.clone());
    let mut in_a = Sub::open(&mut a, subscribe_request("shared.name")).await?;
    let mut in_b = Sub::open(&mut b, subscribe_request("shared.name")).await?;
    publish(&mut a, "shared.name", b"for-a").await?;
    publish(&mut b, "shared.name", b"for-b").await?;
    ensure!(in_a.take(1, WAIT).await?[0].payload[..] == *b"for-a");
    ensure!(in_b.take(1, WAIT).await?[0].payload[..] == *b"for-b");
    ensure!(
        in_a.next(QUIET).await?.is_none(),
        "alpha saw beta's message"
    );
    ensure!(
        in_b.next(QUIET).await?.is_none(),
        "beta saw alpha's message"
    );
    Ok(())
}

async fn consumer_group_gets_each_message_once(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let group = pb::SubscribeRequest {
        group: "workers".into(),
        ..subscribe_request("jobs")
    };
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Sub::open(&mut a, group.clone()).await?);
    }
    let mut watcher = Sub::open(&mut a, subscribe_request("jobs")).await?;
    for n in 0..30u8 {
        publish(&mut a, "jobs", &[n]).await?;
    }
    ensure!(watcher.take(30, WAIT).await?.len() == 30);
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 30 && Instant::now() < deadline {
        for member in &mut members {
            while let Some(m) = member.next(Duration::from_millis(50)).await? {
                seen.push(m.payload[0]);
            }
        }
    }
    for member in &mut members {
        while let Some(m) = member.next(QUIET).await? {
            seen.push(m.payload[0]);
        }
    }
    seen.sort_unstable();
    ensure!(
        seen == (0..30).collect::<Vec<u8>>(),
        "the group must get each message exactly once: {seen:?}"
    );
    Ok(())
}

async fn bad_input_publishes_nothing(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let mut sub = Sub::open(&mut a, subscribe_request("guarded")).await?;
    for topic in ["", "has space", "wild.*", "wild.>", ".lead", "a..b"] {
        let r = a.publish(publish_request(topic, b"x")).await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::InvalidArgument && s.message().contains("topic")),
            "topic {topic:?}: {r:?}"
        );
        let r = a.subscribe(subscribe_request(topic)).await;
        ensure!(
            matches!(&r, Err(s) if s.code() == Code::InvalidArgument),
            "subscribe {topic:?}: {:?}",
            r.err()
        );
    }
    // The namespaces here allow 64 KiB payloads.
    let r = a
        .publish(publish_request("guarded", &vec![0u8; 65 * 1024]))
        .await;
    ensure!(
        matches!(&r, Err(s) if s.code() == Code::InvalidArgument && s.message().contains("max_payload_bytes")),
        "{r:?}"
    );
    // One bad message fails the whole batch before anything is published.
    let r = a
        .publish_batch(pb::PublishBatchRequest {
            topic: "guarded".into(),
            messages: vec![
                pb::BatchMessage {
                    payload: b"fine".to_vec(),
                    metadata: HashMap::new(),
                },
                pb::BatchMessage {
                    payload: b"bad".to_vec(),
                    metadata: HashMap::from([("bad key".to_string(), "v".to_string())]),
                },
            ],
        })
        .await;
    ensure!(
        matches!(&r, Err(s) if s.code() == Code::InvalidArgument && s.message().contains("message 1")),
        "{r:?}"
    );
    publish(&mut a, "guarded", b"ok").await?;
    let got = sub.take(1, WAIT).await?;
    ensure!(
        got[0].payload[..] == *b"ok",
        "a rejected message was delivered: {:?}",
        got[0]
    );
    ensure!(sub.next(QUIET).await?.is_none());
    // An unknown namespace.
    let mut unknown = ctx.unknown.clone();
    let r = unknown.publish(publish_request("guarded", b"x")).await;
    ensure!(matches!(&r, Err(s) if s.code() == Code::NotFound), "{r:?}");
    Ok(())
}

async fn slow_consumer_is_bounded(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let lossy = pb::SubscribeRequest {
        buffer: 16,
        slow_consumer: pb::SlowConsumerPolicy::DropOldest as i32,
        ..subscribe_request("firehose")
    };
    let strict = pb::SubscribeRequest {
        buffer: 16,
        slow_consumer: pb::SlowConsumerPolicy::Disconnect as i32,
        ..subscribe_request("firehose")
    };
    let mut lossy = Sub::open(&mut a, lossy).await?;
    let mut strict = Sub::open(&mut a, strict).await?;
    // Nobody reads while 1000 × 4 KiB go out: more than the transport's window.
    let payload = vec![7u8; 4096];
    let started = Instant::now();
    for chunk in 0..10 {
        let messages = (0..100)
            .map(|i| pb::BatchMessage {
                payload: {
                    let mut p = payload.clone();
                    p[..4].copy_from_slice(&((chunk * 100 + i) as u32).to_be_bytes());
                    p
                },
                metadata: HashMap::new(),
            })
            .collect();
        a.publish_batch(pb::PublishBatchRequest {
            topic: "firehose".into(),
            messages,
        })
        .await?;
    }
    // The publisher was never held up by the subscribers that do not read.
    ensure!(started.elapsed() < Duration::from_secs(20));
    let mut received = 0u64;
    while sub_next(&mut lossy).await?.is_some() {
        received += 1;
    }
    if ctx.at_least_once() {
        // JetStream holds what the buffer cannot: nothing is lost.
        ensure!(
            received == 1000 && lossy.dropped == 0,
            "{received} received, {} dropped",
            lossy.dropped
        );
    } else {
        ensure!(
            lossy.dropped > 0 && received + lossy.dropped == 1000,
            "drop_oldest: {received} received + {} dropped != 1000",
            lossy.dropped
        );
    }
    // On every broker, JetStream included, the disconnect policy ends a
    // subscriber that fell a whole buffer behind.
    let end = strict.end(WAIT).await?;
    ensure!(
        matches!(&end, Err(s) if s.code() == Code::ResourceExhausted),
        "disconnect policy must end the stream with RESOURCE_EXHAUSTED: {end:?}"
    );
    Ok(())
}

async fn sub_next(sub: &mut Sub) -> anyhow::Result<Option<pb::Message>> {
    sub.next(Duration::from_millis(500)).await
}

async fn acks_and_redelivery(ctx: &Ctx) -> anyhow::Result<()> {
    let mut a = ctx.a.clone();
    let request = pb::SubscribeRequest {
        group: "ackers".into(),
        manual_ack: true,
        ..subscribe_request("acked")
    };
    let mut first = Sub::open(&mut a, request.clone()).await?;
    publish(&mut a, "acked", b"one").await?;
    publish(&mut a, "acked", b"two").await?;
    let got = first.take(2, WAIT).await?;
    let acked = a
        .ack(pb::AckRequest {
            subscription_id: first.id.clone(),
            message_ids: vec![got[0].id.clone()],
        })
        .await?
        .into_inner()
        .acknowledged;
    if !ctx.at_least_once() {
        // At-most-once brokers accept acks and have nothing to redeliver.
        ensure!(acked == 0, "acknowledged {acked}");
        return Ok(());
    }
    ensure!(acked == 1, "acknowledged {acked}");
    // The subscriber drops without acking "two": the group gets it again.
    drop(first);
    let mut second = Sub::open(&mut a, request).await?;
    let again = second.take(1, Duration::from_secs(10)).await?;
    // The same message (same id), not a copy. Its delivery_attempt is
    // usually 2, but nats-server 2.9 resets the count when the earlier
    // delivery went to a pull request whose subscriber left, so it is not
    // asserted.
    ensure!(
        again[0].payload[..] == *b"two" && again[0].id == got[1].id,
        "{:?}",
        again[0]
    );
    a.ack(pb::AckRequest {
        subscription_id: second.id.clone(),
        message_ids: vec![again[0].id.clone()],
    })
    .await?;
    ensure!(
        second.next(QUIET).await?.is_none(),
        "an acknowledged message came back"
    );
    // What the group gets next is new, not "one" or "two" again.
    publish(&mut a, "acked", b"three").await?;
    let next = second.take(1, WAIT).await?;
    ensure!(
        next[0].payload[..] == *b"three" && next[0].id != got[0].id && next[0].id != got[1].id,
        "{:?}",
        next[0]
    );
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

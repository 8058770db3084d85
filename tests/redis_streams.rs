//! Redis Streams PubSub beyond the acceptance part: Prism and plain Redis
//! clients read each other's entries (payload byte for byte, metadata as
//! fields), a consumer group spread over two Prism servers gets each
//! message once, a member that leaves without acking hands its messages to
//! the other server's member, and streams are trimmed to `max_len`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use prism_acceptance::pubsub::{Sub, publish_with as publish, subscribe_request};
use prism_acceptance::servers::RedisServer;
use prism_acceptance::{pb, start};
use redis::streams::StreamRangeReply;

const WAIT: Duration = Duration::from_secs(10);

fn config(redis: &RedisServer, extra: &str) -> String {
    format!(
        r#"
[backends.bus]
type = "redis"
url = "{}"
stream = true
ack_wait_ms = 1000
{extra}

[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "bus" }}
"#,
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prism_and_plain_redis_clients_read_each_others_entries() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let t = start(&config(&redis, "")).await?;
    let mut native = redis.connect().await?;

    let sent = t
        .pubsub("events")
        .publish(publish(
            "orders.created",
            b"\x00{\"id\": 1}\xff",
            &[("k", "v")],
        ))
        .await?
        .into_inner();
    let entries: StreamRangeReply = redis::cmd("XRANGE")
        .arg("prism-stream:events/orders.created")
        .arg("-")
        .arg("+")
        .query_async(&mut native)
        .await?;
    let entry = entries.ids.first().context("no entry in the stream")?;
    assert_eq!(
        entry.get::<Vec<u8>>("payload").as_deref(),
        Some(&b"\x00{\"id\": 1}\xff"[..])
    );
    assert_eq!(entry.get::<String>("prism-id"), Some(sent.id.clone()));
    assert_eq!(entry.get::<u64>("prism-ts"), Some(sent.timestamp_ms));
    assert_eq!(entry.get::<String>("k").as_deref(), Some("v"));

    let mut sub = Sub::open(&mut t.pubsub("events"), subscribe_request("orders.created")).await?;
    let _: String = redis::cmd("XADD")
        .arg("prism-stream:events/orders.created")
        .arg("*")
        .arg("payload")
        .arg(&b"native\x01"[..])
        .arg("k2")
        .arg("v2")
        .query_async(&mut native)
        .await?;
    let got = sub
        .next(WAIT)
        .await?
        .context("the native entry did not arrive")?;
    assert_eq!(got.payload, &b"native\x01"[..]);
    assert_eq!(
        got.metadata,
        HashMap::from([("k2".to_string(), "v2".to_string())])
    );
    assert!(got.id.starts_with("redis-"), "{}", got.id);
    assert!(got.timestamp_ms > 0);
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spread_over_two_servers_gets_each_message_once_and_survives_a_member_leaving()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let one = start(&config(&redis, "")).await?;
    let two = start(&config(&redis, "")).await?;
    let group = pb::SubscribeRequest {
        group: "workers".into(),
        manual_ack: true,
        ..subscribe_request("jobs")
    };
    let mut a = Sub::open(&mut one.pubsub("events"), group.clone()).await?;
    let mut b = Sub::open(&mut two.pubsub("events"), group.clone()).await?;
    for n in 0..40u8 {
        one.pubsub("events")
            .publish(publish("jobs", &[n], &[]))
            .await?;
    }
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while from_a.len() + from_b.len() < 40 && tokio::time::Instant::now() < deadline {
        while let Some(m) = a.next(Duration::from_millis(50)).await? {
            from_a.push(m);
        }
        while let Some(m) = b.next(Duration::from_millis(50)).await? {
            from_b.push(m);
        }
    }
    let mut seen: Vec<u8> = from_a.iter().chain(&from_b).map(|m| m.payload[0]).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..40).collect::<Vec<u8>>(),
        "each message once across the group"
    );
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both servers' members got work: {} and {}",
        from_a.len(),
        from_b.len()
    );
    // b acks what it got; a acks nothing and leaves.
    two.pubsub("events")
        .ack(pb::AckRequest {
            subscription_id: b.id.clone(),
            message_ids: from_b.iter().map(|m| m.id.clone()).collect(),
        })
        .await?;
    drop(a);
    // b, on the other server, is handed a's unacknowledged messages.
    let mut again = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while again.len() < from_a.len() && tokio::time::Instant::now() < deadline {
        if let Some(m) = b.next(Duration::from_millis(200)).await? {
            again.push(m);
        }
    }
    let mut expected: Vec<String> = from_a.iter().map(|m| m.id.clone()).collect();
    let mut got: Vec<String> = again.iter().map(|m| m.id.clone()).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "the same messages, by id");
    assert!(again.iter().all(|m| m.delivery_attempt >= 2), "{again:?}");
    two.pubsub("events")
        .ack(pb::AckRequest {
            subscription_id: b.id.clone(),
            message_ids: got,
        })
        .await?;
    assert!(
        b.next(Duration::from_millis(1500)).await?.is_none(),
        "nothing acknowledged comes back"
    );
    one.stop().await?;
    two.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_trimmed_to_max_len() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let t = start(&config(&redis, "max_len = 100")).await?;
    for chunk in 0..10 {
        let messages = (0..100)
            .map(|i| pb::BatchMessage {
                payload: vec![chunk, i],
                metadata: HashMap::new(),
            })
            .collect();
        t.pubsub("events")
            .publish_batch(pb::PublishBatchRequest {
                topic: "firehose".into(),
                messages,
            })
            .await?;
    }
    let mut native = redis.connect().await?;
    let len: u64 = redis::cmd("XLEN")
        .arg("prism-stream:events/firehose")
        .query_async(&mut native)
        .await?;
    // MAXLEN ~ trims whole macro nodes (100 entries each by default): at
    // least the bound, and less than one node over it.
    assert!(
        (100..200).contains(&len),
        "{len} entries kept of 1000, max_len 100"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_field_names_are_refused_as_metadata() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let t = start(&config(&redis, "")).await?;
    let r = t
        .pubsub("events")
        .publish(publish("t", b"x", &[("payload", "shadow")]))
        .await;
    let status = match r {
        Ok(_) => anyhow::bail!("metadata named payload was accepted"),
        Err(s) => s,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("reserved"),
        "{}",
        status.message()
    );
    t.stop().await
}

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
        anyhow::ensure!(sub.take(1, Duration::from_secs(5)).await?[0].payload == b"before");

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
            got.is_some_and(|m| m.payload == b"after"),
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
    anyhow::ensure!(sub.take(1, Duration::from_secs(5)).await?[0].payload == b"before");
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
            && m.payload == b"after"
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

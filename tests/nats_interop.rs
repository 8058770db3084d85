//! Prism and plain NATS applications read each other's messages: a message
//! published through Prism reaches a native async-nats subscriber with its
//! payload byte for byte and its id, timestamp and metadata as NATS headers;
//! a native publish's headers reach a Prism subscriber as metadata; and on
//! JetStream a native publish repeating a Prism message's id is dropped as
//! a duplicate (the id is `Nats-Msg-Id`).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use prism_acceptance::pubsub::{Sub, subscribe_request};
use prism_acceptance::servers::NatsServer;
use prism_acceptance::{pb, start};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

fn config(nats: &NatsServer) -> String {
    let url = nats.url();
    format!(
        r#"
[backends.core]
type = "nats"
url = "{url}"

[backends.js]
type = "nats"
url = "{url}"
jetstream = true
stream = "INTEROP"

[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "core" }}

[namespaces.orders]
pattern = "pubsub"
slots = {{ pubsub = "js" }}
"#
    )
}

fn publish(topic: &str, payload: &[u8], metadata: &[(&str, &str)]) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: topic.into(),
        payload: payload.to_vec(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn header(message: &async_nats::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prism_publish_reaches_a_native_subscriber_as_a_plain_nats_message() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    let t = start(&config(&nats)).await?;
    let native = async_nats::connect(nats.url()).await?;
    let mut subscriber = native.subscribe("prism.events.orders.created").await?;
    native.flush().await?;

    let sent = t
        .pubsub("events")
        .publish(publish(
            "orders.created",
            br#"{"id": 1}"#,
            &[
                ("k", "v"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        ))
        .await?
        .into_inner();
    let message = tokio::time::timeout(WAIT, subscriber.next())
        .await
        .context("the native subscriber got nothing")?
        .context("the subscription ended")?;
    assert_eq!(
        message.payload.as_ref(),
        br#"{"id": 1}"#,
        "payload byte for byte"
    );
    assert_eq!(header(&message, "k").as_deref(), Some("v"));
    assert_eq!(
        header(&message, "traceparent").as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(header(&message, "Nats-Msg-Id"), Some(sent.id));
    assert_eq!(
        header(&message, "Prism-Timestamp"),
        Some(sent.timestamp_ms.to_string())
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_publish_reaches_a_prism_subscriber_with_its_headers_as_metadata()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let t = start(&config(&nats)).await?;
    let mut sub = Sub::open(&mut t.pubsub("events"), subscribe_request("orders.created")).await?;
    let native = async_nats::connect(nats.url()).await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("k2", "v2");
    native
        .publish_with_headers(
            "prism.events.orders.created",
            headers,
            bytes::Bytes::from_static(b"\x00native\xff"),
        )
        .await?;
    native.flush().await?;
    let got = sub.next(WAIT).await?.context("no message")?;
    assert_eq!(got.payload, b"\x00native\xff");
    assert_eq!(
        got.metadata,
        HashMap::from([("k2".to_string(), "v2".to_string())])
    );
    assert!(!got.id.is_empty());
    assert!(got.timestamp_ms > 0);
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_drops_a_native_publish_that_repeats_a_prism_message_id() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let t = start(&config(&nats)).await?;
    let mut sub = Sub::open(&mut t.pubsub("orders"), subscribe_request("created")).await?;
    let sent = t
        .pubsub("orders")
        .publish(publish("created", b"from prism", &[("source", "prism")]))
        .await?
        .into_inner();
    let first = sub.next(WAIT).await?.context("no message")?;
    assert_eq!(first.id, sent.id);

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let duplicate = js
        .send_publish(
            "prism.orders.created",
            async_nats::jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::from_static(b"again"))
                .message_id(&sent.id),
        )
        .await?
        .await?;
    assert!(duplicate.duplicate, "the stream saw that id before");
    let fresh = js
        .send_publish(
            "prism.orders.created",
            async_nats::jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::from_static(b"from nats"))
                .message_id("native-42")
                .header("source", "nats"),
        )
        .await?
        .await?;
    assert!(!fresh.duplicate);

    // Only the fresh native message follows; the duplicate never arrives.
    let next = sub.next(WAIT).await?.context("no second message")?;
    assert_eq!(next.payload, b"from nats");
    assert_eq!(next.id, "native-42");
    assert_eq!(
        next.metadata,
        HashMap::from([("source".to_string(), "nats".to_string())])
    );
    assert!(sub.next(Duration::from_millis(500)).await?.is_none());
    t.stop().await
}

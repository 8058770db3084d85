//! Prism and plain NATS applications read each other's messages: a message
//! published through Prism reaches a native async-nats subscriber with its
//! payload byte for byte and its id, timestamp and metadata as NATS headers;
//! a native publish's headers reach a Prism subscriber as metadata; Prism
//! subscribers of one topic share one NATS subscription; and on
//! JetStream a native publish repeating a Prism message's id is dropped as
//! a duplicate (the id is `Nats-Msg-Id`).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use prism_acceptance::pubsub::{Sub, publish_with as publish, subscribe_request};
use prism_acceptance::servers::NatsServer;
use prism_acceptance::start;
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
    assert_eq!(got.payload, &b"\x00native\xff"[..]);
    assert_eq!(
        got.metadata,
        HashMap::from([("k2".to_string(), "v2".to_string())])
    );
    assert!(!got.id.is_empty());
    assert!(got.timestamp_ms > 0);
    t.stop().await
}

/// Waits until the server holds `want` subscriptions on `subject`
/// (unsubscribing after a gRPC stream ends is asynchronous).
async fn await_subscriptions(nats: &NatsServer, subject: &str, want: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = nats.subscriptions_on(subject).await?;
        if now == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "NATS holds {now} subscriptions on {subject}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_one_topic_share_one_nats_subscription() -> anyhow::Result<()> {
    const SUBJECT: &str = "prism.events.shared";
    let nats = NatsServer::start().await?;
    let t = start(&config(&nats)).await?;
    let native = async_nats::connect(nats.url()).await?;
    let publish = |n: u32| {
        let native = native.clone();
        async move {
            native.publish(SUBJECT, n.to_string().into()).await?;
            native.flush().await?;
            anyhow::Ok(())
        }
    };
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(Sub::open(&mut t.pubsub("events"), subscribe_request("shared")).await?);
    }
    // However many Prism subscribers, the server sends each message once.
    assert_eq!(nats.subscriptions_on(SUBJECT).await?, 1);
    for n in 0..3 {
        publish(n).await?;
    }
    for sub in &mut subs {
        let got: Vec<_> = sub
            .take(3, WAIT)
            .await?
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(
            got,
            [b"0".to_vec(), b"1".to_vec(), b"2".to_vec()],
            "every subscriber, every message, in order"
        );
    }
    // Queue-group members are NATS's to balance across processes: each is
    // its own queue subscription.
    let mut grouped = subscribe_request("shared");
    grouped.group = "workers".into();
    let member_a = Sub::open(&mut t.pubsub("events"), grouped.clone()).await?;
    let member_b = Sub::open(&mut t.pubsub("events"), grouped).await?;
    assert_eq!(nats.subscriptions_on(SUBJECT).await?, 3);
    drop((member_a, member_b));
    // The shared subscription stays while anyone follows it...
    let mut last = subs.remove(0);
    drop(subs);
    await_subscriptions(&nats, SUBJECT, 1).await?;
    publish(3).await?;
    let got = last
        .next(WAIT)
        .await?
        .context("the remaining subscriber lost the topic")?;
    assert_eq!(got.payload[..], *b"3");
    // ...and a subscriber arriving now joins it.
    let mut late = Sub::open(&mut t.pubsub("events"), subscribe_request("shared")).await?;
    assert_eq!(nats.subscriptions_on(SUBJECT).await?, 1);
    publish(4).await?;
    for sub in [&mut last, &mut late] {
        let got = sub.next(WAIT).await?.context("no message")?;
        assert_eq!(got.payload[..], *b"4");
    }
    // The last one out unsubscribes, and a new subscriber subscribes afresh.
    drop((last, late));
    await_subscriptions(&nats, SUBJECT, 0).await?;
    let mut again = Sub::open(&mut t.pubsub("events"), subscribe_request("shared")).await?;
    assert_eq!(nats.subscriptions_on(SUBJECT).await?, 1);
    publish(5).await?;
    let got = again
        .next(WAIT)
        .await?
        .context("no message after re-subscribing")?;
    assert_eq!(got.payload[..], *b"5");
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
    assert_eq!(next.payload, &b"from nats"[..]);
    assert_eq!(next.id, "native-42");
    assert_eq!(
        next.metadata,
        HashMap::from([("source".to_string(), "nats".to_string())])
    );
    assert!(sub.next(Duration::from_millis(500)).await?.is_none());
    t.stop().await
}

fn mapped_config(nats: &NatsServer) -> String {
    let url = nats.url();
    format!(
        r#"
[backends.core]
type = "nats"
url = "{url}"
subjects = {{ shop = "shop.orders" }}

[backends.js]
type = "nats"
url = "{url}"
jetstream = true
stream = "SHOP"
subjects = {{ shopjs = "shop.js" }}

[backends.wrong]
type = "nats"
url = "{url}"
jetstream = true
stream = "OTHER"
subjects = {{ misfit = "shop.misfit" }}

[namespaces.shop]
pattern = "pubsub"
slots = {{ pubsub = "core" }}

[namespaces.shopjs]
pattern = "pubsub"
slots = {{ pubsub = "js" }}

[namespaces.misfit]
pattern = "pubsub"
slots = {{ pubsub = "wrong" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_mapped_onto_an_existing_subject_prefix_talks_to_that_application()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let t = start(&mapped_config(&nats)).await?;
    let native = async_nats::connect(nats.url()).await?;
    let mut subscriber = native.subscribe("shop.orders.created").await?;
    native.flush().await?;

    // Prism → the application's own subject.
    let sent = t
        .pubsub("shop")
        .publish(publish("created", br#"{"id": 7}"#, &[("k", "v")]))
        .await?
        .into_inner();
    let message = tokio::time::timeout(WAIT, subscriber.next())
        .await
        .context("nothing reached shop.orders.created")?
        .context("the subscription ended")?;
    assert_eq!(message.subject.as_str(), "shop.orders.created");
    assert_eq!(message.payload.as_ref(), br#"{"id": 7}"#);
    assert_eq!(header(&message, "Nats-Msg-Id"), Some(sent.id));
    assert_eq!(header(&message, "k").as_deref(), Some("v"));

    // The application → a Prism subscriber of the mapped namespace.
    let mut sub = Sub::open(&mut t.pubsub("shop"), subscribe_request("created")).await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("k2", "v2");
    native
        .publish_with_headers("shop.orders.created", headers, "native".into())
        .await?;
    native.flush().await?;
    let got = sub.next(WAIT).await?.context("no message")?;
    assert_eq!(got.payload, &b"native"[..]);
    assert_eq!(got.topic, "created");
    assert_eq!(got.metadata.get("k2").map(String::as_str), Some("v2"));
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_namespace_publishes_into_the_applications_existing_stream() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    // The application's streams, made before Prism starts.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SHOP".into(),
        subjects: vec!["shop.>".into()],
        ..Default::default()
    })
    .await?;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "OTHER".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await?;
    let t = start(&mapped_config(&nats)).await?;

    let sent = t
        .pubsub("shopjs")
        .publish(publish("created", b"kept", &[]))
        .await?
        .into_inner();
    let mut stream = js.get_stream("SHOP").await?;
    let info = stream.info().await?;
    assert_eq!(
        info.state.messages, 1,
        "the message is in the application's stream"
    );
    assert_eq!(
        info.config.subjects,
        vec!["shop.>".to_string()],
        "Prism leaves an existing stream's subjects alone"
    );
    let stored = stream
        .get_last_raw_message_by_subject("shop.js.created")
        .await?;
    assert_eq!(stored.payload.as_ref(), b"kept");
    assert_eq!(
        stored
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string()),
        Some(sent.id)
    );

    // A stream that does not capture the mapped prefix is named, with the fix.
    let refused = t
        .pubsub("misfit")
        .publish(publish("created", b"lost?", &[]))
        .await;
    let status = match refused {
        Ok(_) => anyhow::bail!("publishing into a stream that cannot hold the subject succeeded"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("OTHER") && status.message().contains("shop.misfit.>"),
        "{}",
        status.message()
    );
    t.stop().await
}

/// A core NATS backend on `tls://` with the TLS settings given.
fn tls_config(
    nats: &NatsServer,
    tls_ca: Option<&std::path::Path>,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> String {
    let tls = prism_acceptance::tls::backend_tls_toml(tls_ca, client);
    format!(
        r#"
[backends.core]
type = "nats"
url = "tls://127.0.0.1:{port}"
timeout_ms = 500
{tls}
[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "core" }}
"#,
        port = nats.port()
    )
}

/// `tls://` to a nats-server that speaks only TLS and verifies client
/// certificates (a CA made here): with the CA and a certificate a message
/// goes from a Prism publisher to a Prism subscriber through it; without
/// the certificate, or trusting only the system's roots, a publish is
/// UNAVAILABLE naming the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_client_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [ca, cert, key, client, client_key] = prism_acceptance::tls::test_pki(dir.path())?;
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca_s, cert_s, key_s) = (path(&ca), path(&cert), path(&key));
    let nats = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &cert_s,
        "--tlskey",
        &key_s,
        "--tlsverify",
        "--tlscacert",
        &ca_s,
    ])
    .await?;

    let t = start(&tls_config(&nats, Some(&ca), Some((&client, &client_key)))).await?;
    let mut sub = Sub::open(&mut t.pubsub("events"), subscribe_request("secured")).await?;
    t.pubsub("events")
        .publish(publish("secured", b"over tls", &[]))
        .await?;
    let message = sub
        .next(WAIT)
        .await?
        .context("nothing arrived through the TLS connection")?;
    assert_eq!(message.payload.as_ref(), b"over tls");
    drop(sub);
    t.stop().await?;

    for (case, config) in [
        ("no client certificate", tls_config(&nats, Some(&ca), None)),
        (
            "the system's roots only",
            tls_config(&nats, None, Some((&client, &client_key))),
        ),
    ] {
        let t = start(&config).await?;
        let err = t
            .pubsub("events")
            .publish(publish("secured", b"x", &[]))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("{}", case))?;
        assert_eq!(err.code(), tonic::Code::Unavailable, "{case}: {err:?}");
        assert!(
            err.message().contains("NATS 'core' at 127.0.0.1:"),
            "{case}: {}",
            err.message()
        );
        t.stop().await?;
    }
    Ok(())
}

//! The Rust client (`clients/rust`, crate `prism-client`) against a real
//! Prism over loopback gRPC: every KeyValue, PubSub and Registry method,
//! its typed errors, acks and redelivery on NATS JetStream, calls balanced
//! over two servers, and bearer tokens from a real OIDC issuer.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use prism_acceptance::oidc::Issuer;
use prism_acceptance::servers::NatsServer;
use prism_acceptance::{TestServer, eventually, start};
use prism_client::{
    Bytes, Client, Error, Message, OutgoingMessage, Registration, SlowConsumer, SubscribeOptions,
};
use serde_json::json;
use tokio_stream::{Stream, StreamExt};

/// How long a message or an expiry is waited for.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// KeyValue (pages of 2, short keys), PubSub and a registry on MemStore.
const CONFIG: &str = r#"
[backends.mem]
type = "memstore"

[namespaces.kv]
pattern = "keyvalue"
slots = { kv = "mem" }
[namespaces.kv.settings]
default_page_size = 2
max_key_bytes = 32

[namespaces.events]
pattern = "pubsub"
slots = { pubsub = "mem" }

[namespaces.devices]
pattern = "multicast-registry"
slots = { registry = "mem", messaging = "mem" }
"#;

async fn client(t: &TestServer) -> anyhow::Result<Client> {
    Ok(Client::connect(format!("http://{}", t.addr())).await?)
}

/// The next message of a subscription or inbox, failing after [`WAIT`].
async fn next<S>(stream: &mut S) -> anyhow::Result<Message>
where
    S: Stream<Item = Result<Message, Error>> + Unpin,
{
    match tokio::time::timeout(WAIT, stream.next()).await {
        Err(_) => bail!("no message within {WAIT:?}"),
        Ok(None) => bail!("the stream ended"),
        Ok(Some(message)) => Ok(message?),
    }
}

/// Nothing arrives on the stream for [`QUIET`].
async fn quiet<S>(stream: &mut S) -> anyhow::Result<()>
where
    S: Stream<Item = Result<Message, Error>> + Unpin,
{
    if let Ok(item) = tokio::time::timeout(QUIET, stream.next()).await {
        bail!("expected nothing, got {item:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyvalue_every_method_and_typed_errors() -> anyhow::Result<()> {
    let t = start(CONFIG).await?;
    let client = client(&t).await?;
    let kv = client.key_value("kv");
    ensure!(kv.namespace() == "kv");

    // Round trip, binary and empty values, overwrite, exists, delete.
    kv.set("user:1", "alice").await?;
    ensure!(kv.get("user:1").await? == "alice");
    let binary: Vec<u8> = (0..=255).collect();
    kv.set("blob", binary.clone()).await?;
    ensure!(kv.get("blob").await? == binary);
    kv.set("empty", Bytes::new()).await?;
    ensure!(kv.get("empty").await?.is_empty());
    kv.set("user:1", "alicia").await?;
    ensure!(kv.get("user:1").await? == "alicia");
    ensure!(kv.exists("user:1").await?);
    ensure!(kv.delete("user:1").await?, "the key existed");
    ensure!(!kv.delete("user:1").await?, "a second delete finds nothing");
    ensure!(!kv.exists("user:1").await?);

    // A missing key is NotFound; an unknown namespace is not a missing key.
    let missing = kv.get("user:1").await;
    ensure!(
        matches!(&missing, Err(Error::NotFound { message }) if !message.is_empty()),
        "{missing:?}"
    );
    ensure!(missing.as_ref().is_err_and(Error::is_not_found));
    let unknown = client.key_value("nope").get("k").await;
    ensure!(
        matches!(&unknown, Err(Error::NamespaceNotFound { message }) if message.contains("'nope'")),
        "{unknown:?}"
    );
    // A namespace served by another pattern.
    let wrong = client.key_value("events").get("k").await;
    ensure!(
        matches!(wrong, Err(Error::FailedPrecondition { .. })),
        "{wrong:?}"
    );

    // Bad input is InvalidArgument and nothing is written: from the server
    // (empty key, key over the namespace's 32 bytes) and from the client
    // (a zero TTL, a namespace that cannot be metadata).
    let empty_key = kv.set("", "v").await;
    ensure!(
        matches!(empty_key, Err(Error::InvalidArgument { .. })),
        "{empty_key:?}"
    );
    let long_key = "k".repeat(40);
    let too_long = kv.set(&long_key, "v").await;
    ensure!(
        matches!(&too_long, Err(Error::InvalidArgument { message }) if message.contains("32")),
        "{too_long:?}"
    );
    ensure!(!kv.exists("k").await?);
    let zero_ttl = kv.set_with_ttl("k", "v", Duration::ZERO).await;
    ensure!(
        matches!(zero_ttl, Err(Error::InvalidArgument { .. })),
        "{zero_ttl:?}"
    );
    let bad_namespace = client.key_value("no\nnamespace").get("k").await;
    ensure!(
        matches!(bad_namespace, Err(Error::InvalidArgument { .. })),
        "{bad_namespace:?}"
    );

    // TTL: live at once, gone within a second of expiring.
    kv.set_with_ttl("session", "s", Duration::from_millis(400))
        .await?;
    ensure!(kv.get("session").await? == "s");
    ensure!(
        eventually(WAIT, || {
            let kv = kv.clone();
            async move { matches!(kv.get("session").await, Err(Error::NotFound { .. })) }
        })
        .await,
        "the key with a TTL never expired"
    );
    ensure!(!kv.exists("session").await?);

    // Scan: every page (of 2) followed; `*` means the prefix.
    for i in 0..5 {
        kv.set(&format!("scan:{i}"), "v").await?;
    }
    kv.set("other", "v").await?;
    let mut keys = kv.scan("scan:").await?;
    keys.sort();
    let expected: Vec<String> = (0..5).map(|i| format!("scan:{i}")).collect();
    ensure!(keys == expected, "{keys:?}");
    let mut starred = kv.scan("scan:*").await?;
    starred.sort();
    ensure!(starred == expected, "{starred:?}");
    let first = kv.scan_page("scan:", "", 0).await?;
    ensure!(first.keys.len() == 2, "{first:?}");
    let Some(cursor) = first.next_cursor else {
        bail!("five keys in pages of two end after one page")
    };
    let second = kv.scan_page("scan:", &cursor, 10).await?;
    ensure!(
        second.keys.len() == 3 && second.next_cursor.is_none(),
        "{second:?}"
    );
    let bad_cursor = kv.scan_page("scan:", "%%%", 0).await;
    ensure!(
        matches!(bad_cursor, Err(Error::InvalidArgument { .. })),
        "{bad_cursor:?}"
    );

    // Batches: all written, found ones returned, deletes counted.
    kv.set_many([("b:1", "one"), ("b:2", "two"), ("b:3", "three")])
        .await?;
    let found = kv.get_many(["b:1", "b:2", "b:missing"]).await?;
    ensure!(found.len() == 2, "{found:?}");
    ensure!(found.get("b:1").is_some_and(|v| v == "one"));
    ensure!(found.get("b:2").is_some_and(|v| v == "two"));
    // One bad entry refuses the whole batch.
    let refused = kv
        .set_many([
            ("b:4", "ok".to_string()),
            (long_key.as_str(), "x".to_string()),
        ])
        .await;
    ensure!(
        matches!(refused, Err(Error::InvalidArgument { .. })),
        "{refused:?}"
    );
    ensure!(!kv.exists("b:4").await?, "a refused batch was written");
    ensure!(kv.delete_many(["b:1", "b:2", "b:3", "b:missing"]).await? == 3);
    ensure!(kv.get_many(["b:1", "b:3"]).await?.is_empty());
    kv.set_many_with_ttl([("t:1", "x"), ("t:2", "y")], Duration::from_millis(400))
        .await?;
    ensure!(kv.get_many(["t:1", "t:2"]).await?.len() == 2);
    ensure!(
        eventually(WAIT, || {
            let kv = kv.clone();
            async move {
                kv.get_many(["t:1", "t:2"])
                    .await
                    .is_ok_and(|found| found.is_empty())
            }
        })
        .await,
        "a batch with a TTL never expired"
    );
    // Empty batches need no round trip.
    ensure!(kv.get_many(Vec::<String>::new()).await?.is_empty());
    ensure!(kv.delete_many(Vec::<String>::new()).await? == 0);
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_publish_subscribe_filter_unsubscribe() -> anyhow::Result<()> {
    let t = start(CONFIG).await?;
    let client = client(&t).await?;
    let events = client.pub_sub("events");
    ensure!(events.namespace() == "events");

    // Live once subscribe returns: the message after it arrives, with its
    // id, topic and metadata.
    let mut sub = events.subscribe("orders").await?;
    ensure!(sub.topic() == "orders" && !sub.id().is_empty());
    let metadata = HashMap::from([("region".to_string(), "eu".to_string())]);
    let published = events
        .publish_with_metadata("orders", "order 17", metadata.clone())
        .await?;
    ensure!(!published.id.is_empty() && published.timestamp_ms > 0);
    let got = next(&mut sub).await?;
    ensure!(got.payload == "order 17", "{got:?}");
    ensure!(got.topic == "orders" && got.id == published.id, "{got:?}");
    ensure!(got.metadata == metadata, "{got:?}");
    ensure!(got.delivery_attempt >= 1 && got.timestamp_ms > 0, "{got:?}");
    events.publish("orders", "plain").await?;
    let plain = next(&mut sub).await?;
    ensure!(plain.payload == "plain" && plain.metadata.is_empty());

    // A batch arrives in order, every message with its own metadata.
    let ids = events
        .publish_many(
            "orders",
            [
                OutgoingMessage::new("a"),
                OutgoingMessage::new("b").with_metadata("n", "2"),
                OutgoingMessage::from("c"),
            ],
        )
        .await?;
    ensure!(ids.len() == 3);
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch.push(next(&mut sub).await?);
    }
    let payloads: Vec<_> = batch.iter().map(|m| m.payload.clone()).collect();
    ensure!(payloads == ["a", "b", "c"], "{payloads:?}");
    ensure!(batch[1].metadata.get("n").is_some_and(|v| v == "2"));
    let batch_ids: Vec<_> = batch.iter().map(|m| m.id.clone()).collect();
    let published_ids: Vec<_> = ids.iter().map(|p| p.id.clone()).collect();
    ensure!(batch_ids == published_ids);
    ensure!(
        events
            .publish_many("orders", Vec::<OutgoingMessage>::new())
            .await?
            .is_empty()
    );
    ensure!(sub.dropped() == 0);

    // A metadata filter delivers only what matches.
    let options = SubscribeOptions::new()
        .filter("region", "eu")
        .buffer(64)
        .slow_consumer(SlowConsumer::DropOldest);
    let mut eu = events.subscribe_with("orders", options).await?;
    let us = HashMap::from([("region".to_string(), "us".to_string())]);
    events.publish_with_metadata("orders", "us", us).await?;
    events
        .publish_with_metadata("orders", "eu", metadata.clone())
        .await?;
    let only = next(&mut eu).await?;
    ensure!(only.payload == "eu", "the filter let through {only:?}");

    // Acks on an at-most-once broker: accepted, nothing was pending.
    let acked = eu.ack([&only.id]).await?;
    ensure!(acked == 0, "acknowledged {acked}");
    ensure!(eu.acker().ack(Vec::<String>::new()).await? == 0);

    // Unsubscribe by id ends that stream; Subscription::unsubscribe ends
    // its own; an unknown subscription is NotFound.
    let id = eu.id().to_string();
    events.unsubscribe(&id).await?;
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(item) = eu.next().await {
            item?;
        }
        anyhow::Ok(())
    })
    .await;
    ensure!(
        matches!(ended, Ok(Ok(()))),
        "the unsubscribed stream did not end: {ended:?}"
    );
    let unknown = events.unsubscribe(&id).await;
    ensure!(
        matches!(unknown, Err(Error::NotFound { .. })),
        "{unknown:?}"
    );
    let stale_ack = events.ack(&id, ["x"]).await;
    ensure!(
        matches!(stale_ack, Err(Error::NotFound { .. })),
        "{stale_ack:?}"
    );
    let mut other = events.subscribe("other").await?;
    sub.unsubscribe().await?;
    events.publish("orders", "after").await?;
    events.publish("other", "marker").await?;
    ensure!(next(&mut other).await?.payload == "marker");

    // Bad input and a wrong namespace are typed.
    let empty_topic = events.publish("", "x").await;
    ensure!(
        matches!(empty_topic, Err(Error::InvalidArgument { .. })),
        "{empty_topic:?}"
    );
    let empty_group = events
        .subscribe_with("orders", SubscribeOptions::new().group(""))
        .await;
    ensure!(
        matches!(empty_group, Err(Error::InvalidArgument { .. })),
        "{empty_group:?}"
    );
    let wrong = client.pub_sub("kv").subscribe("orders").await;
    ensure!(
        matches!(wrong, Err(Error::FailedPrecondition { .. })),
        "{wrong:?}"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_pipelines_in_order_and_fails_requests_alone() -> anyhow::Result<()> {
    let t = start(CONFIG).await?;
    let client = client(&t).await?;
    let events = client.pub_sub("events");
    let mut sub = events.subscribe("piped").await?;
    let publisher = events.publisher().await?;

    // 120 requests of 5 sent back to back (more than the window): each is
    // answered on its own, the bad one (topic) fails alone.
    let mut acks = Vec::new();
    for r in 0..120u32 {
        let topic = if r == 33 { "bad topic" } else { "piped" };
        let messages = (0..5u32).map(|i| OutgoingMessage::new((r * 5 + i).to_string()));
        acks.push(publisher.send(topic, messages).await?);
    }
    publisher.flush().await?;
    let mut ids = Vec::new();
    for (r, ack) in acks.into_iter().enumerate() {
        match ack.await {
            Ok(published) if r != 33 => {
                ensure!(published.len() == 5, "request {r}: {published:?}");
                ids.extend(published.into_iter().map(|p| p.id));
            }
            Err(Error::InvalidArgument { message }) if r == 33 => {
                ensure!(message.contains("topic"), "{message}");
            }
            other => bail!("request {r}: {other:?}"),
        }
    }
    let expected = (0..600u32).filter(|n| n / 5 != 33);
    for (n, id) in expected.zip(&ids) {
        let got = next(&mut sub).await?;
        ensure!(
            got.payload == n.to_string() && &got.id == id,
            "expected {n} ({id}), got {got:?}"
        );
    }
    quiet(&mut sub).await?;

    // Acks outlive the publisher: dropping it ends the stream only after
    // the requests already sent are answered.
    let mut acks = Vec::new();
    for n in 0..10 {
        acks.push(publisher.send("piped", [format!("late {n}")]).await?);
    }
    drop(publisher);
    for ack in acks {
        ensure!(ack.await?.len() == 1);
    }
    for n in 0..10 {
        ensure!(next(&mut sub).await?.payload == format!("late {n}"));
    }

    // A server shutting down ends the stream: later sends say so.
    let publisher = events.publisher().await?;
    publisher.send("piped", ["before"]).await?.await?;
    t.stop().await?;
    let after = match publisher.send("piped", ["after"]).await {
        Ok(ack) => ack.await.map(drop),
        Err(e) => Err(e),
    };
    ensure!(matches!(after, Err(Error::Unavailable { .. })), "{after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_acks_and_redelivery_on_jetstream() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let t = start(&format!(
        "[backends.js]\ntype = \"nats\"\nurl = \"{}\"\njetstream = true\nack_wait_ms = 2000\n\
         [namespaces.jobs]\npattern = \"pubsub\"\nslots = {{ pubsub = \"js\" }}\n",
        nats.url()
    ))
    .await?;
    let client = client(&t).await?;
    let jobs = client.pub_sub("jobs");
    let options = SubscribeOptions::new().group("workers").manual_ack(true);
    let mut first = jobs.subscribe_with("work", options.clone()).await?;
    jobs.publish("work", "one").await?;
    jobs.publish("work", "two").await?;
    let one = next(&mut first).await?;
    let two = next(&mut first).await?;
    ensure!(one.payload == "one" && two.payload == "two");
    ensure!(first.ack([&one.id]).await? == 1, "the ack was not pending");
    // "two" is not acked: the group gets it again once this member leaves.
    drop(first);
    let mut second = jobs.subscribe_with("work", options).await?;
    let again = tokio::time::timeout(Duration::from_secs(10), second.next()).await;
    let Ok(Some(Ok(again))) = again else {
        bail!("the unacked message was not redelivered: {again:?}");
    };
    ensure!(
        again.payload == "two" && again.id == two.id,
        "redelivered {again:?}"
    );
    let acker = second.acker();
    ensure!(acker.ack([again.id.clone()]).await? == 1);
    quiet(&mut second).await?;
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_every_method_and_typed_errors() -> anyhow::Result<()> {
    let t = start(CONFIG).await?;
    let client = client(&t).await?;
    let devices = client.registry("devices");
    ensure!(devices.namespace() == "devices");

    // Register (typed metadata round trips: ints stay ints, floats floats).
    let meta = json!({"type": "sensor", "floor": 1, "ratio": 0.5, "location": {"building": "HQ"}});
    let record = devices.register("sensor-1", meta.clone()).await?;
    ensure!(
        record.identity == "sensor-1" && record.metadata == meta,
        "{record:?}"
    );
    ensure!(record.expires_at.is_none() && record.ttl.is_none());
    devices
        .register("sensor-2", json!({"type": "sensor", "floor": 2}))
        .await?;
    devices
        .register("camera-1", json!({"type": "camera", "floor": 3}))
        .await?;
    let got = devices.get("sensor-1").await?;
    ensure!(
        got.metadata == meta && got.metadata["floor"].is_i64(),
        "{got:?}"
    );
    ensure!(got.metadata["ratio"].is_f64());

    // Re-register replaces; replace(false) refuses a live identity.
    devices
        .register("sensor-2", json!({"type": "sensor", "floor": 4}))
        .await?;
    ensure!(devices.get("sensor-2").await?.metadata["floor"] == 4);
    let taken = devices
        .register_with("sensor-2", json!({}), Registration::new().replace(false))
        .await;
    ensure!(
        matches!(taken, Err(Error::AlreadyExists { .. })),
        "{taken:?}"
    );

    // Enumerate by filter, every page, and one page at a time.
    let sensors = devices.enumerate(json!({"type": "sensor"})).await?;
    let names: Vec<_> = sensors.iter().map(|i| i.identity.as_str()).collect();
    ensure!(names == ["sensor-1", "sensor-2"], "{names:?}");
    let upstairs = devices.enumerate(json!({"floor.gte": 3})).await?;
    let names: Vec<_> = upstairs.iter().map(|i| i.identity.as_str()).collect();
    ensure!(names == ["camera-1", "sensor-2"], "{names:?}");
    ensure!(
        devices
            .enumerate(json!({"location.building": "HQ"}))
            .await?
            .len()
            == 1
    );
    ensure!(devices.enumerate(serde_json::Value::Null).await?.len() == 3);
    let page = devices.enumerate_page(json!({}), "", 2).await?;
    ensure!(page.identities.len() == 2, "{page:?}");
    let Some(cursor) = page.next_cursor else {
        bail!("three identities in pages of two end after one page")
    };
    let rest = devices.enumerate_page(json!({}), &cursor, 2).await?;
    ensure!(
        rest.identities.len() == 1 && rest.next_cursor.is_none(),
        "{rest:?}"
    );

    // A malformed filter is InvalidArgument naming the key; nothing is sent.
    let mut inbox = devices.listen("sensor-1").await?;
    ensure!(inbox.identity() == "sensor-1" && !inbox.id().is_empty());
    let malformed = devices.multicast(json!({"floor.in": 3}), "x").await;
    ensure!(
        matches!(&malformed, Err(Error::InvalidArgument { message }) if message.contains("floor.in")),
        "{malformed:?}"
    );
    let not_object = devices.enumerate(json!(["type"])).await;
    ensure!(
        matches!(not_object, Err(Error::InvalidArgument { .. })),
        "{not_object:?}"
    );
    quiet(&mut inbox).await?;

    // Multicast reaches the listener, bytes and JSON.
    let sent = devices.multicast(json!({"type": "sensor"}), "read").await?;
    ensure!(
        sent.target_count == 2 && sent.delivered_count == 2 && sent.failed.is_empty(),
        "{sent:?}"
    );
    let command = next(&mut inbox).await?;
    ensure!(command.payload == "read", "{command:?}");
    let metadata = HashMap::from([("priority".to_string(), "high".to_string())]);
    devices
        .multicast_with_metadata(json!({"floor": 1}), "urgent", metadata)
        .await?;
    let urgent = next(&mut inbox).await?;
    ensure!(urgent.payload == "urgent");
    ensure!(urgent.metadata.get("priority").is_some_and(|v| v == "high"));
    let sent = devices
        .multicast_json(
            json!({"location.building": "HQ"}),
            &json!({"command": "calibrate"}),
        )
        .await?;
    ensure!(sent.target_count == 1, "{sent:?}");
    let calibrate = next(&mut inbox).await?;
    ensure!(calibrate.json()? == json!({"command": "calibrate"}));
    ensure!(
        calibrate
            .metadata
            .get("content-type")
            .is_some_and(|v| v == "application/json")
    );
    let nobody = devices.multicast(json!({"type": "robot"}), "x").await?;
    ensure!(nobody.target_count == 0 && nobody.delivered_count == 0);
    quiet(&mut inbox).await?;
    ensure!(inbox.dropped() == 0);

    // TTL and heartbeat: a TTL shows in the record, a heartbeat renews it,
    // and an expired identity is gone.
    let leased = devices
        .register_with(
            "lease-1",
            json!({"type": "lease"}),
            Registration::new().ttl(Duration::from_millis(600)),
        )
        .await?;
    ensure!(
        leased.ttl == Some(Duration::from_millis(600)) && leased.expires_at.is_some(),
        "{leased:?}"
    );
    // Time passes (well inside the TTL), so a renewal moves the expiry by
    // about as much; one that renews nothing leaves it where it was.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewed = devices.heartbeat("lease-1").await?;
    let moved = match (leased.expires_at, renewed.expires_at) {
        (Some(before), Some(after)) => after.duration_since(before).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    ensure!(
        moved >= Duration::from_millis(20),
        "the heartbeat moved the expiry by {moved:?}: {renewed:?}"
    );
    ensure!(
        eventually(WAIT, || {
            let devices = devices.clone();
            async move { matches!(devices.get("lease-1").await, Err(Error::NotFound { .. })) }
        })
        .await,
        "the leased identity never expired"
    );
    let gone = devices.heartbeat("lease-1").await;
    ensure!(matches!(gone, Err(Error::NotFound { .. })), "{gone:?}");

    // Unregister is idempotent and says whether it removed anything.
    ensure!(devices.unregister("camera-1").await?);
    ensure!(!devices.unregister("camera-1").await?);
    let missing = devices.get("camera-1").await;
    ensure!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    let wrong = client.registry("kv").get("sensor-1").await;
    ensure!(
        matches!(wrong, Err(Error::FailedPrecondition { .. })),
        "{wrong:?}"
    );
    t.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_endpoints_share_the_calls() -> anyhow::Result<()> {
    // Two servers, each with its own MemStore: which one answered shows in
    // the value it holds.
    let (one, two) = (start(CONFIG).await?, start(CONFIG).await?);
    client(&one)
        .await?
        .key_value("kv")
        .set("who", "one")
        .await?;
    client(&two)
        .await?
        .key_value("kv")
        .set("who", "two")
        .await?;
    let balanced = Client::builder()
        .endpoints([format!("http://{}", one.addr()), two.addr().to_string()])
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let kv = balanced.key_value("kv");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        let value = kv.get("who").await?;
        seen.insert(String::from_utf8_lossy(&value).into_owned());
    }
    ensure!(seen.len() == 2, "the calls reached only {seen:?}");
    one.stop().await?;
    two.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_authenticate_and_grants_apply() -> anyhow::Result<()> {
    let issuer = Issuer::start(None).await?;
    let t = start(&format!(
        "[auth]\nmode = \"jwt\"\nissuer = \"{}\"\naudience = \"prism\"\n\
         [backends.mem]\ntype = \"memstore\"\n\
         [namespaces.orders]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n",
        issuer.url
    ))
    .await?;
    let address = format!("http://{}", t.addr());

    let anonymous = Client::connect(address.clone()).await?;
    let refused = anonymous.key_value("orders").get("k").await;
    ensure!(
        matches!(refused, Err(Error::Unauthenticated { .. })),
        "{refused:?}"
    );

    let all = issuer.token("prism-test-all", "urn:prism").await?;
    let writer = Client::builder()
        .endpoint(address.clone())
        .token(all)
        .connect()
        .await?;
    let orders = writer.key_value("orders");
    orders.set("k", "v").await?;
    ensure!(orders.get("k").await? == "v");

    // A read grant reads, and may not write; with_token swaps the token on
    // the same connection.
    let read_only = issuer.token("prism-test-orders-read", "urn:prism").await?;
    let reader = writer.with_token(&read_only)?.key_value("orders");
    ensure!(reader.get("k").await? == "v");
    let denied = reader.set("k", "w").await;
    ensure!(
        matches!(&denied, Err(Error::PermissionDenied { message }) if message.contains("orders")),
        "{denied:?}"
    );
    ensure!(orders.get("k").await? == "v", "a refused write was written");
    let forged = anonymous
        .with_token("not.a.jwt")?
        .key_value("orders")
        .get("k")
        .await;
    ensure!(
        matches!(forged, Err(Error::Unauthenticated { .. })),
        "{forged:?}"
    );
    t.stop().await
}

/// `Client::admin`: every Admin RPC from Rust, its answers read back, and
/// the typed errors of refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_every_method_and_typed_errors() -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let t = start(&format!(
        "{CONFIG}\n[admin]\nallow_unauthenticated = true\nstate_dir = {:?}\n",
        state.path().display().to_string()
    ))
    .await?;
    let client = client(&t).await?;
    let admin = client.admin();

    let created = admin
        .create_namespace(
            "made",
            "keyvalue",
            [("kv", "mem")],
            [("max_value_bytes", "8")],
        )
        .await?;
    ensure!(created.name == "made" && created.source == "admin");
    ensure!(created.settings.get("max_value_bytes").map(String::as_str) == Some("8"));
    let kv = client.key_value("made");
    ensure!(matches!(
        kv.set("k", "123456789").await,
        Err(Error::InvalidArgument { .. })
    ));
    kv.set("k", "12345678").await?;
    ensure!(matches!(
        admin
            .create_namespace("made", "keyvalue", [("kv", "mem")], [])
            .await,
        Err(Error::AlreadyExists { .. })
    ));

    let updated = admin
        .update_namespace(prism_client::pb::UpdateNamespaceRequest {
            name: "made".into(),
            settings: [("max_value_bytes".to_string(), "16".to_string())].into(),
            ..Default::default()
        })
        .await?;
    ensure!(updated.settings.get("max_value_bytes").map(String::as_str) == Some("16"));
    kv.set("k", "123456789").await?;
    let read = admin.namespace("made").await?;
    ensure!(read.settings == updated.settings);
    let names: Vec<String> = admin
        .list_namespaces()
        .await?
        .into_iter()
        .map(|n| n.name)
        .collect();
    ensure!(names.contains(&"made".to_string()) && names.contains(&"kv".to_string()));

    // Upload (another digest of the built-in component), canary, promote, rollback.
    let mut component = std::fs::read(prism_acceptance::guest_component("keyvalue"))?;
    component.extend_from_slice(&[0, 6, 4, b'r', b'u', b's', b't', 1]);
    let uploaded = admin.upload_pattern(component, "rust.wasm").await?;
    ensure!(uploaded.digest.len() == 64 && uploaded.world == "keyvalue");
    ensure!(
        admin
            .patterns()
            .await?
            .iter()
            .any(|p| p.digest == uploaded.digest && p.label == "rust.wasm")
    );
    let canary = admin.deploy("made", &uploaded.digest, 50, false).await?;
    let rollout = canary.rollout.unwrap_or_default();
    ensure!(rollout.canary_percent == 50 && !rollout.shadow);
    ensure!(matches!(
        admin.delete_pattern(&uploaded.digest).await,
        Err(Error::FailedPrecondition { .. })
    ));
    let promoted = admin.promote("made").await?;
    ensure!(promoted.pattern.map(|p| p.digest) == Some(uploaded.digest.clone()));
    let rolled = admin.rollback("made").await?;
    ensure!(rolled.previous.map(|p| p.digest) == Some(uploaded.digest.clone()));
    ensure!(matches!(
        admin.promote("made").await,
        Err(Error::FailedPrecondition { .. })
    ));

    ensure!(admin.delete_namespace("made", true).await? == 1);
    ensure!(matches!(
        admin.namespace("made").await,
        Err(Error::NamespaceNotFound { .. })
    ));
    ensure!(admin.delete_pattern(&uploaded.digest).await?);
    ensure!(matches!(
        admin.upload_pattern(Vec::new(), "empty").await,
        Err(Error::InvalidArgument { .. })
    ));
    Ok(())
}

/// A token provider keeps a client working past each short-lived token's
/// expiry (2 s tokens, no leeway), asked again only near each expiry;
/// the same first token held fixed is refused once it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_provider_keeps_a_client_working_past_each_tokens_expiry() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let issuer = Arc::new(Issuer::start(Some(2)).await?);
    let t = start(&format!(
        "[auth]\nmode = \"jwt\"\nissuer = \"{}\"\naudience = \"prism\"\nleeway_secs = 0\n\
         [backends.mem]\ntype = \"memstore\"\n\
         [namespaces.orders]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n",
        issuer.url
    ))
    .await?;
    let address = format!("http://{}", t.addr());
    let asked = Arc::new(AtomicU32::new(0));
    let provider = {
        let (issuer, asked) = (issuer.clone(), asked.clone());
        move || {
            let (issuer, asked) = (issuer.clone(), asked.clone());
            async move {
                asked.fetch_add(1, Ordering::SeqCst);
                issuer
                    .token("prism-test-all", "urn:prism")
                    .await
                    .map_err(|e| Error::Unauthenticated {
                        message: e.to_string(),
                    })
            }
        }
    };
    let provided = Client::builder()
        .endpoint(address.clone())
        .token_provider(provider)
        .connect()
        .await?;
    let fixed = Client::builder()
        .endpoint(address)
        .token(issuer.token("prism-test-all", "urn:prism").await?)
        .connect()
        .await?;
    let (kv, fixed_kv) = (provided.key_value("orders"), fixed.key_value("orders"));
    kv.set("k", "v").await?;
    ensure!(fixed_kv.get("k").await? == "v");
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed() < Duration::from_millis(4500) {
        ensure!(kv.get("k").await? == "v", "call {calls} failed");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = fixed_kv.get("k").await;
    ensure!(
        matches!(refused, Err(Error::Unauthenticated { .. })),
        "a token past its exp was still taken: {refused:?}"
    );
    let asked = asked.load(Ordering::SeqCst);
    ensure!(
        (3..=8).contains(&asked) && asked < calls / 3,
        "the provider was asked {asked} times for {calls} calls over 4.5 s of 2 s tokens"
    );
    t.stop().await
}

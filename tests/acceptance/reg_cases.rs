//! Multicast Registry behaviour every registry × messaging pair must share,
//! written once. `a` and `b` are clients of two namespaces on the same
//! backends; each pair runs in namespaces of its own and every case uses
//! identities of its own, so durable broker state (JetStream inboxes, with
//! their redeliveries) of one run never reaches another.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::ensure;
use prism_acceptance::registry::{Inbox, filter, json, map};
use prism_acceptance::{RegClient, pb};
use serde_json::json;
use tonic::Code;

pub struct Ctx {
    pub a: RegClient,
    pub b: RegClient,
    pub at_least_once: bool,
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
    every_filter_operator,
    malformed_filters_are_refused_and_send_nothing,
    multicast_reaches_exactly_the_matching_listeners,
    ttl_expiry_and_heartbeat,
    replace_and_already_exists,
    unregister_is_idempotent,
    thousand_identities_enumerated_once,
    concurrent_register_and_multicast,
    namespaces_isolated,
    typed_metadata_round_trip,
    inbox_while_away,
);

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

async fn register(
    client: &RegClient,
    identity: &str,
    metadata: serde_json::Value,
    ttl_ms: Option<u64>,
) -> anyhow::Result<pb::Identity> {
    let response = client
        .clone()
        .register(pb::RegisterRequest {
            identity: identity.into(),
            metadata: Some(map(metadata)),
            ttl_ms,
            replace: true,
        })
        .await?
        .into_inner();
    response
        .identity
        .ok_or_else(|| anyhow::anyhow!("register returned no identity"))
}

/// Every page of the filter's matches, in order.
async fn enumerate(
    client: &RegClient,
    f: serde_json::Value,
    limit: u32,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .clone()
            .enumerate(pb::EnumerateRequest {
                filter: filter(f.clone()),
                cursor,
                limit,
            })
            .await?
            .into_inner();
        ensure!(
            limit == 0 || page.identities.len() <= limit as usize,
            "page over its limit"
        );
        out.extend(page.identities.into_iter().map(|i| i.identity));
        if page.next_cursor.is_empty() {
            return Ok(out);
        }
        cursor = page.next_cursor;
    }
}

async fn multicast(
    client: &RegClient,
    f: serde_json::Value,
    payload: &[u8],
) -> Result<pb::MulticastResponse, tonic::Status> {
    client
        .clone()
        .multicast(pb::MulticastRequest {
            filter: filter(f),
            payload: payload.to_vec(),
            metadata: HashMap::from([("kind".to_string(), "command".to_string())]),
        })
        .await
        .map(|r| r.into_inner())
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn every_filter_operator(ctx: &Ctx) -> anyhow::Result<()> {
    let a = &ctx.a;
    register(
        a,
        "d1",
        json!({"type": "sensor", "floor": 1, "name": "alpha", "tags": ["hot", "roof"],
        "location": {"building": "HQ", "room": 101}, "active": true, "battery": 0.5}),
        None,
    )
    .await?;
    register(a, "d2", json!({"type": "sensor", "floor": 2, "name": "beta", "tags": ["cold"],
        "location": {"building": "Annex", "room": 7}, "active": false, "battery": 1.0, "note": null}), None).await?;
    register(
        a,
        "d3",
        json!({"type": "actuator", "floor": 1.0, "name": "gamma", "tags": [],
        "location": {"building": "HQ"}, "active": true}),
        None,
    )
    .await?;
    register(
        a,
        "d4",
        json!({"type": "sensor", "floor": "1", "name": "delta"}),
        None,
    )
    .await?;
    register(a, "d5", json!({"kind": "gateway"}), None).await?;
    let cases: Vec<(serde_json::Value, &[&str])> = vec![
        (json!({}), &["d1", "d2", "d3", "d4", "d5"]),
        (json!({"type": "sensor"}), &["d1", "d2", "d4"]),
        // Type-aware equality: 1 == 1.0, 1 != "1".
        (json!({"floor": 1}), &["d1", "d3"]),
        (json!({"floor.eq": 1.0}), &["d1", "d3"]),
        (json!({"floor": "1"}), &["d4"]),
        (json!({"battery": 1}), &["d2"]),
        (json!({"note": "*"}), &["d2"]),
        // A missing field matches `ne`.
        (json!({"floor.ne": 1}), &["d2", "d4", "d5"]),
        (json!({"floor.lt": 2}), &["d1", "d3"]),
        (json!({"floor.lte": 2}), &["d1", "d2", "d3"]),
        (json!({"floor.gt": 1}), &["d2"]),
        // Numbers compare only with numbers: "1" is not >= 1.
        (json!({"floor.gte": 1}), &["d1", "d2", "d3"]),
        (json!({"name.gt": "beta"}), &["d3", "d4"]),
        (json!({"name.startswith": "al"}), &["d1"]),
        (json!({"name.endswith": "ta"}), &["d2", "d4"]),
        (json!({"name.contains": "amm"}), &["d3"]),
        (json!({"tags.contains": "cold"}), &["d2"]),
        (json!({"floor.in": [2, "1"]}), &["d2", "d4"]),
        (json!({"note.exists": true}), &["d2"]),
        (json!({"type.exists": false}), &["d5"]),
        (json!({"name.regex": "^[ab]"}), &["d1", "d2"]),
        (json!({"floor.type": "number"}), &["d1", "d2", "d3"]),
        (json!({"floor.type": "string"}), &["d4"]),
        (json!({"note.type": "null"}), &["d2"]),
        (json!({"tags.type": "list"}), &["d1", "d2", "d3"]),
        (json!({"location.type": "map"}), &["d1", "d2", "d3"]),
        (json!({"active.type": "bool"}), &["d1", "d2", "d3"]),
        // Dotted paths reach nested maps.
        (json!({"location.building": "HQ"}), &["d1", "d3"]),
        (json!({"location.room.gte": 100}), &["d1"]),
        (
            json!({"$or": [{"floor": 2}, {"type": "actuator"}]}),
            &["d2", "d3"],
        ),
        (
            json!({"$and": [{"type": "sensor"}, {"floor.gte": 1}]}),
            &["d1", "d2"],
        ),
        (json!({"$not": {"type": "sensor"}}), &["d3", "d5"]),
        (json!({"$not": {"floor": 1}}), &["d2", "d4", "d5"]),
        (
            json!({"active": true, "location.building": "HQ"}),
            &["d1", "d3"],
        ),
        (json!({"$or": []}), &[]),
    ];
    for (f, expected) in cases {
        let got: BTreeSet<String> = enumerate(a, f.clone(), 0).await?.into_iter().collect();
        ensure!(
            got == set(expected),
            "filter {f}: got {got:?}, expected {expected:?}"
        );
        // Multicast targets exactly the same identities.
        let r = multicast(a, f.clone(), b"x").await?;
        ensure!(
            r.target_count as usize == expected.len() && r.delivered_count == r.target_count,
            "multicast {f}: {r:?}, expected {} targets",
            expected.len()
        );
    }
    Ok(())
}

async fn malformed_filters_are_refused_and_send_nothing(ctx: &Ctx) -> anyhow::Result<()> {
    let a = &ctx.a;
    register(a, "m-listener", json!({"type": "sensor"}), None).await?;
    let mut inbox = Inbox::open(&mut a.clone(), "m-listener").await?;
    for (f, key) in [
        (json!({"$nor": [{"a": 1}]}), "$nor"),
        (json!({"$or": {"a": 1}}), "$or"),
        (json!({"type": "sensor", "floor.in": 3}), "floor.in"),
        (json!({"name.regex": "("}), "name.regex"),
        (json!({"floor.exists": "yes"}), "floor.exists"),
        (json!({"floor.type": "integer"}), "floor.type"),
        (json!({"a..b": 1}), "a..b"),
    ] {
        for call in ["enumerate", "multicast"] {
            let status = if call == "enumerate" {
                a.clone()
                    .enumerate(pb::EnumerateRequest {
                        filter: filter(f.clone()),
                        ..Default::default()
                    })
                    .await
                    .err()
            } else {
                multicast(a, f.clone(), b"must not arrive").await.err()
            };
            let Some(status) = status else {
                anyhow::bail!("{call} accepted the malformed filter {f}");
            };
            ensure!(
                status.code() == Code::InvalidArgument,
                "{call} {f}: {status:?}"
            );
            ensure!(
                status.message().contains(key),
                "{call} {f}: message does not name {key}: {}",
                status.message()
            );
        }
    }
    // A payload over the namespace's limit is refused before anything is sent
    // (not an UNAVAILABLE from a broker that cannot take it).
    let status = multicast(a, json!({}), &vec![0u8; 1_000_001]).await.err();
    ensure!(
        status.as_ref().is_some_and(
            |s| s.code() == Code::InvalidArgument && s.message().contains("max_payload_bytes")
        ),
        "{status:?}"
    );
    ensure!(
        inbox.next(QUIET).await?.is_none(),
        "a refused multicast was delivered"
    );
    Ok(())
}

async fn multicast_reaches_exactly_the_matching_listeners(ctx: &Ctx) -> anyhow::Result<()> {
    let a = &ctx.a;
    register(a, "ml-s1", json!({"type": "sensor", "floor": 1}), None).await?;
    register(a, "ml-s2", json!({"type": "sensor", "floor": 2}), None).await?;
    register(a, "ml-a1", json!({"type": "actuator", "floor": 1}), None).await?;
    let mut s1 = Inbox::open(&mut a.clone(), "ml-s1").await?;
    let mut s2 = Inbox::open(&mut a.clone(), "ml-s2").await?;
    let mut a1 = Inbox::open(&mut a.clone(), "ml-a1").await?;
    // The RFC-018 POC 4 case: floor-1 sensors only.
    let r = multicast(
        a,
        json!({"type": "sensor", "floor": 1}),
        br#"{"command":"read"}"#,
    )
    .await?;
    ensure!(
        r.target_count == 1 && r.delivered_count == 1 && r.failed.is_empty(),
        "{r:?}"
    );
    let got = s1
        .next(WAIT)
        .await?
        .ok_or_else(|| anyhow::anyhow!("ml-s1 got nothing"))?;
    ensure!(got.payload[..] == *br#"{"command":"read"}"#, "{got:?}");
    ensure!(
        got.metadata.get("kind").map(String::as_str) == Some("command"),
        "{got:?}"
    );
    ensure!(
        got.metadata
            .get("prism-registry-identity")
            .map(String::as_str)
            == Some("ml-s1"),
        "{got:?}"
    );
    ensure!(s2.next(QUIET).await?.is_none(), "ml-s2 is on floor 2");
    ensure!(a1.next(QUIET).await?.is_none(), "ml-a1 is an actuator");
    // All sensors: one message each, exactly once.
    let r = multicast(a, json!({"type": "sensor"}), b"all").await?;
    ensure!(r.target_count == 2 && r.delivered_count == 2, "{r:?}");
    for inbox in [&mut s1, &mut s2] {
        let m = inbox
            .next(WAIT)
            .await?
            .ok_or_else(|| anyhow::anyhow!("a sensor got nothing"))?;
        ensure!(m.payload[..] == *b"all");
        ensure!(inbox.next(QUIET).await?.is_none(), "delivered twice");
    }
    ensure!(a1.next(QUIET).await?.is_none());
    Ok(())
}

async fn ttl_expiry_and_heartbeat(ctx: &Ctx) -> anyhow::Result<()> {
    let a = &ctx.a;
    let first = register(a, "t-short", json!({"t": 1}), Some(1000)).await?;
    register(a, "t-forever", json!({"t": 1}), None).await?;
    let expires = first
        .expires_at_ms
        .ok_or_else(|| anyhow::anyhow!("no expiry"))?;
    ensure!(expires == first.registered_at_ms + 1000, "{first:?}");
    ensure!(first.ttl_ms == Some(1000), "{first:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let renewed = a
        .clone()
        .heartbeat(pb::HeartbeatRequest {
            identity: "t-short".into(),
        })
        .await?
        .into_inner()
        .identity
        .ok_or_else(|| anyhow::anyhow!("heartbeat returned no identity"))?;
    let renewed_expiry = renewed.expires_at_ms.unwrap_or_default();
    ensure!(
        renewed_expiry > expires,
        "heartbeat did not renew: {renewed:?}"
    );
    ensure!(renewed.registered_at_ms == first.registered_at_ms);
    // Present until its (renewed) expiry; never listed or targeted once a
    // second past it — checked by calls that *started* that late; and not
    // gone before its expiry — checked by calls that *finished* that early.
    let started = Instant::now();
    loop {
        let asked_at = prism::clock::now_ms();
        let listed = enumerate(a, json!({"t": 1}), 0).await?;
        let listed_done = prism::clock::now_ms();
        let targeted_at = prism::clock::now_ms();
        let targeted = multicast(a, json!({"t": 1}), b"x").await?.target_count;
        let targeted_done = prism::clock::now_ms();
        ensure!(listed.iter().any(|i| i == "t-forever"));
        let present = listed.iter().any(|i| i == "t-short");
        if present {
            ensure!(
                asked_at < renewed_expiry + 1000,
                "still listed {} ms after its expiry",
                asked_at - renewed_expiry
            );
        } else {
            ensure!(
                listed_done >= renewed_expiry,
                "not listed before its expiry"
            );
        }
        if targeted == 2 {
            ensure!(
                targeted_at < renewed_expiry + 1000,
                "still targeted {} ms after its expiry",
                targeted_at - renewed_expiry
            );
        } else {
            ensure!(targeted == 1, "targeted {targeted}");
            ensure!(
                targeted_done >= renewed_expiry,
                "not targeted before its expiry"
            );
        }
        if !present && targeted == 1 {
            break;
        }
        ensure!(started.elapsed() < Duration::from_secs(10), "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for status in [
        a.clone()
            .heartbeat(pb::HeartbeatRequest {
                identity: "t-short".into(),
            })
            .await
            .err(),
        a.clone()
            .get(pb::GetIdentityRequest {
                identity: "t-short".into(),
            })
            .await
            .err(),
    ] {
        ensure!(
            status.as_ref().map(|s| s.code()) == Some(Code::NotFound),
            "{status:?}"
        );
    }
    // A heartbeat on an identity without a TTL keeps it without one.
    let kept = a
        .clone()
        .heartbeat(pb::HeartbeatRequest {
            identity: "t-forever".into(),
        })
        .await?
        .into_inner()
        .identity
        .ok_or_else(|| anyhow::anyhow!("no identity"))?;
    ensure!(kept.expires_at_ms.is_none(), "{kept:?}");
    Ok(())
}

async fn replace_and_already_exists(ctx: &Ctx) -> anyhow::Result<()> {
    let a = &ctx.a;
    let v1 = register(a, "r", json!({"v": 1}), None).await?;
    let err = a
        .clone()
        .register(pb::RegisterRequest {
            identity: "r".into(),
            metadata: Some(map(json!({"v": 2}))),
            ttl_ms: None,
            replace: false,
        })
        .await
        .err();
    ensure!(
        err.as_ref()
            .is_some_and(|s| s.code() == Code::AlreadyExists && s.message().contains("'r'")),
        "{err:?}"
    );
    let got = a
        .clone()
        .get(pb::GetIdentityRequest {
            identity: "r".into(),
        })
        .await?
        .into_inner()
        .identity
        .ok_or_else(|| anyhow::anyhow!("no identity"))?;
    ensure!(
        got.metadata.as_ref().map(json) == Some(json!({"v": 1})),
        "{got:?}"
    );
    // Re-registering (replace) overwrites metadata and registration time.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let v3 = register(a, "r", json!({"v": 3}), Some(60_000)).await?;
    ensure!(v3.metadata.as_ref().map(json) == Some(json!({"v": 3})));
    ensure!(v3.registered_at_ms > v1.registered_at_ms && v3.ttl_ms == Some(60_000));
    // replace=false of a new identity registers it.
    let fresh = a
        .clone()
        .register(pb::RegisterRequest {
            identity: "r-new".into(),
            metadata: Some(map(json!({}))),
            ttl_ms: None,
            replace: false,
        })
        .await?;
    ensure!(fresh.into_inner().identity.is_some());
    Ok(())
}

async fn unregister_is_idempotent(ctx: &Ctx) -> anyhow::Result<()> {
    let a = &ctx.a;
    register(a, "u", json!({}), None).await?;
    let unregister = |id: &'static str| {
        let mut c = a.clone();
        async move {
            c.unregister(pb::UnregisterRequest {
                identity: id.into(),
            })
            .await
            .map(|r| r.into_inner().existed)
        }
    };
    ensure!(
        unregister("u").await?,
        "first unregister reports it existed"
    );
    ensure!(
        !unregister("u").await?,
        "second unregister reports it did not"
    );
    ensure!(!unregister("never").await?);
    let err = a
        .clone()
        .get(pb::GetIdentityRequest {
            identity: "u".into(),
        })
        .await
        .err();
    ensure!(err.map(|s| s.code()) == Some(Code::NotFound));
    ensure!(enumerate(a, json!({}), 0).await?.is_empty());
    Ok(())
}

async fn thousand_identities_enumerated_once(ctx: &Ctx) -> anyhow::Result<()> {
    let a = &ctx.a;
    let mut tasks = Vec::new();
    for worker in 0..16u64 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..1000).step_by(16) {
                register(&a, &format!("id{i:04}"), json!({"n": i}), None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let all = enumerate(a, json!({"n.gte": 0}), 97).await?;
    let expected: Vec<String> = (0..1000).map(|i| format!("id{i:04}")).collect();
    ensure!(
        all == expected,
        "{} identities, in order, each once? got {}",
        expected.len(),
        all.len()
    );
    let half = enumerate(a, json!({"n.lt": 500}), 0).await?;
    ensure!(
        half == expected[..500],
        "the lower half: got {}",
        half.len()
    );
    Ok(())
}

async fn concurrent_register_and_multicast(ctx: &Ctx) -> anyhow::Result<()> {
    let a = &ctx.a;
    let mut registrars = Vec::new();
    for k in 0..4u64 {
        let a = a.clone();
        registrars.push(tokio::spawn(async move {
            for i in 0..100u64 {
                register(&a, &format!("c{k}-{i:03}"), json!({"batch": k}), None).await?;
            }
            anyhow::Ok(())
        }));
    }
    let mut last = 0;
    while !registrars.iter().all(|r| r.is_finished()) {
        let r = multicast(a, json!({"batch.gte": 0}), b"tick").await?;
        ensure!(
            r.delivered_count == r.target_count && r.failed.is_empty(),
            "{r:?}"
        );
        ensure!(
            r.target_count >= last,
            "targets went from {last} to {}",
            r.target_count
        );
        last = r.target_count;
    }
    for r in registrars {
        r.await??;
    }
    let r = multicast(a, json!({"batch.gte": 0}), b"final").await?;
    ensure!(r.target_count == 400 && r.delivered_count == 400, "{r:?}");
    Ok(())
}

async fn namespaces_isolated(ctx: &Ctx) -> anyhow::Result<()> {
    let (a, b) = (&ctx.a, &ctx.b);
    register(a, "iso-same", json!({"owner": "a"}), None).await?;
    register(b, "iso-same", json!({"owner": "b"}), None).await?;
    register(b, "iso-only-b", json!({"owner": "b"}), None).await?;
    ensure!(enumerate(a, json!({}), 0).await? == vec!["iso-same".to_string()]);
    let got = a
        .clone()
        .get(pb::GetIdentityRequest {
            identity: "iso-same".into(),
        })
        .await?
        .into_inner()
        .identity
        .and_then(|i| i.metadata)
        .map(|m| json(&m));
    ensure!(got == Some(json!({"owner": "a"})), "{got:?}");
    let err = a
        .clone()
        .get(pb::GetIdentityRequest {
            identity: "iso-only-b".into(),
        })
        .await
        .err();
    ensure!(err.map(|s| s.code()) == Some(Code::NotFound));
    let mut inbox_a = Inbox::open(&mut a.clone(), "iso-same").await?;
    let mut inbox_b = Inbox::open(&mut b.clone(), "iso-same").await?;
    let r = multicast(b, json!({}), b"for-b").await?;
    ensure!(r.target_count == 2, "{r:?}");
    let m = inbox_b
        .next(WAIT)
        .await?
        .ok_or_else(|| anyhow::anyhow!("b's listener got nothing"))?;
    ensure!(m.payload[..] == *b"for-b");
    ensure!(
        inbox_a.next(QUIET).await?.is_none(),
        "a's listener got b's multicast"
    );
    Ok(())
}

async fn typed_metadata_round_trip(ctx: &Ctx) -> anyhow::Result<()> {
    let metadata = json!({
        "int": 1, "float": 1.0, "tenth": 0.1, "neg": -42, "big": 9_007_199_254_740_993_i64,
        "yes": true, "no": false, "nothing": null, "text": "ünïcødé ✓",
        "list": [1, 2.5, "three", null, [4]], "map": {"nested": {"deeper": [true]}}
    });
    let stored = register(&ctx.a, "typed", metadata.clone(), None).await?;
    ensure!(
        stored.metadata.as_ref().map(json) == Some(metadata.clone()),
        "{stored:?}"
    );
    let got = ctx
        .a
        .clone()
        .get(pb::GetIdentityRequest {
            identity: "typed".into(),
        })
        .await?
        .into_inner()
        .identity
        .and_then(|i| i.metadata)
        .map(|m| json(&m));
    ensure!(got == Some(metadata), "{got:?}");
    Ok(())
}

async fn inbox_while_away(ctx: &Ctx) -> anyhow::Result<()> {
    let a = &ctx.a;
    register(a, "away-1", json!({"role": "away"}), None).await?;
    // Live first, so the inbox exists on the broker.
    let inbox = Inbox::open(&mut a.clone(), "away-1").await?;
    drop(inbox);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = multicast(a, json!({"role": "away"}), b"while-away").await?;
    ensure!(r.target_count == 1 && r.delivered_count == 1, "{r:?}");
    let mut back = Inbox::open(&mut a.clone(), "away-1").await?;
    let got = back
        .next(if ctx.at_least_once { WAIT } else { QUIET })
        .await?;
    if ctx.at_least_once {
        // JetStream keeps a durable inbox: what was sent while away arrives.
        ensure!(
            got.is_some_and(|m| m.payload[..] == *b"while-away"),
            "the durable inbox lost the message sent while away"
        );
    } else {
        // At-most-once brokers deliver what is sent after the listener is live.
        ensure!(
            got.is_none(),
            "an at-most-once broker delivered to an absent listener"
        );
    }
    let r = multicast(a, json!({"role": "away"}), b"back").await?;
    ensure!(r.delivered_count == 1, "{r:?}");
    let got = back.next(WAIT).await?;
    ensure!(got.is_some_and(|m| m.payload[..] == *b"back"));
    Ok(())
}

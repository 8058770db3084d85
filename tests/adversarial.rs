//! Attacks on a real Prism, each measured: what an unauthenticated caller
//! or a hostile tenant can make the server keep, hold or reach. Each case
//! is written as the attack, then the bound it must meet.
//!
//! - a flood of refused calls with made-up namespace headers: RSS and log
//!   lines stay bounded (a real `prism` process);
//! - token-free streams (health watches) past the server's cap are
//!   RESOURCE_EXHAUSTED; connections past `max_connections` are closed, and
//!   connections that never send the HTTP/2 preface are closed too;
//! - HTTP/2: the stream limit is advertised in SETTINGS, and a connection
//!   that makes the server reset stream after stream is sent GOAWAY
//!   (ENHANCE_YOUR_CALM) — raw frames, as an attacker sends them;
//! - a subscriber that never reads holds at most the namespace's
//!   `max_buffered_bytes`, and every message is either delivered or counted
//!   as dropped;
//! - limits survive a namespace admin deleting and re-creating the
//!   namespace;
//! - another principal cannot ack or end a subscription, and its id
//!   cannot be guessed;
//! - another tenant's upload is not listed, deployed or deleted, and
//!   uploads per namespace are capped.

use std::time::Duration;

use prism::pb;
use prism::pb::admin_client::AdminClient;
use prism::pb::pub_sub_client::PubSubClient;
use prism_acceptance::binary::PrismProcess;
use prism_acceptance::oidc::Issuer;
use prism_acceptance::pubsub::{Sub, publish_request, subscribe_request};
use prism_acceptance::{eventually, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A request naming `namespace`, carrying `token` when given.
fn request<T>(message: T, namespace: &str, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Ok(value) = namespace.parse() {
        r.metadata_mut()
            .insert(prism::namespace::NAMESPACE_METADATA, value);
    }
    if let Some(token) = token
        && let Ok(value) = format!("Bearer {token}").parse::<MetadataValue<_>>()
    {
        r.metadata_mut().insert("authorization", value);
    }
    r
}

/// A KeyValue `orders` namespace on MemStore, with this `[server]` line.
fn orders_with_server(setting: &str) -> String {
    format!(
        "[server]\n{setting}\n[backends.mem]\ntype = \"memstore\"\n[namespaces.orders]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n"
    )
}

/// Waits for a namespace's outboxes to settle (two equal, non-zero
/// readings); whether they did, and the most they held at any reading.
async fn settle(admission: &prism::admission::Admission) -> (bool, u64) {
    let mut last = u64::MAX;
    let mut most = 0;
    let settled = eventually(Duration::from_secs(10), || {
        let now = admission.buffered_bytes();
        most = most.max(now);
        let same = now == last && now > 0;
        last = now;
        async move { same }
    })
    .await;
    (settled, most)
}

/// A call that failed because the server closed or refused the connection
/// (not a gRPC answer from a handler). Which code the client reports
/// depends on when it notices: UNAVAILABLE before sending, UNKNOWN
/// ("transport error", a broken pipe) while sending, CANCELLED
/// ("connection closed") while waiting for the answer.
fn refused_by_transport(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown => status.message().contains("transport error"),
        Code::Cancelled => {
            status.message().contains("canceled") || status.message().contains("closed")
        }
        _ => false,
    }
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// `calls` KeyValue Gets without a token, each naming a different made-up
/// namespace of about 8 KiB, 32 at a time; every one must be refused.
async fn refused_flood(channel: &Channel, first: usize, calls: usize) -> anyhow::Result<()> {
    let per_task = calls / 32;
    let mut tasks = Vec::new();
    for task in 0..32 {
        let mut client = pb::key_value_client::KeyValueClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let n = first + task * per_task + i;
                let namespace = format!("{n:010}-").repeat(8000 / 11);
                let outcome = client
                    .get(request(
                        pb::GetRequest { key: "k".into() },
                        &namespace,
                        None,
                    ))
                    .await;
                match outcome {
                    Err(s) if s.code() == Code::Unauthenticated => {}
                    other => anyhow::bail!("call {n} was not refused: {other:?}"),
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_calls_with_made_up_namespaces_keeps_memory_and_log_bounded()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("prism.toml");
    // The issuer is never reached: a call without a token is refused first.
    std::fs::write(
        &config,
        r#"
[auth]
mode = "jwt"
issuer = "http://127.0.0.1:9/"
audience = "prism"

[backends.mem]
type = "memstore"

[namespaces.orders]
pattern = "keyvalue"
slots = { kv = "mem" }
"#,
    )?;
    let config = config.display().to_string();
    let prism =
        PrismProcess::start(&["serve", "--config", &config, "--listen", "127.0.0.1:0"]).await?;
    let pid = prism.pid().ok_or_else(|| anyhow::anyhow!("prism exited"))?;
    let channel = Channel::from_shared(format!("http://{}", prism.addr))?
        .connect()
        .await?;

    // Warm-up: allocator arenas, h2 buffers and the one unknown bucket.
    let flooded = async {
        refused_flood(&channel, 0, 3_200).await?;
        let before = rss_bytes(pid)?;
        refused_flood(&channel, 3_200, 30_016).await?;
        anyhow::Ok(before)
    };
    let before = match flooded.await {
        Ok(before) => before,
        Err(e) => anyhow::bail!("{e}\nprism's stderr:\n{}", prism.stderr()),
    };
    let after = rss_bytes(pid)?;
    let grown = after.saturating_sub(before);
    eprintln!(
        "RSS before {} KiB, after 30 016 refused calls {} KiB (+{} KiB)",
        before / 1024,
        after / 1024,
        grown / 1024
    );
    // Kept per name, 30 016 names of 8 KiB would be 235 MiB.
    assert!(
        grown < 8 * 1024 * 1024,
        "RSS grew {} KiB over 30 016 refused calls",
        grown / 1024
    );

    let (_, stderr) = prism.terminate_with_stderr(Duration::from_secs(20)).await?;
    let refusals: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("call refused by auth"))
        .collect();
    // One bucket, a line at each power of two: 1, 2, 4 … 32 768.
    assert!(
        !refusals.is_empty() && refusals.len() <= 16,
        "{} refusal lines:\n{}",
        refusals.len(),
        refusals.join("\n")
    );
    for line in &refusals {
        assert!(
            line.len() < 1_000,
            "a refusal line echoes the header: {line}"
        );
        assert!(line.contains("(unknown)"), "{line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watches_past_the_server_cap_are_resource_exhausted() -> anyhow::Result<()> {
    let server = start(&orders_with_server("max_unauthenticated_streams = 4")).await?;
    let mut health = HealthClient::new(server.channel());
    let watch = || HealthCheckRequest {
        service: String::new(),
    };
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = health.watch(watch()).await?.into_inner();
        // Live: the first status arrived.
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message()).await??;
        assert!(first.is_some(), "a watch ended before its first status");
        open.push(stream);
    }
    let refused = health
        .watch(watch())
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a fifth watch was opened past the cap of 4"))?;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_unauthenticated_streams"),
        "{refused:?}"
    );
    // Health/Check (unary) is not capped.
    health.check(watch()).await?;

    // One ends: its place is free again.
    drop(open.pop());
    let reopened = eventually(Duration::from_secs(10), || {
        let mut health = health.clone();
        async move { health.watch(watch()).await.is_ok() }
    })
    .await;
    assert!(reopened, "a closed watch's place was never freed");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_until_one_leaves() -> anyhow::Result<()> {
    let server = start(&orders_with_server("max_connections = 3")).await?;
    let url = format!("http://{}", server.addr());
    let check = |channel: Channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    // The test server's own client holds the first of the three.
    check(server.channel()).await?;
    let first = Channel::from_shared(url.clone())?.connect().await?;
    let second = Channel::from_shared(url.clone())?.connect().await?;
    check(first.clone()).await?;
    check(second.clone()).await?;

    let third = Channel::from_shared(url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let refused = check(third).await.err().ok_or_else(|| {
        anyhow::anyhow!("a fourth connection was served past max_connections = 3")
    })?;
    assert!(refused_by_transport(&refused), "{refused:?}");

    drop(first);
    let served = eventually(Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            match Channel::from_shared(url) {
                Ok(endpoint) => check(endpoint.connect_lazy()).await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(
        served,
        "a new connection was refused after one of three closed"
    );
    check(second).await?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_handshake_timeout() -> anyhow::Result<()> {
    let server = start(&orders_with_server(
        "max_connections = 3\nhandshake_timeout_secs = 1",
    ))
    .await?;
    let check = |channel: Channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    // The test server's own client has greeted: it holds one place.
    check(server.channel()).await?;
    // Two connections that never say a word take the other two places.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(server.addr()).await?);
    }
    for (i, conn) in silent.iter_mut().enumerate() {
        // The server may greet first (its SETTINGS): read until it hangs up.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        anyhow::ensure!(
            closed.is_ok(),
            "silent connection {i} still open 10 s after a 1 s handshake timeout"
        );
    }
    // Their places are free again, and the greeted connection was kept.
    let url = format!("http://{}", server.addr());
    let fresh = Channel::from_shared(url)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    check(fresh).await?;
    check(server.channel()).await?;
    server.stop().await
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame: (type, flags, stream, payload); None at end of stream.
async fn read_frame(io: &mut TcpStream) -> anyhow::Result<Option<(u8, u8, u32, Vec<u8>)>> {
    let mut head = [0u8; 9];
    match io.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await?;
    Ok(Some((head[3], head[4], stream, payload)))
}

const SETTINGS: u8 = 0x4;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const HEADERS: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_limits_are_advertised_and_a_reset_flood_gets_goaway() -> anyhow::Result<()> {
    // Defaults only: the limits must be on without configuration.
    let server = start(
        "[backends.mem]\ntype = \"memstore\"\n[namespaces.orders]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n",
    )
    .await?;
    let mut io = TcpStream::connect(server.addr()).await?;
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    let (kind, _, _, settings) = read_frame(&mut io)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the server closed before its SETTINGS"))?;
    assert_eq!(kind, SETTINGS);
    let max_streams = settings
        .chunks_exact(6)
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == 0x3)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(
        max_streams,
        Some(2048),
        "SETTINGS_MAX_CONCURRENT_STREAMS is the documented default"
    );
    io.write_all(&frame(SETTINGS, 0x1, 0, &[])).await?;

    // "MadeYouReset": requests the server must reset itself (no :method,
    // so malformed), one after another. HPACK: :scheme http (static 6),
    // :path / (static 4), :authority x (literal, indexed name 1).
    let block = [0x86, 0x84, 0x01, 0x01, b'x'];
    let flood: Vec<u8> = (0..1_500u32)
        .flat_map(|i| frame(HEADERS, 0x4 | 0x1, 2 * i + 1, &block))
        .collect();
    let (mut read, mut write) = io.into_split();
    let writer = tokio::spawn(async move {
        // The server may close mid-write; that is the point.
        let _ = write.write_all(&flood).await;
        write
    });
    let mut resets = 0u32;
    let mut goaway = None;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        let mut head = [0u8; 9];
        loop {
            if read.read_exact(&mut head).await.is_err() {
                return;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if read.read_exact(&mut payload).await.is_err() {
                return;
            }
            match head[3] {
                RST_STREAM => resets += 1,
                GOAWAY if payload.len() >= 8 => {
                    goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                    return;
                }
                _ => {}
            }
        }
    })
    .await;
    let _ = writer.await;
    assert!(
        outcome.is_ok(),
        "the connection neither closed nor sent GOAWAY in 20 s"
    );
    assert_eq!(
        goaway,
        Some(ENHANCE_YOUR_CALM),
        "after {resets} resets the server did not send GOAWAY(ENHANCE_YOUR_CALM)"
    );
    assert!(resets <= 1024, "{resets} resets before GOAWAY (limit 1024)");
    // The server itself is fine.
    HealthClient::new(server.channel())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_holds_at_most_the_namespace_buffer() -> anyhow::Result<()> {
    const LIMIT: u64 = 1024 * 1024;
    const MESSAGES: usize = 200;
    const SIZE: usize = 64 * 1024;
    let server = start(&format!(
        r#"
[runtime.limits]
max_buffered_bytes = {LIMIT}

[backends.mem]
type = "memstore"

[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "mem" }}

[namespaces.small]
pattern = "pubsub"
slots = {{ pubsub = "mem" }}
limits = {{ max_buffered_messages = 8 }}
"#
    ))
    .await?;
    let mut client = server.pubsub("events");
    // The pattern plans the buffer the client asks for (65 536 messages,
    // 4 GiB of these): the host's byte quota is what bounds it.
    let mut sub = Sub::open(
        &mut client,
        pb::SubscribeRequest {
            buffer: 65_536,
            slow_consumer: pb::SlowConsumerPolicy::DropOldest as i32,
            ..subscribe_request("t")
        },
    )
    .await?;
    let payload = vec![7u8; SIZE];
    for _ in 0..MESSAGES {
        client.publish(publish_request("t", &payload)).await?;
    }
    let admission = server.namespaces().get("events")?.admission.clone();
    // Wait for the pump to settle (two equal readings), checking the bound
    // at every reading.
    let (settled, most) = settle(&admission).await;
    assert!(settled, "nothing settled in the outbox");
    let one = (SIZE + 200) as u64;
    assert!(
        most <= LIMIT + one,
        "the namespace held {most} bytes for one subscriber (max_buffered_bytes = {LIMIT})"
    );

    // Every message is delivered or counted as dropped: exactly.
    let mut delivered = 0usize;
    while delivered + (sub.dropped as usize) < MESSAGES {
        match sub.next(Duration::from_secs(5)).await? {
            Some(m) => {
                assert_eq!(m.payload.len(), SIZE);
                delivered += 1;
            }
            None => break,
        }
    }
    assert_eq!(
        delivered + sub.dropped as usize,
        MESSAGES,
        "delivered {delivered}, dropped {}",
        sub.dropped
    );
    assert!(
        sub.dropped > 0,
        "nothing was dropped: the bound never applied"
    );
    // Read: the namespace holds nothing now.
    assert!(
        eventually(Duration::from_secs(5), || {
            let held = admission.buffered_bytes();
            async move { held == 0 }
        })
        .await,
        "{} bytes still charged after the client read everything",
        admission.buffered_bytes()
    );

    // max_buffered_messages: at most 8 wait, whatever the pattern planned.
    let mut small = server.pubsub("small");
    let _sub = Sub::open(
        &mut small,
        pb::SubscribeRequest {
            buffer: 65_536,
            ..subscribe_request("t")
        },
    )
    .await?;
    let kib = vec![1u8; 1024];
    for _ in 0..5_000 {
        small.publish(publish_request("t", &kib)).await?;
    }
    let admission = server.namespaces().get("small")?.admission.clone();
    let (settled, most) = settle(&admission).await;
    assert!(settled, "nothing settled in the small outbox");
    // Each 1 KiB message is charged under 1.2 KiB (payload, id, topic, overhead).
    assert!(
        most <= 8 * 1_200,
        "{most} bytes waiting: more than 8 messages of 1 KiB"
    );
    server.stop().await
}

/// An auth-on server with Admin and the issuer's keys.
fn admin_config(issuer: &Issuer, state_dir: &std::path::Path) -> String {
    format!(
        r#"
[auth]
mode = "jwt"
issuer = "{}"
audience = "prism"

[admin]
state_dir = "{}"

[backends.mem]
type = "memstore"

[namespaces.orders]
pattern = "keyvalue"
slots = {{ kv = "mem" }}
limits = {{ max_stored_keys = 10, requests_per_second = 50 }}

[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "mem" }}
"#,
        issuer.url,
        state_dir.display()
    )
}

async fn limits_of(
    admin: &mut AdminClient<Channel>,
    name: &str,
    token: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let info = admin
        .get_namespace(request(
            pb::GetNamespaceRequest { name: name.into() },
            name,
            Some(token),
        ))
        .await?
        .into_inner();
    Ok(info.limits)
}

async fn delete_and_create(
    admin: &mut AdminClient<Channel>,
    name: &str,
    token: &str,
) -> anyhow::Result<()> {
    admin
        .delete_namespace(request(
            pb::DeleteNamespaceRequest {
                name: name.into(),
                purge: true,
            },
            name,
            Some(token),
        ))
        .await?;
    admin
        .create_namespace(request(
            pb::CreateNamespaceRequest {
                name: name.into(),
                pattern: "keyvalue".into(),
                slots: [("kv".to_string(), "mem".to_string())].into(),
                ..Default::default()
            },
            name,
            Some(token),
        ))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_admin_cannot_shed_limits_by_deleting_and_creating() -> anyhow::Result<()> {
    let issuer = Issuer::start(None).await?;
    let state = tempfile::tempdir()?;
    let server = start(&admin_config(&issuer, state.path())).await?;
    let mut admin = AdminClient::new(server.channel());
    let tenant = issuer.mint("tenant", &["orders:admin", "scratch:admin"])?;
    let operator = issuer.mint("operator", &["*:admin"])?;

    // Limits from the config file.
    let before = limits_of(&mut admin, "orders", &tenant).await?;
    assert_eq!(
        before.get("max_stored_keys").map(String::as_str),
        Some("10")
    );
    delete_and_create(&mut admin, "orders", &tenant).await?;
    let after = limits_of(&mut admin, "orders", &tenant).await?;
    assert_eq!(
        after.get("max_stored_keys").map(String::as_str),
        Some("10"),
        "{after:?}"
    );
    assert_eq!(
        after.get("requests_per_second").map(String::as_str),
        Some("50"),
        "{after:?}"
    );

    // Limits an operator set through Admin.
    admin
        .create_namespace(request(
            pb::CreateNamespaceRequest {
                name: "scratch".into(),
                pattern: "keyvalue".into(),
                slots: [("kv".to_string(), "mem".to_string())].into(),
                limits: [("max_stored_keys".to_string(), "3".to_string())].into(),
                ..Default::default()
            },
            "scratch",
            Some(&operator),
        ))
        .await?;
    delete_and_create(&mut admin, "scratch", &tenant).await?;
    let kept = limits_of(&mut admin, "scratch", &tenant).await?;
    assert_eq!(
        kept.get("max_stored_keys").map(String::as_str),
        Some("3"),
        "{kept:?}"
    );
    // And they hold: a fourth key is refused.
    let mut kv = pb::key_value_client::KeyValueClient::new(server.channel());
    let writer = issuer.mint("writer", &["scratch"])?;
    for i in 0..3 {
        kv.set(request(
            pb::SetRequest {
                key: format!("k{i}"),
                value: b"v".to_vec(),
                ttl_ms: None,
            },
            "scratch",
            Some(&writer),
        ))
        .await?;
    }
    let fourth = kv
        .set(request(
            pb::SetRequest {
                key: "k3".into(),
                value: b"v".to_vec(),
                ttl_ms: None,
            },
            "scratch",
            Some(&writer),
        ))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a fourth key was stored past max_stored_keys = 3"))?;
    assert_eq!(fourth.code(), Code::ResourceExhausted, "{fourth:?}");

    // A namespace admin does not see where backends run.
    let info = admin
        .get_namespace(request(
            pb::GetNamespaceRequest {
                name: "scratch".into(),
            },
            "scratch",
            Some(&tenant),
        ))
        .await?
        .into_inner();
    for slot in &info.slots {
        assert_eq!(
            slot.summary,
            format!("backend '{}'", slot.backend),
            "{slot:?}"
        );
    }
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principal_cannot_ack_or_end_a_subscription() -> anyhow::Result<()> {
    let issuer = Issuer::start(None).await?;
    let state = tempfile::tempdir()?;
    let server = start(&admin_config(&issuer, state.path())).await?;
    let alice = issuer.mint("alice", &["events:read"])?;
    let mallory = issuer.mint("mallory", &["events:read"])?;
    let publisher = issuer.mint("publisher", &["events"])?;
    let mut client = PubSubClient::new(server.channel());

    let mut stream = client
        .subscribe(request(subscribe_request("t"), "events", Some(&alice)))
        .await?
        .into_inner();
    let id = match tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await??
        .and_then(|f| f.event)
    {
        Some(pb::subscribe_response::Event::Subscribed(s)) => s.subscription_id,
        other => anyhow::bail!("first frame was not the confirmation: {other:?}"),
    };
    // 128 random bits: nothing to count up from.
    let secret = id.strip_prefix("sub-").unwrap_or_default();
    assert_eq!(secret.len(), 32, "{id}");
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()), "{id}");

    let ack = client
        .ack(request(
            pb::AckRequest {
                subscription_id: id.clone(),
                message_ids: vec!["x".into()],
            },
            "events",
            Some(&mallory),
        ))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("mallory acked alice's subscription"))?;
    assert_eq!(ack.code(), Code::NotFound, "{ack:?}");
    let end = client
        .unsubscribe(request(
            pb::UnsubscribeRequest {
                subscription_id: id.clone(),
            },
            "events",
            Some(&mallory),
        ))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("mallory ended alice's subscription"))?;
    assert_eq!(end.code(), Code::NotFound, "{end:?}");

    // Alice's subscription is untouched: it still delivers.
    client
        .publish(request(
            publish_request("t", b"still here"),
            "events",
            Some(&publisher),
        ))
        .await?;
    let delivered = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("alice's stream ended"))?;
        if let Some(pb::subscribe_response::Event::Messages(batch)) = frame.event
            && let Some(m) = batch.messages.into_iter().next()
        {
            break m;
        }
    };
    assert_eq!(delivered.payload.as_ref(), b"still here");

    // Alice may end her own.
    client
        .unsubscribe(request(
            pb::UnsubscribeRequest {
                subscription_id: id,
            },
            "events",
            Some(&alice),
        ))
        .await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message()).await??;
    assert!(ended.is_none(), "alice's stream did not end: {ended:?}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_for_other_subjects_is_never_attached() -> anyhow::Result<()> {
    let nats = prism_acceptance::NatsServer::start().await?;
    let server = start(&format!(
        r#"
[backends.bus]
type = "nats"
url = "{}"
jetstream = true

[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "bus" }}
"#,
        nats.url()
    ))
    .await?;
    let mut client = server.pubsub("events");
    // The stream exists once Prism has published.
    client.publish(publish_request("t", b"first")).await?;

    // Someone (another tenant's group, by a name collision, or by hand)
    // holds a consumer under the very name Prism would use, reading
    // another namespace's subject.
    let name = prism::backend::nats::broker::durable_name("workers", "prism.events.t");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = js.get_stream("PRISM").await?;
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: "prism.other.t".into(),
            ..Default::default()
        })
        .await?;

    let refused = client
        .subscribe(pb::SubscribeRequest {
            group: "workers".into(),
            ..subscribe_request("t")
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("the group attached to a consumer of another subject"))?;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains(&name), "{refused:?}");

    // Names: the group readable, the rest a hash of subject and group, so
    // neither another namespace nor a crafted group can land on it.
    assert!(name.starts_with("workers-"), "{name}");
    assert_ne!(
        name,
        prism::backend::nats::broker::durable_name("workers", "prism.other.t")
    );
    let crafted = prism::backend::nats::broker::durable_name("a.b > $JS.API", "prism.events.t");
    assert!(
        crafted
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{crafted}"
    );

    // Another group on the same topic works.
    let mut sub = Sub::open(
        &mut client,
        pb::SubscribeRequest {
            group: "others".into(),
            ..subscribe_request("t")
        },
    )
    .await?;
    client.publish(publish_request("t", b"second")).await?;
    let got = sub.next(Duration::from_secs(10)).await?;
    assert_eq!(got.map(|m| m.payload.to_vec()), Some(b"second".to_vec()));
    server.stop().await
}

/// A Prism whose `events` PubSub namespace is on Redis pub/sub with this
/// channel prefix.
async fn on_redis(url: &str, prefix: &str) -> anyhow::Result<prism_acceptance::TestServer> {
    start(&format!(
        r#"
[backends.bus]
type = "redis"
url = "{url}"
channel_prefix = "{prefix}"

[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "bus" }}
"#
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_with_their_own_channel_prefix_do_not_hear_each_other() -> anyhow::Result<()> {
    let redis = prism_acceptance::RedisServer::start().await?;
    let a = on_redis(&redis.url(), "a:").await?;
    let a_too = on_redis(&redis.url(), "a:").await?;
    let b = on_redis(&redis.url(), "b:").await?;
    let mut same = Sub::open(&mut a_too.pubsub("events"), subscribe_request("t")).await?;
    let mut other = Sub::open(&mut b.pubsub("events"), subscribe_request("t")).await?;

    a.pubsub("events")
        .publish(publish_request("t", b"for a"))
        .await?;
    // The same prefix hears it: it was published and delivered.
    let heard = same.next(Duration::from_secs(10)).await?;
    assert_eq!(heard.map(|m| m.payload.to_vec()), Some(b"for a".to_vec()));
    // The other deployment's next message is its own: Redis delivers in
    // publish order, so "for a" would have come first had it been heard.
    b.pubsub("events")
        .publish(publish_request("t", b"for b"))
        .await?;
    let first = other.next(Duration::from_secs(10)).await?;
    assert_eq!(first.map(|m| m.payload.to_vec()), Some(b"for b".to_vec()));
    a.stop().await?;
    a_too.stop().await?;
    b.stop().await
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> String {
    let client_ca = client_ca
        .map(|ca| format!("tls_client_ca = \"{}\"\n", ca.display()))
        .unwrap_or_default();
    format!(
        r#"
[server]
tls_cert = "{}"
tls_key = "{}"
{client_ca}
[backends.mem]
type = "memstore"

[namespaces.orders]
pattern = "keyvalue"
slots = {{ kv = "mem" }}
"#,
        cert.display(),
        key.display()
    )
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_lazy())
}

async fn set_and_get(channel: Channel) -> Result<Vec<u8>, tonic::Status> {
    let mut kv = pb::key_value_client::KeyValueClient::new(channel);
    kv.set(request(
        pb::SetRequest {
            key: "k".into(),
            value: b"over tls".to_vec(),
            ttl_ms: None,
        },
        "orders",
        None,
    ))
    .await?;
    Ok(kv
        .get(request(pb::GetRequest { key: "k".into() }, "orders", None))
        .await?
        .into_inner()
        .value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_serves_tls_and_refuses_plaintext() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [ca, cert, key, client_cert, client_key] = prism_acceptance::tls::test_pki(dir.path())?;

    let server = start(&tls_config(&cert, &key, None)).await?;
    let value = set_and_get(tls_channel(server.addr(), &ca, None).await?).await?;
    assert_eq!(value, b"over tls");
    // Plain HTTP/2 (a token would cross in clear): no call gets through.
    let plain = Channel::from_shared(format!("http://{}", server.addr()))?.connect_lazy();
    let mut kv = pb::key_value_client::KeyValueClient::new(plain);
    let written = kv
        .set(request(
            pb::SetRequest {
                key: "plain".into(),
                value: b"in clear".to_vec(),
                ttl_ms: None,
            },
            "orders",
            None,
        ))
        .await;
    assert!(
        written.is_err(),
        "a plaintext call was served by a TLS listener"
    );
    // And nothing it sent took effect.
    let mut over_tls =
        pb::key_value_client::KeyValueClient::new(tls_channel(server.addr(), &ca, None).await?);
    let absent = over_tls
        .get(request(
            pb::GetRequest {
                key: "plain".into(),
            },
            "orders",
            None,
        ))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("the plaintext write was stored"))?;
    assert_eq!(absent.code(), Code::NotFound, "{absent:?}");
    server.stop().await?;

    // Mutual TLS: a client without a certificate from the CA is refused.
    let server = start(&tls_config(&cert, &key, Some(&ca))).await?;
    let anonymous = set_and_get(tls_channel(server.addr(), &ca, None).await?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a client without a certificate was served"))?;
    assert!(refused_by_transport(&anonymous), "{anonymous:?}");
    let value =
        set_and_get(tls_channel(server.addr(), &ca, Some((&client_cert, &client_key))).await?)
            .await?;
    assert_eq!(value, b"over tls");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_publish_stream_counts_against_max_subscriptions() -> anyhow::Result<()> {
    let server = start(
        r#"
[backends.mem]
type = "memstore"

[namespaces.events]
pattern = "pubsub"
slots = { pubsub = "mem" }
limits = { max_subscriptions = 1 }
"#,
    )
    .await?;
    let mut client = server.pubsub("events");
    // A publish stream that stays open: one request answered, then idle.
    let (requests, inbound) = tokio::sync::mpsc::channel::<pb::PublishStreamRequest>(4);
    requests
        .send(pb::PublishStreamRequest {
            sequence: 1,
            topic: "t".into(),
            messages: vec![pb::BatchMessage {
                payload: b"m".to_vec(),
                ..Default::default()
            }],
        })
        .await?;
    let mut answers = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(inbound))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), answers.message()).await??;
    assert_eq!(first.map(|a| a.sequence), Some(1));

    // It holds the namespace's one stream: a subscription is refused.
    let refused = client
        .subscribe(subscribe_request("t"))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a subscription opened beside the publish stream"))?;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_subscriptions"),
        "{refused:?}"
    );

    // Closed, it frees the place.
    drop(requests);
    let ended = tokio::time::timeout(Duration::from_secs(10), answers.message()).await??;
    assert!(ended.is_none(), "the publish stream did not end: {ended:?}");
    let reopened = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { Sub::open(&mut client, subscribe_request("t")).await.is_ok() }
    })
    .await;
    assert!(reopened, "the publish stream's place was never freed");
    server.stop().await
}

/// Uploads `file` as the holder of `token`, in 100 kB chunks.
async fn upload_as(
    admin: &mut AdminClient<Channel>,
    file: &std::path::Path,
    token: &str,
) -> Result<pb::PatternInfo, tonic::Status> {
    let bytes = std::fs::read(file).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let chunks: Vec<pb::UploadPatternChunk> = bytes
        .chunks(100_000)
        .map(|data| pb::UploadPatternChunk {
            label: String::new(),
            data: data.to_vec(),
        })
        .collect();
    admin
        .upload_pattern(request(tokio_stream::iter(chunks), "", Some(token)))
        .await
        .map(tonic::Response::into_inner)
}

async fn listed_as(
    admin: &mut AdminClient<Channel>,
    token: &str,
) -> anyhow::Result<Vec<pb::PatternInfo>> {
    Ok(admin
        .list_patterns(request(pb::ListPatternsRequest {}, "", Some(token)))
        .await?
        .into_inner()
        .patterns)
}

async fn deploy_as(
    admin: &mut AdminClient<Channel>,
    namespace: &str,
    digest: &str,
    token: &str,
) -> Result<pb::NamespaceInfo, tonic::Status> {
    admin
        .deploy_pattern(request(
            pb::DeployPatternRequest {
                namespace: namespace.into(),
                pattern: digest.into(),
                ..Default::default()
            },
            namespace,
            Some(token),
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn delete_as(
    admin: &mut AdminClient<Channel>,
    digest: &str,
    token: &str,
) -> Result<bool, tonic::Status> {
    admin
        .delete_pattern(request(
            pb::DeletePatternRequest {
                digest: digest.into(),
            },
            "",
            Some(token),
        ))
        .await
        .map(|r| r.into_inner().removed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_upload_is_out_of_reach_and_uploads_are_capped() -> anyhow::Result<()> {
    let issuer = Issuer::start(None).await?;
    let state = tempfile::tempdir()?;
    let config = admin_config(&issuer, state.path())
        .replace("[admin]\n", "[admin]\nmax_uploads_per_namespace = 2\n");
    let server = start(&config).await?;
    let mut admin = AdminClient::new(server.channel());
    let orders_admin = issuer.mint("alice", &["orders:admin"])?;
    let scratch_admin = issuer.mint("bob", &["scratch:admin"])?;
    let operator = issuer.mint("operator", &["*:admin"])?;
    admin
        .create_namespace(request(
            pb::CreateNamespaceRequest {
                name: "scratch".into(),
                pattern: "keyvalue".into(),
                slots: [("kv".to_string(), "mem".to_string())].into(),
                ..Default::default()
            },
            "scratch",
            Some(&operator),
        ))
        .await?;
    let faulty = prism_acceptance::guest_component("test_faulty");
    let keyvalue = prism_acceptance::guest_component("keyvalue");
    let pubsub = prism_acceptance::guest_component("pubsub");

    let mine = upload_as(&mut admin, &faulty, &orders_admin).await?;
    assert_eq!(mine.scope, vec!["orders".to_string()]);

    // Bob's namespace neither sees, deploys nor deletes Alice's upload.
    let bobs_view = listed_as(&mut admin, &scratch_admin).await?;
    assert!(
        bobs_view.iter().all(|p| p.digest != mine.digest),
        "another tenant's upload is listed: {bobs_view:?}"
    );
    let deployed = deploy_as(&mut admin, "scratch", &mine.digest, &scratch_admin).await;
    assert_eq!(
        deployed.as_ref().err().map(tonic::Status::code),
        Some(Code::NotFound),
        "{deployed:?}"
    );
    let deleted = delete_as(&mut admin, &mine.digest, &scratch_admin).await;
    assert_eq!(
        deleted.as_ref().err().map(tonic::Status::code),
        Some(Code::NotFound),
        "{deleted:?}"
    );
    // Not even by a prefix of its digest.
    let by_prefix = delete_as(&mut admin, &mine.digest[..12], &scratch_admin).await;
    assert_eq!(
        by_prefix.as_ref().err().map(tonic::Status::code),
        Some(Code::NotFound),
        "{by_prefix:?}"
    );

    // Alice deploys it; then it cannot be deleted from under her namespace.
    deploy_as(&mut admin, "orders", &mine.digest, &orders_admin).await?;
    let in_use = delete_as(&mut admin, &mine.digest, &orders_admin)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("{}", "a deployed pattern was deleted"))?;
    assert_eq!(in_use.code(), Code::FailedPrecondition, "{in_use:?}");
    assert!(
        in_use.message().contains("'orders'"),
        "{}",
        in_use.message()
    );

    // Two uploads per namespace: the third is refused, naming the limit.
    let second = upload_as(&mut admin, &keyvalue, &orders_admin).await?;
    let third = upload_as(&mut admin, &pubsub, &orders_admin)
        .await
        .err()
        .ok_or_else(|| {
            anyhow::anyhow!("{}", "a third upload passed max_uploads_per_namespace = 2")
        })?;
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(
        third.message().contains("max_uploads_per_namespace"),
        "{}",
        third.message()
    );
    // Deleting an unused one makes room.
    assert!(delete_as(&mut admin, &second.digest, &orders_admin).await?);
    upload_as(&mut admin, &pubsub, &orders_admin).await?;

    // The same bytes uploaded by Bob: his namespace joins the scope, each
    // tenant is shown only its own, the operator sees both.
    let his = upload_as(&mut admin, &faulty, &scratch_admin).await?;
    assert_eq!(his.digest, mine.digest);
    assert_eq!(his.scope, vec!["scratch".to_string()]);
    deploy_as(&mut admin, "scratch", &mine.digest, &scratch_admin).await?;
    let alices_view = listed_as(&mut admin, &orders_admin).await?;
    let alices = alices_view
        .iter()
        .find(|p| p.digest == mine.digest)
        .ok_or_else(|| anyhow::anyhow!("Alice lost her upload"))?;
    assert_eq!(alices.scope, vec!["orders".to_string()]);
    let all = listed_as(&mut admin, &operator).await?;
    let shared = all
        .iter()
        .find(|p| p.digest == mine.digest)
        .ok_or_else(|| anyhow::anyhow!("the operator does not see the upload"))?;
    assert_eq!(
        shared.scope,
        vec!["orders".to_string(), "scratch".to_string()]
    );
    server.stop().await
}

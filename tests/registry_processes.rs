//! Two `prism` processes on one Redis (registry) and one NATS (messaging)
//! form one registry: an identity registered through one is enumerated and
//! multicast to through the other, and its listener on the first receives
//! it. Killing Redis in the middle of multicasting gives UNAVAILABLE naming
//! the backend, and both processes recover by themselves when it is back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prism::pb::registry_client::RegistryClient;
use prism_acceptance::binary::PrismProcess;
use prism_acceptance::registry::{Inbox, filter, map};
use prism_acceptance::servers::{NatsServer, RedisServer};
use prism_acceptance::{Namespace, RegClient, pb};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

async fn client(prism: &PrismProcess) -> anyhow::Result<RegClient> {
    let channel = Channel::from_shared(format!("http://{}", prism.addr))?
        .connect()
        .await?;
    Ok(RegistryClient::with_interceptor(
        channel,
        Namespace::new("devices"),
    ))
}

async fn register(
    c: &RegClient,
    identity: &str,
    metadata: serde_json::Value,
) -> anyhow::Result<()> {
    c.clone()
        .register(pb::RegisterRequest {
            identity: identity.into(),
            metadata: Some(map(metadata)),
            ttl_ms: None,
            replace: true,
        })
        .await?;
    Ok(())
}

async fn enumerate(c: &RegClient) -> Result<Vec<String>, tonic::Status> {
    let page = c
        .clone()
        .enumerate(pb::EnumerateRequest::default())
        .await?
        .into_inner();
    Ok(page.identities.into_iter().map(|i| i.identity).collect())
}

async fn multicast(
    c: &RegClient,
    f: serde_json::Value,
    payload: &[u8],
) -> Result<pb::MulticastResponse, tonic::Status> {
    c.clone()
        .multicast(pb::MulticastRequest {
            filter: filter(f),
            payload: payload.to_vec(),
            metadata: HashMap::new(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_form_one_registry_and_survive_a_redis_restart() -> anyhow::Result<()> {
    let mut redis = RedisServer::start_durable().await?;
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("prism.toml");
    std::fs::write(
        &config,
        format!(
            "[backends.reg]\ntype = \"redis\"\nurl = \"{}\"\ntimeout_ms = 500\n\
             [backends.bus]\ntype = \"nats\"\nurl = \"{}\"\n\
             [namespaces.devices]\npattern = \"multicast-registry\"\nslots = {{ registry = \"reg\", messaging = \"bus\" }}\n",
            redis.url(),
            nats.url()
        ),
    )?;
    let config = config.display().to_string();
    let args = [
        "serve",
        "--config",
        config.as_str(),
        "--listen",
        "127.0.0.1:0",
    ];
    let (one, two) = (
        PrismProcess::start(&args).await?,
        PrismProcess::start(&args).await?,
    );
    let (a, b) = (client(&one).await?, client(&two).await?);

    // Registered on one, seen and targeted from the other; the listener on
    // the first receives what the second multicasts.
    register(&a, "sensor-1", json!({"type": "sensor", "floor": 1})).await?;
    let mut inbox = Inbox::open(&mut a.clone(), "sensor-1").await?;
    anyhow::ensure!(enumerate(&b).await? == vec!["sensor-1".to_string()]);
    let r = multicast(&b, json!({"type": "sensor"}), b"from-two").await?;
    anyhow::ensure!(r.target_count == 1 && r.delivered_count == 1, "{r:?}");
    let got = inbox.next(Duration::from_secs(5)).await?;
    anyhow::ensure!(
        got.as_ref().is_some_and(|m| m.payload[..] == *b"from-two"),
        "the listener on process one got {got:?}"
    );
    register(&b, "sensor-2", json!({"type": "sensor", "floor": 2})).await?;
    anyhow::ensure!(
        enumerate(&a).await?.len() == 2,
        "process one does not see sensor-2"
    );

    // The listener's inbox is read throughout, so that what it received
    // can be matched, one for one, with the multicasts that answered OK.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match inbox.next(Duration::from_millis(500)).await? {
                Some(m) => got.push(String::from_utf8_lossy(&m.payload).into_owned()),
                None if *stopped.borrow() => return anyhow::Ok(got),
                None => {}
            }
        }
    });

    // Redis dies while process two multicasts in a loop (each payload
    // numbered, so a delivery names the call it came from).
    let outcomes = tokio::spawn({
        let b = b.clone();
        async move {
            let mut seen = Vec::new();
            let until = Instant::now() + Duration::from_secs(4);
            let mut n = 0;
            while Instant::now() < until {
                let started = Instant::now();
                let payload = format!("loop-{n}");
                n += 1;
                let r = multicast(&b, json!({"type": "sensor"}), payload.as_bytes()).await;
                seen.push((
                    payload,
                    started.elapsed(),
                    r.map_err(|s| (s.code(), s.message().to_string())),
                ));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart().await?;
    let outcomes = outcomes.await?;
    let port = redis.port();
    let mut unavailable = 0;
    // Delivered to the listener: every OK multicast (it targeted both).
    let mut expected: Vec<String> = Vec::new();
    for (payload, took, outcome) in &outcomes {
        match outcome {
            Ok(r) => {
                anyhow::ensure!(r.target_count == 2 && r.delivered_count == 2, "{r:?}");
                expected.push(payload.clone());
            }
            Err((code, message)) => {
                anyhow::ensure!(*code == Code::Unavailable, "{code:?}: {message}");
                anyhow::ensure!(
                    message.contains(&format!("Redis 'reg' at 127.0.0.1:{port}")),
                    "backend not named: {message}"
                );
                unavailable += 1;
            }
        }
        anyhow::ensure!(
            *took < Duration::from_secs(3),
            "a multicast hung for {took:?}"
        );
    }
    anyhow::ensure!(unavailable > 0, "the outage was never seen");
    println!(
        "multicast through a Redis kill: {} calls, {unavailable} UNAVAILABLE naming the backend",
        outcomes.len()
    );
    // Both processes recover with no restart (the identities were persisted).
    // A recovery attempt that answered OK with fewer targets may or may not
    // have reached the listener; one that reached both must have.
    let mut maybe: Vec<String> = Vec::new();
    let mut attempt = 0;
    for c in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let payload = format!("after-{attempt}");
            attempt += 1;
            match multicast(c, json!({"type": "sensor"}), payload.as_bytes()).await {
                Ok(r) if r.target_count == 2 && r.delivered_count == 2 => {
                    expected.push(payload);
                    break;
                }
                Ok(_) if Instant::now() < deadline => {
                    maybe.push(payload);
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => anyhow::bail!("no recovery after the restart: {other:?}"),
            }
        }
    }
    let _ = stop.send(true);
    let got = reader.await??;
    let mut counted: HashMap<&str, usize> = HashMap::new();
    for payload in &got {
        *counted.entry(payload.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counted.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|p| !counted.contains_key(p.as_str()))
        .collect();
    let unasked: Vec<_> = counted
        .keys()
        .filter(|p| !expected.iter().any(|e| e == *p) && !maybe.iter().any(|m| m == *p))
        .collect();
    println!(
        "listener: {} OK multicasts to match, {} received ({} more attempts may have reached it)",
        expected.len(),
        got.len(),
        maybe.len()
    );
    anyhow::ensure!(
        twice.is_empty() && missing.is_empty() && unasked.is_empty(),
        "the listener's deliveries do not match the OK multicasts: duplicated {twice:?}, missing {missing:?}, never answered OK {unasked:?}"
    );
    for p in [one, two] {
        let status = p.terminate(Duration::from_secs(30)).await?;
        anyhow::ensure!(status.success(), "prism exited with {status}");
    }
    Ok(())
}

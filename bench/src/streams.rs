//! Redis Streams PubSub: delivered messages per second from one publisher
//! to 1 and 10 subscribers through Prism (`stream = true`, its own process)
//! against redis-rs straight to the same redis-server doing what Prism's
//! backend does: pipelined XADD from one connection, and each subscriber
//! reading XREAD COUNT 256 BLOCK on a connection of its own. Warm-up, then
//! interleaved rounds; only messages received count.

use std::time::{Duration, Instant};

use prism_acceptance::pubsub::pubsub_config;
use prism_acceptance::servers::RedisServer;
use redis::AsyncConnectionConfig;
use redis::streams::StreamReadReply;

use crate::load;
use crate::procs::Server;
use crate::pubsub::{BATCH, Fanout, Publish, counters, finish, messages_for, prism_fanout, rounds};
use crate::report::{Report, Row};

pub async fn rows(report: &mut Report, payload: &[u8], quick: bool) -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let backend = format!(
        "[backends.bus]\ntype = \"redis\"\nurl = \"{}\"\nstream = true\n",
        redis.url()
    );
    let prism = Server::prism(&pubsub_config(&backend, &["bench"], "")).await?;
    let on_streams = load::client(prism.addr).await?.pub_sub("bench");
    let client = redis::Client::open(redis.url())?;
    let rounds = rounds(quick);
    for subscribers in [1usize, 10] {
        let n = messages_for(subscribers, quick);
        direct_fanout(&client, subscribers, n / 10, payload).await?;
        prism_fanout(&on_streams, subscribers, n / 10, payload, Publish::Stream).await?;
        let (mut base, mut ours) = (Fanout::default(), Fanout::default());
        for _ in 0..rounds {
            base.add(direct_fanout(&client, subscribers, n, payload).await?);
            ours.add(prism_fanout(&on_streams, subscribers, n, payload, Publish::Stream).await?);
        }
        anyhow::ensure!(
            !base.stalled && base.received == (n * subscribers * rounds) as u64,
            "baseline redis-rs streams 1->{subscribers} stalled: received {} of {}",
            base.received,
            n * subscribers * rounds
        );
        if ours.stalled {
            eprintln!(
                "warning: prism_redis_streams 1->{subscribers} stalled: received {} of {}",
                ours.received,
                n * subscribers * rounds
            );
        }
        report.push(Row::new(
            format!("prism_redis_streams_delivered_1to{subscribers}"),
            ours.rate(),
            "msg/s",
            format!("redis_rs_direct_streams_delivered_1to{subscribers}"),
            base.rate(),
        ));
        report.push(Row::target(
            format!("prism_redis_streams_dropped_1to{subscribers}"),
            ours.dropped as f64,
            "msg",
            "target_dropped",
            0.0,
        ));
    }
    prism.stop().await?;
    Ok(())
}

async fn direct_fanout(
    client: &redis::Client,
    subscribers: usize,
    n: usize,
    payload: &[u8],
) -> anyhow::Result<Fanout> {
    let key = format!("bench-direct:{subscribers}:{}", prism::clock::now_ms());
    let received = counters(subscribers);
    let dropped = counters(subscribers);
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    let mut tasks = Vec::new();
    for counter in &received {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let (key, counter) = (key.clone(), counter.clone());
        // A fresh key read from its start: no message can be missed.
        tasks.push(tokio::spawn(async move {
            let mut last = "0-0".to_string();
            loop {
                let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(256)
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&last)
                    .query_async(&mut conn)
                    .await;
                let Ok(reply) = reply else { return };
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    last = entry.id;
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    let mut publisher = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let count = BATCH.min(n - sent);
        let mut pipe = redis::pipe();
        for _ in 0..count {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("payload")
                .arg(payload)
                .ignore();
        }
        pipe.query_async::<()>(&mut publisher).await?;
        sent += count;
    }
    Ok(finish(&received, &dropped, n, started, tasks).await)
}

//! PubSub helpers for the suites: the brokers under test, and a subscriber
//! that reads the stream's batches one message at a time.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use anyhow::{Context, bail};
use prism::pb;
use tonic::Streaming;

use crate::nats_server::NatsServer;
use crate::prism_server::{PsClient, TestServer, start};
use crate::redis_server::RedisServer;

/// One broker the PubSub acceptance part runs against.
pub struct BrokerUnderTest {
    pub name: &'static str,
    kind: Broker,
}

enum Broker {
    Mem,
    Nats(NatsServer),
    JetStream(NatsServer),
    Redis(RedisServer),
    RedisStreams(RedisServer),
}

impl BrokerUnderTest {
    /// Every pubsub backend: embedded, NATS core, NATS JetStream, Redis
    /// pub/sub, Redis Streams —
    /// real servers on free ports.
    pub async fn all() -> anyhow::Result<Vec<BrokerUnderTest>> {
        Ok(vec![
            BrokerUnderTest {
                name: "memstore",
                kind: Broker::Mem,
            },
            BrokerUnderTest {
                name: "nats",
                kind: Broker::Nats(NatsServer::start().await?),
            },
            BrokerUnderTest {
                name: "jetstream",
                kind: Broker::JetStream(NatsServer::start().await?),
            },
            BrokerUnderTest {
                name: "redis",
                kind: Broker::Redis(RedisServer::start().await?),
            },
            BrokerUnderTest {
                name: "redis-streams",
                kind: Broker::RedisStreams(RedisServer::start().await?),
            },
        ])
    }

    pub fn backend_toml(&self) -> String {
        match &self.kind {
            Broker::Mem => "[backends.bus]\ntype = \"memstore\"\n".into(),
            Broker::Nats(n) => format!("[backends.bus]\ntype = \"nats\"\nurl = \"{}\"\n", n.url()),
            Broker::JetStream(n) => format!(
                "[backends.bus]\ntype = \"nats\"\nurl = \"{}\"\njetstream = true\nack_wait_ms = 2000\n",
                n.url()
            ),
            Broker::Redis(r) => {
                format!("[backends.bus]\ntype = \"redis\"\nurl = \"{}\"\n", r.url())
            }
            Broker::RedisStreams(r) => format!(
                "[backends.bus]\ntype = \"redis\"\nurl = \"{}\"\nstream = true\nack_wait_ms = 2000\n",
                r.url()
            ),
        }
    }

    /// A fresh Prism whose `namespaces` (PubSub, `extra_settings` lines in
    /// each one's settings table) all use this broker.
    pub async fn start_prism(
        &self,
        namespaces: &[&str],
        extra_settings: &str,
    ) -> anyhow::Result<TestServer> {
        start(&pubsub_config(
            &self.backend_toml(),
            namespaces,
            extra_settings,
        ))
        .await
    }
}

/// A config with PubSub namespaces on the `[backends.bus]` table given.
pub fn pubsub_config(backend_toml: &str, namespaces: &[&str], extra_settings: &str) -> String {
    let mut toml = backend_toml.to_string();
    for ns in namespaces {
        toml.push_str(&format!(
            "\n[namespaces.{ns}]\npattern = \"pubsub\"\nslots = {{ pubsub = \"bus\" }}\n[namespaces.{ns}.settings]\n{extra_settings}\n"
        ));
    }
    toml
}

pub fn subscribe_request(topic: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        topic: topic.into(),
        ..Default::default()
    }
}

/// A publish with metadata.
pub fn publish_with(topic: &str, payload: &[u8], metadata: &[(&str, &str)]) -> pb::PublishRequest {
    pb::PublishRequest {
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..publish_request(topic, payload)
    }
}

pub fn publish_request(topic: &str, payload: &[u8]) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: topic.into(),
        payload: payload.to_vec(),
        metadata: HashMap::new(),
    }
}

/// A live subscription, confirmed by its first frame.
pub struct Sub {
    pub id: String,
    stream: Streaming<pb::SubscribeResponse>,
    buffered: VecDeque<pb::Message>,
    pub dropped: u64,
}

impl Sub {
    pub async fn open(client: &mut PsClient, request: pb::SubscribeRequest) -> anyhow::Result<Sub> {
        let mut stream = client.subscribe(request).await?.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .context("no subscription confirmation within 10 s")??;
        let id = match first.and_then(|f| f.event) {
            Some(pb::subscribe_response::Event::Subscribed(s)) => s.subscription_id,
            other => bail!("first frame was not the confirmation: {other:?}"),
        };
        Ok(Sub {
            id,
            stream,
            buffered: VecDeque::new(),
            dropped: 0,
        })
    }

    /// The next message, None if none arrives within `wait`; an error if the
    /// stream ended.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<pb::Message>> {
        loop {
            if let Some(m) = self.buffered.pop_front() {
                return Ok(Some(m));
            }
            let frame = match tokio::time::timeout(wait, self.stream.message()).await {
                Err(_) => return Ok(None),
                Ok(frame) => frame?,
            };
            // An ended stream is not "nothing arrived": an absence check on
            // a dead subscription must fail.
            let Some(frame) = frame else {
                bail!("the stream ended (the server closed it) while waiting for a message");
            };
            match frame.event {
                None => continue,
                Some(pb::subscribe_response::Event::Messages(batch)) => {
                    self.dropped += batch.dropped;
                    self.buffered.extend(batch.messages);
                }
                Some(other) => bail!("unexpected frame {other:?}"),
            }
        }
    }

    /// Exactly `n` messages, each within `wait` of the previous one.
    pub async fn take(&mut self, n: usize, wait: Duration) -> anyhow::Result<Vec<pb::Message>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(wait).await? {
                Some(m) => out.push(m),
                None => bail!(
                    "got {} of {n} messages, then nothing for {wait:?}",
                    out.len()
                ),
            }
        }
        Ok(out)
    }

    /// The status the stream ended with (Ok if it ended cleanly).
    pub async fn end(&mut self, wait: Duration) -> anyhow::Result<Result<(), tonic::Status>> {
        loop {
            match tokio::time::timeout(wait, self.stream.message()).await {
                Err(_) => bail!("stream did not end within {wait:?}"),
                Ok(Ok(None)) => return Ok(Ok(())),
                Ok(Ok(Some(_))) => continue,
                Ok(Err(status)) => return Ok(Err(status)),
            }
        }
    }
}

//! NATS: core NATS (at-most-once) and JetStream (at-least-once). One client
//! connection per backend, made on first use and kept by async-nats, which
//! reconnects and re-subscribes on its own, so subscribers resume after a
//! server restart without client action. Local plain subscribers of one
//! subject share one NATS subscription (`fanout.rs`).
//!
//! Scoping: topic `t` of namespace `ns` is subject `prism.<ns>.t`, with the
//! namespace's dots spelt ':' (namespace names have no ':'), so a namespace
//! name never reads as a subject token boundary; a namespace the backend's
//! `subjects` maps to a prefix uses `<prefix>.t` (an existing application's
//! subjects). Messages are plain NATS
//! messages with Prism's fields as headers (`wire.rs`), so NATS
//! applications publish and subscribe alongside Prism.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::fanout::Fanout;
use super::wire;
use crate::backend::BackendError;
use crate::backend::pubsub::{
    Acker, BrokerMessage, BrokerSubscription, Delivery, PubSubBackend, SlowConsumerPolicy,
    SubscribeOptions, TopicName,
};
use crate::config::NatsConfig;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NatsConfigError(String);

pub struct NatsBroker {
    /// "NATS 'bus' at 127.0.0.1:4222": never credentials.
    summary: String,
    config: NatsConfig,
    timeout: Duration,
    client: OnceCell<async_nats::Client>,
    /// The JetStream stream, once ensured.
    stream: OnceCell<stream::Stream>,
    /// Core NATS: one NATS subscription per subject for all its local
    /// plain subscribers.
    fanout: Fanout,
}

impl NatsBroker {
    /// `buffer`: the smallest ring local subscribers of a subject share.
    pub fn new(
        name: &str,
        config: &NatsConfig,
        buffer: usize,
    ) -> Result<Arc<NatsBroker>, NatsConfigError> {
        // The client reads these when it first connects (in the
        // background): a wrong path is reported now instead.
        let tls = config.tls();
        for (field, path) in [
            ("tls_ca", tls.ca),
            ("tls_cert", tls.cert),
            ("tls_key", tls.key),
        ] {
            if let Some(path) = path {
                std::fs::File::open(path).map_err(|e| {
                    NatsConfigError(format!("{field}: cannot read {}: {e}", path.display()))
                })?;
            }
        }
        let addr: async_nats::ServerAddr = config
            .url
            .parse()
            .map_err(|e| NatsConfigError(format!("not a usable NATS URL ({e})")))?;
        let kind = if config.jetstream {
            "NATS JetStream"
        } else {
            "NATS"
        };
        Ok(Arc::new(NatsBroker {
            summary: format!("{kind} '{name}' at {}:{}", addr.host(), addr.port()),
            config: config.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            client: OnceCell::new(),
            stream: OnceCell::new(),
            fanout: Fanout::new(name, buffer),
        }))
    }

    fn unavailable(&self, reason: impl ToString) -> BackendError {
        BackendError::Unavailable {
            backend: self.summary.clone(),
            reason: reason.to_string(),
        }
    }

    /// The connection; the first call starts it (it keeps reconnecting in
    /// the background, so a server that is down at start-up is picked up later).
    async fn client(&self) -> Result<&async_nats::Client, BackendError> {
        self.client
            .get_or_try_init(|| async {
                let tls = self.config.tls();
                let mut options = async_nats::ConnectOptions::new();
                if self.config.url.starts_with("tls://") {
                    options = options.require_tls(true);
                }
                if let Some(ca) = tls.ca {
                    options = options.add_root_certificates(ca.to_path_buf());
                }
                if let (Some(cert), Some(key)) = (tls.cert, tls.key) {
                    options = options.add_client_certificate(cert.to_path_buf(), key.to_path_buf());
                }
                options
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .connection_timeout(self.timeout)
                    // Reconnect quickly after a restart; back off to 1 s.
                    .reconnect_delay_callback(|attempts| {
                        Duration::from_millis((attempts as u64 * 50).min(1000))
                    })
                    .connect(self.config.url.as_str())
                    .await
                    .map_err(|e| self.unavailable(e))
            })
            .await
    }

    /// A connected client, or unavailable right away (nothing is queued
    /// for a server that is not there).
    async fn connected(&self) -> Result<&async_nats::Client, BackendError> {
        use async_nats::connection::State;
        let client = self.client().await?;
        // The very first connection is still being made: give it the timeout.
        let deadline = tokio::time::Instant::now() + self.timeout;
        while client.connection_state() == State::Pending && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match client.connection_state() {
            State::Connected => Ok(client),
            State::Pending => Err(self.unavailable("cannot connect")),
            state => Err(self.unavailable(format!("not connected ({state})"))),
        }
    }

    fn subject(&self, topic: &TopicName) -> String {
        match self.config.subjects.get(&*topic.namespace) {
            Some(prefix) => format!("{prefix}.{}", topic.topic),
            None => format!(
                "prism.{}.{}",
                topic.namespace.replace('.', ":"),
                topic.topic
            ),
        }
    }

    /// The subjects Prism's stream captures: its own scope and every mapped prefix.
    fn stream_subjects(&self) -> Vec<String> {
        std::iter::once("prism.>".to_string())
            .chain(self.config.subjects.values().map(|p| format!("{p}.>")))
            .collect()
    }

    async fn jetstream(&self) -> Result<(jetstream::Context, &stream::Stream), BackendError> {
        let client = self.connected().await?;
        let context = jetstream::new(client.clone());
        let stream = self
            .stream
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: self.config.stream.clone(),
                    subjects: self.stream_subjects(),
                    max_age: Duration::from_secs(self.config.max_age_secs),
                    storage: stream::StorageType::File,
                    ..Default::default()
                };
                let call = context.get_or_create_stream(config);
                match tokio::time::timeout(self.timeout, call).await {
                    Ok(Ok(mut stream)) => {
                        // An existing stream keeps its subjects: it must
                        // capture every mapped prefix, or those publishes
                        // would reach no stream.
                        let info = self
                            .bounded("reading the JetStream stream", stream.info())
                            .await?
                            .clone();
                        let captured = &info.config.subjects;
                        let missing: Vec<String> = self
                            .config
                            .subjects
                            .values()
                            .filter(|prefix| !captured.iter().any(|s| covers(s, prefix)))
                            .map(|p| format!("{p}.>"))
                            .collect();
                        if missing.is_empty() {
                            return Ok(stream);
                        }
                        // Prism's own stream (it captures prism.>) takes a
                        // mapping added later; an application's is never changed.
                        if captured.iter().any(|s| s == "prism.>") {
                            let mut config = info.config.clone();
                            config.subjects.extend(missing.iter().cloned());
                            self.bounded("adding subjects to the JetStream stream", context.update_stream(&config))
                                .await?;
                            tracing::info!(stream = %self.config.stream, subjects = ?missing, "JetStream stream now captures the mapped subjects");
                            return Ok(stream);
                        }
                        Err(self.unavailable(format!(
                            "JetStream stream '{}' (subjects {captured:?}) does not capture {}; add them to the stream's subjects, or point `stream` at the stream that does",
                            self.config.stream,
                            missing.join(", ")
                        )))
                    }
                    Ok(Err(e)) => Err(self.unavailable(format!(
                        "cannot open JetStream stream '{}': {e}",
                        self.config.stream
                    ))),
                    Err(_) => Err(self.unavailable("JetStream did not answer in time")),
                }
            })
            .await?;
        Ok((context, stream))
    }

    /// Whether the client is connected now (a watch cannot tell a quiet
    /// bucket from a lost server by itself).
    pub(crate) fn is_connected(&self) -> bool {
        self.client
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// A JetStream context on the connected client (the control store's way in).
    pub(crate) async fn context(&self) -> Result<jetstream::Context, BackendError> {
        Ok(jetstream::new(self.connected().await?.clone()))
    }

    pub(crate) fn summary_line(&self) -> &str {
        &self.summary
    }

    pub(crate) async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            // Too big for the server: retrying cannot help; say so plainly.
            Ok(Err(e)) if e.to_string().contains("max payload") => {
                Err(BackendError::InvalidArgument(format!(
                    "{}: the message is larger than the NATS server accepts (its max_payload)",
                    self.summary
                )))
            }
            Ok(Err(e)) => Err(self.unavailable(format!("{what}: {e}"))),
            Err(_) => Err(self.unavailable(format!(
                "{what} timed out after {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    fn consumer_config(
        &self,
        subject: &str,
        options: &SubscribeOptions,
        deliver_policy: consumer::DeliverPolicy,
    ) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: options.group.as_ref().map(|g| durable_name(g, subject)),
            filter_subject: subject.to_string(),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_millis(self.config.ack_wait_ms),
            // The broker holds what the subscriber's buffer cannot; with the
            // disconnect policy it may deliver one more, so a subscriber that
            // falls a whole buffer behind overflows and is disconnected (what
            // it had not acknowledged is redelivered to its group).
            max_ack_pending: match options.policy {
                SlowConsumerPolicy::DropOldest => options.buffer.max(1) as i64,
                SlowConsumerPolicy::Disconnect => options.buffer.max(1) as i64 + 1,
            },
            // An ephemeral consumer outlives a dead Prism by this much only.
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        }
    }

    /// The consumer `config` describes: a group's durable one (created, or
    /// the existing one when it reads this very subject), else an ephemeral.
    async fn open_consumer(
        &self,
        stream: &jetstream::stream::Stream,
        config: consumer::pull::Config,
    ) -> Result<consumer::PullConsumer, BackendError> {
        let Some(name) = config.durable_name.clone() else {
            return self
                .bounded("creating a consumer", stream.create_consumer(config))
                .await;
        };
        let subject = config.filter_subject.clone();
        let consumer: consumer::PullConsumer = self
            .bounded(
                "creating the durable consumer",
                stream.get_or_create_consumer(&name, config),
            )
            .await?;
        // A consumer of that name made by anyone else (another tenant's
        // group, a hand-made one) must not hand this subscriber its messages.
        // The info is the server's answer to the get or create.
        if consumer.cached_info().config.filter_subject != subject {
            return Err(BackendError::InvalidArgument(format!(
                "the group's durable consumer {name} exists on the stream for other subjects; \
                 use another group name (or delete that consumer if it is stale)"
            )));
        }
        Ok(consumer)
    }

    async fn subscribe_jetstream(
        self: &Arc<Self>,
        topic: &TopicName,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn BrokerSubscription>, BackendError> {
        let subject = self.subject(topic);
        let (_, stream) = self.jetstream().await?;
        let config = self.consumer_config(&subject, options, consumer::DeliverPolicy::New);
        let consumer = self.open_consumer(stream, config).await?;
        let messages = self
            .bounded("starting the consumer", consumer.messages())
            .await?;
        Ok(Box::new(JetStreamSubscription {
            broker: self.clone(),
            topic: topic.topic.clone(),
            subject,
            options: options.clone(),
            messages: Some(messages),
            last_sequence: 0,
            acks: Arc::new(JetStreamAcker {
                pending: Mutex::new(HashMap::new()),
            }),
        }))
    }
}

/// Whether stream subject `pattern` captures every subject under `prefix.`
/// (NATS wildcards: `*` one token, `>` the rest).
fn covers(pattern: &str, prefix: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let prefix: Vec<&str> = prefix.split('.').collect();
    let Some((last, head)) = pattern.split_last() else {
        return false;
    };
    *last == ">"
        && head.len() <= prefix.len()
        && head.iter().zip(&prefix).all(|(p, t)| *p == "*" || p == t)
}

/// The durable consumer of `group` on `subject` (which carries the
/// namespace's scope): the group's name in the characters NATS allows, for
/// operators reading `nats consumer ls`, then 128 bits of SHA-256 over
/// subject and group, so two namespaces, topics or groups never share a
/// consumer, and no group text reaches a NATS API subject as it was sent.
pub fn durable_name(group: &str, subject: &str) -> String {
    use sha2::{Digest, Sha256};
    let readable: String = group
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    let mut hash = Sha256::new();
    hash.update(subject.as_bytes());
    hash.update([0]);
    hash.update(group.as_bytes());
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{hex}")
}

#[async_trait]
impl PubSubBackend for Arc<NatsBroker> {
    fn summary(&self) -> String {
        self.summary.clone()
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.connected().await.map(|_| ())
    }

    fn at_least_once(&self) -> bool {
        self.config.jetstream
    }

    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<BrokerMessage>,
    ) -> Result<(), BackendError> {
        let subject = self.subject(topic);
        if self.config.jetstream {
            let (context, _) = self.jetstream().await?;
            let mut acks = Vec::with_capacity(messages.len());
            for message in &messages {
                // The stream drops a duplicate of an id it has seen (a
                // retried publish): the id is the `Nats-Msg-Id` header.
                let (headers, payload) = wire::encode(message).into_parts();
                let publish = jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .headers(headers);
                let ack = self
                    .bounded("publishing", context.send_publish(subject.clone(), publish))
                    .await?;
                acks.push(ack);
            }
            for ack in acks {
                self.bounded(
                    "waiting for the stream to store the message",
                    std::future::IntoFuture::into_future(ack),
                )
                .await?;
            }
            return Ok(());
        }
        // One subject shared by every message: not rebuilt per message.
        let subject = async_nats::Subject::from(subject);
        self.publish_core(messages.iter().map(|m| (subject.clone(), m)))
            .await
    }

    async fn publish_each(
        &self,
        items: Vec<(TopicName, BrokerMessage)>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        if self.config.jetstream {
            // Every publish goes out before any ack is awaited: the stream
            // stores them in parallel, and each ack is its message's result.
            let (context, _) = self.jetstream().await?;
            let mut pending = Vec::with_capacity(items.len());
            for (topic, message) in &items {
                let (headers, payload) = wire::encode(message).into_parts();
                let publish = jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .headers(headers);
                pending.push(
                    self.bounded(
                        "publishing",
                        context.send_publish(self.subject(topic), publish),
                    )
                    .await,
                );
            }
            let acks = pending.into_iter().map(|sent| async move {
                match sent {
                    Ok(ack) => self
                        .bounded(
                            "waiting for the stream to store the message",
                            std::future::IntoFuture::into_future(ack),
                        )
                        .await
                        .map(drop),
                    Err(e) => Err(e),
                }
            });
            return crate::backend::pubsub::all_unavailable_is_an_outage(
                futures::future::join_all(acks).await,
            );
        }
        self.publish_core(
            items
                .iter()
                .map(|(topic, m)| (self.subject(topic).into(), m)),
        )
        .await?;
        Ok(items.iter().map(|_| Ok(())).collect())
    }

    async fn subscribe(
        &self,
        topic: &TopicName,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn BrokerSubscription>, BackendError> {
        if self.config.jetstream {
            return self.subscribe_jetstream(topic, options).await;
        }
        let subject = self.subject(topic);
        let Some(group) = &options.group else {
            return self
                .fanout
                .subscribe(&subject, &topic.topic, options, || async {
                    let client = self.connected().await?;
                    let subscriber = self
                        .bounded("subscribing", client.subscribe(subject.clone()))
                        .await?;
                    self.synced(client).await?;
                    Ok(subscriber)
                })
                .await;
        };
        let client = self.connected().await?;
        let subscriber = self
            .bounded(
                "subscribing",
                client.queue_subscribe(subject.clone(), group.clone()),
            )
            .await?;
        self.synced(client).await?;
        Ok(Box::new(CoreSubscription {
            topic: topic.topic.clone(),
            subscriber,
        }))
    }
}

impl NatsBroker {
    /// Core NATS has no per-message answer: every message is written, then
    /// one flush says the server has them all. One deadline bounds the
    /// whole batch: a timer per message would cost more than the publish.
    async fn publish_core<'m>(
        &self,
        messages: impl Iterator<Item = (async_nats::Subject, &'m BrokerMessage)>,
    ) -> Result<(), BackendError> {
        let client = self.connected().await?;
        self.bounded("publishing", async {
            for (subject, message) in messages {
                let (headers, payload) = wire::encode(message).into_parts();
                client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            client.flush().await.map_err(|e| e.to_string())
        })
        .await
    }

    /// Waits until the server has handled this client's SUB, so that what
    /// anyone publishes afterwards (another Prism process, a native NATS
    /// application) reaches the new subscription: the subscriber's
    /// confirmation promises that. `flush` is not enough, as it only waits
    /// for the socket. A request to a subject nobody serves (a fresh inbox)
    /// makes the round trip instead: the server handles one connection's
    /// operations in order, so its "no responders" answer comes after the
    /// SUB. One round trip per new NATS subscription, none per message.
    async fn synced(&self, client: &async_nats::Client) -> Result<(), BackendError> {
        use async_nats::RequestErrorKind;
        self.bounded("confirming the subscription with the server", async {
            match client
                .request(client.new_inbox(), bytes::Bytes::new())
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }
}

/// A queue-group member: NATS picks one member per message across every
/// Prism process, so members are never shared.
struct CoreSubscription {
    topic: String,
    subscriber: async_nats::Subscriber,
}

#[async_trait]
impl BrokerSubscription for CoreSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        let message = self.subscriber.next().await?;
        let decoded = wire::decode(
            &self.topic,
            message.headers.as_ref(),
            message.payload,
            wire::native_id,
            crate::clock::now_ms,
        );
        Some(Delivery::first(Arc::new(decoded)))
    }
}

struct JetStreamSubscription {
    broker: Arc<NatsBroker>,
    topic: String,
    subject: String,
    options: SubscribeOptions,
    messages: Option<consumer::pull::Stream>,
    /// The last stream sequence delivered, to resume an ephemeral consumer
    /// the server lost (a restart) without skipping or repeating messages.
    last_sequence: u64,
    acks: Arc<JetStreamAcker>,
}

impl JetStreamSubscription {
    /// Recreates the consumer after the server lost it or the pull stream failed.
    async fn reopen(&mut self) {
        let mut delay = Duration::from_millis(50);
        loop {
            let policy = if self.last_sequence == 0 {
                consumer::DeliverPolicy::New
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: self.last_sequence + 1,
                }
            };
            let attempt = async {
                let (_, stream) = self.broker.jetstream().await?;
                let config = self
                    .broker
                    .consumer_config(&self.subject, &self.options, policy);
                let consumer = self.broker.open_consumer(stream, config).await?;
                self.broker
                    .bounded("starting the consumer", consumer.messages())
                    .await
            };
            match attempt.await {
                Ok(messages) => {
                    tracing::info!(subject = %self.subject, "JetStream consumer resumed");
                    self.messages = Some(messages);
                    return;
                }
                Err(e) => {
                    tracing::debug!(subject = %self.subject, error = %e, "JetStream consumer not back yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[async_trait]
impl BrokerSubscription for JetStreamSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                self.reopen().await;
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    let (sequence, attempt, stored_ms) = match message.info() {
                        Ok(info) => (
                            info.stream_sequence,
                            info.delivered.max(1) as u32,
                            u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                                .unwrap_or_default(),
                        ),
                        Err(_) => (0, 1, crate::clock::now_ms()),
                    };
                    self.last_sequence = self.last_sequence.max(sequence);
                    let (message, acker) = message.split();
                    // A native message without an id is named by its place in
                    // the stream: the same on every redelivery and every replica.
                    let stream = &self.broker.config.stream;
                    let decoded = wire::decode(
                        &self.topic,
                        message.headers.as_ref(),
                        message.payload,
                        || match sequence {
                            0 => wire::native_id(),
                            _ => format!("js-{stream}-{sequence}"),
                        },
                        || stored_ms,
                    );
                    self.acks.pending.lock().insert(decoded.id.clone(), acker);
                    return Some(Delivery::Message {
                        message: Arc::new(decoded),
                        attempt,
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(subject = %self.subject, error = %e, "JetStream consumer interrupted; reopening");
                    self.messages = None;
                }
                None => self.messages = None,
            }
        }
    }

    fn acker(&self) -> Option<Arc<dyn Acker>> {
        Some(self.acks.clone())
    }
}

impl Drop for JetStreamSubscription {
    /// Messages delivered but not acknowledged go back to the stream now
    /// rather than after `ack_wait`, so another member gets them at once.
    fn drop(&mut self) {
        let pending: Vec<jetstream::message::Acker> =
            self.acks.pending.lock().drain().map(|(_, a)| a).collect();
        if pending.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for acker in pending {
                    let _ = acker.ack_with(jetstream::AckKind::Nak(None)).await;
                }
            });
        }
    }
}

struct JetStreamAcker {
    pending: Mutex<HashMap<String, jetstream::message::Acker>>,
}

#[async_trait]
impl Acker for JetStreamAcker {
    async fn ack(&self, ids: &[String]) -> Result<u32, BackendError> {
        let ackers: Vec<_> = {
            let mut pending = self.pending.lock();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        let count = ackers.len() as u32;
        for acker in ackers {
            acker.ack().await.map_err(|e| BackendError::Unavailable {
                backend: "NATS JetStream".into(),
                reason: format!("ack failed: {e}"),
            })?;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn stream_subjects_cover_prefixes_as_nats_matches_them() {
        assert!(covers(">", "legacy.orders"));
        assert!(covers("legacy.>", "legacy.orders"));
        assert!(covers("legacy.orders.>", "legacy.orders"));
        assert!(covers("*.orders.>", "legacy.orders"));
        assert!(!covers("legacy.orders.created", "legacy.orders"));
        assert!(!covers("legacy.orders.*", "legacy.orders"));
        assert!(!covers("legacy.billing.>", "legacy.orders"));
        assert!(!covers("legacy.orders.v1.>", "legacy.orders"));
    }
}

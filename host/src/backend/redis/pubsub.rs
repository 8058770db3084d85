//! Redis pub/sub (at-most-once). Publishing uses the backend's shared
//! connection; subscribing uses one dedicated pub/sub connection per backend,
//! owned by a task that (re)subscribes to every channel local subscribers
//! want — after Redis restarts too — and fans each message out to them
//! through an embedded [`MemBroker`], which also runs consumer groups
//! (within this Prism process: Redis pub/sub has no groups of its own).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::kv::{RedisConfigError, RedisKv};
use crate::backend::BackendError;
use crate::backend::envelope;
use crate::backend::mem::broker::{MemBroker, Subscription};
use crate::backend::pubsub::{
    BrokerMessage, BrokerSubscription, Delivery, PubSubBackend, SubscribeOptions, TopicName,
};
use crate::config::RedisConfig;

enum Control {
    Subscribe(String, oneshot::Sender<Result<(), BackendError>>),
    Unsubscribe(String),
}

pub struct RedisBroker {
    summary: String,
    kv: Arc<RedisKv>,
    client: redis::Client,
    timeout: Duration,
    local: Arc<MemBroker>,
    /// `[backends.X] channel_prefix`: before every channel name.
    prefix: String,
    /// Local subscribers per channel; the last one to leave unsubscribes.
    subscribers: Arc<Mutex<HashMap<String, usize>>>,
    control: Mutex<Option<mpsc::UnboundedSender<Control>>>,
}

impl RedisBroker {
    pub fn new(
        name: &str,
        config: &RedisConfig,
        kv: Arc<RedisKv>,
        buffer: usize,
    ) -> Result<Arc<RedisBroker>, RedisConfigError> {
        let client = super::client(config)?;
        Ok(Arc::new(RedisBroker {
            summary: crate::backend::KvBackend::summary(&*kv),
            kv,
            client,
            timeout: Duration::from_millis(config.timeout_ms),
            local: MemBroker::new(name, buffer),
            prefix: config.channel_prefix.clone(),
            subscribers: Arc::new(Mutex::new(HashMap::new())),
            control: Mutex::new(None),
        }))
    }

    /// The Redis channel of a topic.
    fn channel(&self, topic: &TopicName) -> String {
        format!("{}{}", self.prefix, topic.scoped())
    }

    /// The subscription task's inbox, starting the task on first use.
    fn control(&self) -> mpsc::UnboundedSender<Control> {
        let mut control = self.control.lock();
        if let Some(tx) = control.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_subscriber(
            self.client.clone(),
            self.summary.clone(),
            self.timeout,
            self.local.clone(),
            rx,
        ));
        *control = Some(tx.clone());
        tx
    }

    fn unavailable(&self, reason: &str) -> BackendError {
        BackendError::Unavailable {
            backend: self.summary.clone(),
            reason: reason.into(),
        }
    }
}

#[async_trait]
impl PubSubBackend for RedisBroker {
    fn summary(&self) -> String {
        self.summary.clone()
    }

    async fn ping(&self) -> Result<(), BackendError> {
        crate::backend::KvBackend::ping(&*self.kv).await
    }

    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<BrokerMessage>,
    ) -> Result<(), BackendError> {
        let channel = self.channel(topic);
        let mut pipe = redis::pipe();
        for message in &messages {
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(envelope::encode(message).as_ref())
                .ignore();
        }
        self.kv.query_pipeline::<()>(&pipe).await
    }

    async fn publish_each(
        &self,
        items: Vec<(TopicName, BrokerMessage)>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        // One pipeline, one round trip; PUBLISH cannot fail per message.
        let mut pipe = redis::pipe();
        for (topic, message) in &items {
            pipe.cmd("PUBLISH")
                .arg(topic.scoped())
                .arg(envelope::encode(message).as_ref())
                .ignore();
        }
        self.kv.query_pipeline::<()>(&pipe).await?;
        Ok(items.iter().map(|_| Ok(())).collect())
    }

    async fn subscribe(
        &self,
        topic: &TopicName,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn BrokerSubscription>, BackendError> {
        let channel = self.channel(topic);
        // Local first, so nothing Redis delivers after SUBSCRIBE is missed.
        let local = self.local.subscribe(&channel, options);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut subscribers = self.subscribers.lock();
            *subscribers.entry(channel.clone()).or_default() += 1;
            let _ = self
                .control()
                .send(Control::Subscribe(channel.clone(), reply_tx));
        }
        let guard = LocalSubscriber {
            channel: channel.clone(),
            subscribers: self.subscribers.clone(),
            control: self.control(),
        };
        match tokio::time::timeout(self.timeout, reply_rx).await {
            Ok(Ok(Ok(()))) => Ok(Box::new(RedisSubscription {
                local,
                _guard: guard,
            })),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(self.unavailable("subscription task ended")),
            Err(_) => Err(self.unavailable("SUBSCRIBE timed out")),
        }
    }
}

struct RedisSubscription {
    local: Subscription,
    _guard: LocalSubscriber,
}

#[async_trait]
impl BrokerSubscription for RedisSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        self.local.next().await
    }
}

/// Counts a local subscriber of a channel; the last one out unsubscribes.
struct LocalSubscriber {
    channel: String,
    subscribers: Arc<Mutex<HashMap<String, usize>>>,
    control: mpsc::UnboundedSender<Control>,
}

impl Drop for LocalSubscriber {
    fn drop(&mut self) {
        let mut subscribers = self.subscribers.lock();
        if let Some(n) = subscribers.get_mut(&self.channel) {
            *n -= 1;
            if *n == 0 {
                subscribers.remove(&self.channel);
                let _ = self
                    .control
                    .send(Control::Unsubscribe(self.channel.clone()));
            }
        }
    }
}

/// Owns the pub/sub connection: subscribes as asked, reconnects and
/// re-subscribes every wanted channel after a failure, and hands messages
/// to the local broker. Ends when the backend is dropped.
async fn run_subscriber(
    client: redis::Client,
    summary: String,
    timeout: Duration,
    local: Arc<MemBroker>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let unavailable = |reason: String| BackendError::Unavailable {
        backend: summary.clone(),
        reason,
    };
    let mut wanted: HashSet<String> = HashSet::new();
    let mut delay = Duration::from_millis(50);
    loop {
        let connected = tokio::time::timeout(timeout, client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            outcome => {
                let reason = match outcome {
                    Ok(Err(e)) => format!("pub/sub connection failed: {e}"),
                    _ => "pub/sub connection timed out".to_string(),
                };
                // Refuse subscriptions while Redis is away; keep the wanted ones.
                let wait = tokio::time::sleep(delay);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        msg = control.recv() => match msg {
                            None => return,
                            Some(Control::Subscribe(_, reply)) => {
                                let _ = reply.send(Err(unavailable(reason.clone())));
                            }
                            Some(Control::Unsubscribe(ch)) => {
                                wanted.remove(&ch);
                            }
                        },
                    }
                }
                // Capped low: while this connection is away, messages
                // published elsewhere miss the local subscribers, so a
                // restarted Redis is picked up within a quarter second.
                delay = (delay * 2).min(Duration::from_millis(250));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut healthy = true;
        for channel in &wanted {
            if sink.subscribe(channel).await.is_err() {
                healthy = false;
                break;
            }
        }
        if healthy {
            if !wanted.is_empty() {
                tracing::info!(backend = %summary, channels = wanted.len(), "Redis pub/sub re-subscribed");
            }
            delay = Duration::from_millis(50);
        }
        while healthy {
            tokio::select! {
                msg = control.recv() => match msg {
                    None => return,
                    Some(Control::Subscribe(channel, reply)) => {
                        let result = match tokio::time::timeout(timeout, sink.subscribe(&channel)).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => { healthy = false; Err(unavailable(format!("SUBSCRIBE failed: {e}"))) }
                            Err(_) => { healthy = false; Err(unavailable("SUBSCRIBE timed out".into())) }
                        };
                        wanted.insert(channel);
                        let _ = reply.send(result);
                    }
                    Some(Control::Unsubscribe(channel)) => {
                        wanted.remove(&channel);
                        let _ = tokio::time::timeout(timeout, sink.unsubscribe(&channel)).await;
                    }
                },
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let channel = msg.get_channel_name();
                        let topic = channel.split_once('/').map(|(_, t)| t).unwrap_or(channel);
                        let bytes = Bytes::copy_from_slice(msg.get_payload_bytes());
                        let message = envelope::decode(topic, bytes, || {
                            format!("redis-{}", crate::clock::now_ms())
                        });
                        local.publish(channel, Arc::new(message));
                    }
                    None => {
                        tracing::warn!(backend = %summary, "Redis pub/sub connection lost; reconnecting");
                        healthy = false;
                    }
                },
            }
        }
    }
}

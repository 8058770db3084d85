//! The publish/subscribe backend trait and the types every broker shares.
//! Topics arrive scoped by the capability layer ([`TopicName`]); each broker
//! spells the scope its own way (a key prefix, a NATS subject token).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::BackendError;

/// A topic as the broker sees it: the namespace it belongs to and the
/// pattern-mapped topic inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicName {
    pub namespace: Arc<str>,
    pub topic: String,
}

impl TopicName {
    /// `<namespace>/<topic>`: namespace names cannot contain '/', so two
    /// namespaces never share a scoped topic.
    pub fn scoped(&self) -> String {
        format!("{}/{}", self.namespace, self.topic)
    }
}

/// One published message as brokers carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerMessage {
    pub id: String,
    /// The pattern-mapped topic (unscoped).
    pub topic: String,
    pub payload: Bytes,
    pub metadata: Vec<(String, String)>,
    pub timestamp_ms: u64,
}

/// What happens when a subscriber's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Drop the oldest buffered messages and count them.
    DropOldest,
    /// End the subscription (the API layer reports RESOURCE_EXHAUSTED).
    Disconnect,
}

#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Consumer group: each message goes to one member of the group.
    pub group: Option<String>,
    /// Messages buffered for this subscriber.
    pub buffer: usize,
    pub policy: SlowConsumerPolicy,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// A message; `attempt` is 1 unless an at-least-once broker redelivers.
    Message {
        message: Arc<BrokerMessage>,
        attempt: u32,
    },
    /// Messages dropped since the last delivery (DropOldest policy).
    Dropped(u64),
    /// The subscriber fell behind under the Disconnect policy; nothing follows.
    Overflowed,
}

impl Delivery {
    pub fn first(message: Arc<BrokerMessage>) -> Delivery {
        Delivery::Message {
            message,
            attempt: 1,
        }
    }
}

/// A live subscription on a broker. Dropping it unsubscribes.
#[async_trait]
pub trait BrokerSubscription: Send {
    /// The next delivery; None once the subscription has ended for good.
    /// Must be cancel-safe: the caller selects on it.
    async fn next(&mut self) -> Option<Delivery>;

    /// Acknowledges delivered messages by id, for at-least-once brokers;
    /// shared so acks need not wait for `next`.
    fn acker(&self) -> Option<Arc<dyn Acker>> {
        None
    }
}

/// Acknowledges messages of one subscription.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Returns how many of the ids were awaiting an ack.
    async fn ack(&self, ids: &[String]) -> Result<u32, BackendError>;
}

/// A message broker. Topics arrive scoped by the capability layer.
#[async_trait]
pub trait PubSubBackend: Send + Sync {
    /// One line for logs and errors; never secrets.
    fn summary(&self) -> String;
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Whether unacknowledged messages are redelivered (acks matter).
    fn at_least_once(&self) -> bool {
        false
    }
    /// Publishes in order; Ok once the broker accepted every message.
    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<BrokerMessage>,
    ) -> Result<(), BackendError>;
    /// Fan-out: each message to its own topic, together (one round trip
    /// where the broker allows). Err: the whole call failed (broker down);
    /// Ok: one result per message, in order.
    async fn publish_each(
        &self,
        items: Vec<(TopicName, BrokerMessage)>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        let mut results = Vec::with_capacity(items.len());
        for (topic, message) in items {
            results.push(self.publish(&topic, vec![message]).await);
        }
        all_unavailable_is_an_outage(results)
    }
    /// Returns once the subscription is live: a message published through
    /// this backend after it returns is delivered.
    async fn subscribe(
        &self,
        topic: &TopicName,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn BrokerSubscription>, BackendError>;
}

/// A fan-out where every message failed for the broker being unavailable
/// is an outage of the whole call, not per-message failures.
pub fn all_unavailable_is_an_outage(
    results: Vec<Result<(), BackendError>>,
) -> Result<Vec<Result<(), BackendError>>, BackendError> {
    let outage = !results.is_empty()
        && results
            .iter()
            .all(|r| matches!(r, Err(BackendError::Unavailable { .. })));
    if outage && let Some(Err(e)) = results.first() {
        return Err(e.clone());
    }
    Ok(results)
}

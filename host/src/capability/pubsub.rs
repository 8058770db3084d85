//! The `pubsub` capability: every topic a guest names is scoped to its
//! namespace before it reaches the broker, and every message gets its id and
//! timestamp here, so patterns cannot forge or collide them.

use std::sync::Arc;

use super::slot::{Slot, SlotCore};

use async_trait::async_trait;
use bytes::Bytes;

use super::guest_error;
use crate::backend::BackendError;
use crate::backend::pubsub::{
    BrokerMessage, BrokerSubscription, PubSubBackend, SubscribeOptions, TopicName,
};
use crate::capability::bindings::CapabilityError;
use crate::capability::bindings::prism::pattern::types;
use crate::capability::bindings::pubsub_world::prism::pattern::pubsub;
use crate::capability::bindings::pubsub_world::{Addressed, Outgoing, Published};
use crate::clock::{next_id, now_ms};

/// Hard bounds on what any guest (user patterns included) may hand the
/// host in one import call; patterns apply their own (smaller) limits first.
pub const MAX_TOPIC_BYTES: usize = 4096;
/// Messages in one publish call.
pub const MAX_MESSAGES: usize = 10_000;
/// One payload.
pub const MAX_PAYLOAD_BYTES: usize = 32 << 20;
/// Metadata entries of one message.
pub const MAX_METADATA_ENTRIES: usize = 1024;
/// Metadata keys plus values of one message.
pub const MAX_METADATA_BYTES: usize = 1 << 20;
/// Payloads plus metadata of one publish call.
pub const MAX_PUBLISH_BYTES: usize = 64 << 20;

/// Checks one publish call against the host bounds before the broker sees it.
fn check_publish(messages: &[Outgoing]) -> Result<(), CapabilityError> {
    check_publish_refs(&messages.iter().collect::<Vec<_>>())
}

fn check_publish_refs(messages: &[&Outgoing]) -> Result<(), CapabilityError> {
    let invalid = |m: String| Err(CapabilityError::InvalidArgument(m));
    if messages.len() > MAX_MESSAGES {
        return invalid(format!(
            "{} messages in one publish; the host accepts at most {MAX_MESSAGES}",
            messages.len()
        ));
    }
    let mut total = 0usize;
    for (i, m) in messages.iter().enumerate() {
        if m.payload.len() > MAX_PAYLOAD_BYTES {
            return invalid(format!(
                "message {i}: payload is {} bytes; the host limit is {MAX_PAYLOAD_BYTES}",
                m.payload.len()
            ));
        }
        let metadata: usize = m.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if m.metadata.len() > MAX_METADATA_ENTRIES || metadata > MAX_METADATA_BYTES {
            return invalid(format!(
                "message {i}: metadata has {} entries, {metadata} bytes; the host limits are {MAX_METADATA_ENTRIES} entries, {MAX_METADATA_BYTES} bytes",
                m.metadata.len()
            ));
        }
        total += m.payload.len() + metadata;
    }
    if total > MAX_PUBLISH_BYTES {
        return invalid(format!(
            "publish holds {total} bytes; the host accepts at most {MAX_PUBLISH_BYTES} per call"
        ));
    }
    Ok(())
}

/// One namespace's binding of the `pubsub` slot.
#[derive(Clone)]
pub struct PubSubSlot {
    core: SlotCore<dyn PubSubBackend>,
    namespace: Arc<str>,
}

impl PubSubSlot {
    pub fn new(namespace: &str, backend: Arc<dyn PubSubBackend>) -> PubSubSlot {
        PubSubSlot {
            core: SlotCore::new(backend),
            namespace: namespace.into(),
        }
    }

    /// The slot of a namespace that binds no broker: calls answer unavailable.
    pub fn unbound() -> PubSubSlot {
        PubSubSlot {
            core: SlotCore::new(Arc::new(Unbound)),
            namespace: "".into(),
        }
    }

    pub fn backend(&self) -> &Arc<dyn PubSubBackend> {
        &self.core.backend
    }

    /// The broker-side name of a guest topic, or invalid-argument past the hard bound.
    pub fn topic(&self, topic: &str) -> Result<TopicName, CapabilityError> {
        if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
            return Err(CapabilityError::InvalidArgument(format!(
                "topic is {} bytes; the host accepts 1 to {MAX_TOPIC_BYTES} bytes",
                topic.len()
            )));
        }
        Ok(TopicName {
            namespace: self.namespace.clone(),
            topic: topic.to_string(),
        })
    }

    /// Subscribes the host (not the guest) to a pattern-planned topic.
    pub async fn subscribe(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn BrokerSubscription>, CapabilityError> {
        let topic = self.topic(topic)?;
        self.core
            .command("subscribe", self.core.backend.subscribe(&topic, options))
            .await
    }
}

impl types::Host for PubSubSlot {}

impl pubsub::Host for PubSubSlot {
    async fn publish(
        &mut self,
        topic: String,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<Published>, CapabilityError> {
        self.core
            .call("pubsub.publish")
            .serve(async {
                let topic = self.topic(&topic)?;
                check_publish(&messages)?;
                let timestamp_ms = now_ms();
                let mut published = Vec::with_capacity(messages.len());
                let messages = messages
                    .into_iter()
                    .map(|m| {
                        let id = next_id(timestamp_ms);
                        published.push(Published {
                            id: id.clone(),
                            timestamp_ms,
                        });
                        BrokerMessage {
                            id,
                            topic: topic.topic.clone(),
                            payload: Bytes::from(m.payload),
                            metadata: traced(m.metadata),
                            timestamp_ms,
                        }
                    })
                    .collect();
                if !self.core.read_only {
                    self.core
                        .command("publish", self.core.backend.publish(&topic, messages))
                        .await?;
                }
                Ok(published)
            })
            .await
    }

    async fn publish_each(
        &mut self,
        messages: Vec<Addressed>,
    ) -> Result<Vec<Result<Published, CapabilityError>>, CapabilityError> {
        self.core
            .call("pubsub.publish_each")
            .serve(async {
                let outgoing: Vec<&Outgoing> = messages.iter().map(|m| &m.message).collect();
                check_publish_refs(&outgoing)?;
                let timestamp_ms = now_ms();
                let mut published = Vec::with_capacity(messages.len());
                let mut items = Vec::with_capacity(messages.len());
                for m in messages {
                    let topic = self.topic(&m.topic)?;
                    let id = next_id(timestamp_ms);
                    published.push(Published {
                        id: id.clone(),
                        timestamp_ms,
                    });
                    items.push((
                        topic.clone(),
                        BrokerMessage {
                            id,
                            topic: topic.topic,
                            payload: Bytes::from(m.message.payload),
                            metadata: traced(m.message.metadata),
                            timestamp_ms,
                        },
                    ));
                }
                let results = if self.core.read_only {
                    items.iter().map(|_| Ok(())).collect()
                } else {
                    self.core
                        .command("publish_each", self.core.backend.publish_each(items))
                        .await?
                };
                Ok(results
                    .into_iter()
                    .zip(published)
                    .map(|(result, p)| result.map(|()| p).map_err(guest_error))
                    .collect())
            })
            .await
    }
}

/// With traces on, a published message carries the publishing span's
/// W3C context in its metadata, so its consumers join the trace.
fn traced(mut metadata: Vec<(String, String)>) -> Vec<(String, String)> {
    let span = tracing::Span::current();
    if crate::telemetry::traces::enabled() && crate::telemetry::traces::is_ours(&span) {
        crate::telemetry::traces::inject_metadata(&span, &mut metadata);
    }
    metadata
}

/// The broker behind an unbound slot.
struct Unbound;

#[async_trait]
impl PubSubBackend for Unbound {
    fn summary(&self) -> String {
        "no pubsub backend".into()
    }
    async fn publish(&self, _: &TopicName, _: Vec<BrokerMessage>) -> Result<(), BackendError> {
        Err(unbound())
    }
    async fn subscribe(
        &self,
        _: &TopicName,
        _: &SubscribeOptions,
    ) -> Result<Box<dyn BrokerSubscription>, BackendError> {
        Err(unbound())
    }
}

fn unbound() -> BackendError {
    BackendError::Unavailable {
        backend: "pubsub slot".into(),
        reason: "this namespace binds no backend to it".into(),
    }
}

impl Slot for PubSubSlot {
    type Backend = dyn PubSubBackend;

    fn core_mut(&mut self) -> &mut SlotCore<dyn PubSubBackend> {
        &mut self.core
    }
}

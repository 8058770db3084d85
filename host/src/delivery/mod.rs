//! The PubSub delivery engine: a live subscription between the broker and
//! one response stream. A pump task reads the broker, runs the pattern's
//! delivery hook when the plan asked for it, and fills a bounded outbox;
//! the stream drains the outbox in batches. Subscriptions and Registry
//! listeners share it; the gRPC layer only encodes its frames.

mod outbox;
mod pump;
mod subscriptions;

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::Status;

pub use outbox::{Batch, MAX_BATCH, Outbox, Outgoing, WhenFull};
pub use pump::DeliveryHook;
pub use subscriptions::{Registered, StreamGuard, Subscriptions};

use crate::backend::pubsub::{SlowConsumerPolicy, SubscribeOptions};
use crate::capability::pubsub::PubSubSlot;
use crate::clock::{now_ms, secret_id};

/// One frame of a delivery stream (`api/frame.rs` encodes it).
#[derive(Debug, Default)]
pub enum DeliveryFrame {
    /// Nothing: what decoding one would give (the server never decodes).
    #[default]
    Empty,
    /// The first frame: `Subscribed { subscription_id, topic }` or
    /// `Listening { subscription_id, identity }`.
    Opened { id: String, name: String },
    /// A `MessageBatch`: each message with the topic the client named.
    Messages {
        topic: Arc<str>,
        messages: Vec<Outgoing>,
        dropped: u64,
    },
}

/// What a stream holds on a broker: a subscription (PubSub) or an inbox
/// listener (Registry) — the same machinery either way.
pub struct Held<'a> {
    pub namespace: &'a str,
    pub slot: &'a PubSubSlot,
    /// The pattern-planned topic (the slot scopes it).
    pub topic: &'a str,
    pub options: SubscribeOptions,
    pub hook: Option<Box<dyn DeliveryHook>>,
    pub manual_ack: bool,
    /// The topic as the client named it (set on every delivered message).
    pub client_topic: String,
    pub admitted: crate::admission::StreamGuard,
    /// Who opened it (`api::caller`): only they may ack or unsubscribe.
    pub owner: Option<String>,
    /// When the caller's token expires (ms since the epoch): the stream ends
    /// then with UNAUTHENTICATED, so no subscription outlives its credentials.
    pub expires_at_ms: Option<u64>,
}

pub type FrameStream = Pin<Box<dyn Stream<Item = Result<DeliveryFrame, Status>> + Send>>;

/// Subscribes on the broker, registers the subscription (so Unsubscribe,
/// Ack and shutdown find it), starts its pump, and returns the response
/// stream: an opening frame naming the subscription and `opened` (the
/// topic or identity) once live, then a frame per batch.
pub async fn open_stream(
    subscriptions: &Arc<Subscriptions>,
    mut held: Held<'_>,
    opened: String,
) -> Result<FrameStream, Status> {
    // The host's bound, whatever buffer the pattern planned: the broker's
    // own per-subscriber buffer is sized from it too.
    let budget = held.admitted.admission().clone();
    let most = budget.quotas().max_buffered_messages as usize;
    held.options.buffer = held.options.buffer.min(most.max(1));
    let at_least_once = held.slot.backend().at_least_once();
    let policy = held.options.policy;
    let buffer = held.options.buffer;
    let subscription = held
        .slot
        .subscribe(held.topic, &held.options)
        .await
        .map_err(Status::from)?;
    let acker = subscription.acker();
    // At-least-once brokers hold what the outbox cannot, so nothing is
    // dropped there; a subscriber that asked to be disconnected when it
    // falls behind still is (its unacknowledged messages are redelivered).
    let when_full = match (at_least_once, policy) {
        (true, SlowConsumerPolicy::DropOldest) => WhenFull::Wait,
        (_, SlowConsumerPolicy::Disconnect) => WhenFull::Disconnect,
        (false, SlowConsumerPolicy::DropOldest) => WhenFull::DropOldest,
    };
    let outbox = Outbox::new(buffer, when_full, Some(budget));
    let id = format!("sub-{}", secret_id());
    subscriptions.insert(
        id.clone(),
        Registered {
            namespace: held.namespace.to_string(),
            owner: held.owner.clone(),
            outbox: outbox.clone(),
            acker: acker.clone(),
        },
    );
    tokio::spawn(pump::pump(
        subscription,
        outbox.clone(),
        held.hook,
        acker.clone(),
        held.namespace.to_string(),
    ));
    tracing::debug!(namespace = %held.namespace, topic = %held.client_topic, subscription = %id, "subscribed");

    let first = DeliveryFrame::Opened {
        id: id.clone(),
        name: opened,
    };
    let guard = StreamGuard {
        id,
        namespace: held.namespace.into(),
        registry: subscriptions.clone(),
        outbox,
        _admitted: held.admitted,
    };
    let auto_ack = if held.manual_ack { None } else { acker };
    let topic: Arc<str> = held.client_topic.into();
    let expiry = held.expires_at_ms.map(|at| {
        let left = at.saturating_sub(now_ms());
        tokio::time::Instant::now() + std::time::Duration::from_millis(left)
    });
    let rest = futures::stream::unfold(Some((guard, auto_ack)), move |state| {
        let topic = topic.clone();
        async move {
            let (guard, auto_ack) = state?;
            let next = guard.outbox.next_batch();
            let batch = match expiry {
                None => next.await,
                // Biased, expiry first: once the token has expired not one
                // more batch goes out, even when one is ready too.
                Some(at) => tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(at) => Batch::Failed(token_expired()),
                    batch = next => batch,
                },
            };
            match batch {
                Batch::Messages { messages, dropped } => {
                    if dropped > 0 {
                        guard.registry.note_dropped(&guard.namespace, dropped);
                    }
                    if let Some(acker) = &auto_ack {
                        // Acked once handed to the client's stream (auto-ack mode).
                        let ids: Vec<String> =
                            messages.iter().map(|m| m.message.id.clone()).collect();
                        if let Err(e) = acker.ack(&ids).await {
                            tracing::warn!(error = %e, "auto-ack failed; the broker will redeliver");
                        }
                    }
                    let frame = DeliveryFrame::Messages {
                        topic,
                        messages,
                        dropped,
                    };
                    Some((Ok(frame), Some((guard, auto_ack))))
                }
                Batch::Failed(status) => Some((Err(status), None)),
                Batch::Finished => None,
            }
        }
    });
    Ok(Box::pin(
        futures::stream::once(async move { Ok(first) }).chain(rest),
    ))
}

/// The end of a stream whose token expired; `x-prism-auth: token-expired`
/// lets clients reopen it with a fresh token without parsing the message.
pub fn token_expired() -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "x-prism-auth",
        tonic::metadata::MetadataValue::from_static("token-expired"),
    );
    Status::with_metadata(
        tonic::Code::Unauthenticated,
        "the token this stream was opened with has expired; open it again with a fresh token",
        metadata,
    )
}

//! A subscription's pump: reads the broker, runs the pattern's delivery
//! hook when the plan asked for it, and fills the outbox.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::FutureExt;
use tonic::Status;
use tracing::Instrument;

use super::outbox::{MAX_BATCH, Outbox, Outgoing};
use crate::backend::pubsub::{Acker, BrokerMessage, BrokerSubscription, Delivery};
use crate::capability::bindings::pubsub_world::{self, Verdict};
use crate::telemetry::traces;

/// A pattern's delivery hook for one subscription (planned with
/// `inspect`): keeps, drops or replaces each message. The namespace's side
/// (which version runs it) is the caller's; this floor only runs it.
#[async_trait::async_trait]
pub trait DeliveryHook: Send + Sync + 'static {
    async fn deliver(&self, delivery: pubsub_world::Delivery) -> Result<Verdict, Status>;
}

/// Reads the broker into the outbox until stopped or the broker ends.
/// Whatever else the broker has ready when a delivery arrives (up to a
/// frame's worth) is taken in the same turn and queued in one go.
pub(super) async fn pump(
    mut subscription: Box<dyn BrokerSubscription>,
    outbox: Arc<Outbox>,
    hook: Option<Box<dyn DeliveryHook>>,
    acker: Option<Arc<dyn Acker>>,
    namespace: String,
) {
    let mut run: VecDeque<Outgoing> = VecDeque::new();
    loop {
        let first = tokio::select! {
            // A stopped subscription reads nothing more from the broker.
            biased;
            _ = outbox.stopped() => return,
            delivery = subscription.next() => delivery,
        };
        let mut next = Some(first);
        while let Some(delivery) = next.take() {
            match delivery {
                None => {
                    outbox.push_all(&mut run).await;
                    outbox.finish(Ok(()));
                    return;
                }
                Some(Delivery::Dropped(n)) => outbox.add_dropped(n),
                Some(Delivery::Overflowed) => {
                    outbox.finish(Err(Status::resource_exhausted(
                        "subscriber fell behind the broker's buffer and was disconnected \
                         (slow_consumer = disconnect); read faster, raise the buffer, or use drop_oldest",
                    )));
                    return;
                }
                Some(Delivery::Message { message, attempt }) => {
                    // With traces on: a consumer span under the publisher's
                    // context, and the message carries on as its child; such
                    // a message is queued on its own, inside its span.
                    let span = traces::delivery_span(&namespace, &message.topic, &message.metadata);
                    let message = if span.is_none() {
                        message
                    } else {
                        let mut traced = BrokerMessage::clone(&message);
                        traces::inject_metadata(&span, &mut traced.metadata);
                        Arc::new(traced)
                    };
                    let message = match &hook {
                        Some(hook) => {
                            let id = message.id.clone();
                            match run_hook(hook.as_ref(), message)
                                .instrument(span.clone())
                                .await
                            {
                                Ok(Some(m)) => Some(m),
                                Ok(None) => {
                                    // Filtered out: settled as far as the broker is concerned.
                                    if let Some(acker) = &acker {
                                        let _ = acker.ack(&[id]).await;
                                    }
                                    None
                                }
                                Err(status) => {
                                    outbox.finish(Err(status));
                                    return;
                                }
                            }
                        }
                        None => Some(message),
                    };
                    if let Some(message) = message {
                        run.push_back(Outgoing { message, attempt });
                        if !span.is_none() {
                            outbox.push_all(&mut run).instrument(span).await;
                        }
                    }
                }
            }
            // A delivery the broker has ready now joins this run; `next` is
            // cancel-safe, so a pending one is simply asked for again.
            if run.len() < MAX_BATCH {
                next = subscription.next().now_or_never();
            }
        }
        outbox.push_all(&mut run).await;
    }
}

/// The pattern's delivery hook: keep, drop or replace one message.
async fn run_hook(
    hook: &dyn DeliveryHook,
    message: Arc<BrokerMessage>,
) -> Result<Option<Arc<BrokerMessage>>, Status> {
    let delivery = pubsub_world::Delivery {
        topic: message.topic.clone(),
        payload: message.payload.to_vec(),
        metadata: message.metadata.clone(),
    };
    match hook.deliver(delivery).await? {
        Verdict::Keep => Ok(Some(message)),
        Verdict::Drop => Ok(None),
        Verdict::Replace(d) => Ok(Some(Arc::new(BrokerMessage {
            id: message.id.clone(),
            topic: d.topic,
            payload: d.payload.into(),
            metadata: d.metadata,
            timestamp_ms: message.timestamp_ms,
        }))),
    }
}

//! `prism.v1.PubSub`: publishes go through the namespace's pattern; a
//! subscription is planned by the pattern, held by the host (see
//! `subscription.rs`) and streamed to the client in batches.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::subscription::{Batch, Outbox, Registered, Registry, StreamGuard, WhenFull, pump};
use crate::admission::CallGuard;
use crate::backend::pubsub::{BrokerMessage, SlowConsumerPolicy, SubscribeOptions};
use crate::capability::pubsub::{next_id, now_ms};
use crate::namespace::{Namespace, Namespaces};
use crate::pb;
use crate::pb::pub_sub_server::PubSub;
use crate::runtime::PubSubRuntime;
use crate::runtime::bindings::pubsub_world::{Outgoing, Published, SlowConsumer, SubscribeRequest};

pub struct PubSubService {
    namespaces: Arc<Namespaces>,
    subscriptions: Arc<Registry>,
}

impl PubSubService {
    /// `subscriptions` is shared with the server, which ends them on shutdown.
    pub fn new(namespaces: Arc<Namespaces>, subscriptions: Arc<Registry>) -> PubSubService {
        PubSubService {
            namespaces,
            subscriptions,
        }
    }

    /// The request's namespace and PubSub pattern, once its quotas admit the call.
    fn namespace<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Arc<Namespace>, PubSubRuntime, CallGuard), Status> {
        let (ns, admitted) = self.namespaces.admit_call(request.metadata())?;
        let runtime = ns.pubsub()?.clone();
        Ok((ns.clone(), runtime, admitted))
    }
}

/// gRPC maps carry no order; sorted metadata keeps what patterns see stable.
fn sorted(map: std::collections::HashMap<String, String>) -> Vec<(String, String)> {
    let mut entries: Vec<_> = map.into_iter().collect();
    entries.sort();
    entries
}

fn published(p: Published) -> pb::PublishResponse {
    pb::PublishResponse {
        id: p.id,
        timestamp_ms: p.timestamp_ms,
    }
}

fn wire(topic: &str, message: &BrokerMessage, attempt: u32) -> pb::Message {
    pb::Message {
        id: message.id.clone(),
        topic: topic.to_string(),
        payload: message.payload.to_vec(),
        metadata: message.metadata.iter().cloned().collect(),
        timestamp_ms: message.timestamp_ms,
        delivery_attempt: attempt,
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PubSub for PubSubService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let (_, runtime, _admitted) = self.namespace(&request)?;
        let r = request.into_inner();
        let message = Outgoing {
            payload: r.payload,
            metadata: sorted(r.metadata),
        };
        let mut ids = runtime.publish(r.topic, vec![message]).await?;
        let first = ids.pop().ok_or_else(|| {
            Status::internal("the pattern published nothing and reported no error")
        })?;
        Ok(Response::new(published(first)))
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        let (_, runtime, _admitted) = self.namespace(&request)?;
        let r = request.into_inner();
        let count = r.messages.len();
        let messages = r
            .messages
            .into_iter()
            .map(|m| Outgoing {
                payload: m.payload,
                metadata: sorted(m.metadata),
            })
            .collect();
        let ids = runtime.publish(r.topic, messages).await?;
        if ids.len() != count {
            return Err(Status::internal(format!(
                "the pattern reported {} ids for {count} messages",
                ids.len()
            )));
        }
        Ok(Response::new(pb::PublishBatchResponse {
            published: ids.into_iter().map(published).collect(),
        }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let (ns, stream_slot) = self.namespaces.admit_stream(request.metadata())?;
        let (ns, runtime) = (ns.clone(), ns.pubsub()?.clone());
        let r = request.into_inner();
        let client_topic = r.topic.clone();
        let manual_ack = r.manual_ack;
        let slow_consumer = match pb::SlowConsumerPolicy::try_from(r.slow_consumer) {
            Ok(pb::SlowConsumerPolicy::Unspecified) => None,
            Ok(pb::SlowConsumerPolicy::DropOldest) => Some(SlowConsumer::DropOldest),
            Ok(pb::SlowConsumerPolicy::Disconnect) => Some(SlowConsumer::Disconnect),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "slow_consumer {} is not a SlowConsumerPolicy",
                    r.slow_consumer
                )));
            }
        };
        let wit_request = SubscribeRequest {
            topic: r.topic,
            group: Some(r.group).filter(|g| !g.is_empty()),
            filter: sorted(r.filter),
            buffer: r.buffer,
            slow_consumer,
        };
        let plan = runtime.subscribe(wit_request.clone()).await?;
        let policy = match plan.slow_consumer {
            SlowConsumer::DropOldest => SlowConsumerPolicy::DropOldest,
            SlowConsumer::Disconnect => SlowConsumerPolicy::Disconnect,
        };
        let options = SubscribeOptions {
            group: plan.group.clone(),
            buffer: plan.buffer as usize,
            policy,
        };
        let slot = &runtime.pool().slots().pubsub;
        let at_least_once = slot.backend().at_least_once();
        let subscription = slot
            .subscribe(&plan.topic, &options)
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
        let outbox = Outbox::new(plan.buffer as usize, when_full);
        let id = format!("sub-{}", next_id(now_ms()));
        self.subscriptions.insert(
            id.clone(),
            Registered {
                namespace: ns.name.clone(),
                outbox: outbox.clone(),
                acker: acker.clone(),
            },
        );
        tokio::spawn(pump(
            subscription,
            outbox.clone(),
            runtime,
            wit_request,
            plan.inspect,
            acker.clone(),
        ));
        tracing::debug!(namespace = %ns.name, topic = %client_topic, subscription = %id, "subscribed");

        let first = pb::SubscribeResponse {
            event: Some(pb::subscribe_response::Event::Subscribed(pb::Subscribed {
                subscription_id: id.clone(),
                topic: client_topic.clone(),
            })),
        };
        let guard = StreamGuard {
            id,
            registry: self.subscriptions.clone(),
            outbox,
            _admitted: stream_slot,
        };
        let auto_ack = if manual_ack { None } else { acker };
        let rest = futures::stream::unfold(Some((guard, auto_ack)), move |state| {
            let topic = client_topic.clone();
            async move {
                let (guard, auto_ack) = state?;
                match guard.outbox.next_batch().await {
                    Batch::Messages { messages, dropped } => {
                        if let Some(acker) = &auto_ack {
                            // Acked once handed to the client's stream (auto-ack mode).
                            let ids: Vec<String> =
                                messages.iter().map(|m| m.message.id.clone()).collect();
                            if let Err(e) = acker.ack(&ids).await {
                                tracing::warn!(error = %e, "auto-ack failed; the broker will redeliver");
                            }
                        }
                        let batch = pb::MessageBatch {
                            messages: messages
                                .iter()
                                .map(|m| wire(&topic, &m.message, m.attempt))
                                .collect(),
                            dropped,
                        };
                        let frame = pb::SubscribeResponse {
                            event: Some(pb::subscribe_response::Event::Messages(batch)),
                        };
                        Some((Ok(frame), Some((guard, auto_ack))))
                    }
                    Batch::Failed(status) => Some((Err(status), None)),
                    Batch::Finished => None,
                }
            }
        });
        let stream = futures::stream::once(async move { Ok(first) }).chain(rest);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let (ns, _, _admitted) = self.namespace(&request)?;
        let id = request.into_inner().subscription_id;
        let entry = self
            .subscriptions
            .get(&id, &ns.name)
            .ok_or_else(|| not_live(&id, &ns.name))?;
        self.subscriptions.remove(&id);
        entry.outbox.finish(Ok(()));
        Ok(Response::new(pb::UnsubscribeResponse {}))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let (ns, _, _admitted) = self.namespace(&request)?;
        let r = request.into_inner();
        let entry = self
            .subscriptions
            .get(&r.subscription_id, &ns.name)
            .ok_or_else(|| not_live(&r.subscription_id, &ns.name))?;
        let acknowledged = match &entry.acker {
            Some(acker) => acker
                .ack(&r.message_ids)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?,
            // At-most-once brokers: nothing is waiting for an ack.
            None => 0,
        };
        Ok(Response::new(pb::AckResponse { acknowledged }))
    }
}

fn not_live(id: &str, namespace: &str) -> Status {
    Status::not_found(format!(
        "subscription '{id}' is not live in namespace '{namespace}' (it ended, or was never created here)"
    ))
}

//! `prism.v1.PubSub`: publishes go through the namespace's pattern; a
//! subscription is planned by the pattern, held by the host (see
//! `subscription.rs`) and streamed to the client in batches.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::publish::{publish_all, published, sorted};
use super::publish_stream;
use super::{caller, token_expiry};
use crate::admission::CallGuard;
use crate::backend::pubsub::{SlowConsumerPolicy, SubscribeOptions};
use crate::capability::bindings::pubsub_world::{
    Delivery, Outgoing, SlowConsumer, SubscribeRequest, Verdict,
};
use crate::delivery::{DeliveryHook, FrameStream, Held, Subscriptions, open_stream};
use crate::namespace::{Namespace, Namespaces};
use crate::pb;
use crate::pb::pub_sub_server::PubSub;
use crate::runtime::PubSubRuntime;

pub struct PubSubService {
    namespaces: Arc<Namespaces>,
    subscriptions: Arc<Subscriptions>,
}

impl PubSubService {
    /// `subscriptions` is shared with the server, which ends them on shutdown.
    pub fn new(namespaces: Arc<Namespaces>, subscriptions: Arc<Subscriptions>) -> PubSubService {
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
        let runtime = ns.route().version.pubsub(&ns.name)?;
        Ok((ns, runtime, admitted))
    }
}

type PublishStreamStream =
    Pin<Box<dyn Stream<Item = Result<pb::PublishStreamResponse, Status>> + Send>>;

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
        Ok(Response::new(pb::PublishBatchResponse {
            published: publish_all(&runtime, r.topic, r.messages).await?,
        }))
    }

    type PublishStreamStream = PublishStreamStream;

    async fn publish_stream(
        &self,
        request: Request<tonic::Streaming<pb::PublishStreamRequest>>,
    ) -> Result<Response<PublishStreamStream>, Status> {
        // The namespace must exist and serve PubSub when the stream opens;
        // each request is then admitted (rate and concurrency quotas) and
        // routed (a hot-swapped version applies) like a unary publish.
        // It counts against max_subscriptions as every stream does, so
        // open publish streams are bounded too.
        let (ns, stream_slot) = self.namespaces.admit_stream(request.metadata())?;
        ns.route().version.pubsub(&ns.name)?;
        let expires_at_ms = token_expiry(&request);
        let (metadata, _, inbound) = request.into_parts();
        Ok(Response::new(Box::pin(publish_stream::open(
            self.namespaces.clone(),
            metadata,
            expires_at_ms,
            self.subscriptions.closing(),
            inbound,
            stream_slot,
        ))))
    }

    type SubscribeStream = FrameStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<FrameStream>, Status> {
        let (ns, stream_slot) = self.namespaces.admit_stream(request.metadata())?;
        let runtime = ns.route().version.pubsub(&ns.name)?;
        let expires_at_ms = token_expiry(&request);
        let owner = caller(&request);
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
        let slot = runtime.pool().slots().pubsub.clone();
        let hook = plan.inspect.then(|| {
            Box::new(PatternHook {
                namespace: ns.clone(),
                request: wit_request,
            }) as Box<dyn DeliveryHook>
        });
        let stream = open_stream(
            &self.subscriptions,
            Held {
                namespace: &ns.name,
                slot: &slot,
                topic: &plan.topic,
                options,
                hook,
                manual_ack,
                client_topic: client_topic.clone(),
                admitted: stream_slot,
                owner,
                expires_at_ms,
            },
            client_topic,
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let (ns, _, _admitted) = self.namespace(&request)?;
        let caller = caller(&request);
        let id = request.into_inner().subscription_id;
        let entry = self
            .subscriptions
            .get(&id, &ns.name, caller.as_deref())
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
        let caller = caller(&request);
        let r = request.into_inner();
        let entry = self
            .subscriptions
            .get(&r.subscription_id, &ns.name, caller.as_deref())
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

/// The delivery hook of a subscription planned with `inspect`. Each
/// delivery runs on the version serving the namespace then (its primary,
/// or a canary's share), so a deploy reaches open streams too and an old
/// version is not kept alive by them.
struct PatternHook {
    namespace: Arc<Namespace>,
    /// The subscription as the client asked for it.
    request: SubscribeRequest,
}

#[async_trait::async_trait]
impl DeliveryHook for PatternHook {
    async fn deliver(&self, delivery: Delivery) -> Result<Verdict, Status> {
        let runtime = self
            .namespace
            .route()
            .version
            .pubsub(&self.namespace.name)?;
        Ok(runtime.deliver(&self.request, delivery).await?)
    }
}

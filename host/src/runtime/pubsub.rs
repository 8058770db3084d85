//! PubSubRuntime: typed calls into a namespace's PubSub pattern.

use super::CallError;
use super::pattern::PatternRuntime;
use crate::capability::bindings::pubsub_world::{
    Delivery, Outgoing, Published, PubsubWorld, SubscribeRequest, SubscriptionPlan, Verdict,
};

pub type PubSubRuntime = PatternRuntime<PubsubWorld>;

impl PatternRuntime<PubsubWorld> {
    pub async fn publish(
        &self,
        topic: String,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<Published>, CallError> {
        self.call("publish", move |s, g| {
            Box::pin(async move { g.call_publish(s, &topic, &messages).await })
        })
        .await
    }

    pub async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<SubscriptionPlan, CallError> {
        self.call("subscribe", move |s, g| {
            Box::pin(async move { g.call_subscribe(s, &request).await })
        })
        .await
    }

    /// The delivery hook: runs only for subscriptions planned with `inspect`.
    pub async fn deliver(
        &self,
        request: &SubscribeRequest,
        message: Delivery,
    ) -> Result<Verdict, CallError> {
        // The hook's arguments must outlive the pooled call; the request is small.
        let request = request.clone();
        self.run("deliver", move |s, g| {
            Box::pin(async move { g.call_deliver(s, &request, &message).await })
        })
        .await
    }
}

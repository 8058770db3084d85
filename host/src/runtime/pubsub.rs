//! PubSubRuntime: typed calls into a namespace's PubSub pattern.

use std::sync::Arc;

use wasmtime::Store;

use super::CallError;
use super::bindings::pubsub_world::exports::prism::pattern::pubsub_pattern::Guest as PubSubExports;
use super::bindings::pubsub_world::{
    Delivery, Outgoing, Published, PubsubWorld, SubscribeRequest, SubscriptionPlan, Verdict,
};
use super::pool::{GuestFuture, PatternPool};
use super::state::InstanceState;

#[derive(Clone)]
pub struct PubSubRuntime {
    pool: Arc<PatternPool<PubsubWorld>>,
}

impl PubSubRuntime {
    pub fn new(pool: Arc<PatternPool<PubsubWorld>>) -> PubSubRuntime {
        PubSubRuntime { pool }
    }

    pub fn pool(&self) -> &Arc<PatternPool<PubsubWorld>> {
        &self.pool
    }

    /// Runs one export on a pooled instance.
    async fn call<T, F>(&self, export: &'static str, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Store<InstanceState>, &'a PubSubExports) -> GuestFuture<'a, T>
            + Send
            + 'static,
    {
        self.pool
            .call(export, move |store, bindings: &PubsubWorld| {
                f(store, bindings.prism_pattern_pubsub_pattern())
            })
            .await
    }

    pub async fn publish(
        &self,
        topic: String,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<Published>, CallError> {
        self.call("publish", move |s, g| {
            Box::pin(async move { g.call_publish(s, &topic, &messages).await })
        })
        .await?
        .map_err(CallError::Pattern)
    }

    pub async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<SubscriptionPlan, CallError> {
        self.call("subscribe", move |s, g| {
            Box::pin(async move { g.call_subscribe(s, &request).await })
        })
        .await?
        .map_err(CallError::Pattern)
    }

    /// The delivery hook: runs only for subscriptions planned with `inspect`.
    pub async fn deliver(
        &self,
        request: &SubscribeRequest,
        message: Delivery,
    ) -> Result<Verdict, CallError> {
        // The hook's arguments must outlive the pooled call; the request is small.
        let request = request.clone();
        self.call("deliver", move |s, g| {
            Box::pin(async move { g.call_deliver(s, &request, &message).await })
        })
        .await
    }
}

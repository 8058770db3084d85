//! RegistryRuntime: typed calls into a namespace's Multicast Registry pattern.

use std::sync::Arc;

use wasmtime::Store;

use super::CallError;
use super::bindings::PatternError;
use super::bindings::registry_world::exports::prism::pattern::registry_pattern::Guest as RegistryExports;
use super::bindings::registry_world::{
    EnumerateRequest, EnumerateResult, IdentityRecord, ListenPlan, MulticastRegistry,
    MulticastRequest, MulticastResult, RegisterOutcome, RegisterRequest,
};
use super::pool::{GuestFuture, PatternPool};
use super::state::InstanceState;

#[derive(Clone)]
pub struct RegistryRuntime {
    pool: Arc<PatternPool<MulticastRegistry>>,
}

impl RegistryRuntime {
    pub fn new(pool: Arc<PatternPool<MulticastRegistry>>) -> RegistryRuntime {
        RegistryRuntime { pool }
    }

    pub fn pool(&self) -> &Arc<PatternPool<MulticastRegistry>> {
        &self.pool
    }

    /// Runs one export on a pooled instance.
    async fn call<T, F>(&self, export: &'static str, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(
                &'a mut Store<InstanceState>,
                &'a RegistryExports,
            ) -> GuestFuture<'a, Result<T, PatternError>>
            + Send
            + 'static,
    {
        self.pool
            .call(export, move |store, bindings: &MulticastRegistry| {
                f(store, bindings.prism_pattern_registry_pattern())
            })
            .await?
            .map_err(CallError::Pattern)
    }

    pub async fn register(&self, request: RegisterRequest) -> Result<RegisterOutcome, CallError> {
        self.call("register", move |s, g| {
            Box::pin(async move { g.call_register(s, &request).await })
        })
        .await
    }

    pub async fn heartbeat(&self, identity: String) -> Result<IdentityRecord, CallError> {
        self.call("heartbeat", move |s, g| {
            Box::pin(async move { g.call_heartbeat(s, &identity).await })
        })
        .await
    }

    pub async fn unregister(&self, identity: String) -> Result<bool, CallError> {
        self.call("unregister", move |s, g| {
            Box::pin(async move { g.call_unregister(s, &identity).await })
        })
        .await
    }

    pub async fn get(&self, identity: String) -> Result<IdentityRecord, CallError> {
        self.call("get", move |s, g| {
            Box::pin(async move { g.call_get(s, &identity).await })
        })
        .await
    }

    pub async fn enumerate(&self, request: EnumerateRequest) -> Result<EnumerateResult, CallError> {
        self.call("enumerate", move |s, g| {
            Box::pin(async move { g.call_enumerate(s, &request).await })
        })
        .await
    }

    pub async fn multicast(&self, request: MulticastRequest) -> Result<MulticastResult, CallError> {
        self.call("multicast", move |s, g| {
            Box::pin(async move { g.call_multicast(s, &request).await })
        })
        .await
    }

    pub async fn listen(&self, identity: String, buffer: u32) -> Result<ListenPlan, CallError> {
        self.call("listen", move |s, g| {
            Box::pin(async move { g.call_listen(s, &identity, buffer).await })
        })
        .await
    }
}

//! RegistryRuntime: typed calls into a namespace's Multicast Registry pattern.

use super::CallError;
use super::pattern::PatternRuntime;
use crate::capability::bindings::registry_world::{
    EnumerateRequest, EnumerateResult, IdentityRecord, ListenPlan, MulticastRegistry,
    MulticastRequest, MulticastResult, RegisterOutcome, RegisterRequest,
};

pub type RegistryRuntime = PatternRuntime<MulticastRegistry>;

impl PatternRuntime<MulticastRegistry> {
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

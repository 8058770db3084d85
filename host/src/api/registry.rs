//! `prism.v1.Registry`: every operation goes through the namespace's
//! Multicast Registry pattern (filters, TTL policy, limits and fan-out live
//! there); a listener is planned by the pattern and held by the host like a
//! subscription, on the namespace's messaging slot.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::metadata::{filter_to_json, json_to_map, map_to_json};
use super::response::bounded;
use super::{caller, token_expiry};
use crate::admission::CallGuard;
use crate::backend::pubsub::{SlowConsumerPolicy, SubscribeOptions};
use crate::capability::bindings::registry_world::{
    EnumerateRequest, IdentityRecord, MulticastRequest, RegisterOutcome, RegisterRequest,
};
use crate::delivery::{FrameStream, Held, Subscriptions, open_stream};
use crate::namespace::{Namespaces, Route};
use crate::pb;
use crate::pb::registry_server::Registry;
use crate::runtime::RegistryRuntime;
use crate::text::shorten;

pub struct RegistryService {
    namespaces: Arc<Namespaces>,
    subscriptions: Arc<Subscriptions>,
    /// `server.max_message_bytes`: responses larger than this are refused.
    max_response: usize,
}

impl RegistryService {
    /// `subscriptions` is shared with the server, which ends listeners on shutdown.
    pub fn new(
        namespaces: Arc<Namespaces>,
        subscriptions: Arc<Subscriptions>,
        max_response: usize,
    ) -> RegistryService {
        RegistryService {
            namespaces,
            subscriptions,
            max_response,
        }
    }

    /// The request's registry pattern (the version routed to: primary or
    /// canary), once the namespace's quotas admit it.
    fn runtime<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(RegistryRuntime, Route, CallGuard), Status> {
        let (ns, admitted) = self.namespaces.admit_call(request.metadata())?;
        let route = ns.route();
        let registry = route.version.registry(&ns.name)?;
        Ok((registry, route, admitted))
    }
}

fn identity(record: IdentityRecord) -> Result<pb::Identity, Status> {
    Ok(pb::Identity {
        metadata: Some(json_to_map(&record.metadata)?),
        identity: record.identity,
        registered_at_ms: record.registered_at_ms,
        expires_at_ms: record.expires_at_ms,
        ttl_ms: record.ttl_ms,
    })
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let (registry, _, _admitted) = self.runtime(&request)?;
        let r = request.into_inner();
        let metadata = match &r.metadata {
            Some(map) => map_to_json(map, "metadata")?,
            None => "{}".to_string(),
        };
        let outcome = registry
            .register(RegisterRequest {
                identity: r.identity,
                metadata,
                ttl_ms: r.ttl_ms,
                replace: r.replace,
            })
            .await?;
        match outcome {
            RegisterOutcome::Registered(record) => Ok(Response::new(pb::RegisterResponse {
                identity: Some(identity(record)?),
            })),
            RegisterOutcome::AlreadyExists(record) => Err(Status::already_exists(format!(
                "identity '{}' is already registered; register with replace to overwrite it",
                shorten(&record.identity)
            ))),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (registry, _, _admitted) = self.runtime(&request)?;
        let record = registry.heartbeat(request.into_inner().identity).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            identity: Some(identity(record)?),
        }))
    }

    async fn unregister(
        &self,
        request: Request<pb::UnregisterRequest>,
    ) -> Result<Response<pb::UnregisterResponse>, Status> {
        let (registry, _, _admitted) = self.runtime(&request)?;
        let existed = registry.unregister(request.into_inner().identity).await?;
        Ok(Response::new(pb::UnregisterResponse { existed }))
    }

    async fn get(
        &self,
        request: Request<pb::GetIdentityRequest>,
    ) -> Result<Response<pb::GetIdentityResponse>, Status> {
        let (registry, route, _admitted) = self.runtime(&request)?;
        let id = request.into_inner().identity;
        let record = registry.get(id.clone()).await;
        route.mirror("get", &record, |v| {
            let registry = v.registry("").ok()?;
            Some(async move { registry.get(id).await })
        });
        let record = record?;
        bounded(
            pb::GetIdentityResponse {
                identity: Some(identity(record)?),
            },
            self.max_response,
        )
    }

    async fn enumerate(
        &self,
        request: Request<pb::EnumerateRequest>,
    ) -> Result<Response<pb::EnumerateResponse>, Status> {
        let (registry, route, _admitted) = self.runtime(&request)?;
        let r = request.into_inner();
        let enumerate = EnumerateRequest {
            filter: filter_to_json(&r.filter)?,
            cursor: Some(r.cursor).filter(|c| !c.is_empty()),
            limit: r.limit,
        };
        let page = registry.enumerate(enumerate.clone()).await;
        route.mirror("enumerate", &page, |v| {
            let registry = v.registry("").ok()?;
            Some(async move { registry.enumerate(enumerate).await })
        });
        let page = page?;
        let identities = page
            .identities
            .into_iter()
            .map(identity)
            .collect::<Result<_, _>>()?;
        bounded(
            pb::EnumerateResponse {
                identities,
                next_cursor: page.cursor.unwrap_or_default(),
            },
            self.max_response,
        )
    }

    async fn multicast(
        &self,
        request: Request<pb::MulticastRequest>,
    ) -> Result<Response<pb::MulticastResponse>, Status> {
        let (registry, _, _admitted) = self.runtime(&request)?;
        let r = request.into_inner();
        let mut metadata: Vec<(String, String)> = r.metadata.into_iter().collect();
        metadata.sort();
        let result = registry
            .multicast(MulticastRequest {
                filter: filter_to_json(&r.filter)?,
                payload: r.payload,
                metadata,
            })
            .await?;
        Ok(Response::new(pb::MulticastResponse {
            target_count: result.target_count,
            delivered_count: result.delivered_count,
            failed: result
                .failures
                .into_iter()
                .map(|f| (f.identity, f.reason))
                .collect(),
        }))
    }

    type ListenStream = FrameStream;

    async fn listen(
        &self,
        request: Request<pb::ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let (ns, admitted) = self.namespaces.admit_stream(request.metadata())?;
        let registry = ns.route().version.registry(&ns.name)?;
        let expires_at_ms = token_expiry(&request);
        let owner = caller(&request);
        let r = request.into_inner();
        let plan = registry.listen(r.identity.clone(), r.buffer).await?;
        let slot = registry.pool().slots().pubsub.clone();
        let listening_identity = r.identity.clone();
        let stream = open_stream(
            &self.subscriptions,
            Held {
                namespace: &ns.name,
                slot: &slot,
                topic: &plan.topic,
                options: SubscribeOptions {
                    group: plan.group,
                    buffer: plan.buffer as usize,
                    policy: SlowConsumerPolicy::DropOldest,
                },
                hook: None,
                manual_ack: false,
                client_topic: r.identity,
                admitted,
                owner,
                expires_at_ms,
            },
            listening_identity,
        )
        .await?;
        Ok(Response::new(stream))
    }
}

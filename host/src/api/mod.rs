//! gRPC services, one file each; `status` is the one error → Status map.

pub mod admin;
pub mod codec;
pub mod frame;
pub mod keyvalue;
pub mod metadata;
pub mod oversize;
mod publish;
pub mod publish_stream;
pub mod pubsub;
pub mod registry;
pub mod response;
pub mod status;

use std::sync::Arc;

/// Until when the caller's token is accepted, if the call was authenticated
/// (a delivery stream ends then).
pub fn token_expiry<T>(request: &tonic::Request<T>) -> Option<u64> {
    request
        .extensions()
        .get::<Arc<crate::auth::Principal>>()
        .map(|p| p.valid_until_ms)
}

/// Who made the call (issuer and subject of its token), if it was
/// authenticated: a subscription belongs to who opened it, and only they
/// may ack or end it.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<Arc<crate::auth::Principal>>()
        .map(|p| format!("{} {}", p.issuer, p.subject))
}

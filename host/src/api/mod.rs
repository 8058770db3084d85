//! gRPC services, one file each; `status` is the one error → Status map.

pub mod admin;
pub mod codec;
pub mod frame;
pub mod keyvalue;
pub mod metadata;
pub mod oversize;
pub mod publish_stream;
pub mod pubsub;
pub mod registry;
pub mod response;
pub mod status;
pub mod subscription;

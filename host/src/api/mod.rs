//! gRPC services, one file each; `status` is the one error → Status map.

pub mod codec;
pub mod keyvalue;
pub mod oversize;
pub mod pubsub;
pub mod response;
pub mod status;
pub mod subscription;

//! gRPC services, one file each; `status` is the one error → Status map.

pub mod keyvalue;
pub mod pubsub;
pub mod response;
pub mod status;
pub mod subscription;

//! The Redis backends (`type = "redis"`): KV with storage quotas, the
//! registry, and PubSub on pub/sub (`stream = false`) or Streams
//! (`stream = true`), all on one shared connection per URL.

pub mod kv;
pub mod pubsub;
mod quota;
pub mod registry;
pub mod streams;

pub use kv::{RedisConfigError, RedisKv};
pub use pubsub::RedisBroker;
pub use registry::RedisRegistry;
pub use streams::RedisStreams;

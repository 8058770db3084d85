//! The backend servers under the path the suites and the bench have always
//! named them by (`prism_acceptance::servers::RedisServer`, ...). Each kind
//! lives in a file of its own: `redis_server.rs`, `nats_server.rs`,
//! `postgres_server.rs`; the free port in `process.rs`.

pub use crate::nats_server::NatsServer;
pub use crate::postgres_server::{POSTGRES_PASSWORD, POSTGRES_USER, PostgresServer};
pub use crate::process::free_port;
pub use crate::redis_server::RedisServer;

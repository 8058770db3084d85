//! Shared helpers for the suites: Prism in-process (`prism_server.rs`) or
//! as the real binary (`binary.rs`); the servers it runs against, one file
//! per kind (`redis_server.rs`, `nats_server.rs`, `postgres_server.rs`, on
//! `process.rs`); the backends, brokers and registry pairs under test; the
//! acceptance matrix (`matrix.rs`) and the Admin API preamble (`admin.rs`).
//! The items the suites use most are re-exported here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use prism::pb;

pub mod admin;
pub mod backends;
pub mod binary;
pub mod matrix;
mod nats_server;
pub mod oidc;
mod postgres_server;
mod prism_server;
mod process;
pub mod pubsub;
pub mod raw;
mod redis_server;
pub mod registry;
pub mod scaffold;
pub mod servers;
pub mod tls;

pub use nats_server::NatsServer;
pub use postgres_server::{POSTGRES_PASSWORD, POSTGRES_USER, PostgresServer};
pub use prism_server::{KvClient, Namespace, PsClient, RegClient, TestServer, start};
pub use process::free_port;
pub use redis_server::RedisServer;

/// A guest component built by host/build.rs (the test fixtures live there too).
pub fn guest_component(name: &str) -> PathBuf {
    prism::runtime::builtin::artifact_dir().join(format!("{name}.wasm"))
}

/// The services the server lists through gRPC reflection (no token sent).
pub async fn reflected_services(channel: tonic::transport::Channel) -> anyhow::Result<Vec<String>> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![list]))
        .await?
        .into_inner();
    let reply = replies.message().await?.and_then(|r| r.message_response);
    let Some(MessageResponse::ListServicesResponse(services)) = reply else {
        anyhow::bail!("reflection did not list services: {reply:?}");
    };
    Ok(services.service.into_iter().map(|s| s.name).collect())
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A MemStore-backed config with the given namespaces (`name = pattern`).
pub fn memstore_config(namespaces: &[(&str, &str)]) -> String {
    let mut toml = String::from("[backends.mem]\ntype = \"memstore\"\n");
    for (name, pattern) in namespaces {
        toml.push_str(&format!(
            "\n[namespaces.{name}]\npattern = {pattern:?}\nslots = {{ kv = \"mem\" }}\n"
        ));
    }
    toml
}

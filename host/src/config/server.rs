//! `[server]`: where Prism listens and how it drains.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest gRPC message accepted; patterns enforce their own, smaller value limits.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// How long in-flight requests may run after SIGINT/SIGTERM.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_message_bytes: default_max_message_bytes(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8980))
}

fn default_max_message_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_shutdown_grace_ms() -> u64 {
    10_000
}

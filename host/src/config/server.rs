//! `[server]`: where Prism listens and how it drains.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Connections open at once; one more is closed as it arrives.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); clients queue the rest.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Streams that need no token (health watches, reflection) open
    /// across the server; one more is RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_unauthenticated_streams")]
    pub max_unauthenticated_streams: usize,
    /// Streams a connection may make the server reset for its protocol
    /// errors before the connection is closed (CVE-2025-8671, "MadeYouReset").
    #[serde(default = "default_max_reset_streams")]
    pub max_reset_streams: usize,
    /// HTTP/2 PING interval in seconds: a peer that does not answer within
    /// `keepalive_timeout_secs` is disconnected; 0 = no pings.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    #[serde(default = "default_keepalive_timeout_secs")]
    pub keepalive_timeout_secs: u64,
    /// A connection older than this is asked to go away (GOAWAY; clients
    /// reconnect, which spreads them over replicas), and closed
    /// `max_connection_age_grace_secs` later; 0 = never.
    #[serde(default)]
    pub max_connection_age_secs: u64,
    #[serde(default = "default_max_connection_age_grace_secs")]
    pub max_connection_age_grace_secs: u64,
    /// A connection that has not sent its first bytes (HTTP/2 preface or
    /// TLS ClientHello) this long after connecting is closed: silent
    /// connections would otherwise hold `max_connections` places forever.
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// PEM certificate chain and private key: the listener speaks TLS
    /// (relative paths are relative to the config file).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual TLS).
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_message_bytes: default_max_message_bytes(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            max_connections: default_max_connections(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_unauthenticated_streams: default_max_unauthenticated_streams(),
            max_reset_streams: default_max_reset_streams(),
            keepalive_secs: default_keepalive_secs(),
            keepalive_timeout_secs: default_keepalive_timeout_secs(),
            max_connection_age_secs: 0,
            max_connection_age_grace_secs: default_max_connection_age_grace_secs(),
            handshake_timeout_secs: default_handshake_timeout_secs(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
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

fn default_max_connections() -> usize {
    10_000
}

/// Above the listeners a registry client opens on one channel in the
/// bench (1 000), below what would let one connection hold the server.
fn default_max_concurrent_streams() -> u32 {
    2048
}

fn default_max_unauthenticated_streams() -> usize {
    1024
}

/// hyper's own default, which tonic's builder turns off unless set.
fn default_max_reset_streams() -> usize {
    1024
}

fn default_keepalive_secs() -> u64 {
    60
}

fn default_keepalive_timeout_secs() -> u64 {
    20
}

fn default_max_connection_age_grace_secs() -> u64 {
    30
}

fn default_handshake_timeout_secs() -> u64 {
    10
}

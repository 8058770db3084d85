//! `[admin]`: the Admin API and where its changes are kept.

use std::path::PathBuf;

use serde::Deserialize;

/// `[admin]`: the Admin API and where its changes are kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the Admin API even though `[auth] mode = "none"` (anyone can
    /// then administer this server; `prism dev` sets it).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Where Admin changes (namespaces, uploaded patterns, deployments) are
    /// kept across restarts; default `$XDG_STATE_HOME/prism/<config>` (or
    /// `~/.local/state/prism/...`). Nothing is written until a change is made.
    pub state_dir: Option<PathBuf>,
    /// The backend that keeps Admin's documents and uploads for a fleet
    /// (see [`STORE_TYPES`]); every replica naming it serves the same
    /// namespaces. None: `state_dir` alone (one process).
    #[serde(default)]
    pub store: Option<String>,
    /// With a store: how long a removed document's tombstone stays in it
    /// (and in each replica's memory). Replicas following the store see a
    /// removal within milliseconds; one away for longer reads the store
    /// whole and takes what the store no longer has as removed.
    #[serde(default = "default_tombstone_ttl_ms")]
    pub tombstone_ttl_ms: u64,
    /// Largest pattern an upload may carry.
    #[serde(default = "default_max_pattern_bytes")]
    pub max_pattern_bytes: usize,
    /// Uploads a namespace's admins may keep (an upload counts against
    /// every namespace it is scoped to; `*:admin` uploads count against none).
    #[serde(default = "default_max_uploads_per_namespace")]
    pub max_uploads_per_namespace: usize,
    /// Bytes of uploads a namespace's admins may keep.
    #[serde(default = "default_max_upload_bytes_per_namespace")]
    pub max_upload_bytes_per_namespace: u64,
    /// Uploads received at once, server-wide (each streams to disk).
    #[serde(default = "default_max_concurrent_uploads")]
    pub max_concurrent_uploads: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            allow_unauthenticated: false,
            state_dir: None,
            store: None,
            tombstone_ttl_ms: default_tombstone_ttl_ms(),
            max_pattern_bytes: default_max_pattern_bytes(),
            max_uploads_per_namespace: default_max_uploads_per_namespace(),
            max_upload_bytes_per_namespace: default_max_upload_bytes_per_namespace(),
            max_concurrent_uploads: default_max_concurrent_uploads(),
        }
    }
}

/// The backend types `[admin] store` may name.
pub const STORE_TYPES: &str = "a postgres backend, or a nats backend with jetstream = true";

fn default_tombstone_ttl_ms() -> u64 {
    3_600_000
}

/// The shortest `tombstone_ttl_ms`: a replica checks that it keeps up at
/// a quarter of it.
pub const MIN_TOMBSTONE_TTL_MS: u64 = 1_000;

fn default_max_pattern_bytes() -> usize {
    64 << 20
}

fn default_max_uploads_per_namespace() -> usize {
    16
}

fn default_max_upload_bytes_per_namespace() -> u64 {
    256 << 20
}

fn default_max_concurrent_uploads() -> usize {
    4
}

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
    /// Largest pattern an upload may carry.
    #[serde(default = "default_max_pattern_bytes")]
    pub max_pattern_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            allow_unauthenticated: false,
            state_dir: None,
            max_pattern_bytes: default_max_pattern_bytes(),
        }
    }
}

fn default_max_pattern_bytes() -> usize {
    64 << 20
}

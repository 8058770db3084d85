//! What every namespace is built from: the config (the seed), the wasm
//! runtime, the backends and the uploaded patterns. Built once at start and
//! shared by start-up and the Admin API.

use std::sync::Arc;

use super::PreparedCache;
use crate::backend::Backends;
use crate::config::Config;
use crate::patterns::PatternStore;
use crate::runtime::Runtime;

pub struct Platform {
    pub config: Config,
    pub runtime: Arc<Runtime>,
    pub backends: Backends,
    pub patterns: PatternStore,
    /// Components checked against the worlds, by digest.
    pub prepared: PreparedCache,
}

//! The control plane behind `prism.v1.Admin`: namespaces created, changed
//! and deleted at runtime; patterns uploaded, deployed, canaried, shadowed,
//! promoted and rolled back. Every change is checked and started first
//! (a new version configured before it serves), then recorded in the state
//! directory, then swapped in — so a refused change leaves everything as it
//! was, and what was accepted survives a restart.

mod fleet;
mod namespaces;
mod reload;
mod rollouts;
pub mod state;
mod uploads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::clock::now_ms;
use crate::config::{Config, NamespaceConfig};
use crate::delivery::Subscriptions;
use crate::namespace::Platform;
use crate::namespace::{
    Deployment, Namespace, Namespaces, Rollout, Source, StartupError, Version, Writes, inspect,
    world_of,
};
use crate::patterns::{UPLOADED, digest_of, is_digest};
use crate::runtime::builtin;
pub use fleet::{FleetStatus, Loaded, ReplicaStatus, open};
pub use reload::Reloaded;
pub use state::{ControlState, NamespaceState, PatternMeta, RolloutState, StateError};
pub use uploads::Scope;

/// Why an Admin call was refused; each maps to one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// An upload quota or the uploads-at-once limit.
    #[error("{0}")]
    Quota(String),
    /// The state directory or the control store could not be written:
    /// nothing was changed.
    #[error("{0}")]
    Storage(String),
    /// Another replica changed the same document first: nothing was
    /// changed, and a retry reads the winner's change.
    #[error("{0}")]
    Aborted(String),
    /// A bug in Prism (a task that panicked).
    #[error("{0}")]
    Internal(String),
}

impl From<StateError> for AdminError {
    fn from(e: StateError) -> AdminError {
        AdminError::Storage(format!("{e}; nothing was changed"))
    }
}

/// A namespace as Admin shows it.
pub struct NamespaceView {
    pub namespace: Arc<Namespace>,
    pub source: Source,
}

/// A pattern Admin can deploy: a built-in one or an upload.
pub struct PatternEntry {
    pub digest: String,
    pub meta: PatternMeta,
    pub builtin: bool,
}

/// The Admin layer of a config: loaded before the runtime is built, since
/// its namespaces' memory limits size the engine.
pub fn load_state(config: &Config) -> Result<ControlState, StateError> {
    match config.state_dir() {
        Some(dir) => ControlState::load(&dir),
        None => Ok(ControlState::default()),
    }
}

/// The namespaces to start: the config file's, minus those Admin deleted,
/// with Admin's definitions layered over them.
fn definitions(config: &Config, state: &ControlState) -> BTreeMap<String, NamespaceConfig> {
    layered(&config.namespaces, state)
}

/// The config file's namespaces with Admin's layer over them.
fn layered(
    config: &BTreeMap<String, NamespaceConfig>,
    state: &ControlState,
) -> BTreeMap<String, NamespaceConfig> {
    let mut defs: BTreeMap<String, NamespaceConfig> = config
        .iter()
        .filter(|(name, _)| !state.deleted.contains(*name))
        .map(|(name, ns)| (name.clone(), ns.clone()))
        .collect();
    for (name, ns) in &state.namespaces {
        defs.insert(name.clone(), ns.config.clone());
    }
    defs
}

/// The largest per-instance memory any namespace (config or Admin) asks for.
pub fn max_memory_bytes(config: &Config, state: &ControlState) -> usize {
    definitions(config, state)
        .values()
        .map(|ns| {
            ns.limits
                .resolve(&config.runtime.limits)
                .instance
                .memory_bytes
        })
        .max()
        .unwrap_or(64 << 20)
}

pub struct Control {
    platform: Arc<Platform>,
    namespaces: Arc<Namespaces>,
    subscriptions: Arc<Subscriptions>,
    state_dir: Option<PathBuf>,
    /// The Admin layer; held across each change, so changes apply one at a time.
    state: tokio::sync::Mutex<ControlState>,
    /// How long a delete waits for the namespace's calls in flight.
    drain: Duration,
    /// Held while an upload compiles.
    compiling: tokio::sync::Mutex<()>,
    /// Uploads being received (`[admin] max_concurrent_uploads`).
    receiving: Arc<tokio::sync::Semaphore>,
    /// The config file's `[namespaces]` as last loaded (start-up or SIGHUP).
    config_namespaces: parking_lot::RwLock<BTreeMap<String, NamespaceConfig>>,
    /// The fleet's control store (`[admin] store`), if any.
    store: Option<Arc<dyn crate::backend::control::ControlStore>>,
    /// Serving a snapshot: the store does not answer.
    stale: AtomicBool,
    /// A change from the store did not apply here; the follower retries.
    diverged: AtomicBool,
    /// Counts the store's changes applied here (a losing writer waits on it).
    applied: tokio::sync::watch::Sender<u64>,
    /// Where the follower's first watch starts (the revision start-up read).
    start_cursor: parking_lot::Mutex<Option<u64>>,
    /// This replica's name and address in the fleet's status.
    replica: String,
    address: parking_lot::Mutex<String>,
}

impl Control {
    /// Starts every namespace (config, then Admin's layer with its rollouts).
    pub async fn start(
        platform: Arc<Platform>,
        loaded: Loaded,
        subscriptions: Arc<Subscriptions>,
    ) -> Result<Control, StartupError> {
        let Loaded {
            state,
            store,
            stale,
            cursor,
        } = loaded;
        let config = &platform.config;
        let state_dir = config.state_dir();
        let kept_in = match (&store, &state_dir) {
            (Some(store), _) => Some(format!("the control store ({})", store.summary())),
            (None, Some(dir)) => Some(dir.join(state::STATE_FILE).display().to_string()),
            (None, None) => None,
        };
        let in_state = |field: String, name: &str| -> String {
            match (&kept_in, state.namespaces.contains_key(name)) {
                (Some(place), true) => {
                    format!("{field} (as changed through Admin; kept in {place})")
                }
                _ => field,
            }
        };
        for (digest, meta) in &state.patterns {
            platform.patterns.set_label(digest, &meta.label);
        }
        let (applied, _) = tokio::sync::watch::channel(0);
        let control = Control {
            drain: Duration::from_millis(config.server.shutdown_grace_ms),
            namespaces: Arc::new(Namespaces::new(Vec::new())),
            subscriptions,
            state_dir: state_dir.clone(),
            state: tokio::sync::Mutex::new(ControlState::default()),
            compiling: tokio::sync::Mutex::new(()),
            receiving: Arc::new(tokio::sync::Semaphore::new(
                platform.config.admin.max_concurrent_uploads,
            )),
            config_namespaces: parking_lot::RwLock::new(config.namespaces.clone()),
            platform: platform.clone(),
            store,
            stale: AtomicBool::new(stale),
            diverged: AtomicBool::new(false),
            applied,
            start_cursor: parking_lot::Mutex::new(cursor),
            replica: fleet::replica_id(),
            address: parking_lot::Mutex::new(String::new()),
        };
        // With a store, uploads this replica has not seen yet are fetched
        // (and compiled) before anything starts.
        for digest in state.patterns.keys() {
            control
                .fetch(&format!("{UPLOADED}{digest}"))
                .await
                .map_err(|e| StartupError::new(format!("pattern sha256:{digest}"), e))?;
        }
        let mut started = Vec::new();
        let mut dropped_rollouts = Vec::new();
        for (name, ns) in definitions(config, &state) {
            let namespace = Namespace::start(&name, &ns, &platform)
                .await
                .map_err(|e| StartupError::new(in_state(e.field, &name), e.message))?;
            if let Some(kept) = state.namespaces.get(&name) {
                let rollout = match &kept.rollout {
                    // A candidate that no longer starts must not keep the
                    // server down: the primary serves, the rollout is dropped.
                    Some(r) => {
                        match rollouts::candidate(&name, &ns, &r.pattern, r.shadow, &platform).await
                        {
                            Ok(candidate) => Some(Arc::new(Rollout::new(
                                Arc::new(candidate),
                                r.canary_percent,
                                r.shadow,
                            ))),
                            Err(e) => {
                                tracing::warn!(namespace = %name, error = %e, "the saved canary/shadow does not start; it is dropped and the primary version serves alone");
                                dropped_rollouts.push(name.clone());
                                None
                            }
                        }
                    }
                    None => None,
                };
                namespace.swap(Deployment {
                    primary: namespace.deployment().primary.clone(),
                    previous: kept.previous.clone(),
                    rollout,
                });
            }
            started.push(namespace);
        }
        let mut state = state;
        if !dropped_rollouts.is_empty() {
            for name in &dropped_rollouts {
                if let Some(kept) = state.namespaces.get_mut(name) {
                    kept.rollout = None;
                }
            }
            // A store's rollout stays: other replicas may start it.
            if control.store.is_none()
                && let Some(dir) = &state_dir
                && let Err(e) = state.save(dir)
            {
                tracing::warn!(error = %e, "cannot record the dropped rollouts; they are dropped again at the next start");
            }
        }
        if control.store.is_some() {
            control.write_snapshot(&state);
        }
        for namespace in started {
            control.namespaces.insert(namespace);
        }
        *control.state.lock().await = state;
        Ok(control)
    }

    pub fn namespaces(&self) -> &Arc<Namespaces> {
        &self.namespaces
    }

    pub fn config(&self) -> &Config {
        &self.platform.config
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    fn source(&self, name: &str, state: &ControlState) -> Source {
        match (
            self.config_namespaces.read().contains_key(name),
            state.namespaces.contains_key(name),
        ) {
            (true, true) => Source::ConfigAndAdmin,
            (false, _) => Source::Admin,
            (true, false) => Source::Config,
        }
    }

    fn view(&self, namespace: Arc<Namespace>, state: &ControlState) -> NamespaceView {
        NamespaceView {
            source: self.source(&namespace.name, state),
            namespace,
        }
    }

    /// Writes the state file. Its two fsyncs can take milliseconds on a
    /// busy disk: on the multi-threaded runtime the worker hands its other
    /// tasks (data-path calls) to the rest first. It stays synchronous so a
    /// caller that goes away cannot stop a change between this write and
    /// the swap it records.
    fn save(&self, state: &ControlState) -> Result<(), AdminError> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        let write = || state.save(dir);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            Ok(tokio::task::block_in_place(write)?)
        } else {
            Ok(write()?)
        }
    }

    fn get(&self, name: &str) -> Result<Arc<Namespace>, AdminError> {
        self.namespaces
            .get(name)
            .map_err(|e| AdminError::NotFound(e.to_string()))
    }

    pub async fn list(&self) -> Vec<NamespaceView> {
        let state = self.state.lock().await;
        let mut all = self.namespaces.all();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter().map(|ns| self.view(ns, &state)).collect()
    }

    pub async fn namespace(&self, name: &str) -> Result<NamespaceView, AdminError> {
        let state = self.state.lock().await;
        Ok(self.view(self.get(name)?, &state))
    }
}

fn invalid_start(e: StartupError) -> AdminError {
    AdminError::Invalid(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_layer_overrides_and_deletes_config_namespaces()
    -> Result<(), std::net::AddrParseError> {
        let mut config = Config::dev("127.0.0.1:0".parse()?);
        let mut state = ControlState::default();
        state.deleted.insert("events".into());
        let mut changed = config.namespaces["default"].clone();
        changed.limits.max_instances = Some(3);
        state.namespaces.insert(
            "default".into(),
            NamespaceState {
                config: changed.clone(),
                previous: None,
                rollout: None,
            },
        );
        config.namespaces.remove("devices");
        let defs = definitions(&config, &state);
        assert_eq!(defs.keys().collect::<Vec<_>>(), vec!["default"]);
        assert_eq!(defs["default"], changed);
        Ok(())
    }
}

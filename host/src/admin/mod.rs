//! The control plane behind `prism.v1.Admin`: namespaces created, changed
//! and deleted at runtime; patterns uploaded, deployed, canaried, shadowed,
//! promoted and rolled back. Every change is checked and started first
//! (a new version configured before it serves), then recorded in the state
//! directory, then swapped in — so a refused change leaves everything as it
//! was, and what was accepted survives a restart.

mod reload;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::subscription::Registry as Subscriptions;
use crate::clock::now_ms;
use crate::config::{Config, NamespaceConfig};
use crate::namespace::{
    Deployment, Namespace, Namespaces, Rollout, Source, StartupError, Version, Writes, inspect,
    world_of,
};
use crate::patterns::{UPLOADED, digest_of, is_digest};
use crate::platform::Platform;
use crate::runtime::builtin;
pub use reload::Reloaded;
pub use state::{ControlState, NamespaceState, PatternMeta, RolloutState, StateError};

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
    /// The state directory could not be written: nothing was changed.
    #[error("{0}")]
    Storage(String),
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
    /// The config file's `[namespaces]` as last loaded (start-up or SIGHUP).
    config_namespaces: parking_lot::RwLock<BTreeMap<String, NamespaceConfig>>,
}

impl Control {
    /// Starts every namespace (config, then Admin's layer with its rollouts).
    pub async fn start(
        platform: Arc<Platform>,
        state: ControlState,
        subscriptions: Arc<Subscriptions>,
    ) -> Result<Control, StartupError> {
        let config = &platform.config;
        let state_dir = config.state_dir();
        let in_state = |field: String, name: &str| -> String {
            match (&state_dir, state.namespaces.contains_key(name)) {
                (Some(dir), true) => format!(
                    "{field} (as changed through Admin; kept in {})",
                    dir.join("state.json").display()
                ),
                _ => field,
            }
        };
        for (digest, meta) in &state.patterns {
            platform.patterns.set_label(digest, &meta.label);
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
                    Some(r) => match candidate(&name, &ns, &r.pattern, r.shadow, &platform).await {
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
                    },
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
            if let Some(dir) = &state_dir
                && let Err(e) = state.save(dir)
            {
                tracing::warn!(error = %e, "cannot record the dropped rollouts; they are dropped again at the next start");
            }
        }
        Ok(Control {
            drain: Duration::from_millis(config.server.shutdown_grace_ms),
            namespaces: Arc::new(Namespaces::new(started)),
            subscriptions,
            state_dir,
            state: tokio::sync::Mutex::new(state),
            compiling: tokio::sync::Mutex::new(()),
            config_namespaces: parking_lot::RwLock::new(config.namespaces.clone()),
            platform,
        })
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

    /// Checks a definition the way start-up does, plus what only a running
    /// server knows (the engine's memory ceiling).
    fn check(&self, name: &str, ns: &NamespaceConfig) -> Result<(), AdminError> {
        self.platform
            .config
            .check_namespace(name, ns)
            .map_err(|(field, message)| AdminError::Invalid(format!("{field}: {message}")))?;
        let memory = ns
            .limits
            .resolve(&self.platform.config.runtime.limits)
            .instance
            .memory_bytes;
        let ceiling = self.platform.runtime.max_memory_bytes();
        if memory > ceiling {
            return Err(AdminError::Invalid(format!(
                "namespaces.{name}.limits.memory_limit_mib: {} MiB is more than this server's engine was started with ({} MiB, the largest limit configured at start); raise [runtime.limits] memory_limit_mib and restart",
                memory >> 20,
                ceiling >> 20
            )));
        }
        Ok(())
    }

    pub async fn create(
        &self,
        name: &str,
        mut ns: NamespaceConfig,
    ) -> Result<NamespaceView, AdminError> {
        let mut state = self.state.lock().await;
        if self.namespaces.get(name).is_ok() {
            return Err(AdminError::AlreadyExists(format!(
                "namespace '{}' already exists; update it, or delete it first",
                crate::namespace::shorten(name)
            )));
        }
        ns.pattern = self.reference(&ns.pattern, &state)?;
        self.check(name, &ns)?;
        let namespace = Namespace::start(name, &ns, &self.platform)
            .await
            .map_err(invalid_start)?;
        let mut next = state.clone();
        next.deleted.remove(name);
        next.namespaces.insert(
            name.to_string(),
            NamespaceState {
                config: ns,
                previous: None,
                rollout: None,
            },
        );
        self.save(&next)?;
        *state = next;
        self.namespaces.insert(namespace);
        tracing::info!(namespace = name, "namespace created through Admin");
        Ok(self.view(self.get(name)?, &state))
    }

    /// Replaces the namespace's definition with `change(current)`: a new
    /// namespace (instances configured) is started, then swapped in.
    pub async fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut NamespaceConfig) -> Result<(), AdminError>,
    ) -> Result<NamespaceView, AdminError> {
        let mut state = self.state.lock().await;
        let current = self.get(name)?;
        let deployment = current.deployment();
        if deployment.rollout.is_some() {
            return Err(AdminError::FailedPrecondition(format!(
                "namespace '{name}' has a rollout in progress; promote or roll it back first"
            )));
        }
        let mut ns = current.effective_config();
        change(&mut ns)?;
        if ns == current.effective_config() {
            return Ok(self.view(current, &state));
        }
        self.check(name, &ns)?;
        let replacement = Namespace::start(name, &ns, &self.platform)
            .await
            .map_err(invalid_start)?;
        replacement
            .deployment()
            .primary
            .warm(name, deployment.primary.live_instances())
            .await;
        replacement.swap(Deployment {
            primary: replacement.deployment().primary.clone(),
            previous: deployment.previous.clone(),
            rollout: None,
        });
        let mut next = state.clone();
        next.namespaces.insert(
            name.to_string(),
            NamespaceState {
                config: ns.clone(),
                previous: deployment.previous.clone(),
                rollout: None,
            },
        );
        self.save(&next)?;
        *state = next;
        let rebound = ns.slots != current.config.slots;
        self.namespaces.insert(replacement);
        if rebound {
            // Streams hold the old backends: end them so clients resubscribe
            // on the new ones.
            self.subscriptions.end_namespace(
                name,
                &tonic::Status::unavailable(format!(
                    "namespace '{name}' was reconfigured onto other backends; subscribe again"
                )),
            );
        }
        tracing::info!(namespace = name, rebound, "namespace updated through Admin");
        Ok(self.view(self.get(name)?, &state))
    }

    /// Removes a namespace: new calls get NOT_FOUND at once, its streams
    /// end, calls in flight finish (up to the shutdown grace), then its
    /// data is removed if `purge`. Returns how many keys/identities went.
    pub async fn delete(&self, name: &str, purge: bool) -> Result<u64, AdminError> {
        let mut state = self.state.lock().await;
        let namespace = self.get(name)?;
        let mut next = state.clone();
        next.namespaces.remove(name);
        if self.config_namespaces.read().contains_key(name) {
            next.deleted.insert(name.to_string());
        }
        self.save(&next)?;
        *state = next;
        // Out of the routing map before the lock goes, and the lock is held
        // through the drain and purge: no create, deploy or update of the
        // same name can interleave (a re-created namespace's data must not
        // be purged, nor a deleted one written back).
        let ended = self.retire(&namespace, "was deleted").await;
        let mut purged = 0;
        if purge {
            let slots = namespace.deployment().primary.kind.slots().clone();
            if namespace.config.slots.contains_key("kv") {
                purged += slots.kv.purge().await.map_err(purge_failed)?;
            }
            if namespace.config.slots.contains_key("registry") {
                purged += slots.registry.purge().await.map_err(purge_failed)?;
            }
        }
        drop(state);
        tracing::info!(
            namespace = name,
            streams_ended = ended,
            purged,
            "namespace deleted through Admin"
        );
        Ok(purged)
    }

    /// Takes a namespace out of service: new calls get NOT_FOUND at once,
    /// its streams end (telling clients it `why`), and calls in flight get
    /// up to the shutdown grace to finish. Returns how many streams ended.
    async fn retire(&self, namespace: &Namespace, why: &str) -> usize {
        let name = &namespace.name;
        self.namespaces.remove(name);
        let ended = self.subscriptions.end_namespace(
            name,
            &tonic::Status::not_found(format!("namespace '{name}' {why}")),
        );
        let started = Instant::now();
        while namespace.admission.load().0 > 0 && started.elapsed() < self.drain {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ended
    }

    /// Checks a component against the worlds, compiles it (into the
    /// runtime's cache, so deploying it is quick) and keeps it by digest.
    pub async fn upload(&self, label: &str, bytes: Vec<u8>) -> Result<PatternEntry, AdminError> {
        let digest = digest_of(&bytes);
        if let Some(meta) = self.state.lock().await.patterns.get(&digest) {
            return Ok(PatternEntry {
                digest,
                meta: meta.clone(),
                builtin: false,
            });
        }
        let label = if label.trim().is_empty() {
            format!("upload {}", &digest[..12])
        } else {
            crate::namespace::shorten(label.trim())
        };
        let bytes: Arc<[u8]> = Arc::from(bytes);
        // Compiling takes cranelift a while: keep it off the request threads.
        let (platform, checked, named) = (self.platform.clone(), bytes.clone(), label.clone());
        // One compile at a time: uploads must not take every core from the data path.
        let _compiling = self.compiling.lock().await;
        let (world, imports) =
            tokio::task::spawn_blocking(move || inspect(&platform.runtime, &checked, &named))
                .await
                .map_err(|e| AdminError::Internal(format!("checking the component failed: {e}")))?
                .map_err(AdminError::Invalid)?;
        let meta = PatternMeta {
            label,
            world: world.to_string(),
            size: bytes.len() as u64,
            uploaded_at_ms: now_ms(),
            imports,
        };
        let mut state = self.state.lock().await;
        self.platform.patterns.put(&digest, bytes).map_err(|e| {
            AdminError::Storage(format!(
                "cannot keep the uploaded pattern: {e}; nothing was changed"
            ))
        })?;
        let mut next = state.clone();
        next.patterns.insert(digest.clone(), meta.clone());
        self.save(&next)?;
        *state = next;
        self.platform.patterns.set_label(&digest, &meta.label);
        tracing::info!(digest = %digest, world, size = meta.size, "pattern uploaded");
        Ok(PatternEntry {
            digest,
            meta,
            builtin: false,
        })
    }

    /// Built-in patterns, then uploads (newest first).
    pub async fn patterns(&self) -> Vec<PatternEntry> {
        let mut out: Vec<PatternEntry> = builtin::NAMES
            .iter()
            .filter_map(|name| {
                let bytes = builtin::builtin(name)?;
                Some(PatternEntry {
                    digest: digest_of(bytes),
                    meta: PatternMeta {
                        label: name.to_string(),
                        // Built-ins are named after the world they serve.
                        world: name.to_string(),
                        size: bytes.len() as u64,
                        uploaded_at_ms: 0,
                        imports: Vec::new(),
                    },
                    builtin: true,
                })
            })
            .collect();
        let state = self.state.lock().await;
        let mut uploads: Vec<PatternEntry> = state
            .patterns
            .iter()
            .map(|(digest, meta)| PatternEntry {
                digest: digest.clone(),
                meta: meta.clone(),
                builtin: false,
            })
            .collect();
        uploads.sort_by_key(|p| std::cmp::Reverse(p.meta.uploaded_at_ms));
        out.extend(uploads);
        out
    }

    /// A pattern as a namespace names it: a built-in name, or
    /// `sha256:<digest>` of an upload (a bare digest or a unique prefix of
    /// at least 8 hex digits is accepted).
    fn reference(&self, pattern: &str, state: &ControlState) -> Result<String, AdminError> {
        let pattern = pattern.trim();
        if builtin::builtin(pattern).is_some() {
            return Ok(pattern.to_string());
        }
        let hex = pattern.strip_prefix(UPLOADED).unwrap_or(pattern);
        if is_digest(hex) {
            if state.patterns.contains_key(hex) {
                return Ok(format!("{UPLOADED}{hex}"));
            }
        } else if hex.len() >= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<&String> = state
                .patterns
                .keys()
                .filter(|d| d.starts_with(hex))
                .collect();
            match matches.as_slice() {
                [one] => return Ok(format!("{UPLOADED}{one}")),
                [] => {}
                _ => {
                    return Err(AdminError::Invalid(format!(
                        "'{hex}' is the start of {} uploaded patterns' digests; give more of it",
                        matches.len()
                    )));
                }
            }
        } else {
            return Err(AdminError::Invalid(format!(
                "'{}' is neither a built-in pattern ({}) nor an uploaded pattern's digest (Admin deploys uploads, not server paths: prism admin upload FILE.wasm)",
                crate::namespace::shorten(pattern),
                builtin::NAMES.join(", ")
            )));
        }
        Err(AdminError::NotFound(format!(
            "no uploaded pattern has digest {}; upload it first (prism admin upload FILE.wasm)",
            crate::namespace::shorten(hex)
        )))
    }

    /// Serves `name` with `pattern`: the new version is started and
    /// configured first; then it replaces the primary, takes
    /// `canary_percent` of the calls, or (shadow) receives mirrored reads.
    pub async fn deploy(
        &self,
        name: &str,
        pattern: &str,
        canary_percent: u32,
        shadow: bool,
    ) -> Result<NamespaceView, AdminError> {
        if canary_percent > 100 {
            return Err(AdminError::Invalid(format!(
                "canary_percent is {canary_percent}; it is a share of calls, 0-100"
            )));
        }
        if shadow && canary_percent > 0 {
            return Err(AdminError::Invalid(
                "a deploy is a canary (a share of calls served by the new version) or a shadow (reads mirrored to it), not both".into(),
            ));
        }
        let mut state = self.state.lock().await;
        let namespace = self.get(name)?;
        let reference = self.reference(pattern, &state)?;
        let current = namespace.deployment();
        let ns = NamespaceConfig {
            pattern: reference.clone(),
            ..namespace.effective_config()
        };
        let started = Instant::now();
        // A component not yet compiled (a restart with an empty cache) is
        // compiled here, off the request threads; starting it then hits the cache.
        let world = {
            let (platform, reference) = (self.platform.clone(), reference.clone());
            tokio::task::spawn_blocking(move || world_of(&reference, &platform))
                .await
                .map_err(|e| AdminError::Internal(format!("checking the pattern failed: {e}")))?
                .map_err(AdminError::Invalid)?
        };
        if world != current.primary.info.world {
            return Err(AdminError::Invalid(format!(
                "the pattern serves the {world} world but namespace '{name}' serves {}; a deploy keeps the world (create another namespace for it)",
                current.primary.info.world
            )));
        }
        let version = candidate(name, &ns, &reference, shadow, &self.platform)
            .await
            .map_err(|e| {
                AdminError::Invalid(format!(
                    "{e}; the namespace keeps serving {}",
                    current.primary.info.label
                ))
            })?;
        let rolling = shadow || canary_percent > 0;
        // As many instances as the calls it takes over keep busy now.
        let live = current.primary.live_instances();
        let share = if shadow {
            100
        } else if rolling {
            canary_percent as usize
        } else {
            100
        };
        version.warm(name, (live * share).div_ceil(100)).await;
        let version = Arc::new(version);
        let deployment = if rolling {
            Deployment {
                primary: current.primary.clone(),
                previous: current.previous.clone(),
                rollout: Some(Arc::new(Rollout::new(version, canary_percent, shadow))),
            }
        } else {
            Deployment {
                primary: version,
                previous: Some(current.primary.info.clone()),
                rollout: None,
            }
        };
        self.switch(&mut state, &namespace, deployment)?;
        tracing::info!(
            namespace = name,
            pattern = %reference,
            canary_percent,
            shadow,
            ready_ms = started.elapsed().as_secs_f64() * 1000.0,
            "pattern deployed"
        );
        Ok(self.view(namespace, &state))
    }

    /// Records `deployment` in the state file, then swaps it in: a save
    /// that fails leaves the namespace serving as before.
    fn switch(
        &self,
        state: &mut ControlState,
        namespace: &Namespace,
        deployment: Deployment,
    ) -> Result<(), AdminError> {
        let mut next = state.clone();
        next.namespaces
            .insert(namespace.name.clone(), kept(namespace, &deployment));
        self.save(&next)?;
        *state = next;
        namespace.swap(deployment);
        Ok(())
    }

    /// Makes the rollout's candidate the primary.
    pub async fn promote(&self, name: &str) -> Result<NamespaceView, AdminError> {
        let mut state = self.state.lock().await;
        let namespace = self.get(name)?;
        let current = namespace.deployment();
        let rollout = current.rollout.clone().ok_or_else(|| {
            AdminError::FailedPrecondition(format!(
                "namespace '{name}' has no canary or shadow to promote; deploy with --canary N or --shadow first"
            ))
        })?;
        let primary = if rollout.shadow {
            // A shadow's writes go nowhere: start it again with live slots.
            let ns = NamespaceConfig {
                pattern: rollout.candidate.info.reference.clone(),
                ..namespace.effective_config()
            };
            Arc::new(
                Version::start(name, &ns, &self.platform, Writes::Live)
                    .await
                    .map_err(invalid_start)?,
            )
        } else {
            rollout.candidate.clone()
        };
        primary
            .warm(
                name,
                current.primary.live_instances() + rollout.candidate.live_instances(),
            )
            .await;
        let deployment = Deployment {
            primary,
            previous: Some(current.primary.info.clone()),
            rollout: None,
        };
        self.switch(&mut state, &namespace, deployment)?;
        tracing::info!(namespace = name, "rollout promoted");
        Ok(self.view(namespace, &state))
    }

    /// Drops a canary or shadow; without one, returns to the previous version.
    pub async fn rollback(&self, name: &str) -> Result<NamespaceView, AdminError> {
        let mut state = self.state.lock().await;
        let namespace = self.get(name)?;
        let current = namespace.deployment();
        let deployment = if current.rollout.is_some() {
            Deployment {
                primary: current.primary.clone(),
                previous: current.previous.clone(),
                rollout: None,
            }
        } else {
            let previous = current.previous.clone().ok_or_else(|| {
                AdminError::FailedPrecondition(format!(
                    "namespace '{name}' has no rollout and no previous version to roll back to"
                ))
            })?;
            let ns = NamespaceConfig {
                pattern: previous.reference.clone(),
                ..namespace.effective_config()
            };
            let version = Version::start(name, &ns, &self.platform, Writes::Live)
                .await
                .map_err(|e| {
                    AdminError::FailedPrecondition(format!(
                        "the previous version ({}) cannot start again: {e}",
                        previous.label
                    ))
                })?;
            version.warm(name, current.primary.live_instances()).await;
            Deployment {
                primary: Arc::new(version),
                previous: Some(current.primary.info.clone()),
                rollout: None,
            }
        };
        self.switch(&mut state, &namespace, deployment)?;
        tracing::info!(namespace = name, "rolled back");
        Ok(self.view(namespace, &state))
    }
}

/// A candidate version: live, or (shadow) with its writes suppressed.
async fn candidate(
    name: &str,
    ns: &NamespaceConfig,
    reference: &str,
    shadow: bool,
    platform: &Platform,
) -> Result<Version, StartupError> {
    let ns = NamespaceConfig {
        pattern: reference.to_string(),
        ..ns.clone()
    };
    let writes = if shadow {
        Writes::Suppressed
    } else {
        Writes::Live
    };
    Version::start(name, &ns, platform, writes).await
}

/// What the state file keeps of a namespace serving `deployment`.
fn kept(namespace: &Namespace, deployment: &Deployment) -> NamespaceState {
    NamespaceState {
        config: NamespaceConfig {
            pattern: deployment.primary.info.reference.clone(),
            ..namespace.config.clone()
        },
        previous: deployment.previous.clone(),
        rollout: deployment.rollout.as_ref().map(|r| RolloutState {
            pattern: r.candidate.info.reference.clone(),
            canary_percent: r.canary_percent,
            shadow: r.shadow,
        }),
    }
}

fn invalid_start(e: StartupError) -> AdminError {
    AdminError::Invalid(e.to_string())
}

fn purge_failed(e: crate::backend::BackendError) -> AdminError {
    AdminError::Storage(format!(
        "the namespace was deleted, but purging its data failed part way: {e}; delete what is left from the backend"
    ))
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

//! Admin's namespace lifecycle: create, update and delete (with purge),
//! checked the way start-up checks the config file.

use super::*;
use crate::config::LimitsConfig;

impl Control {
    /// Checks a definition the way start-up does, plus what only a running
    /// server knows (the engine's memory ceiling).
    pub(super) fn check(&self, name: &str, ns: &NamespaceConfig) -> Result<(), AdminError> {
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
                crate::text::shorten(name)
            )));
        }
        ns.pattern = self.reference(&ns.pattern, &state, name)?;
        if ns.limits == LimitsConfig::default() {
            // Limits are the operator's (setting them needs '*:admin'): a
            // namespace created again without any gets back those it had,
            // or the config file's for its name.
            if let Some(kept) = state.kept_limits.get(name).cloned().or_else(|| {
                self.config_namespaces
                    .read()
                    .get(name)
                    .map(|c| c.limits.clone())
            }) {
                ns.limits = kept;
            }
        }
        self.check(name, &ns)?;
        let namespace = Namespace::start(name, &ns, &self.platform)
            .await
            .map_err(invalid_start)?;
        let mut next = state.clone();
        next.deleted.remove(name);
        next.kept_limits.remove(name);
        next.namespaces.insert(
            name.to_string(),
            NamespaceState {
                config: ns,
                previous: None,
                rollout: None,
            },
        );
        self.commit(&state, &mut next).await?;
        *state = next;
        self.namespaces.insert(namespace);
        tracing::info!(namespace = name, "namespace created through Admin");
        Ok(self.view(self.get(name)?, &state))
    }

    /// Replaces the namespace's definition with `change(current)`: a new
    /// namespace (instances configured) is started, then swapped in. A
    /// change is a read-modify-write: one that loses a race with another
    /// replica's is applied again over the winner's (a few times at most).
    pub async fn update(
        &self,
        name: &str,
        change: impl Fn(&mut NamespaceConfig) -> Result<(), AdminError>,
    ) -> Result<NamespaceView, AdminError> {
        let mut attempts = 0;
        loop {
            let seen = *self.applied.borrow();
            match self.update_once(name, &change).await {
                Err(AdminError::Aborted(why)) if attempts < 8 => {
                    attempts += 1;
                    tracing::debug!(namespace = name, attempts, reason = %why, "update lost a race; applying it again over the winner's");
                    self.await_applied(seen, Duration::from_secs(2)).await;
                }
                result => return result,
            }
        }
    }

    async fn update_once(
        &self,
        name: &str,
        change: &impl Fn(&mut NamespaceConfig) -> Result<(), AdminError>,
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
        self.commit(&state, &mut next).await?;
        *state = next;
        let rebound = ns.slots != current.config.slots;
        self.namespaces.insert(replacement);
        if rebound {
            self.end_rebound_streams(name);
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
        let limits = namespace.effective_config().limits;
        if limits != LimitsConfig::default() {
            next.kept_limits.insert(name.to_string(), limits);
        }
        self.commit(&state, &mut next).await?;
        *state = next;
        // Out of the routing map before the lock goes, and the lock is held
        // through the drain and purge: no create, deploy or update of the
        // same name can interleave (a re-created namespace's data must not
        // be purged, nor a deleted one written back).
        let ended = self.retire(&namespace, "was deleted").await;
        let mut purged = 0;
        if purge {
            let slots = namespace.deployment().primary.pattern.slots().clone();
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

    /// Streams hold the old backends of a namespace moved onto others: end
    /// them so clients resubscribe on the new ones.
    pub(super) fn end_rebound_streams(&self, name: &str) {
        self.subscriptions.end_namespace(
            name,
            &tonic::Status::unavailable(format!(
                "namespace '{name}' was reconfigured onto other backends; subscribe again"
            )),
        );
    }

    /// Takes a namespace out of service: new calls get NOT_FOUND at once,
    /// its streams end (telling clients it `why`), and calls in flight get
    /// up to the shutdown grace to finish. Returns how many streams ended.
    pub(super) async fn retire(&self, namespace: &Namespace, why: &str) -> usize {
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
}

fn purge_failed(e: crate::backend::BackendError) -> AdminError {
    AdminError::Storage(format!(
        "the namespace was deleted, but purging its data failed part way: {e}; delete what is left from the backend"
    ))
}

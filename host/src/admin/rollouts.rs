//! Admin's rollouts: deploy (optionally as a canary share or a shadow),
//! promote, rollback, and the version switch they share.

use super::*;

impl Control {
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
        let reference = self.reference(pattern, &state, name)?;
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
        self.switch(&mut state, &namespace, deployment).await?;
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
    async fn switch(
        &self,
        state: &mut ControlState,
        namespace: &Namespace,
        deployment: Deployment,
    ) -> Result<(), AdminError> {
        let mut next = state.clone();
        next.namespaces
            .insert(namespace.name.clone(), kept(namespace, &deployment));
        self.commit(state, &mut next).await?;
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
        self.switch(&mut state, &namespace, deployment).await?;
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
        self.switch(&mut state, &namespace, deployment).await?;
        tracing::info!(namespace = name, "rolled back");
        Ok(self.view(namespace, &state))
    }
}

/// A candidate version: live, or (shadow) with its writes suppressed.
pub(super) async fn candidate(
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

//! SIGHUP: the config file is read again and its `[namespaces]` applied to
//! the running server without dropping a connection — added namespaces
//! start, removed ones are retired (their data kept), changed ones are
//! replaced the way an Admin update replaces them. The reload is checked
//! whole before anything changes: if a namespace does not start, or a
//! section only a restart can apply changed, the old config keeps serving.

use std::sync::Arc;

use super::{AdminError, Control, invalid_start, layered};
use crate::config::{Config, NamespaceConfig};
use crate::namespace::{Deployment, Namespace};

/// What a reload changed, by namespace name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Changed in the file, but Admin's layer decides them (created or
    /// changed through Admin): left as Admin set them.
    pub managed_by_admin: Vec<String>,
}

/// The sections a reload cannot apply (the listener, engine, backends and
/// authenticator are built once), named as the file names them.
fn restart_only(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if running.server != new.server {
        changed.push("[server]");
    }
    if running.runtime != new.runtime {
        changed.push("[runtime]");
    }
    if running.backends != new.backends {
        changed.push("[backends]");
    }
    if running.auth != new.auth {
        changed.push("[auth]");
    }
    if running.admin != new.admin {
        changed.push("[admin]");
    }
    if running.telemetry != new.telemetry {
        changed.push("[telemetry]");
    }
    changed
}

impl Control {
    /// Applies `new`'s namespaces (see the module docs).
    pub async fn reload(&self, new: &Config) -> Result<Reloaded, AdminError> {
        let sections = restart_only(&self.platform.config, new);
        if !sections.is_empty() {
            return Err(AdminError::FailedPrecondition(format!(
                "{} changed; a reload applies [namespaces] only: restart Prism to apply the rest",
                sections.join(", ")
            )));
        }
        // Held throughout: no Admin change interleaves with a reload.
        let state = self.state.lock().await;
        let old_file = self.config_namespaces.read().clone();
        let old = layered(&old_file, &state);
        let wanted = layered(&new.namespaces, &state);
        let mut report = Reloaded {
            managed_by_admin: new
                .namespaces
                .iter()
                .filter(|(name, ns)| {
                    state.namespaces.contains_key(*name) && old_file.get(*name) != Some(*ns)
                })
                .map(|(name, _)| name.clone())
                .collect(),
            ..Reloaded::default()
        };
        // Everything new or changed is started (configured) first; any
        // failure leaves the server exactly as it was.
        let mut started: Vec<(Namespace, NamespaceConfig)> = Vec::new();
        for (name, ns) in &wanted {
            if old.get(name) == Some(ns) {
                continue;
            }
            self.check(name, ns)?;
            let namespace = Namespace::start(name, ns, &self.platform)
                .await
                .map_err(invalid_start)?;
            // Warmed before anything switches, so the switch itself is quick.
            if let Ok(current) = self.namespaces.get(name) {
                namespace
                    .deployment()
                    .primary
                    .warm(name, current.deployment().primary.live_instances())
                    .await;
            }
            started.push((namespace, ns.clone()));
        }
        let removed: Vec<Arc<Namespace>> = old
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .filter_map(|name| self.namespaces.get(name).ok())
            .collect();
        *self.config_namespaces.write() = new.namespaces.clone();
        for (replacement, ns) in started {
            let name = replacement.name.clone();
            match self.namespaces.get(&name) {
                Ok(current) => {
                    let deployment = current.deployment();
                    replacement.swap(Deployment {
                        primary: replacement.deployment().primary.clone(),
                        previous: deployment.previous.clone(),
                        rollout: None,
                    });
                    let rebound = ns.slots != current.config.slots;
                    self.namespaces.insert(replacement);
                    if rebound {
                        self.end_rebound_streams(&name);
                    }
                    report.changed.push(name);
                }
                Err(_) => {
                    self.namespaces.insert(replacement);
                    report.added.push(name);
                }
            }
        }
        for namespace in removed {
            self.retire(&namespace, "was removed from the config file")
                .await;
            report.removed.push(namespace.name.clone());
        }
        drop(state);
        Ok(report)
    }
}

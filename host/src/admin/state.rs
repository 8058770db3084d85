//! The Admin layer over the config file, kept in `<state_dir>/state.json`:
//! namespaces created or changed through Admin, config namespaces deleted
//! through it, rollouts in progress, and uploaded patterns' descriptions
//! (their bytes sit beside it in `patterns/`). Written whole to a temporary
//! file and renamed into place, so a crash leaves the old state or the new.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{LimitsConfig, NamespaceConfig};
use crate::namespace::VersionInfo;

/// Bumped when the file's shape changes incompatibly.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ControlState {
    #[serde(default)]
    pub format: u32,
    /// Namespaces as Admin left them (created, or config ones changed).
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceState>,
    /// Config-file namespaces deleted through Admin.
    #[serde(default)]
    pub deleted: BTreeSet<String>,
    /// Uploaded patterns by digest.
    #[serde(default)]
    pub patterns: BTreeMap<String, PatternMeta>,
    /// The limits of deleted namespaces that had any: re-created without
    /// limits, a namespace gets these back, so an `ns:admin` grant (which
    /// may delete and create, not set limits) cannot shed the operator's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kept_limits: BTreeMap<String, LimitsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamespaceState {
    /// Its definition; `pattern` is the primary version's reference.
    pub config: NamespaceConfig,
    /// What Rollback returns to.
    #[serde(default)]
    pub previous: Option<VersionInfo>,
    #[serde(default)]
    pub rollout: Option<RolloutState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutState {
    pub pattern: String,
    pub canary_percent: u32,
    pub shadow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PatternMeta {
    pub label: String,
    pub world: String,
    pub size: u64,
    pub uploaded_at_ms: u64,
    #[serde(default)]
    pub imports: Vec<String>,
    /// The namespaces whose admins uploaded it, which alone see and deploy
    /// it; `*` for every namespace (an operator's upload, and uploads made
    /// before uploads had owners).
    #[serde(default = "every_namespace")]
    pub scope: BTreeSet<String>,
}

/// The scope of an upload every namespace may use.
pub const EVERY_NAMESPACE: &str = "*";

fn every_namespace() -> BTreeSet<String> {
    BTreeSet::from([EVERY_NAMESPACE.to_string()])
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a Prism state file ({reason}); move it aside to start from the config file alone"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ControlState {
    fn file(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// The state kept in `dir`; empty when nothing was ever written.
    pub fn load(dir: &Path) -> Result<ControlState, StateError> {
        let path = ControlState::file(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ControlState::default());
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: ControlState = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if state.format > FORMAT {
            return Err(StateError::Corrupt {
                path,
                reason: format!(
                    "it was written by a newer Prism (format {}, this one reads {FORMAT})",
                    state.format
                ),
            });
        }
        Ok(state)
    }

    /// Writes the state to `dir` atomically (temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = ControlState::file(dir);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".state.{}.tmp", std::process::id()));
            let state = ControlState {
                format: FORMAT,
                ..self.clone()
            };
            let text = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // The rename is durable once the directory is.
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|source| StateError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_refuses_garbage() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("prism-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(ControlState::load(&dir)?, ControlState::default());
        let mut state = ControlState::default();
        state.deleted.insert("old".into());
        state.namespaces.insert(
            "orders".into(),
            NamespaceState {
                config: NamespaceConfig {
                    pattern: "keyvalue".into(),
                    slots: BTreeMap::from([("kv".into(), "mem".into())]),
                    settings: BTreeMap::from([("max_value_bytes".into(), toml::Value::Integer(9))]),
                    limits: crate::config::LimitsConfig {
                        max_instances: Some(4),
                        ..Default::default()
                    },
                },
                previous: Some(VersionInfo {
                    reference: "pubsub".into(),
                    label: "built-in pattern 'pubsub'".into(),
                    digest: "00".into(),
                    world: "pubsub".into(),
                }),
                rollout: Some(RolloutState {
                    pattern: "sha256:ab".into(),
                    canary_percent: 10,
                    shadow: false,
                }),
            },
        );
        state.save(&dir)?;
        let loaded = ControlState::load(&dir)?;
        assert_eq!(loaded.namespaces, state.namespaces);
        assert_eq!(loaded.deleted, state.deleted);
        assert_eq!(loaded.format, FORMAT);
        std::fs::write(dir.join("state.json"), "{ not json")?;
        let err = ControlState::load(&dir).err().ok_or("garbage loaded")?;
        assert!(err.to_string().contains("not a Prism state file"), "{err}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}

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
    /// With a control store: the store's revision of each document this
    /// state holds (what a write expects to replace); removed ones are not
    /// here, a write expects them as 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revisions: BTreeMap<String, u64>,
    /// Documents removed lately, with the removal's revision and when it
    /// was seen: a late delivery of an older write must not revive them.
    /// Forgotten after `[admin] tombstone_ttl_ms`, as the store forgets them.
    #[serde(skip)]
    pub tombstones: BTreeMap<String, (u64, std::time::Instant)>,
}

/// What one namespace's document in a control store holds: the parts of
/// [`ControlState`] under its name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct NamespaceDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<NamespaceState>,
    #[serde(default)]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kept_limits: Option<LimitsConfig>,
}

/// What a control store document is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKey<'a> {
    Namespace(&'a str),
    Pattern(&'a str),
}

impl<'a> DocKey<'a> {
    pub fn parse(key: &'a str) -> Option<DocKey<'a>> {
        if let Some(name) = key.strip_prefix("ns.") {
            Some(DocKey::Namespace(name))
        } else {
            key.strip_prefix("pattern.").map(DocKey::Pattern)
        }
    }

    pub fn key(self) -> String {
        match self {
            DocKey::Namespace(name) => format!("ns.{name}"),
            DocKey::Pattern(digest) => format!("pattern.{digest}"),
        }
    }
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
    /// The control store cannot be read and no snapshot of it is kept here.
    #[error("[admin] store: {0}")]
    Store(String),
}

/// The file of the state in `state_dir` without a control store.
pub const STATE_FILE: &str = "state.json";
/// With a control store: the last state this replica applied, which it
/// serves if it restarts while the store is down.
pub const SNAPSHOT_FILE: &str = "snapshot.json";

impl ControlState {
    /// The documents of a control store this state consists of.
    pub fn keys(&self) -> BTreeSet<String> {
        let names = self
            .namespaces
            .keys()
            .chain(&self.deleted)
            .chain(self.kept_limits.keys());
        names
            .map(|n| DocKey::Namespace(n).key())
            .chain(self.patterns.keys().map(|d| DocKey::Pattern(d).key()))
            .collect()
    }

    fn namespace_doc(&self, name: &str) -> Option<NamespaceDoc> {
        let doc = NamespaceDoc {
            state: self.namespaces.get(name).cloned(),
            deleted: self.deleted.contains(name),
            kept_limits: self.kept_limits.get(name).cloned(),
        };
        (doc != NamespaceDoc::default()).then_some(doc)
    }

    /// The document under `key` (None: nothing, a tombstone in the store).
    pub fn document(&self, key: &str) -> Option<Vec<u8>> {
        let bytes = match DocKey::parse(key)? {
            DocKey::Namespace(name) => serde_json::to_vec(&self.namespace_doc(name)?),
            DocKey::Pattern(digest) => serde_json::to_vec(self.patterns.get(digest)?),
        };
        bytes.ok()
    }

    /// The documents `next` changes, with their new contents.
    pub fn changes(&self, next: &ControlState) -> Vec<(String, Option<Vec<u8>>)> {
        let mut keys = self.keys();
        keys.extend(next.keys());
        keys.into_iter()
            .filter(|key| match DocKey::parse(key) {
                Some(DocKey::Namespace(n)) => self.namespace_doc(n) != next.namespace_doc(n),
                Some(DocKey::Pattern(d)) => self.patterns.get(d) != next.patterns.get(d),
                None => false,
            })
            .map(|key| {
                let value = next.document(&key);
                (key, value)
            })
            .collect()
    }

    /// Notes the store's revision of document `key`, which now has a
    /// value (`live`) or was removed.
    pub fn record(&mut self, key: String, revision: u64, live: bool) {
        if live {
            self.tombstones.remove(&key);
            self.revisions.insert(key, revision);
        } else {
            self.revisions.remove(&key);
            self.tombstones
                .insert(key, (revision, std::time::Instant::now()));
        }
    }

    /// The newest revision of `key` this state has seen (its value's, or
    /// a recent removal's; 0: none).
    pub fn seen(&self, key: &str) -> u64 {
        self.revisions
            .get(key)
            .or_else(|| self.tombstones.get(key).map(|(revision, _)| revision))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets the removals seen more than `keep` ago.
    pub fn forget_tombstones(&mut self, keep: std::time::Duration) {
        self.tombstones.retain(|_, (_, at)| at.elapsed() < keep);
    }

    /// Takes in a store's document (None: a tombstone).
    pub fn set_document(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        match DocKey::parse(key) {
            Some(DocKey::Namespace(name)) => {
                let doc: NamespaceDoc = match value {
                    Some(bytes) => serde_json::from_slice(bytes).map_err(|e| e.to_string())?,
                    None => NamespaceDoc::default(),
                };
                let name = name.to_string();
                match doc.state {
                    Some(state) => self.namespaces.insert(name.clone(), state),
                    None => self.namespaces.remove(&name),
                };
                if doc.deleted {
                    self.deleted.insert(name.clone());
                } else {
                    self.deleted.remove(&name);
                }
                match doc.kept_limits {
                    Some(limits) => self.kept_limits.insert(name, limits),
                    None => self.kept_limits.remove(&name),
                };
            }
            Some(DocKey::Pattern(digest)) => {
                match value {
                    Some(bytes) => {
                        let meta: PatternMeta =
                            serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                        self.patterns.insert(digest.to_string(), meta);
                    }
                    None => {
                        self.patterns.remove(digest);
                    }
                };
            }
            None => return Err("not a document Prism writes".into()),
        }
        Ok(())
    }

    /// The state kept in `dir`; empty when nothing was ever written.
    pub fn load(dir: &Path) -> Result<ControlState, StateError> {
        ControlState::load_file(&dir.join(STATE_FILE))
    }

    /// The state in file `path`; empty when there is none.
    pub fn load_file(path: &Path) -> Result<ControlState, StateError> {
        let path = path.to_path_buf();
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
        self.save_as(dir, STATE_FILE)
    }

    /// Writes the state to `dir/name` atomically.
    pub fn save_as(&self, dir: &Path, name: &str) -> Result<(), StateError> {
        let path = dir.join(name);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
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
    fn removals_are_remembered_for_a_while_and_expected_as_absent() {
        let mut state = ControlState::default();
        state.record("ns.a".into(), 5, true);
        assert_eq!(
            (state.seen("ns.a"), state.revisions.get("ns.a")),
            (5, Some(&5))
        );
        // Removed: a write expects it absent (no revision), but a late
        // delivery of revision 5 is still older than what was seen.
        state.record("ns.a".into(), 9, false);
        assert_eq!((state.seen("ns.a"), state.revisions.get("ns.a")), (9, None));
        state.forget_tombstones(std::time::Duration::from_secs(60));
        assert_eq!(state.seen("ns.a"), 9);
        state.forget_tombstones(std::time::Duration::ZERO);
        assert_eq!(state.seen("ns.a"), 0);
        assert!(state.tombstones.is_empty());
        // Written again: live, nothing of the removal left.
        state.record("ns.a".into(), 12, false);
        state.record("ns.a".into(), 14, true);
        assert_eq!((state.seen("ns.a"), state.tombstones.len()), (14, 0));
    }

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

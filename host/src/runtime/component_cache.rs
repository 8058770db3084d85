//! Loads components: compiled once per process, and cached on disk as
//! precompiled artifacts so later starts skip cranelift.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::RuntimeError;

pub struct ComponentCache {
    /// None when no cache directory is usable; components are then compiled every start.
    dir: Option<PathBuf>,
    /// Components already loaded in this process, by content hash.
    loaded: Mutex<HashMap<[u8; 32], Component>>,
}

impl ComponentCache {
    pub fn new(dir: Option<PathBuf>) -> ComponentCache {
        let dir = dir.or_else(default_dir).filter(|d| match std::fs::create_dir_all(d) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "component cache disabled: cannot create its directory");
                false
            }
        });
        ComponentCache {
            dir,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The component in `bytes`; `label` names it in errors (a path or built-in name).
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        label: &str,
    ) -> Result<Component, RuntimeError> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(c) = self.loaded.lock().get(&digest) {
            return Ok(c.clone());
        }
        let artifact = self
            .dir
            .as_ref()
            .map(|d| d.join(artifact_name(engine, &digest)));
        let component = match artifact.as_deref().and_then(|p| deserialize(engine, p)) {
            Some(c) => c,
            None => {
                let started = std::time::Instant::now();
                let c =
                    Component::new(engine, bytes).map_err(|e| RuntimeError::InvalidComponent {
                        label: label.to_string(),
                        reason: format!("{e:#}"),
                    })?;
                tracing::info!(
                    pattern = label,
                    ms = started.elapsed().as_millis() as u64,
                    "compiled pattern component"
                );
                if let Some(path) = &artifact {
                    store(&c, path);
                }
                c
            }
        };
        self.loaded.lock().insert(digest, component.clone());
        Ok(component)
    }
}

fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("prism").join("components"))
}

/// Artifacts depend on the component and on the engine's settings and version.
fn artifact_name(engine: &Engine, digest: &[u8; 32]) -> String {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{:016x}.cwasm", h.finish())
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.exists() {
        return None;
    }
    // SAFETY: the file was written by `store` below (atomically, via rename)
    // from `Component::serialize` into the user's own cache directory, and
    // wasmtime checks its header and engine compatibility before use. Anyone
    // able to rewrite that directory can already rewrite the prism binary.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component");
            None
        }
    }
}

fn store(component: &Component, path: &Path) {
    let result = component
        .serialize()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not cache compiled component");
    }
}

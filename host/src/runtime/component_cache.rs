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
        // Created private (0700), whatever the umask: see `untrusted`.
        let create = |d: &Path| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
        };
        let dir = dir.or_else(default_dir).filter(|d| match create(d) {
            Ok(()) => match untrusted(d) {
                None => true,
                Some(why) => {
                    tracing::warn!(dir = %d.display(), why, "component cache disabled: its directory is not this user's alone (fix its owner or mode, or set [runtime] cache_dir)");
                    false
                }
            },
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

/// Why `path` could hold what another user wrote: owned by someone else
/// (root excepted), or writable by group or others. Deserializing a
/// precompiled component runs its machine code, so only files this user
/// alone could have written are loaded.
fn untrusted(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => return Some("its metadata cannot be read"),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Some("owned by another user");
    }
    if meta.mode() & 0o022 != 0 {
        return Some("writable by group or others");
    }
    None
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.exists() {
        return None;
    }
    if let Some(why) = untrusted(path) {
        tracing::warn!(path = %path.display(), why, "ignoring a cached component another user could have written");
        return None;
    }
    // SAFETY: the file was written by `store` below (atomically, via rename)
    // from `Component::serialize` into a cache directory only this user may
    // write (checked at start), is itself only this user's (checked just
    // above), and wasmtime checks its header and engine compatibility
    // before use.
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
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            // 0600 whatever the umask, or the next start would refuse it.
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(&bytes))
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not cache compiled component");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_cache_directory_others_may_write_is_not_used() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared)?;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777))?;
        assert!(ComponentCache::new(Some(shared)).dir.is_none());

        let private = dir.path().join("private");
        let cache = ComponentCache::new(Some(private.clone()));
        assert_eq!(cache.dir.as_deref(), Some(private.as_path()));
        let mode = std::fs::metadata(&private)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "created private whatever the umask");
        Ok(())
    }

    #[test]
    fn a_cached_artifact_others_may_write_is_not_loaded() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("x.cwasm");
        std::fs::write(&file, b"not a component")?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        assert_eq!(untrusted(&file), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
        assert_eq!(untrusted(&file), Some("writable by group or others"));
        let engine = Engine::default();
        assert!(deserialize(&engine, &file).is_none());
        Ok(())
    }
}

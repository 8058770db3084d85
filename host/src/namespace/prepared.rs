//! Pattern references resolved to components checked against Prism's
//! worlds, kept by digest: a redeploy, a rollback or the next namespace on
//! the same pattern reuses the checked component instead of reading,
//! hashing, loading and linking it again (a cached deploy's work was mostly
//! that, done twice).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::Platform;
use crate::patterns::{UPLOADED, digest_of, is_digest};
use crate::runtime::{Prepared, builtin};

/// A pattern ready to start a version of.
pub(super) struct Resolved {
    /// For people: "built-in pattern 'keyvalue'", an upload's label, a path.
    pub label: String,
    /// sha256 of the component, hex.
    pub digest: String,
    pub prepared: Arc<dyn Prepared>,
}

/// Checked components by digest. An entry holds the component (which the
/// runtime's component cache keeps loaded anyway) and its resolved imports,
/// so the cache grows with the distinct patterns served, as that one does.
#[derive(Default)]
pub struct PreparedCache {
    by_digest: Mutex<HashMap<String, Arc<dyn Prepared>>>,
}

impl PreparedCache {
    /// The pattern `reference` names: a built-in name, `sha256:<digest>` of
    /// an uploaded one, or a `.wasm` path (read each time: the file may change).
    pub(super) fn resolve(&self, reference: &str, platform: &Platform) -> Result<Resolved, String> {
        let known = known_digest(reference, platform)?;
        if let Some((digest, label)) = &known
            && let Some(prepared) = self.by_digest.lock().get(digest.as_str())
        {
            return Ok(Resolved {
                label: label.clone(),
                digest: digest.clone(),
                prepared: prepared.clone(),
            });
        }
        let (bytes, label) = pattern_bytes(reference, platform)?;
        let digest = digest_of(&bytes);
        if let Some((named, _)) = &known
            && *named != digest
        {
            return Err(format!(
                "the stored component for '{reference}' does not match its digest (the pattern store is damaged); upload the pattern again"
            ));
        }
        let component = platform
            .runtime
            .load(&bytes, &label)
            .map_err(|e| e.to_string())?;
        let prepared = platform.runtime.prepare_any(&component, &label)?;
        self.by_digest
            .lock()
            .insert(digest.clone(), prepared.clone());
        Ok(Resolved {
            label,
            digest,
            prepared,
        })
    }
}

/// The digest and label of a built-in or uploaded pattern, known without
/// reading the component; `None` for a path.
fn known_digest(reference: &str, platform: &Platform) -> Result<Option<(String, String)>, String> {
    if let Some(digest) = builtin_digest(reference) {
        return Ok(Some((digest.to_string(), builtin_label(reference))));
    }
    if let Some(digest) = reference.strip_prefix(UPLOADED) {
        if !is_digest(digest) || !platform.patterns.contains(digest) {
            return Err(no_upload(reference));
        }
        return Ok(Some((digest.to_string(), platform.patterns.label(digest))));
    }
    Ok(None)
}

/// Built-in components are part of the binary: each is hashed once.
fn builtin_digest(name: &str) -> Option<&'static str> {
    static DIGESTS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    let digests = DIGESTS.get_or_init(|| {
        builtin::NAMES
            .iter()
            .filter_map(|n| builtin::builtin(n).map(|bytes| (*n, digest_of(bytes))))
            .collect()
    });
    digests.get(name).map(String::as_str)
}

fn builtin_label(name: &str) -> String {
    format!("built-in pattern '{name}'")
}

fn no_upload(reference: &str) -> String {
    // A whole `sha256:<digest>` is shown; anything longer is cut.
    let shown = if reference.len() <= UPLOADED.len() + 64 {
        reference.to_string()
    } else {
        crate::text::shorten(reference)
    };
    format!(
        "'{shown}' names no uploaded pattern (upload it through the Admin API: prism admin upload FILE.wasm)"
    )
}

/// A component's bytes as they are held: part of the binary, shared with
/// the pattern store (an upload, which can be megabytes, is not copied to
/// be checked), or read from a file.
enum PatternBytes {
    Builtin(&'static [u8]),
    Stored(Arc<[u8]>),
    File(Vec<u8>),
}

impl Deref for PatternBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            PatternBytes::Builtin(bytes) => bytes,
            PatternBytes::Stored(bytes) => bytes,
            PatternBytes::File(bytes) => bytes,
        }
    }
}

/// A built-in pattern's bytes, an uploaded one's, or a `.wasm` file's; and a
/// label for errors.
fn pattern_bytes(pattern: &str, platform: &Platform) -> Result<(PatternBytes, String), String> {
    if let Some(bytes) = builtin::builtin(pattern) {
        return Ok((PatternBytes::Builtin(bytes), builtin_label(pattern)));
    }
    if let Some(digest) = pattern.strip_prefix(UPLOADED) {
        let bytes = Some(digest)
            .filter(|d| is_digest(d))
            .and_then(|d| platform.patterns.get(d))
            .ok_or_else(|| no_upload(pattern))?;
        return Ok((PatternBytes::Stored(bytes), platform.patterns.label(digest)));
    }
    if !pattern.ends_with(".wasm") {
        return Err(format!(
            "'{}' is neither a built-in pattern ({}), an uploaded one (sha256:…) nor a path to a .wasm component",
            crate::text::shorten(pattern),
            builtin::NAMES.join(", ")
        ));
    }
    let path = platform.config.resolve_path(pattern);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((PatternBytes::File(bytes), path.display().to_string()))
}

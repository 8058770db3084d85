//! Uploaded pattern components, by sha256 digest: kept under the state
//! directory (`patterns/<hex>.wasm`) so deploys survive a restart, or in
//! memory when there is none (`prism dev`).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};

/// The prefix of an uploaded pattern's reference: `sha256:<hex digest>`.
pub const UPLOADED: &str = "sha256:";

pub struct PatternStore {
    /// `<state_dir>/patterns`; None: uploads live as long as the process.
    dir: Option<PathBuf>,
    memory: RwLock<HashMap<String, Arc<[u8]>>>,
    /// Upload labels by digest, for the versions' labels.
    labels: RwLock<HashMap<String, String>>,
}

/// The hex sha256 of a component's bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `text` is a hex sha256 digest (so it is safe in a file name).
pub fn is_digest(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl PatternStore {
    pub fn new(state_dir: Option<PathBuf>) -> PatternStore {
        PatternStore {
            dir: state_dir.map(|d| d.join("patterns")),
            memory: RwLock::new(HashMap::new()),
            labels: RwLock::new(HashMap::new()),
        }
    }

    /// Names an upload for people ("my_kv.wasm").
    pub fn set_label(&self, digest: &str, label: &str) {
        self.labels
            .write()
            .insert(digest.to_string(), label.to_string());
    }

    /// An upload's name, as `label (digest prefix)`.
    pub fn label(&self, digest: &str) -> String {
        let short = &digest[..digest.len().min(12)];
        match self.labels.read().get(digest) {
            Some(label) => format!("{label} ({short})"),
            None => format!("uploaded pattern {short}"),
        }
    }

    /// Whether a component with this digest was uploaded (without reading it).
    pub fn contains(&self, digest: &str) -> bool {
        is_digest(digest)
            && (self.memory.read().contains_key(digest)
                || self
                    .dir
                    .as_ref()
                    .is_some_and(|dir| dir.join(format!("{digest}.wasm")).is_file()))
    }

    /// The uploaded component with this digest.
    pub fn get(&self, digest: &str) -> Option<Arc<[u8]>> {
        if !is_digest(digest) {
            return None;
        }
        if let Some(bytes) = self.memory.read().get(digest) {
            return Some(bytes.clone());
        }
        let path = self.dir.as_ref()?.join(format!("{digest}.wasm"));
        std::fs::read(path).ok().map(Arc::from)
    }

    /// Keeps a component (already checked) under its digest: the received
    /// file itself, synced and renamed into place (so a crash never leaves
    /// half a component under a digest), or its bytes in memory without a
    /// state directory.
    pub fn put(&self, digest: &str, incoming: Incoming, bytes: Arc<[u8]>) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            self.memory.write().insert(digest.to_string(), bytes);
            return Ok(());
        };
        let path = dir.join(format!("{digest}.wasm"));
        if path.exists() {
            return Ok(());
        }
        incoming.file.as_file().sync_all()?;
        incoming.file.persist(&path).map_err(|e| e.error)?;
        // The rename is durable only once the directory is: state.json,
        // written next, must never name a component a crash lost.
        std::fs::File::open(dir)?.sync_all()
    }

    /// Keeps a component fetched from elsewhere (a control store; the
    /// caller checked its digest): written to a temporary file, synced and
    /// renamed into place.
    pub fn put_bytes(&self, digest: &str, bytes: Arc<[u8]>) -> std::io::Result<()> {
        if self.dir.is_none() {
            self.memory.write().insert(digest.to_string(), bytes);
            return Ok(());
        }
        let mut incoming = self.incoming()?;
        incoming.write(&bytes)?;
        self.put(digest, incoming, bytes)
    }

    /// Forgets a component (its file too); absent is not an error.
    pub fn remove(&self, digest: &str) -> std::io::Result<()> {
        self.memory.write().remove(digest);
        self.labels.write().remove(digest);
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        match std::fs::remove_file(dir.join(format!("{digest}.wasm"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// A file to receive an upload into, chunk by chunk, so an upload in
    /// flight holds a chunk of memory rather than the whole component:
    /// under `patterns/` (the same file system its final place is on), or
    /// the system's temp dir without a state directory.
    pub fn incoming(&self) -> std::io::Result<Incoming> {
        let dir = match &self.dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir(),
        };
        std::fs::create_dir_all(&dir)?;
        let file = tempfile::Builder::new()
            .prefix(".incoming-")
            .suffix(".wasm")
            .tempfile_in(&dir)?;
        Ok(Incoming {
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }
}

/// An upload being received: written to a temporary file while its digest
/// is computed; the file is removed on drop unless [`PatternStore::put`]
/// keeps it.
pub struct Incoming {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
}

impl Incoming {
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk)?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hex sha256 of what was written so far.
    pub fn digest(&self) -> String {
        self.hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The bytes, read back.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.file.path())
    }
}

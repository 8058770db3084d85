//! Admin's pattern uploads: components stored by digest, listed, and the
//! references (`sha256:…`, built-in names, paths) namespaces deploy.

use super::*;

impl Control {
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
            crate::text::shorten(label.trim())
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
    pub(super) fn reference(
        &self,
        pattern: &str,
        state: &ControlState,
    ) -> Result<String, AdminError> {
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
                crate::text::shorten(pattern),
                builtin::NAMES.join(", ")
            )));
        }
        Err(AdminError::NotFound(format!(
            "no uploaded pattern has digest {}; upload it first (prism admin upload FILE.wasm)",
            crate::text::shorten(hex)
        )))
    }
}

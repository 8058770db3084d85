//! Admin's pattern uploads: components stored by digest, scoped to the
//! namespaces whose admins uploaded them, within per-namespace quotas,
//! listed, deleted, and the references (`sha256:…`, built-in names) that
//! namespaces deploy.

use std::collections::BTreeSet;

use super::state::EVERY_NAMESPACE;
use super::*;
use crate::patterns::Incoming;

/// Whose uploads a caller acts on: every namespace's (`*:admin`, or an
/// Admin API open without auth), or those of the namespaces its admin
/// grants name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Everyone,
    Namespaces(BTreeSet<String>),
}

impl Scope {
    /// Whether the caller sees an upload scoped to `scope`.
    fn sees(&self, scope: &BTreeSet<String>) -> bool {
        match self {
            Scope::Everyone => true,
            Scope::Namespaces(mine) => scope.contains(EVERY_NAMESPACE) || !mine.is_disjoint(scope),
        }
    }

    /// An upload's scope once this caller has uploaded it too.
    fn widen(&self, scope: &BTreeSet<String>) -> BTreeSet<String> {
        match self {
            Scope::Namespaces(mine) if !scope.contains(EVERY_NAMESPACE) => {
                scope.union(mine).cloned().collect()
            }
            _ => BTreeSet::from([EVERY_NAMESPACE.to_string()]),
        }
    }

    /// The part of an upload's scope this caller is shown: its own
    /// namespaces, never another tenant's names.
    fn shown(&self, scope: &BTreeSet<String>) -> BTreeSet<String> {
        match self {
            Scope::Namespaces(mine) if !scope.contains(EVERY_NAMESPACE) => {
                scope.intersection(mine).cloned().collect()
            }
            _ => scope.clone(),
        }
    }
}

/// Whether namespace `name` may deploy an upload scoped to `scope`.
fn deployable_by(scope: &BTreeSet<String>, name: &str) -> bool {
    scope.contains(EVERY_NAMESPACE) || scope.contains(name)
}

impl Control {
    /// A place to receive one upload into, while fewer than
    /// `[admin] max_concurrent_uploads` are being received.
    pub fn receive_upload(
        &self,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, Incoming), AdminError> {
        let permit = self.receiving.clone().try_acquire_owned().map_err(|_| {
            AdminError::Quota(format!(
                "{} uploads are being received already ([admin] max_concurrent_uploads); retry shortly",
                self.config().admin.max_concurrent_uploads
            ))
        })?;
        let incoming = self.platform.patterns.incoming().map_err(|e| {
            AdminError::Storage(format!(
                "cannot receive the upload: {e}; nothing was changed"
            ))
        })?;
        Ok((permit, incoming))
    }

    /// Checks a component against the worlds, compiles it (into the
    /// runtime's cache, so deploying it is quick) and keeps it by digest,
    /// scoped to the uploader's namespaces. A component already kept gains
    /// the uploader's namespaces.
    pub async fn upload(
        &self,
        label: &str,
        incoming: Incoming,
        scope: &Scope,
    ) -> Result<PatternEntry, AdminError> {
        let digest = incoming.digest();
        let size = incoming.size();
        if let Some(entry) = self.widen(&digest, scope).await? {
            return Ok(entry);
        }
        // Refused before the compile if the quota is already spent.
        self.check_quota(&*self.state.lock().await, scope, &digest, size)?;
        let label = if label.trim().is_empty() {
            format!("upload {}", &digest[..12])
        } else {
            crate::text::shorten(label.trim())
        };
        // One compile at a time: uploads must not take every core from the
        // data path, and only the one compiling is held in memory.
        let _compiling = self.compiling.lock().await;
        let bytes: Arc<[u8]> = Arc::from(incoming.read().map_err(|e| {
            AdminError::Storage(format!(
                "cannot read the upload back: {e}; nothing was changed"
            ))
        })?);
        // Compiling takes cranelift a while: keep it off the request threads.
        let (platform, checked, named) = (self.platform.clone(), bytes.clone(), label.clone());
        let (world, imports) =
            tokio::task::spawn_blocking(move || inspect(&platform.runtime, &checked, &named))
                .await
                .map_err(|e| AdminError::Internal(format!("checking the component failed: {e}")))?
                .map_err(AdminError::Invalid)?;
        if let Some(entry) = self.widen(&digest, scope).await? {
            return Ok(entry);
        }
        let meta = PatternMeta {
            label,
            world: world.to_string(),
            size,
            uploaded_at_ms: now_ms(),
            imports,
            scope: scope.widen(&BTreeSet::new()),
        };
        let mut state = self.state.lock().await;
        self.check_quota(&state, scope, &digest, size)?;
        if let Some(store) = &self.store {
            // The bytes first: a replica that sees the document fetches them.
            store.put_blob(&digest, bytes.clone()).await.map_err(|e| {
                AdminError::Storage(format!(
                    "cannot keep the uploaded pattern in the control store: {e}; nothing was changed"
                ))
            })?;
        }
        self.platform
            .patterns
            .put(&digest, incoming, bytes)
            .map_err(|e| {
                AdminError::Storage(format!(
                    "cannot keep the uploaded pattern: {e}; nothing was changed"
                ))
            })?;
        let mut next = state.clone();
        next.patterns.insert(digest.clone(), meta.clone());
        self.commit(&state, &mut next).await?;
        *state = next;
        self.platform.patterns.set_label(&digest, &meta.label);
        tracing::info!(digest = %digest, world, size = meta.size, "pattern uploaded");
        Ok(PatternEntry {
            digest,
            meta: PatternMeta {
                scope: scope.shown(&meta.scope),
                ..meta
            },
            builtin: false,
        })
    }

    /// An upload already kept: the uploader's namespaces join its scope
    /// (within their quotas). None if the digest is new.
    async fn widen(&self, digest: &str, scope: &Scope) -> Result<Option<PatternEntry>, AdminError> {
        let mut state = self.state.lock().await;
        let Some(meta) = state.patterns.get(digest).cloned() else {
            return Ok(None);
        };
        let widened = scope.widen(&meta.scope);
        if widened != meta.scope {
            self.check_quota(&state, scope, digest, meta.size)?;
            let mut next = state.clone();
            if let Some(kept) = next.patterns.get_mut(digest) {
                kept.scope = widened.clone();
            }
            self.commit(&state, &mut next).await?;
            *state = next;
        }
        Ok(Some(PatternEntry {
            digest: digest.to_string(),
            meta: PatternMeta {
                scope: scope.shown(&widened),
                ..meta
            },
            builtin: false,
        }))
    }

    /// Refuses an upload of `size` bytes that would take one of the
    /// uploader's namespaces past `[admin] max_uploads_per_namespace` or
    /// `max_upload_bytes_per_namespace` (an operator's uploads count
    /// against no namespace).
    fn check_quota(
        &self,
        state: &ControlState,
        scope: &Scope,
        digest: &str,
        size: u64,
    ) -> Result<(), AdminError> {
        let Scope::Namespaces(mine) = scope else {
            return Ok(());
        };
        let admin = &self.config().admin;
        for name in mine {
            let (count, bytes) = state
                .patterns
                .iter()
                .filter(|(d, meta)| d.as_str() != digest && meta.scope.contains(name))
                .fold((0usize, 0u64), |(n, b), (_, meta)| (n + 1, b + meta.size));
            if count + 1 > admin.max_uploads_per_namespace {
                return Err(AdminError::Quota(format!(
                    "namespace '{}' keeps {count} uploads, the most [admin] max_uploads_per_namespace allows; delete one first (prism admin delete-pattern DIGEST)",
                    crate::text::shorten(name)
                )));
            }
            if bytes + size > admin.max_upload_bytes_per_namespace {
                return Err(AdminError::Quota(format!(
                    "namespace '{}' keeps {bytes} bytes of uploads and this one has {size}: over [admin] max_upload_bytes_per_namespace ({}); delete one first (prism admin delete-pattern DIGEST)",
                    crate::text::shorten(name),
                    admin.max_upload_bytes_per_namespace
                )));
            }
        }
        Ok(())
    }

    /// Built-in patterns, then the uploads the caller sees (newest first).
    pub async fn patterns(&self, scope: &Scope) -> Vec<PatternEntry> {
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
                        scope: BTreeSet::from([EVERY_NAMESPACE.to_string()]),
                    },
                    builtin: true,
                })
            })
            .collect();
        let state = self.state.lock().await;
        let mut uploads: Vec<PatternEntry> = state
            .patterns
            .iter()
            .filter(|(_, meta)| scope.sees(&meta.scope))
            .map(|(digest, meta)| PatternEntry {
                digest: digest.clone(),
                meta: PatternMeta {
                    scope: scope.shown(&meta.scope),
                    ..meta.clone()
                },
                builtin: false,
            })
            .collect();
        uploads.sort_by_key(|p| std::cmp::Reverse(p.meta.uploaded_at_ms));
        out.extend(uploads);
        out
    }

    /// Takes the caller's namespaces out of an upload's scope; the
    /// component itself goes once no namespace is left (an operator's
    /// delete takes it whole). Refused while a namespace leaving the scope
    /// deploys it (primary, canary/shadow, or the rollback target). True
    /// when the component is gone.
    pub async fn delete_pattern(&self, pattern: &str, scope: &Scope) -> Result<bool, AdminError> {
        let mut state = self.state.lock().await;
        let digest = resolve_upload(pattern, &state, |meta| scope.sees(&meta.scope))?;
        let kept = state.patterns[&digest].scope.clone();
        let (remaining, leaving): (BTreeSet<String>, BTreeSet<String>) = match scope {
            Scope::Everyone => (BTreeSet::new(), kept.clone()),
            Scope::Namespaces(_) if kept.contains(EVERY_NAMESPACE) => {
                return Err(AdminError::FailedPrecondition(format!(
                    "sha256:{digest} was uploaded for every namespace (by *:admin); only *:admin deletes it"
                )));
            }
            Scope::Namespaces(mine) => (
                kept.difference(mine).cloned().collect(),
                kept.intersection(mine).cloned().collect(),
            ),
        };
        let reference = format!("{UPLOADED}{digest}");
        let deployed: Vec<String> = state
            .namespaces
            .iter()
            .filter(|(name, _)| remaining.is_empty() || leaving.contains(*name))
            .filter_map(|(name, ns)| {
                let role = if ns.config.pattern == reference {
                    "its serving version"
                } else if ns.rollout.as_ref().is_some_and(|r| r.pattern == reference) {
                    "its canary or shadow"
                } else if ns
                    .previous
                    .as_ref()
                    .is_some_and(|p| p.reference == reference)
                {
                    "its rollback target"
                } else {
                    return None;
                };
                Some(format!("'{name}' ({role})"))
            })
            .collect();
        if !deployed.is_empty() {
            return Err(AdminError::FailedPrecondition(format!(
                "sha256:{digest} is deployed in namespace {}; deploy another pattern there first",
                deployed.join(", ")
            )));
        }
        let mut next = state.clone();
        let gone = remaining.is_empty();
        if gone {
            next.patterns.remove(&digest);
        } else if let Some(meta) = next.patterns.get_mut(&digest) {
            meta.scope = remaining;
        }
        self.commit(&state, &mut next).await?;
        *state = next;
        if gone {
            // The state no longer names it: a file left behind is only disk.
            if let Err(e) = self.platform.patterns.remove(&digest) {
                tracing::warn!(digest = %digest, error = %e, "cannot remove a deleted pattern's file");
            }
            if let Some(store) = &self.store
                && let Err(e) = store.delete_blob(&digest).await
            {
                tracing::warn!(digest = %digest, error = %e, "cannot remove a deleted pattern's component from the control store");
            }
            tracing::info!(digest = %digest, "pattern deleted");
        }
        Ok(gone)
    }

    /// A pattern as namespace `namespace` names it: a built-in name, or
    /// `sha256:<digest>` of an upload scoped to it (a bare digest or a
    /// unique prefix of at least 8 hex digits is accepted).
    pub(super) fn reference(
        &self,
        pattern: &str,
        state: &ControlState,
        namespace: &str,
    ) -> Result<String, AdminError> {
        let pattern = pattern.trim();
        if builtin::builtin(pattern).is_some() {
            return Ok(pattern.to_string());
        }
        let digest = resolve_upload(pattern, state, |meta| deployable_by(&meta.scope, namespace))?;
        Ok(format!("{UPLOADED}{digest}"))
    }
}

/// The digest of the upload `pattern` names (`sha256:<hex>`, the bare
/// digest or a unique prefix of 8+ hex digits) among those `visible`
/// accepts; one it does not accept is as unknown as one never uploaded.
fn resolve_upload(
    pattern: &str,
    state: &ControlState,
    visible: impl Fn(&PatternMeta) -> bool,
) -> Result<String, AdminError> {
    let pattern = pattern.trim();
    let hex = pattern.strip_prefix(UPLOADED).unwrap_or(pattern);
    let not_found = || {
        AdminError::NotFound(format!(
            "no uploaded pattern you can use has digest {}; upload it first (prism admin upload FILE.wasm)",
            crate::text::shorten(hex)
        ))
    };
    if is_digest(hex) {
        return match state.patterns.get(hex) {
            Some(meta) if visible(meta) => Ok(hex.to_string()),
            _ => Err(not_found()),
        };
    }
    if hex.len() < 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AdminError::Invalid(format!(
            "'{}' is neither a built-in pattern ({}) nor an uploaded pattern's digest (Admin deploys uploads, not server paths: prism admin upload FILE.wasm)",
            crate::text::shorten(pattern),
            builtin::NAMES.join(", ")
        )));
    }
    let matches: Vec<&String> = state
        .patterns
        .iter()
        .filter(|(d, meta)| d.starts_with(hex) && visible(meta))
        .map(|(d, _)| d)
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(not_found()),
        _ => Err(AdminError::Invalid(format!(
            "'{hex}' is the start of {} uploaded patterns' digests; give more of it",
            matches.len()
        ))),
    }
}

//! The `registry` capability: every identity a guest names belongs to its
//! namespace (the backend is handed the namespace, never a guest-built
//! key), times are stamped from the host's clock, and inbox topics are named
//! here so every pattern and every Prism process agree on them.

use std::sync::Arc;

use super::slot::{Slot, SlotCore};

use async_trait::async_trait;

use crate::backend::BackendError;
use crate::backend::registry::{self as backend, RegistryBackend, RegistryPage};
use crate::capability::bindings::CapabilityError;
use crate::capability::bindings::registry_world::prism::pattern::registry;
use crate::capability::bindings::registry_world::{
    IdentityRecord, Listing, NewIdentity, PutOutcome,
};
use crate::clock::now_ms;

/// Hard bounds on what any guest may hand the host in one call; patterns
/// apply their own, smaller limits first.
pub const MAX_IDENTITY_BYTES: usize = 4096;
/// Metadata of one identity.
pub const MAX_METADATA_BYTES: usize = 1 << 20;
/// Records in one listing page.
pub const MAX_LIST_PAGE: u32 = 10_000;
/// Conditions one `list-where` call may push down, and path segments of one.
pub const MAX_CONDITIONS: usize = 64;
pub const MAX_CONDITION_PATH: usize = 16;
/// A TTL (ten years).
pub const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// One namespace's binding of the `registry` slot.
#[derive(Clone)]
pub struct RegistrySlot {
    core: SlotCore<dyn RegistryBackend>,
    namespace: Arc<str>,
}

impl RegistrySlot {
    pub fn new(namespace: &str, backend: Arc<dyn RegistryBackend>) -> RegistrySlot {
        RegistrySlot {
            core: SlotCore::new(backend),
            namespace: namespace.into(),
        }
    }

    /// The slot of a namespace that binds no registry: calls answer unavailable.
    pub fn unbound() -> RegistrySlot {
        RegistrySlot {
            core: SlotCore::new(Arc::new(Unbound)),
            namespace: "".into(),
        }
    }

    pub fn backend(&self) -> &Arc<dyn RegistryBackend> {
        &self.core.backend
    }

    /// Removes every identity of this namespace (Admin's delete with
    /// purge); returns how many.
    pub async fn purge(&self) -> Result<u64, BackendError> {
        if self.core.read_only {
            return Ok(0);
        }
        let mut purged = 0;
        loop {
            // Removed records drop out of the listing, so each page starts
            // from the beginning again.
            let page = self
                .core
                .clock
                .command(
                    "list",
                    self.core
                        .backend
                        .list(&self.namespace, None, 1000, now_ms()),
                )
                .await?;
            if page.records.is_empty() {
                return Ok(purged);
            }
            let before = purged;
            for record in &page.records {
                if self
                    .core
                    .clock
                    .command(
                        "remove",
                        self.core
                            .backend
                            .remove(&self.namespace, &record.identity, now_ms()),
                    )
                    .await?
                {
                    purged += 1;
                }
            }
            if purged == before {
                // Nothing listed could be removed (it expired meanwhile).
                return Ok(purged);
            }
        }
    }
}

fn check_identity(identity: &str) -> Result<(), CapabilityError> {
    if identity.is_empty() || identity.len() > MAX_IDENTITY_BYTES {
        return Err(CapabilityError::InvalidArgument(format!(
            "identity is {} bytes; the host accepts 1 to {MAX_IDENTITY_BYTES} bytes",
            identity.len()
        )));
    }
    Ok(())
}

fn to_guest(r: backend::IdentityRecord) -> IdentityRecord {
    IdentityRecord {
        identity: r.identity,
        metadata: r.metadata,
        registered_at_ms: r.registered_at_ms,
        expires_at_ms: r.expires_at_ms,
        ttl_ms: r.ttl_ms,
    }
}

/// The inbox topic of an identity: `_inbox.` and the identity with every
/// byte outside `[A-Za-z0-9_-]` spelt `~XX`, so any identity becomes one
/// valid topic token on every broker (NATS subjects included) and two
/// identities never share an inbox.
pub fn inbox_topic(identity: &str) -> String {
    let mut topic = String::with_capacity(identity.len() + 8);
    topic.push_str("_inbox.");
    for byte in identity.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            topic.push(byte as char);
        } else {
            topic.push_str(&format!("~{byte:02X}"));
        }
    }
    topic
}

impl registry::Host for RegistrySlot {
    async fn put(
        &mut self,
        entry: NewIdentity,
        replace: bool,
        max_identities: u64,
    ) -> Result<PutOutcome, CapabilityError> {
        self.core
            .call("registry.put")
            .serve(async {
                check_identity(&entry.identity)?;
                if entry.metadata.len() > MAX_METADATA_BYTES {
                    return Err(CapabilityError::InvalidArgument(format!(
                        "metadata is {} bytes; the host limit is {MAX_METADATA_BYTES}",
                        entry.metadata.len()
                    )));
                }
                if entry.ttl_ms.is_some_and(|t| t == 0 || t > MAX_TTL_MS) {
                    return Err(CapabilityError::InvalidArgument(format!(
                        "ttl must be 1 to {MAX_TTL_MS} ms"
                    )));
                }
                let entry = backend::NewIdentity {
                    identity: entry.identity,
                    metadata: entry.metadata,
                    ttl_ms: entry.ttl_ms,
                };
                if self.core.read_only {
                    return Ok(PutOutcome::Stored(to_guest(entry.record(now_ms()))));
                }
                let outcome = self
                    .core
                    .command(
                        "put",
                        self.core.backend.put(
                            &self.namespace,
                            entry,
                            replace,
                            max_identities,
                            now_ms(),
                        ),
                    )
                    .await?;
                Ok(match outcome {
                    backend::PutOutcome::Stored(r) => PutOutcome::Stored(to_guest(r)),
                    backend::PutOutcome::Exists(r) => PutOutcome::Exists(to_guest(r)),
                })
            })
            .await
    }

    async fn get(&mut self, identity: String) -> Result<Option<IdentityRecord>, CapabilityError> {
        self.core
            .call("registry.get")
            .serve(async {
                check_identity(&identity)?;
                let record = self
                    .core
                    .command(
                        "get",
                        self.core.backend.get(&self.namespace, &identity, now_ms()),
                    )
                    .await?;
                Ok(record.map(to_guest))
            })
            .await
    }

    async fn renew(&mut self, identity: String) -> Result<Option<IdentityRecord>, CapabilityError> {
        self.core
            .call("registry.renew")
            .serve(async {
                check_identity(&identity)?;
                if self.core.read_only {
                    return self.get(identity).await;
                }
                let record = self
                    .core
                    .command(
                        "renew",
                        self.core
                            .backend
                            .renew(&self.namespace, &identity, now_ms()),
                    )
                    .await?;
                Ok(record.map(to_guest))
            })
            .await
    }

    async fn remove(&mut self, identity: String) -> Result<bool, CapabilityError> {
        self.core
            .call("registry.remove")
            .serve(async {
                check_identity(&identity)?;
                if self.core.read_only {
                    return Ok(self.get(identity).await?.is_some());
                }
                self.core
                    .command(
                        "remove",
                        self.core
                            .backend
                            .remove(&self.namespace, &identity, now_ms()),
                    )
                    .await
            })
            .await
    }

    async fn list(
        &mut self,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<Listing, CapabilityError> {
        self.core
            .call("registry.list")
            .serve(async {
                if let Some(c) = &cursor {
                    check_identity(c)?;
                }
                let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
                let RegistryPage { records, cursor } = self
                    .core
                    .command(
                        "list",
                        self.core
                            .backend
                            .list(&self.namespace, cursor.as_deref(), limit, now_ms()),
                    )
                    .await?;
                Ok(Listing {
                    records: records.into_iter().map(to_guest).collect(),
                    cursor,
                })
            })
            .await
    }

    async fn list_where(
        &mut self,
        conditions: Vec<registry::MetadataEquals>,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<Listing, CapabilityError> {
        self.core
            .call("registry.list_where")
            .serve(async {
                if let Some(c) = &cursor {
                    check_identity(c)?;
                }
                let conditions = check_conditions(conditions)?;
                let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
                let RegistryPage { records, cursor } = self
                    .core
                    .command(
                        "list_where",
                        self.core.backend.list_where(
                            &self.namespace,
                            &conditions,
                            cursor.as_deref(),
                            limit,
                            now_ms(),
                        ),
                    )
                    .await?;
                Ok(Listing {
                    records: records.into_iter().map(to_guest).collect(),
                    cursor,
                })
            })
            .await
    }

    async fn count(&mut self) -> Result<u64, CapabilityError> {
        self.core
            .call("registry.count")
            .serve(async {
                self.core
                    .command("count", self.core.backend.count(&self.namespace, now_ms()))
                    .await
            })
            .await
    }

    async fn inbox(&mut self, identity: String) -> String {
        self.core
            .call("registry.inbox")
            .serve(async { inbox_topic(&identity) })
            .await
    }
}

/// A guest's conditions, bounded (they are copied into a query).
fn check_conditions(
    conditions: Vec<registry::MetadataEquals>,
) -> Result<Vec<backend::MetadataEquals>, CapabilityError> {
    if conditions.len() > MAX_CONDITIONS {
        return Err(CapabilityError::InvalidArgument(format!(
            "list-where takes at most {MAX_CONDITIONS} conditions, got {}",
            conditions.len()
        )));
    }
    conditions
        .into_iter()
        .map(|c| {
            let bytes: usize = c.path.iter().map(String::len).sum::<usize>() + c.value.len();
            if c.path.len() > MAX_CONDITION_PATH || bytes > MAX_IDENTITY_BYTES {
                return Err(CapabilityError::InvalidArgument(format!(
                    "a list-where condition may have at most {MAX_CONDITION_PATH} path segments and {MAX_IDENTITY_BYTES} bytes"
                )));
            }
            Ok(backend::MetadataEquals {
                path: c.path,
                value: c.value,
            })
        })
        .collect()
}

/// The registry behind an unbound slot.
struct Unbound;

fn unbound() -> BackendError {
    BackendError::Unavailable {
        backend: "registry slot".into(),
        reason: "this namespace binds no backend to it".into(),
    }
}

#[async_trait]
impl RegistryBackend for Unbound {
    fn summary(&self) -> String {
        "no registry backend".into()
    }
    async fn put(
        &self,
        _: &str,
        _: backend::NewIdentity,
        _: bool,
        _: u64,
        _: u64,
    ) -> Result<backend::PutOutcome, BackendError> {
        Err(unbound())
    }
    async fn get(
        &self,
        _: &str,
        _: &str,
        _: u64,
    ) -> Result<Option<backend::IdentityRecord>, BackendError> {
        Err(unbound())
    }
    async fn renew(
        &self,
        _: &str,
        _: &str,
        _: u64,
    ) -> Result<Option<backend::IdentityRecord>, BackendError> {
        Err(unbound())
    }
    async fn remove(&self, _: &str, _: &str, _: u64) -> Result<bool, BackendError> {
        Err(unbound())
    }
    async fn list(
        &self,
        _: &str,
        _: Option<&str>,
        _: usize,
        _: u64,
    ) -> Result<RegistryPage, BackendError> {
        Err(unbound())
    }
    async fn count(&self, _: &str, _: u64) -> Result<u64, BackendError> {
        Err(unbound())
    }
}

impl Slot for RegistrySlot {
    type Backend = dyn RegistryBackend;

    fn core_mut(&mut self) -> &mut SlotCore<dyn RegistryBackend> {
        &mut self.core
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_topics_are_single_tokens_and_never_shared() {
        assert_eq!(inbox_topic("sensor-1"), "_inbox.sensor-1");
        assert_eq!(inbox_topic("a.b c*>"), "_inbox.a~2Eb~20c~2A~3E");
        assert_eq!(inbox_topic("ü"), "_inbox.~C3~BC");
        // '~' is escaped too, so an identity spelling another's escape differs.
        assert_ne!(inbox_topic("a~2Eb"), inbox_topic("a.b"));
        assert_eq!(inbox_topic("_inbox.x").matches('.').count(), 1);
    }
}

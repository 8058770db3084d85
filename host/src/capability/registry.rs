//! The `registry` capability: every identity a guest names belongs to its
//! namespace (the backend is handed the namespace, never a guest-built
//! key), times are stamped from the host's clock, and inbox topics are named
//! here so every pattern and every Prism process agree on them.

use std::sync::Arc;

use crate::runtime::call::{HostClock, SlotClock};
use crate::telemetry::backends::BackendStats;

use async_trait::async_trait;

use super::guest_error;
use crate::backend::BackendError;
use crate::backend::registry::{self as backend, RegistryBackend, RegistryPage};
use crate::clock::now_ms;
use crate::runtime::bindings::CapabilityError;
use crate::runtime::bindings::registry_world::prism::pattern::registry;
use crate::runtime::bindings::registry_world::{IdentityRecord, Listing, NewIdentity, PutOutcome};

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
    backend: Arc<dyn RegistryBackend>,
    namespace: Arc<str>,
    /// A shadow version's slot: writes answer as if done and change nothing.
    read_only: bool,
    /// The instance's clock of time spent awaiting the backend.
    clock: SlotClock,
}

impl RegistrySlot {
    pub fn new(namespace: &str, backend: Arc<dyn RegistryBackend>) -> RegistrySlot {
        RegistrySlot {
            backend,
            namespace: namespace.into(),
            read_only: false,
            clock: SlotClock::default(),
        }
    }

    /// This binding with writes suppressed (see `Slots::read_only`).
    /// The same slot, counting its calls' waiting on `clock`.
    pub fn timed_by(self, clock: Arc<HostClock>) -> RegistrySlot {
        RegistrySlot {
            clock: self.clock.on(clock),
            ..self
        }
    }

    /// The same slot, timing its calls as commands of the backend it is bound to.
    pub fn measured_by(self, backend: Arc<BackendStats>) -> RegistrySlot {
        RegistrySlot {
            clock: self.clock.measuring(backend),
            ..self
        }
    }

    pub fn read_only(self) -> RegistrySlot {
        RegistrySlot {
            read_only: true,
            ..self
        }
    }

    /// The slot of a namespace that binds no registry: calls answer unavailable.
    pub fn unbound() -> RegistrySlot {
        RegistrySlot {
            backend: Arc::new(Unbound),
            namespace: "".into(),
            read_only: false,
            clock: SlotClock::default(),
        }
    }

    pub fn backend(&self) -> &Arc<dyn RegistryBackend> {
        &self.backend
    }

    /// Removes every identity of this namespace (Admin's delete with
    /// purge); returns how many.
    pub async fn purge(&self) -> Result<u64, BackendError> {
        if self.read_only {
            return Ok(0);
        }
        let mut purged = 0;
        loop {
            // Removed records drop out of the listing, so each page starts
            // from the beginning again.
            let page = self
                .clock
                .command(
                    "list",
                    self.backend.list(&self.namespace, None, 1000, now_ms()),
                )
                .await?;
            if page.records.is_empty() {
                return Ok(purged);
            }
            let before = purged;
            for record in &page.records {
                if self
                    .clock
                    .command(
                        "remove",
                        self.backend
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
        let _waiting = self.clock.waiting();
        crate::telemetry::traces::capability("registry.put", async {
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
            if self.read_only {
                return Ok(PutOutcome::Stored(to_guest(entry.record(now_ms()))));
            }
            let outcome = self
                .clock
                .command(
                    "put",
                    self.backend
                        .put(&self.namespace, entry, replace, max_identities, now_ms()),
                )
                .await
                .map_err(guest_error)?;
            Ok(match outcome {
                backend::PutOutcome::Stored(r) => PutOutcome::Stored(to_guest(r)),
                backend::PutOutcome::Exists(r) => PutOutcome::Exists(to_guest(r)),
            })
        })
        .await
    }

    async fn get(&mut self, identity: String) -> Result<Option<IdentityRecord>, CapabilityError> {
        let _waiting = self.clock.waiting();
        crate::telemetry::traces::capability("registry.get", async {
            check_identity(&identity)?;
            let record = self
                .clock
                .command(
                    "get",
                    self.backend.get(&self.namespace, &identity, now_ms()),
                )
                .await
                .map_err(guest_error)?;
            Ok(record.map(to_guest))
        })
        .await
    }

    async fn renew(&mut self, identity: String) -> Result<Option<IdentityRecord>, CapabilityError> {
        let _waiting = self.clock.waiting();
        crate::telemetry::traces::capability("registry.renew", async {
            check_identity(&identity)?;
            if self.read_only {
                return self.get(identity).await;
            }
            let record = self
                .clock
                .command(
                    "renew",
                    self.backend.renew(&self.namespace, &identity, now_ms()),
                )
                .await
                .map_err(guest_error)?;
            Ok(record.map(to_guest))
        })
        .await
    }

    async fn remove(&mut self, identity: String) -> Result<bool, CapabilityError> {
        let _waiting = self.clock.waiting();
        crate::telemetry::traces::capability("registry.remove", async {
            check_identity(&identity)?;
            if self.read_only {
                return Ok(self.get(identity).await?.is_some());
            }
            self.clock
                .command(
                    "remove",
                    self.backend.remove(&self.namespace, &identity, now_ms()),
                )
                .await
                .map_err(guest_error)
        })
        .await
    }

    async fn list(
        &mut self,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<Listing, CapabilityError> {
        let _waiting = self.clock.waiting();
        crate::telemetry::traces::capability("registry.list", async {
            if let Some(c) = &cursor {
                check_identity(c)?;
            }
            let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
            let RegistryPage { records, cursor } = self
                .clock
                .command(
                    "list",
                    self.backend
                        .list(&self.namespace, cursor.as_deref(), limit, now_ms()),
                )
                .await
                .map_err(guest_error)?;
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
        let _waiting = self.clock.waiting();
        crate::telemetry::traces::capability("registry.list_where", async {
            if let Some(c) = &cursor {
                check_identity(c)?;
            }
            let conditions = check_conditions(conditions)?;
            let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
            let RegistryPage { records, cursor } = self
                .clock
                .command(
                    "list_where",
                    self.backend.list_where(
                        &self.namespace,
                        &conditions,
                        cursor.as_deref(),
                        limit,
                        now_ms(),
                    ),
                )
                .await
                .map_err(guest_error)?;
            Ok(Listing {
                records: records.into_iter().map(to_guest).collect(),
                cursor,
            })
        })
        .await
    }

    async fn count(&mut self) -> Result<u64, CapabilityError> {
        let _waiting = self.clock.waiting();
        crate::telemetry::traces::capability("registry.count", async {
            self.clock
                .command("count", self.backend.count(&self.namespace, now_ms()))
                .await
                .map_err(guest_error)
        })
        .await
    }

    async fn inbox(&mut self, identity: String) -> String {
        let _waiting = self.clock.waiting();
        crate::telemetry::traces::capability("registry.inbox", async { inbox_topic(&identity) })
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

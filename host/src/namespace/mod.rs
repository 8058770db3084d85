//! Namespaces: each one's quotas and the pattern versions serving it, and
//! the registry requests are routed through (changed at runtime by Admin).

mod platform;
mod prepared;
mod rollout;
mod version;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use tonic::metadata::MetadataMap;

pub use platform::Platform;
pub use prepared::PreparedCache;
pub use rollout::{Deployment, Rollout, RolloutStats, Route};
pub use version::{Version, VersionInfo, Writes, inspect, world_of};

use crate::admission::{Admission, CallGuard, StreamGuard};
use crate::config::{DEFAULT_NAMESPACE, NamespaceConfig};
use crate::runtime::{
    Deployed, KeyValueRuntime, PatternRuntime, PatternWorld, PubSubRuntime, RegistryRuntime,
    runtime_of,
};
use crate::text::shorten;

/// The request metadata that names the namespace.
pub const NAMESPACE_METADATA: &str = "x-prism-namespace";

/// The label of calls whose `x-prism-namespace` names no namespace this
/// server serves: the header is the caller's to choose, so a made-up name
/// is never kept (as a metric label or a counter key).
pub const UNKNOWN_NAMESPACE: &str = "(unknown)";

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("namespace '{0}' is not configured on this server")]
    Unknown(String),
    #[error("the x-prism-namespace metadata must be printable ASCII")]
    BadMetadata,
    #[error(
        "namespace '{namespace}' is served by a {actual} pattern and does not answer {expected} requests"
    )]
    WrongPattern {
        namespace: String,
        actual: &'static str,
        expected: &'static str,
    },
}

/// A namespace could not start; `field` is the config field to fix.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct StartupError {
    pub field: String,
    pub message: String,
}

impl StartupError {
    pub(crate) fn new(field: impl Into<String>, message: impl ToString) -> StartupError {
        StartupError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// Where a namespace's definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Admin,
    /// In the config file, changed through Admin since.
    ConfigAndAdmin,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Admin => "admin",
            Source::ConfigAndAdmin => "config+admin",
        }
    }
}

pub struct Namespace {
    pub name: String,
    /// Request-rate, concurrency and stream quotas.
    pub admission: Arc<Admission>,
    /// The definition it was started from (slots, settings, limits; the
    /// pattern deployed now is the primary version's).
    pub config: NamespaceConfig,
    /// Capability slot → backend name, as configured.
    pub slots: BTreeMap<String, String>,
    deployment: RwLock<Arc<Deployment>>,
    /// Calls routed so far (canary shares are taken from it).
    calls: AtomicU64,
}

impl Namespace {
    /// Starts the namespace's pattern (one configured instance), so a bad
    /// component or bad settings fail here.
    pub async fn start(
        name: &str,
        ns: &NamespaceConfig,
        platform: &Platform,
    ) -> Result<Namespace, StartupError> {
        let limits = ns.limits.resolve(&platform.config.runtime.limits);
        let version = Version::start(name, ns, platform, Writes::Live).await?;
        Ok(Namespace {
            name: name.to_string(),
            admission: Arc::new(Admission::new(name, limits.quotas)),
            config: ns.clone(),
            slots: ns.slots.clone(),
            deployment: RwLock::new(Arc::new(Deployment {
                primary: Arc::new(version),
                previous: None,
                rollout: None,
            })),
            calls: AtomicU64::new(0),
        })
    }

    /// The versions serving it now.
    pub fn deployment(&self) -> Arc<Deployment> {
        self.deployment.read().clone()
    }

    /// Switches versions atomically; calls already routed finish where they run.
    pub fn swap(&self, deployment: Deployment) {
        *self.deployment.write() = Arc::new(deployment);
    }

    /// Calls routed so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The version this call runs on (primary or canary), and its shadow.
    pub fn route(&self) -> Route {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        self.deployment.read().route(n)
    }

    /// The primary version's typed runtime, if the namespace serves world `W`.
    pub fn runtime<W: PatternWorld>(&self) -> Result<PatternRuntime<W>, NamespaceError> {
        self.deployment.read().primary.runtime(&self.name)
    }

    pub fn keyvalue(&self) -> Result<KeyValueRuntime, NamespaceError> {
        self.runtime()
    }

    pub fn pubsub(&self) -> Result<PubSubRuntime, NamespaceError> {
        self.runtime()
    }

    pub fn registry(&self) -> Result<RegistryRuntime, NamespaceError> {
        self.runtime()
    }

    /// Its definition as it serves now: the primary version's pattern.
    pub fn effective_config(&self) -> NamespaceConfig {
        NamespaceConfig {
            pattern: self.deployment().primary.info.reference.clone(),
            ..self.config.clone()
        }
    }

    /// Drops idle instances of every version it holds.
    pub fn trim_idle(&self, ttl: std::time::Duration) -> usize {
        let d = self.deployment();
        let mut dropped = d.primary.pattern.trim_idle(ttl);
        if let Some(r) = &d.rollout {
            dropped += r.candidate.pattern.trim_idle(ttl);
        }
        dropped
    }
}

/// The typed runtime of `deployed`, or WrongPattern: the request was
/// sent to a namespace whose pattern answers another kind of request.
pub fn runtime_for<W: PatternWorld>(
    namespace: &str,
    deployed: &dyn Deployed,
) -> Result<PatternRuntime<W>, NamespaceError> {
    runtime_of::<W>(deployed).ok_or_else(|| NamespaceError::WrongPattern {
        namespace: namespace.to_string(),
        actual: deployed.kind(),
        expected: W::KIND,
    })
}

/// Every namespace of the server, looked up per request; Admin adds,
/// replaces and removes them while the server runs.
#[derive(Default)]
pub struct Namespaces {
    map: RwLock<HashMap<String, Arc<Namespace>>>,
}

impl Namespaces {
    pub fn new(namespaces: impl IntoIterator<Item = Namespace>) -> Namespaces {
        Namespaces {
            map: RwLock::new(
                namespaces
                    .into_iter()
                    .map(|ns| (ns.name.clone(), Arc::new(ns)))
                    .collect(),
            ),
        }
    }

    pub fn get(&self, name: &str) -> Result<Arc<Namespace>, NamespaceError> {
        self.map
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| NamespaceError::Unknown(shorten(name)))
    }

    /// Adds or replaces a namespace; returns the one it replaced.
    pub fn insert(&self, namespace: Namespace) -> Option<Arc<Namespace>> {
        self.map
            .write()
            .insert(namespace.name.clone(), Arc::new(namespace))
    }

    /// Removes a namespace: new calls get NOT_FOUND; calls holding it finish.
    pub fn remove(&self, name: &str) -> Option<Arc<Namespace>> {
        self.map.write().remove(name)
    }

    /// The namespace a request names in its metadata (`default` when absent).
    pub fn for_request(&self, metadata: &MetadataMap) -> Result<Arc<Namespace>, NamespaceError> {
        match metadata.get(NAMESPACE_METADATA) {
            None => self.get(DEFAULT_NAMESPACE),
            Some(value) => self.get(value.to_str().map_err(|_| NamespaceError::BadMetadata)?),
        }
    }

    /// The request's namespace and its admission for one unary call.
    pub fn admit_call(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(Arc<Namespace>, CallGuard), tonic::Status> {
        let ns = self.for_request(metadata)?;
        let guard = ns.admission.call()?;
        Ok((ns, guard))
    }

    /// The request's namespace and its admission for one stream.
    pub fn admit_stream(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(Arc<Namespace>, StreamGuard), tonic::Status> {
        let ns = self.for_request(metadata)?;
        let guard = ns.admission.stream()?;
        Ok((ns, guard))
    }

    /// A snapshot of every namespace.
    pub fn all(&self) -> Vec<Arc<Namespace>> {
        self.map.read().values().cloned().collect()
    }

    pub fn iter(&self) -> std::vec::IntoIter<Arc<Namespace>> {
        self.all().into_iter()
    }
}

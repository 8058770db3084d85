//! One version of a namespace's pattern: its component (checked against the
//! worlds), capability slots bound to backends, and a pool of instances with
//! one started and configured — so a bad component or bad settings fail
//! here, before the version serves anything.

use std::sync::Arc;
use std::time::Instant;

use super::Platform;
use super::prepared::Resolved;
use super::{NamespaceError, StartupError};
use crate::capability::kv::KvSlot;
use crate::capability::pubsub::PubSubSlot;
use crate::capability::registry::RegistrySlot;
use crate::capability::{Slot, Slots};
use crate::config::{NamespaceConfig, setting_string, slot_capability};
use crate::runtime::{
    Deployed, KeyValueRuntime, PatternRuntime, PatternWorld, PoolParts, PubSubRuntime,
    RegistryRuntime, Runtime, RuntimeError,
};

/// Which pattern a version runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionInfo {
    /// As the namespace's `pattern` names it: a built-in name,
    /// `sha256:<digest>` of an uploaded pattern, or a `.wasm` path.
    pub reference: String,
    /// For people: "built-in pattern 'keyvalue'", an upload's label, a path.
    pub label: String,
    /// sha256 of the component, hex.
    pub digest: String,
    /// The world it serves ("keyvalue", "pubsub", "multicast-registry").
    pub world: String,
}

/// One version of a namespace's pattern, started.
pub struct Version {
    pub info: VersionInfo,
    /// Its pool of instances, whatever its world.
    pub pattern: Arc<dyn Deployed>,
}

/// The world a component fits and what it imports, checked without
/// starting it (uploads, `prism pattern check`). Compiling it also leaves
/// it in the runtime's component cache, so a deploy of it is quick.
pub fn inspect(
    runtime: &Runtime,
    bytes: &[u8],
    label: &str,
) -> Result<(&'static str, Vec<String>), String> {
    let component = runtime.load(bytes, label).map_err(|e| e.to_string())?;
    let imports = runtime.imports(&component);
    let world = runtime.prepare_any(&component, label)?.world();
    Ok((world, imports))
}

/// The world the pattern `reference` names fits (compiled through the
/// runtime's cache), checked before a version of it is started.
pub fn world_of(reference: &str, platform: &Platform) -> Result<&'static str, String> {
    Ok(platform
        .prepared
        .resolve(reference, platform)?
        .prepared
        .world())
}

/// Whether the version's writes reach its backends: a shadow version's do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    Live,
    Suppressed,
}

impl Version {
    /// Loads `pattern` (a built-in name, `sha256:<digest>` of an uploaded
    /// one, or a `.wasm` path), binds the namespace's slots and starts one
    /// configured instance.
    pub async fn start(
        name: &str,
        ns: &NamespaceConfig,
        platform: &Platform,
        writes: Writes,
    ) -> Result<Version, StartupError> {
        let started = Instant::now();
        let (runtime, backends) = (&*platform.runtime, &platform.backends);
        let limits = ns.limits.resolve(&platform.config.runtime.limits);
        let field = |f: &str| format!("namespaces.{name}.{f}");
        let Resolved {
            label,
            digest,
            prepared,
        } = platform
            .prepared
            .resolve(&ns.pattern, platform)
            .map_err(|m| StartupError::new(field("pattern"), m))?;

        let wanted = prepared.slots();
        if let Some(slot) = ns.slots.keys().find(|s| !wanted.contains(&s.as_str())) {
            return Err(StartupError::new(
                field(&format!("slots.{slot}")),
                format!(
                    "the {} pattern has no such slot (it uses: {})",
                    prepared.world(),
                    wanted.join(", ")
                ),
            ));
        }
        let mut slots = Slots::default();
        let mut summaries = Vec::new();
        for slot in wanted {
            let backend = ns.slots.get(*slot).ok_or_else(|| {
                let example: Vec<String> =
                    wanted.iter().map(|s| format!("{s} = \"mem\"")).collect();
                StartupError::new(
                    field("slots"),
                    format!(
                        "the {} pattern needs a {slot} slot, e.g. slots = {{ {} }}",
                        prepared.world(),
                        example.join(", ")
                    ),
                )
            })?;
            let missing = |what: &str| {
                StartupError::new(
                    field(&format!("slots.{slot}")),
                    format!("backend '{backend}' does not provide {what}"),
                )
            };
            match slot_capability(slot) {
                Some("kv") => {
                    let kv = backends.kv(backend).ok_or_else(|| missing("kv"))?;
                    summaries.push(kv.summary());
                    slots.kv = KvSlot::new(
                        name,
                        kv,
                        limits.quotas.max_stored_bytes,
                        limits.quotas.max_stored_keys,
                    );
                    if let Some(stats) = backends.stats(backend) {
                        slots.kv = slots.kv.measured_by(stats);
                    }
                }
                Some("pubsub") => {
                    let ps = backends.pubsub(backend).ok_or_else(|| missing("pubsub"))?;
                    summaries.push(ps.summary());
                    slots.pubsub = PubSubSlot::new(name, ps);
                    if let Some(stats) = backends.stats(backend) {
                        slots.pubsub = slots.pubsub.measured_by(stats);
                    }
                }
                Some("registry") => {
                    let reg = backends
                        .registry(backend)
                        .ok_or_else(|| missing("registry"))?;
                    summaries.push(reg.summary());
                    slots.registry = RegistrySlot::new(name, reg);
                    if let Some(stats) = backends.stats(backend) {
                        slots.registry = slots.registry.measured_by(stats);
                    }
                }
                _ => return Err(missing(slot)),
            }
        }
        if writes == Writes::Suppressed {
            slots = slots.read_only();
        }
        let parts = PoolParts {
            limits: limits.instance,
            settings: ns
                .settings
                .iter()
                .filter_map(|(k, v)| setting_string(v).map(|v| (k.clone(), v)))
                .collect(),
            slots,
            lane: runtime.lane(),
        };
        let configure_error = |e: RuntimeError| match e {
            RuntimeError::Configure { reason, .. } => StartupError::new(field("settings"), reason),
            other => StartupError::new(field("pattern"), other),
        };
        let world = prepared.world();
        let pattern = prepared.start(name, parts).await.map_err(configure_error)?;
        tracing::info!(
            namespace = name,
            pattern = %label,
            digest = %&digest[..12],
            kind = pattern.kind(),
            backend = %summaries.join(" + "),
            shadow = writes == Writes::Suppressed,
            ready_ms = started.elapsed().as_secs_f64() * 1000.0,
            "pattern version ready"
        );
        Ok(Version {
            info: VersionInfo {
                reference: ns.pattern.clone(),
                label,
                digest,
                world: world.to_string(),
            },
            pattern,
        })
    }
}

impl Version {
    /// Instances of the version that exist now (idle or in a call).
    pub fn live_instances(&self) -> usize {
        let stats = self.pattern.stats();
        stats.idle + stats.busy
    }

    /// Starts instances until the version has `n` (at most its
    /// `max_instances`), so a version swapped in under load serves at once
    /// instead of instantiating on the request path. A failure here is only
    /// logged: the version is configured and creates instances on demand.
    pub async fn warm(&self, namespace: &str, n: usize) {
        if let Err(e) = self.pattern.warm(n).await {
            tracing::warn!(namespace, error = %e, "could not pre-start every instance of the new version; the rest start on demand");
        }
    }

    /// Its typed runtime, if it is of world `W` (else the request was
    /// sent to a namespace of another kind).
    pub fn runtime<W: PatternWorld>(
        &self,
        namespace: &str,
    ) -> Result<PatternRuntime<W>, NamespaceError> {
        super::runtime_for(namespace, &*self.pattern)
    }

    pub fn keyvalue(&self, namespace: &str) -> Result<KeyValueRuntime, NamespaceError> {
        self.runtime(namespace)
    }

    pub fn pubsub(&self, namespace: &str) -> Result<PubSubRuntime, NamespaceError> {
        self.runtime(namespace)
    }

    pub fn registry(&self, namespace: &str) -> Result<RegistryRuntime, NamespaceError> {
        self.runtime(namespace)
    }
}

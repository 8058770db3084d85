//! One version of a namespace's pattern: its component (checked against the
//! worlds), capability slots bound to backends, and a pool of instances with
//! one started and configured — so a bad component or bad settings fail
//! here, before the version serves anything.

use std::sync::Arc;
use std::time::Instant;

use super::prepared::{Prepared, Resolved};
use super::{PatternKind, StartupError};
use crate::capability::kv::KvSlot;
use crate::capability::pubsub::PubSubSlot;
use crate::capability::registry::RegistrySlot;
use crate::config::{NamespaceConfig, setting_string, slot_capability};
use crate::platform::Platform;
use crate::runtime::state::Slots;
use crate::runtime::{
    KeyValueRuntime, PatternPool, PatternWorld, PubSubRuntime, RegistryRuntime, Runtime,
    RuntimeError,
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
    pub kind: PatternKind,
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
    let world = Prepared::of(runtime, &component, label)?.world();
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
        let kind = match prepared {
            Prepared::KeyValue(pre) => PatternKind::KeyValue(KeyValueRuntime::new(
                parts.start(name, pre).await.map_err(configure_error)?,
            )),
            Prepared::PubSub(pre) => PatternKind::PubSub(PubSubRuntime::new(
                parts.start(name, pre).await.map_err(configure_error)?,
            )),
            Prepared::Registry(pre) => PatternKind::Registry(RegistryRuntime::new(
                parts.start(name, pre).await.map_err(configure_error)?,
            )),
        };
        tracing::info!(
            namespace = name,
            pattern = %label,
            digest = %&digest[..12],
            kind = kind.label(),
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
            kind,
        })
    }
}

impl Version {
    /// Instances of the version that exist now (idle or in a call).
    pub fn live_instances(&self) -> usize {
        let stats = self.kind.stats();
        stats.idle + stats.busy
    }

    /// Starts instances until the version has `n` (at most its
    /// `max_instances`), so a version swapped in under load serves at once
    /// instead of instantiating on the request path. A failure here is only
    /// logged: the version is configured and creates instances on demand.
    pub async fn warm(&self, namespace: &str, n: usize) {
        let result = match &self.kind {
            PatternKind::KeyValue(kv) => warm_pool(kv.pool(), n).await,
            PatternKind::PubSub(ps) => warm_pool(ps.pool(), n).await,
            PatternKind::Registry(r) => warm_pool(r.pool(), n).await,
        };
        if let Err(e) = result {
            tracing::warn!(namespace, error = %e, "could not pre-start every instance of the new version; the rest start on demand");
        }
    }

    pub fn keyvalue(&self, namespace: &str) -> Result<KeyValueRuntime, super::NamespaceError> {
        super::keyvalue_of(namespace, &self.kind)
    }

    pub fn pubsub(&self, namespace: &str) -> Result<PubSubRuntime, super::NamespaceError> {
        super::pubsub_of(namespace, &self.kind)
    }

    pub fn registry(&self, namespace: &str) -> Result<RegistryRuntime, super::NamespaceError> {
        super::registry_of(namespace, &self.kind)
    }
}

async fn warm_pool<W: PatternWorld>(pool: &PatternPool<W>, n: usize) -> Result<(), RuntimeError> {
    let stats = pool.stats();
    let want = n.min(pool.limits().max_instances as usize);
    for _ in (stats.idle + stats.busy)..want {
        pool.add_idle(pool.instantiate().await?);
    }
    Ok(())
}

/// Everything a pool of one version is built from.
struct PoolParts {
    limits: crate::config::InstanceLimits,
    settings: Vec<(String, String)>,
    slots: Slots,
    lane: Option<tokio::runtime::Handle>,
}

impl PoolParts {
    /// A pool for world `W`, with one instance started (and configured).
    async fn start<W: PatternWorld>(
        self,
        name: &str,
        pre: W::Pre,
    ) -> Result<Arc<PatternPool<W>>, RuntimeError> {
        let pool = Arc::new(PatternPool::<W>::new(
            name,
            pre,
            self.limits,
            self.settings,
            self.slots,
            self.lane,
        ));
        pool.add_idle(pool.instantiate().await?);
        Ok(pool)
    }
}

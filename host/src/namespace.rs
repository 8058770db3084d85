//! Namespaces: each one's pattern instances and capability bindings, and the
//! registry requests are routed through.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tonic::metadata::MetadataMap;

use crate::admission::{Admission, CallGuard, StreamGuard};
use crate::backend::Backends;
use wasmtime::component::Component;

use crate::capability::kv::KvSlot;
use crate::capability::pubsub::PubSubSlot;
use crate::capability::registry::RegistrySlot;
use crate::config::{Config, DEFAULT_NAMESPACE, NamespaceConfig, setting_string, slot_capability};
use crate::runtime::bindings::Keyvalue;
use crate::runtime::bindings::pubsub_world::PubsubWorld;
use crate::runtime::bindings::registry_world::MulticastRegistry;
use crate::runtime::state::Slots;
use crate::runtime::{
    KeyValueRuntime, PatternPool, PatternWorld, PubSubRuntime, RegistryRuntime, Runtime,
    RuntimeError, builtin,
};

/// The request metadata that names the namespace.
pub const NAMESPACE_METADATA: &str = "x-prism-namespace";

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
    fn new(field: impl Into<String>, message: impl ToString) -> StartupError {
        StartupError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// What a namespace's pattern serves.
#[derive(Clone)]
pub enum PatternKind {
    KeyValue(KeyValueRuntime),
    PubSub(PubSubRuntime),
    Registry(RegistryRuntime),
}

impl PatternKind {
    /// Drops instances idle for `ttl` beyond the namespace's warm minimum.
    pub fn trim_idle(&self, ttl: std::time::Duration) -> usize {
        match self {
            PatternKind::KeyValue(kv) => kv.pool().trim(ttl),
            PatternKind::PubSub(ps) => ps.pool().trim(ttl),
            PatternKind::Registry(r) => r.pool().trim(ttl),
        }
    }

    /// The capability bindings of the namespace's instances.
    pub fn slots(&self) -> &Slots {
        match self {
            PatternKind::KeyValue(kv) => kv.pool().slots(),
            PatternKind::PubSub(ps) => ps.pool().slots(),
            PatternKind::Registry(r) => r.pool().slots(),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            PatternKind::KeyValue(_) => "KeyValue",
            PatternKind::PubSub(_) => "PubSub",
            PatternKind::Registry(_) => "Registry",
        }
    }
}

pub struct Namespace {
    pub name: String,
    /// Request-rate, concurrency and stream quotas.
    pub admission: Arc<Admission>,
    /// Capability slot → backend name, as configured.
    pub slots: std::collections::BTreeMap<String, String>,
    /// The built-in name or path of the pattern, for logs.
    pub pattern: String,
    pub kind: PatternKind,
}

/// A pattern component checked against one of the worlds.
enum Prepared {
    KeyValue(<Keyvalue as PatternWorld>::Pre),
    PubSub(<PubsubWorld as PatternWorld>::Pre),
    Registry(<MulticastRegistry as PatternWorld>::Pre),
}

impl Prepared {
    /// The world the component fits, tried in turn.
    fn of(runtime: &Runtime, component: &Component, label: &str) -> Result<Prepared, String> {
        let pre = runtime.link(component, label).map_err(|e| e.to_string())?;
        let kv = match runtime.prepare::<Keyvalue>(&pre, label) {
            Ok(pre) => return Ok(Prepared::KeyValue(pre)),
            Err(e) => e,
        };
        let ps = match runtime.prepare::<PubsubWorld>(&pre, label) {
            Ok(pre) => return Ok(Prepared::PubSub(pre)),
            Err(e) => e,
        };
        match runtime.prepare::<MulticastRegistry>(&pre, label) {
            Ok(pre) => Ok(Prepared::Registry(pre)),
            Err(reg) => Err(format!("{kv}; {ps}; and {reg}")),
        }
    }

    /// The slots this world's pattern uses, by config name.
    fn slots(&self) -> &'static [&'static str] {
        match self {
            Prepared::KeyValue(_) => &["kv"],
            Prepared::PubSub(_) => &["pubsub"],
            Prepared::Registry(_) => &["registry", "messaging"],
        }
    }

    fn world(&self) -> &'static str {
        match self {
            Prepared::KeyValue(_) => "keyvalue",
            Prepared::PubSub(_) => "pubsub",
            Prepared::Registry(_) => "multicast-registry",
        }
    }
}

/// Everything a pool of one namespace is built from.
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

impl Namespace {
    /// Loads the pattern, binds its slots and starts (and configures) one
    /// instance, so a bad component or bad settings fail at start-up.
    pub async fn start(
        name: &str,
        ns: &NamespaceConfig,
        config: &Config,
        runtime: &Runtime,
        backends: &Backends,
    ) -> Result<Namespace, StartupError> {
        let started = Instant::now();
        let field = |f: &str| format!("namespaces.{name}.{f}");
        let (bytes, label) = pattern_bytes(&ns.pattern, config)
            .map_err(|m| StartupError::new(field("pattern"), m))?;
        let component = runtime
            .load(&bytes, &label)
            .map_err(|e| StartupError::new(field("pattern"), e))?;
        let prepared = Prepared::of(runtime, &component, &label)
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
        let resolved = ns.limits.resolve(&config.runtime.limits);
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
                        resolved.quotas.max_stored_bytes,
                        resolved.quotas.max_stored_keys,
                    );
                }
                Some("pubsub") => {
                    let ps = backends.pubsub(backend).ok_or_else(|| missing("pubsub"))?;
                    summaries.push(ps.summary());
                    slots.pubsub = PubSubSlot::new(name, ps);
                }
                Some("registry") => {
                    let reg = backends
                        .registry(backend)
                        .ok_or_else(|| missing("registry"))?;
                    summaries.push(reg.summary());
                    slots.registry = RegistrySlot::new(name, reg);
                }
                _ => return Err(missing(slot)),
            }
        }
        let parts = PoolParts {
            limits: resolved.instance,
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
            kind = kind.label(),
            backend = %summaries.join(" + "),
            ready_ms = started.elapsed().as_secs_f64() * 1000.0,
            "namespace ready"
        );
        Ok(Namespace {
            name: name.to_string(),
            admission: Arc::new(Admission::new(name, resolved.quotas)),
            slots: ns.slots.clone(),
            pattern: label,
            kind,
        })
    }

    pub fn keyvalue(&self) -> Result<&KeyValueRuntime, NamespaceError> {
        match &self.kind {
            PatternKind::KeyValue(kv) => Ok(kv),
            other => Err(self.wrong_pattern(other, "KeyValue")),
        }
    }

    pub fn pubsub(&self) -> Result<&PubSubRuntime, NamespaceError> {
        match &self.kind {
            PatternKind::PubSub(ps) => Ok(ps),
            other => Err(self.wrong_pattern(other, "PubSub")),
        }
    }

    pub fn registry(&self) -> Result<&RegistryRuntime, NamespaceError> {
        match &self.kind {
            PatternKind::Registry(r) => Ok(r),
            other => Err(self.wrong_pattern(other, "Registry")),
        }
    }

    fn wrong_pattern(&self, actual: &PatternKind, expected: &'static str) -> NamespaceError {
        NamespaceError::WrongPattern {
            namespace: self.name.clone(),
            actual: actual.label(),
            expected,
        }
    }
}

/// A built-in pattern's bytes, or a `.wasm` file's; and a label for errors.
fn pattern_bytes(pattern: &str, config: &Config) -> Result<(Vec<u8>, String), String> {
    if let Some(bytes) = builtin::builtin(pattern) {
        return Ok((bytes.to_vec(), format!("built-in pattern '{pattern}'")));
    }
    if !pattern.ends_with(".wasm") {
        return Err(format!(
            "'{pattern}' is neither a built-in pattern ({}) nor a path to a .wasm component",
            builtin::NAMES.join(", ")
        ));
    }
    let path = config.resolve_path(pattern);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((bytes, path.display().to_string()))
}

/// Every namespace of the server, looked up per request.
#[derive(Default)]
pub struct Namespaces {
    map: HashMap<String, Arc<Namespace>>,
}

impl Namespaces {
    pub async fn start_all(
        config: &Config,
        runtime: &Runtime,
        backends: &Backends,
    ) -> Result<Namespaces, StartupError> {
        let mut map = HashMap::new();
        for (name, ns) in &config.namespaces {
            let namespace = Namespace::start(name, ns, config, runtime, backends).await?;
            map.insert(name.clone(), Arc::new(namespace));
        }
        Ok(Namespaces { map })
    }

    pub fn get(&self, name: &str) -> Result<&Arc<Namespace>, NamespaceError> {
        self.map
            .get(name)
            .ok_or_else(|| NamespaceError::Unknown(shorten(name)))
    }

    /// The namespace a request names in its metadata (`default` when absent).
    pub fn for_request(&self, metadata: &MetadataMap) -> Result<&Arc<Namespace>, NamespaceError> {
        match metadata.get(NAMESPACE_METADATA) {
            None => self.get(DEFAULT_NAMESPACE),
            Some(value) => self.get(value.to_str().map_err(|_| NamespaceError::BadMetadata)?),
        }
    }

    /// The request's namespace and its admission for one unary call.
    pub fn admit_call(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(&Arc<Namespace>, CallGuard), tonic::Status> {
        let ns = self.for_request(metadata)?;
        let guard = ns.admission.call()?;
        Ok((ns, guard))
    }

    /// The request's namespace and its admission for one stream.
    pub fn admit_stream(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(&Arc<Namespace>, StreamGuard), tonic::Status> {
        let ns = self.for_request(metadata)?;
        let guard = ns.admission.stream()?;
        Ok((ns, guard))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Namespace>> {
        self.map.values()
    }
}

/// A name from a request, as errors quote it: never more than 64
/// characters, so a huge header is not echoed back.
pub fn shorten(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((cut, _)) => format!("{}… ({} bytes)", &name[..cut], name.len()),
        None => name.to_string(),
    }
}

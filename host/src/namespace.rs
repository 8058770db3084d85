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
use crate::config::{Config, DEFAULT_NAMESPACE, NamespaceConfig, setting_string};
use crate::runtime::bindings::Keyvalue;
use crate::runtime::bindings::pubsub_world::PubsubWorld;
use crate::runtime::state::Slots;
use crate::runtime::{
    KeyValueRuntime, PatternPool, PatternWorld, PubSubRuntime, Runtime, RuntimeError, builtin,
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
}

impl PatternKind {
    /// Drops instances idle for `ttl` beyond the namespace's warm minimum.
    pub fn trim_idle(&self, ttl: std::time::Duration) -> usize {
        match self {
            PatternKind::KeyValue(kv) => kv.pool().trim(ttl),
            PatternKind::PubSub(ps) => ps.pool().trim(ttl),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            PatternKind::KeyValue(_) => "KeyValue",
            PatternKind::PubSub(_) => "PubSub",
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
}

impl Prepared {
    /// The world the component fits, tried in turn.
    fn of(runtime: &Runtime, component: &Component, label: &str) -> Result<Prepared, String> {
        let pre = runtime.link(component, label).map_err(|e| e.to_string())?;
        let kv = match runtime.prepare::<Keyvalue>(&pre, label) {
            Ok(pre) => return Ok(Prepared::KeyValue(pre)),
            Err(e) => e,
        };
        match runtime.prepare::<PubsubWorld>(&pre, label) {
            Ok(pre) => Ok(Prepared::PubSub(pre)),
            Err(ps) => Err(format!("{kv}; and {ps}")),
        }
    }

    /// The slot this world's pattern uses.
    fn slot(&self) -> &'static str {
        match self {
            Prepared::KeyValue(_) => "kv",
            Prepared::PubSub(_) => "pubsub",
        }
    }

    fn world(&self) -> &'static str {
        match self {
            Prepared::KeyValue(_) => "keyvalue",
            Prepared::PubSub(_) => "pubsub",
        }
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

        let wanted = prepared.slot();
        if let Some(slot) = ns.slots.keys().find(|s| s.as_str() != wanted) {
            return Err(StartupError::new(
                field(&format!("slots.{slot}")),
                format!(
                    "the {} pattern has no such slot (it uses: {wanted})",
                    prepared.world()
                ),
            ));
        }
        let backend_name = ns.slots.get(wanted).ok_or_else(|| {
            StartupError::new(
                field("slots"),
                format!(
                    "the {} pattern needs a {wanted} slot, e.g. slots = {{ {wanted} = \"mem\" }}",
                    prepared.world()
                ),
            )
        })?;
        let not_provided = || {
            StartupError::new(
                field(&format!("slots.{wanted}")),
                format!("backend '{backend_name}' does not provide {wanted}"),
            )
        };
        let settings: Vec<(String, String)> = ns
            .settings
            .iter()
            .filter_map(|(k, v)| setting_string(v).map(|v| (k.clone(), v)))
            .collect();
        let resolved = ns.limits.resolve(&config.runtime.limits);
        let limits = resolved.instance;
        let configure_error = |e: RuntimeError| match e {
            RuntimeError::Configure { reason, .. } => StartupError::new(field("settings"), reason),
            other => StartupError::new(field("pattern"), other),
        };
        let (kind, summary) = match prepared {
            Prepared::KeyValue(pre) => {
                let backend = backends.kv(backend_name).ok_or_else(not_provided)?;
                let slots = Slots {
                    kv: KvSlot::new(
                        name,
                        backend.clone(),
                        resolved.quotas.max_stored_bytes,
                        resolved.quotas.max_stored_keys,
                    ),
                    ..Slots::default()
                };
                let pool = Arc::new(PatternPool::<Keyvalue>::new(
                    name,
                    pre,
                    limits,
                    settings,
                    slots,
                    runtime.lane(),
                ));
                pool.add_idle(pool.instantiate().await.map_err(configure_error)?);
                (
                    PatternKind::KeyValue(KeyValueRuntime::new(pool)),
                    backend.summary(),
                )
            }
            Prepared::PubSub(pre) => {
                let backend = backends.pubsub(backend_name).ok_or_else(not_provided)?;
                let slots = Slots {
                    pubsub: PubSubSlot::new(name, backend.clone()),
                    ..Slots::default()
                };
                let pool = Arc::new(PatternPool::<PubsubWorld>::new(
                    name,
                    pre,
                    limits,
                    settings,
                    slots,
                    runtime.lane(),
                ));
                pool.add_idle(pool.instantiate().await.map_err(configure_error)?);
                (
                    PatternKind::PubSub(PubSubRuntime::new(pool)),
                    backend.summary(),
                )
            }
        };
        tracing::info!(
            namespace = name,
            pattern = %label,
            kind = kind.label(),
            backend = %summary,
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

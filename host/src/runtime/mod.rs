//! The wasm runtime: one engine, components compiled once, and a pool of
//! sandboxed instances per namespace.

pub mod builtin;
pub(crate) mod call;
mod component_cache;
mod engine;
pub mod keyvalue;
mod lane;
pub mod pattern;
pub mod pool;
pub mod pubsub;
pub mod registry;
pub mod state;
pub mod world;

use std::fmt;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

pub use component_cache::ComponentCache;
pub use engine::EPOCH_TICK;
pub use keyvalue::KeyValueRuntime;
pub use pattern::{Deployed, PatternRuntime, PoolParts, Prepared, runtime_of};
pub use pool::PatternPool;
pub use pubsub::PubSubRuntime;
pub use registry::RegistryRuntime;
use state::InstanceState;
pub use world::PatternWorld;

use crate::capability::bindings;
use crate::config::RuntimeConfig;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the wasm engine: {0}")]
    Engine(String),
    #[error("{label} is not a usable WebAssembly component: {reason}")]
    InvalidComponent { label: String, reason: String },
    #[error(
        "{label} imports something Prism does not provide ({reason}); patterns may import only the prism:pattern capabilities and WASI 0.2"
    )]
    UnsupportedImport { label: String, reason: String },
    #[error("{label} does not fit the {world} world: {reason}")]
    WrongWorld {
        label: String,
        world: &'static str,
        reason: String,
    },
    #[error("namespace '{namespace}': pattern rejected its settings: {reason}")]
    Configure { namespace: String, reason: String },
    #[error("namespace '{namespace}': cannot start a pattern instance: {reason}")]
    Instantiate { namespace: String, reason: String },
    #[error(
        "namespace '{namespace}' has all {max} pattern instances busy; retry, or raise namespaces.{namespace}.limits.max_instances"
    )]
    Busy { namespace: String, max: u32 },
    #[error(
        "namespace '{namespace}' kept its {slots} compute slot(s) busy with long calls for the whole call deadline ({} ms); retry, or raise namespaces.{namespace}.limits.compute_slots",
        deadline.as_millis()
    )]
    ComputeBusy {
        namespace: String,
        slots: u32,
        deadline: Duration,
    },
    #[error(
        "the server is at its limit of wasm instances across namespaces; retry, or raise runtime.total_instances"
    )]
    PoolExhausted,
    #[error(
        "the pattern of namespace '{namespace}' {kind}; the request was not completed and the instance was replaced"
    )]
    Trap { namespace: String, kind: TrapKind },
}

/// A call failed in the pattern (its answer) or in the runtime (a trap, no instance).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0:?}")]
    Pattern(bindings::PatternError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Why a call into a pattern was cut short.
#[derive(Debug, Clone, PartialEq)]
pub enum TrapKind {
    Deadline(Duration),
    MemoryLimit(usize),
    /// A guest panic (Rust patterns abort through `unreachable`), with its message if any.
    Panic(String),
    StackOverflow,
    /// An access outside linear memory (Rust patterns: often their shadow
    /// stack, which lives in linear memory, running out).
    MemoryFault,
    Other(String),
}

impl TrapKind {
    /// Metric label values, by [`TrapKind::index`].
    pub const LABELS: [&'static str; 6] = [
        "deadline",
        "memory_limit",
        "panic",
        "stack_overflow",
        "memory_fault",
        "other",
    ];

    pub fn index(&self) -> usize {
        match self {
            TrapKind::Deadline(_) => 0,
            TrapKind::MemoryLimit(_) => 1,
            TrapKind::Panic(_) => 2,
            TrapKind::StackOverflow => 3,
            TrapKind::MemoryFault => 4,
            TrapKind::Other(_) => 5,
        }
    }
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrapKind::Deadline(d) => {
                write!(f, "exceeded its call deadline of {} ms", d.as_millis())
            }
            TrapKind::MemoryLimit(bytes) => write!(
                f,
                "exceeded its memory limit of {} MiB",
                bytes / (1024 * 1024)
            ),
            TrapKind::Panic(msg) if msg.is_empty() => write!(f, "panicked"),
            TrapKind::Panic(msg) => write!(f, "panicked: {msg}"),
            TrapKind::StackOverflow => write!(f, "overflowed its stack"),
            TrapKind::MemoryFault => write!(
                f,
                "accessed memory out of bounds (for a Rust pattern usually a stack overflow: its stack lives in linear memory)"
            ),
            TrapKind::Other(msg) => write!(f, "trapped: {msg}"),
        }
    }
}

/// The engine, its epoch ticker, the component cache and the linker every
/// pattern instance is created with.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InstanceState>,
    cache: ComponentCache,
    lane: lane::Lane,
    max_memory_bytes: usize,
    _ticker: engine::EpochTicker,
}

impl Runtime {
    /// `max_memory_bytes`: the largest memory limit of any namespace.
    pub fn new(config: &RuntimeConfig, max_memory_bytes: usize) -> Result<Runtime, RuntimeError> {
        let engine = engine::build_engine(config.total_instances, max_memory_bytes)?;
        let mut linker = Linker::new(&engine);
        // WASI p2 is linked so ordinary Rust guests instantiate; the context
        // each store gets (state.rs) grants no files, sockets or environment.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        crate::capability::add_to_linker(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let ticker = engine::EpochTicker::start(&engine)?;
        Ok(Runtime {
            engine,
            linker,
            cache: ComponentCache::new(config.cache_dir.clone()),
            lane: lane::Lane::start(config.background_threads)?,
            max_memory_bytes,
            _ticker: ticker,
        })
    }

    /// The largest memory limit an instance may have on this engine
    /// (fixed at start: the pooling allocator reserves slots of this size).
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// Where pools move long calls (None: no background lane configured).
    pub fn lane(&self) -> Option<tokio::runtime::Handle> {
        self.lane.handle()
    }

    /// Compiles (or fetches from cache) a component; `label` names it in errors.
    pub fn load(&self, bytes: &[u8], label: &str) -> Result<Component, RuntimeError> {
        self.cache.load(&self.engine, bytes, label)
    }

    /// What a component imports, as `name` lines (`prism:pattern/kv@0.1.0`, `wasi:io/streams@0.2.0`, …).
    pub fn imports(&self, component: &Component) -> Vec<String> {
        component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Resolves the component's imports against what Prism provides, once
    /// per component (every world shares the one linker).
    pub fn link(
        &self,
        component: &Component,
        label: &str,
    ) -> Result<InstancePre<InstanceState>, RuntimeError> {
        self.linker
            .instantiate_pre(component)
            .map_err(|e| RuntimeError::UnsupportedImport {
                label: label.to_string(),
                reason: format!("{e:#}"),
            })
    }

    /// Checks that a linked component exports world `W`.
    pub fn prepare<W: PatternWorld>(
        &self,
        pre: &InstancePre<InstanceState>,
        label: &str,
    ) -> Result<W::Pre, RuntimeError> {
        W::pre(pre.clone()).map_err(|e| RuntimeError::WrongWorld {
            label: label.to_string(),
            world: W::NAME,
            reason: format!("{e:#}"),
        })
    }
}

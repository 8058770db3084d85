//! `[runtime]`: the sandbox's limits, and each namespace's overrides.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Sandbox limits; each namespace may override the per-instance ones.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Defaults for every namespace's instances.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Instances across all namespaces; sizes the pooling allocator.
    #[serde(default = "default_total_instances")]
    pub total_instances: u32,
    /// Where compiled components are cached; default `$XDG_CACHE_HOME/prism` or `~/.cache/prism`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Threads of the background lane, where guest calls that compute for
    /// longer than one epoch slice move at lower OS priority; 0 keeps them
    /// on the request threads (they still yield at every slice).
    #[serde(default = "default_background_threads")]
    pub background_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            limits: LimitsConfig::default(),
            total_instances: default_total_instances(),
            cache_dir: None,
            background_threads: default_background_threads(),
        }
    }
}

/// Sandbox limits and quotas of a namespace, all optional so a namespace
/// inherits what it does not set from `[runtime.limits]`. For quotas, 0
/// means unlimited.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Linear memory one instance may grow to, in MiB.
    pub memory_limit_mib: Option<u32>,
    /// Wall-clock budget of one call into the pattern, in milliseconds.
    pub call_deadline_ms: Option<u64>,
    /// Instances of one namespace's pattern that may run at once.
    pub max_instances: Option<u32>,
    /// Calls of this namespace that may compute past one epoch slice at
    /// the same time; the rest wait their turn (within their deadline).
    pub compute_slots: Option<u32>,
    /// Idle instances kept warm once the namespace has been quiet a while.
    pub idle_instances: Option<u32>,
    /// Requests per second (token bucket refill rate); 0 = unlimited.
    pub requests_per_second: Option<u32>,
    /// Token bucket size: requests accepted in a burst; default = requests_per_second.
    pub burst: Option<u32>,
    /// Calls in flight at once (streams excluded); 0 = unlimited.
    pub max_concurrent_calls: Option<u32>,
    /// Key plus value bytes the namespace may store; 0 = unlimited.
    pub max_stored_bytes: Option<u64>,
    /// Keys the namespace may store; 0 = unlimited.
    pub max_stored_keys: Option<u64>,
    /// Open subscriptions plus registry listeners; 0 = unlimited.
    pub max_subscriptions: Option<u32>,
    /// Messages one subscription or listener may have waiting for its
    /// client, whatever buffer the pattern plans (it gets the smaller).
    pub max_buffered_messages: Option<u32>,
    /// Bytes of messages waiting for clients across the namespace's
    /// subscriptions and listeners; a subscriber past it is treated as one
    /// whose buffer is full (its slow-consumer policy applies).
    pub max_buffered_bytes: Option<u64>,
}

/// Resolved limits of one namespace's instances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceLimits {
    pub memory_bytes: usize,
    pub call_deadline: Duration,
    pub max_instances: u32,
    pub compute_slots: u32,
    pub idle_instances: u32,
}

/// Resolved quotas of one namespace (None = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quotas {
    pub requests_per_second: Option<u32>,
    pub burst: u32,
    pub max_concurrent_calls: Option<u32>,
    pub max_stored_bytes: Option<u64>,
    pub max_stored_keys: Option<u64>,
    pub max_subscriptions: Option<u32>,
    pub max_buffered_messages: u32,
    pub max_buffered_bytes: u64,
}

/// Everything `[namespaces.X.limits]` resolves to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NamespaceLimits {
    pub instance: InstanceLimits,
    pub quotas: Quotas,
}

/// Built-in defaults, used when neither the namespace nor `[runtime.limits]` sets a value.
pub mod default_limits {
    pub const MEMORY_LIMIT_MIB: u32 = 64;
    pub const CALL_DEADLINE_MS: u64 = 2000;
    pub const MAX_INSTANCES: u32 = 128;
    pub const COMPUTE_SLOTS: u32 = 1;
    pub const IDLE_INSTANCES: u32 = 1;
    pub const MAX_CONCURRENT_CALLS: u32 = 4096;
    pub const MAX_SUBSCRIPTIONS: u32 = 10_000;
    /// The built-in patterns' largest subscriber buffer.
    pub const MAX_BUFFERED_MESSAGES: u32 = 65_536;
    pub const MAX_BUFFERED_BYTES: u64 = 256 * 1024 * 1024;
}

impl LimitsConfig {
    /// These limits, falling back to `fallback` and then to built-in defaults.
    pub fn resolve(&self, fallback: &LimitsConfig) -> NamespaceLimits {
        use default_limits as d;
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                self.$field.or(fallback.$field).unwrap_or($default)
            };
        }
        let positive32 = |v: u32| Some(v).filter(|v| *v > 0);
        let positive64 = |v: u64| Some(v).filter(|v| *v > 0);
        let rps = pick!(requests_per_second, 0);
        NamespaceLimits {
            instance: InstanceLimits {
                memory_bytes: pick!(memory_limit_mib, d::MEMORY_LIMIT_MIB) as usize * 1024 * 1024,
                call_deadline: Duration::from_millis(pick!(call_deadline_ms, d::CALL_DEADLINE_MS)),
                max_instances: pick!(max_instances, d::MAX_INSTANCES),
                compute_slots: pick!(compute_slots, d::COMPUTE_SLOTS),
                idle_instances: pick!(idle_instances, d::IDLE_INSTANCES),
            },
            quotas: Quotas {
                requests_per_second: positive32(rps),
                burst: pick!(burst, rps),
                max_concurrent_calls: positive32(pick!(
                    max_concurrent_calls,
                    d::MAX_CONCURRENT_CALLS
                )),
                max_stored_bytes: positive64(pick!(max_stored_bytes, 0)),
                max_stored_keys: positive64(pick!(max_stored_keys, 0)),
                max_subscriptions: positive32(pick!(max_subscriptions, d::MAX_SUBSCRIPTIONS)),
                // Never unlimited: 0 falls back to the built-in bound.
                max_buffered_messages: positive32(pick!(
                    max_buffered_messages,
                    d::MAX_BUFFERED_MESSAGES
                ))
                .unwrap_or(d::MAX_BUFFERED_MESSAGES),
                max_buffered_bytes: positive64(pick!(max_buffered_bytes, d::MAX_BUFFERED_BYTES))
                    .unwrap_or(d::MAX_BUFFERED_BYTES),
            },
        }
    }
}

fn default_total_instances() -> u32 {
    // 1 000 namespaces with a warm instance each, and room to serve them.
    4096
}

fn default_background_threads() -> usize {
    1
}

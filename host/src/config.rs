//! The TOML configuration: parsed into typed structs, then checked as a whole;
//! every error names the file and the field that is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The namespace used when a request carries no `x-prism-namespace`.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The PubSub namespace of `prism dev`.
pub const DEV_PUBSUB_NAMESPACE: &str = "events";
/// The Multicast Registry namespace of `prism dev`.
pub const DEV_REGISTRY_NAMESPACE: &str = "devices";
/// The listen address of `prism dev` and of a config without `[server] listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8980";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Where relative pattern paths are resolved from: the config file's directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config file, when there is one (it keys the default state dir).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest gRPC message accepted; patterns enforce their own, smaller value limits.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// How long in-flight requests may run after SIGINT/SIGTERM.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_message_bytes: default_max_message_bytes(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
        }
    }
}

/// `[telemetry]`: how Prism is observed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Serve Prometheus metrics at `http://<metrics_listen>/metrics`
    /// (plain HTTP, its own port); unset = no metrics listener.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Export traces over OTLP/gRPC to this collector
    /// (`http://collector:4317`, plaintext); unset = no spans are made at all.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of traces started here that are kept (0..=1); a caller's
    /// `traceparent` sampled flag decides for the traces it continues.
    #[serde(default = "default_trace_sample_ratio")]
    pub trace_sample_ratio: f64,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics_listen: None,
            otlp_endpoint: None,
            trace_sample_ratio: default_trace_sample_ratio(),
            service_name: default_service_name(),
        }
    }
}

fn default_trace_sample_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "prism".into()
}

/// `[admin]`: the Admin API and where its changes are kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the Admin API even though `[auth] mode = "none"` (anyone can
    /// then administer this server; `prism dev` sets it).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Where Admin changes (namespaces, uploaded patterns, deployments) are
    /// kept across restarts; default `$XDG_STATE_HOME/prism/<config>` (or
    /// `~/.local/state/prism/...`). Nothing is written until a change is made.
    pub state_dir: Option<PathBuf>,
    /// Largest pattern an upload may carry.
    #[serde(default = "default_max_pattern_bytes")]
    pub max_pattern_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            allow_unauthenticated: false,
            state_dir: None,
            max_pattern_bytes: default_max_pattern_bytes(),
        }
    }
}

fn default_max_pattern_bytes() -> usize {
    64 << 20
}

/// Who may call: `none` (any caller reaches any namespace; `prism dev`) or
/// `jwt` (bearer tokens from OIDC issuers, grants per namespace).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
}

/// `[auth]`: one issuer inline (`issuer`, `audience`), more as `[[auth.issuers]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    /// OIDC issuer URL; discovery is `<issuer>/.well-known/openid-configuration`.
    pub issuer: Option<String>,
    /// The `aud` tokens must carry.
    pub audience: Option<String>,
    /// The claim listing a token's grants (`"orders"`, `"orders:read"`, `"*"`...).
    #[serde(default = "default_namespaces_claim")]
    pub namespaces_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Further trusted issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Shortest time between two JWKS fetches of one issuer (an unknown `kid`
    /// triggers a refetch: this bounds what forged tokens can cost the issuer).
    #[serde(default = "default_jwks_refetch_secs")]
    pub jwks_refetch_secs: u64,
    /// Longest wait for the issuer's discovery document or keys.
    #[serde(default = "default_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            issuer: None,
            audience: None,
            namespaces_claim: default_namespaces_claim(),
            leeway_secs: default_leeway_secs(),
            issuers: Vec::new(),
            jwks_refetch_secs: default_jwks_refetch_secs(),
            fetch_timeout_ms: default_fetch_timeout_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audience: String,
    /// Overrides `[auth] namespaces_claim` for this issuer.
    pub namespaces_claim: Option<String>,
}

impl AuthConfig {
    /// Every trusted issuer, the inline one first.
    pub fn trusted(&self) -> Vec<IssuerConfig> {
        let mut all = Vec::new();
        if let (Some(issuer), Some(audience)) = (&self.issuer, &self.audience) {
            all.push(IssuerConfig {
                issuer: issuer.clone(),
                audience: audience.clone(),
                namespaces_claim: None,
            });
        }
        all.extend(self.issuers.iter().cloned());
        all
    }
}

fn default_namespaces_claim() -> String {
    "prism_namespaces".into()
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_jwks_refetch_secs() -> u64 {
    10
}
fn default_fetch_timeout_ms() -> u64 {
    5000
}

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
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendConfig {
    Memstore(MemStoreConfig),
    Redis(RedisConfig),
    Nats(NatsConfig),
    Postgres(PostgresConfig),
}

impl BackendConfig {
    /// The capabilities a backend of this type can serve.
    pub fn capabilities(&self) -> &'static [&'static str] {
        match self {
            BackendConfig::Memstore(_) | BackendConfig::Redis(_) => &["kv", "pubsub", "registry"],
            BackendConfig::Nats(_) => &["pubsub"],
            BackendConfig::Postgres(_) => &["kv", "registry"],
        }
    }
}

/// The capability a slot name binds (`messaging` is the registry
/// pattern's name for its pubsub slot); None for an unknown slot.
pub fn slot_capability(slot: &str) -> Option<&'static str> {
    match slot {
        "kv" => Some("kv"),
        "pubsub" | "messaging" => Some("pubsub"),
        "registry" => Some("registry"),
        _ => None,
    }
}

/// A NATS server: core NATS (at-most-once) or, with `jetstream = true`,
/// JetStream (at-least-once: acks, durable consumers, redelivery).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://[user:password@]host:port`; credentials never reach logs.
    pub url: String,
    /// Longest wait for a publish to be accepted (or a subscription set up).
    #[serde(default = "default_nats_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub jetstream: bool,
    /// The JetStream stream Prism keeps its topics in (created if missing).
    #[serde(default = "default_nats_stream")]
    pub stream: String,
    /// How long JetStream waits for an ack before redelivering.
    #[serde(default = "default_nats_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// How long JetStream keeps messages.
    #[serde(default = "default_nats_max_age_secs")]
    pub max_age_secs: u64,
    /// Namespace → subject prefix, to front an existing NATS application:
    /// topic `t` of a namespace listed here is subject `<prefix>.t` instead
    /// of `prism.<namespace>.t`. Prefixes never overlap each other or
    /// `prism.`, so namespaces stay apart.
    #[serde(default)]
    pub subjects: BTreeMap<String, String>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .field("jetstream", &self.jetstream)
            .field("stream", &self.stream)
            .field("subjects", &self.subjects)
            .finish()
    }
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; the password never reaches logs.
    pub url: String,
    /// Longest wait for one Redis command (or reconnect) before UNAVAILABLE.
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// PubSub on Redis Streams (XADD, consumer groups, acks, redelivery:
    /// at-least-once, groups across Prism processes) instead of Redis
    /// pub/sub (at-most-once, groups within one process).
    #[serde(default)]
    pub stream: bool,
    /// Streams keep messages this long (trimmed by MINID as they grow).
    #[serde(default = "default_nats_max_age_secs")]
    pub max_age_secs: u64,
    /// Or at most about this many per topic (MAXLEN ~; instead of the age).
    #[serde(default)]
    pub max_len: Option<u64>,
    /// How long a group member may hold a message unacknowledged before
    /// another member (or a new subscriber of the group) claims it.
    #[serde(default = "default_nats_ack_wait_ms")]
    pub ack_wait_ms: u64,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .field("stream", &self.stream)
            .field("max_age_secs", &self.max_age_secs)
            .field("max_len", &self.max_len)
            .field("ack_wait_ms", &self.ack_wait_ms)
            .finish()
    }
}

/// A PostgreSQL database holding the `kv` and `registry` slots of the
/// namespaces bound to it, in two tables of its own (`<table>_kv`,
/// `<table>_registry`), created on first use.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=disable]`;
    /// the password never reaches logs.
    pub url: String,
    /// Connections for transactions (batches under a quota, registry
    /// puts); single statements share up to 4 more, pipelined.
    #[serde(default = "default_postgres_pool_size")]
    pub pool_size: usize,
    /// Longest wait for one statement (or a connection) before UNAVAILABLE.
    #[serde(default = "default_postgres_timeout_ms")]
    pub timeout_ms: u64,
    /// Table name prefix; defaults to `prism_<backend name>` (lower case,
    /// `-` and `.` as `_`).
    #[serde(default)]
    pub table: Option<String>,
    /// How often rows past their TTL are deleted (reads never return them).
    #[serde(default = "default_sweep_interval_ms")]
    pub sweep_interval_ms: u64,
}

impl PostgresConfig {
    /// The table name prefix for backend `name`.
    pub fn table_prefix(&self, name: &str) -> String {
        match &self.table {
            Some(t) => t.clone(),
            None => format!("prism_{name}")
                .to_ascii_lowercase()
                .replace(['-', '.'], "_"),
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("table", &self.table)
            .field("sweep_interval_ms", &self.sweep_interval_ms)
            .finish()
    }
}

fn default_postgres_pool_size() -> usize {
    16
}
fn default_postgres_timeout_ms() -> u64 {
    2000
}

/// Longest table prefix: PostgreSQL identifiers hold 63 bytes, and the
/// longest suffix (`_registry`) and its index names need the rest.
const MAX_TABLE_PREFIX: usize = 40;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemStoreConfig {
    /// Bytes of keys plus values the store may hold.
    #[serde(default = "default_memstore_max_bytes")]
    pub max_bytes: u64,
    /// Number of keys the store may hold.
    #[serde(default = "default_memstore_max_keys")]
    pub max_keys: u64,
    /// How often expired keys are swept (reads never see them regardless).
    #[serde(default = "default_sweep_interval_ms")]
    pub sweep_interval_ms: u64,
}

impl Default for MemStoreConfig {
    fn default() -> Self {
        MemStoreConfig {
            max_bytes: default_memstore_max_bytes(),
            max_keys: default_memstore_max_keys(),
            sweep_interval_ms: default_sweep_interval_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// A built-in pattern name (`keyvalue`) or a path to a `.wasm` component.
    pub pattern: String,
    /// Capability slot name → backend name.
    #[serde(default)]
    pub slots: BTreeMap<String, String>,
    /// Handed to the pattern's `configure` export as strings.
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
    /// Overrides `[runtime.limits]` for this namespace.
    #[serde(default)]
    pub limits: LimitsConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8980))
}
fn default_max_message_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_total_instances() -> u32 {
    // 1 000 namespaces with a warm instance each, and room to serve them.
    4096
}
fn default_background_threads() -> usize {
    1
}
fn default_memstore_max_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_memstore_max_keys() -> u64 {
    10_000_000
}
fn default_sweep_interval_ms() -> u64 {
    1000
}
fn default_redis_timeout_ms() -> u64 {
    1000
}
/// The longest a message may stay unacknowledged before redelivery.
const MAX_ACK_WAIT_MS: u64 = 24 * 3600 * 1000;

fn default_nats_timeout_ms() -> u64 {
    2000
}
fn default_nats_stream() -> String {
    "PRISM".into()
}
fn default_nats_ack_wait_ms() -> u64 {
    30_000
}
fn default_nats_max_age_secs() -> u64 {
    24 * 3600
}

impl Config {
    /// The configuration of `prism dev`: MemStore, a KeyValue `default`
    /// namespace, a PubSub `events` namespace and a Multicast Registry
    /// `devices` namespace.
    pub fn dev(listen: SocketAddr) -> Config {
        let mut backends = BTreeMap::new();
        backends.insert(
            "mem".to_string(),
            BackendConfig::Memstore(MemStoreConfig::default()),
        );
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            DEFAULT_NAMESPACE.to_string(),
            NamespaceConfig {
                pattern: "keyvalue".into(),
                slots: BTreeMap::from([("kv".to_string(), "mem".to_string())]),
                settings: BTreeMap::new(),
                limits: LimitsConfig::default(),
            },
        );
        namespaces.insert(
            DEV_PUBSUB_NAMESPACE.to_string(),
            NamespaceConfig {
                pattern: "pubsub".into(),
                slots: BTreeMap::from([("pubsub".to_string(), "mem".to_string())]),
                settings: BTreeMap::new(),
                limits: LimitsConfig::default(),
            },
        );
        namespaces.insert(
            DEV_REGISTRY_NAMESPACE.to_string(),
            NamespaceConfig {
                pattern: "multicast-registry".into(),
                slots: BTreeMap::from([
                    ("registry".to_string(), "mem".to_string()),
                    ("messaging".to_string(), "mem".to_string()),
                ]),
                settings: BTreeMap::new(),
                limits: LimitsConfig::default(),
            },
        );
        Config {
            server: ServerConfig {
                listen,
                ..ServerConfig::default()
            },
            runtime: RuntimeConfig::default(),
            backends,
            namespaces,
            auth: AuthConfig::default(),
            admin: AdminConfig {
                allow_unauthenticated: true,
                ..AdminConfig::default()
            },
            telemetry: TelemetryConfig::default(),
            base_dir: PathBuf::from("."),
            path: None,
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut config = Config::parse(&text, path, base_dir)?;
        config.path = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(config)
    }

    /// Parses and checks `text`; `path` only labels errors.
    pub fn parse(text: &str, path: &Path, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.base_dir = base_dir;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if self.namespaces.is_empty() && self.admin.state_dir.is_none() {
            return Err(invalid(
                "namespaces".into(),
                "no namespace is configured; add a [namespaces.NAME] table (or set [admin] state_dir and create them through the Admin API)".into(),
            ));
        }
        for name in self.backends.keys() {
            check_name(name).map_err(|m| invalid(format!("backends.{name}"), m))?;
        }
        for (name, ns) in &self.namespaces {
            self.check_namespace(name, ns)
                .map_err(|(field, message)| invalid(field, message))?;
        }
        self.validate_auth(&invalid)?;
        self.validate_telemetry(&invalid)?;
        for (name, backend) in &self.backends {
            match backend {
                BackendConfig::Memstore(m) => {
                    if m.sweep_interval_ms == 0 || m.max_bytes == 0 || m.max_keys == 0 {
                        return Err(invalid(
                            format!("backends.{name}"),
                            "max_bytes, max_keys and sweep_interval_ms must be positive".into(),
                        ));
                    }
                }
                BackendConfig::Redis(r) => {
                    let scheme_ok = ["redis://", "rediss://", "unix://"]
                        .iter()
                        .any(|s| r.url.starts_with(s));
                    if !scheme_ok {
                        return Err(invalid(
                            format!("backends.{name}.url"),
                            "must be a redis://host:port[/db] URL".into(),
                        ));
                    }
                    for (field, value) in [
                        ("timeout_ms", r.timeout_ms),
                        ("max_age_secs", r.max_age_secs),
                        ("ack_wait_ms", r.ack_wait_ms),
                        ("max_len", r.max_len.unwrap_or(1)),
                    ] {
                        if value == 0 {
                            return Err(invalid(
                                format!("backends.{name}.{field}"),
                                "must be positive".into(),
                            ));
                        }
                    }
                    if r.ack_wait_ms > MAX_ACK_WAIT_MS {
                        return Err(invalid(
                            format!("backends.{name}.ack_wait_ms"),
                            format!("must be at most {MAX_ACK_WAIT_MS} (a day)"),
                        ));
                    }
                }
                BackendConfig::Postgres(p) => {
                    let scheme_ok = ["postgres://", "postgresql://"]
                        .iter()
                        .any(|s| p.url.starts_with(s));
                    if !scheme_ok {
                        return Err(invalid(
                            format!("backends.{name}.url"),
                            "must be a postgres://user[:password]@host[:port]/database URL".into(),
                        ));
                    }
                    for (field, value) in [
                        ("timeout_ms", p.timeout_ms),
                        ("pool_size", p.pool_size as u64),
                        ("sweep_interval_ms", p.sweep_interval_ms),
                    ] {
                        if value == 0 {
                            return Err(invalid(
                                format!("backends.{name}.{field}"),
                                "must be positive".into(),
                            ));
                        }
                    }
                    let table = p.table_prefix(name);
                    let table_ok = table.len() <= MAX_TABLE_PREFIX
                        && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                        && table
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    if !table_ok {
                        return Err(invalid(
                            format!("backends.{name}.table"),
                            format!(
                                "table prefix '{}' must be 1-{MAX_TABLE_PREFIX} lower-case letters, digits or '_', not starting with a digit; set `table` to one",
                                crate::namespace::shorten(&table)
                            ),
                        ));
                    }
                    let clash = self.backends.iter().find(|(other, b)| {
                        other.as_str() < name.as_str()
                            && matches!(b, BackendConfig::Postgres(o) if o.url == p.url && o.table_prefix(other) == table)
                    });
                    if let Some((other, _)) = clash {
                        return Err(invalid(
                            format!("backends.{name}.table"),
                            format!(
                                "backend '{other}' already uses tables '{table}_*' in this database; set a different `table`"
                            ),
                        ));
                    }
                }
                BackendConfig::Nats(n) => {
                    let scheme_ok = ["nats://", "tls://"].iter().any(|s| n.url.starts_with(s));
                    if !scheme_ok {
                        return Err(invalid(
                            format!("backends.{name}.url"),
                            "must be a nats://host:port URL".into(),
                        ));
                    }
                    for (field, value) in [
                        ("timeout_ms", n.timeout_ms),
                        ("ack_wait_ms", n.ack_wait_ms),
                        ("max_age_secs", n.max_age_secs),
                    ] {
                        if value == 0 {
                            return Err(invalid(
                                format!("backends.{name}.{field}"),
                                "must be positive".into(),
                            ));
                        }
                    }
                    let stream_ok = !n.stream.is_empty()
                        && n.stream
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                    if !stream_ok {
                        return Err(invalid(
                            format!("backends.{name}.stream"),
                            "must be ASCII letters, digits, '-' or '_'".into(),
                        ));
                    }
                    check_subject_prefixes(&n.subjects).map_err(|(field, m)| {
                        invalid(format!("backends.{name}.subjects.{field}"), m)
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Checks one namespace's definition against this config (names,
    /// slots → backends, settings, limits); the error is (field, message).
    /// Start-up and the Admin API share it.
    pub fn check_namespace(
        &self,
        name: &str,
        ns: &NamespaceConfig,
    ) -> Result<(), (String, String)> {
        // Names, slots and keys come from Admin requests too: quote them shortened.
        use crate::namespace::shorten;
        check_name(name).map_err(|m| (format!("namespaces.{}", shorten(name)), m))?;
        if ns.pattern.trim().is_empty() {
            return Err((
                format!("namespaces.{name}.pattern"),
                "must name a built-in pattern or a .wasm file".into(),
            ));
        }
        if ns.slots.is_empty() {
            return Err((
                format!("namespaces.{name}.slots"),
                "no capability slot is bound; for example slots = { kv = \"mem\" }".into(),
            ));
        }
        for (slot, backend) in &ns.slots {
            let (slot, backend) = (&shorten(slot), &shorten(backend));
            let Some(config) = self.backends.get(backend) else {
                let known: Vec<&str> = self.backends.keys().map(String::as_str).collect();
                return Err((
                    format!("namespaces.{name}.slots.{slot}"),
                    format!(
                        "backend '{backend}' is not defined under [backends] (defined: {})",
                        list_or_none(&known)
                    ),
                ));
            };
            let Some(capability) = slot_capability(slot) else {
                return Err((
                    format!("namespaces.{name}.slots.{slot}"),
                    "unknown slot (slots are kv, pubsub, registry and messaging)".into(),
                ));
            };
            let serves = config.capabilities();
            if !serves.contains(&capability) {
                return Err((
                    format!("namespaces.{name}.slots.{slot}"),
                    format!(
                        "backend '{backend}' cannot serve a {slot} slot, which needs {capability} (it serves: {})",
                        serves.join(", ")
                    ),
                ));
            }
        }
        for (key, value) in &ns.settings {
            let key = shorten(key);
            if setting_string(value).is_none() {
                return Err((
                    format!("namespaces.{name}.settings.{key}"),
                    "must be a string, number or boolean".into(),
                ));
            }
        }
        let limits = ns.limits.resolve(&self.runtime.limits).instance;
        for (field, positive) in [
            ("memory_limit_mib", limits.memory_bytes > 0),
            ("call_deadline_ms", !limits.call_deadline.is_zero()),
            ("max_instances", limits.max_instances > 0),
            ("compute_slots", limits.compute_slots > 0),
        ] {
            if !positive {
                return Err((
                    format!("namespaces.{name}.limits.{field}"),
                    "must be positive".into(),
                ));
            }
        }
        if limits.max_instances > self.runtime.total_instances {
            return Err((
                format!("namespaces.{name}.limits.max_instances"),
                format!(
                    "{} is more than runtime.total_instances ({})",
                    limits.max_instances, self.runtime.total_instances
                ),
            ));
        }
        Ok(())
    }

    /// `[telemetry]` alone, for values set by flags after the file was read.
    pub fn check_telemetry(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: PathBuf::from("(command line)"),
            field,
            message,
        };
        self.validate_telemetry(&invalid)
    }

    fn validate_telemetry(
        &self,
        invalid: &impl Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.trace_sample_ratio) {
            return Err(invalid(
                "telemetry.trace_sample_ratio".into(),
                format!(
                    "is {}; it must be between 0 and 1 (1 keeps every trace)",
                    t.trace_sample_ratio
                ),
            ));
        }
        if let Some(endpoint) = &t.otlp_endpoint {
            let valid = endpoint.len() > "http://".len()
                && endpoint.starts_with("http://")
                && endpoint.parse::<http::Uri>().is_ok();
            if !valid {
                return Err(invalid(
                    "telemetry.otlp_endpoint".into(),
                    "must be the http:// URL of an OTLP/gRPC collector, e.g. http://127.0.0.1:4317 (spans leave in plain gRPC: run the collector beside Prism, as a sidecar or on the node)".into(),
                ));
            }
        }
        if t.service_name.is_empty() {
            return Err(invalid(
                "telemetry.service_name".into(),
                "must not be empty".into(),
            ));
        }
        Ok(())
    }

    fn validate_auth(
        &self,
        invalid: &impl Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if auth.issuer.is_some() != auth.audience.is_some() {
            return Err(invalid(
                "auth".into(),
                "issuer and audience go together; set both (or use [[auth.issuers]])".into(),
            ));
        }
        let trusted = auth.trusted();
        if auth.mode == AuthMode::Jwt && trusted.is_empty() {
            return Err(invalid(
                "auth.issuer".into(),
                "mode = \"jwt\" needs an issuer and audience (or [[auth.issuers]])".into(),
            ));
        }
        for (i, issuer) in trusted.iter().enumerate() {
            let field = if auth.issuer.as_deref() == Some(&issuer.issuer) && i == 0 {
                "auth.issuer".to_string()
            } else {
                format!(
                    "auth.issuers[{}].issuer",
                    i - usize::from(auth.issuer.is_some())
                )
            };
            let ok = issuer.issuer.starts_with("https://") || issuer.issuer.starts_with("http://");
            if !ok {
                return Err(invalid(field, "must be an http(s):// URL".into()));
            }
            if issuer.audience.is_empty() {
                return Err(invalid(
                    field.replace("issuer", "audience"),
                    "must not be empty".into(),
                ));
            }
        }
        if auth.jwks_refetch_secs == 0 || auth.fetch_timeout_ms == 0 {
            return Err(invalid(
                "auth".into(),
                "jwks_refetch_secs and fetch_timeout_ms must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Where Admin changes are kept: `[admin] state_dir`, else a directory
    /// per config file under the user's state dir; None for `prism dev`
    /// (its changes last as long as the process).
    pub fn state_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.admin.state_dir {
            return Some(self.resolve_path(&dir.display().to_string()));
        }
        let config = self.path.as_ref()?;
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
            })?;
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(config);
        let stem = config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "prism".into());
        Some(base.join("prism").join(format!("{stem}-{hash:016x}")))
    }

    /// Where a namespace's `.wasm` pattern path points, relative to the config file.
    pub fn resolve_path(&self, pattern: &str) -> PathBuf {
        let p = Path::new(pattern);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// A settings value as the string the pattern receives.
pub fn setting_string(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Namespace and backend names appear in metadata, logs and key prefixes.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name '{}' must be 1-64 characters of ASCII letters, digits, '-', '_' or '.'",
            crate::namespace::shorten(name)
        ))
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// `subjects` of a NATS backend: namespace names mapped to prefixes of
/// plain subject tokens that neither overlap each other nor `prism.`
/// (the default scoping), so no namespace can read another's subjects.
fn check_subject_prefixes(subjects: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    for (namespace, prefix) in subjects {
        check_name(namespace).map_err(|m| (namespace.clone(), m))?;
        let tokens: Vec<&str> = prefix.split('.').collect();
        let plain = tokens.iter().all(|t| {
            !t.is_empty()
                && *t != "*"
                && *t != ">"
                && t.chars()
                    .all(|c| c.is_ascii_graphic() && c != '*' && c != '>')
        });
        if !plain {
            return Err((
                namespace.clone(),
                format!(
                    "{prefix:?} is not a subject prefix: use dot-separated tokens without spaces or wildcards, e.g. \"orders.v1\""
                ),
            ));
        }
        // `$JS.API`, `$SYS`, `$KV`...: the server's own APIs; `_INBOX`:
        // every client's replies. A tenant mapped there could reach them.
        if tokens.iter().any(|t| t.starts_with('$')) || tokens[0] == "_INBOX" {
            return Err((
                namespace.clone(),
                format!(
                    "{prefix:?} reaches NATS's own subjects ($... APIs or _INBOX replies); map the namespace onto application subjects"
                ),
            ));
        }
        if tokens[0] == "prism" {
            return Err((
                namespace.clone(),
                format!("{prefix:?} is under prism., where Prism scopes unmapped namespaces"),
            ));
        }
        for (other, other_prefix) in subjects {
            let nested = other_prefix == prefix || other_prefix.starts_with(&format!("{prefix}."));
            if other != namespace && nested {
                return Err((
                    namespace.clone(),
                    format!(
                        "{prefix:?} overlaps namespace {other:?}'s {other_prefix:?}: each namespace needs subjects of its own"
                    ),
                ));
            }
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("prism.toml"), PathBuf::from("."))
    }

    #[test]
    fn design_example_parses() -> Result<(), ConfigError> {
        let config = parse(
            r#"
            [server]
            listen = "127.0.0.1:8980"
            [backends.mem]
            type = "memstore"
            [namespaces.default]
            pattern = "keyvalue"
            slots = { kv = "mem" }
            [namespaces.default.settings]
            max_value_bytes = 1024
            "#,
        )?;
        assert_eq!(config.namespaces["default"].slots["kv"], "mem");
        assert_eq!(
            setting_string(&config.namespaces["default"].settings["max_value_bytes"]).as_deref(),
            Some("1024")
        );
        Ok(())
    }

    fn postgres_error(backends: &str) -> String {
        parse(&format!(
            "{backends}\n[namespaces.orders]\npattern = \"keyvalue\"\nslots = {{ kv = \"pg\" }}\n"
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    }

    #[test]
    fn postgres_backends_are_checked() {
        let pg = |extra: &str| {
            format!(
                "[backends.pg]\ntype = \"postgres\"\nurl = \"postgres://u:pw@db/prism\"\n{extra}"
            )
        };
        assert_eq!(postgres_error(&pg("")), "");
        for (backends, field, expected) in [
            (
                "[backends.pg]\ntype = \"postgres\"\nurl = \"mysql://db\"\n".to_string(),
                "backends.pg.url",
                "postgres://",
            ),
            (pg("pool_size = 0"), "backends.pg.pool_size", "positive"),
            (pg("timeout_ms = 0"), "backends.pg.timeout_ms", "positive"),
            (
                pg("table = \"Bad-Name\""),
                "backends.pg.table",
                "lower-case",
            ),
            (
                pg(&format!("table = \"{}\"", "t".repeat(41))),
                "backends.pg.table",
                "1-40",
            ),
            (
                format!(
                    "{}[backends.pg2]\ntype = \"postgres\"\nurl = \"postgres://u:pw@db/prism\"\ntable = \"prism_pg\"\n",
                    pg("")
                ),
                "backends.pg2.table",
                "already uses tables",
            ),
        ] {
            let err = postgres_error(&backends);
            assert!(err.contains(field) && err.contains(expected), "{err}");
            assert!(!err.contains("pw@"), "{err}");
        }
        // A long backend name needs its own table prefix.
        let n = "b".repeat(45);
        let long = format!(
            "[backends.{n}]\ntype = \"postgres\"\nurl = \"postgres://db/p\"\n[namespaces.orders]\npattern = \"keyvalue\"\nslots = {{ kv = \"{n}\" }}\n"
        );
        let err = parse(&long)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("set `table`"), "{err}");
        assert!(parse(&long.replace("url = ", "table = \"short\"\nurl = ")).is_ok());
    }

    fn nats_with_subjects(subjects: &str) -> String {
        parse(&format!(
            r#"
            [backends.bus]
            type = "nats"
            url = "nats://127.0.0.1:4222"
            subjects = {{ {subjects} }}
            [namespaces.orders]
            pattern = "pubsub"
            slots = {{ pubsub = "bus" }}
            "#
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    }

    #[test]
    fn subject_prefixes_are_plain_and_never_overlap() {
        assert_eq!(nats_with_subjects(r#"orders = "legacy.orders""#), "");
        assert_eq!(
            nats_with_subjects(r#"orders = "legacy.orders", billing = "legacy.billing""#),
            ""
        );
        for (subjects, expected) in [
            (r#"orders = "legacy.*""#, "not a subject prefix"),
            (r#"orders = "legacy..orders""#, "not a subject prefix"),
            (r#"orders = "legacy orders""#, "not a subject prefix"),
            (r#"orders = """#, "not a subject prefix"),
            (r#"orders = "prism.orders""#, "under prism."),
            (r#"orders = "$JS.API""#, "NATS's own subjects"),
            (r#"orders = "app.$SYS""#, "NATS's own subjects"),
            (r#"orders = "_INBOX""#, "NATS's own subjects"),
            (
                r#"orders = "legacy", billing = "legacy.billing""#,
                "overlaps",
            ),
            (r#"orders = "legacy", billing = "legacy""#, "overlaps"),
        ] {
            let err = nats_with_subjects(subjects);
            assert!(
                err.contains("backends.bus.subjects.") && err.contains(expected),
                "{subjects}: {err}"
            );
        }
    }

    #[test]
    fn telemetry_values_are_checked() {
        for (telemetry, field) in [
            (
                "otlp_endpoint = \"collector:4317\"",
                "telemetry.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"https://collector:4317\"",
                "telemetry.otlp_endpoint",
            ),
            ("trace_sample_ratio = 1.5", "telemetry.trace_sample_ratio"),
            ("service_name = \"\"", "telemetry.service_name"),
        ] {
            let err = parse(&format!(
                "[telemetry]\n{telemetry}\n[backends.mem]\ntype = \"memstore\"\n[namespaces.default]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n"
            ))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(err.contains(field), "{telemetry}: {err}");
        }
    }

    #[test]
    fn unknown_backend_names_the_field() {
        let err = parse(
            r#"
            [backends.mem]
            type = "memstore"
            [namespaces.orders]
            pattern = "keyvalue"
            slots = { kv = "cache" }
            "#,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("prism.toml: namespaces.orders.slots.kv"),
            "{err}"
        );
        assert!(err.contains("'cache' is not defined"), "{err}");
    }

    #[test]
    fn unknown_field_and_type_are_rejected() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("lisen"), "{err}");
        let err = parse("[backends.x]\ntype = \"mysql\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("mysql"), "{err}");
    }

    #[test]
    fn bad_names_and_limits_are_rejected() {
        let err = parse("[backends.mem]\ntype = \"memstore\"\n[namespaces.\"a/b\"]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("namespaces.a/b"), "{err}");
        let err = parse("[backends.mem]\ntype = \"memstore\"\n[namespaces.a]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\nlimits = { call_deadline_ms = 0 }\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("prism.toml: namespaces.a.limits.call_deadline_ms: must be positive"),
            "{err}"
        );
    }
}

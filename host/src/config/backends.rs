//! `[backends.NAME]`: one table per backend, tagged by `type`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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

    /// The backend's TLS settings (None for the embedded MemStore).
    pub fn tls(&self) -> Option<BackendTls<'_>> {
        match self {
            BackendConfig::Memstore(_) => None,
            BackendConfig::Redis(c) => Some(c.tls()),
            BackendConfig::Nats(c) => Some(c.tls()),
            BackendConfig::Postgres(c) => Some(c.tls()),
        }
    }

    /// Resolves relative TLS file paths with `resolve` (from the config file's folder).
    pub(super) fn resolve_tls_paths(&mut self, resolve: impl Fn(&PathBuf) -> PathBuf) {
        let fields = match self {
            BackendConfig::Memstore(_) => return,
            BackendConfig::Redis(c) => [&mut c.tls_ca, &mut c.tls_cert, &mut c.tls_key],
            BackendConfig::Nats(c) => [&mut c.tls_ca, &mut c.tls_cert, &mut c.tls_key],
            BackendConfig::Postgres(c) => [&mut c.tls_ca, &mut c.tls_cert, &mut c.tls_key],
        };
        for path in fields.into_iter().flatten() {
            *path = resolve(path);
        }
    }
}

/// TLS to a backend's server, from `tls_ca`, `tls_cert` and `tls_key` in
/// its table: the CA that signed the server's certificate (default: the
/// system's roots) and the client certificate (PEM chain + key) to present
/// to a server that asks for one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BackendTls<'a> {
    pub ca: Option<&'a std::path::Path>,
    pub cert: Option<&'a std::path::Path>,
    pub key: Option<&'a std::path::Path>,
}

/// `tls()` for the config tables that have the three TLS fields.
macro_rules! tls_fields {
    ($($config:ty),*) => {$(
        impl $config {
            pub fn tls(&self) -> BackendTls<'_> {
                BackendTls {
                    ca: self.tls_ca.as_deref(),
                    cert: self.tls_cert.as_deref(),
                    key: self.tls_key.as_deref(),
                }
            }
        }
    )*};
}
tls_fields!(RedisConfig, NatsConfig, PostgresConfig);

impl BackendTls<'_> {
    /// Whether any TLS setting is made.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
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
    /// `nats://[user:password@]host:port`, or `tls://` to require TLS (the
    /// certificate must chain to `tls_ca` or the system's roots and name
    /// the host; `nats://` follows a server that requires TLS); credentials
    /// never reach logs.
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
    /// PEM file of the CA that signed the server's certificate (default:
    /// the system's roots); relative to the config file.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for a server that asks for one.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .field("jetstream", &self.jetstream)
            .field("stream", &self.stream)
            .field("subjects", &self.subjects)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS
    /// (the certificate must chain to `tls_ca` or the system's roots and
    /// name the host); the password never reaches logs.
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
    /// Put before every pub/sub channel Prism uses (`<prefix><namespace>/<topic>`):
    /// Redis pub/sub ignores the database number, so two deployments on one
    /// Redis hear each other's messages unless their prefixes differ.
    #[serde(default)]
    pub channel_prefix: String,
    /// PEM file of the CA that signed the server's certificate (default:
    /// the system's roots); relative to the config file.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for a server that asks for one.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .field("stream", &self.stream)
            .field("max_age_secs", &self.max_age_secs)
            .field("channel_prefix", &self.channel_prefix)
            .field("max_len", &self.max_len)
            .field("ack_wait_ms", &self.ack_wait_ms)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// A PostgreSQL database holding the `kv` and `registry` slots of the
/// namespaces bound to it, in two tables of its own (`<table>_kv`,
/// `<table>_registry`), created on first use.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=…]`; the
    /// password never reaches logs. `sslmode` as libpq reads it: `disable`,
    /// `prefer` (the default: TLS when the server offers it), `require`
    /// (TLS or no connection), `verify-ca` (and the certificate chains to
    /// `tls_ca` or the system's roots), `verify-full` (and names the host).
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
    /// PEM file of the CA that signed the server's certificate (default:
    /// the system's roots); relative to the config file.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for a server that asks for one.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
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
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
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
pub(super) const MAX_TABLE_PREFIX: usize = 40;

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

pub(super) const MAX_ACK_WAIT_MS: u64 = 24 * 3600 * 1000;

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

//! The TOML configuration: parsed into typed structs, then checked as a whole;
//! every error names the file and the field that is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod admin;
mod auth;
mod backends;
mod runtime;
mod server;
mod telemetry;
mod validate;

pub use admin::{AdminConfig, STORE_TYPES};
pub use auth::{AuthConfig, AuthMode, IssuerConfig, fetch_allowed};
pub use backends::{
    BackendConfig, BackendTls, MemStoreConfig, NatsConfig, PostgresConfig, RedisConfig,
    slot_capability,
};
pub use runtime::{InstanceLimits, LimitsConfig, NamespaceLimits, Quotas, RuntimeConfig};
pub use server::ServerConfig;
pub use telemetry::TelemetryConfig;

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
        // Backends read their TLS files when they are built, away from the config.
        let mut backends = std::mem::take(&mut config.backends);
        for backend in backends.values_mut() {
            backend.resolve_tls_paths(|p| config.resolve_path(p));
        }
        config.backends = backends;
        config.validate(path)?;
        Ok(config)
    }

    /// Where Admin changes are kept: `[admin] state_dir`, else a directory
    /// per config file under the user's state dir; None for `prism dev`
    /// (its changes last as long as the process).
    pub fn state_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.admin.state_dir {
            return Some(self.resolve_path(dir.display().to_string()));
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

    /// Where a path in the config points: relative ones to the config
    /// file's folder (a namespace's `.wasm` pattern, TLS files).
    pub fn resolve_path(&self, pattern: impl AsRef<Path>) -> PathBuf {
        let p = pattern.as_ref();
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

    #[test]
    fn a_control_store_must_be_postgres_or_jetstream() {
        let with = |backend: &str, store: &str| {
            parse(&format!(
                "[backends.mem]\ntype = \"memstore\"\n{backend}\n[admin]\nstore = \"{store}\"\n"
            ))
        };
        assert!(
            with(
                "[backends.pg]\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"",
                "pg"
            )
            .is_ok()
        );
        assert!(
            with(
                "[backends.js]\ntype = \"nats\"\nurl = \"nats://h:4222\"\njetstream = true",
                "js"
            )
            .is_ok()
        );
        for (backend, store, kind) in [
            ("", "mem", "a memstore backend"),
            (
                "[backends.r]\ntype = \"redis\"\nurl = \"redis://h\"",
                "r",
                "a redis backend",
            ),
            (
                "[backends.n]\ntype = \"nats\"\nurl = \"nats://h:4222\"",
                "n",
                "without jetstream",
            ),
            ("", "absent", "not configured"),
        ] {
            let err = with(backend, store)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("admin.store") && err.contains(kind) && err.contains(STORE_TYPES),
                "{store}: {err}"
            );
        }
    }

    #[test]
    fn tombstones_are_kept_at_least_a_second() {
        let with = |ttl: u64| {
            parse(&format!(
                "[backends.mem]\ntype = \"memstore\"\n[admin]\nstate_dir = \"/tmp/prism\"\ntombstone_ttl_ms = {ttl}\n"
            ))
        };
        let err = with(999).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("admin.tombstone_ttl_ms") && err.contains("at least 1000 ms"),
            "{err}"
        );
        assert_eq!(
            with(1000).map(|c| c.admin.tombstone_ttl_ms).ok(),
            Some(1000)
        );
        assert_eq!(
            parse("[backends.mem]\ntype = \"memstore\"\n[admin]\nstate_dir = \"/tmp/prism\"\n")
                .map(|c| c.admin.tombstone_ttl_ms)
                .ok(),
            Some(3_600_000)
        );
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

    fn jwt_with_issuer(issuer: &str, extra: &str) -> String {
        format!(
            "[auth]\nmode = \"jwt\"\nissuer = \"{issuer}\"\naudience = \"prism\"\n{extra}[backends.mem]\ntype = \"memstore\"\n[namespaces.a]\npattern = \"keyvalue\"\nslots = {{ kv = \"mem\" }}\n"
        )
    }

    #[test]
    fn an_http_issuer_off_loopback_is_refused_unless_declared_insecure() {
        let err = parse(&jwt_with_issuer("http://login.example.com", ""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("auth.issuer: must be https://"), "{err}");
        assert!(err.contains("insecure_issuer"), "{err}");
        for ok in [
            "https://login.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:9000/realms/x",
            "http://[::1]:9000",
        ] {
            assert!(parse(&jwt_with_issuer(ok, "")).is_ok(), "{ok}");
        }
        assert!(
            parse(&jwt_with_issuer(
                "http://login.example.com",
                "insecure_issuer = true\n"
            ))
            .is_ok()
        );
        // Not fooled by userinfo or a look-alike host.
        assert!(!fetch_allowed("http://127.0.0.1@evil.example/", false));
        assert!(!fetch_allowed("http://127.0.0.1.evil.example/", false));
        assert!(fetch_allowed("http://user@127.0.0.1:80/", false));
    }

    #[test]
    fn server_limits_and_tls_are_checked() -> Result<(), ConfigError> {
        let base = "[backends.mem]\ntype = \"memstore\"\n[namespaces.a]\npattern = \"keyvalue\"\nslots = { kv = \"mem\" }\n";
        for (server, field) in [
            ("max_connections = 0", "server.max_connections"),
            (
                "max_concurrent_streams = 0",
                "server.max_concurrent_streams",
            ),
            ("tls_cert = \"c.pem\"", "server.tls_cert"),
            ("tls_client_ca = \"ca.pem\"", "server.tls_client_ca"),
        ] {
            let err = parse(&format!("[server]\n{server}\n{base}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(field), "{server}: {err}");
        }
        let config = parse(base)?;
        assert_eq!(config.server.max_concurrent_streams, 2048);
        assert_eq!(config.server.max_reset_streams, 1024);
        Ok(())
    }
}

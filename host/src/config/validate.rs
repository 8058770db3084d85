//! The checks a parsed config must pass as a whole: names, slots bound to
//! backends that serve them, backend and auth settings. Every error names
//! the field to fix.

use std::collections::BTreeMap;
use std::path::Path;

use super::backends::{MAX_ACK_WAIT_MS, MAX_TABLE_PREFIX};
use super::*;

impl Config {
    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if self.namespaces.is_empty()
            && self.admin.state_dir.is_none()
            && self.admin.store.is_none()
        {
            return Err(invalid(
                "namespaces".into(),
                "no namespace is configured; add a [namespaces.NAME] table (or set [admin] state_dir or store and create them through the Admin API)".into(),
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
        self.validate_server(&invalid)?;
        for (name, backend) in &self.backends {
            if let Some(tls) = backend.tls() {
                check_backend_tls(backend, &tls).map_err(|(field, message)| {
                    invalid(format!("backends.{name}.{field}"), message)
                })?;
            }
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
                                crate::text::shorten(&table)
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
        use crate::text::shorten;
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

    fn validate_server(
        &self,
        invalid: &impl Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let a = &self.admin;
        if let Some(store) = &a.store {
            let kind = match self.backends.get(store) {
                None => {
                    return Err(invalid(
                        "admin.store".into(),
                        format!(
                            "names backend '{}', which is not configured; it must name {}",
                            crate::text::shorten(store),
                            STORE_TYPES
                        ),
                    ));
                }
                Some(BackendConfig::Postgres(_)) => None,
                Some(BackendConfig::Nats(n)) if n.jetstream => None,
                Some(BackendConfig::Nats(_)) => Some("a nats backend without jetstream = true"),
                Some(BackendConfig::Redis(_)) => Some("a redis backend"),
                Some(BackendConfig::Memstore(_)) => {
                    Some("a memstore backend (it lives in one process)")
                }
            };
            if let Some(kind) = kind {
                return Err(invalid(
                    "admin.store".into(),
                    format!(
                        "backend '{store}' is {kind}; a control store is {}",
                        STORE_TYPES
                    ),
                ));
            }
        }
        if a.tombstone_ttl_ms < super::admin::MIN_TOMBSTONE_TTL_MS {
            return Err(invalid(
                "admin.tombstone_ttl_ms".into(),
                format!(
                    "is {} ms; it must be at least {} ms (replicas must see a removal before it is forgotten)",
                    a.tombstone_ttl_ms,
                    super::admin::MIN_TOMBSTONE_TTL_MS
                ),
            ));
        }
        for (field, value) in [
            ("max_pattern_bytes", a.max_pattern_bytes as u64),
            (
                "max_uploads_per_namespace",
                a.max_uploads_per_namespace as u64,
            ),
            (
                "max_upload_bytes_per_namespace",
                a.max_upload_bytes_per_namespace,
            ),
            ("max_concurrent_uploads", a.max_concurrent_uploads as u64),
        ] {
            if value == 0 {
                return Err(invalid(format!("admin.{field}"), "must be positive".into()));
            }
        }
        let s = &self.server;
        let at_least_one = [
            ("max_connections", s.max_connections as u64),
            (
                "max_concurrent_streams",
                u64::from(s.max_concurrent_streams),
            ),
            (
                "max_unauthenticated_streams",
                s.max_unauthenticated_streams as u64,
            ),
            ("max_reset_streams", s.max_reset_streams as u64),
            ("handshake_timeout_secs", s.handshake_timeout_secs),
            ("max_message_bytes", s.max_message_bytes as u64),
        ];
        for (field, value) in at_least_one {
            if value == 0 {
                return Err(invalid(
                    format!("server.{field}"),
                    "is 0, which would refuse everything; it must be at least 1".into(),
                ));
            }
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return Err(invalid(
                "server.tls_cert".into(),
                "tls_cert and tls_key go together (PEM certificate chain and its private key); set both or neither".into(),
            ));
        }
        if s.tls_client_ca.is_some() && s.tls_cert.is_none() {
            return Err(invalid(
                "server.tls_client_ca".into(),
                "client certificates need TLS: set tls_cert and tls_key too".into(),
            ));
        }
        if s.keepalive_secs > 0 && s.keepalive_timeout_secs == 0 {
            return Err(invalid(
                "server.keepalive_timeout_secs".into(),
                "is 0 while keepalive_secs is set; give peers at least a second to answer a ping"
                    .into(),
            ));
        }
        Ok(())
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
            if !super::auth::fetch_allowed(&issuer.issuer, auth.insecure_issuer) {
                return Err(invalid(
                    field,
                    "must be https:// off loopback: over http anyone on the path could serve their own keys and mint any grant (set [auth] insecure_issuer = true for a closed lab)".into(),
                ));
            }
            if issuer.audience.is_empty() {
                return Err(invalid(
                    field.replace("issuer", "audience"),
                    "must not be empty".into(),
                ));
            }
        }
        if auth.jwks_refetch_secs == 0 || auth.fetch_timeout_ms == 0 || auth.jwks_ttl_secs == 0 {
            return Err(invalid(
                "auth".into(),
                "jwks_refetch_secs, jwks_ttl_secs and fetch_timeout_ms must be positive".into(),
            ));
        }
        Ok(())
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
            crate::text::shorten(name)
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

/// TLS settings that go together, and a URL that asks for TLS when they are set.
fn check_backend_tls(
    backend: &BackendConfig,
    tls: &super::backends::BackendTls<'_>,
) -> Result<(), (String, String)> {
    if tls.cert.is_some() != tls.key.is_some() {
        return Err((
            "tls_cert".into(),
            "tls_cert and tls_key go together (PEM client certificate chain and its private key); set both or neither".into(),
        ));
    }
    if !tls.is_set() {
        return Ok(());
    }
    let refused = match backend {
        BackendConfig::Redis(r) if !r.url.starts_with("rediss://") => {
            Some("TLS settings need a rediss:// URL (redis:// is plaintext)")
        }
        BackendConfig::Nats(n) if !n.url.starts_with("tls://") => {
            Some("TLS settings need a tls:// URL (nats:// does not insist on TLS)")
        }
        BackendConfig::Postgres(p) if p.url.contains("sslmode=disable") => {
            Some("TLS settings with sslmode=disable: drop one or the other")
        }
        _ => None,
    };
    match refused {
        Some(message) => Err(("url".into(), message.into())),
        None => Ok(()),
    }
}

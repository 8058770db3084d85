//! The built-in KeyValue pattern: validates keys and values against the
//! namespace's limits, normalises scan prefixes, caps page sizes and applies
//! the namespace's default TTL, then reaches data through the `kv` capability.

mod limits;

use std::cell::RefCell;

use limits::Limits;

wit_bindgen::generate!({
    path: "../../wit",
    world: "keyvalue",
});

use exports::prism::pattern::keyvalue_pattern::{Guest, ScanRequest, ScanResult};
use prism::pattern::kv::{self, Entry};
use prism::pattern::types::{CapabilityError, PatternError};

thread_local! {
    // A component instance is single-threaded; settings arrive once via `configure`.
    static LIMITS: RefCell<Limits> = RefCell::new(Limits::default());
}

fn limits() -> Limits {
    LIMITS.with(|l| l.borrow().clone())
}

struct KeyValuePattern;

impl Guest for KeyValuePattern {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let parsed = Limits::from_settings(&settings)?;
        LIMITS.with(|l| *l.borrow_mut() = parsed);
        Ok(())
    }

    fn get(key: String) -> Result<Vec<u8>, PatternError> {
        limits().check_key(&key)?;
        match kv::get(&key).map_err(capability)? {
            Some(value) => Ok(value),
            None => Err(PatternError::NotFound(format!(
                "key '{}' not found",
                shorten(&key)
            ))),
        }
    }

    fn set(key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), PatternError> {
        let limits = limits();
        limits.check_key(&key)?;
        limits.check_value(&key, &value)?;
        let ttl = limits.effective_ttl(ttl_ms)?;
        kv::set(&key, &value, ttl).map_err(capability)
    }

    fn delete(key: String) -> Result<bool, PatternError> {
        limits().check_key(&key)?;
        kv::delete(&key).map_err(capability)
    }

    fn exists(key: String) -> Result<bool, PatternError> {
        limits().check_key(&key)?;
        kv::exists(&key).map_err(capability)
    }

    fn scan(request: ScanRequest) -> Result<ScanResult, PatternError> {
        let limits = limits();
        let prefix = normalise_prefix(&request.prefix);
        if prefix.len() > limits.max_key_bytes {
            return Err(PatternError::InvalidArgument(format!(
                "scan prefix is {} bytes; the limit is {} bytes",
                prefix.len(),
                limits.max_key_bytes
            )));
        }
        let page = limits.page_size(request.limit);
        let cursor = request.cursor.filter(|c| !c.is_empty());
        let result = kv::scan(prefix, cursor.as_deref(), page).map_err(capability)?;
        Ok(ScanResult {
            keys: result.keys,
            cursor: result.cursor,
        })
    }

    fn get_many(keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, PatternError> {
        let limits = limits();
        limits.check_batch(keys.len())?;
        for key in &keys {
            limits.check_key(key)?;
        }
        kv::get_many(&keys).map_err(capability)
    }

    fn set_many(entries: Vec<Entry>) -> Result<(), PatternError> {
        let limits = limits();
        limits.check_batch(entries.len())?;
        // Validate everything first so a bad entry never leaves a half-written batch.
        let mut checked = Vec::with_capacity(entries.len());
        for entry in entries {
            limits.check_key(&entry.key)?;
            limits.check_value(&entry.key, &entry.value)?;
            let ttl_ms = limits.effective_ttl(entry.ttl_ms)?;
            checked.push(Entry { ttl_ms, ..entry });
        }
        kv::set_many(&checked).map_err(capability)
    }

    fn delete_many(keys: Vec<String>) -> Result<u32, PatternError> {
        let limits = limits();
        limits.check_batch(keys.len())?;
        for key in &keys {
            limits.check_key(key)?;
        }
        kv::delete_many(&keys).map_err(capability)
    }
}

/// `user:*` and `user:` mean the same scan; other glob characters are literal.
fn normalise_prefix(prefix: &str) -> &str {
    prefix.strip_suffix('*').unwrap_or(prefix)
}

fn capability(err: CapabilityError) -> PatternError {
    match err {
        CapabilityError::Unavailable(m) => PatternError::Unavailable(m),
        CapabilityError::ResourceExhausted(m) => PatternError::ResourceExhausted(m),
        CapabilityError::InvalidArgument(m) => PatternError::InvalidArgument(m),
        CapabilityError::Internal(m) => PatternError::Internal(m),
    }
}

/// Keys can be long; error messages quote at most the first 64 characters.
pub(crate) fn shorten(key: &str) -> String {
    match key.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &key[..cut]),
        None => key.to_string(),
    }
}

export!(KeyValuePattern);

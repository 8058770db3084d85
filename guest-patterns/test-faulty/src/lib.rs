//! A deliberately faulty KeyValue pattern for the sandbox tests: certain keys
//! make it spin forever, allocate without bound or panic; every other key is
//! served straight through the `kv` capability so recovery can be observed.

wit_bindgen::generate!({
    path: "../../wit",
    world: "keyvalue",
});

use exports::prism::pattern::keyvalue_pattern::{Guest, ScanRequest, ScanResult};
use prism::pattern::kv::{self, Entry};
use prism::pattern::types::{CapabilityError, PatternError};

struct FaultyPattern;

/// Misbehaves as the key asks; returns for any other key.
fn misbehave(key: &str) {
    match key {
        "fault:loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "fault:memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(std::hint::black_box(vec![0xA5u8; 1 << 20]));
            }
        }
        "fault:panic" => panic!("faulty pattern panicked on purpose"),
        _ => {}
    }
}

fn capability(err: CapabilityError) -> PatternError {
    match err {
        CapabilityError::Unavailable(m) => PatternError::Unavailable(m),
        CapabilityError::ResourceExhausted(m) => PatternError::ResourceExhausted(m),
        CapabilityError::InvalidArgument(m) => PatternError::InvalidArgument(m),
        CapabilityError::Internal(m) => PatternError::Internal(m),
    }
}

impl Guest for FaultyPattern {
    fn configure(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn get(key: String) -> Result<Vec<u8>, PatternError> {
        misbehave(&key);
        kv::get(&key)
            .map_err(capability)?
            .ok_or_else(|| PatternError::NotFound(format!("key '{key}' not found")))
    }

    fn set(key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), PatternError> {
        misbehave(&key);
        kv::set(&key, &value, ttl_ms).map_err(capability)
    }

    fn delete(key: String) -> Result<bool, PatternError> {
        misbehave(&key);
        kv::delete(&key).map_err(capability)
    }

    fn exists(key: String) -> Result<bool, PatternError> {
        misbehave(&key);
        kv::exists(&key).map_err(capability)
    }

    fn scan(request: ScanRequest) -> Result<ScanResult, PatternError> {
        let page = kv::scan(
            &request.prefix,
            request.cursor.as_deref(),
            request.limit.max(1),
        )
        .map_err(capability)?;
        Ok(ScanResult {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    fn get_many(keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, PatternError> {
        kv::get_many(&keys).map_err(capability)
    }

    fn set_many(entries: Vec<Entry>) -> Result<(), PatternError> {
        kv::set_many(&entries).map_err(capability)
    }

    fn delete_many(keys: Vec<String>) -> Result<u32, PatternError> {
        kv::delete_many(&keys).map_err(capability)
    }
}

export!(FaultyPattern);

//! The namespace's KeyValue limits, parsed from its settings.

use crate::prism::pattern::types::PatternError;
use crate::shorten;

/// Limits one namespace applies to every request. Defaults suit a general
/// cache; `[namespaces.X.settings]` overrides them.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
    pub max_batch: usize,
    /// Applied when a write carries no TTL.
    pub default_ttl_ms: Option<u64>,
    /// The longest TTL a write may ask for.
    pub max_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 4 * 1024 * 1024,
            default_page_size: 100,
            max_page_size: 1000,
            max_batch: 1000,
            default_ttl_ms: None,
            max_ttl_ms: 10 * 365 * 24 * 3600 * 1000,
        }
    }
}

impl Limits {
    pub fn from_settings(settings: &[(String, String)]) -> Result<Self, String> {
        let mut limits = Limits::default();
        for (name, value) in settings {
            match name.as_str() {
                "max_key_bytes" => limits.max_key_bytes = positive(name, value)?,
                "max_value_bytes" => limits.max_value_bytes = positive(name, value)?,
                "default_page_size" => limits.default_page_size = positive(name, value)?,
                "max_page_size" => limits.max_page_size = positive(name, value)?,
                "max_batch" => limits.max_batch = positive(name, value)?,
                "default_ttl_ms" => limits.default_ttl_ms = Some(positive(name, value)?),
                "max_ttl_ms" => limits.max_ttl_ms = positive(name, value)?,
                other => {
                    return Err(format!(
                        "unknown setting '{other}' (known: max_key_bytes, max_value_bytes, \
                         default_page_size, max_page_size, max_batch, default_ttl_ms, max_ttl_ms)"
                    ));
                }
            }
        }
        if limits.default_page_size > limits.max_page_size {
            return Err(format!(
                "default_page_size ({}) is larger than max_page_size ({})",
                limits.default_page_size, limits.max_page_size
            ));
        }
        if let Some(ttl) = limits.default_ttl_ms
            && ttl > limits.max_ttl_ms
        {
            return Err(format!(
                "default_ttl_ms ({ttl}) is larger than max_ttl_ms ({})",
                limits.max_ttl_ms
            ));
        }
        Ok(limits)
    }

    pub fn check_key(&self, key: &str) -> Result<(), PatternError> {
        if key.is_empty() {
            return Err(PatternError::InvalidArgument(
                "key must not be empty".into(),
            ));
        }
        if key.len() > self.max_key_bytes {
            return Err(PatternError::InvalidArgument(format!(
                "key '{}' is {} bytes; the limit is {} bytes",
                shorten(key),
                key.len(),
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    pub fn check_value(&self, key: &str, value: &[u8]) -> Result<(), PatternError> {
        if value.len() > self.max_value_bytes {
            return Err(PatternError::InvalidArgument(format!(
                "value for key '{}' is {} bytes; the limit is {} bytes",
                shorten(key),
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    pub fn check_batch(&self, len: usize) -> Result<(), PatternError> {
        if len > self.max_batch {
            return Err(PatternError::InvalidArgument(format!(
                "batch has {len} items; the limit is {}",
                self.max_batch
            )));
        }
        Ok(())
    }

    /// The TTL to store: the caller's, else the namespace default.
    pub fn effective_ttl(&self, ttl_ms: Option<u64>) -> Result<Option<u64>, PatternError> {
        match ttl_ms {
            Some(0) => Err(PatternError::InvalidArgument(
                "ttl must be positive; leave it unset to keep the key until deleted".into(),
            )),
            Some(ttl) if ttl > self.max_ttl_ms => Err(PatternError::InvalidArgument(format!(
                "ttl of {ttl} ms is longer than this namespace's limit of {} ms",
                self.max_ttl_ms
            ))),
            Some(ttl) => Ok(Some(ttl)),
            None => Ok(self.default_ttl_ms),
        }
    }

    pub fn page_size(&self, requested: u32) -> u32 {
        match requested {
            0 => self.default_page_size,
            n => n.min(self.max_page_size),
        }
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    value: &str,
) -> Result<T, String> {
    match value.trim().parse::<T>() {
        Ok(v) if v > T::default() => Ok(v),
        _ => Err(format!(
            "setting '{name}' must be a positive integer, got '{value}'"
        )),
    }
}

//! The namespace's PubSub limits and naming rules, parsed from its settings.

use crate::exports::prism::pattern::pubsub_pattern::SlowConsumer;
use crate::prism::pattern::pubsub::Outgoing;
use crate::prism::pattern::types::PatternError;
use crate::shorten;

/// Limits one namespace applies to every publish and subscription.
/// `[namespaces.X.settings]` overrides the defaults.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_topic_bytes: usize,
    pub max_payload_bytes: usize,
    pub max_metadata_entries: usize,
    /// Keys plus values of one message's metadata.
    pub max_metadata_bytes: usize,
    pub max_batch: usize,
    /// Prepended to every topic before it reaches the broker (topic mapping).
    pub topic_prefix: String,
    pub default_buffer: u32,
    pub max_buffer: u32,
    pub slow_consumer: SlowConsumer,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_topic_bytes: 256,
            max_payload_bytes: 1024 * 1024,
            max_metadata_entries: 32,
            max_metadata_bytes: 8 * 1024,
            max_batch: 1000,
            topic_prefix: String::new(),
            default_buffer: 1024,
            max_buffer: 65_536,
            slow_consumer: SlowConsumer::DropOldest,
        }
    }
}

const KNOWN: &str = "max_topic_bytes, max_payload_bytes, max_metadata_entries, \
    max_metadata_bytes, max_batch, topic_prefix, subscriber_buffer, max_subscriber_buffer, slow_consumer";

impl Limits {
    pub fn from_settings(settings: &[(String, String)]) -> Result<Self, String> {
        let mut limits = Limits::default();
        for (name, value) in settings {
            match name.as_str() {
                "max_topic_bytes" => limits.max_topic_bytes = positive(name, value)?,
                "max_payload_bytes" => limits.max_payload_bytes = positive(name, value)?,
                "max_metadata_entries" => limits.max_metadata_entries = positive(name, value)?,
                "max_metadata_bytes" => limits.max_metadata_bytes = positive(name, value)?,
                "max_batch" => limits.max_batch = positive(name, value)?,
                "subscriber_buffer" => limits.default_buffer = positive(name, value)?,
                "max_subscriber_buffer" => limits.max_buffer = positive(name, value)?,
                "topic_prefix" => {
                    if !value.is_empty() {
                        check_topic_text(value, usize::MAX)
                            .map_err(|e| format!("setting topic_prefix: {e}"))?;
                    }
                    limits.topic_prefix = value.clone();
                }
                "slow_consumer" => {
                    limits.slow_consumer = SlowConsumer::parse(value).ok_or_else(|| {
                        format!(
                            "setting slow_consumer must be \"drop_oldest\" or \"disconnect\", not \"{value}\""
                        )
                    })?;
                }
                other => return Err(format!("unknown setting '{other}' (known: {KNOWN})")),
            }
        }
        if limits.default_buffer > limits.max_buffer {
            return Err(format!(
                "subscriber_buffer ({}) is larger than max_subscriber_buffer ({})",
                limits.default_buffer, limits.max_buffer
            ));
        }
        Ok(limits)
    }

    pub fn check_topic(&self, topic: &str) -> Result<(), PatternError> {
        check_topic_text(topic, self.max_topic_bytes).map_err(PatternError::InvalidArgument)
    }

    pub fn map_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    pub fn check_group(&self, group: &str) -> Result<(), PatternError> {
        let ok = !group.is_empty()
            && group.len() <= 64
            && group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(())
        } else {
            Err(PatternError::InvalidArgument(format!(
                "consumer group '{}' must be 1-64 ASCII letters, digits, '-' or '_'",
                shorten(group)
            )))
        }
    }

    pub fn check_filter(&self, filter: &[(String, String)]) -> Result<(), PatternError> {
        if filter.len() > self.max_metadata_entries {
            return Err(PatternError::InvalidArgument(format!(
                "filter has {} entries; the limit is {} (setting max_metadata_entries)",
                filter.len(),
                self.max_metadata_entries
            )));
        }
        check_metadata(filter, self.max_metadata_bytes, "filter")
    }

    pub fn check_message(&self, message: &Outgoing) -> Result<(), PatternError> {
        if message.payload.len() > self.max_payload_bytes {
            return Err(PatternError::InvalidArgument(format!(
                "payload is {} bytes; the limit is {} bytes (setting max_payload_bytes)",
                message.payload.len(),
                self.max_payload_bytes
            )));
        }
        if message.metadata.len() > self.max_metadata_entries {
            return Err(PatternError::InvalidArgument(format!(
                "metadata has {} entries; the limit is {} (setting max_metadata_entries)",
                message.metadata.len(),
                self.max_metadata_entries
            )));
        }
        check_metadata(&message.metadata, self.max_metadata_bytes, "metadata")
    }

    /// The subscriber's buffer: its request, or the namespace default, capped.
    pub fn buffer(&self, requested: u32) -> Result<u32, PatternError> {
        match requested {
            0 => Ok(self.default_buffer),
            n if n <= self.max_buffer => Ok(n),
            n => Err(PatternError::InvalidArgument(format!(
                "buffer of {n} messages is over the limit of {} (setting max_subscriber_buffer)",
                self.max_buffer
            ))),
        }
    }
}

/// Topics are dot-separated segments of letters, digits and `-_:/`, so they
/// map onto NATS subjects, Redis channels and broker keys alike. Wildcards
/// are refused: a subscription names exactly one topic.
fn check_topic_text(topic: &str, max: usize) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic must not be empty".into());
    }
    if topic.len() > max {
        return Err(format!(
            "topic '{}' is {} bytes; the limit is {max} bytes (setting max_topic_bytes)",
            shorten(topic),
            topic.len()
        ));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '/' | '.')))
    {
        let what = match bad {
            '*' | '>' => "wildcards are not supported".to_string(),
            c if c.is_whitespace() || c.is_control() => format!("{:?} is not allowed", c),
            c => format!("'{c}' is not allowed"),
        };
        return Err(format!(
            "topic '{}' is invalid: {what}; use letters, digits and - _ : / separated by '.'",
            shorten(topic)
        ));
    }
    if topic.split('.').any(str::is_empty) {
        return Err(format!(
            "topic '{}' is invalid: it has an empty '.'-separated segment",
            shorten(topic)
        ));
    }
    Ok(())
}

fn check_metadata(
    entries: &[(String, String)],
    max_bytes: usize,
    what: &str,
) -> Result<(), PatternError> {
    let mut total = 0;
    for (key, value) in entries {
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !key_ok {
            return Err(PatternError::InvalidArgument(format!(
                "{what} key '{}' must be non-empty ASCII letters, digits, '-', '_' or '.'",
                shorten(key)
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(PatternError::InvalidArgument(format!(
                "{what} value of '{key}' contains control characters"
            )));
        }
        total += key.len() + value.len();
    }
    if total > max_bytes {
        return Err(PatternError::InvalidArgument(format!(
            "{what} is {total} bytes; the limit is {max_bytes} bytes (setting max_metadata_bytes)"
        )));
    }
    Ok(())
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    value: &str,
) -> Result<T, String> {
    match value.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!(
            "setting {name} must be a positive integer, not \"{value}\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(check_topic_text("orders.created", 256).is_ok());
        assert!(check_topic_text("chat:room/1", 256).is_ok());
        for bad in ["", "a b", "a.*", "a.>", ".a", "a..b", "a.", "é"] {
            assert!(check_topic_text(bad, 256).is_err(), "{bad:?}");
        }
        assert!(check_topic_text("abcd", 3).is_err());
    }
}

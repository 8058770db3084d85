//! How Prism messages look on NATS, so NATS applications and Prism read each
//! other's messages: the payload is the NATS payload, byte for byte; the id
//! travels as `Nats-Msg-Id` (JetStream de-duplicates on it), the timestamp
//! as `Prism-Timestamp` (milliseconds), and every metadata entry as a header
//! of its own (`traceparent` included). A native publish's headers arrive
//! as metadata. Metadata a NATS header cannot carry (a key that is not
//! printable ASCII or holds ':', a value with CR/LF or with whitespace at
//! either end, which readers trim, a key NATS reserves)
//! makes that one message travel in Prism's byte envelope instead, so
//! nothing is lost; messages in that envelope — all of them, before this
//! format — are still read.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::backend::envelope;
use crate::backend::pubsub::BrokerMessage;

/// The id of a native message published without `Nats-Msg-Id`.
pub fn native_id() -> String {
    format!("nats-{}", crate::clock::next_id(crate::clock::now_ms()))
}

pub const ID: &str = "Nats-Msg-Id";
pub const TIMESTAMP: &str = "Prism-Timestamp";

/// Headers NATS and JetStream set themselves (`Nats-Msg-Id`,
/// `Nats-Expected-Stream`, ...); never metadata either way.
fn reserved(name: &str) -> bool {
    name.get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"))
        || name.eq_ignore_ascii_case(TIMESTAMP)
}

/// What goes on the wire for one message.
pub enum Wire {
    Native {
        headers: HeaderMap,
        payload: Bytes,
    },
    /// Metadata headers cannot carry: the envelope, no headers but the id.
    Enveloped {
        headers: HeaderMap,
        payload: Bytes,
    },
}

impl Wire {
    pub fn into_parts(self) -> (HeaderMap, Bytes) {
        match self {
            Wire::Native { headers, payload } | Wire::Enveloped { headers, payload } => {
                (headers, payload)
            }
        }
    }
}

pub fn encode(message: &BrokerMessage) -> Wire {
    match native_headers(message) {
        Some(headers) => Wire::Native {
            headers,
            payload: message.payload.clone(),
        },
        None => {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&message.id) {
                headers.insert(HeaderName::from_static(ID), value);
            }
            Wire::Enveloped {
                headers,
                payload: envelope::encode(message),
            }
        }
    }
}

fn native_headers(message: &BrokerMessage) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    // Constant names are not parsed per message.
    headers.insert(
        HeaderName::from_static(ID),
        HeaderValue::from_str(&message.id).ok()?,
    );
    headers.insert(
        HeaderName::from_static(TIMESTAMP),
        HeaderValue::from(message.timestamp_ms.to_string()),
    );
    for (key, value) in &message.metadata {
        // async-nats trims header values when it reads them: a value with
        // leading or trailing whitespace would come back changed.
        if key.is_empty() || reserved(key) || value.trim() != value {
            return None;
        }
        headers.insert(
            HeaderName::from_str(key).ok()?,
            HeaderValue::from_str(value).ok()?,
        );
    }
    Some(headers)
}

/// Reads a message off NATS. `fallback_id` and `fallback_ms` name and date a
/// native message that carries no `Nats-Msg-Id` / `Prism-Timestamp`.
pub fn decode(
    topic: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    fallback_id: impl FnOnce() -> String,
    fallback_ms: impl FnOnce() -> u64,
) -> BrokerMessage {
    // Looked up by prebuilt names: a `&str` name is parsed (and, for a
    // custom header, allocated) on every lookup.
    let header = |name: &'static str| headers.and_then(|h| h.get(HeaderName::from_static(name)));
    let timestamp = header(TIMESTAMP).and_then(|t| t.as_str().parse::<u64>().ok());
    // The envelope (no Prism-Timestamp header): read it as it always was.
    if timestamp.is_none() && envelope::is_enveloped(&payload) {
        return envelope::decode(topic, payload, fallback_id);
    }
    let mut metadata: Vec<(String, String)> = headers
        .map(|h| {
            h.iter()
                .filter(|(name, _)| !reserved(name.as_ref()))
                .filter_map(|(name, values)| {
                    // One entry per key: the last value a native publisher set.
                    values
                        .last()
                        .map(|v| (AsRef::<str>::as_ref(name).to_owned(), v.as_str().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    metadata.sort();
    BrokerMessage {
        id: header(ID)
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(fallback_id),
        topic: topic.to_string(),
        payload,
        metadata,
        timestamp_ms: timestamp.unwrap_or_else(fallback_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(metadata: &[(&str, &str)]) -> BrokerMessage {
        BrokerMessage {
            id: "m-1".into(),
            topic: "orders.created".into(),
            payload: Bytes::from_static(b"{\"id\": 1}"),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timestamp_ms: 1_700_000_000_123,
        }
    }

    fn round_trip(m: &BrokerMessage) -> (bool, BrokerMessage) {
        let wire = encode(m);
        let native = matches!(wire, Wire::Native { .. });
        let (headers, payload) = wire.into_parts();
        let back = decode(
            &m.topic,
            Some(&headers),
            payload,
            || "fallback".into(),
            || 0,
        );
        (native, back)
    }

    #[test]
    fn payload_travels_untouched_and_metadata_as_headers() {
        let m = message(&[("k", "v"), ("traceparent", "00-abc-def-01")]);
        let wire = encode(&m);
        assert!(
            matches!(wire, Wire::Native { .. }),
            "expected the native form"
        );
        let (headers, payload) = wire.into_parts();
        assert_eq!(payload.as_ref(), b"{\"id\": 1}");
        assert_eq!(headers.get(ID).map(|v| v.as_str()), Some("m-1"));
        assert_eq!(headers.get("k").map(|v| v.as_str()), Some("v"));
        let (native, back) = round_trip(&m);
        assert!(native);
        assert_eq!(back.id, m.id);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.timestamp_ms, m.timestamp_ms);
        assert_eq!(back.metadata, m.metadata);
    }

    #[test]
    fn metadata_headers_cannot_carry_travels_enveloped_and_intact() {
        for odd in [
            ("key with space", "v"),
            ("k", "line\nbreak"),
            ("Nats-Expected-Stream", "x"),
            ("ключ", "v"),
        ] {
            let m = message(&[odd]);
            let (native, back) = round_trip(&m);
            assert!(!native, "{odd:?}");
            assert_eq!(back.id, m.id);
            assert_eq!(back.payload, m.payload);
            assert_eq!(back.metadata, m.metadata, "{odd:?}");
        }
    }

    #[test]
    fn a_native_publish_reads_as_metadata_with_fallbacks() {
        let mut headers = HeaderMap::new();
        headers.insert("k2", "v2");
        headers.insert("Nats-Expected-Stream", "EVENTS");
        let m = decode(
            "t",
            Some(&headers),
            Bytes::from_static(b"raw"),
            || "native-1".into(),
            || 42,
        );
        assert_eq!(m.payload.as_ref(), b"raw");
        assert_eq!(m.metadata, vec![("k2".to_string(), "v2".to_string())]);
        assert_eq!((m.id.as_str(), m.timestamp_ms), ("native-1", 42));
        let bare = decode("t", None, Bytes::from_static(b"raw"), || "n".into(), || 7);
        assert!(bare.metadata.is_empty());
    }

    #[test]
    fn messages_in_the_old_envelope_are_still_read() {
        let m = message(&[("k", "v")]);
        let old = envelope::encode(&m);
        let back = decode("orders.created", None, old, || "x".into(), || 0);
        assert_eq!(
            (back.id, back.payload, back.metadata),
            (m.id, m.payload, m.metadata)
        );
    }
}

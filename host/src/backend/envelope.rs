//! How Prism messages travel over brokers that carry only bytes (NATS,
//! Redis): a magic prefix and the protobuf encoding of `prism.v1.Message`
//! (`proto/prism/v1/pubsub.proto`), so id, timestamp and metadata survive
//! the trip. Bytes without the prefix (a publisher outside Prism) arrive as
//! a bare payload. The wire struct is declared here, field for field, so
//! the backend floor does not depend on the gRPC layer's generated code.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;

use super::pubsub::BrokerMessage;

const MAGIC: &[u8] = b"PRSM\x01";

/// `prism.v1.Message` as the envelope writes it (same field numbers and
/// types, so envelopes written by earlier Prism versions still decode).
#[derive(Clone, PartialEq, prost::Message)]
struct Wire {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    topic: String,
    #[prost(bytes = "bytes", tag = "3")]
    payload: Bytes,
    #[prost(map = "string, string", tag = "4")]
    metadata: HashMap<String, String>,
    #[prost(uint64, tag = "5")]
    timestamp_ms: u64,
    #[prost(uint32, tag = "6")]
    delivery_attempt: u32,
}

pub fn encode(message: &BrokerMessage) -> Bytes {
    let wire = Wire {
        id: message.id.clone(),
        topic: String::new(),
        payload: message.payload.clone(),
        metadata: message.metadata.iter().cloned().collect(),
        timestamp_ms: message.timestamp_ms,
        delivery_attempt: 0,
    };
    let mut out = BytesMut::with_capacity(MAGIC.len() + wire.encoded_len());
    out.put_slice(MAGIC);
    // Encoding into a BytesMut only fails for lack of capacity, which it has.
    let _ = wire.encode(&mut out);
    out.freeze()
}

/// Whether `bytes` are a message in this envelope.
pub fn is_enveloped(bytes: &[u8]) -> bool {
    bytes
        .strip_prefix(MAGIC)
        .is_some_and(|body| Wire::decode(body).is_ok())
}

/// `fallback_id` names a foreign message (no envelope).
pub fn decode(topic: &str, bytes: Bytes, fallback_id: impl FnOnce() -> String) -> BrokerMessage {
    // Decoded from a slice of `bytes`, the payload shares its buffer.
    if bytes.starts_with(MAGIC)
        && let Ok(wire) = Wire::decode(bytes.slice(MAGIC.len()..))
    {
        let mut metadata: Vec<(String, String)> = wire.metadata.into_iter().collect();
        metadata.sort();
        return BrokerMessage {
            id: wire.id,
            topic: topic.to_string(),
            payload: wire.payload,
            metadata,
            timestamp_ms: wire.timestamp_ms,
        };
    }
    BrokerMessage {
        id: fallback_id(),
        topic: topic.to_string(),
        payload: bytes,
        metadata: Vec::new(),
        timestamp_ms: crate::clock::now_ms(),
    }
}

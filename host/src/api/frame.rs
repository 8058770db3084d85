//! The frames of a delivery stream (`Subscribe`, `Listen`), encoded straight
//! from the broker's shared messages. On the wire a frame is exactly a
//! `SubscribeResponse` or a `ListenResponse` (both are `oneof event {
//! opened = 1; MessageBatch messages = 2; }`, the opening message being two
//! strings), byte for byte what prost writes for the same response, so
//! clients decode it with their generated types; the server
//! never builds a `pb::Message` per message and subscriber (an id and a
//! topic `String`, a metadata `HashMap`), only to encode and drop it.
//!
//! The frame itself is the delivery engine's ([`DeliveryFrame`]); this file
//! is its encoding. The server's generated stream types name that type instead of the
//! response messages (`build.rs`: the servers are generated with those two
//! messages mapped here); `pb` keeps the decodable types for clients and
//! tests.

use bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint};

use crate::backend::pubsub::BrokerMessage;
use crate::delivery::{DeliveryFrame, Outgoing};

// Field numbers, from `proto/prism/v1/pubsub.proto` and `registry.proto`.
const EVENT_OPENED: u32 = 1;
const EVENT_MESSAGES: u32 = 2;
const OPENED_ID: u32 = 1;
const OPENED_NAME: u32 = 2;
const BATCH_MESSAGES: u32 = 1;
const BATCH_DROPPED: u32 = 2;
const MESSAGE_ID: u32 = 1;
const MESSAGE_TOPIC: u32 = 2;
const MESSAGE_PAYLOAD: u32 = 3;
const MESSAGE_METADATA: u32 = 4;
const MESSAGE_TIMESTAMP: u32 = 5;
const MESSAGE_ATTEMPT: u32 = 6;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;

impl prost::Message for DeliveryFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            DeliveryFrame::Empty => {}
            DeliveryFrame::Opened { id, name } => {
                put_len(EVENT_OPENED, opened_len(id, name), buf);
                put_str(OPENED_ID, id, buf);
                put_str(OPENED_NAME, name, buf);
            }
            DeliveryFrame::Messages {
                topic,
                messages,
                dropped,
            } => {
                put_len(EVENT_MESSAGES, batch_len(topic, messages, *dropped), buf);
                for out in messages {
                    put_message(topic, &out.message, out.attempt, buf);
                }
                put_uint(BATCH_DROPPED, *dropped, buf);
            }
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            DeliveryFrame::Empty => 0,
            DeliveryFrame::Opened { id, name } => delimited_len(EVENT_OPENED, opened_len(id, name)),
            DeliveryFrame::Messages {
                topic,
                messages,
                dropped,
            } => delimited_len(EVENT_MESSAGES, batch_len(topic, messages, *dropped)),
        }
    }

    /// Frames only travel from the server; one read back is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn clear(&mut self) {
        *self = DeliveryFrame::Empty;
    }
}

fn opened_len(id: &str, name: &str) -> usize {
    str_len(OPENED_ID, id) + str_len(OPENED_NAME, name)
}

fn batch_len(topic: &str, messages: &[Outgoing], dropped: u64) -> usize {
    messages
        .iter()
        .map(|out| {
            delimited_len(
                BATCH_MESSAGES,
                message_len(topic, &out.message, out.attempt),
            )
        })
        .sum::<usize>()
        + uint_len(BATCH_DROPPED, dropped)
}

/// A `prism.v1.Message` (the fields proto3 writes: none at its default).
fn message_len(topic: &str, message: &BrokerMessage, attempt: u32) -> usize {
    str_len(MESSAGE_ID, &message.id)
        + str_len(MESSAGE_TOPIC, topic)
        + bytes_len(MESSAGE_PAYLOAD, &message.payload)
        + message
            .metadata
            .iter()
            .map(|(k, v)| delimited_len(MESSAGE_METADATA, entry_len(k, v)))
            .sum::<usize>()
        + uint_len(MESSAGE_TIMESTAMP, message.timestamp_ms)
        + uint_len(MESSAGE_ATTEMPT, u64::from(attempt))
}

fn put_message(topic: &str, message: &BrokerMessage, attempt: u32, buf: &mut impl BufMut) {
    put_len(BATCH_MESSAGES, message_len(topic, message, attempt), buf);
    put_str(MESSAGE_ID, &message.id, buf);
    put_str(MESSAGE_TOPIC, topic, buf);
    put_bytes(MESSAGE_PAYLOAD, &message.payload, buf);
    for (key, value) in &message.metadata {
        // A map entry is a message of its own, its empty key or value left
        // out as prost leaves them.
        put_len(MESSAGE_METADATA, entry_len(key, value), buf);
        put_str(ENTRY_KEY, key, buf);
        put_str(ENTRY_VALUE, value, buf);
    }
    put_uint(MESSAGE_TIMESTAMP, message.timestamp_ms, buf);
    put_uint(MESSAGE_ATTEMPT, u64::from(attempt), buf);
}

fn entry_len(key: &str, value: &str) -> usize {
    str_len(ENTRY_KEY, key) + str_len(ENTRY_VALUE, value)
}

/// A length-delimited field's key and length prefix; its body follows.
fn put_len(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn delimited_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A string field, left out when empty (proto3).
fn put_str(tag: u32, value: &str, buf: &mut impl BufMut) {
    put_bytes(tag, value.as_bytes(), buf);
}

fn str_len(tag: u32, value: &str) -> usize {
    bytes_len(tag, value.as_bytes())
}

/// A bytes field, left out when empty (proto3).
fn put_bytes(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_len(tag, value.len(), buf);
        buf.put_slice(value);
    }
}

fn bytes_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(tag, value.len())
    }
}

/// A varint field, left out when zero (proto3).
fn put_uint(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        prost::encoding::uint64::encode(tag, &value, buf);
    }
}

fn uint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        prost::encoding::uint64::encoded_len(tag, &value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use prost::Message as _;

    use super::*;
    use crate::pb;

    fn outgoing(
        id: &str,
        payload: &'static [u8],
        metadata: &[(&str, &str)],
        attempt: u32,
    ) -> Outgoing {
        Outgoing {
            message: Arc::new(BrokerMessage {
                id: id.into(),
                // The pattern-mapped topic: the client's name is what travels.
                topic: "mapped.orders".into(),
                payload: Bytes::from_static(payload),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                timestamp_ms: 1_700_000_000_123,
            }),
            attempt,
        }
    }

    /// What the server sent before frames: a `pb::Message` per message.
    fn expected(topic: &str, out: &Outgoing) -> pb::Message {
        pb::Message {
            id: out.message.id.clone(),
            topic: topic.to_string(),
            payload: out.message.payload.clone(),
            metadata: out.message.metadata.iter().cloned().collect(),
            timestamp_ms: out.message.timestamp_ms,
            delivery_attempt: out.attempt,
        }
    }

    fn encoded(frame: &DeliveryFrame) -> Vec<u8> {
        let bytes = frame.encode_to_vec();
        assert_eq!(bytes.len(), frame.encoded_len(), "encoded_len is exact");
        bytes
    }

    /// The frame as a client's generated `SubscribeResponse` reads it.
    fn as_subscribe(bytes: &[u8]) -> Option<pb::subscribe_response::Event> {
        pb::SubscribeResponse::decode(bytes)
            .ok()
            .and_then(|r| r.event)
    }

    /// The frame as a client's generated `ListenResponse` reads it.
    fn as_listen(bytes: &[u8]) -> Option<pb::listen_response::Event> {
        pb::ListenResponse::decode(bytes).ok().and_then(|r| r.event)
    }

    #[test]
    fn a_batch_decodes_as_the_generated_responses() {
        let messages = vec![
            outgoing(
                "m-1",
                b"{\"n\": 1}",
                &[("k", "v"), ("traceparent", "00-ab-cd-01")],
                1,
            ),
            // Empty payload, empty id and empty metadata values still round-trip.
            outgoing("", b"", &[("", ""), ("empty", "")], 3),
            outgoing("m-3", &[0u8, 255, 10, 13], &[], 0),
        ];
        let want: Vec<pb::Message> = messages.iter().map(|m| expected("orders", m)).collect();
        let frame = DeliveryFrame::Messages {
            topic: "orders".into(),
            messages,
            dropped: 7,
        };
        let bytes = encoded(&frame);
        let batch = pb::MessageBatch {
            messages: want,
            dropped: 7,
        };
        assert_eq!(
            as_subscribe(&bytes),
            Some(pb::subscribe_response::Event::Messages(batch.clone()))
        );
        assert_eq!(
            as_listen(&bytes),
            Some(pb::listen_response::Event::Messages(batch))
        );
    }

    #[test]
    fn bytes_are_the_ones_prost_writes() {
        // At most one metadata entry per message: prost's map order is then fixed.
        let messages = vec![
            outgoing("m-1", b"payload", &[("k", "v")], 1),
            outgoing("", b"", &[("", "")], 0),
            outgoing("m-3", b"x", &[("empty", "")], 2),
        ];
        let want = pb::SubscribeResponse {
            event: Some(pb::subscribe_response::Event::Messages(pb::MessageBatch {
                messages: messages.iter().map(|m| expected("orders", m)).collect(),
                dropped: 0,
            })),
        };
        let frame = DeliveryFrame::Messages {
            topic: "orders".into(),
            messages,
            dropped: 0,
        };
        assert_eq!(encoded(&frame), want.encode_to_vec());
        let opened = DeliveryFrame::Opened {
            id: "sub-1".into(),
            name: String::new(),
        };
        let want = pb::SubscribeResponse {
            event: Some(pb::subscribe_response::Event::Subscribed(pb::Subscribed {
                subscription_id: "sub-1".into(),
                topic: String::new(),
            })),
        };
        assert_eq!(encoded(&opened), want.encode_to_vec());
    }

    #[test]
    fn an_empty_batch_with_drops_and_the_opening_frame_decode_too() {
        let drops = DeliveryFrame::Messages {
            topic: "t".into(),
            messages: Vec::new(),
            dropped: 3,
        };
        assert_eq!(
            as_subscribe(&encoded(&drops)),
            Some(pb::subscribe_response::Event::Messages(pb::MessageBatch {
                messages: Vec::new(),
                dropped: 3,
            }))
        );
        let opened = DeliveryFrame::Opened {
            id: "sub-1".into(),
            name: "orders".into(),
        };
        let bytes = encoded(&opened);
        assert_eq!(
            as_subscribe(&bytes),
            Some(pb::subscribe_response::Event::Subscribed(pb::Subscribed {
                subscription_id: "sub-1".into(),
                topic: "orders".into(),
            }))
        );
        assert_eq!(
            as_listen(&bytes),
            Some(pb::listen_response::Event::Listening(pb::Listening {
                subscription_id: "sub-1".into(),
                identity: "orders".into(),
            }))
        );
    }

    #[test]
    fn large_fields_get_multi_byte_lengths() {
        let big: &'static [u8] = Box::leak(vec![7u8; 300_000].into_boxed_slice());
        let long = "x".repeat(200);
        let mut out = outgoing(&long, big, &[], 1);
        if let Some(message) = Arc::get_mut(&mut out.message) {
            message.metadata = vec![(long.clone(), long.clone())];
        }
        let want = expected(&long, &out);
        let frame = DeliveryFrame::Messages {
            topic: long.as_str().into(),
            messages: vec![out],
            dropped: u64::MAX,
        };
        assert_eq!(want.metadata, HashMap::from([(long.clone(), long)]));
        assert_eq!(
            as_subscribe(&encoded(&frame)),
            Some(pb::subscribe_response::Event::Messages(pb::MessageBatch {
                messages: vec![want],
                dropped: u64::MAX,
            }))
        );
    }

    #[test]
    fn a_frame_read_back_is_skipped_not_an_error() {
        let frame = DeliveryFrame::Opened {
            id: "sub-1".into(),
            name: "t".into(),
        };
        let back = DeliveryFrame::decode(frame.encode_to_vec().as_slice());
        assert!(matches!(back, Ok(DeliveryFrame::Empty)));
    }
}

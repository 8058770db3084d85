//! What publishing sends and gets back: [`OutgoingMessage`], [`Published`],
//! and the wire form of a batch. Below both [`PubSub`](crate::PubSub) and
//! [`Publisher`](crate::Publisher), which share it.

use std::collections::HashMap;

use bytes::Bytes;

use crate::pb;

/// What the broker said about one published message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Unique per message; delivered with it.
    pub id: String,
    /// When the broker accepted it, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl From<pb::PublishResponse> for Published {
    fn from(r: pb::PublishResponse) -> Published {
        Published {
            id: r.id,
            timestamp_ms: r.timestamp_ms,
        }
    }
}

/// One message of a [`PubSub::publish_many`](crate::PubSub::publish_many) batch: a payload, and
/// metadata (string pairs) that travel with it.
///
/// ```
/// use prism_client::OutgoingMessage;
///
/// let plain: OutgoingMessage = "hello".into();
/// let tagged = OutgoingMessage::new("hello").with_metadata("kind", "greeting");
/// assert_eq!(tagged.metadata.get("kind").map(String::as_str), Some("greeting"));
/// # let _ = plain;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub payload: Bytes,
    pub metadata: HashMap<String, String>,
}

impl OutgoingMessage {
    pub fn new(payload: impl Into<Bytes>) -> OutgoingMessage {
        OutgoingMessage {
            payload: payload.into(),
            metadata: HashMap::new(),
        }
    }

    /// Adds one metadata pair.
    pub fn with_metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> OutgoingMessage {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Messages as the wire carries them in a batch.
pub(crate) fn batch_messages<I>(messages: I) -> Vec<pb::BatchMessage>
where
    I: IntoIterator,
    I::Item: Into<OutgoingMessage>,
{
    messages
        .into_iter()
        .map(|m| {
            let m = m.into();
            pb::BatchMessage {
                payload: m.payload,
                metadata: m.metadata,
            }
        })
        .collect()
}

macro_rules! outgoing_from {
    ($($t:ty),*) => {$(
        impl From<$t> for OutgoingMessage {
            fn from(payload: $t) -> OutgoingMessage {
                OutgoingMessage::new(payload)
            }
        }
    )*};
}

outgoing_from!(Bytes, Vec<u8>, String, &'static str, &'static [u8]);

impl<P: Into<Bytes>> From<(P, HashMap<String, String>)> for OutgoingMessage {
    fn from((payload, metadata): (P, HashMap<String, String>)) -> OutgoingMessage {
        OutgoingMessage {
            payload: payload.into(),
            metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_messages_from_payloads_and_pairs() {
        let a: OutgoingMessage = b"raw".as_slice().into();
        assert_eq!(a.payload, Bytes::from_static(b"raw"));
        let b: OutgoingMessage = ("p", HashMap::from([("k".to_string(), "v".to_string())])).into();
        assert_eq!(b.metadata.len(), 1);
    }
}

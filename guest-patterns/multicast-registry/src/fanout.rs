//! Delivering one multicast: a copy of the message to each target's inbox.

use crate::exports::prism::pattern::registry_pattern::{DeliveryFailure, MulticastResult};
use crate::metadata;
use crate::prism::pattern::pubsub::{Addressed, Outgoing, Published};
use crate::prism::pattern::types::{CapabilityError, PatternError};

/// Messages per `publish-each` call at most.
pub const MAX_CHUNK: usize = 1000;
/// Bytes of messages per `publish-each` call at most (at least one message
/// is always sent). `publish-each` needs its own copy of the payload per
/// message, so a large payload times 1000 would not fit the instance's memory.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// One publish-each call's answer: per-message outcomes, or the whole call failed.
pub type PublishEachResult = Result<Vec<Result<Published, CapabilityError>>, CapabilityError>;

/// How many messages go in one `publish-each` call.
pub fn chunk_len(payload: &[u8], metadata: &[(String, String)]) -> usize {
    let metadata_bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    // Topic, the identity pair and the list headers: a generous estimate.
    let per_message = payload.len() + metadata_bytes + 1024;
    (CHUNK_BYTES / per_message).clamp(1, MAX_CHUNK)
}

/// Sends `payload` with `metadata` (plus the identity pair) to the inbox of
/// every target. A message the broker refused is a failure for its identity;
/// a failed `publish-each` call as a whole is the multicast's error. Inbox
/// naming and publishing are closures so this can be tested natively.
pub fn deliver<I, P>(
    targets: Vec<String>,
    payload: &[u8],
    metadata: &[(String, String)],
    mut inbox: I,
    mut publish_each: P,
) -> Result<MulticastResult, PatternError>
where
    I: FnMut(&str) -> String,
    P: FnMut(&[Addressed]) -> PublishEachResult,
{
    let mut result = MulticastResult {
        // The caller refused more than max_fanout (a u32) targets.
        target_count: u32::try_from(targets.len()).unwrap_or(u32::MAX),
        delivered_count: 0,
        failures: Vec::new(),
    };
    for chunk in targets.chunks(chunk_len(payload, metadata)) {
        let messages: Vec<Addressed> = chunk
            .iter()
            .map(|identity| Addressed {
                topic: inbox(identity),
                message: Outgoing {
                    payload: payload.to_vec(),
                    metadata: metadata::for_identity(metadata, identity),
                },
            })
            .collect();
        let outcomes = publish_each(&messages).map_err(crate::capability)?;
        drop(messages);
        let mut outcomes = outcomes.into_iter();
        for identity in chunk {
            match outcomes.next() {
                Some(Ok(_)) => result.delivered_count += 1,
                Some(Err(e)) => result.failures.push(DeliveryFailure {
                    identity: identity.clone(),
                    reason: reason(e),
                }),
                // The host owes one outcome per message; count a missing one
                // as not accepted rather than trust it.
                None => result.failures.push(DeliveryFailure {
                    identity: identity.clone(),
                    reason: "the messaging backend reported no outcome for this message".into(),
                }),
            }
        }
    }
    Ok(result)
}

fn reason(err: CapabilityError) -> String {
    match err {
        CapabilityError::Unavailable(m)
        | CapabilityError::ResourceExhausted(m)
        | CapabilityError::InvalidArgument(m)
        | CapabilityError::Internal(m) => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::IDENTITY_KEY;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i}")).collect()
    }

    fn inbox(identity: &str) -> String {
        format!("_inbox.{identity}")
    }

    fn ok(n: usize) -> Published {
        Published {
            id: format!("m{n}"),
            timestamp_ms: 7,
        }
    }

    #[test]
    fn every_target_gets_its_own_message() {
        let mut sent: Vec<Addressed> = Vec::new();
        let meta = vec![("z".to_string(), "1".to_string()), ("a".into(), "2".into())];
        let r = deliver(ids(3), b"hi", &meta, inbox, |m| {
            sent.extend(m.iter().cloned());
            Ok((0..m.len()).map(|n| Ok(ok(n))).collect())
        })
        .unwrap();
        assert_eq!((r.target_count, r.delivered_count), (3, 3));
        assert!(r.failures.is_empty());
        assert_eq!(sent.len(), 3);
        for (n, message) in sent.iter().enumerate() {
            let id = format!("d{n}");
            assert_eq!(message.topic, format!("_inbox.{id}"));
            assert_eq!(message.message.payload, b"hi");
            let keys: Vec<&str> = message
                .message
                .metadata
                .iter()
                .map(|(k, _)| k.as_str())
                .collect();
            assert_eq!(keys, ["a", IDENTITY_KEY, "z"]);
            assert!(
                message
                    .message
                    .metadata
                    .contains(&(IDENTITY_KEY.to_string(), id))
            );
        }
    }

    #[test]
    fn no_targets_no_publish() {
        let r = deliver(Vec::new(), b"x", &[], inbox, |_| panic!("nothing to send")).unwrap();
        assert_eq!(
            (r.target_count, r.delivered_count, r.failures.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn chunks_of_at_most_1000() {
        let mut sizes = Vec::new();
        let r = deliver(ids(2500), b"", &[], inbox, |m| {
            sizes.push(m.len());
            Ok((0..m.len()).map(|n| Ok(ok(n))).collect())
        })
        .unwrap();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!((r.target_count, r.delivered_count), (2500, 2500));
    }

    #[test]
    fn large_payloads_make_smaller_chunks() {
        assert_eq!(chunk_len(&[], &[]), 1000);
        assert_eq!(chunk_len(&vec![0; 1024 * 1024], &[]), 3);
        assert_eq!(chunk_len(&vec![0; 64 * 1024 * 1024], &[]), 1);
        let mut sizes = Vec::new();
        let payload = vec![1u8; 1024 * 1024];
        let r = deliver(ids(7), &payload, &[], inbox, |m| {
            sizes.push(m.len());
            Ok((0..m.len()).map(|n| Ok(ok(n))).collect())
        })
        .unwrap();
        assert_eq!(sizes, [3, 3, 1]);
        assert_eq!(r.delivered_count, 7);
    }

    #[test]
    fn refused_messages_are_failures_of_their_identity() {
        let r = deliver(ids(4), b"x", &[], inbox, |m| {
            Ok(m.iter()
                .enumerate()
                .map(|(n, _)| match n {
                    1 => Err(CapabilityError::ResourceExhausted("stream full".into())),
                    3 => Err(CapabilityError::Internal("boom".into())),
                    n => Ok(ok(n)),
                })
                .collect())
        })
        .unwrap();
        assert_eq!((r.target_count, r.delivered_count), (4, 2));
        let failed: Vec<(&str, &str)> = r
            .failures
            .iter()
            .map(|f| (f.identity.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(failed, [("d1", "stream full"), ("d3", "boom")]);
    }

    #[test]
    fn missing_outcomes_are_failures() {
        let r = deliver(ids(3), b"x", &[], inbox, |_| Ok(vec![Ok(ok(0))])).unwrap();
        assert_eq!((r.target_count, r.delivered_count), (3, 1));
        assert_eq!(r.failures.len(), 2);
        assert_eq!(r.failures[0].identity, "d1");
    }

    #[test]
    fn a_failed_call_is_the_multicast_error() {
        let r = deliver(ids(3), b"x", &[], inbox, |_| {
            Err(CapabilityError::Unavailable("nats is down".into()))
        });
        assert!(matches!(r, Err(PatternError::Unavailable(m)) if m == "nats is down"));
    }
}

//! One publish request through the namespace's PubSub pattern, shared by
//! the unary `Publish` and the pipelined `PublishStream`.

use tonic::Status;

use crate::capability::bindings::pubsub_world::{Outgoing, Published};
use crate::pb;
use crate::runtime::PubSubRuntime;

/// Metadata in the order patterns see it: gRPC maps carry no order, so
/// sorting by key keeps what a pattern sees stable.
pub(super) fn sorted(map: std::collections::HashMap<String, String>) -> Vec<(String, String)> {
    let mut entries: Vec<_> = map.into_iter().collect();
    entries.sort();
    entries
}

pub(super) fn published(p: Published) -> pb::PublishResponse {
    pb::PublishResponse {
        id: p.id,
        timestamp_ms: p.timestamp_ms,
    }
}

/// Publishes one request's messages to `topic` through the pattern, all
/// or none; one answer per message, in order.
pub(super) async fn publish_all(
    runtime: &PubSubRuntime,
    topic: String,
    messages: Vec<pb::BatchMessage>,
) -> Result<Vec<pb::PublishResponse>, Status> {
    let count = messages.len();
    let messages = messages
        .into_iter()
        .map(|m| Outgoing {
            payload: m.payload,
            metadata: sorted(m.metadata),
        })
        .collect();
    let ids = runtime.publish(topic, messages).await?;
    if ids.len() != count {
        return Err(Status::internal(format!(
            "the pattern reported {} ids for {count} messages",
            ids.len()
        )));
    }
    Ok(ids.into_iter().map(published).collect())
}

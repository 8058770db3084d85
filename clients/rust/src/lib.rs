//! An async Rust client for Prism, the gRPC data access gateway: its
//! KeyValue, PubSub and Multicast Registry APIs over one connection, with
//! typed errors, retries of idempotent calls, and streams for subscriptions
//! and inboxes. Runs on Tokio (tonic underneath).
//!
//! ```no_run
//! use futures::StreamExt;
//! use prism_client::{Client, Error};
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), Error> {
//! let client = Client::connect("http://127.0.0.1:8980").await?;
//!
//! // KeyValue: one handle per namespace.
//! let kv = client.key_value("default");
//! kv.set("user:1", "alice").await?;
//! assert_eq!(kv.get("user:1").await?, "alice");
//! match kv.get("user:2").await {
//!     Err(Error::NotFound { .. }) => {}
//!     other => println!("unexpected: {other:?}"),
//! }
//! let users = kv.scan("user:").await?;
//!
//! // PubSub: a subscription is live once `subscribe` returns.
//! let events = client.pub_sub("events");
//! let mut subscription = events.subscribe("orders").await?;
//! events.publish("orders", "order 17").await?;
//! if let Some(message) = subscription.next().await.transpose()? {
//!     println!("{} {:?}", message.id, message.payload);
//! }
//!
//! // Multicast Registry.
//! let devices = client.registry("devices");
//! devices.register("sensor-1", json!({"type": "sensor", "floor": 1})).await?;
//! let mut inbox = devices.listen("sensor-1").await?;
//! let sent = devices.multicast(json!({"type": "sensor"}), "read").await?;
//! assert_eq!(sent.target_count, 1);
//! let command = inbox.next().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Connecting
//!
//! [`Client::connect`] takes one endpoint; [`Client::builder`] takes
//! several replicas (calls are balanced over them), a bearer token, and
//! connect and request timeouts. A [`Client`] and every handle made from it
//! are cheap to clone and share one HTTP/2 connection per server.
//!
//! # Namespaces and authentication
//!
//! Each handle names its namespace in the `x-prism-namespace` request
//! metadata ([`NAMESPACE_METADATA`]); with [`Builder::token`] every call
//! carries `authorization: Bearer <token>`.
//!
//! # Errors and retries
//!
//! Every call returns [`Error`], one variant per gRPC status Prism answers
//! with ([`Error::NotFound`] for a missing key, [`Error::InvalidArgument`]
//! for bad input, [`Error::Unavailable`] for a backend that is down, ...).
//! Calls that may safely run twice (reads, `set`, `set_many`, `heartbeat`,
//! `unsubscribe`) are made again, after a short backoff, when they fail
//! UNAVAILABLE — up to [`Builder::max_attempts`] in all, within the
//! request timeout. Publish, multicast, register, deletes and acks are
//! never retried: a second attempt could deliver or create twice, or
//! answer differently.

mod admin;
mod call;
mod client;
mod error;
mod keyvalue;
mod message;
mod publisher;
mod pubsub;
mod registry;
mod stream;
mod token;
mod value;

/// The generated wire types and raw tonic stubs (client side only) of
/// `proto/prism/v1`, for what the typed API does not cover.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("prism.v1");
}

pub use bytes::Bytes;

pub use admin::Admin;
pub use call::{AUTHORIZATION_METADATA, NAMESPACE_METADATA};
pub use client::{Builder, Client};
pub use error::{Error, Result};
pub use keyvalue::{KeyValue, ScanPage};
pub use message::{OutgoingMessage, Published};
pub use publisher::{PUBLISH_WINDOW, PublishAck, Publisher};
pub use pubsub::{Acker, PubSub, SlowConsumer, SubscribeOptions, Subscription};
pub use registry::{EnumeratePage, Identity, Inbox, MulticastResult, Registration, Registry};
pub use stream::{Message, MessageBatch};
pub use token::{DEFAULT_REFRESH_MARGIN, TokenProvider};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}

    #[test]
    fn handles_and_streams_can_move_between_tasks() {
        send_sync::<Client>();
        send_sync::<KeyValue>();
        send_sync::<PubSub>();
        send_sync::<Registry>();
        send_sync::<Acker>();
        send_sync::<Error>();
        fn stream_send<T: Send + Unpin + futures::Stream>() {}
        stream_send::<Subscription>();
        stream_send::<Inbox>();
    }

    #[tokio::test]
    async fn call_futures_are_send() {
        let client = Client::builder().endpoint("127.0.0.1:1").connect_lazy();
        let Ok(client) = client else {
            unreachable!("a valid endpoint")
        };
        let kv = client.key_value("default");
        send(&kv.get("k"));
        send(&kv.set("k", "v"));
        send(&kv.set_many([("k", "v")]));
        send(&kv.scan("p"));
        let ps = client.pub_sub("events");
        send(&ps.publish("t", "p"));
        send(&ps.subscribe("t"));
        let reg = client.registry("devices");
        send(&reg.register("i", serde_json::json!({})));
        send(&reg.enumerate(serde_json::json!({})));
        send(&reg.listen("i"));
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_unavailable() {
        let client = Client::builder()
            .endpoint("127.0.0.1:1")
            .max_attempts(2)
            .connect_lazy();
        let Ok(client) = client else {
            unreachable!("a valid endpoint")
        };
        let err = client.key_value("default").get("k").await.err();
        assert!(matches!(err, Some(Error::Unavailable { .. })), "{err:?}");
        let err = Client::connect("127.0.0.1:1").await.err();
        assert!(matches!(err, Some(Error::Transport(_))), "{err:?}");
    }
}

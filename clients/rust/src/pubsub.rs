//! `PubSub`: publish and subscribe on one namespace; `Subscription`: a live
//! subscription, a stream of messages.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tonic::transport::Channel;

use crate::call::Calls;
use crate::error::{Error, Result};
use crate::message::{OutgoingMessage, Published, batch_messages};
use crate::pb;
use crate::pb::pub_sub_client::PubSubClient;
use crate::publisher::Publisher;
use crate::stream::{Message, MessageBatch, MessageStream};

/// Upper bound of the Unsubscribe call [`Subscription::unsubscribe`] makes.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Publish/subscribe on one namespace, from
/// [`Client::pub_sub`](crate::Client::pub_sub). Topics are scoped to the
/// namespace: two namespaces never see each other's messages.
///
/// Cheap to clone (a clone shares the connection). Publishing is never
/// retried by the client (a retry could deliver twice).
#[derive(Clone, Debug)]
pub struct PubSub {
    client: PubSubClient<Channel>,
    calls: Calls,
}

/// What a subscriber's server-side buffer does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Drop the oldest buffered messages; [`Subscription::dropped`] counts them.
    DropOldest,
    /// End the subscription with [`Error::ResourceExhausted`].
    Disconnect,
}

/// How to subscribe; `SubscribeOptions::default()` is a plain subscription
/// with the namespace's defaults.
///
/// ```
/// use prism_client::{SlowConsumer, SubscribeOptions};
///
/// let options = SubscribeOptions::new()
///     .group("billing")
///     .manual_ack(true)
///     .buffer(1024)
///     .slow_consumer(SlowConsumer::Disconnect)
///     .filter("region", "eu");
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    group: Option<String>,
    manual_ack: bool,
    buffer: u32,
    slow_consumer: Option<SlowConsumer>,
    filter: HashMap<String, String>,
}

impl SubscribeOptions {
    pub fn new() -> SubscribeOptions {
        SubscribeOptions::default()
    }

    /// A consumer group: each message goes to one member of the group (on
    /// NATS JetStream the group is also the durable consumer's name).
    pub fn group(mut self, group: impl Into<String>) -> SubscribeOptions {
        self.group = Some(group.into());
        self
    }

    /// Messages must be acknowledged ([`Subscription::ack`]); at-least-once
    /// brokers redeliver those that are not.
    pub fn manual_ack(mut self, manual_ack: bool) -> SubscribeOptions {
        self.manual_ack = manual_ack;
        self
    }

    /// Messages the server buffers for this subscriber (0: the namespace's
    /// default).
    pub fn buffer(mut self, messages: u32) -> SubscribeOptions {
        self.buffer = messages;
        self
    }

    /// What happens when that buffer is full (default: the namespace's
    /// setting, drop-oldest unless configured).
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> SubscribeOptions {
        self.slow_consumer = Some(policy);
        self
    }

    /// Delivers only messages whose metadata has this pair (every pair
    /// added must match).
    pub fn filter(mut self, key: impl Into<String>, value: impl Into<String>) -> SubscribeOptions {
        self.filter.insert(key.into(), value.into());
        self
    }

    fn into_request(self, topic: &str) -> Result<pb::SubscribeRequest> {
        if self.group.as_deref() == Some("") {
            return Err(Error::invalid(
                "a consumer group name must not be empty (leave the group out for none)",
            ));
        }
        let policy = match self.slow_consumer {
            None => pb::SlowConsumerPolicy::Unspecified,
            Some(SlowConsumer::DropOldest) => pb::SlowConsumerPolicy::DropOldest,
            Some(SlowConsumer::Disconnect) => pb::SlowConsumerPolicy::Disconnect,
        };
        Ok(pb::SubscribeRequest {
            topic: topic.to_owned(),
            group: self.group.unwrap_or_default(),
            manual_ack: self.manual_ack,
            buffer: self.buffer,
            slow_consumer: policy.into(),
            filter: self.filter,
        })
    }
}

impl PubSub {
    pub(crate) fn new(channel: Channel, calls: Calls, max_message_bytes: usize) -> PubSub {
        let client = PubSubClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        PubSub { client, calls }
    }

    /// The namespace this handle's calls name.
    pub fn namespace(&self) -> &str {
        self.calls.namespace()
    }

    /// Publishes one message to `topic`; returns once the broker accepted it.
    ///
    /// ```no_run
    /// # async fn example(events: prism_client::PubSub) -> Result<(), prism_client::Error> {
    /// let published = events.publish("orders.created", "order 17").await?;
    /// println!("published {}", published.id);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<Published> {
        self.publish_with_metadata(topic, payload, HashMap::new())
            .await
    }

    /// Publishes one message with metadata (string pairs, delivered with it
    /// and matched by subscription filters).
    ///
    /// ```no_run
    /// # async fn example(events: prism_client::PubSub) -> Result<(), prism_client::Error> {
    /// use std::collections::HashMap;
    ///
    /// let metadata = HashMap::from([("region".to_string(), "eu".to_string())]);
    /// events.publish_with_metadata("orders.created", "order 17", metadata).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_with_metadata(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        metadata: HashMap<String, String>,
    ) -> Result<Published> {
        let request = pb::PublishRequest {
            topic: topic.to_owned(),
            payload: payload.into(),
            metadata,
        };
        let reply = self
            .calls
            .once(&self.client, request, |mut c, r| async move {
                c.publish(r).await
            })
            .await?;
        Ok(reply.into())
    }

    /// Publishes messages to one topic, in order, all or none (every one is
    /// validated before any is published); returns what the broker said
    /// about each, in order. An item is a payload, a `(payload, metadata)`
    /// pair or an [`OutgoingMessage`].
    ///
    /// ```no_run
    /// # async fn example(events: prism_client::PubSub) -> Result<(), prism_client::Error> {
    /// use prism_client::OutgoingMessage;
    ///
    /// let published = events
    ///     .publish_many(
    ///         "orders.created",
    ///         [
    ///             OutgoingMessage::new("order 17"),
    ///             OutgoingMessage::new("order 18").with_metadata("region", "eu"),
    ///         ],
    ///     )
    ///     .await?;
    /// assert_eq!(published.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_many<I>(&self, topic: &str, messages: I) -> Result<Vec<Published>>
    where
        I: IntoIterator,
        I::Item: Into<OutgoingMessage>,
    {
        let messages = batch_messages(messages);
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let request = pb::PublishBatchRequest {
            topic: topic.to_owned(),
            messages,
        };
        let reply = self
            .calls
            .once(&self.client, request, |mut c, r| async move {
                c.publish_batch(r).await
            })
            .await?;
        Ok(reply.published.into_iter().map(Published::from).collect())
    }

    /// Opens a [`Publisher`]: publishes pipelined over one stream, in order,
    /// each request answered on its own (the way to publish at a high rate
    /// from one task). Opening is bounded by the request timeout.
    pub async fn publisher(&self) -> Result<Publisher> {
        let (requests, outgoing) = futures::channel::mpsc::unbounded();
        // Not bounded by `grpc-timeout`: the stream lives as long as it is used.
        let request = self.calls.request(outgoing, None).await?;
        let mut client = self.client.clone();
        let answers = self
            .calls
            .opening("the publish stream", async {
                Ok(client.publish_stream(request).await?.into_inner())
            })
            .await?;
        Ok(Publisher::start(requests, answers))
    }

    /// Subscribes to `topic` with the namespace's defaults. Returns once the
    /// subscription is live on the broker: a message published after this
    /// returns is delivered to it.
    ///
    /// ```no_run
    /// # async fn example(events: prism_client::PubSub) -> Result<(), prism_client::Error> {
    /// use futures::StreamExt;
    ///
    /// let mut subscription = events.subscribe("orders.created").await?;
    /// while let Some(message) = subscription.next().await {
    ///     let message = message?;
    ///     println!("{}: {:?} {:?}", message.topic, message.payload, message.metadata);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        self.subscribe_with(topic, SubscribeOptions::default())
            .await
    }

    /// Subscribes with options (consumer group, manual acks, buffer, slow
    /// consumer policy, metadata filter).
    ///
    /// ```no_run
    /// # async fn example(events: prism_client::PubSub) -> Result<(), prism_client::Error> {
    /// use futures::StreamExt;
    /// use prism_client::SubscribeOptions;
    ///
    /// let options = SubscribeOptions::new().group("billing").manual_ack(true);
    /// let mut subscription = events.subscribe_with("orders.created", options).await?;
    /// while let Some(message) = subscription.next().await {
    ///     let message = message?;
    ///     // ... handle it, then:
    ///     subscription.ack([&message.id]).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe_with(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let request = options.into_request(topic)?;
        let manual_ack = request.manual_ack;
        // Not bounded by `grpc-timeout`: the stream lives as long as it is read.
        let request = self.calls.request(request, None).await?;
        let what = format!("the subscription to '{topic}'");
        let mut client = self.client.clone();
        let (id, stream) = self
            .calls
            .opening(&what, async {
                let frames = client.subscribe(request).await?.into_inner();
                MessageStream::confirm(frames, &what).await
            })
            .await?;
        Ok(Subscription {
            id,
            topic: topic.to_owned(),
            manual_ack,
            stream,
            pubsub: self.clone(),
        })
    }

    /// Ends a subscription by its id (its stream then finishes). For your
    /// own [`Subscription`]s, [`Subscription::unsubscribe`] (or dropping
    /// it) does this.
    ///
    /// ```no_run
    /// # async fn example(events: prism_client::PubSub, id: String) -> Result<(), prism_client::Error> {
    /// events.unsubscribe(&id).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unsubscribe(&self, subscription_id: &str) -> Result<()> {
        self.calls
            .idempotent(
                &self.client,
                || pb::UnsubscribeRequest {
                    subscription_id: subscription_id.to_owned(),
                },
                |mut c, r| async move { c.unsubscribe(r).await },
            )
            .await?;
        Ok(())
    }

    /// Acknowledges messages of a `manual_ack` subscription by id; returns
    /// how many were pending on it. On at-most-once brokers acks are
    /// accepted and have no effect.
    ///
    /// ```no_run
    /// # async fn example(events: prism_client::PubSub, subscription_id: String, message_id: String) -> Result<(), prism_client::Error> {
    /// let acknowledged = events.ack(&subscription_id, [message_id]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack<I, S>(&self, subscription_id: &str, message_ids: I) -> Result<u32>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let request = pb::AckRequest {
            subscription_id: subscription_id.to_owned(),
            message_ids: message_ids.into_iter().map(Into::into).collect(),
        };
        if request.message_ids.is_empty() {
            return Ok(0);
        }
        let reply = self
            .calls
            .once(
                &self.client,
                request,
                |mut c, r| async move { c.ack(r).await },
            )
            .await?;
        Ok(reply.acknowledged)
    }
}

/// A live subscription: a [`Stream`] of [`Message`]s, in publish order per
/// publisher. From [`PubSub::subscribe`].
///
/// The stream ends when the subscription is ended (by
/// [`PubSub::unsubscribe`] or the namespace going away); it fails, and then
/// ends, with the error that ended it on the server (for example
/// [`Error::ResourceExhausted`] for a slow consumer under the disconnect
/// policy, or [`Error::Unauthenticated`] when its token expired). Dropping
/// it unsubscribes.
pub struct Subscription {
    id: String,
    topic: String,
    manual_ack: bool,
    stream: MessageStream<pb::SubscribeResponse>,
    /// For acks and Unsubscribe on this subscription.
    pubsub: PubSub,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("namespace", &self.pubsub.namespace())
            .field("manual_ack", &self.manual_ack)
            .field("dropped", &self.stream.dropped())
            .finish()
    }
}

impl Subscription {
    /// The server's name for this subscription (what acks and Unsubscribe take).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Messages this subscriber lost to its full server-side buffer so far
    /// (drop-oldest policy), as the server reported them.
    pub fn dropped(&self) -> u64 {
        self.stream.dropped()
    }

    /// The messages of the next frame the server sent, at once, with the
    /// count it reported dropped since the previous one: for consumers that
    /// work in batches (and see a batch that only reports drops). `None`
    /// once the subscription ended. Mixes with reading it as a stream.
    ///
    /// ```no_run
    /// # async fn example(mut subscription: prism_client::Subscription) -> Result<(), prism_client::Error> {
    /// while let Some(batch) = subscription.next_batch().await {
    ///     let batch = batch?;
    ///     println!("{} messages, {} dropped", batch.messages.len(), batch.dropped);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_batch(&mut self) -> Option<Result<MessageBatch>> {
        self.stream.next_batch().await
    }

    /// Acknowledges messages of this subscription (needed with
    /// [`SubscribeOptions::manual_ack`] on at-least-once brokers such as
    /// JetStream); returns how many of them were pending on it.
    ///
    /// ```no_run
    /// # async fn example(mut subscription: prism_client::Subscription) -> Result<(), prism_client::Error> {
    /// use futures::StreamExt;
    ///
    /// if let Some(message) = subscription.next().await.transpose()? {
    ///     subscription.ack([&message.id]).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack<I, S>(&self, message_ids: I) -> Result<u32>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pubsub.ack(&self.id, message_ids).await
    }

    /// A handle that acknowledges messages of this subscription from
    /// elsewhere (another task) while the subscription is being read.
    pub fn acker(&self) -> Acker {
        Acker {
            subscription_id: self.id.clone(),
            pubsub: self.pubsub.clone(),
        }
    }

    /// Ends the subscription on the server before returning, so that a
    /// message published afterwards is never routed to it; messages not
    /// yet read are discarded. Dropping the subscription also unsubscribes,
    /// without waiting.
    ///
    /// ```no_run
    /// # async fn example(subscription: prism_client::Subscription) -> Result<(), prism_client::Error> {
    /// subscription.unsubscribe().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unsubscribe(self) -> Result<()> {
        let timeout = match self.pubsub.calls.request_timeout() {
            Some(t) => t.min(UNSUBSCRIBE_TIMEOUT),
            None => UNSUBSCRIBE_TIMEOUT,
        };
        let outcome = tokio::time::timeout(timeout, self.pubsub.unsubscribe(&self.id)).await;
        drop(self.stream);
        match outcome {
            Ok(Ok(())) | Ok(Err(Error::NotFound { .. })) => Ok(()),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(Error::DeadlineExceeded {
                message: format!("unsubscribing from '{}' took over {timeout:?}", self.topic),
            }),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

/// Acknowledges messages of one subscription; from [`Subscription::acker`].
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Acker {
    subscription_id: String,
    pubsub: PubSub,
}

impl Acker {
    /// Like [`Subscription::ack`].
    pub async fn ack<I, S>(&self, message_ids: I) -> Result<u32>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pubsub.ack(&self.subscription_id, message_ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_the_request() {
        let request = SubscribeOptions::new()
            .group("g")
            .manual_ack(true)
            .buffer(7)
            .slow_consumer(SlowConsumer::Disconnect)
            .filter("k", "v")
            .into_request("t");
        let Ok(request) = request else {
            unreachable!("valid options")
        };
        assert_eq!(request.topic, "t");
        assert_eq!(request.group, "g");
        assert!(request.manual_ack);
        assert_eq!(request.buffer, 7);
        assert_eq!(
            request.slow_consumer,
            pb::SlowConsumerPolicy::Disconnect as i32
        );
        assert_eq!(request.filter.get("k").map(String::as_str), Some("v"));
        let default = SubscribeOptions::new().into_request("t");
        assert!(
            default.is_ok_and(|r| r.group.is_empty()
                && r.slow_consumer == pb::SlowConsumerPolicy::Unspecified as i32)
        );
        assert!(matches!(
            SubscribeOptions::new().group("").into_request("t"),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

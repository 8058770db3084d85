//! The server streams behind `PubSub::subscribe` and `Registry::listen`: a
//! confirmation frame first (the stream is live on the broker), then
//! batches of messages, read here one message at a time.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tonic::Streaming;

use crate::error::{Error, Result};
use crate::pb;

/// One delivered message: from a subscription, or multicast to an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Unique per message (what [`Subscription::ack`](crate::Subscription::ack) takes).
    pub id: String,
    /// The topic it was published to (for an inbox: the identity).
    pub topic: String,
    pub payload: Bytes,
    pub metadata: HashMap<String, String>,
    /// When the broker accepted it, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// 1 on first delivery; more when an at-least-once broker (NATS
    /// JetStream) redelivers a message that was not acknowledged.
    pub delivery_attempt: u32,
}

impl Message {
    /// The payload decoded as JSON (what
    /// [`Registry::multicast_json`](crate::Registry::multicast_json) sends).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.payload).map_err(|err| {
            Error::invalid(format!(
                "the payload of message {} is not JSON: {err}",
                self.id
            ))
        })
    }
}

impl From<pb::Message> for Message {
    fn from(m: pb::Message) -> Message {
        Message {
            id: m.id,
            topic: m.topic,
            payload: m.payload,
            metadata: m.metadata,
            timestamp_ms: m.timestamp_ms,
            delivery_attempt: m.delivery_attempt,
        }
    }
}

/// What one frame of a stream brought, from `next_batch`: the messages in
/// it, and how many the subscriber's server-side buffer dropped before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageBatch {
    pub messages: Vec<Message>,
    /// Messages lost since the previous batch (drop-oldest policy).
    pub dropped: u64,
}

/// What one frame of a stream carries.
pub(crate) enum Event {
    /// The stream is live; its subscription id.
    Confirmed(String),
    Batch(pb::MessageBatch),
    Nothing,
}

/// A frame type of a message stream (`SubscribeResponse`, `ListenResponse`).
pub(crate) trait Frame {
    fn into_event(self) -> Event;
}

impl Frame for pb::SubscribeResponse {
    fn into_event(self) -> Event {
        match self.event {
            Some(pb::subscribe_response::Event::Subscribed(s)) => {
                Event::Confirmed(s.subscription_id)
            }
            Some(pb::subscribe_response::Event::Messages(batch)) => Event::Batch(batch),
            None => Event::Nothing,
        }
    }
}

impl Frame for pb::ListenResponse {
    fn into_event(self) -> Event {
        match self.event {
            Some(pb::listen_response::Event::Listening(l)) => Event::Confirmed(l.subscription_id),
            Some(pb::listen_response::Event::Messages(batch)) => Event::Batch(batch),
            None => Event::Nothing,
        }
    }
}

/// A confirmed stream, yielding its messages one by one.
pub(crate) struct MessageStream<F> {
    frames: Streaming<F>,
    /// The rest of the batch being handed out.
    batch: std::vec::IntoIter<pb::Message>,
    /// Messages the server reported lost to this subscriber's buffer.
    dropped: u64,
    /// The stream ended (or failed, and the error was handed out).
    done: bool,
}

impl<F: Frame> MessageStream<F> {
    /// Waits for the confirmation frame of a stream just opened; returns its
    /// subscription id and the stream of what follows. `what` names the
    /// stream in errors ("subscription to 'events'").
    pub(crate) async fn confirm(
        mut frames: Streaming<F>,
        what: &str,
    ) -> Result<(String, MessageStream<F>)> {
        // Nothing is sent before the confirmation; kept should it ever be.
        let mut early = Vec::new();
        let mut dropped = 0;
        loop {
            let frame = frames.message().await.map_err(Error::from)?;
            let Some(frame) = frame else {
                return Err(Error::Other {
                    code: tonic::Code::Unknown,
                    message: format!("{what} ended before the server confirmed it"),
                });
            };
            match frame.into_event() {
                Event::Confirmed(id) => {
                    let stream = MessageStream {
                        frames,
                        batch: early.into_iter(),
                        dropped,
                        done: false,
                    };
                    return Ok((id, stream));
                }
                Event::Batch(batch) => {
                    dropped += batch.dropped;
                    early.extend(batch.messages);
                }
                Event::Nothing => {}
            }
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The messages of the next frame (first those of the current one not
    /// yet handed out); `None` once the stream ended.
    pub(crate) async fn next_batch(&mut self) -> Option<Result<MessageBatch>> {
        if !self.batch.as_slice().is_empty() {
            let rest = std::mem::take(&mut self.batch);
            return Some(Ok(MessageBatch {
                messages: rest.map(Message::from).collect(),
                dropped: 0,
            }));
        }
        while !self.done {
            match self.frames.message().await {
                Ok(Some(frame)) => {
                    if let Event::Batch(batch) = frame.into_event() {
                        self.dropped += batch.dropped;
                        return Some(Ok(MessageBatch {
                            messages: batch.messages.into_iter().map(Message::from).collect(),
                            dropped: batch.dropped,
                        }));
                    }
                }
                Ok(None) => self.done = true,
                Err(status) => {
                    self.done = true;
                    return Some(Err(Error::from(status)));
                }
            }
        }
        None
    }
}

impl<F: Frame> Stream for MessageStream<F> {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(message) = this.batch.next() {
                return Poll::Ready(Some(Ok(Message::from(message))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.frames).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(status))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::from(status))));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_event() {
                    Event::Batch(batch) => {
                        this.dropped += batch.dropped;
                        this.batch = batch.messages.into_iter();
                    }
                    Event::Confirmed(_) | Event::Nothing => {}
                },
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let buffered = self.batch.len();
        if self.done {
            (buffered, Some(buffered))
        } else {
            (buffered, None)
        }
    }
}

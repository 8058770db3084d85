//! A pipelined publisher: one `PublishStream` call on which publish
//! requests go out without waiting for the previous one's answer. The
//! server publishes them in the order sent and answers each in order, so a
//! publisher keeps its order while paying one round trip per window of
//! requests instead of one per request.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::channel::mpsc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tonic::{Code, Status, Streaming};

use crate::error::{Error, Result};
use crate::message::{OutgoingMessage, Published, batch_messages};
use crate::pb;

/// Requests a publisher sends ahead of their answers (the server reads up
/// to 64 ahead).
pub const PUBLISH_WINDOW: usize = 32;

/// Publishes over one stream, pipelined; cheap to clone (clones share the
/// stream and its order). Made by [`PubSub::publisher`](crate::PubSub::publisher).
///
/// [`send`](Publisher::send) returns once the request is on its way (it
/// waits only while [`PUBLISH_WINDOW`] requests are unanswered), with a
/// [`PublishAck`] that resolves to the ids once the broker accepted the
/// messages. Requests are published in the order they were sent; one that
/// fails (bad input, broker down) publishes nothing and fails only its own
/// ack. The stream ends when every clone is dropped (after the answers
/// still due), or when the server ends it (shutdown, expired token): the
/// acks still pending then fail with that error, and later sends too — open
/// a new publisher to go on.
///
/// ```no_run
/// # async fn example(events: prism_client::PubSub) -> Result<(), prism_client::Error> {
/// use prism_client::OutgoingMessage;
///
/// let publisher = events.publisher().await?;
/// let mut acks = Vec::new();
/// for n in 0..1000 {
///     acks.push(publisher.send("orders.created", [OutgoingMessage::new(format!("order {n}"))]).await?);
/// }
/// for ack in acks {
///     ack.await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
    /// The request half of the call, held by the handles only: when the
    /// last one drops, the request stream ends and the server finishes.
    requests: Arc<mpsc::UnboundedSender<pb::PublishStreamRequest>>,
}

struct Shared {
    /// One permit per request that may be unanswered.
    window: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    next: u64,
    /// Requests sent and not yet answered, oldest first (answers come in order).
    pending: VecDeque<Pending>,
    /// Why the stream ended, for the sends after it.
    ended: Option<Status>,
}

struct Pending {
    sequence: u64,
    reply: oneshot::Sender<Result<Vec<Published>>>,
    _permit: OwnedSemaphorePermit,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the queue intact.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the server said of one request: its messages' ids, in order.
#[must_use = "an unawaited ack never says whether the messages were published"]
pub struct PublishAck(oneshot::Receiver<Result<Vec<Published>>>);

impl Future for PublishAck {
    type Output = Result<Vec<Published>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|answer| {
            answer.unwrap_or_else(|_| {
                Err(Error::Unavailable {
                    message: "the publish stream ended before this request was answered".into(),
                })
            })
        })
    }
}

impl Publisher {
    /// Starts reading the answers of an opened call.
    pub(crate) fn start(
        requests: mpsc::UnboundedSender<pb::PublishStreamRequest>,
        answers: Streaming<pb::PublishStreamResponse>,
    ) -> Publisher {
        let shared = Arc::new(Shared {
            window: Arc::new(Semaphore::new(PUBLISH_WINDOW)),
            state: Mutex::new(State {
                next: 1,
                pending: VecDeque::new(),
                ended: None,
            }),
        });
        tokio::spawn(read_answers(shared.clone(), answers));
        Publisher {
            shared,
            requests: Arc::new(requests),
        }
    }

    /// Sends messages to `topic` (published together, all or none, after
    /// every request sent before); returns once the request is sent.
    pub async fn send<I>(&self, topic: &str, messages: I) -> Result<PublishAck>
    where
        I: IntoIterator,
        I::Item: Into<OutgoingMessage>,
    {
        let messages = batch_messages(messages);
        let permit = match self.shared.window.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => return Err(self.ended()),
        };
        let (reply, ack) = oneshot::channel();
        let mut state = self.shared.state();
        let sequence = state.next;
        let request = pb::PublishStreamRequest {
            sequence,
            topic: topic.to_owned(),
            messages,
        };
        // Sent and queued under one lock, so answers meet their requests in order.
        if state.ended.is_some() || self.requests.unbounded_send(request).is_err() {
            drop(state);
            return Err(self.ended());
        }
        state.next += 1;
        state.pending.push_back(Pending {
            sequence,
            reply,
            _permit: permit,
        });
        Ok(PublishAck(ack))
    }

    /// Waits until every request sent so far is answered.
    pub async fn flush(&self) -> Result<()> {
        match self.shared.window.acquire_many(PUBLISH_WINDOW as u32).await {
            Ok(_all) => Ok(()),
            Err(_) => Err(self.ended()),
        }
    }

    fn ended(&self) -> Error {
        let state = self.shared.state();
        match &state.ended {
            Some(status) => Error::from(status.clone()),
            None => Error::Unavailable {
                message: "the publish stream has ended; open a new publisher".into(),
            },
        }
    }
}

/// Matches answers to pending requests until the stream ends, then fails
/// whatever is still pending with the reason.
async fn read_answers(shared: Arc<Shared>, mut answers: Streaming<pb::PublishStreamResponse>) {
    let end = loop {
        let answer = match answers.message().await {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                break Status::unavailable("the server ended the publish stream");
            }
            Err(status) => break status,
        };
        let pending = shared.state().pending.pop_front();
        let Some(pending) = pending.filter(|p| p.sequence == answer.sequence) else {
            break Status::internal(format!(
                "the server answered publish request {} out of order",
                answer.sequence
            ));
        };
        let result = match answer.error {
            Some(error) => Err(Error::from(Status::new(
                Code::from(error.code),
                error.message,
            ))),
            None => Ok(answer.published.into_iter().map(Published::from).collect()),
        };
        // The caller may have dropped its ack; the answer is then unheard.
        let _ = pending.reply.send(result);
    };
    shared.window.close();
    let pending: Vec<Pending> = {
        let mut state = shared.state();
        state.ended = Some(end.clone());
        state.pending.drain(..).collect()
    };
    for p in pending {
        let _ = p.reply.send(Err(Error::from(end.clone())));
    }
}

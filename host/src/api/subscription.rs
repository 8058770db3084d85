//! A live subscription between the broker and one gRPC stream: a pump task
//! reads the broker, runs the pattern's delivery hook when the plan asked
//! for it, and fills a bounded outbox; the response stream drains the outbox
//! in batches. The outbox applies the slow-consumer policy, so memory per
//! subscriber is bounded and the broker (and so every publisher) is never
//! held up by a slow client.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::Status;

use crate::backend::pubsub::{Acker, BrokerMessage, BrokerSubscription, Delivery};
use crate::runtime::PubSubRuntime;
use crate::runtime::bindings::pubsub_world::{self, SubscribeRequest, Verdict};

/// Most messages sent in one stream frame.
pub const MAX_BATCH: usize = 256;

/// One message waiting for the client.
pub struct Outgoing {
    pub message: Arc<BrokerMessage>,
    pub attempt: u32,
}

/// What the stream gets from the outbox.
pub enum Batch {
    Messages {
        messages: Vec<Outgoing>,
        dropped: u64,
    },
    /// The subscription failed; nothing follows.
    Failed(Status),
    /// Unsubscribed or the broker ended it; nothing follows.
    Finished,
}

/// When the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    DropOldest,
    Disconnect,
    /// At-least-once brokers: wait (the broker holds the rest unacknowledged).
    Wait,
}

pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    when_full: WhenFull,
    /// Messages (or the end) are ready for the stream.
    ready: Notify,
    /// The stream took messages: room for the pump.
    space: Notify,
    stopped: AtomicBool,
    stop: Notify,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Outgoing>,
    dropped: u64,
    end: Option<Result<(), Status>>,
    ended: bool,
}

impl Outbox {
    pub fn new(capacity: usize, when_full: WhenFull) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            when_full,
            ready: Notify::new(),
            space: Notify::new(),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
        })
    }

    /// Queues a message under the slow-consumer policy.
    pub async fn push(&self, out: Outgoing) {
        loop {
            let room = self.space.notified();
            {
                let mut state = self.state.lock();
                if state.end.is_some() || state.ended {
                    return;
                }
                if state.queue.len() < self.capacity {
                    state.queue.push_back(out);
                    break;
                }
                match self.when_full {
                    WhenFull::DropOldest => {
                        state.queue.pop_front();
                        state.dropped += 1;
                        state.queue.push_back(out);
                        break;
                    }
                    WhenFull::Disconnect => {
                        state.end = Some(Err(Status::resource_exhausted(format!(
                            "subscriber fell more than {} messages behind and was disconnected \
                             (slow_consumer = disconnect); read faster, raise the buffer, or use drop_oldest",
                            self.capacity
                        ))));
                        break;
                    }
                    WhenFull::Wait => {}
                }
            }
            room.await;
        }
        self.ready.notify_one();
    }

    /// Counts messages the broker itself dropped for this subscriber.
    pub fn add_dropped(&self, n: u64) {
        self.state.lock().dropped += n;
        self.ready.notify_one();
    }

    /// Ends the subscription after what is queued (Ok) or right away (Err).
    pub fn finish(&self, end: Result<(), Status>) {
        {
            let mut state = self.state.lock();
            if state.end.is_none() && !state.ended {
                state.end = Some(end);
            }
        }
        self.ready.notify_one();
        self.stop();
    }

    /// Stops the pump (unsubscribe, client gone).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
        self.space.notify_one();
    }

    /// Resolves once `stop` was called.
    pub async fn stopped(&self) {
        loop {
            let notified = self.stop.notified();
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// The next batch for the stream, waiting until there is one.
    pub async fn next_batch(&self) -> Batch {
        loop {
            let ready = self.ready.notified();
            {
                let mut state = self.state.lock();
                if state.ended {
                    return Batch::Finished;
                }
                // A failure ends the stream at once; a normal end drains first.
                if let Some(Err(status)) = &state.end {
                    let status = status.clone();
                    state.ended = true;
                    state.queue.clear();
                    return Batch::Failed(status);
                }
                if !state.queue.is_empty() || state.dropped > 0 {
                    let n = state.queue.len().min(MAX_BATCH);
                    let messages: Vec<Outgoing> = state.queue.drain(..n).collect();
                    let dropped = std::mem::take(&mut state.dropped);
                    drop(state);
                    self.space.notify_one();
                    return Batch::Messages { messages, dropped };
                }
                if state.end.is_some() {
                    state.ended = true;
                    return Batch::Finished;
                }
            }
            ready.await;
        }
    }
}

/// Reads the broker into the outbox until stopped or the broker ends.
pub async fn pump(
    mut subscription: Box<dyn BrokerSubscription>,
    outbox: Arc<Outbox>,
    runtime: PubSubRuntime,
    request: SubscribeRequest,
    inspect: bool,
    acker: Option<Arc<dyn Acker>>,
) {
    loop {
        let delivery = tokio::select! {
            _ = outbox.stopped() => return,
            delivery = subscription.next() => delivery,
        };
        match delivery {
            None => {
                outbox.finish(Ok(()));
                return;
            }
            Some(Delivery::Dropped(n)) => outbox.add_dropped(n),
            Some(Delivery::Overflowed) => {
                outbox.finish(Err(Status::resource_exhausted(
                    "subscriber fell behind the broker's buffer and was disconnected \
                     (slow_consumer = disconnect); read faster, raise the buffer, or use drop_oldest",
                )));
                return;
            }
            Some(Delivery::Message { message, attempt }) => {
                let message = if inspect {
                    let id = message.id.clone();
                    match hook(&runtime, &request, message).await {
                        Ok(Some(m)) => m,
                        Ok(None) => {
                            // Filtered out: settled as far as the broker is concerned.
                            if let Some(acker) = &acker {
                                let _ = acker.ack(&[id]).await;
                            }
                            continue;
                        }
                        Err(status) => {
                            outbox.finish(Err(status));
                            return;
                        }
                    }
                } else {
                    message
                };
                outbox.push(Outgoing { message, attempt }).await;
            }
        }
    }
}

/// The pattern's delivery hook: keep, drop or replace one message.
async fn hook(
    runtime: &PubSubRuntime,
    request: &SubscribeRequest,
    message: Arc<BrokerMessage>,
) -> Result<Option<Arc<BrokerMessage>>, Status> {
    let delivery = pubsub_world::Delivery {
        topic: message.topic.clone(),
        payload: message.payload.to_vec(),
        metadata: message.metadata.clone(),
    };
    match runtime
        .deliver(request, delivery)
        .await
        .map_err(Status::from)?
    {
        Verdict::Keep => Ok(Some(message)),
        Verdict::Drop => Ok(None),
        Verdict::Replace(d) => Ok(Some(Arc::new(BrokerMessage {
            id: message.id.clone(),
            topic: d.topic,
            payload: d.payload.into(),
            metadata: d.metadata,
            timestamp_ms: message.timestamp_ms,
        }))),
    }
}

/// A subscription the Unsubscribe and Ack calls can find.
pub struct Registered {
    pub namespace: String,
    pub outbox: Arc<Outbox>,
    pub acker: Option<Arc<dyn Acker>>,
}

/// Live subscriptions by id.
#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<String, Arc<Registered>>>,
}

impl Registry {
    pub fn insert(&self, id: String, entry: Registered) {
        self.live.lock().insert(id, Arc::new(entry));
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Registered>> {
        self.live.lock().remove(id)
    }

    /// The subscription, if it is live and belongs to `namespace`.
    pub fn get(&self, id: &str, namespace: &str) -> Option<Arc<Registered>> {
        self.live
            .lock()
            .get(id)
            .filter(|e| e.namespace == namespace)
            .cloned()
    }

    /// Ends every live subscription with `status` (server shutdown), so
    /// the drain does not wait on streams that never end by themselves.
    pub fn end_all(&self, status: &Status) {
        let live: Vec<Arc<Registered>> = self.live.lock().drain().map(|(_, e)| e).collect();
        for entry in live {
            entry.outbox.finish(Err(status.clone()));
        }
    }
}

/// Held by the response stream: when the client goes away (or the stream
/// ends), the pump stops and the subscription leaves the registry.
pub struct StreamGuard {
    pub id: String,
    pub registry: Arc<Registry>,
    pub outbox: Arc<Outbox>,
    /// The namespace's open-stream quota slot, freed with the stream.
    pub _admitted: crate::admission::StreamGuard,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.outbox.stop();
        self.registry.remove(&self.id);
    }
}

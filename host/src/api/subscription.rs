//! A live subscription between the broker and one gRPC stream: a pump task
//! reads the broker, runs the pattern's delivery hook when the plan asked
//! for it, and fills a bounded outbox; the response stream drains the outbox
//! in batches. The outbox applies the slow-consumer policy, so memory per
//! subscriber is bounded and the broker (and so every publisher) is never
//! held up by a slow client.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{FutureExt, Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::Status;
use tracing::Instrument;

use super::frame::DeliveryFrame;
use crate::backend::pubsub::{
    Acker, BrokerMessage, BrokerSubscription, Delivery, SlowConsumerPolicy, SubscribeOptions,
};
use crate::capability::pubsub::PubSubSlot;
use crate::clock::{next_id, now_ms};
use crate::runtime::bindings::pubsub_world::{self, SubscribeRequest, Verdict};
use crate::telemetry::traces;

/// Most messages sent in one stream frame.
pub const MAX_BATCH: usize = 256;

/// One message waiting for the client.
#[derive(Debug)]
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
    #[cfg(test)]
    pub async fn push(&self, out: Outgoing) {
        self.push_all(&mut VecDeque::from([out])).await;
    }

    /// Queues `pending` in order under the slow-consumer policy, leaving it
    /// empty: one lock and one wake-up of the stream for the whole run, not
    /// one per message (a pump that found several ready hands them over
    /// together).
    pub async fn push_all(&self, pending: &mut VecDeque<Outgoing>) {
        while !pending.is_empty() {
            let room = self.space.notified();
            {
                let mut state = self.state.lock();
                // Stopped (client gone, unsubscribed): a pump waiting for
                // room would otherwise wait forever, holding its broker
                // subscription (and an at-least-once broker's messages).
                if state.end.is_some() || state.ended || self.stopped.load(Ordering::SeqCst) {
                    pending.clear();
                    return;
                }
                let before = pending.len();
                while let Some(out) = pending.pop_front() {
                    if state.queue.len() < self.capacity {
                        state.queue.push_back(out);
                        continue;
                    }
                    match self.when_full {
                        WhenFull::DropOldest => {
                            state.queue.pop_front();
                            state.dropped += 1;
                            state.queue.push_back(out);
                        }
                        WhenFull::Disconnect => {
                            state.end = Some(Err(Status::resource_exhausted(format!(
                                "subscriber fell more than {} messages behind and was disconnected \
                                 (slow_consumer = disconnect); read faster, raise the buffer, or use drop_oldest",
                                self.capacity
                            ))));
                            pending.clear();
                            break;
                        }
                        WhenFull::Wait => {
                            // It goes first once the stream makes room.
                            pending.push_front(out);
                            break;
                        }
                    }
                }
                let progressed = pending.len() < before;
                drop(state);
                if progressed {
                    self.ready.notify_one();
                }
                if pending.is_empty() {
                    return;
                }
            }
            room.await;
        }
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

/// A PubSub pattern's delivery hook for one subscription.
pub struct Hook {
    /// Each delivery runs on the version serving the namespace then (its
    /// primary, or a canary's share), so a deploy reaches open streams too
    /// and an old version is not kept alive by them.
    pub namespace: Arc<crate::namespace::Namespace>,
    /// The subscription as the client asked for it.
    pub request: SubscribeRequest,
}

/// Reads the broker into the outbox until stopped or the broker ends.
/// Whatever else the broker has ready when a delivery arrives (up to a
/// frame's worth) is taken in the same turn and queued in one go.
async fn pump(
    mut subscription: Box<dyn BrokerSubscription>,
    outbox: Arc<Outbox>,
    hook: Option<Hook>,
    acker: Option<Arc<dyn Acker>>,
    namespace: String,
) {
    let mut run: VecDeque<Outgoing> = VecDeque::new();
    loop {
        let first = tokio::select! {
            _ = outbox.stopped() => return,
            delivery = subscription.next() => delivery,
        };
        let mut next = Some(first);
        while let Some(delivery) = next.take() {
            match delivery {
                None => {
                    outbox.push_all(&mut run).await;
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
                    // With traces on: a consumer span under the publisher's
                    // context, and the message carries on as its child; such
                    // a message is queued on its own, inside its span.
                    let span = traces::delivery_span(&namespace, &message.topic, &message.metadata);
                    let message = if span.is_none() {
                        message
                    } else {
                        let mut traced = BrokerMessage::clone(&message);
                        traces::inject_metadata(&span, &mut traced.metadata);
                        Arc::new(traced)
                    };
                    let message = match &hook {
                        Some(hook) => {
                            let id = message.id.clone();
                            match run_hook(hook, message).instrument(span.clone()).await {
                                Ok(Some(m)) => Some(m),
                                Ok(None) => {
                                    // Filtered out: settled as far as the broker is concerned.
                                    if let Some(acker) = &acker {
                                        let _ = acker.ack(&[id]).await;
                                    }
                                    None
                                }
                                Err(status) => {
                                    outbox.finish(Err(status));
                                    return;
                                }
                            }
                        }
                        None => Some(message),
                    };
                    if let Some(message) = message {
                        run.push_back(Outgoing { message, attempt });
                        if !span.is_none() {
                            outbox.push_all(&mut run).instrument(span).await;
                        }
                    }
                }
            }
            // A delivery the broker has ready now joins this run; `next` is
            // cancel-safe, so a pending one is simply asked for again.
            if run.len() < MAX_BATCH {
                next = subscription.next().now_or_never();
            }
        }
        outbox.push_all(&mut run).await;
    }
}

/// The pattern's delivery hook: keep, drop or replace one message.
async fn run_hook(
    hook: &Hook,
    message: Arc<BrokerMessage>,
) -> Result<Option<Arc<BrokerMessage>>, Status> {
    let delivery = pubsub_world::Delivery {
        topic: message.topic.clone(),
        payload: message.payload.to_vec(),
        metadata: message.metadata.clone(),
    };
    let runtime = hook
        .namespace
        .route()
        .version
        .pubsub(&hook.namespace.name)?;
    match runtime
        .deliver(&hook.request, delivery)
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
    /// Messages dropped for slow subscribers (drop_oldest, or dropped by
    /// the broker), by namespace, since start.
    dropped: Mutex<HashMap<String, u64>>,
    /// Set at shutdown: publish streams end between requests.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Registry {
    pub fn note_dropped(&self, namespace: &str, n: u64) {
        let mut dropped = self.dropped.lock();
        match dropped.get_mut(namespace) {
            Some(total) => *total += n,
            None => {
                dropped.insert(namespace.to_string(), n);
            }
        }
    }

    /// Dropped messages by namespace, forgetting namespaces `keep` rejects
    /// (deleted ones), so the map holds live namespaces only.
    pub fn dropped(&self, keep: impl Fn(&str) -> bool) -> HashMap<String, u64> {
        let mut dropped = self.dropped.lock();
        dropped.retain(|namespace, _| keep(namespace));
        dropped.clone()
    }

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

    /// Ends the namespace's live subscriptions with `status` (it was
    /// deleted, or its slots rebound); returns how many.
    pub fn end_namespace(&self, namespace: &str, status: &Status) -> usize {
        let ended: Vec<Arc<Registered>> = {
            let mut live = self.live.lock();
            let ids: Vec<String> = live
                .iter()
                .filter(|(_, e)| e.namespace == namespace)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| live.remove(id)).collect()
        };
        for entry in &ended {
            entry.outbox.finish(Err(status.clone()));
        }
        ended.len()
    }

    /// Turns true when the server shuts down (see [`Registry::end_all`]).
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every live subscription with `status` (server shutdown), so
    /// the drain does not wait on streams that never end by themselves.
    pub fn end_all(&self, status: &Status) {
        self.closing.send_replace(true);
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
    pub namespace: Arc<str>,
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

/// What a stream holds on a broker: a subscription (PubSub) or an inbox
/// listener (Registry) — the same machinery either way.
pub struct Held<'a> {
    pub namespace: &'a str,
    pub slot: &'a PubSubSlot,
    /// The pattern-planned topic (the slot scopes it).
    pub topic: &'a str,
    pub options: SubscribeOptions,
    pub hook: Option<Hook>,
    pub manual_ack: bool,
    /// The topic as the client named it (set on every delivered message).
    pub client_topic: String,
    pub admitted: crate::admission::StreamGuard,
    /// When the caller's token expires (ms since the epoch): the stream ends
    /// then with UNAUTHENTICATED, so no subscription outlives its credentials.
    pub expires_at_ms: Option<u64>,
}

pub type FrameStream = Pin<Box<dyn Stream<Item = Result<DeliveryFrame, Status>> + Send>>;

/// Subscribes on the broker, registers the subscription (so Unsubscribe,
/// Ack and shutdown find it), starts its pump, and returns the response
/// stream: an opening frame naming the subscription and `opened` (the
/// topic or identity) once live, then a frame per batch.
pub async fn open_stream(
    subscriptions: &Arc<Registry>,
    held: Held<'_>,
    opened: String,
) -> Result<FrameStream, Status> {
    let at_least_once = held.slot.backend().at_least_once();
    let policy = held.options.policy;
    let buffer = held.options.buffer;
    let subscription = held
        .slot
        .subscribe(held.topic, &held.options)
        .await
        .map_err(Status::from)?;
    let acker = subscription.acker();
    // At-least-once brokers hold what the outbox cannot, so nothing is
    // dropped there; a subscriber that asked to be disconnected when it
    // falls behind still is (its unacknowledged messages are redelivered).
    let when_full = match (at_least_once, policy) {
        (true, SlowConsumerPolicy::DropOldest) => WhenFull::Wait,
        (_, SlowConsumerPolicy::Disconnect) => WhenFull::Disconnect,
        (false, SlowConsumerPolicy::DropOldest) => WhenFull::DropOldest,
    };
    let outbox = Outbox::new(buffer, when_full);
    let id = format!("sub-{}", next_id(now_ms()));
    subscriptions.insert(
        id.clone(),
        Registered {
            namespace: held.namespace.to_string(),
            outbox: outbox.clone(),
            acker: acker.clone(),
        },
    );
    tokio::spawn(pump(
        subscription,
        outbox.clone(),
        held.hook,
        acker.clone(),
        held.namespace.to_string(),
    ));
    tracing::debug!(namespace = %held.namespace, topic = %held.client_topic, subscription = %id, "subscribed");

    let first = DeliveryFrame::Opened {
        id: id.clone(),
        name: opened,
    };
    let guard = StreamGuard {
        id,
        namespace: held.namespace.into(),
        registry: subscriptions.clone(),
        outbox,
        _admitted: held.admitted,
    };
    let auto_ack = if held.manual_ack { None } else { acker };
    let topic: Arc<str> = held.client_topic.into();
    let expiry = held.expires_at_ms.map(|at| {
        let left = at.saturating_sub(now_ms());
        tokio::time::Instant::now() + std::time::Duration::from_millis(left)
    });
    let rest = futures::stream::unfold(Some((guard, auto_ack)), move |state| {
        let topic = topic.clone();
        async move {
            let (guard, auto_ack) = state?;
            let next = guard.outbox.next_batch();
            let batch = match expiry {
                None => next.await,
                Some(at) => tokio::select! {
                    batch = next => batch,
                    _ = tokio::time::sleep_until(at) => Batch::Failed(token_expired()),
                },
            };
            match batch {
                Batch::Messages { messages, dropped } => {
                    if dropped > 0 {
                        guard.registry.note_dropped(&guard.namespace, dropped);
                    }
                    if let Some(acker) = &auto_ack {
                        // Acked once handed to the client's stream (auto-ack mode).
                        let ids: Vec<String> =
                            messages.iter().map(|m| m.message.id.clone()).collect();
                        if let Err(e) = acker.ack(&ids).await {
                            tracing::warn!(error = %e, "auto-ack failed; the broker will redeliver");
                        }
                    }
                    let frame = DeliveryFrame::Messages {
                        topic,
                        messages,
                        dropped,
                    };
                    Some((Ok(frame), Some((guard, auto_ack))))
                }
                Batch::Failed(status) => Some((Err(status), None)),
                Batch::Finished => None,
            }
        }
    });
    Ok(Box::pin(
        futures::stream::once(async move { Ok(first) }).chain(rest),
    ))
}

/// Until when the caller's token is accepted, if the call was authenticated.
pub fn token_expiry<T>(request: &tonic::Request<T>) -> Option<u64> {
    request
        .extensions()
        .get::<Arc<crate::auth::Principal>>()
        .map(|p| p.valid_until_ms)
}

/// The end of a stream whose token expired; `x-prism-auth: token-expired`
/// lets clients reopen it with a fresh token without parsing the message.
pub fn token_expired() -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "x-prism-auth",
        tonic::metadata::MetadataValue::from_static("token-expired"),
    );
    Status::with_metadata(
        tonic::Code::Unauthenticated,
        "the token this stream was opened with has expired; open it again with a fresh token",
        metadata,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Outgoing {
        numbered(1)
    }

    fn numbered(n: u32) -> Outgoing {
        Outgoing {
            message: Arc::new(BrokerMessage {
                id: n.to_string(),
                topic: "t".into(),
                payload: bytes::Bytes::new(),
                metadata: Vec::new(),
                timestamp_ms: 1,
            }),
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn a_pump_waiting_for_room_is_released_when_the_stream_stops() {
        let outbox = Outbox::new(1, WhenFull::Wait);
        outbox.push(message()).await;
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push(message()).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a full outbox holds the pump");
        // The client went away: the pump must not wait forever (it holds
        // the broker subscription and its unacknowledged messages).
        outbox.stop();
        let released = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(matches!(released, Ok(Ok(()))), "{released:?}");
        // And it does not wait again on a stopped outbox.
        let again =
            tokio::time::timeout(std::time::Duration::from_secs(5), outbox.push(message())).await;
        assert!(again.is_ok());
    }

    /// The ids and drop count of a batch of messages; None for an end.
    fn ids(batch: Batch) -> Option<(Vec<String>, u64)> {
        match batch {
            Batch::Messages { messages, dropped } => Some((
                messages.iter().map(|m| m.message.id.clone()).collect(),
                dropped,
            )),
            Batch::Failed(_) | Batch::Finished => None,
        }
    }

    #[tokio::test]
    async fn a_run_that_does_not_fit_waits_in_order_for_room() {
        let outbox = Outbox::new(2, WhenFull::Wait);
        let pushing = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push_all(&mut (1..=5).map(numbered).collect()).await })
        };
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let batch = ids(outbox.next_batch().await);
            assert!(batch.is_some(), "the stream goes on");
            let (got, dropped) = batch.unwrap_or_default();
            assert_eq!(dropped, 0, "an at-least-once outbox never drops");
            assert!(got.len() <= 2, "never more than the capacity: {got:?}");
            seen.extend(got);
        }
        assert_eq!(seen, ["1", "2", "3", "4", "5"]);
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), pushing).await;
        assert!(matches!(done, Ok(Ok(()))), "{done:?}");
    }

    #[tokio::test]
    async fn a_run_larger_than_a_drop_oldest_outbox_keeps_its_newest() {
        let outbox = Outbox::new(2, WhenFull::DropOldest);
        outbox.push_all(&mut (1..=5).map(numbered).collect()).await;
        assert_eq!(
            ids(outbox.next_batch().await),
            Some((vec!["4".into(), "5".into()], 3))
        );
    }

    #[tokio::test]
    async fn a_run_larger_than_a_disconnect_outbox_ends_the_stream() {
        let outbox = Outbox::new(2, WhenFull::Disconnect);
        outbox.push_all(&mut (1..=5).map(numbered).collect()).await;
        let end = outbox.next_batch().await;
        assert!(
            matches!(&end, Batch::Failed(status) if status.code() == tonic::Code::ResourceExhausted),
            "a subscriber that fell behind is disconnected"
        );
    }
}

//! The outbox between a subscription's pump and its response stream: a
//! bounded queue that applies the slow-consumer policy, so memory per
//! subscriber is bounded and the broker (and so every publisher) is never
//! held up by a slow client.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::Status;

use crate::admission::Admission;
use crate::backend::pubsub::BrokerMessage;

/// What one queued message is charged beyond its bytes (its queue slot,
/// the `Arc`, the strings' headers).
const OVERHEAD: u64 = 96;

/// Most messages sent in one stream frame.
pub const MAX_BATCH: usize = 256;

/// One message waiting for the client.
#[derive(Debug)]
pub struct Outgoing {
    pub message: Arc<BrokerMessage>,
    pub attempt: u32,
}

impl Outgoing {
    /// The bytes this message holds while it waits, as the namespace's
    /// `max_buffered_bytes` counts them.
    pub fn size(&self) -> u64 {
        let m = &self.message;
        let metadata: usize = m.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        (m.payload.len() + m.id.len() + m.topic.len() + metadata) as u64 + OVERHEAD
    }
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
    /// The namespace's byte quota every queued message is charged to.
    budget: Option<Arc<Admission>>,
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
    /// What `queue` is charged to the budget.
    bytes: u64,
    dropped: u64,
    end: Option<Result<(), Status>>,
    ended: bool,
}

impl Outbox {
    /// An outbox of at most `capacity` messages, whose bytes count against
    /// `budget` (the namespace's `max_buffered_bytes`) when given.
    pub fn new(
        capacity: usize,
        when_full: WhenFull,
        budget: Option<Arc<Admission>>,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            when_full,
            budget,
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
                    let size = out.size();
                    if self.admit(&mut state, size) {
                        state.queue.push_back(out);
                        continue;
                    }
                    match self.when_full {
                        WhenFull::DropOldest => {
                            // Oldest out until the new one fits; an empty
                            // queue always takes one, so this ends.
                            while let Some(old) = state.queue.pop_front() {
                                self.release(&mut state, old.size());
                                state.dropped += 1;
                                if self.admit(&mut state, size) {
                                    break;
                                }
                            }
                            state.queue.push_back(out);
                        }
                        WhenFull::Disconnect => {
                            let queued = state.queue.len();
                            state.end = Some(Err(Status::resource_exhausted(format!(
                                "subscriber fell behind ({queued} messages waiting; at most {} per subscriber, and the namespace's max_buffered_bytes across them) and was disconnected \
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

    /// Charges a message of `size` bytes if the queue has a free place and
    /// the namespace's budget the bytes (an empty queue always takes one,
    /// so a subscriber is never starved by the others).
    fn admit(&self, state: &mut State, size: u64) -> bool {
        if state.queue.len() >= self.capacity {
            return false;
        }
        let fits = match &self.budget {
            Some(budget) => budget.reserve_buffer(size, state.queue.is_empty()),
            None => true,
        };
        if fits {
            state.bytes += size;
        }
        fits
    }

    fn release(&self, state: &mut State, size: u64) {
        state.bytes -= size;
        if let Some(budget) = &self.budget {
            budget.release_buffer(size);
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
                    let held = std::mem::take(&mut state.bytes);
                    if let Some(budget) = &self.budget {
                        budget.release_buffer(held);
                    }
                    return Batch::Failed(status);
                }
                if !state.queue.is_empty() || state.dropped > 0 {
                    let n = state.queue.len().min(MAX_BATCH);
                    let messages: Vec<Outgoing> = state.queue.drain(..n).collect();
                    let taken: u64 = messages.iter().map(Outgoing::size).sum();
                    self.release(&mut state, taken);
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

impl Drop for Outbox {
    /// What the client never took goes back to the namespace's budget.
    fn drop(&mut self) {
        let held = self.state.get_mut().bytes;
        if let Some(budget) = &self.budget {
            budget.release_buffer(held);
        }
    }
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
        let outbox = Outbox::new(1, WhenFull::Wait, None);
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
        let outbox = Outbox::new(2, WhenFull::Wait, None);
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
        let outbox = Outbox::new(2, WhenFull::DropOldest, None);
        outbox.push_all(&mut (1..=5).map(numbered).collect()).await;
        assert_eq!(
            ids(outbox.next_batch().await),
            Some((vec!["4".into(), "5".into()], 3))
        );
    }

    #[tokio::test]
    async fn a_run_larger_than_a_disconnect_outbox_ends_the_stream() {
        let outbox = Outbox::new(2, WhenFull::Disconnect, None);
        outbox.push_all(&mut (1..=5).map(numbered).collect()).await;
        let end = outbox.next_batch().await;
        assert!(
            matches!(&end, Batch::Failed(status) if status.code() == tonic::Code::ResourceExhausted),
            "a subscriber that fell behind is disconnected"
        );
    }
}

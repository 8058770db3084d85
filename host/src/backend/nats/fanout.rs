//! Core NATS subscriptions shared within the process: however many local
//! plain subscribers follow a subject, Prism holds one NATS subscription for
//! it and fans each message out through an embedded [`MemBroker`]. The
//! server then sends a message to Prism once, and Prism decodes it once, not
//! once per subscriber (at 1→100 that was most of Prism's CPU).
//!
//! Queue-group subscriptions are not shared: NATS itself must pick one
//! member across every Prism process, so each stays its own NATS queue
//! subscription.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::task::AbortHandle;

use super::wire;
use crate::backend::BackendError;
use crate::backend::mem::broker::{MemBroker, Subscription};
use crate::backend::pubsub::{BrokerSubscription, Delivery, SubscribeOptions};

pub struct Fanout {
    local: Arc<MemBroker>,
    subjects: Arc<Mutex<HashMap<String, Shared>>>,
    /// Serialises first subscriptions, so two subscribers racing onto a new
    /// subject make one NATS subscription, not two.
    opening: tokio::sync::Mutex<u64>,
}

/// The NATS subscription behind a subject's local subscribers.
struct Shared {
    followers: usize,
    /// Tells this subject's pump from a later one after a re-subscribe.
    generation: u64,
    pump: AbortHandle,
}

impl Fanout {
    /// `buffer`: the smallest ring a subject's local subscribers share.
    pub fn new(name: &str, buffer: usize) -> Fanout {
        Fanout {
            local: MemBroker::new(name, buffer),
            subjects: Arc::new(Mutex::new(HashMap::new())),
            opening: tokio::sync::Mutex::new(0),
        }
    }

    /// A local subscription to `subject`, live on return. `open` makes the
    /// NATS subscription (subscribed, and confirmed by the server) when this is the subject's
    /// first local subscriber; `topic` is the pattern-mapped topic its
    /// messages carry.
    pub async fn subscribe<F, Fut>(
        &self,
        subject: &str,
        topic: &str,
        options: &SubscribeOptions,
        open: F,
    ) -> Result<Box<dyn BrokerSubscription>, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<async_nats::Subscriber, BackendError>>,
    {
        let mut generation = self.opening.lock().await;
        if let Some(followed) = self.follow(subject, options) {
            return Ok(Box::new(followed));
        }
        let subscriber = open().await?;
        *generation += 1;
        // Local first: the pump may deliver as soon as it runs.
        let local = self.local.subscribe(subject, options);
        // Spawned under the lock: a pump whose subscription ends at once
        // finds its entry when it looks, and ends its followers.
        let mut subjects = self.subjects.lock();
        let pump = tokio::spawn(pump(
            subscriber,
            subject.to_string(),
            topic.to_string(),
            self.local.clone(),
            self.subjects.clone(),
            *generation,
        ));
        subjects.insert(
            subject.to_string(),
            Shared {
                followers: 1,
                generation: *generation,
                pump: pump.abort_handle(),
            },
        );
        drop(subjects);
        Ok(Box::new(SharedSubscription {
            local,
            _follower: self.follower(subject, *generation),
        }))
    }

    /// Joins the subject's existing NATS subscription, if there is one.
    fn follow(&self, subject: &str, options: &SubscribeOptions) -> Option<SharedSubscription> {
        let mut subjects = self.subjects.lock();
        let shared = subjects.get_mut(subject)?;
        shared.followers += 1;
        let generation = shared.generation;
        // Under the lock: the last follower leaving cannot close the topic
        // between the count and the local subscription.
        let local = self.local.subscribe(subject, options);
        drop(subjects);
        Some(SharedSubscription {
            local,
            _follower: self.follower(subject, generation),
        })
    }

    fn follower(&self, subject: &str, generation: u64) -> Follower {
        Follower {
            subject: subject.to_string(),
            generation,
            local: self.local.clone(),
            subjects: self.subjects.clone(),
        }
    }
}

/// Reads the subject's NATS subscription and hands each message, decoded
/// once, to every local subscriber. Ends when the last one leaves (aborted)
/// or the connection is closed for good.
async fn pump(
    mut subscriber: async_nats::Subscriber,
    subject: String,
    topic: String,
    local: Arc<MemBroker>,
    subjects: Arc<Mutex<HashMap<String, Shared>>>,
    generation: u64,
) {
    while let Some(message) = subscriber.next().await {
        let decoded = wire::decode(
            &topic,
            message.headers.as_ref(),
            message.payload,
            wire::native_id,
            crate::clock::now_ms,
        );
        local.publish(&subject, Arc::new(decoded));
    }
    // The client is gone: end the local subscriptions (they see the end of
    // the stream, as a lone subscription would) rather than leave them waiting.
    let mut subjects = subjects.lock();
    if subjects
        .get(&subject)
        .is_some_and(|s| s.generation == generation)
    {
        subjects.remove(&subject);
        local.close(&subject);
    }
}

struct SharedSubscription {
    local: Subscription,
    _follower: Follower,
}

#[async_trait]
impl BrokerSubscription for SharedSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        self.local.next().await
    }
}

/// Counts one local subscriber of a subject; the last one out ends the
/// NATS subscription (dropping the async-nats subscriber unsubscribes).
struct Follower {
    subject: String,
    /// A follower of an ended pump must not count against its successor.
    generation: u64,
    local: Arc<MemBroker>,
    subjects: Arc<Mutex<HashMap<String, Shared>>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut subjects = self.subjects.lock();
        let Some(shared) = subjects
            .get_mut(&self.subject)
            .filter(|s| s.generation == self.generation)
        else {
            return;
        };
        shared.followers -= 1;
        if shared.followers == 0 {
            shared.pump.abort();
            subjects.remove(&self.subject);
            self.local.close(&self.subject);
        }
    }
}

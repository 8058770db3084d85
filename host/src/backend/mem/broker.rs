//! MemBroker: the embedded publish/subscribe backend (the default for
//! `prism dev`). Fan-out through one bounded ring per topic, so a slow
//! subscriber loses its oldest messages (counted) or is cut off, per its
//! policy, and a publisher never waits; consumer groups get each message on
//! exactly one member, round-robin.
//!
//! Topics here are plain strings; the Redis backend reuses this broker to fan
//! one Redis subscription out to every local subscriber of a channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::{broadcast, mpsc};

use crate::backend::BackendError;
use crate::backend::pubsub::{
    BrokerMessage, BrokerSubscription, Delivery, PubSubBackend, SlowConsumerPolicy,
    SubscribeOptions, TopicName,
};

/// The largest ring a subscriber's buffer asks for (2^20 messages).
const MAX_RING: usize = 1 << 20;

#[derive(Default)]
struct Topic {
    /// Plain subscribers share rings by size, smallest first: each joins the
    /// smallest ring that holds the buffer it asked for, so a subscriber
    /// asking for more than the topic's first one still gets it (rings are
    /// powers of two, so a topic has at most a few).
    rings: Vec<Ring>,
    /// group name -> members (bounded queues), served round-robin.
    groups: HashMap<String, Group>,
}

struct Ring {
    capacity: usize,
    sender: broadcast::Sender<Arc<BrokerMessage>>,
}

#[derive(Default)]
struct Group {
    members: Vec<(u64, mpsc::Sender<Arc<BrokerMessage>>)>,
    /// Round-robin position; atomic so publishers need only the read lock.
    next: AtomicUsize,
}

pub struct MemBroker {
    name: String,
    topics: RwLock<HashMap<String, Topic>>,
    /// The smallest ring a plain subscriber gets (more if it asks for more).
    default_buffer: usize,
    member_ids: AtomicU64,
    /// Messages a full group member could not take (counted, never blocking).
    group_drops: AtomicU64,
}

pub struct Subscription {
    inner: SubscriptionKind,
    policy: SlowConsumerPolicy,
    /// Set once Overflowed has been reported.
    ended: bool,
}

enum SubscriptionKind {
    Fanout(broadcast::Receiver<Arc<BrokerMessage>>),
    Group(mpsc::Receiver<Arc<BrokerMessage>>),
}

impl MemBroker {
    pub fn new(name: &str, default_buffer: usize) -> Arc<MemBroker> {
        Arc::new(MemBroker {
            name: name.to_string(),
            topics: RwLock::new(HashMap::new()),
            default_buffer: default_buffer.max(1),
            member_ids: AtomicU64::new(0),
            group_drops: AtomicU64::new(0),
        })
    }

    /// Messages group members could not take because their buffer was full.
    pub fn group_drops(&self) -> u64 {
        self.group_drops.load(Ordering::Relaxed)
    }

    /// Delivers to every plain subscriber of `topic` and to one member of
    /// each group; returns how many subscriptions received it. Never waits.
    pub fn publish(&self, topic_name: &str, message: Arc<BrokerMessage>) -> usize {
        let mut delivered = 0;
        let mut prune = false;
        {
            let topics = self.topics.read();
            let Some(topic) = topics.get(topic_name) else {
                return 0;
            };
            for ring in &topic.rings {
                match ring.sender.send(message.clone()) {
                    Ok(n) => delivered += n,
                    // Every subscriber of this ring left: forget it.
                    Err(_) => prune = true,
                }
            }
            for group in topic.groups.values() {
                match group.pick() {
                    Some(member) => match member.try_send(message.clone()) {
                        Ok(()) => delivered += 1,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.group_drops.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => prune = true,
                    },
                    None => prune = true,
                }
            }
        }
        if prune {
            self.prune(topic_name);
        }
        delivered
    }

    pub fn subscribe(&self, topic: &str, options: &SubscribeOptions) -> Subscription {
        let mut topics = self.topics.write();
        let entry = topics.entry(topic.to_string()).or_default();
        let inner = match &options.group {
            None => {
                // tokio rounds a ring up to a power of two anyway. The ring
                // only absorbs bursts before the subscriber's own outbox
                // (which holds its whole buffer), so it need not grow past
                // MAX_RING for a pattern that allows huge buffers.
                let wanted = options
                    .buffer
                    .clamp(self.default_buffer, MAX_RING.max(self.default_buffer))
                    .next_power_of_two();
                let at = entry.rings.partition_point(|r| r.capacity < wanted);
                let receiver = match entry.rings.get(at) {
                    Some(ring) => ring.sender.subscribe(),
                    None => {
                        let (sender, receiver) = broadcast::channel(wanted);
                        entry.rings.push(Ring {
                            capacity: wanted,
                            sender,
                        });
                        receiver
                    }
                };
                SubscriptionKind::Fanout(receiver)
            }
            Some(group) => {
                let (tx, rx) = mpsc::channel(options.buffer.max(1));
                let id = self.member_ids.fetch_add(1, Ordering::Relaxed);
                entry
                    .groups
                    .entry(group.clone())
                    .or_default()
                    .members
                    .push((id, tx));
                SubscriptionKind::Group(rx)
            }
        };
        Subscription {
            inner,
            policy: options.policy,
            ended: false,
        }
    }

    /// Ends every subscription of `topic`: each yields None, as when its
    /// source is gone (the NATS fan-out's connection closed for good).
    pub fn close(&self, topic: &str) {
        self.topics.write().remove(topic);
    }

    /// Drops closed group members, empty groups and topics nobody follows.
    fn prune(&self, topic: &str) {
        let mut topics = self.topics.write();
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
        for group in entry.groups.values_mut() {
            group.members.retain(|(_, tx)| !tx.is_closed());
        }
        entry.groups.retain(|_, g| !g.members.is_empty());
        entry.rings.retain(|r| r.sender.receiver_count() > 0);
        if entry.rings.is_empty() && entry.groups.is_empty() {
            topics.remove(topic);
        }
    }
}

impl Group {
    /// The next live member, round-robin (lock-free under the topic read lock).
    fn pick(&self) -> Option<&mpsc::Sender<Arc<BrokerMessage>>> {
        let live: Vec<&mpsc::Sender<_>> = self
            .members
            .iter()
            .map(|(_, tx)| tx)
            .filter(|tx| !tx.is_closed())
            .collect();
        if live.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        live.get(turn % live.len()).copied()
    }
}

#[async_trait]
impl PubSubBackend for MemBroker {
    fn summary(&self) -> String {
        format!("MemStore broker '{}'", self.name)
    }

    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<BrokerMessage>,
    ) -> Result<(), BackendError> {
        let scoped = topic.scoped();
        for message in messages {
            MemBroker::publish(self, &scoped, Arc::new(message));
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &TopicName,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn BrokerSubscription>, BackendError> {
        Ok(Box::new(MemBroker::subscribe(
            self,
            &topic.scoped(),
            options,
        )))
    }
}

#[async_trait]
impl BrokerSubscription for Subscription {
    async fn next(&mut self) -> Option<Delivery> {
        Subscription::next(self).await
    }
}

impl Subscription {
    /// The next delivery; None once the topic's broker is gone or after
    /// Overflowed. Cancel-safe (tokio channel receives are).
    pub async fn next(&mut self) -> Option<Delivery> {
        if self.ended {
            return None;
        }
        match &mut self.inner {
            SubscriptionKind::Group(rx) => rx.recv().await.map(Delivery::first),
            SubscriptionKind::Fanout(rx) => match rx.recv().await {
                Ok(m) => Some(Delivery::first(m)),
                Err(broadcast::error::RecvError::Lagged(n)) => match self.policy {
                    SlowConsumerPolicy::DropOldest => Some(Delivery::Dropped(n)),
                    SlowConsumerPolicy::Disconnect => {
                        self.ended = true;
                        Some(Delivery::Overflowed)
                    }
                },
                Err(broadcast::error::RecvError::Closed) => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(topic: &str, n: u32) -> Arc<BrokerMessage> {
        Arc::new(BrokerMessage {
            id: n.to_string(),
            topic: topic.into(),
            payload: Bytes::from(n.to_le_bytes().to_vec()),
            metadata: vec![("n".into(), n.to_string())],
            timestamp_ms: 0,
        })
    }

    fn plain(buffer: usize, policy: SlowConsumerPolicy) -> SubscribeOptions {
        SubscribeOptions {
            group: None,
            buffer,
            policy,
        }
    }

    /// The ids of the next `n` deliveries, which must all be messages.
    async fn ids(sub: &mut Subscription, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match sub.next().await {
                Some(Delivery::Message { message, .. }) => out.push(message.id.clone()),
                other => {
                    out.push(format!("unexpected {other:?}"));
                    break;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_message_in_order() {
        let broker = MemBroker::new("test", 1024);
        let mut subs: Vec<_> = (0..3)
            .map(|_| broker.subscribe("ns/t", &plain(1024, SlowConsumerPolicy::DropOldest)))
            .collect();
        for n in 0..100 {
            assert_eq!(broker.publish("ns/t", msg("ns/t", n)), 3);
        }
        let expected: Vec<String> = (0..100).map(|n: u32| n.to_string()).collect();
        for sub in &mut subs {
            assert_eq!(ids(sub, 100).await, expected);
        }
        assert_eq!(
            broker.publish("ns/other", msg("ns/other", 1)),
            0,
            "topics are separate"
        );
    }

    #[tokio::test]
    async fn slow_subscriber_drops_oldest_and_counts_or_is_cut_off() {
        let broker = MemBroker::new("test", 4);
        let mut lossy = broker.subscribe("t", &plain(4, SlowConsumerPolicy::DropOldest));
        let mut strict = broker.subscribe("t", &plain(4, SlowConsumerPolicy::Disconnect));
        for n in 0..10 {
            broker.publish("t", msg("t", n)); // never blocks, however far behind they are
        }
        assert_eq!(lossy.next().await, Some(Delivery::Dropped(6)));
        assert_eq!(ids(&mut lossy, 4).await, vec!["6", "7", "8", "9"]);
        assert_eq!(strict.next().await, Some(Delivery::Overflowed));
        assert_eq!(strict.next().await, None);
    }

    #[tokio::test]
    async fn a_later_subscriber_gets_the_larger_buffer_it_asked_for() {
        let broker = MemBroker::new("test", 4);
        let mut first = broker.subscribe("t", &plain(4, SlowConsumerPolicy::DropOldest));
        let mut roomy = broker.subscribe("t", &plain(16, SlowConsumerPolicy::DropOldest));
        // Below the broker's smallest ring: joins the first subscriber's.
        let mut small = broker.subscribe("t", &plain(2, SlowConsumerPolicy::DropOldest));
        assert_eq!(broker.topics.read()["t"].rings.len(), 2);
        for n in 0..10 {
            assert_eq!(broker.publish("t", msg("t", n)), 3);
        }
        let all: Vec<String> = (0..10).map(|n: u32| n.to_string()).collect();
        assert_eq!(ids(&mut roomy, 10).await, all, "its 16 hold all 10");
        for sub in [&mut first, &mut small] {
            assert_eq!(sub.next().await, Some(Delivery::Dropped(6)));
            assert_eq!(ids(sub, 4).await, vec!["6", "7", "8", "9"]);
        }
        // The roomy ring goes with its last subscriber; the topic stays.
        drop(roomy);
        assert_eq!(broker.publish("t", msg("t", 10)), 2);
        assert_eq!(broker.topics.read()["t"].rings.len(), 1);
        assert_eq!(ids(&mut first, 1).await, vec!["10"]);
    }

    #[tokio::test]
    async fn a_group_gets_each_message_once() {
        let broker = MemBroker::new("test", 16);
        let group = SubscribeOptions {
            group: Some("workers".into()),
            buffer: 100,
            policy: SlowConsumerPolicy::DropOldest,
        };
        let mut members: Vec<_> = (0..3).map(|_| broker.subscribe("t", &group)).collect();
        let mut watcher = broker.subscribe("t", &plain(100, SlowConsumerPolicy::DropOldest));
        for n in 0..30 {
            assert_eq!(
                broker.publish("t", msg("t", n)),
                2,
                "one group member plus the plain subscriber"
            );
        }
        let mut seen = Vec::new();
        for m in &mut members {
            while let Ok(Some(Delivery::Message { message: msg, .. })) =
                tokio::time::timeout(std::time::Duration::from_millis(20), m.next()).await
            {
                seen.push(msg.id.clone());
            }
        }
        seen.sort_by_key(|s| s.parse::<u32>().unwrap_or(0));
        let expected: Vec<String> = (0..30).map(|n: u32| n.to_string()).collect();
        assert_eq!(seen, expected, "each message exactly once across the group");
        assert_eq!(ids(&mut watcher, 30).await.len(), 30);
    }

    #[tokio::test]
    async fn departed_subscribers_are_pruned() {
        let broker = MemBroker::new("test", 8);
        let group = SubscribeOptions {
            group: Some("g".into()),
            buffer: 8,
            policy: SlowConsumerPolicy::DropOldest,
        };
        drop(broker.subscribe("t", &group));
        drop(broker.subscribe("t", &plain(8, SlowConsumerPolicy::DropOldest)));
        assert_eq!(broker.publish("t", msg("t", 1)), 0);
        assert!(broker.topics.read().is_empty());
    }
}

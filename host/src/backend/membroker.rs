//! MemBroker: the embedded publish/subscribe backend (the default for
//! `prism dev`). Fan-out through one bounded ring per topic, so a slow
//! subscriber loses its oldest messages (counted) or is cut off, per its
//! policy, and a publisher never waits; consumer groups get each message on
//! exactly one member, round-robin.
//!
//! Not yet wired to a gRPC service: the PubSub pattern (issue 4) builds on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::{broadcast, mpsc};

/// One published message as the broker carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerMessage {
    pub id: String,
    /// The scoped topic (`<namespace>/<topic>`).
    pub topic: String,
    pub payload: Bytes,
    pub metadata: Vec<(String, String)>,
    pub timestamp_ms: u64,
}

/// What happens when a subscriber's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Drop the oldest buffered messages and count them.
    DropOldest,
    /// End the subscription (the API layer reports RESOURCE_EXHAUSTED).
    Disconnect,
}

#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Consumer group: each message goes to one member of the group.
    pub group: Option<String>,
    /// Messages buffered for this subscriber.
    pub buffer: usize,
    pub policy: SlowConsumerPolicy,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Message(Arc<BrokerMessage>),
    /// Messages dropped since the last delivery (DropOldest policy).
    Dropped(u64),
    /// The subscriber fell behind under the Disconnect policy; nothing follows.
    Overflowed,
}

#[derive(Default)]
struct Topic {
    /// Every plain subscriber of the topic shares one ring.
    fanout: Option<broadcast::Sender<Arc<BrokerMessage>>>,
    /// group name -> members (bounded queues), served round-robin.
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Group {
    members: Vec<(u64, mpsc::Sender<Arc<BrokerMessage>>)>,
    /// Round-robin position; atomic so publishers need only the read lock.
    next: AtomicUsize,
}

pub struct MemBroker {
    topics: RwLock<HashMap<String, Topic>>,
    /// Ring size of a topic with plain subscribers (the largest buffer asked for).
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
    pub fn new(default_buffer: usize) -> Arc<MemBroker> {
        Arc::new(MemBroker {
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

    /// Delivers to every plain subscriber and to one member of each group;
    /// returns how many subscriptions received it. Never waits.
    pub fn publish(&self, message: BrokerMessage) -> usize {
        let message = Arc::new(message);
        let mut delivered = 0;
        let mut prune = false;
        {
            let topics = self.topics.read();
            let Some(topic) = topics.get(&message.topic) else {
                return 0;
            };
            if let Some(fanout) = &topic.fanout {
                match fanout.send(message.clone()) {
                    Ok(n) => delivered += n,
                    // Every plain subscriber left: forget the ring.
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
            self.prune(&message.topic);
        }
        delivered
    }

    pub fn subscribe(&self, topic: &str, options: &SubscribeOptions) -> Subscription {
        let mut topics = self.topics.write();
        let entry = topics.entry(topic.to_string()).or_default();
        let inner = match &options.group {
            None => {
                let buffer = options.buffer.max(1).max(self.default_buffer);
                let sender = entry
                    .fanout
                    .get_or_insert_with(|| broadcast::channel(buffer).0);
                SubscriptionKind::Fanout(sender.subscribe())
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
        if entry
            .fanout
            .as_ref()
            .is_some_and(|f| f.receiver_count() == 0)
        {
            entry.fanout = None;
        }
        if entry.fanout.is_none() && entry.groups.is_empty() {
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

impl Subscription {
    /// The next delivery; None once the topic's broker is gone or after Overflowed.
    pub async fn next(&mut self) -> Option<Delivery> {
        if self.ended {
            return None;
        }
        match &mut self.inner {
            SubscriptionKind::Group(rx) => rx.recv().await.map(Delivery::Message),
            SubscriptionKind::Fanout(rx) => match rx.recv().await {
                Ok(m) => Some(Delivery::Message(m)),
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

    fn msg(topic: &str, n: u32) -> BrokerMessage {
        BrokerMessage {
            id: n.to_string(),
            topic: topic.into(),
            payload: Bytes::from(n.to_le_bytes().to_vec()),
            metadata: vec![("n".into(), n.to_string())],
            timestamp_ms: 0,
        }
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
                Some(Delivery::Message(m)) => out.push(m.id.clone()),
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
        let broker = MemBroker::new(1024);
        let mut subs: Vec<_> = (0..3)
            .map(|_| broker.subscribe("ns/t", &plain(1024, SlowConsumerPolicy::DropOldest)))
            .collect();
        for n in 0..100 {
            assert_eq!(broker.publish(msg("ns/t", n)), 3);
        }
        let expected: Vec<String> = (0..100).map(|n: u32| n.to_string()).collect();
        for sub in &mut subs {
            assert_eq!(ids(sub, 100).await, expected);
        }
        assert_eq!(broker.publish(msg("ns/other", 1)), 0, "topics are separate");
    }

    #[tokio::test]
    async fn slow_subscriber_drops_oldest_and_counts_or_is_cut_off() {
        let broker = MemBroker::new(4);
        let mut lossy = broker.subscribe("t", &plain(4, SlowConsumerPolicy::DropOldest));
        let mut strict = broker.subscribe("t", &plain(4, SlowConsumerPolicy::Disconnect));
        for n in 0..10 {
            broker.publish(msg("t", n)); // never blocks, however far behind they are
        }
        assert_eq!(lossy.next().await, Some(Delivery::Dropped(6)));
        assert_eq!(ids(&mut lossy, 4).await, vec!["6", "7", "8", "9"]);
        assert_eq!(strict.next().await, Some(Delivery::Overflowed));
        assert_eq!(strict.next().await, None);
    }

    #[tokio::test]
    async fn a_group_gets_each_message_once() {
        let broker = MemBroker::new(16);
        let group = SubscribeOptions {
            group: Some("workers".into()),
            buffer: 100,
            policy: SlowConsumerPolicy::DropOldest,
        };
        let mut members: Vec<_> = (0..3).map(|_| broker.subscribe("t", &group)).collect();
        let mut watcher = broker.subscribe("t", &plain(100, SlowConsumerPolicy::DropOldest));
        for n in 0..30 {
            assert_eq!(
                broker.publish(msg("t", n)),
                2,
                "one group member plus the plain subscriber"
            );
        }
        let mut seen = Vec::new();
        for m in &mut members {
            while let Ok(Some(Delivery::Message(msg))) =
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
        let broker = MemBroker::new(8);
        let group = SubscribeOptions {
            group: Some("g".into()),
            buffer: 8,
            policy: SlowConsumerPolicy::DropOldest,
        };
        drop(broker.subscribe("t", &group));
        drop(broker.subscribe("t", &plain(8, SlowConsumerPolicy::DropOldest)));
        assert_eq!(broker.publish(msg("t", 1)), 0);
        assert!(broker.topics.read().is_empty());
    }
}

//! The table of live subscriptions (PubSub subscriptions and Registry
//! listeners alike), and the guard that takes one out of it when its
//! stream ends.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::Status;

use super::outbox::Outbox;
use crate::backend::pubsub::Acker;

/// A subscription the Unsubscribe and Ack calls can find.
pub struct Registered {
    pub namespace: String,
    /// Who opened it (see `api::caller`); None with auth off.
    pub owner: Option<String>,
    pub outbox: Arc<Outbox>,
    pub acker: Option<Arc<dyn Acker>>,
}

/// Live subscriptions by id: what Unsubscribe, Ack, Admin (a deleted
/// namespace's streams end) and shutdown reach them through.
#[derive(Default)]
pub struct Subscriptions {
    live: Mutex<HashMap<String, Arc<Registered>>>,
    /// Messages dropped for slow subscribers (drop_oldest, or dropped by
    /// the broker), by namespace, since start.
    dropped: Mutex<HashMap<String, u64>>,
    /// Set at shutdown: publish streams end between requests.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Subscriptions {
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

    /// The subscription, if it is live, belongs to `namespace` and was
    /// opened by `caller` (another principal's looks like no subscription,
    /// so its existence is not told either).
    pub fn get(&self, id: &str, namespace: &str, caller: Option<&str>) -> Option<Arc<Registered>> {
        self.live
            .lock()
            .get(id)
            .filter(|e| e.namespace == namespace && e.owner.as_deref() == caller)
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

    /// Turns true when the server shuts down (see [`Subscriptions::end_all`]).
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
    pub registry: Arc<Subscriptions>,
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

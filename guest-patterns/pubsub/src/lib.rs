//! The built-in PubSub pattern: validates topics, payloads, metadata and
//! subscription options against the namespace's limits, maps topics (an
//! optional prefix), and filters deliveries by metadata. The host holds the
//! subscriptions; the pattern only plans them, and stays off the delivery
//! path unless a subscription asked for a filter.

mod limits;

use std::cell::RefCell;

use limits::Limits;

wit_bindgen::generate!({
    path: "../../wit",
    world: "pubsub-world",
});

use exports::prism::pattern::pubsub_pattern::{
    Delivery, Guest, SlowConsumer, SubscribeRequest, SubscriptionPlan, Verdict,
};
use prism::pattern::pubsub::{self, Outgoing, Published};
use prism::pattern::types::{CapabilityError, PatternError};

thread_local! {
    // A component instance is single-threaded; settings arrive once via `configure`.
    static LIMITS: RefCell<Limits> = RefCell::new(Limits::default());
}

fn limits() -> Limits {
    LIMITS.with(|l| l.borrow().clone())
}

struct PubSubPattern;

impl Guest for PubSubPattern {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let parsed = Limits::from_settings(&settings)?;
        LIMITS.with(|l| *l.borrow_mut() = parsed);
        Ok(())
    }

    fn publish(topic: String, messages: Vec<Outgoing>) -> Result<Vec<Published>, PatternError> {
        let limits = limits();
        limits.check_topic(&topic)?;
        if messages.is_empty() {
            return Err(PatternError::InvalidArgument(
                "nothing to publish: the batch has no messages".into(),
            ));
        }
        if messages.len() > limits.max_batch {
            return Err(PatternError::InvalidArgument(format!(
                "batch has {} messages; the limit is {} (setting max_batch)",
                messages.len(),
                limits.max_batch
            )));
        }
        // Every message is checked before any is published.
        for (n, message) in messages.iter().enumerate() {
            limits
                .check_message(message)
                .map_err(|e| in_batch(e, n, messages.len()))?;
        }
        pubsub::publish(&limits.map_topic(&topic), &messages).map_err(capability)
    }

    fn subscribe(request: SubscribeRequest) -> Result<SubscriptionPlan, PatternError> {
        let limits = limits();
        limits.check_topic(&request.topic)?;
        if let Some(group) = &request.group {
            limits.check_group(group)?;
        }
        limits.check_filter(&request.filter)?;
        Ok(SubscriptionPlan {
            topic: limits.map_topic(&request.topic),
            group: request.group.clone(),
            inspect: !request.filter.is_empty(),
            buffer: limits.buffer(request.buffer)?,
            slow_consumer: request.slow_consumer.unwrap_or(limits.slow_consumer),
        })
    }

    fn deliver(request: SubscribeRequest, message: Delivery) -> Verdict {
        let matches = request
            .filter
            .iter()
            .all(|(k, v)| message.metadata.iter().any(|(mk, mv)| mk == k && mv == v));
        if matches {
            Verdict::Keep
        } else {
            Verdict::Drop
        }
    }
}

/// Names the failing message of a batch (a single publish needs no index).
fn in_batch(err: PatternError, n: usize, len: usize) -> PatternError {
    match err {
        PatternError::InvalidArgument(m) if len > 1 => {
            PatternError::InvalidArgument(format!("message {n} of the batch: {m}"))
        }
        other => other,
    }
}

fn capability(err: CapabilityError) -> PatternError {
    match err {
        CapabilityError::Unavailable(m) => PatternError::Unavailable(m),
        CapabilityError::ResourceExhausted(m) => PatternError::ResourceExhausted(m),
        CapabilityError::InvalidArgument(m) => PatternError::InvalidArgument(m),
        CapabilityError::Internal(m) => PatternError::Internal(m),
    }
}

/// Topics and keys can be long; error messages quote at most 64 characters.
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

impl SlowConsumer {
    fn parse(text: &str) -> Option<SlowConsumer> {
        match text {
            "drop_oldest" => Some(SlowConsumer::DropOldest),
            "disconnect" => Some(SlowConsumer::Disconnect),
            _ => None,
        }
    }
}

export!(PubSubPattern);

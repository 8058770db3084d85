//! Per-namespace admission: the request-rate quota (a token bucket), calls
//! in flight and open streams (subscriptions and listeners). Checked before
//! a request reaches the pattern, so a refused request does nothing; the
//! storage quotas are the backends' (they must be atomic with the write).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::Quotas;

/// A quota refused the request; the message names the quota and the field
/// that raises it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "namespace '{namespace}' {what}; retry later, or raise namespaces.{namespace}.limits.{field}"
)]
pub struct QuotaError {
    pub namespace: String,
    pub what: String,
    pub field: &'static str,
}

/// Refusals by quota, for logs and metrics.
#[derive(Debug, Default)]
pub struct Refusals {
    pub rate: AtomicU64,
    pub concurrency: AtomicU64,
    pub streams: AtomicU64,
}

pub struct Admission {
    namespace: Arc<str>,
    quotas: Quotas,
    bucket: Option<Mutex<Bucket>>,
    in_flight: AtomicU32,
    streams: AtomicU32,
    /// Bytes of messages waiting in the namespace's outboxes.
    buffered: AtomicU64,
    pub refusals: Refusals,
}

/// Tokens refill continuously at `rate` per second up to `burst`.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Admission {
    pub fn new(namespace: &str, quotas: Quotas) -> Admission {
        let bucket = quotas.requests_per_second.map(|_| {
            Mutex::new(Bucket {
                tokens: f64::from(quotas.burst.max(1)),
                last: Instant::now(),
            })
        });
        Admission {
            namespace: namespace.into(),
            quotas,
            bucket,
            in_flight: AtomicU32::new(0),
            streams: AtomicU32::new(0),
            buffered: AtomicU64::new(0),
            refusals: Refusals::default(),
        }
    }

    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Calls in flight and streams open right now.
    pub fn load(&self) -> (u32, u32) {
        (
            self.in_flight.load(Ordering::Relaxed),
            self.streams.load(Ordering::Relaxed),
        )
    }

    /// Reserves `bytes` of the namespace's `max_buffered_bytes` for a
    /// message waiting in an outbox; false when that would pass the quota,
    /// unless `always` (an empty outbox may always take one message, so
    /// every subscriber makes progress whatever the others hold).
    pub fn reserve_buffer(&self, bytes: u64, always: bool) -> bool {
        let max = self.quotas.max_buffered_bytes;
        let mut held = self.buffered.load(Ordering::Relaxed);
        loop {
            let next = held.saturating_add(bytes);
            if next > max && !always {
                return false;
            }
            match self.buffered.compare_exchange_weak(
                held,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => held = now,
            }
        }
    }

    /// Returns bytes [`Admission::reserve_buffer`] took.
    pub fn release_buffer(&self, bytes: u64) {
        self.buffered.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes waiting in the namespace's outboxes now.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }

    fn refuse(&self, counter: &AtomicU64, what: String, field: &'static str) -> QuotaError {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        // One line per power of two: a flood of refusals stays readable.
        if n.is_power_of_two() {
            tracing::warn!(namespace = %self.namespace, quota = field, refused = n, "request refused by quota");
        }
        QuotaError {
            namespace: self.namespace.to_string(),
            what,
            field,
        }
    }

    /// Takes one token of the request-rate quota.
    fn take_token(&self) -> Result<(), QuotaError> {
        let (Some(bucket), Some(rate)) = (&self.bucket, self.quotas.requests_per_second) else {
            return Ok(());
        };
        let burst = f64::from(self.quotas.burst.max(1));
        let mut b = bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * f64::from(rate);
        b.tokens = (b.tokens + refill).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        drop(b);
        Err(self.refuse(
            &self.refusals.rate,
            format!(
                "is over its requests_per_second quota ({rate}/s, burst {})",
                self.quotas.burst.max(1)
            ),
            "requests_per_second",
        ))
    }

    /// Admits one unary call: a rate token and a slot among the calls in
    /// flight, held until the returned guard drops.
    pub fn call(self: &Arc<Self>) -> Result<CallGuard, QuotaError> {
        self.take_token()?;
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(max) = self.quotas.max_concurrent_calls
            && n > max
        {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(
                &self.refusals.concurrency,
                format!("already has its max_concurrent_calls quota of {max} calls in flight"),
                "max_concurrent_calls",
            ));
        }
        Ok(CallGuard(self.clone()))
    }

    /// Admits one stream (subscription or listener): a rate token and an
    /// open-stream slot, held while the stream lives.
    pub fn stream(self: &Arc<Self>) -> Result<StreamGuard, QuotaError> {
        self.take_token()?;
        let n = self.streams.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(max) = self.quotas.max_subscriptions
            && n > max
        {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(
                &self.refusals.streams,
                format!(
                    "already has its max_subscriptions quota of {max} open subscriptions and listeners"
                ),
                "max_subscriptions",
            ));
        }
        Ok(StreamGuard(self.clone()))
    }
}

/// One admitted call; frees its slot when dropped.
pub struct CallGuard(Arc<Admission>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted stream; frees its slot when dropped.
pub struct StreamGuard(Arc<Admission>);

impl StreamGuard {
    /// The namespace's admission, whose buffer quota the stream's outbox uses.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.0
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Quotas {
        Quotas {
            requests_per_second: Some(5),
            burst: 3,
            max_concurrent_calls: Some(2),
            max_subscriptions: Some(1),
            ..Quotas::default()
        }
    }

    #[test]
    fn burst_then_refusal_names_the_quota() {
        let a = Arc::new(Admission::new("ns", quotas()));
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(a.call().map_err(|e| e.to_string()));
        }
        assert!(held.iter().all(Result::is_ok));
        // Third call: a token is left, but two calls are in flight.
        let err = a.call().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("max_concurrent_calls"), "{err}");
        held.clear();
        // The burst (3) is now spent: the rate quota refuses.
        let err = a.call().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("namespace 'ns' is over its requests_per_second quota (5/s, burst 3)"),
            "{err}"
        );
        assert!(
            err.contains("namespaces.ns.limits.requests_per_second"),
            "{err}"
        );
        assert_eq!(a.refusals.rate.load(Ordering::Relaxed), 1);
        assert_eq!(a.refusals.concurrency.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn streams_are_counted_while_open() {
        let mut q = quotas();
        q.requests_per_second = None;
        let a = Arc::new(Admission::new("ns", q));
        let first = a.stream();
        assert!(first.is_ok());
        let err = a.stream().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("max_subscriptions quota of 1"), "{err}");
        drop(first);
        assert!(a.stream().is_ok());
        assert_eq!(a.load(), (0, 0));
    }
}

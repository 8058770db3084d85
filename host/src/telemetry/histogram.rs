//! A latency histogram with fixed buckets, updated with relaxed atomics (no
//! lock on the request path), read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds: 100 µs to 10 s, the range a gateway's calls and
/// backend commands fall in (slower ones land in `+Inf`).
pub const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The same bounds in nanoseconds, compared against on every observation.
const BOUNDS_NANOS: [u64; 16] = {
    let mut nanos = [0u64; 16];
    let mut i = 0;
    while i < BOUNDS.len() {
        nanos[i] = (BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket, not cumulative; the last counts values above every bound.
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let counts: [u64; BOUNDS.len() + 1] =
            std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed));
        Snapshot {
            count: counts.iter().sum(),
            counts,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

pub struct Snapshot {
    counts: [u64; BOUNDS.len() + 1],
    pub count: u64,
    sum_nanos: u64,
}

impl Snapshot {
    /// (upper bound in seconds, observations in that bucket alone), without `+Inf`.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        BOUNDS.iter().copied().zip(self.counts.iter().copied())
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_a_bound_falls_in_that_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_nanos(1_000_001));
        let s = h.snapshot();
        let buckets: Vec<(f64, u64)> = s.buckets().collect();
        assert_eq!(buckets[3], (0.001, 1));
        assert_eq!(buckets[4], (0.0025, 1));
        assert_eq!(s.count, 2);
    }
}

//! What serves a namespace: its primary pattern version and, during a
//! rollout, a candidate — taking `canary_percent` of the calls, or mirroring
//! read calls (shadow: its writes suppressed) with results compared. A call
//! takes a `Route` when it starts, so a deploy or promote swaps versions
//! atomically and in-flight calls finish on the version they began on.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{Version, VersionInfo};
use crate::runtime::CallError;

/// Divergence samples kept per rollout.
const SAMPLES: usize = 16;
/// Mirrored reads running at once per shadow; past it a read is not
/// mirrored (a slow candidate must not pile up tasks and memory).
const MIRRORS_IN_FLIGHT: usize = 256;

/// The versions serving a namespace right now.
pub struct Deployment {
    pub primary: Arc<Version>,
    /// What Rollback returns to when there is no rollout (started again
    /// then: keeping it warm would double every namespace's instances).
    pub previous: Option<VersionInfo>,
    pub rollout: Option<Arc<Rollout>>,
}

/// A candidate version being tried.
pub struct Rollout {
    pub candidate: Arc<Version>,
    /// Share of calls (0-100) the candidate serves; 0 with shadow.
    pub canary_percent: u32,
    /// Mirror reads to the candidate and compare.
    pub shadow: bool,
    calls: AtomicU64,
    divergences: AtomicU64,
    samples: Mutex<VecDeque<String>>,
    mirrors: Arc<tokio::sync::Semaphore>,
}

/// A rollout's counters, for GetNamespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutStats {
    pub calls: u64,
    pub divergences: u64,
    pub samples: Vec<String>,
}

impl Rollout {
    pub fn new(candidate: Arc<Version>, canary_percent: u32, shadow: bool) -> Rollout {
        Rollout {
            candidate,
            canary_percent: canary_percent.min(100),
            shadow,
            calls: AtomicU64::new(0),
            divergences: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::new()),
            mirrors: Arc::new(tokio::sync::Semaphore::new(MIRRORS_IN_FLIGHT)),
        }
    }

    pub fn stats(&self) -> RolloutStats {
        RolloutStats {
            calls: self.calls.load(Ordering::Relaxed),
            divergences: self.divergences.load(Ordering::Relaxed),
            samples: self.samples.lock().iter().cloned().collect(),
        }
    }

    fn diverged(&self, sample: String) {
        self.divergences.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// Whether call `n` is the canary's: call `n` of each hundred is when
/// `⌊(k+1)·p/100⌋` passes `⌊k·p/100⌋` (k = n mod 100) — `p` turns per
/// hundred, at most one apart from an even spread, so a canary of 50 takes
/// every other call instead of fifty in a row.
pub fn canary_turn(n: u64, percent: u32) -> bool {
    let (k, p) = (n % 100, u64::from(percent.min(100)));
    (k + 1) * p / 100 > k * p / 100
}

/// The version one call runs on, and the shadow to mirror it to (reads).
pub struct Route {
    pub version: Arc<Version>,
    shadow: Option<Arc<Rollout>>,
}

impl Deployment {
    /// Chooses the version for call number `n` of the namespace: exactly
    /// `canary_percent` of every 100 calls go to the canary, spread evenly
    /// through them (see [`canary_turn`]) rather than the first N in a row.
    pub fn route(&self, n: u64) -> Route {
        match &self.rollout {
            Some(r) if !r.shadow && canary_turn(n, r.canary_percent) => {
                r.calls.fetch_add(1, Ordering::Relaxed);
                Route {
                    version: r.candidate.clone(),
                    shadow: None,
                }
            }
            Some(r) if r.shadow => Route {
                version: self.primary.clone(),
                shadow: Some(r.clone()),
            },
            _ => Route {
                version: self.primary.clone(),
                shadow: None,
            },
        }
    }
}

/// What a mirrored call's result is compared by: the value, or the error's
/// gRPC code (messages may differ between versions without diverging).
fn outcome<T: Debug>(result: &Result<T, CallError>) -> String {
    match result {
        Ok(value) => {
            let text = format!("{value:?}");
            match text.char_indices().nth(120) {
                Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
                None => text,
            }
        }
        Err(CallError::Pattern(e)) => format!("error {:?}", tonic::Status::from(e.clone()).code()),
        Err(CallError::Runtime(e)) => format!("runtime error ({e})"),
    }
}

impl Route {
    /// For a read call: runs `call` on the shadow (if any) in the
    /// background and counts a divergence when its result differs from the
    /// primary's. The caller's response never waits for the shadow.
    pub fn mirror<T, F, Fut>(&self, what: &'static str, primary: &Result<T, CallError>, call: F)
    where
        T: Debug,
        F: FnOnce(&Version) -> Option<Fut>,
        Fut: Future<Output = Result<T, CallError>> + Send + 'static,
    {
        let Some(rollout) = self.shadow.clone() else {
            return;
        };
        let Ok(permit) = rollout.mirrors.clone().try_acquire_owned() else {
            return;
        };
        let Some(future) = call(&rollout.candidate) else {
            return;
        };
        rollout.calls.fetch_add(1, Ordering::Relaxed);
        let expected = outcome(primary);
        tokio::spawn(async move {
            let got = outcome(&future.await);
            drop(permit);
            if got != expected {
                rollout.diverged(format!("{what}: primary {expected}, shadow {got}"));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::canary_turn;

    #[test]
    fn a_canary_takes_exactly_its_share_of_each_hundred_spread_evenly() {
        for percent in 0..=100u32 {
            for hundred in 0..3u64 {
                let turns: Vec<u64> = (hundred * 100..hundred * 100 + 100)
                    .filter(|n| canary_turn(*n, percent))
                    .collect();
                assert_eq!(turns.len() as u32, percent, "share of {percent}%");
                // Never more in a row than an even spread needs.
                let longest = longest_run(hundred * 100, percent);
                let allowed = if percent == 0 {
                    0
                } else {
                    u64::from(percent).div_ceil(100 - u64::from(percent).min(99))
                };
                assert!(
                    longest <= allowed.max(1) || percent == 100,
                    "{percent}%: {longest} canary calls in a row"
                );
            }
        }
        // The case the issue reported: 50 % alternates.
        let fifty: Vec<bool> = (0..6).map(|n| canary_turn(n, 50)).collect();
        assert_eq!(fifty, [false, true, false, true, false, true]);
    }

    fn longest_run(start: u64, percent: u32) -> u64 {
        let (mut longest, mut run) = (0, 0);
        for n in start..start + 100 {
            run = if canary_turn(n, percent) { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        longest
    }
}

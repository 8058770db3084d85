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

/// The version one call runs on, and the shadow to mirror it to (reads).
pub struct Route {
    pub version: Arc<Version>,
    shadow: Option<Arc<Rollout>>,
}

impl Deployment {
    /// Chooses the version for call number `n` of the namespace: the
    /// canary's share by `n % 100`, so the split is exact over every 100 calls.
    pub fn route(&self, n: u64) -> Route {
        match &self.rollout {
            Some(r)
                if !r.shadow && r.canary_percent > 0 && (n % 100) < u64::from(r.canary_percent) =>
            {
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

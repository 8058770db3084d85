//! The clocks of capability calls: how long an instance has waited on its
//! backends (so the epoch callback does not count waiting as computing), and
//! the per-slot timer that also times the calls as backend commands.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::telemetry::backends::BackendStats;

/// Time one instance has spent inside capability calls, awaiting a
/// backend. Waiting is not computing: the epoch callback subtracts it, so a
/// call that waits on a slow backend (or a loaded machine) is not taken
/// for a CPU-bound one and sent to queue for a compute slot.
#[derive(Debug, Default)]
pub struct HostClock {
    nanos: AtomicU64,
}

impl HostClock {
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// What a capability slot times its calls with: its instance's
/// [`HostClock`] (waiting is not computing) and, once the slot is bound to
/// a backend, that backend's command statistics.
#[derive(Debug, Clone, Default)]
pub struct SlotClock {
    host: Arc<HostClock>,
    backend: Option<Arc<BackendStats>>,
}

impl SlotClock {
    /// The same clock, counting on one instance's `host` clock.
    pub fn on(&self, host: Arc<HostClock>) -> SlotClock {
        SlotClock {
            host,
            backend: self.backend.clone(),
        }
    }

    /// The same clock, also timing the calls as `backend`'s commands.
    pub fn measuring(&self, backend: Arc<BackendStats>) -> SlotClock {
        SlotClock {
            host: self.host.clone(),
            backend: Some(backend),
        }
    }

    /// Runs one backend command: with traces on, inside a span naming the
    /// slot's backend (the waiting is counted by the caller's guard).
    pub async fn command<F, T, E>(&self, operation: &'static str, fut: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        crate::telemetry::traces::command(self.backend.as_deref(), operation, fut).await
    }

    /// Counts the time until the returned guard drops.
    pub fn waiting(&self) -> Waiting {
        Waiting {
            host: self.host.clone(),
            backend: self.backend.clone(),
            since: Instant::now(),
        }
    }
}

/// One capability call in progress (see [`SlotClock::waiting`]).
pub struct Waiting {
    host: Arc<HostClock>,
    backend: Option<Arc<BackendStats>>,
    since: Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let elapsed = self.since.elapsed();
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.host.nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some(backend) = &self.backend {
            backend.commands.observe(elapsed);
        }
    }
}

//! Per-backend health and command timing: the health watch records each
//! ping, and every capability call a pattern makes is timed against the
//! backend its slot is bound to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::Histogram;

#[derive(Debug, Default)]
pub struct BackendStats {
    /// The backend's name in `[backends]` and its `type` (for spans).
    name: String,
    kind: &'static str,
    up: AtomicBool,
    /// Whether any ping has completed yet (before that, `up` means nothing).
    checked: AtomicBool,
    last_ping_nanos: AtomicU64,
    /// Times the backend stopped answering pings, and started again.
    outages: AtomicU64,
    recoveries: AtomicU64,
    /// Capability calls (backend commands) made on patterns' behalf.
    pub commands: Histogram,
}

impl BackendStats {
    pub fn new(name: &str, kind: &'static str) -> BackendStats {
        BackendStats {
            name: name.to_string(),
            kind,
            ..BackendStats::default()
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// One health ping's outcome and how long it took.
    pub fn ping(&self, ok: bool, took: Duration) {
        let was_checked = self.checked.swap(true, Ordering::Relaxed);
        let was_up = self.up.swap(ok, Ordering::Relaxed);
        self.last_ping_nanos.store(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if was_checked && was_up && !ok {
            self.outages.fetch_add(1, Ordering::Relaxed);
        }
        if was_checked && !was_up && ok {
            self.recoveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// None until the first ping completes.
    pub fn up(&self) -> Option<bool> {
        self.checked
            .load(Ordering::Relaxed)
            .then(|| self.up.load(Ordering::Relaxed))
    }

    pub fn last_ping(&self) -> Duration {
        Duration::from_nanos(self.last_ping_nanos.load(Ordering::Relaxed))
    }

    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_and_recoveries_count_transitions_only() {
        let s = BackendStats::default();
        assert_eq!(s.up(), None);
        s.ping(false, Duration::from_millis(1));
        s.ping(true, Duration::from_millis(1));
        s.ping(true, Duration::from_millis(1));
        s.ping(false, Duration::from_millis(1));
        s.ping(false, Duration::from_millis(1));
        s.ping(true, Duration::from_millis(2));
        assert_eq!((s.outages(), s.recoveries()), (1, 2));
        assert_eq!(s.up(), Some(true));
        assert_eq!(s.last_ping(), Duration::from_millis(2));
    }
}

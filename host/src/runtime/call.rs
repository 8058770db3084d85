//! One call into a pattern as the epoch callback sees it: when it started,
//! its wall-clock deadline, and whether it has computed long enough to count
//! as a long call. Long calls yield to the scheduler at every epoch tick,
//! take turns on their namespace's compute slots, and may be moved to the
//! background lane (`lane.rs`); short calls never pay for any of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::UpdateDeadline;

use crate::capability::clock::HostClock;

/// Epoch ticks a call may be seen running before it counts as long (2 ticks
/// = 5 to 10 ms of running guest code; stores check the epoch at every tick).
pub const FIRST_SLICE_TICKS: u64 = 2;
/// The guest compute time that makes a call long.
const FIRST_SLICE: Duration = super::engine::EPOCH_TICK.saturating_mul(FIRST_SLICE_TICKS as u32);

/// Shared by a call's store (its epoch callback) and whoever drives the call.
pub struct CallTicket {
    /// When the deadline started counting, and the instance's [`HostClock`]
    /// total then. Reset by [`CallTicket::start_on`]: the deadline bounds
    /// the call on its instance, and waiting for the instance is bounded on
    /// its own (RESOURCE_EXHAUSTED), so time queued under load never turns
    /// into a deadline trap of a call that barely ran.
    clock: Mutex<(Instant, Duration)>,
    deadline: Duration,
    /// Set once the call has computed for its first slice.
    long: AtomicBool,
    /// Epoch callbacks this call has seen since it started on its instance.
    ticks_seen: AtomicU64,
    /// The namespace's compute slots; long calls take turns on them.
    compute: Arc<Semaphore>,
    /// The slot this call holds while it computes, if any.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl CallTicket {
    pub fn new(deadline: Duration, compute: Arc<Semaphore>) -> Arc<CallTicket> {
        Arc::new(CallTicket {
            clock: Mutex::new((Instant::now(), Duration::ZERO)),
            deadline,
            long: AtomicBool::new(false),
            ticks_seen: AtomicU64::new(0),
            compute,
            permit: Mutex::new(None),
        })
    }

    /// Starts the call on an instance whose clock reads `host`: its
    /// deadline and compute time count from now.
    pub fn start_on(&self, host: &HostClock) {
        *self.clock.lock() = (Instant::now(), host.total());
        self.ticks_seen.store(0, Ordering::Relaxed);
    }

    /// How long the call has run outside capability calls.
    fn computing(&self, host: &HostClock) -> Duration {
        let (started, host_base) = *self.clock.lock();
        let waited = host.total().saturating_sub(host_base);
        started.elapsed().saturating_sub(waited)
    }

    /// Whether the call has run past its first slice.
    pub fn is_long(&self) -> bool {
        self.long.load(Ordering::Relaxed)
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_sub(self.clock.lock().0.elapsed())
    }

    /// When the namespace already has long calls on all its compute slots,
    /// a new call waits for a slot before it starts (so a namespace cannot
    /// get around its share by sending many calls at once), and counts as
    /// long from the start, so it waits and runs in the background lane.
    /// Otherwise it starts at once and touches no lock. False when the
    /// deadline passed while waiting.
    pub async fn admit(&self) -> bool {
        if self.compute.available_permits() > 0 {
            return true;
        }
        self.long.store(true, Ordering::Relaxed);
        match tokio::time::timeout(self.remaining(), self.compute.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                *self.permit.lock() = Some(permit);
                true
            }
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// Gives up the compute slot (end of a slice, end of the call).
    pub fn release(&self) {
        self.permit.lock().take();
    }

    async fn next_slice(self: Arc<Self>) {
        // Let the namespace's next long call have the slot, and let every
        // other ready task on this thread run: a plain `Yield` is re-polled
        // at once from tokio's LIFO slot, `yield_now` defers to the others.
        self.release();
        tokio::task::yield_now().await;
        if let Ok(Ok(permit)) =
            tokio::time::timeout(self.remaining(), self.compute.clone().acquire_owned()).await
        {
            *self.permit.lock() = Some(permit);
        }
        // Past the deadline the next epoch callback traps.
    }
}

impl CallTicket {
    /// What the epoch callback does for this call on an instance whose
    /// clock reads `host`: traps past the deadline, otherwise marks the
    /// call long and yields for one slice.
    pub fn on_epoch(self: Arc<Self>, host: &HostClock) -> UpdateDeadline {
        if self.remaining().is_zero() {
            return UpdateDeadline::Interrupt;
        }
        // The ticks may have passed while the guest awaited a backend, or while
        // its thread was preempted (a busy machine): it is long only once it
        // has computed for a first slice itself, and was seen running at
        // FIRST_SLICE_TICKS epoch ticks (a thread preempted for many ticks
        // sees one callback when it resumes, a spinning guest one per tick).
        let seen = self.ticks_seen.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.is_long() && (seen < FIRST_SLICE_TICKS || self.computing(host) < FIRST_SLICE) {
            return UpdateDeadline::Continue(1);
        }
        self.long.store(true, Ordering::Relaxed);
        UpdateDeadline::YieldCustom(1, Box::pin(self.next_slice()))
    }
}

//! One call into a pattern as the epoch callback sees it: when it started,
//! its wall-clock deadline, and whether it has computed long enough to count
//! as a long call. Long calls yield to the scheduler at every epoch tick,
//! take turns on their namespace's compute slots, and may be moved to the
//! background lane (`lane.rs`); short calls never pay for any of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{StoreContextMut, UpdateDeadline};

use super::state::InstanceState;

/// Epoch ticks a call may run before it counts as long (2 ticks = 5 to 10 ms
/// of running guest code at the moment the epoch is checked).
pub const FIRST_SLICE_TICKS: u64 = 2;

/// Shared by a call's store (its epoch callback) and whoever drives the call.
pub struct CallTicket {
    started: Instant,
    deadline: Duration,
    /// Set at the first epoch callback: the call computes rather than waits.
    long: AtomicBool,
    /// The namespace's compute slots; long calls take turns on them.
    compute: Arc<Semaphore>,
    /// The slot this call holds while it computes, if any.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl CallTicket {
    pub fn new(deadline: Duration, compute: Arc<Semaphore>) -> Arc<CallTicket> {
        Arc::new(CallTicket {
            started: Instant::now(),
            deadline,
            long: AtomicBool::new(false),
            compute,
            permit: Mutex::new(None),
        })
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
        self.deadline.saturating_sub(self.started.elapsed())
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

/// The epoch callback of every store: traps past the deadline, otherwise
/// marks the call long and yields for one slice.
pub fn on_epoch(ctx: StoreContextMut<'_, InstanceState>) -> wasmtime::Result<UpdateDeadline> {
    let Some(call) = ctx.data().call.clone() else {
        // Guest code outside any call (cannot happen): stop it.
        return Ok(UpdateDeadline::Interrupt);
    };
    if call.remaining().is_zero() {
        return Ok(UpdateDeadline::Interrupt);
    }
    call.long.store(true, Ordering::Relaxed);
    Ok(UpdateDeadline::YieldCustom(1, Box::pin(call.next_slice())))
}

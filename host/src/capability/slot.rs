//! What every capability slot shares: the backend it is bound to, whether
//! its writes are suppressed (a shadow version), and the clock its calls
//! are timed by; and the one path every capability method runs through
//! (count the waiting, trace the call, map backend errors once).

use std::future::Future;
use std::sync::Arc;

use super::bindings::CapabilityError;
use super::clock::{HostClock, SlotClock, Waiting};
use super::guest_error;
use crate::backend::BackendError;
use crate::telemetry::backends::BackendStats;

/// One slot's binding to its backend (`B`: the capability's backend trait).
pub struct SlotCore<B: ?Sized> {
    pub backend: Arc<B>,
    /// A shadow version's slot: writes succeed without reaching the backend.
    pub read_only: bool,
    /// The instance's clock of time spent awaiting the backend.
    pub clock: SlotClock,
}

impl<B: ?Sized> Clone for SlotCore<B> {
    fn clone(&self) -> Self {
        SlotCore {
            backend: self.backend.clone(),
            read_only: self.read_only,
            clock: self.clock.clone(),
        }
    }
}

impl<B: ?Sized> SlotCore<B> {
    pub fn new(backend: Arc<B>) -> SlotCore<B> {
        SlotCore {
            backend,
            read_only: false,
            clock: SlotClock::default(),
        }
    }

    /// Starts one capability method: `self.core.call("kv.get").serve(async
    /// { … }).await`. Its time counts as waiting (not computing) for the
    /// epoch callback from here on, and the body runs inside its span. The
    /// call borrows nothing, so the body may use the slot mutably.
    pub fn call(&self, method: &'static str) -> Call {
        Call {
            method,
            waiting: self.clock.waiting(),
        }
    }

    /// One backend command, timed as the backend's, its failure as the guest sees it.
    pub async fn command<T>(
        &self,
        operation: &'static str,
        command: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, CapabilityError> {
        self.clock
            .command(operation, command)
            .await
            .map_err(guest_error)
    }
}

/// One capability method in progress (see [`SlotCore::call`]).
pub struct Call {
    method: &'static str,
    waiting: Waiting,
}

impl Call {
    pub async fn serve<F: Future>(self, body: F) -> F::Output {
        let _waiting = self.waiting;
        crate::telemetry::traces::capability(self.method, body).await
    }
}

/// A capability slot: the builders every slot has, over its [`SlotCore`].
pub trait Slot: Sized {
    type Backend: ?Sized;

    fn core_mut(&mut self) -> &mut SlotCore<Self::Backend>;

    /// The same slot, counting its calls' waiting on `clock` (one per instance).
    fn timed_by(mut self, clock: Arc<HostClock>) -> Self {
        let core = self.core_mut();
        core.clock = core.clock.on(clock);
        self
    }

    /// The same slot, timing its calls as commands of the backend it is bound to.
    fn measured_by(mut self, backend: Arc<BackendStats>) -> Self {
        let core = self.core_mut();
        core.clock = core.clock.measuring(backend);
        self
    }

    /// This binding with writes suppressed (see `Slots::read_only`).
    fn read_only(mut self) -> Self {
        self.core_mut().read_only = true;
        self
    }
}

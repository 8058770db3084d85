//! What each pattern instance's store holds: a WASI context with no ambient
//! authority, its memory limiter, and its capability slots.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::call::CallTicket;
use crate::capability::clock::HostClock;
use crate::capability::{Slots, SlotsView};

/// How much of a guest's stderr (panic messages) is kept for the logs.
const STDERR_CAPTURE_BYTES: usize = 4096;

/// Host-side resources (WASI streams, pollables) one instance may hold at
/// once. They live in host memory, outside `memory_limit_mib`; wasmtime's
/// default allows a million. Patterns hold a handful (the capabilities
/// have no resources); one that leaks them traps at this bound instead.
const MAX_RESOURCES: usize = 1024;

pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) slots: Slots,
    stderr: MemoryOutputPipe,
    /// The call running on this instance, for the epoch callback.
    pub(crate) call: Option<Arc<CallTicket>>,
    /// Time its capability calls spent awaiting backends.
    pub(crate) host: Arc<HostClock>,
}

impl InstanceState {
    pub fn new(memory_bytes: usize, slots: Slots) -> InstanceState {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let host = Arc::new(HostClock::default());
        // No preopens, env, args, network or stdin: the builder denies all by
        // default and we grant nothing; stdout is discarded.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        InstanceState {
            wasi,
            table,
            limiter: MemoryLimiter {
                limit: memory_bytes,
                exceeded: false,
            },
            slots: slots.timed_by(&host),
            stderr,
            call: None,
            host,
        }
    }

    /// What the guest wrote to stderr (a panic message, typically), lossy UTF-8.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }
}

/// The epoch callback of every store: the call running on it decides
/// (see [`CallTicket::on_epoch`]).
pub fn on_epoch(ctx: StoreContextMut<'_, InstanceState>) -> wasmtime::Result<UpdateDeadline> {
    let state = ctx.data();
    Ok(match state.call.clone() {
        Some(call) => call.on_epoch(&state.host),
        // Guest code outside any call (cannot happen): stop it.
        None => UpdateDeadline::Interrupt,
    })
}

impl SlotsView for InstanceState {
    fn slots(&mut self) -> &mut Slots {
        &mut self.slots
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory per instance and remembers that the cap was hit, so a
/// trap can be reported as "memory limit" rather than a bare abort.
pub struct MemoryLimiter {
    limit: usize,
    pub(crate) exceeded: bool,
}

impl MemoryLimiter {
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded",
                self.limit
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_holds_a_bounded_number_of_host_resources() {
        let mut state = InstanceState::new(1 << 20, Slots::default());
        assert_eq!(state.table.max_capacity(), MAX_RESOURCES);
        for _ in 0..MAX_RESOURCES {
            assert!(state.table.push(()).is_ok());
        }
        // One more is refused (wasmtime-wasi turns that into a trap).
        assert!(state.table.push(()).is_err());
    }
}

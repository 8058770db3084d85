//! The one wasmtime engine: pooling allocator sized from config, epoch
//! interruption driven by a ticker thread for per-call deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::RuntimeError;

/// One epoch tick; deadlines are rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Builds the engine. `max_memory_bytes` is the largest per-instance memory
/// limit of any namespace (each store's limiter enforces its own).
pub fn build_engine(total_instances: u32, max_memory_bytes: usize) -> Result<Engine, RuntimeError> {
    let mut pool = PoolingAllocationConfig::new();
    // A Rust component is a few core instances (main module plus shims).
    pool.total_component_instances(total_instances)
        .total_core_instances(total_instances.saturating_mul(8))
        .max_core_instances_per_component(16)
        .total_memories(total_instances.saturating_mul(2))
        .max_memories_per_component(2)
        .total_tables(total_instances.saturating_mul(4))
        .max_tables_per_component(8)
        .total_stacks(total_instances)
        .max_memory_size(max_memory_bytes)
        // Keep recently used slots warm so re-instantiation is cheap.
        .max_unused_warm_slots(total_instances.min(64));
    let mut config = Config::new();
    // Reserve address space per linear memory only up to the largest memory
    // limit, not the default 4 GiB: thousands of pooled slots stay within a
    // sane virtual size (bounds checks become explicit, a small cost here).
    config
        .memory_reservation(max_memory_bytes as u64)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0);
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Result<EpochTicker, RuntimeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("prism-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| {
                RuntimeError::Engine(format!("cannot start the epoch ticker thread: {e}"))
            })?;
        Ok(EpochTicker { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

//! PatternPool: the instances of one namespace's pattern. A request leases an
//! idle instance (or a fresh one), calls it with the deadline armed, and gives
//! it back only if the call returned; a trapped or cancelled call drops the
//! instance, so no half-run guest state is ever reused.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::{Store, Trap};

use super::engine::deadline_ticks;
use super::state::{InstanceState, Slots};
use super::world::PatternWorld;
use super::{RuntimeError, TrapKind};
use crate::config::InstanceLimits;

/// One live instance and the store that owns it.
pub struct Instance<W> {
    store: Store<InstanceState>,
    bindings: W,
}

/// An instance lent to one request. Dropping it without
/// [`PatternPool::settle`] (a cancelled request) discards the instance.
pub struct Lease<'a, W> {
    instance: Instance<W>,
    _permit: SemaphorePermit<'a>,
}

impl<W> Lease<'_, W> {
    /// The store, with a fresh deadline armed for one call, and the bindings.
    pub fn parts(&mut self, limits: &InstanceLimits) -> (&mut Store<InstanceState>, &W) {
        self.instance
            .store
            .set_epoch_deadline(deadline_ticks(limits.call_deadline));
        (&mut self.instance.store, &self.instance.bindings)
    }
}

pub struct PatternPool<W: PatternWorld> {
    namespace: String,
    pre: W::Pre,
    limits: InstanceLimits,
    settings: Vec<(String, String)>,
    /// The namespace's capability bindings, cloned into each new instance.
    slots: Slots,
    idle: Mutex<Vec<Instance<W>>>,
    /// One permit per instance that may run at once (`limits.max_instances`).
    permits: Semaphore,
    instantiated: AtomicU64,
    discarded: AtomicU64,
}

/// Counters for logs, tests and the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub instantiated: u64,
    pub discarded: u64,
    pub idle: usize,
}

impl<W: PatternWorld> PatternPool<W> {
    pub fn new(
        namespace: &str,
        pre: W::Pre,
        limits: InstanceLimits,
        settings: Vec<(String, String)>,
        slots: Slots,
    ) -> PatternPool<W> {
        PatternPool {
            namespace: namespace.to_string(),
            pre,
            limits,
            settings,
            slots,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(limits.max_instances as usize),
            instantiated: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> &InstanceLimits {
        &self.limits
    }

    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            instantiated: self.instantiated.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
            idle: self.idle.lock().len(),
        }
    }

    /// An instance for one call: idle if there is one, else a new one. Waits
    /// up to the call deadline when all `max_instances` are busy.
    pub async fn lease(&self) -> Result<Lease<'_, W>, RuntimeError> {
        let busy = || RuntimeError::Busy {
            namespace: self.namespace.clone(),
            max: self.limits.max_instances,
        };
        // Fast path without arming a timer; wait (bounded) only when all are busy.
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let wait = self.permits.acquire();
                match tokio::time::timeout(self.limits.call_deadline, wait).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) | Err(_) => return Err(busy()),
                }
            }
        };
        let idle = self.idle.lock().pop();
        let instance = match idle {
            Some(instance) => instance,
            None => self.instantiate().await?,
        };
        Ok(Lease {
            instance,
            _permit: permit,
        })
    }

    /// Returns the instance to the pool if the call completed, or classifies
    /// the trap and drops the instance.
    pub fn settle<T>(
        &self,
        lease: Lease<'_, W>,
        result: wasmtime::Result<T>,
    ) -> Result<T, RuntimeError> {
        match result {
            Ok(value) => {
                self.idle.lock().push(lease.instance);
                Ok(value)
            }
            Err(err) => {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                let kind = classify(&lease.instance.store, &err, &self.limits);
                let stderr = lease.instance.store.data().stderr_text();
                tracing::warn!(namespace = %self.namespace, %kind, guest_stderr = %stderr, error = %format!("{err:#}"), "pattern trapped; instance discarded");
                Err(RuntimeError::Trap {
                    namespace: self.namespace.clone(),
                    kind,
                })
            }
        }
    }

    /// Creates and configures one instance. Public so start-up can check the
    /// pattern's settings and the bench can time instantiation.
    pub async fn instantiate(&self) -> Result<Instance<W>, RuntimeError> {
        let state = InstanceState::new(self.limits.memory_bytes, self.slots.clone());
        let mut store = Store::new(W::engine(&self.pre), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(deadline_ticks(self.limits.call_deadline));
        store.epoch_deadline_trap();
        let bindings = match W::instantiate(&self.pre, &mut store).await {
            Ok(b) => b,
            Err(e)
                if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some() =>
            {
                return Err(RuntimeError::PoolExhausted);
            }
            Err(e) => {
                return Err(RuntimeError::Instantiate {
                    namespace: self.namespace.clone(),
                    reason: classify(&store, &e, &self.limits).to_string(),
                });
            }
        };
        let configured = bindings.configure(&mut store, &self.settings).await;
        match configured {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err(RuntimeError::Configure {
                    namespace: self.namespace.clone(),
                    reason,
                });
            }
            Err(e) => {
                return Err(RuntimeError::Instantiate {
                    namespace: self.namespace.clone(),
                    reason: format!("configure {}", classify(&store, &e, &self.limits)),
                });
            }
        }
        self.instantiated.fetch_add(1, Ordering::Relaxed);
        Ok(Instance { store, bindings })
    }

    /// Puts a fresh instance in the idle list (start-up warm-up).
    pub fn add_idle(&self, instance: Instance<W>) {
        self.idle.lock().push(instance);
    }
}

fn classify(
    store: &Store<InstanceState>,
    err: &wasmtime::Error,
    limits: &InstanceLimits,
) -> TrapKind {
    if store.data().limiter.exceeded {
        return TrapKind::MemoryLimit(store.data().limiter.limit());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => TrapKind::Deadline(limits.call_deadline),
        Some(Trap::UnreachableCodeReached) => {
            TrapKind::Panic(panic_message(&store.data().stderr_text()))
        }
        Some(Trap::StackOverflow) => TrapKind::StackOverflow,
        Some(trap) => TrapKind::Other(trap.to_string()),
        None => TrapKind::Other(format!("{err:#}")),
    }
}

/// The line of a Rust guest's stderr that says why it panicked.
/// Rust prints "thread '..' panicked at FILE:LINE:COL:" then the message.
fn panic_message(stderr: &str) -> String {
    let mut lines = stderr.lines();
    while let Some(line) = lines.next() {
        if let Some((_, at)) = line.split_once("panicked at ") {
            let message = lines.next().unwrap_or_default().trim();
            return format!("{message} (at {})", at.trim_end_matches(':'));
        }
    }
    String::new()
}

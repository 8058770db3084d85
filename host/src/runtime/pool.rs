//! PatternPool: the instances of one namespace's pattern. A call leases an
//! idle instance (or a fresh one), runs with its deadline armed, and gives
//! the instance back only if the call returned; a trapped or cancelled call
//! drops the instance, so no half-run guest state is ever reused. Idle
//! instances beyond the namespace's `idle_instances` are dropped once the
//! namespace has been quiet for a while, so idle tenants cost little.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Store, Trap};

use super::call::CallTicket;
use super::engine::EPOCH_TICK;
use super::lane;
use super::state::{InstanceState, on_epoch};
use super::world::PatternWorld;
use super::{CallError, RuntimeError, TrapKind};
use crate::capability::Slots;
use crate::config::InstanceLimits;
use crate::telemetry::traces;
use tracing::Instrument;

/// How long an instance may sit idle before it is dropped (down to the
/// namespace's `idle_instances`).
pub const IDLE_TTL: Duration = Duration::from_secs(30);

/// A guest future borrowing the store and bindings of one leased instance.
pub type GuestFuture<'a, T> = Pin<Box<dyn Future<Output = wasmtime::Result<T>> + Send + 'a>>;

/// One live instance and the store that owns it.
pub struct Instance<W> {
    store: Store<InstanceState>,
    bindings: W,
    last_used: Instant,
}

/// An instance lent to one call. Dropping it without [`PatternPool::settle`]
/// (a cancelled call) discards the instance.
struct Lease<W> {
    instance: Instance<W>,
    _permit: OwnedSemaphorePermit,
}

pub struct PatternPool<W: PatternWorld> {
    namespace: Arc<str>,
    pre: W::Pre,
    limits: InstanceLimits,
    settings: Vec<(String, String)>,
    /// The namespace's capability bindings, cloned into each new instance.
    slots: Slots,
    idle: Mutex<Vec<Instance<W>>>,
    /// One permit per instance that may run at once (`limits.max_instances`).
    permits: Arc<Semaphore>,
    /// Long calls take turns on these (`limits.compute_slots`).
    compute: Arc<Semaphore>,
    /// Where long calls move to; None keeps them on the request threads.
    lane: Option<Handle>,
    instantiated: AtomicU64,
    discarded: AtomicU64,
    /// Traps by kind ([`TrapKind::index`]).
    traps: [AtomicU64; TrapKind::LABELS.len()],
    long_calls: AtomicU64,
}

/// Counters for logs, tests and the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub instantiated: u64,
    pub discarded: u64,
    /// Traps by kind, in [`TrapKind::LABELS`] order.
    pub traps: [u64; TrapKind::LABELS.len()],
    pub idle: usize,
    /// Calls currently holding an instance.
    pub busy: usize,
    /// Calls that ran past their first slice.
    pub long_calls: u64,
}

impl<W: PatternWorld> PatternPool<W> {
    pub fn new(
        namespace: &str,
        pre: W::Pre,
        limits: InstanceLimits,
        settings: Vec<(String, String)>,
        slots: Slots,
        lane: Option<Handle>,
    ) -> PatternPool<W> {
        PatternPool {
            namespace: namespace.into(),
            pre,
            limits,
            settings,
            slots,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(limits.max_instances as usize)),
            compute: Arc::new(Semaphore::new(limits.compute_slots.max(1) as usize)),
            lane,
            instantiated: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            traps: Default::default(),
            long_calls: AtomicU64::new(0),
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
            traps: std::array::from_fn(|i| self.traps[i].load(Ordering::Relaxed)),
            idle: self.idle.lock().len(),
            busy: self.limits.max_instances as usize - self.permits.available_permits(),
            long_calls: self.long_calls.load(Ordering::Relaxed),
        }
    }

    /// Runs one export on an instance of this pool: lease, deadline, yields
    /// at each epoch slice, the background lane for long calls, settle.
    pub async fn call<T, F>(self: &Arc<Self>, export: &'static str, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Store<InstanceState>, &'a W) -> GuestFuture<'a, T>
            + Send
            + 'static,
    {
        let ticket = CallTicket::new(self.limits.call_deadline, self.compute.clone());
        let pool = self.clone();
        let job_ticket = ticket.clone();
        let job = async move {
            if !job_ticket.admit().await {
                return Err(RuntimeError::ComputeBusy {
                    namespace: pool.namespace.to_string(),
                    slots: pool.limits.compute_slots,
                    deadline: pool.limits.call_deadline,
                });
            }
            let mut lease = pool.lease().await?;
            let result = {
                let Instance {
                    store, bindings, ..
                } = &mut lease.instance;
                job_ticket.start_on(&store.data().host);
                store.data_mut().call = Some(job_ticket.clone());
                store.set_epoch_deadline(1);
                // Epochs interrupt guest code only; a guest blocked inside a
                // host call (a WASI sleep) is bounded by this timer instead.
                let bound = job_ticket.deadline() + 2 * EPOCH_TICK;
                match tokio::time::timeout(bound, f(store, bindings)).await {
                    Ok(result) => result,
                    Err(_) => Err(wasmtime::Error::from(Trap::Interrupt)),
                }
            };
            job_ticket.release();
            if job_ticket.is_long() {
                pool.long_calls.fetch_add(1, Ordering::Relaxed);
            }
            pool.settle(lease, result)
        };
        let job = job.instrument(traces::pattern_span(&self.namespace, export));
        Ok(lane::run(self.lane.as_ref(), ticket, job).await??)
    }

    /// An instance for one call: idle if there is one, else a new one. Waits
    /// up to the call deadline when all `max_instances` are busy.
    async fn lease(&self) -> Result<Lease<W>, RuntimeError> {
        let busy = || RuntimeError::Busy {
            namespace: self.namespace.to_string(),
            max: self.limits.max_instances,
        };
        // Fast path without arming a timer; wait (bounded) only when all are busy.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let wait = self.permits.clone().acquire_owned();
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
    fn settle<T>(&self, lease: Lease<W>, result: wasmtime::Result<T>) -> Result<T, RuntimeError> {
        let mut instance = lease.instance;
        match result {
            Ok(value) => {
                instance.store.data_mut().call = None;
                instance.last_used = Instant::now();
                self.idle.lock().push(instance);
                Ok(value)
            }
            Err(err) => {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                let kind = classify(&instance.store, &err, &self.limits);
                self.traps[kind.index()].fetch_add(1, Ordering::Relaxed);
                let stderr = instance.store.data().stderr_text();
                tracing::warn!(namespace = %self.namespace, %kind, guest_stderr = %stderr, error = %format!("{err:#}"), "pattern trapped; instance discarded");
                Err(RuntimeError::Trap {
                    namespace: self.namespace.to_string(),
                    kind,
                })
            }
        }
    }

    /// Creates and configures one instance. Public so start-up can check the
    /// pattern's settings and the bench can time instantiation.
    pub async fn instantiate(&self) -> Result<Instance<W>, RuntimeError> {
        let mut state = InstanceState::new(self.limits.memory_bytes, self.slots.clone());
        // Start functions and `configure` run guest code too: same deadline.
        state.call = Some(CallTicket::new(
            self.limits.call_deadline,
            self.compute.clone(),
        ));
        let mut store = Store::new(W::engine(&self.pre), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(on_epoch);
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
                    namespace: self.namespace.to_string(),
                    reason: classify(&store, &e, &self.limits).to_string(),
                });
            }
        };
        let configured = bindings.configure(&mut store, &self.settings).await;
        match configured {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err(RuntimeError::Configure {
                    namespace: self.namespace.to_string(),
                    reason,
                });
            }
            Err(e) => {
                return Err(RuntimeError::Instantiate {
                    namespace: self.namespace.to_string(),
                    reason: format!("configure {}", classify(&store, &e, &self.limits)),
                });
            }
        }
        store.data_mut().call = None;
        self.instantiated.fetch_add(1, Ordering::Relaxed);
        Ok(Instance {
            store,
            bindings,
            last_used: Instant::now(),
        })
    }

    /// Puts a fresh instance in the idle list (start-up warm-up).
    pub fn add_idle(&self, instance: Instance<W>) {
        self.idle.lock().push(instance);
    }

    /// Drops idle instances unused for `ttl`, keeping `idle_instances`;
    /// returns how many were dropped.
    pub fn trim(&self, ttl: Duration) -> usize {
        let keep = self.limits.idle_instances as usize;
        let dropped: Vec<Instance<W>> = {
            let mut idle = self.idle.lock();
            if idle.len() <= keep {
                return 0;
            }
            // Most recently used last (calls push on return): drop from the front.
            let stale = idle
                .iter()
                .take(idle.len() - keep)
                .take_while(|i| i.last_used.elapsed() >= ttl)
                .count();
            idle.drain(..stale).collect()
        };
        // Dropped outside the lock: freeing a store is not free.
        dropped.len()
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
        Some(Trap::MemoryOutOfBounds) => TrapKind::MemoryFault,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemStore;
    use crate::capability::bindings::Keyvalue;
    use crate::capability::kv::KvSlot;
    use crate::config::{MemStoreConfig, RuntimeConfig};
    use crate::runtime::{KeyValueRuntime, Runtime, builtin};

    const MEMORY: usize = 64 << 20;

    /// A KeyValue pool over a MemStore, as a namespace's version builds it.
    fn keyvalue_pool(
        runtime: &Runtime,
        idle_instances: u32,
    ) -> anyhow::Result<Arc<PatternPool<Keyvalue>>> {
        let bytes = builtin::builtin("keyvalue").ok_or_else(|| anyhow::anyhow!("no keyvalue"))?;
        let component = runtime.load(bytes, "keyvalue")?;
        let pre =
            runtime.prepare::<Keyvalue>(&runtime.link(&component, "keyvalue")?, "keyvalue")?;
        let limits = InstanceLimits {
            memory_bytes: MEMORY,
            call_deadline: Duration::from_secs(5),
            max_instances: 8,
            compute_slots: 1,
            idle_instances,
        };
        let slots = Slots {
            kv: KvSlot::new(
                "trim",
                MemStore::new("mem", &MemStoreConfig::default()),
                None,
                None,
            ),
            ..Slots::default()
        };
        Ok(Arc::new(PatternPool::new(
            "trim",
            pre,
            limits,
            Vec::new(),
            slots,
            None,
        )))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trim_drops_instances_idle_past_the_ttl_down_to_idle_instances() -> anyhow::Result<()> {
        let cache = tempfile::tempdir()?;
        let config = RuntimeConfig {
            total_instances: 16,
            cache_dir: Some(cache.path().to_path_buf()),
            background_threads: 0,
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::new(&config, MEMORY)?;
        let pool = keyvalue_pool(&runtime, 1)?;
        // Two instances that will go stale, then three fresh ones (the pool
        // grew under load; start-up warm-up uses the same idle list).
        for _ in 0..2 {
            pool.add_idle(pool.instantiate().await?);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        for _ in 0..3 {
            pool.add_idle(pool.instantiate().await?);
        }
        assert_eq!(pool.stats().idle, 5);

        // Nothing has been idle for the server's real TTL yet.
        assert_eq!(pool.trim(IDLE_TTL), 0);
        assert_eq!(pool.stats().idle, 5);
        // With a 100 ms TTL only the two stale ones go: the fresh ones stay
        // although there are more of them than idle_instances.
        assert_eq!(pool.trim(Duration::from_millis(100)), 2);
        assert_eq!(pool.stats().idle, 3);
        // Once those are stale too, the pool shrinks to idle_instances (1)…
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(pool.trim(Duration::from_millis(100)), 2);
        assert_eq!(pool.stats().idle, 1);
        // …and never below it.
        assert_eq!(pool.trim(Duration::ZERO), 0);
        assert_eq!(pool.stats().idle, 1);

        // The instance kept warm serves the next calls; none is created.
        let kv = KeyValueRuntime::new(pool.clone());
        kv.set("k".into(), b"v".to_vec(), None).await?;
        assert_eq!(kv.get("k".into()).await?, b"v");
        let stats = pool.stats();
        assert_eq!((stats.instantiated, stats.idle, stats.busy), (5, 1, 0));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trim_keeps_every_idle_instance_when_idle_instances_covers_them() -> anyhow::Result<()>
    {
        let cache = tempfile::tempdir()?;
        let config = RuntimeConfig {
            total_instances: 16,
            cache_dir: Some(cache.path().to_path_buf()),
            background_threads: 0,
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::new(&config, MEMORY)?;
        let pool = keyvalue_pool(&runtime, 3)?;
        for _ in 0..4 {
            pool.add_idle(pool.instantiate().await?);
        }
        // All stale: one goes, idle_instances (3) stay.
        assert_eq!(pool.trim(Duration::ZERO), 1);
        assert_eq!(pool.stats().idle, 3);
        assert_eq!(pool.trim(Duration::ZERO), 0);
        assert_eq!(pool.stats().idle, 3);
        Ok(())
    }
}

//! A namespace's pattern as the layers above see it, the same for every
//! world: [`PatternRuntime<W>`] makes typed calls on a pool of world `W`
//! (each kind adds only its typed methods, in `keyvalue.rs`, `pubsub.rs`,
//! `registry.rs`), [`Deployed`] is what a started version is whatever its
//! world, and [`Prepared`] a component checked against one of [`WORLDS`].

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

use super::pool::{GuestFuture, PatternPool, PoolStats};
use super::state::InstanceState;
use super::world::{BoxFuture, PatternWorld};
use super::{CallError, Runtime, RuntimeError};
use crate::capability::Slots;
use crate::capability::bindings::pubsub_world::PubsubWorld;
use crate::capability::bindings::registry_world::MulticastRegistry;
use crate::capability::bindings::{Keyvalue, PatternError};
use crate::config::InstanceLimits;

/// Typed calls into one version of a namespace's pattern of world `W`.
pub struct PatternRuntime<W: PatternWorld> {
    pool: Arc<PatternPool<W>>,
}

impl<W: PatternWorld> Clone for PatternRuntime<W> {
    fn clone(&self) -> Self {
        PatternRuntime {
            pool: self.pool.clone(),
        }
    }
}

impl<W: PatternWorld> PatternRuntime<W> {
    pub fn new(pool: Arc<PatternPool<W>>) -> PatternRuntime<W> {
        PatternRuntime { pool }
    }

    pub fn pool(&self) -> &Arc<PatternPool<W>> {
        &self.pool
    }

    /// Runs one export on a pooled instance; its answer as the export gives it.
    pub(super) async fn run<T, F>(&self, export: &'static str, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Store<InstanceState>, &'a W::Exports) -> GuestFuture<'a, T>
            + Send
            + 'static,
    {
        self.pool
            .call(export, move |store, bindings: &W| {
                f(store, bindings.exports())
            })
            .await
    }

    /// Runs one export that answers with the pattern's own result: its
    /// error becomes [`CallError::Pattern`].
    pub(super) async fn call<T, F>(&self, export: &'static str, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(
                &'a mut Store<InstanceState>,
                &'a W::Exports,
            ) -> GuestFuture<'a, Result<T, PatternError>>
            + Send
            + 'static,
    {
        self.run(export, f).await?.map_err(CallError::Pattern)
    }
}

/// A started version of a pattern, whatever its world: what the namespace
/// floor manages (idle trimming, warming, stats) without matching on kinds.
pub trait Deployed: Send + Sync + 'static {
    /// The kind of requests it answers ("KeyValue").
    fn kind(&self) -> &'static str;
    /// The world it serves ("keyvalue").
    fn world(&self) -> &'static str;
    /// Drops instances idle for `ttl` beyond the version's warm minimum.
    fn trim_idle(&self, ttl: Duration) -> usize;
    /// The capability bindings of its instances.
    fn slots(&self) -> &Slots;
    /// Instance counters of its pool.
    fn stats(&self) -> PoolStats;
    /// Starts instances until it has `n` (at most its `max_instances`).
    fn warm(&self, n: usize) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// For [`runtime_of`]: the typed runtime behind it.
    fn as_any(&self) -> &dyn Any;
}

impl<W: PatternWorld> Deployed for PatternRuntime<W> {
    fn kind(&self) -> &'static str {
        W::KIND
    }

    fn world(&self) -> &'static str {
        W::WORLD
    }

    fn trim_idle(&self, ttl: Duration) -> usize {
        self.pool.trim(ttl)
    }

    fn slots(&self) -> &Slots {
        self.pool.slots()
    }

    fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    fn warm(&self, n: usize) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            let stats = self.pool.stats();
            let want = n.min(self.pool.limits().max_instances as usize);
            for _ in (stats.idle + stats.busy)..want {
                self.pool.add_idle(self.pool.instantiate().await?);
            }
            Ok(())
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The typed runtime of a deployed version, if it is of world `W`.
pub fn runtime_of<W: PatternWorld>(deployed: &dyn Deployed) -> Option<PatternRuntime<W>> {
    deployed
        .as_any()
        .downcast_ref::<PatternRuntime<W>>()
        .cloned()
}

/// Everything a pool of one version is built from, besides its component.
pub struct PoolParts {
    pub limits: InstanceLimits,
    /// The namespace's settings, for the pattern's `configure` export.
    pub settings: Vec<(String, String)>,
    pub slots: Slots,
    /// Where long calls move (the background lane), if configured.
    pub lane: Option<Handle>,
}

/// A component checked against one of the worlds, ready to start versions of.
pub trait Prepared: Send + Sync + 'static {
    /// The world it fits ("keyvalue").
    fn world(&self) -> &'static str;
    /// The slots its world's patterns use, by config name.
    fn slots(&self) -> &'static [&'static str];
    /// A pool for namespace `name` with one instance started and configured.
    fn start<'a>(
        &'a self,
        name: &'a str,
        parts: PoolParts,
    ) -> BoxFuture<'a, Result<Arc<dyn Deployed>, RuntimeError>>;
}

/// A component's pre-resolved imports, checked against world `W`.
struct PreparedFor<W: PatternWorld>(W::Pre);

impl<W: PatternWorld> Prepared for PreparedFor<W> {
    fn world(&self) -> &'static str {
        W::WORLD
    }

    fn slots(&self) -> &'static [&'static str] {
        W::SLOTS
    }

    fn start<'a>(
        &'a self,
        name: &'a str,
        parts: PoolParts,
    ) -> BoxFuture<'a, Result<Arc<dyn Deployed>, RuntimeError>> {
        Box::pin(async move {
            let pool = Arc::new(PatternPool::<W>::new(
                name,
                self.0.clone(),
                parts.limits,
                parts.settings,
                parts.slots,
                parts.lane,
            ));
            pool.add_idle(pool.instantiate().await?);
            Ok(Arc::new(PatternRuntime::new(pool)) as Arc<dyn Deployed>)
        })
    }
}

type TryWorld =
    fn(&Runtime, &InstancePre<InstanceState>, &str) -> Result<Arc<dyn Prepared>, RuntimeError>;

fn try_world<W: PatternWorld>(
    runtime: &Runtime,
    pre: &InstancePre<InstanceState>,
    label: &str,
) -> Result<Arc<dyn Prepared>, RuntimeError> {
    let pre = runtime.prepare::<W>(pre, label)?;
    Ok(Arc::new(PreparedFor::<W>(pre)))
}

/// Every world Prism serves, tried in this order: a new pattern kind adds
/// its world here (and its `PatternWorld` entry in `world.rs`).
pub const WORLDS: [TryWorld; 3] = [
    try_world::<Keyvalue>,
    try_world::<PubsubWorld>,
    try_world::<MulticastRegistry>,
];

impl Runtime {
    /// Links a component and finds the world it fits, tried in turn.
    pub fn prepare_any(
        &self,
        component: &Component,
        label: &str,
    ) -> Result<Arc<dyn Prepared>, String> {
        let pre = self.link(component, label).map_err(|e| e.to_string())?;
        let mut misfits = Vec::new();
        for world in WORLDS {
            match world(self, &pre, label) {
                Ok(prepared) => return Ok(prepared),
                Err(RuntimeError::WrongWorld { world, reason, .. }) => {
                    misfits.push(format!("{world}: {reason}"))
                }
                Err(other) => misfits.push(other.to_string()),
            }
        }
        Err(format!(
            "{label} fits none of Prism's pattern worlds ({})",
            misfits.join("; ")
        ))
    }
}

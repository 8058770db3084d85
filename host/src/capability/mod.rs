//! The host side of each WIT capability: namespace scoping, hard bounds,
//! backend errors mapped once into what a guest may see, and the linker
//! glue that binds a store's slots to the generated imports (the shape of
//! wasmtime's wasi-keyvalue host crate).

pub mod bindings;
pub mod clock;
pub mod kv;
pub mod pubsub;
pub mod registry;
mod slot;

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use self::bindings::CapabilityError;
use self::clock::HostClock;
use self::kv::KvSlot;
use self::pubsub::PubSubSlot;
use self::registry::RegistrySlot;
pub use self::slot::{Slot, SlotCore};
use crate::backend::BackendError;

/// A namespace's capability bindings, one per WIT capability; a slot the
/// namespace does not bind answers "unavailable" rather than trapping.
#[derive(Clone)]
pub struct Slots {
    pub kv: KvSlot,
    /// Bound to `pubsub` (PubSub patterns) or `messaging` (registries).
    pub pubsub: PubSubSlot,
    pub registry: RegistrySlot,
}

impl Slots {
    /// The same bindings with every write suppressed (a shadow version:
    /// it reads real data, and what it would write goes nowhere).
    pub fn read_only(self) -> Slots {
        Slots {
            kv: self.kv.read_only(),
            pubsub: self.pubsub.read_only(),
            registry: self.registry.read_only(),
        }
    }
}

impl Slots {
    /// The same bindings, counting their calls' waiting on `clock` (one per instance).
    pub fn timed_by(self, clock: &Arc<HostClock>) -> Slots {
        Slots {
            kv: self.kv.timed_by(clock.clone()),
            pubsub: self.pubsub.timed_by(clock.clone()),
            registry: self.registry.timed_by(clock.clone()),
        }
    }
}

impl Default for Slots {
    fn default() -> Slots {
        Slots {
            kv: KvSlot::unbound(),
            pubsub: PubSubSlot::unbound(),
            registry: RegistrySlot::unbound(),
        }
    }
}

/// A store's state that holds a namespace's [`Slots`] (the runtime's
/// instance state): what the generated linker code projects each import onto.
pub trait SlotsView: Send + 'static {
    fn slots(&mut self) -> &mut Slots;
}

/// Projects a store's state onto its `kv` slot for the generated linker code.
struct HasKv;

impl HasData for HasKv {
    type Data<'a> = &'a mut KvSlot;
}

/// Projects a store's state onto its `pubsub` slot.
struct HasPubSub;

impl HasData for HasPubSub {
    type Data<'a> = &'a mut PubSubSlot;
}

/// Projects a store's state onto its `registry` slot.
struct HasRegistry;

impl HasData for HasRegistry {
    type Data<'a> = &'a mut RegistrySlot;
}

/// Adds every capability import (`kv`, `pubsub`, `registry` and their
/// shared `types`) to `linker`, each call served by the store's slot.
pub fn add_to_linker<T: SlotsView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    bindings::Keyvalue::add_to_linker::<_, HasKv>(linker, |s: &mut T| &mut s.slots().kv)?;
    bindings::pubsub_world::prism::pattern::pubsub::add_to_linker::<_, HasPubSub>(
        linker,
        |s: &mut T| &mut s.slots().pubsub,
    )?;
    bindings::registry_world::prism::pattern::registry::add_to_linker::<_, HasRegistry>(
        linker,
        |s: &mut T| &mut s.slots().registry,
    )
}

/// The one place backend failures become guest-visible errors. Messages are
/// built by backends to be safe to show (backend summary, no credentials).
pub fn guest_error(err: BackendError) -> CapabilityError {
    match err {
        BackendError::Unavailable { .. } => CapabilityError::Unavailable(err.to_string()),
        BackendError::CapacityExceeded(m) | BackendError::QuotaExceeded(m) => {
            CapabilityError::ResourceExhausted(m)
        }
        BackendError::InvalidArgument(m) => CapabilityError::InvalidArgument(m),
        BackendError::Internal(m) => CapabilityError::Internal(m),
    }
}

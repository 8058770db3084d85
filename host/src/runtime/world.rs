//! PatternWorld: what the instance pool needs from a pattern kind's generated
//! bindings (instantiate, configure), so one pool serves every world.

use std::future::Future;
use std::pin::Pin;

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store};

use super::bindings::pubsub_world::{PubsubWorld, PubsubWorldPre};
use super::bindings::registry_world::{MulticastRegistry, MulticastRegistryPre};
use super::bindings::{Keyvalue, KeyvaluePre};
use super::state::InstanceState;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait PatternWorld: Sized + Send + Sync + 'static {
    /// The WIT world, for errors ("prism:pattern/keyvalue").
    const NAME: &'static str;
    /// Pre-resolved imports, checked against the world's exports.
    type Pre: Clone + Send + Sync + 'static;

    fn pre(pre: InstancePre<InstanceState>) -> wasmtime::Result<Self::Pre>;
    fn engine(pre: &Self::Pre) -> &Engine;
    fn instantiate<'a>(
        pre: &'a Self::Pre,
        store: &'a mut Store<InstanceState>,
    ) -> BoxFuture<'a, wasmtime::Result<Self>>;
    /// The world's `configure` export: namespace settings, once per instance.
    /// (`&Vec` because that is what the generated bindings take.)
    #[allow(clippy::ptr_arg)]
    fn configure<'a>(
        &'a self,
        store: &'a mut Store<InstanceState>,
        settings: &'a Vec<(String, String)>,
    ) -> BoxFuture<'a, wasmtime::Result<Result<(), String>>>;
}

/// One `PatternWorld` impl per world: the generated bindings differ only in
/// names, so a macro states each world in one line instead of three copies.
macro_rules! pattern_world {
    ($world:ty, $pre:ident, $name:literal, $exports:ident) => {
        impl PatternWorld for $world {
            const NAME: &'static str = $name;
            type Pre = $pre<InstanceState>;

            fn pre(pre: InstancePre<InstanceState>) -> wasmtime::Result<Self::Pre> {
                $pre::new(pre)
            }

            fn engine(pre: &Self::Pre) -> &Engine {
                pre.engine()
            }

            fn instantiate<'a>(
                pre: &'a Self::Pre,
                store: &'a mut Store<InstanceState>,
            ) -> BoxFuture<'a, wasmtime::Result<Self>> {
                Box::pin(pre.instantiate_async(store))
            }

            fn configure<'a>(
                &'a self,
                store: &'a mut Store<InstanceState>,
                settings: &'a Vec<(String, String)>,
            ) -> BoxFuture<'a, wasmtime::Result<Result<(), String>>> {
                Box::pin(self.$exports().call_configure(store, settings))
            }
        }
    };
}

pattern_world!(
    Keyvalue,
    KeyvaluePre,
    "prism:pattern/keyvalue",
    prism_pattern_keyvalue_pattern
);
pattern_world!(
    PubsubWorld,
    PubsubWorldPre,
    "prism:pattern/pubsub-world",
    prism_pattern_pubsub_pattern
);
pattern_world!(
    MulticastRegistry,
    MulticastRegistryPre,
    "prism:pattern/multicast-registry",
    prism_pattern_registry_pattern
);

//! PatternWorld: what the instance pool needs from a pattern kind's generated
//! bindings (instantiate, configure), so one pool serves every world.

use std::future::Future;
use std::pin::Pin;

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store};

use super::state::InstanceState;
use crate::capability::bindings::exports::prism::pattern::keyvalue_pattern::Guest as KeyValueExports;
use crate::capability::bindings::pubsub_world::exports::prism::pattern::pubsub_pattern::Guest as PubSubExports;
use crate::capability::bindings::pubsub_world::{PubsubWorld, PubsubWorldPre};
use crate::capability::bindings::registry_world::exports::prism::pattern::registry_pattern::Guest as RegistryExports;
use crate::capability::bindings::registry_world::{MulticastRegistry, MulticastRegistryPre};
use crate::capability::bindings::{Keyvalue, KeyvaluePre};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait PatternWorld: Sized + Send + Sync + 'static {
    /// The WIT world, for errors ("prism:pattern/keyvalue").
    const NAME: &'static str;
    /// The world as Admin and `namespace get` name it ("keyvalue").
    const WORLD: &'static str;
    /// The kind of requests it answers, for errors and logs ("KeyValue").
    const KIND: &'static str;
    /// Its capability slots, by config name.
    const SLOTS: &'static [&'static str];
    /// Pre-resolved imports, checked against the world's exports.
    type Pre: Clone + Send + Sync + 'static;
    /// The generated handle on the pattern's exports.
    type Exports: Send + Sync + 'static;

    /// The pattern's exports on an instance of this world.
    fn exports(&self) -> &Self::Exports;

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
/// names, so a macro states each world in one entry instead of copies.
/// A new pattern kind adds its entry here and to [`super::pattern::WORLDS`].
macro_rules! pattern_world {
    ($world:ty, $pre:ident, $name:literal, $short:literal, $kind:literal, $slots:expr, $exports:ident: $guest:ty) => {
        impl PatternWorld for $world {
            const NAME: &'static str = $name;
            const WORLD: &'static str = $short;
            const KIND: &'static str = $kind;
            const SLOTS: &'static [&'static str] = $slots;
            type Pre = $pre<InstanceState>;
            type Exports = $guest;

            fn exports(&self) -> &$guest {
                self.$exports()
            }

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
    "keyvalue",
    "KeyValue",
    &["kv"],
    prism_pattern_keyvalue_pattern: KeyValueExports
);
pattern_world!(
    PubsubWorld,
    PubsubWorldPre,
    "prism:pattern/pubsub-world",
    "pubsub",
    "PubSub",
    &["pubsub"],
    prism_pattern_pubsub_pattern: PubSubExports
);
pattern_world!(
    MulticastRegistry,
    MulticastRegistryPre,
    "prism:pattern/multicast-registry",
    "multicast-registry",
    "Registry",
    &["registry", "messaging"],
    prism_pattern_registry_pattern: RegistryExports
);

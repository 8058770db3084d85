//! PatternWorld: what the instance pool needs from a pattern kind's generated
//! bindings (instantiate, configure), so one pool serves every world.

use std::future::Future;
use std::pin::Pin;

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store};

use super::bindings::pubsub_world::{PubsubWorld, PubsubWorldPre};
use super::bindings::{Keyvalue, KeyvaluePre};
use super::state::InstanceState;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait PatternWorld: Sized + Send + Sync + 'static {
    /// The WIT world, for errors ("prism:pattern/keyvalue").
    const NAME: &'static str;
    /// Pre-resolved imports, checked against the world's exports.
    type Pre: Send + Sync + 'static;

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

impl PatternWorld for Keyvalue {
    const NAME: &'static str = "prism:pattern/keyvalue";
    type Pre = KeyvaluePre<InstanceState>;

    fn pre(pre: InstancePre<InstanceState>) -> wasmtime::Result<Self::Pre> {
        KeyvaluePre::new(pre)
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
        Box::pin(
            self.prism_pattern_keyvalue_pattern()
                .call_configure(store, settings),
        )
    }
}

impl PatternWorld for PubsubWorld {
    const NAME: &'static str = "prism:pattern/pubsub-world";
    type Pre = PubsubWorldPre<InstanceState>;

    fn pre(pre: InstancePre<InstanceState>) -> wasmtime::Result<Self::Pre> {
        PubsubWorldPre::new(pre)
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
        Box::pin(
            self.prism_pattern_pubsub_pattern()
                .call_configure(store, settings),
        )
    }
}

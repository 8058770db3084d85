//! Host-side bindings generated from `wit/`: one module per pattern world.
//! The keyvalue world's bindings sit at the top level; the pubsub world
//! reuses their `types` so both worlds share one error type.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "keyvalue",
    imports: { default: async },
    exports: { default: async },
});

pub use exports::prism::pattern::keyvalue_pattern::{ScanRequest, ScanResult};
pub use prism::pattern::kv::Entry;
pub use prism::pattern::types::{CapabilityError, PatternError};

pub mod pubsub_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pubsub-world",
        imports: { default: async },
        exports: { default: async },
        with: {
            "prism:pattern/types": super::prism::pattern::types,
        },
    });

    pub use exports::prism::pattern::pubsub_pattern::{
        Delivery, SlowConsumer, SubscribeRequest, SubscriptionPlan, Verdict,
    };
    pub use prism::pattern::pubsub::{Outgoing, Published};
}

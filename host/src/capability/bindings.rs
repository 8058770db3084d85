//! Host-side bindings generated from `wit/`: one module per pattern world.
//! The keyvalue world's bindings sit at the top level; the other worlds
//! reuse its `types` (one error type everywhere), and the registry world
//! reuses the pubsub world's `pubsub` interface (one host implementation).

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
    pub use prism::pattern::pubsub::{Addressed, Outgoing, Published};
}

pub mod registry_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "multicast-registry",
        imports: { default: async },
        exports: { default: async },
        with: {
            "prism:pattern/types": super::prism::pattern::types,
            "prism:pattern/pubsub": super::pubsub_world::prism::pattern::pubsub,
        },
    });

    pub use exports::prism::pattern::registry_pattern::{
        DeliveryFailure, EnumerateRequest, EnumerateResult, ListenPlan, MulticastRequest,
        MulticastResult, RegisterOutcome, RegisterRequest,
    };
    pub use prism::pattern::registry::{IdentityRecord, Listing, NewIdentity, PutOutcome};
}

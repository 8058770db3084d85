//! Host-side bindings generated from `wit/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "keyvalue",
    imports: { default: async },
    exports: { default: async },
});

pub use exports::prism::pattern::keyvalue_pattern::{ScanRequest, ScanResult};
pub use prism::pattern::kv::Entry;
pub use prism::pattern::types::{CapabilityError, PatternError};

//! Patterns compiled by `build.rs` and embedded in the binary.

use std::path::Path;

const KEYVALUE: &[u8] = include_bytes!(concat!(env!("PRISM_GUEST_ARTIFACTS"), "/keyvalue.wasm"));
const PUBSUB: &[u8] = include_bytes!(concat!(env!("PRISM_GUEST_ARTIFACTS"), "/pubsub.wasm"));
const MULTICAST_REGISTRY: &[u8] = include_bytes!(concat!(
    env!("PRISM_GUEST_ARTIFACTS"),
    "/multicast_registry.wasm"
));

/// The names `pattern = "..."` accepts besides a `.wasm` path.
pub const NAMES: &[&str] = &["keyvalue", "pubsub", "multicast-registry"];

/// A built-in pattern's component bytes.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    match name {
        "keyvalue" => Some(KEYVALUE),
        "pubsub" => Some(PUBSUB),
        "multicast-registry" => Some(MULTICAST_REGISTRY),
        _ => None,
    }
}

/// Where `build.rs` left every guest component, the test fixtures included.
pub fn artifact_dir() -> &'static Path {
    Path::new(env!("PRISM_GUEST_ARTIFACTS"))
}

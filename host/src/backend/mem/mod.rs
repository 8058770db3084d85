//! The embedded backends (`type = "memstore"`, the `prism dev` default):
//! every capability in this process's memory.

pub mod broker;
pub mod registry;
pub mod store;

pub use broker::MemBroker;
pub use registry::MemRegistry;
pub use store::MemStore;

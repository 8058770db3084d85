//! The NATS backend (`type = "nats"`): PubSub on core NATS (at-most-once) or
//! JetStream (at-least-once).

pub mod broker;
pub mod control;
mod fanout;
pub mod wire;

pub use broker::NatsBroker;

//! Prism: a data access gateway. gRPC requests are served per namespace by a
//! sandboxed WebAssembly pattern that reaches data only through capability
//! imports the host binds to a backend.
//!
//! The request path, top to bottom: [`api`] (gRPC) → [`namespace`] lookup →
//! [`runtime`] (a pooled wasm instance of the namespace's pattern) →
//! [`capability`] (namespace scoping) → [`backend`].

pub mod admin;
pub mod admission;
pub mod api;
pub mod auth;
pub mod backend;
pub mod capability;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod namespace;
pub mod patterns;
pub mod pb;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod text;

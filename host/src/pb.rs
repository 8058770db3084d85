//! Code generated from `proto/` (the client-facing gRPC API).

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    // Messages and clients.
    tonic::include_proto!("prism.v1");
    // Servers (see build.rs: their delivery streams send `api::frame` frames).
    include!(concat!(env!("OUT_DIR"), "/server/prism.v1.rs"));
}

pub use v1::*;

/// Encoded descriptors of every Prism proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("prism_descriptor");

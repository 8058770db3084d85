//! Build script: generates client-only gRPC stubs from the repository's
//! `proto/` (KeyValue, PubSub, Registry, Admin), so this crate needs neither the
//! `prism` host crate nor a system `protoc`.

use std::env;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("../../proto");
    let protos = [
        proto_dir.join("prism/v1/keyvalue.proto"),
        proto_dir.join("prism/v1/pubsub.proto"),
        proto_dir.join("prism/v1/registry.proto"),
        proto_dir.join("prism/v1/admin.proto"),
    ];
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let mut config = tonic_prost_build::Config::new();
    // A vendored protoc keeps "only Rust installed" enough to build; PROTOC overrides it.
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // Payloads and values as `Bytes`: a retried call resends them by
        // reference count, and received payloads are not copied again.
        .bytes(".")
        .compile_with_config(config, &protos, &[proto_dir])?;
    Ok(())
}

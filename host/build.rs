//! Build script: generates the gRPC code from `proto/` and compiles the
//! guest patterns to wasm32-wasip2 components, so `prism` is one file.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

type BuildResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> BuildResult {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or("host/ has no parent directory")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    compile_protos(root, &out_dir)?;
    build_guest_patterns(root)?;
    Ok(())
}

fn compile_protos(root: &Path, out_dir: &Path) -> BuildResult {
    let proto_dir = root.join("proto");
    // The guests' rerun lines below would otherwise be the only ones: a
    // changed .proto must regenerate the code too.
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let protos = [
        proto_dir.join("prism/v1/keyvalue.proto"),
        proto_dir.join("prism/v1/pubsub.proto"),
        proto_dir.join("prism/v1/registry.proto"),
        proto_dir.join("prism/v1/admin.proto"),
    ];
    let mut config = tonic_prost_build::Config::new();
    // A vendored protoc keeps "only Rust installed" enough to build; PROTOC overrides it.
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    config.protoc_executable(protoc.clone());
    // Messages and clients: the types clients, tests and the bench decode.
    tonic_prost_build::configure()
        .build_server(false)
        // A delivered payload is the broker's `Bytes`, shared by every
        // subscriber's frame instead of copied into each.
        .bytes(".prism.v1.Message.payload")
        .file_descriptor_set_path(out_dir.join("prism_descriptor.bin"))
        .compile_with_config(config, &protos, std::slice::from_ref(&proto_dir))?;
    // The servers, over those same types, except that the delivery streams
    // send frames encoded straight from the broker's messages
    // (`api/frame.rs`), which decode as these two responses.
    let servers = out_dir.join("server");
    std::fs::create_dir_all(&servers)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&servers)
        // Undecodable requests are INVALID_ARGUMENT, not tonic's INTERNAL.
        .codec_path("crate::api::codec::PrismCodec")
        .extern_path(".prism.v1", "crate::pb::v1")
        .extern_path(
            ".prism.v1.SubscribeResponse",
            "crate::delivery::DeliveryFrame",
        )
        .extern_path(".prism.v1.ListenResponse", "crate::delivery::DeliveryFrame")
        .compile_with_config(config, &protos, &[proto_dir])?;
    Ok(())
}

/// Runs one nested `cargo build` over the guest-patterns workspace (built-in
/// patterns and the sandbox-test fixtures) with its own target dir, the way
/// wasmtime's test-programs do, and tells the crate where the `.wasm` files are.
fn build_guest_patterns(root: &Path) -> BuildResult {
    let guests = root.join("guest-patterns");
    println!("cargo:rerun-if-changed={}", guests.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    let target_dir = root.join("target").join("guest-patterns");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args([
            "build",
            "--release",
            "--workspace",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    // Settings meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_FEATURE_") || key.starts_with("CARGO_CFG_") {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!(
            "building guest patterns failed ({status}); is the wasm32-wasip2 target installed? \
             run `rustup target add wasm32-wasip2` (the justfile recipes do this)"
        )
        .into());
    }
    let artifacts = target_dir.join("wasm32-wasip2").join("release");
    println!(
        "cargo:rustc-env=PRISM_GUEST_ARTIFACTS={}",
        artifacts.display()
    );
    Ok(())
}

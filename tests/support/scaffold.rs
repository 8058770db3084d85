//! Patterns made the way users make them: `prism pattern new` (the real
//! binary), an edit, `cargo build --release --target wasm32-wasip2`. They
//! build in the guest-patterns target dir with its lockfile, so the
//! dependencies the built-in patterns compiled are reused.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::binary;

/// One scaffold build at a time (they share a target dir).
static BUILDING: Mutex<()> = Mutex::const_new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Scaffolds `name` for `world`, applies `edit` to its `src/lib.rs`, builds
/// it and returns the component's path.
pub async fn build(
    name: &str,
    world: &str,
    edit: impl FnOnce(String) -> String,
) -> anyhow::Result<PathBuf> {
    let _one = BUILDING.lock().await;
    let dir = root().join("target").join("scaffolds").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let dir_arg = dir.display().to_string();
    let created = binary::run(
        &["pattern", "new", name, "--world", world, "--dir", &dir_arg],
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        created.status.success(),
        "prism pattern new failed: {}",
        created.stderr
    );
    let lib = dir.join("src").join("lib.rs");
    let source = std::fs::read_to_string(&lib)?;
    std::fs::write(&lib, edit(source))?;
    std::fs::copy(
        root().join("guest-patterns").join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )?;
    let target = root().join("target").join("guest-patterns");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        .stdin(Stdio::null());
    // The test's own build settings must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
    ] {
        cargo.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(600), cargo.output())
        .await
        .context("building the scaffold took over 10 minutes")??;
    ensure!(
        out.status.success(),
        "cargo build of the scaffold {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    ensure!(wasm.exists(), "{} was not built", wasm.display());
    Ok(wasm)
}

/// The KeyValue scaffold with its version constant set to `version`.
pub async fn keyvalue(name: &str, version: &str) -> anyhow::Result<PathBuf> {
    build(name, "keyvalue", |src| {
        src.replace(
            "const VERSION: &str = \"0.1.0\";",
            &format!("const VERSION: &str = \"{version}\";"),
        )
    })
    .await
}

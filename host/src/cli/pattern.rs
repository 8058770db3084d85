//! `prism pattern new` (a guest crate scaffolded against Prism's WIT) and
//! `prism pattern check` (which world a component fits, what it imports).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use prism::config::RuntimeConfig;
use prism::namespace::inspect;
use prism::patterns::digest_of;
use prism::runtime::Runtime;

#[derive(Subcommand)]
pub enum PatternCommand {
    /// Create a Rust crate for a new pattern, against Prism's WIT.
    New {
        /// The crate's name (letters, digits, '-' and '_').
        name: String,
        /// The world the pattern serves.
        #[arg(long, value_enum)]
        world: World,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Report the world a component fits, its imports and size.
    Check {
        /// The component (.wasm).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum World {
    Keyvalue,
    Pubsub,
}

impl World {
    /// The WIT world's name.
    fn wit(self) -> &'static str {
        match self {
            World::Keyvalue => "keyvalue",
            World::Pubsub => "pubsub-world",
        }
    }

    fn template(self) -> &'static str {
        match self {
            World::Keyvalue => include_str!("templates/keyvalue.rs.tmpl"),
            World::Pubsub => include_str!("templates/pubsub.rs.tmpl"),
        }
    }
}

/// Prism's WIT package, as the scaffold's `wit/` gets it.
const WIT: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("kv.wit", include_str!("../../../wit/kv.wit")),
    ("keyvalue.wit", include_str!("../../../wit/keyvalue.wit")),
    ("pubsub.wit", include_str!("../../../wit/pubsub.wit")),
    ("registry.wit", include_str!("../../../wit/registry.wit")),
];

pub fn run(command: PatternCommand) -> ExitCode {
    let result = match command {
        PatternCommand::New { name, world, dir } => scaffold(&name, world, dir),
        PatternCommand::Check { file, json } => return check(&file, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prism pattern: {e}");
            ExitCode::FAILURE
        }
    }
}

fn scaffold(name: &str, world: World, dir: Option<PathBuf>) -> Result<(), String> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if !valid {
        return Err(format!(
            "'{name}' is not a crate name: start with a letter; use letters, digits, '-' and '_'"
        ));
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(format!(
            "{} exists and is not empty; choose another --dir",
            dir.display()
        ));
    }
    let crate_name = name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{world}}", world.wit())
    };
    let write = |path: &Path, text: &str| -> Result<(), String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(
        &dir.join("Cargo.toml"),
        &fill(include_str!("templates/Cargo.toml.tmpl")),
    )?;
    write(&dir.join("src/lib.rs"), &fill(world.template()))?;
    write(
        &dir.join("README.md"),
        &fill(include_str!("templates/README.md.tmpl")),
    )?;
    write(&dir.join(".gitignore"), "/target\n")?;
    for (file, text) in WIT {
        write(&dir.join("wit").join(file), text)?;
    }
    println!(
        "created {} ({} pattern)\n\nnext:\n  cd {}\n  rustup target add wasm32-wasip2\n  cargo build --release --target wasm32-wasip2\n  prism pattern check target/wasm32-wasip2/release/{crate_name}.wasm",
        dir.display(),
        world.wit(),
        dir.display()
    );
    Ok(())
}

fn check(file: &Path, json: bool) -> ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("prism pattern check: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    // A small engine: checking needs compiling, not serving.
    let config = RuntimeConfig {
        total_instances: 4,
        background_threads: 0,
        ..RuntimeConfig::default()
    };
    let runtime = match Runtime::new(&config, 64 << 20) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("prism pattern check: {e}");
            return ExitCode::FAILURE;
        }
    };
    let label = file.display().to_string();
    let digest = digest_of(&bytes);
    match inspect(&runtime, &bytes, &label) {
        Ok((world, imports)) => {
            if json {
                let out = serde_json::json!({
                    "file": label,
                    "fits": true,
                    "world": world,
                    "size": bytes.len(),
                    "digest": format!("sha256:{digest}"),
                    "imports": imports,
                });
                println!("{out}");
            } else {
                println!("{label}: fits the {world} world");
                println!("  size     {} bytes", bytes.len());
                println!("  digest   sha256:{digest}");
                println!("  imports  {}", imports.join("\n           "));
            }
            ExitCode::SUCCESS
        }
        Err(reason) => {
            if json {
                let out = serde_json::json!({
                    "file": label,
                    "fits": false,
                    "size": bytes.len(),
                    "digest": format!("sha256:{digest}"),
                    "reason": reason,
                });
                println!("{out}");
            } else {
                eprintln!("{label}: does not fit a Prism pattern world: {reason}");
            }
            ExitCode::FAILURE
        }
    }
}

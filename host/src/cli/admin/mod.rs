//! `prism admin …`: the Admin API from a terminal, as readable tables or
//! `--json`. The token comes from `--token`, `$PRISM_TOKEN`, or the token
//! file `prism-login` keeps (`--token-file`, `$PRISM_TOKEN_FILE`,
//! `~/.prism/token`).

mod connect;
mod render;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use prism::config::DEFAULT_LISTEN;
use prism::pb;
use serde_json::{Value, json};

use connect::{Client, connect};
use render::{
    ago, namespace_json, pattern_json, pattern_label, print_table, rollout_text, short,
    show_namespace, show_pattern,
};

/// Uploads are sent in chunks of this size.
const CHUNK: usize = 256 * 1024;

#[derive(Args)]
pub struct AdminArgs {
    /// The Prism server (host:port or http://host:port); default $PRISM_ADDR or 127.0.0.1:8980.
    #[arg(long, global = true, env = "PRISM_ADDR", default_value = DEFAULT_LISTEN)]
    addr: String,
    /// A bearer token with an admin grant (default $PRISM_TOKEN, else the token file).
    #[arg(long, global = true, env = "PRISM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The token file prism-login writes (default $PRISM_TOKEN_FILE or ~/.prism/token).
    #[arg(long, global = true, env = "PRISM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Namespaces: list, get, create, update, delete.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Upload a pattern component (checked, precompiled, kept by digest).
    Upload {
        file: PathBuf,
        /// A name for listings (default: the file name).
        #[arg(long)]
        label: Option<String>,
    },
    /// Built-in patterns and the uploads your namespaces may deploy.
    Patterns,
    /// Take your namespaces out of an upload's scope (the component goes
    /// once no namespace is left); refused while one of them deploys it.
    DeletePattern {
        /// sha256:<hex>, the hex digest, or a unique prefix of 8+ hex digits.
        digest: String,
    },
    /// Serve a namespace with a pattern: FILE.wasm (uploaded first), an
    /// uploaded pattern's digest, or a built-in name. Swaps with no failed
    /// request; in-flight calls finish on the old version.
    Deploy {
        namespace: String,
        pattern: String,
        /// Route this share of calls (1-100) to the new version; then promote or roll back.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        canary: Option<u32>,
        /// Mirror reads to the new version (its writes suppressed) and count divergences.
        #[arg(long, conflicts_with = "canary")]
        shadow: bool,
    },
    /// Make the canary or shadow version the namespace's pattern.
    Promote { namespace: String },
    /// Drop the canary or shadow; without one, return to the previous version.
    Rollback { namespace: String },
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// Every namespace you administer.
    List,
    /// One namespace: pattern, rollout, slots and their health, limits, counters.
    Get { name: String },
    /// Create a namespace.
    Create {
        name: String,
        /// A built-in pattern (keyvalue, pubsub, multicast-registry), FILE.wasm (uploaded first) or a digest.
        #[arg(long)]
        pattern: String,
        /// SLOT=BACKEND, e.g. kv=mem (repeat for each slot).
        #[arg(long = "slot", value_parser = key_value)]
        slots: Vec<(String, String)>,
        /// KEY=VALUE handed to the pattern's configure (repeatable).
        #[arg(long = "setting", value_parser = key_value)]
        settings: Vec<(String, String)>,
        /// FIELD=N of [namespaces.X.limits], e.g. max_instances=8 (repeatable).
        #[arg(long = "limit", value_parser = key_value)]
        limits: Vec<(String, String)>,
    },
    /// Change slots, settings or limits (each merges unless --replace-…).
    Update {
        name: String,
        #[arg(long = "slot", value_parser = key_value)]
        slots: Vec<(String, String)>,
        #[arg(long = "setting", value_parser = key_value)]
        settings: Vec<(String, String)>,
        #[arg(long = "limit", value_parser = key_value)]
        limits: Vec<(String, String)>,
        /// The given slots replace all of them.
        #[arg(long)]
        replace_slots: bool,
        /// The given settings replace all of them.
        #[arg(long)]
        replace_settings: bool,
        /// The given limits replace all of them.
        #[arg(long)]
        replace_limits: bool,
    },
    /// Delete a namespace: new calls get NOT_FOUND, its streams end.
    Delete {
        name: String,
        /// Also remove its keys and identities from its backends.
        #[arg(long)]
        purge: bool,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

pub fn run(args: AdminArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prism admin: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => {
                    eprintln!("prism admin: {} ({:?})", status.message(), status.code())
                }
                None => eprintln!("prism admin: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn execute(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let json_out = args.json;
    match args.command {
        AdminCommand::Namespace(NamespaceCommand::List) => {
            let list = client
                .list_namespaces(pb::ListNamespacesRequest {})
                .await?
                .into_inner();
            if json_out {
                let all: Vec<Value> = list.namespaces.iter().map(namespace_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_table(
                    &[
                        "NAME",
                        "PATTERN",
                        "WORLD",
                        "ROLLOUT",
                        "SOURCE",
                        "INSTANCES",
                        "CALLS",
                        "TRAPS",
                    ],
                    list.namespaces.iter().map(|n| {
                        let p = n.pattern.clone().unwrap_or_default();
                        vec![
                            n.name.clone(),
                            pattern_label(&p),
                            p.world.clone(),
                            rollout_text(n.rollout.as_ref()),
                            n.source.clone(),
                            n.live_instances.to_string(),
                            n.calls.to_string(),
                            n.traps.to_string(),
                        ]
                    }),
                );
            }
        }
        AdminCommand::Namespace(NamespaceCommand::Get { name }) => {
            let info = client
                .get_namespace(pb::GetNamespaceRequest { name })
                .await?
                .into_inner();
            show_namespace(&info, json_out)?;
        }
        AdminCommand::Namespace(NamespaceCommand::Create {
            name,
            pattern,
            slots,
            settings,
            limits,
        }) => {
            let pattern = resolve_pattern(&mut client, &pattern, json_out).await?;
            let info = client
                .create_namespace(pb::CreateNamespaceRequest {
                    name,
                    pattern,
                    slots: slots.into_iter().collect(),
                    settings: settings.into_iter().collect(),
                    limits: limits.into_iter().collect(),
                })
                .await?
                .into_inner();
            show_namespace(&info, json_out)?;
        }
        AdminCommand::Namespace(NamespaceCommand::Update {
            name,
            slots,
            settings,
            limits,
            replace_slots,
            replace_settings,
            replace_limits,
        }) => {
            let info = client
                .update_namespace(pb::UpdateNamespaceRequest {
                    name,
                    slots: slots.into_iter().collect(),
                    replace_slots,
                    settings: settings.into_iter().collect(),
                    replace_settings,
                    limits: limits.into_iter().collect(),
                    replace_limits,
                })
                .await?
                .into_inner();
            show_namespace(&info, json_out)?;
        }
        AdminCommand::Namespace(NamespaceCommand::Delete { name, purge }) => {
            let done = client
                .delete_namespace(pb::DeleteNamespaceRequest {
                    name: name.clone(),
                    purge,
                })
                .await?
                .into_inner();
            if json_out {
                println!("{}", json!({"deleted": name, "purged": done.purged}));
            } else if purge {
                println!(
                    "deleted namespace {name} (purged {} keys/identities)",
                    done.purged
                );
            } else {
                println!("deleted namespace {name} (its data stays on its backends)");
            }
        }
        AdminCommand::Upload { file, label } => {
            let info = upload(&mut client, &file, label).await?;
            show_pattern(&info, json_out)?;
        }
        AdminCommand::DeletePattern { digest } => {
            let done = client
                .delete_pattern(pb::DeletePatternRequest {
                    digest: digest.clone(),
                })
                .await?
                .into_inner();
            if json_out {
                println!("{}", json!({"pattern": digest, "removed": done.removed}));
            } else if done.removed {
                println!("deleted pattern {digest}");
            } else {
                println!(
                    "pattern {digest} is no longer your namespaces' (other namespaces' admins uploaded it too, so it stays for them)"
                );
            }
        }
        AdminCommand::Patterns => {
            let list = client
                .list_patterns(pb::ListPatternsRequest {})
                .await?
                .into_inner();
            if json_out {
                let all: Vec<Value> = list.patterns.iter().map(pattern_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_table(
                    &["DIGEST", "LABEL", "WORLD", "SIZE", "UPLOADED", "SCOPE"],
                    list.patterns.iter().map(|p| {
                        vec![
                            short(&p.digest).to_string(),
                            p.label.clone(),
                            p.world.clone(),
                            p.size.to_string(),
                            if p.uploaded_at_ms == 0 {
                                "built-in".to_string()
                            } else {
                                ago(p.uploaded_at_ms)
                            },
                            p.scope.join(","),
                        ]
                    }),
                );
            }
        }
        AdminCommand::Deploy {
            namespace,
            pattern,
            canary,
            shadow,
        } => {
            let pattern = resolve_pattern(&mut client, &pattern, json_out).await?;
            let started = std::time::Instant::now();
            let info = client
                .deploy_pattern(pb::DeployPatternRequest {
                    namespace,
                    pattern,
                    canary_percent: canary.unwrap_or(0),
                    shadow,
                })
                .await?
                .into_inner();
            if !json_out {
                println!(
                    "deployed in {:.0} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
            show_namespace(&info, json_out)?;
        }
        AdminCommand::Promote { namespace } => {
            let info = client
                .promote(pb::PromoteRequest { namespace })
                .await?
                .into_inner();
            show_namespace(&info, json_out)?;
        }
        AdminCommand::Rollback { namespace } => {
            let info = client
                .rollback(pb::RollbackRequest { namespace })
                .await?
                .into_inner();
            show_namespace(&info, json_out)?;
        }
    }
    Ok(())
}

/// A `.wasm` path is uploaded and replaced by its digest; anything else
/// (a built-in name, a digest) is passed on.
async fn resolve_pattern(
    client: &mut Client,
    pattern: &str,
    quiet: bool,
) -> anyhow::Result<String> {
    if !pattern.ends_with(".wasm") {
        return Ok(pattern.to_string());
    }
    let info = upload(client, Path::new(pattern), None).await?;
    if !quiet {
        println!(
            "uploaded {pattern}: {} world, sha256:{}",
            info.world,
            short(&info.digest)
        );
    }
    Ok(format!("sha256:{}", info.digest))
}

async fn upload(
    client: &mut Client,
    file: &Path,
    label: Option<String>,
) -> anyhow::Result<pb::PatternInfo> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let label = label.unwrap_or_else(|| {
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut chunks: Vec<pb::UploadPatternChunk> = bytes
        .chunks(CHUNK)
        .map(|data| pb::UploadPatternChunk {
            label: String::new(),
            data: data.to_vec(),
        })
        .collect();
    match chunks.first_mut() {
        Some(first) => first.label = label,
        None => bail!("{} is empty", file.display()),
    }
    Ok(client
        .upload_pattern(tokio_stream::iter(chunks))
        .await?
        .into_inner())
}

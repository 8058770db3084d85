//! `prism admin …`: the Admin API from a terminal, as readable tables or
//! `--json`. The token comes from `--token`, `$PRISM_TOKEN`, or the token
//! file `prism-login` keeps (`--token-file`, `$PRISM_TOKEN_FILE`,
//! `~/.prism/token`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use prism::config::DEFAULT_LISTEN;
use prism::pb;
use prism::pb::admin_client::AdminClient;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

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
    /// Built-in and uploaded patterns.
    Patterns,
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

/// A digest's first 16 characters, as listings show it (whatever the server sent).
fn short(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
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

/// Puts the token (if any) on every call.
type Bearer =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

/// The client, with the token (if any) on every call.
type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

async fn connect(args: &AdminArgs) -> anyhow::Result<Client> {
    let url = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let channel = Channel::from_shared(url.clone())
        .with_context(|| format!("'{}' is not an address", args.addr))?
        .connect()
        .await
        .with_context(|| format!("cannot reach Prism at {url}"))?;
    let token = token(args)?;
    let header = match token {
        Some(t) => Some(
            MetadataValue::try_from(format!("Bearer {t}"))
                .context("the token has characters a header cannot carry")?,
        ),
        None => None,
    };
    let interceptor: Bearer = Box::new(move |mut request: tonic::Request<()>| {
        if let Some(h) = &header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    });
    Ok(AdminClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// `--token`/`$PRISM_TOKEN`, else the freshest unexpired token in the token file.
fn token(args: &AdminArgs) -> anyhow::Result<Option<String>> {
    if let Some(t) = args.token.as_ref().filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    let path = match &args.token_file {
        Some(p) => p.clone(),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".prism").join("token"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.token_file.is_none() => {
            return Ok(None);
        }
        Err(e) => bail!("cannot read the token file {}: {e}", path.display()),
    };
    Ok(token_from_file(&text))
}

/// A token file is prism-login's JSON (`{"version":1,"tokens":{issuer:{client:{access_token,expires_at}}}}`)
/// or a bare token.
fn token_from_file(text: &str) -> Option<String> {
    let Ok(json) = serde_json::from_str::<Value>(text) else {
        let bare = text.trim();
        return (!bare.is_empty()).then(|| bare.to_string());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    json.get("tokens")?
        .as_object()?
        .values()
        .filter_map(Value::as_object)
        .flat_map(|clients| clients.values())
        .filter_map(|t| {
            let token = t.get("access_token")?.as_str()?.to_string();
            let expires = t
                .get("expires_at")
                .and_then(Value::as_f64)
                .unwrap_or(f64::MAX);
            (expires > now).then_some((expires, token))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, token)| token)
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
                    &["DIGEST", "LABEL", "WORLD", "SIZE", "UPLOADED"],
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

fn pattern_label(p: &pb::PatternVersion) -> String {
    p.label.clone()
}

fn rollout_text(r: Option<&pb::Rollout>) -> String {
    match r {
        None => "-".into(),
        Some(r) => {
            let who = r.candidate.as_ref().map(pattern_label).unwrap_or_default();
            if r.shadow {
                format!(
                    "shadow {who} ({} mirrored, {} diverged)",
                    r.calls, r.divergences
                )
            } else {
                format!("canary {}% {who} ({} calls)", r.canary_percent, r.calls)
            }
        }
    }
}

fn version_json(v: &pb::PatternVersion) -> Value {
    json!({"label": v.label, "digest": v.digest, "world": v.world})
}

fn namespace_json(n: &pb::NamespaceInfo) -> Value {
    json!({
        "name": n.name,
        "pattern": n.pattern.as_ref().map(version_json),
        "previous": n.previous.as_ref().map(version_json),
        "rollout": n.rollout.as_ref().map(|r| json!({
            "candidate": r.candidate.as_ref().map(version_json),
            "canary_percent": r.canary_percent,
            "shadow": r.shadow,
            "calls": r.calls,
            "divergences": r.divergences,
            "divergence_samples": r.divergence_samples,
        })),
        "slots": n.slots.iter().map(|s| json!({
            "slot": s.slot, "backend": s.backend, "summary": s.summary, "healthy": s.healthy,
        })).collect::<Vec<_>>(),
        "settings": sorted(&n.settings),
        "limits": sorted(&n.limits),
        "source": n.source,
        "live_instances": n.live_instances,
        "idle_instances": n.idle_instances,
        "calls": n.calls,
        "traps": n.traps,
        "in_flight": n.in_flight,
    })
}

fn sorted(map: &HashMap<String, String>) -> serde_json::Map<String, Value> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort();
    entries
        .into_iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

fn pattern_json(p: &pb::PatternInfo) -> Value {
    json!({
        "digest": p.digest,
        "label": p.label,
        "world": p.world,
        "size": p.size,
        "uploaded_at_ms": p.uploaded_at_ms,
        "imports": p.imports,
    })
}

fn show_pattern(p: &pb::PatternInfo, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&pattern_json(p))?);
        return Ok(());
    }
    println!("pattern  {}", p.label);
    println!("digest   sha256:{}", p.digest);
    println!("world    {}", p.world);
    println!("size     {} bytes", p.size);
    println!("imports  {}", p.imports.join("\n         "));
    Ok(())
}

fn show_namespace(n: &pb::NamespaceInfo, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&namespace_json(n))?);
        return Ok(());
    }
    let p = n.pattern.clone().unwrap_or_default();
    println!("namespace  {}  ({})", n.name, n.source);
    println!(
        "pattern    {}  [{}]  sha256:{}",
        p.label,
        p.world,
        short(&p.digest)
    );
    if let Some(prev) = &n.previous {
        println!("previous   {}  sha256:{}", prev.label, short(&prev.digest));
    }
    if let Some(r) = &n.rollout {
        println!("rollout    {}", rollout_text(Some(r)));
        for sample in &r.divergence_samples {
            println!("           diverged: {sample}");
        }
    }
    for s in &n.slots {
        println!(
            "slot       {} -> {} ({}) {}",
            s.slot,
            s.backend,
            s.summary,
            if s.healthy {
                "healthy"
            } else {
                "NOT ANSWERING"
            }
        );
    }
    for (k, v) in sorted(&n.settings) {
        println!("setting    {k} = {}", v.as_str().unwrap_or_default());
    }
    let limits: Vec<String> = sorted(&n.limits)
        .into_iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    println!("limits     {}", limits.join(" "));
    println!(
        "instances  {} live ({} idle); calls {}; traps {}; in flight {}",
        n.live_instances, n.idle_instances, n.calls, n.traps, n.in_flight
    );
    Ok(())
}

fn ago(at_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = now.saturating_sub(at_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn print_table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_in_either_shape() {
        assert_eq!(
            token_from_file(" abc.def.ghi \n"),
            Some("abc.def.ghi".into())
        );
        let file = r#"{"version":1,"tokens":{"http://i":{"cli":{"access_token":"old","expires_at":1},
            "web":{"access_token":"fresh","expires_at":99999999999}}}}"#;
        assert_eq!(token_from_file(file), Some("fresh".into()));
        let expired =
            r#"{"version":1,"tokens":{"http://i":{"cli":{"access_token":"old","expires_at":1}}}}"#;
        assert_eq!(token_from_file(expired), None);
    }
}

//! How `prism admin` shows what the server answered: tables for people,
//! `--json` for scripts.

use std::collections::HashMap;

use prism::pb;
use serde_json::{Value, json};

/// A digest's first 16 characters, as listings show it (whatever the server sent).
pub(super) fn short(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
}

pub(super) fn pattern_label(p: &pb::PatternVersion) -> String {
    p.label.clone()
}

pub(super) fn rollout_text(r: Option<&pb::Rollout>) -> String {
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

pub(super) fn namespace_json(n: &pb::NamespaceInfo) -> Value {
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
        "revision": n.revision,
        "stale": n.stale,
        "replicas": n.replicas.iter().map(|r| json!({
            "replica": r.replica, "address": r.address, "revision": r.revision,
            "stale": r.stale, "reported_at_ms": r.reported_at_ms,
        })).collect::<Vec<_>>(),
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

pub(super) fn pattern_json(p: &pb::PatternInfo) -> Value {
    json!({
        "digest": p.digest,
        "label": p.label,
        "world": p.world,
        "size": p.size,
        "uploaded_at_ms": p.uploaded_at_ms,
        "imports": p.imports,
        "scope": p.scope,
    })
}

pub(super) fn show_pattern(p: &pb::PatternInfo, json_out: bool) -> anyhow::Result<()> {
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

pub(super) fn show_namespace(n: &pb::NamespaceInfo, json_out: bool) -> anyhow::Result<()> {
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
    if n.revision > 0 || !n.replicas.is_empty() || n.stale {
        let newest = n
            .replicas
            .iter()
            .map(|r| r.revision)
            .max()
            .unwrap_or(0)
            .max(n.revision);
        let stale = if n.stale {
            "  STALE: the control store does not confirm it; serving the last state applied"
        } else {
            ""
        };
        println!("revision   {} (this replica){stale}", n.revision);
        for r in &n.replicas {
            let place = if r.address.is_empty() {
                String::new()
            } else {
                format!(" at {}", r.address)
            };
            let behind = if r.revision < newest { "  BEHIND" } else { "" };
            let stale = if r.stale { "  STALE" } else { "" };
            println!(
                "replica    {}{place}: revision {} ({}){behind}{stale}",
                r.replica,
                r.revision,
                ago(r.reported_at_ms)
            );
        }
    }
    Ok(())
}

pub(super) fn ago(at_ms: u64) -> String {
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

pub(super) fn print_table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
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

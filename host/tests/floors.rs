//! The house's floors hold: every `crate::…`, `super::…` and `self::…`
//! path in `host/src` names a module on a lower floor (or its own module),
//! and no two files import each other in a circle. The floors are the
//! table in ARCHITECTURE.md ("Floors"), so the map and this check cannot
//! drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The floors, top first: each line names the modules (first path segment
/// under `crate::`) on it, read from the fenced `floors` block of the map.
fn floors(architecture: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let start = architecture
        .find("```floors")
        .context("ARCHITECTURE.md has no ```floors block")?;
    let body = &architecture[start + "```floors".len()..];
    let end = body.find("```").context("the floors block is not closed")?;
    Ok(body[..end]
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect())
}

/// One source file: its path under `src/` and its module path.
struct Source {
    file: String,
    module: Vec<String>,
    text: String,
}

fn sources(src: &Path) -> anyhow::Result<Vec<Source>> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            entries.push(entry?.path());
        }
        entries.sort();
        for path in entries {
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let file = path.strip_prefix(src)?.to_string_lossy().replace('\\', "/");
            let mut module: Vec<String> = file
                .trim_end_matches(".rs")
                .split('/')
                .map(str::to_string)
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            let text = fs::read_to_string(&path)?;
            out.push(Source { file, module, text });
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// The code without comments and string literals (doc links and messages
/// name paths that are no imports).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |n| n + 2);
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let open = rest.find('"').unwrap_or(0);
            let hashes = &rest[1..open];
            let close = format!("\"{hashes}");
            i += open
                + 1
                + rest[open + 1..]
                    .find(&close)
                    .map_or(rest.len(), |n| n + close.len());
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            i += (j + 1).min(rest.len());
            out.push_str("\"\"");
        } else if rest.starts_with("'\"'") {
            i += 3;
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every path a file names that starts at `crate`, `super` or `self`
/// (use trees expanded), as written.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = after.find(';') else { break };
        expand(after[..end].trim(), &[], &mut out);
    }
    // Paths in expressions and types (`crate::clock::now_ms()`).
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(root) {
            let start = from + at;
            from = start + root.len();
            let before = code[..start].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = code[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(
                path.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
    }
    out.retain(|p: &Vec<String>| {
        matches!(
            p.first().map(String::as_str),
            Some("crate" | "super" | "self")
        )
    });
    out
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap_or(tree);
            let mut full = prefix.to_vec();
            full.extend(
                path.split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && *s != "*")
                    .map(str::to_string),
            );
            out.push(full);
        }
        Some(open) => {
            let head = &tree[..open];
            let close = tree.rfind('}').unwrap_or(tree.len());
            let inner = &tree[open + 1..close];
            let mut next = prefix.to_vec();
            next.extend(
                head.split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            let mut depth = 0;
            let mut part = String::new();
            for c in inner.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&part, &next, out);
                        part.clear();
                        continue;
                    }
                    _ => {}
                }
                part.push(c);
            }
            expand(&part, &next, out);
        }
    }
}

/// The crate-absolute module path a written path starts from.
fn absolute(path: &[String], module: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The file a module path lives in: the longest prefix that is a file.
fn file_of(path: &[String], files: &BTreeSet<String>) -> Option<String> {
    for n in (0..=path.len()).rev() {
        let stem = path[..n].join("/");
        let candidates = if stem.is_empty() {
            vec!["lib.rs".to_string()]
        } else {
            vec![format!("{stem}.rs"), format!("{stem}/mod.rs")]
        };
        if let Some(found) = candidates.into_iter().find(|c| files.contains(c)) {
            return Some(found);
        }
    }
    None
}

/// What is wrong with the house in `src`, laid out in `floors`: imports
/// up (or sideways into another module of the same floor), and circles of
/// files. Empty when the floors hold.
fn violations(src: &Path, floors: &[Vec<String>]) -> anyhow::Result<Vec<String>> {
    let floor_of: BTreeMap<&str, usize> = floors
        .iter()
        .enumerate()
        .flat_map(|(n, names)| names.iter().map(move |m| (m.as_str(), floors.len() - n)))
        .collect();
    let sources = sources(src)?;
    let files: BTreeSet<String> = sources.iter().map(|s| s.file.clone()).collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in &sources {
        // The binary's files (main.rs, cli/) are the top floor, built on the library.
        if source.file == "main.rs" || source.file.starts_with("cli/") {
            continue;
        }
        let Some(own) = source.module.first() else {
            continue;
        };
        let Some(&own_floor) = floor_of.get(own.as_str()) else {
            problems.push(format!(
                "{}: module '{own}' is on no floor of ARCHITECTURE.md",
                source.file
            ));
            continue;
        };
        // Unit tests at the foot of a file (`use super::*`) are not the house.
        let text = match source.text.find("#[cfg(test)]\nmod tests") {
            Some(at) => &source.text[..at],
            None => &source.text[..],
        };
        let code = code_of(text);
        for written in paths_in(&code) {
            let Some(path) = absolute(&written, &source.module) else {
                continue;
            };
            let Some(target) = path.first() else { continue };
            if target != own {
                match floor_of.get(target.as_str()) {
                    Some(&floor) if floor < own_floor => {}
                    Some(_) => problems.push(format!(
                        "{}: imports {} ({} is not on a floor below {})",
                        source.file,
                        written.join("::"),
                        target,
                        own
                    )),
                    // Not a module of ours (an extern crate through `crate::`? none).
                    None => {}
                }
            }
            // A module's face re-exporting its own children is no dependency.
            let is_reexport_of_child = path.len() > source.module.len()
                && path[..source.module.len()] == source.module[..]
                && (source.file.ends_with("mod.rs") || source.file == "lib.rs");
            if let Some(file) = file_of(&path, &files)
                && file != source.file
                && !is_reexport_of_child
            {
                edges.entry(source.file.clone()).or_default().insert(file);
            }
        }
    }
    for circle in circles(&edges) {
        problems.push(format!("import circle: {}", circle.join(" -> ")));
    }
    Ok(problems)
}

/// Files that import each other in a loop (strongly connected, more than one).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges
        .keys()
        .chain(edges.values().flat_map(|v| v.iter()))
        .collect();
    let reaches = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for next in edges.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reaches(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) || !reach[n].contains(*n) {
            continue;
        }
        let members: Vec<String> = nodes
            .iter()
            .filter(|m| reach[n].contains(**m) && reach[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        done.extend(members.iter().cloned());
        out.push(members);
    }
    out
}

fn host_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_import_in_host_src_goes_down_a_floor_and_no_files_import_in_a_circle() -> anyhow::Result<()>
{
    let map = fs::read_to_string(host_dir().join("../ARCHITECTURE.md"))?;
    let problems = violations(&host_dir().join("src"), &floors(&map)?)?;
    anyhow::ensure!(
        problems.is_empty(),
        "the floors do not hold:\n{}",
        problems.join("\n")
    );
    Ok(())
}

/// A throwaway tree of source files.
fn tree(files: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (path, text) in files {
        let path = dir.path().join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, text)?;
    }
    Ok(dir)
}

fn two_floors() -> anyhow::Result<Vec<Vec<String>>> {
    floors("```floors\napi\nbackend\n```")
}

#[test]
fn an_import_from_a_lower_floor_to_a_higher_one_is_caught() -> anyhow::Result<()> {
    let dir = tree(&[
        ("lib.rs", "pub mod api;\npub mod backend;\n"),
        ("api.rs", "use crate::backend::Store;\n"),
        (
            "backend/mod.rs",
            "mod redis;\n// use crate::api::Nothing; (a comment is no import)\n",
        ),
        (
            "backend/redis.rs",
            "use crate::{api::{Service, other::Thing}, backend::Store};\n",
        ),
    ])?;
    let problems = violations(dir.path(), &two_floors()?)?;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .all(|p| p.starts_with("backend/redis.rs: imports crate::api::")),
        "{problems:?}"
    );
    Ok(())
}

#[test]
fn a_path_in_an_expression_counts_and_a_string_does_not() -> anyhow::Result<()> {
    let dir = tree(&[
        ("lib.rs", "pub mod api;\npub mod backend;\n"),
        ("api.rs", ""),
        (
            "backend.rs",
            "fn f() { crate::api::call(); let s = \"crate::api::x\"; }\n",
        ),
    ])?;
    let problems = violations(dir.path(), &two_floors()?)?;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("crate::api::call"), "{problems:?}");
    Ok(())
}

#[test]
fn files_that_import_each_other_are_a_circle_even_on_one_floor() -> anyhow::Result<()> {
    let dir = tree(&[
        ("lib.rs", "pub mod api;\npub mod backend;\n"),
        ("api/mod.rs", "pub mod a;\npub mod b;\npub use a::A;\n"),
        ("api/a.rs", "use super::b::B;\n"),
        ("api/b.rs", "use super::a::A;\n"),
        ("backend.rs", ""),
    ])?;
    let problems = violations(dir.path(), &two_floors()?)?;
    assert_eq!(
        problems,
        vec!["import circle: api/a.rs -> api/b.rs".to_string()]
    );
    Ok(())
}

#[test]
fn a_module_face_re_exporting_its_children_is_no_circle() -> anyhow::Result<()> {
    let dir = tree(&[
        ("lib.rs", "pub mod api;\npub mod backend;\n"),
        ("api/mod.rs", "mod a;\npub use a::A;\npub struct Error;\n"),
        ("api/a.rs", "use super::Error;\npub struct A;\n"),
        ("backend.rs", ""),
    ])?;
    assert_eq!(
        violations(dir.path(), &two_floors()?)?,
        Vec::<String>::new()
    );
    Ok(())
}

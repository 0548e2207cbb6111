//! The house rules, checked against the code: every `crate::`/`super::` path in `src/` points
//! down the layers ARCHITECTURE.md names, never up, and no two files import each other, even
//! through others. A new upward import fails this test with the file, line and rule it breaks.
//!
//! Reads source text only (no build of the crate is involved): comments and string literals
//! are blanked first, then every path that starts with `crate::`, `super::` or `self::` is
//! resolved to the module it names, grouped imports (`use crate::{a::B, c}`) included.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// From the top floor down. A module belongs to the first layer with a matching prefix: a
/// prefix `a::b` matches `a::b` and everything under it; `*::routes` matches any handler file.
const LAYERS: &[(&str, &[&str])] = &[
    ("main", &["main"]),
    ("cli", &["cli", "client"]),
    ("startup", &["startup"]),
    ("route table", &["api"]),
    ("handlers", &["*::routes"]),
    ("gRPC edge", &["grpc"]),
    ("HTTP edge", &["http"]),
    ("jobs", &["jobs"]),
    ("inference", &["inference"]),
    ("usage", &["usage"]),
    ("registry", &["registry"]),
    ("identity", &["identity"]),
    ("audit", &["audit"]),
    ("tenancy", &["tenancy"]),
    (
        "floor",
        &[
            "burnml", "config", "crypto", "data", "db", "error", "memory", "metrics", "net", "page", "redis_store", "request", "telemetry",
            "tls", "",
        ],
    ),
];

/// What a module must not know, beyond the layer order: rust-analyzer-style invariants that
/// the order alone would allow.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    ("audit", "identity", "audit records actors, never users, roles or principals"),
    ("audit", "registry", "audit knows nothing of models"),
    ("tenancy", "audit", "tenants know nothing of the audit log"),
    ("usage", "identity", "usage is counted per tenant and model version, never per user or key"),
    ("burnml", "", "Burn models know nothing of Tessera: no crate:: imports at all"),
    ("data", "", "CSV scanning knows nothing of Tessera: no crate:: imports at all"),
];

/// HTTP's own error and response types: only `http/`, `error.rs`, the handlers (`routes.rs`) and
/// the gRPC edge (`grpc/`, which turns refusals into gRPC status)
/// may name them. Everything else returns its domain's error, converted at the edge.
const EDGE_ONLY: &[&str] = &["ApiError", "ResponseError", "HttpResponse"];

#[derive(Debug)]
struct Import {
    file: PathBuf,
    line: usize,
    from: Vec<String>,
    to: Vec<String>,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
}

/// The module a file defines: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` is the root.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir()).expect("a file under src/");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The text with comments, string and char literals replaced by spaces (newlines kept, so
/// line numbers stay right).
fn blank(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let keep = |c: u8| if c == b'\n' { '\n' } else { ' ' };
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                out.push(' ');
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < bytes.len() {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(keep(bytes[i]));
                    i += 1;
                }
            }
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") || rest.starts_with(b"br\"") || rest.starts_with(b"br#\"") {
            let start = i;
            while bytes[i] != b'"' {
                i += 1;
            }
            let hashes = bytes[start..i].iter().filter(|&&b| b == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            out.push_str(&" ".repeat(i - start + 1));
            i += 1;
            while i < bytes.len() && !bytes[i..].starts_with(&close) {
                out.push(keep(bytes[i]));
                i += 1;
            }
            out.push_str(&" ".repeat(close.len().min(bytes.len() - i)));
            i += close.len();
        } else if bytes[i] == b'"' {
            out.push(' ');
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < bytes.len() {
                    out.push(keep(bytes[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if bytes[i] == b'\'' && is_char_literal(rest) {
            let len = rest[1..].iter().position(|&b| b == b'\'').map_or(1, |p| p + 2);
            out.push_str(&" ".repeat(len));
            i += len;
        } else {
            let ch = text[i..].chars().next().expect("inside the text");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// `'a'`, `'\n'`, `'\u{1F600}'`: a char literal, not a lifetime.
fn is_char_literal(rest: &[u8]) -> bool {
    match rest.get(1) {
        Some(b'\\') => true,
        Some(_) => {
            let width = std::str::from_utf8(&rest[1..]).ok().and_then(|s| s.chars().next()).map_or(1, char::len_utf8);
            rest.get(1 + width) == Some(&b'\'')
        }
        None => false,
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The path that starts at `at` (`a::b::{c, d::e}`), as every full path it names.
fn paths_at(text: &[u8], mut at: usize) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    loop {
        let start = at;
        while at < text.len() && is_ident(text[at]) {
            at += 1;
        }
        if at > start {
            prefix.push(String::from_utf8_lossy(&text[start..at]).into_owned());
        }
        if text[at..].starts_with(b"::") {
            at += 2;
            while text.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
                at += 1;
            }
            if text.get(at) == Some(&b'{') {
                return group(text, at + 1).into_iter().map(|tail| prefix.iter().cloned().chain(tail).collect()).collect();
            }
            continue;
        }
        return vec![prefix];
    }
}

/// The paths of a `{…}` group starting after its brace.
fn group(text: &[u8], start: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut at = start;
    loop {
        while text.get(at).is_some_and(|b| b.is_ascii_whitespace() || *b == b',') {
            at += 1;
        }
        match text.get(at) {
            None | Some(b'}') => return out,
            Some(b) if is_ident(*b) => {
                let paths = paths_at(text, at);
                out.extend(paths);
                // Skip to the end of this item: past a nested group, up to `,` or `}`.
                let mut depth = 0;
                while let Some(&b) = text.get(at) {
                    match b {
                        b'{' => depth += 1,
                        b'}' if depth == 0 => break,
                        b'}' => depth -= 1,
                        b',' if depth == 0 => break,
                        _ => {}
                    }
                    at += 1;
                }
            }
            _ => at += 1,
        }
    }
}

fn imports(file: &Path) -> Vec<Import> {
    let text = blank(&fs::read_to_string(file).expect("a readable source file"));
    let bytes = text.as_bytes();
    let here = module_of(file);
    let mut out = Vec::new();
    for (i, _) in text.match_indices("::") {
        // The first segment of a path that starts here.
        let mut start = i;
        while start > 0 && is_ident(bytes[start - 1]) {
            start -= 1;
        }
        if start > 0 && (bytes[start - 1] == b':' || is_ident(bytes[start - 1])) {
            continue;
        }
        let head = &text[start..i];
        if !matches!(head, "crate" | "super" | "self") {
            continue;
        }
        for path in paths_at(bytes, start) {
            let mut segments = path.into_iter();
            let mut base: Vec<String> = match segments.next().as_deref() {
                Some("crate") => Vec::new(),
                Some("self") => here.clone(),
                Some("super") => {
                    let mut base = here.clone();
                    base.pop();
                    base
                }
                _ => continue,
            };
            let mut rest: Vec<String> = segments.collect();
            while rest.first().is_some_and(|s| s == "super") {
                rest.remove(0);
                base.pop();
            }
            base.extend(rest);
            let line = text[..start].matches('\n').count() + 1;
            out.push(Import { file: file.to_owned(), line, from: here.clone(), to: base });
        }
    }
    out
}

/// The module (file) an imported path lands in: the longest prefix that is a file of `src/`.
fn target(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Vec<String> {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)).unwrap_or_default()
}

fn matches(prefix: &str, module: &[String]) -> bool {
    if let Some(rest) = prefix.strip_prefix("*::") {
        return module.last().is_some_and(|m| m == rest);
    }
    if prefix.is_empty() {
        return module.is_empty();
    }
    let want: Vec<&str> = prefix.split("::").collect();
    module.len() >= want.len() && module.iter().zip(&want).all(|(a, b)| a == b)
}

fn layer(module: &[String]) -> usize {
    LAYERS
        .iter()
        .position(|(_, prefixes)| prefixes.iter().any(|p| matches(p, module)))
        .unwrap_or_else(|| panic!("module `{}` is in no layer: add it to LAYERS and ARCHITECTURE.md", module.join("::")))
}

fn name(module: &[String]) -> String {
    if module.is_empty() { "crate".to_owned() } else { module.join("::") }
}

struct House {
    modules: BTreeSet<Vec<String>>,
    /// file module → (imported file module → first line).
    arrows: BTreeMap<Vec<String>, BTreeMap<Vec<String>, (PathBuf, usize)>>,
}

fn house() -> House {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    let mut arrows: BTreeMap<Vec<String>, BTreeMap<Vec<String>, (PathBuf, usize)>> = BTreeMap::new();
    for file in &files {
        for import in imports(file) {
            let to = target(&modules, &import.to);
            if to == import.from {
                continue;
            }
            arrows.entry(import.from.clone()).or_default().entry(to).or_insert((import.file.clone(), import.line));
        }
    }
    House { modules, arrows }
}

fn location(file: &Path, line: usize) -> String {
    format!("{}:{line}", file.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_or(file).display())
}

#[test]
fn every_import_points_down_the_layers() {
    let house = house();
    let mut broken = Vec::new();
    for (from, targets) in &house.arrows {
        for (to, (file, line)) in targets {
            // A module may use its own parent (`super::Item` defined in `mod.rs`).
            if to.is_empty() || from.starts_with(to) {
                continue;
            }
            let (above, below) = (layer(from), layer(to));
            if below < above {
                broken.push(format!(
                    "{}: `{}` ({}) imports `{}` ({}), a layer above it",
                    location(file, *line),
                    name(from),
                    LAYERS[above].0,
                    name(to),
                    LAYERS[below].0
                ));
            }
        }
    }
    assert!(broken.is_empty(), "imports that reach up:\n{}", broken.join("\n"));
}

#[test]
fn modules_know_only_what_they_may() {
    let house = house();
    let mut broken = Vec::new();
    // Handlers are the edge wherever they live: they may use whatever lies below them.
    for (from, targets) in house.arrows.iter().filter(|(from, _)| !matches("*::routes", from)) {
        for (to, (file, line)) in targets {
            for (module, forbidden, why) in FORBIDDEN {
                let reaches = if forbidden.is_empty() { !matches(module, to) && !to.is_empty() } else { matches(forbidden, to) };
                if matches(module, from) && reaches {
                    broken.push(format!("{}: `{}` imports `{}`: {why}", location(file, *line), name(from), name(to)));
                }
            }
        }
    }
    assert!(broken.is_empty(), "forbidden knowledge:\n{}", broken.join("\n"));
}

#[test]
fn no_two_files_import_each_other() {
    let house = house();
    // A file's own parent module (re-exports, `super::Item`) is not an import between files.
    let edges = |from: &Vec<String>| -> Vec<Vec<String>> {
        house.arrows.get(from).map(|t| t.keys().filter(|to| !from.starts_with(to) && !to.starts_with(from)).cloned().collect()).unwrap_or_default()
    };
    // Depth-first search for a cycle, reporting the first one found with its lines.
    let mut state: BTreeMap<Vec<String>, u8> = BTreeMap::new();
    let mut cycles = Vec::new();
    fn visit(
        node: &Vec<String>,
        edges: &dyn Fn(&Vec<String>) -> Vec<Vec<String>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        cycles: &mut Vec<Vec<Vec<String>>>,
    ) {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges(node) {
            match state.get(&next).copied().unwrap_or(0) {
                0 => visit(&next, edges, state, stack, cycles),
                1 => {
                    let at = stack.iter().position(|n| *n == next).expect("on the stack");
                    cycles.push(stack[at..].to_vec());
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
    }
    for module in &house.modules {
        if state.get(module).copied().unwrap_or(0) == 0 {
            visit(module, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    let described: Vec<String> = cycles
        .iter()
        .map(|cycle| {
            let mut steps = Vec::new();
            for (i, from) in cycle.iter().enumerate() {
                let to = &cycle[(i + 1) % cycle.len()];
                let (file, line) = &house.arrows[from][to];
                steps.push(format!("{} → {} ({})", name(from), name(to), location(file, *line)));
            }
            steps.join(", ")
        })
        .collect();
    assert!(described.is_empty(), "files that import each other:\n{}", described.join("\n"));
}

#[test]
fn only_the_edge_speaks_http_errors() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut broken = Vec::new();
    for file in files {
        let module = module_of(&file);
        if ["http", "grpc", "error", "*::routes"].iter().any(|edge| matches(edge, &module)) {
            continue;
        }
        let text = blank(&fs::read_to_string(&file).expect("readable"));
        for (n, line) in text.lines().enumerate() {
            for word in EDGE_ONLY {
                let found = line.match_indices(word).any(|(at, _)| {
                    let before = line[..at].bytes().last();
                    let after = line[at + word.len()..].bytes().next();
                    !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
                });
                if found {
                    broken.push(format!("{}: `{word}` in `{}`", location(&file, n + 1), name(&module)));
                }
            }
        }
    }
    assert!(broken.is_empty(), "HTTP errors below the edge (return the domain's error; the edge converts it):\n{}", broken.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_relative_imports() {
    let text = "use crate::{audit::{AuditEvent, Outcome}, tenancy::db::TenantTx};\nuse super::super::x::Y; // crate::ignored\nlet s = \"crate::ignored\";";
    let blanked = blank(text);
    assert!(!blanked.contains("ignored"));
    let bytes = blanked.as_bytes();
    let at = blanked.find("crate::").unwrap();
    let paths = paths_at(bytes, at);
    assert_eq!(
        paths,
        vec![
            vec!["crate", "audit", "AuditEvent"],
            vec!["crate", "audit", "Outcome"],
            vec!["crate", "tenancy", "db", "TenantTx"],
        ]
    );
    assert!(matches("*::routes", &["registry".to_owned(), "routes".to_owned()]));
    assert!(matches("http", &["http".to_owned(), "guard".to_owned()]));
    assert!(!matches("http", &["https".to_owned()]));
}

//! The layering rules of `shared/DESIGN.md`, read off the imports: dependencies point
//! down (adapters -> service -> {policy, sandbox, model, mcp, sessions} -> {store,
//! auth}), and plain data (errors, limits, requests, time) sits in leaves.

use std::path::{Path, PathBuf};

/// Every Rust file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The files of `module` (a directory or a file under `src/`) that name any of
/// `forbidden` (as `crate::NAME`), with the line that does.
fn offenders(module: &str, forbidden: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let target = src.join(module);
    // A module is its file (`cli.rs`), its directory (`cli/`), or both.
    let mut files = if target.is_dir() { sources(&target) } else { Vec::new() };
    if target.with_extension("rs").is_file() {
        files.push(target.with_extension("rs"));
    }
    assert!(!files.is_empty(), "no module `{module}` under src/");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for name in forbidden {
                if line.contains(&format!("crate::{name}")) {
                    found.push(format!("{}:{}: {}", file.strip_prefix(&src).unwrap().display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn dependencies_point_down() {
    let rules: [(&str, &[&str]); 13] = [
        // Adapters speak to the service, never to the sandbox.
        ("http", &["sandbox"]),
        ("console", &["sandbox", "http::AppState"]),
        ("mcp/server", &["sandbox"]),
        ("cli", &["sandbox"]),
        // The policy compiler speaks of limits, not of the sandbox.
        ("policy", &["sandbox", "service", "http", "console"]),
        // The sandbox knows the host ABI and its doors, nothing behind them, and
        // records no metrics: its callers do.
        (
            "sandbox",
            &["telemetry", "service", "http", "console", "mcp", "model", "store", "policy", "sessions", "auth"],
        ),
        // The model router and the tool catalog do not reach back into the service.
        ("model", &["service", "http", "console"]),
        ("mcp/door", &["service", "http", "console"]),
        ("store", &["service", "sandbox", "http", "console", "mcp", "model"]),
        // Plain data sits in leaves.
        ("error", &["sandbox", "service", "store", "http", "policy", "model", "mcp", "console", "sessions"]),
        ("limits", &["sandbox", "service", "store", "http", "policy", "model", "mcp", "console", "sessions"]),
        ("request", &["sandbox", "service", "store", "http", "policy", "model", "mcp", "console", "sessions"]),
        ("time", &["sandbox", "service", "store", "http", "policy", "model", "mcp", "console", "sessions"]),
    ];
    let mut broken = Vec::new();
    for (module, forbidden) in rules {
        broken.extend(offenders(module, forbidden));
    }
    assert!(broken.is_empty(), "imports against the layering rules:\n{}", broken.join("\n"));
}

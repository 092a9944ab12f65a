//! MCP Code Mode.
//!
//! - [`upstream`]: the client pool. Every server in `[mcp.servers]` is connected at
//!   start-up (stdio or streamable HTTP), reconnected with backoff when it fails or
//!   exits, and its `tools/list` cached and refreshed on `tools/list_changed`.
//! - [`catalog`]: every upstream tool as `server.tool` with a JavaScript-safe name,
//!   its TypeScript declaration, and the per-principal view policies allow.
//! - [`search`]: ranking tools for an agent's request in its own words (BM25F and
//!   static embeddings), and saying when nothing fits.
//! - [`door`]: the `tools` door, `tools.<server>.<tool>(args)` inside the sandbox.
//! - [`server`]: the MCP server clients see, with exactly two tools, `search` and
//!   `execute`, over streamable HTTP (`/mcp`) and stdio (`sandgate mcp`).

pub mod browse;
pub mod catalog;
pub mod declarations;
pub mod door;
pub mod python_stubs;
pub mod search;
pub mod server;
pub mod upstream;

use std::path::PathBuf;
use std::time::Duration;

pub use catalog::{Catalog, CatalogTool};
pub use upstream::Upstreams;

/// `[mcp]` in `sandgate.toml`, validated.
#[derive(Clone, Debug)]
pub struct McpConfig {
    pub servers: Vec<UpstreamConfig>,
    /// Default per-call timeout for upstream tool calls.
    pub call_timeout: Duration,
    /// How long one connection attempt (spawn or connect, then `initialize`) may take.
    pub connect_timeout: Duration,
    /// Largest JSON argument object a guest may pass to one tool call.
    pub max_argument_bytes: usize,
    /// Largest tool result (as JSON) handed back to the guest.
    pub max_result_bytes: usize,
    /// MCP sessions (streamable HTTP, protocol revisions with sessions) open at once;
    /// past it, the longest-idle session is closed to make room.
    pub max_sessions: usize,
    /// MCP sessions one principal may have open; past it, their longest-idle one is
    /// closed to make room.
    pub max_sessions_per_principal: usize,
    /// `search`'s optional reranker (`[mcp.search]`).
    pub search: SearchConfig,
}

/// `[mcp.search]`: `search` reranks its best candidates with one model call through
/// sandgate's own router when `rerank` names a model (or `tier:NAME`). The call is
/// the caller's: policies, budget, rate limits and the ledger apply as to any other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchConfig {
    /// The model or `tier:NAME`; `None` (the default): no reranking.
    pub rerank: Option<String>,
    /// How many of the best candidates the model reorders (default 20, 2 to 50).
    pub rerank_candidates: usize,
    /// How long the call may take before the words-and-meaning ranking is used (default 2 s).
    pub rerank_timeout: Duration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self { rerank: None, rerank_candidates: 20, rerank_timeout: Duration::from_secs(2) }
    }
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            call_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            max_argument_bytes: 1 << 20,
            max_result_bytes: 4 << 20,
            max_sessions: 1_000,
            max_sessions_per_principal: 32,
            search: SearchConfig::default(),
        }
    }
}

/// One upstream MCP server.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The name code uses: `tools.<name>.<tool>()`.
    pub name: String,
    pub transport: Transport,
    pub call_timeout: Duration,
    /// Shown to models in place of the server's own `instructions`.
    pub description: Option<String>,
}

/// How to reach an upstream server.
#[derive(Clone, Debug)]
pub enum Transport {
    /// A child process speaking MCP on stdin/stdout. Its environment is empty except
    /// for `PATH` and the variables named in `env`, taken from sandgate's own.
    Stdio { command: String, args: Vec<String>, env: Vec<String>, cwd: Option<PathBuf> },
    /// Streamable HTTP; each header's value is read from the named environment variable.
    Http { url: String, headers: Vec<(String, String)> },
}

const RESERVED: &[&str] = &[
    "await",
    "break",
    "case",
    "catch",
    "class",
    "const",
    "continue",
    "debugger",
    "default",
    "delete",
    "do",
    "else",
    "enum",
    "export",
    "extends",
    "false",
    "finally",
    "for",
    "function",
    "if",
    "implements",
    "import",
    "in",
    "instanceof",
    "interface",
    "let",
    "new",
    "null",
    "package",
    "private",
    "protected",
    "public",
    "return",
    "static",
    "super",
    "switch",
    "this",
    "throw",
    "true",
    "try",
    "typeof",
    "var",
    "void",
    "while",
    "with",
    "yield",
    "arguments",
    "eval",
    "undefined",
    "NaN",
    "Infinity",
];

/// True for an ASCII JavaScript identifier that is not a reserved word.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && !RESERVED.contains(&name)
}

/// `name` made a JavaScript identifier: every other character becomes `_`, a
/// leading digit or a reserved word gets a `_` added.
pub fn sanitize(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '$' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if RESERVED.contains(&out.as_str()) {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_identifiers() {
        assert_eq!(sanitize("get-tiny-image"), "get_tiny_image");
        assert_eq!(sanitize("read.file"), "read_file");
        assert_eq!(sanitize("2fa"), "_2fa");
        assert_eq!(sanitize("delete"), "delete_");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("héllo"), "h_llo");
        assert!(is_identifier("everything") && !is_identifier("a-b") && !is_identifier("new"));
        for name in ["get-tiny-image", "2fa", "delete", "", "héllo"] {
            assert!(is_identifier(&sanitize(name)), "{name}");
        }
    }
}

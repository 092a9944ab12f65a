//! What a caller sends to run code: the execute request as HTTP, MCP and the CLI
//! receive it, and the languages. Plain data, shared by every surface; the service
//! checks a request against the caller's ceiling and makes it a sandbox job.

use serde::Deserialize;

use crate::limits::PartialLimits;

/// Where a request sits in a distributed trace: its caller's span, passed through the
/// sandbox to the doors so their spans join the same trace.
pub type TraceContext = opentelemetry::Context;

/// `POST /v1/execute` body; `sandgate exec` builds the same value.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// JavaScript: the body of an async function, a single expression, or a function
    /// expression that is invoked.
    pub code: String,
    /// Any JSON value, visible to the code as the global `input`.
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    /// Limits to lower for this request; none may exceed the caller's ceiling.
    #[serde(default)]
    pub limits: PartialLimits,
    /// The language of `code`; TypeScript has its types stripped before it runs.
    #[serde(default)]
    pub language: Language,
    /// Run in this session (`POST /v1/sessions`): the code is a global script whose
    /// declarations stay for the session's next execution, and its completion value is
    /// the result.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The caller's trace context (from the request's `traceparent`, not its body):
    /// the execution's span is its child.
    #[serde(skip)]
    pub trace: TraceContext,
    /// The coding agent's own session it belongs to (from its headers or `_meta`, not
    /// its body; see [`agent_session`]), recorded with the execution and its model
    /// calls.
    #[serde(skip)]
    pub agent_session: Option<String>,
}

/// The language submitted code is written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Javascript,
    /// Types are stripped inside the sandbox before the code runs (positions kept,
    /// so errors point at the code as submitted); constructs that emit code, such as
    /// `enum`, are refused.
    Typescript,
    /// Python (Monty), a second guest behind the same doors: the code is a script
    /// whose last expression is the result.
    Python,
}

/// The guests: QuickJS (JavaScript, TypeScript) and Monty (Python).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guest {
    QuickJs,
    Monty,
}

impl std::str::FromStr for Language {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "javascript" => Ok(Self::Javascript),
            "typescript" => Ok(Self::Typescript),
            "python" => Ok(Self::Python),
            other => Err(format!("unknown language `{other}`: javascript, typescript or python")),
        }
    }
}

impl Language {
    /// The language a file's name implies: `.ts`/`.mts` TypeScript, `.py` Python,
    /// anything else JavaScript.
    pub fn of_file(path: &std::path::Path) -> Self {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("ts" | "mts") => Self::Typescript,
            Some("py") => Self::Python,
            _ => Self::Javascript,
        }
    }

    /// The guest that runs it: JavaScript and TypeScript share one, Python has its
    /// own (a session's memory is one guest's).
    pub fn guest(self) -> Guest {
        match self {
            Self::Javascript | Self::Typescript => Guest::QuickJs,
            Self::Python => Guest::Monty,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Javascript => "javascript",
            Self::Typescript => "typescript",
            Self::Python => "python",
        }
    }
}

/// The headers coding agents send their own session id in, most specific first:
/// sandgate's own (for any client), Claude Code's, and Codex's (`session-id`, and
/// `thread-id`, the same value today).
pub const AGENT_SESSION_HEADERS: [&str; 4] =
    ["x-sandgate-agent-session", "x-claude-code-session-id", "session-id", "thread-id"];

/// An agent session id as recorded: printable ASCII without spaces, at most 128 bytes;
/// anything else is not an id.
fn agent_session_id(value: &str) -> Option<String> {
    let value = value.trim();
    let printable = value.bytes().all(|b| b.is_ascii_graphic());
    (!value.is_empty() && value.len() <= 128 && printable).then(|| value.to_string())
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), as
/// `trace:<id>`: a client that sends trace context but no session id is grouped by
/// its trace.
fn trace_session(traceparent: &str) -> Option<String> {
    let id = traceparent.trim().split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| format!("trace:{}", id.to_ascii_lowercase()))
}

/// The coding agent's own session this request belongs to, from its headers (see
/// [`AGENT_SESSION_HEADERS`]), else the trace of its `traceparent`.
pub fn agent_session(headers: &http::HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    AGENT_SESSION_HEADERS
        .iter()
        .find_map(|name| header(name).and_then(agent_session_id))
        .or_else(|| header("traceparent").and_then(trace_session))
}

/// The agent session of an MCP request from its `_meta`: `x-sandgate-agent-session`,
/// `sessionId`, `session_id`, Codex's `x-codex-turn-metadata.session_id`, else the
/// trace of `traceparent`.
pub fn agent_session_in_meta(meta: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let text = |value: Option<&serde_json::Value>| value.and_then(serde_json::Value::as_str).and_then(agent_session_id);
    text(meta.get("x-sandgate-agent-session"))
        .or_else(|| text(meta.get("sessionId")))
        .or_else(|| text(meta.get("session_id")))
        .or_else(|| text(meta.get("x-codex-turn-metadata").and_then(|m| m.get("session_id"))))
        .or_else(|| meta.get("traceparent").and_then(serde_json::Value::as_str).and_then(trace_session))
}

#[cfg(test)]
mod agent_session_tests {
    use super::*;

    #[test]
    fn agent_sessions_come_from_the_agents_own_headers_or_the_trace() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(agent_session(&headers), None);
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(agent_session(&headers).as_deref(), Some("trace:4bf92f3577b34da6a3ce929d0e0e4736"));
        headers.insert("thread-id", "thread-7".parse().unwrap());
        headers.insert("session-id", "codex-1".parse().unwrap());
        assert_eq!(agent_session(&headers).as_deref(), Some("codex-1"));
        headers.insert("x-claude-code-session-id", "9d11".parse().unwrap());
        assert_eq!(agent_session(&headers).as_deref(), Some("9d11"));
        headers.insert("x-claude-code-session-id", "has space".parse().unwrap());
        assert_eq!(agent_session(&headers).as_deref(), Some("codex-1"), "not an id: the next header");
        headers.insert("x-sandgate-agent-session", "x".repeat(129).parse().unwrap());
        assert_eq!(agent_session(&headers).as_deref(), Some("codex-1"), "too long");

        let meta = serde_json::json!({"x-codex-turn-metadata": {"session_id": "codex-1", "turn_id": "t"}});
        assert_eq!(agent_session_in_meta(meta.as_object().unwrap()).as_deref(), Some("codex-1"));
        let meta = serde_json::json!({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"});
        assert_eq!(agent_session_in_meta(meta.as_object().unwrap()), None, "an invalid trace id");
    }
}

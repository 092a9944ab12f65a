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

//! What can go wrong in an execution, as values an agent can act on.

use serde::{Deserialize, Serialize};

/// The `kind` of an error: one stable string per cause, documented in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The code does not parse.
    Syntax,
    /// The code threw (or its promise rejected) and nothing caught it.
    Exception,
    /// The wall-clock limit passed.
    Timeout,
    /// The fuel (CPU) limit ran out.
    OutOfFuel,
    /// The memory limit was reached; the guest cannot catch this.
    OutOfMemory,
    /// The guest's stack overflowed below the JavaScript engine's own check.
    StackOverflow,
    /// Console output or the result passed its byte limit.
    OutputLimit,
    /// The code made more host calls than its limit allows.
    CallLimit,
    /// The code's promise can never settle: nothing is queued or in flight.
    Unsettled,
    /// A tool call was refused by policy, or names no tool the caller may use.
    ToolDenied,
    /// A tool was called and failed.
    ToolError,
    /// A file operation failed: no such file, no file access, outside the workspace,
    /// over a quota. The message starts with a POSIX-style code (`ENOENT: ...`).
    FileError,
    /// A model call was refused by policy, or names no model the caller may use.
    ModelDenied,
    /// A budget would be exceeded.
    BudgetExceeded,
    /// The request itself is malformed.
    InvalidRequest,
    /// The server is at capacity; retry after the indicated delay.
    Overloaded,
    /// The shared store (ledger, budgets, rate limits) cannot be reached; nothing was
    /// done, and the request can be retried.
    Unavailable,
    /// The execution was stopped before it ended: its caller went away (an HTTP
    /// client hung up, an MCP request was cancelled) or the server shut down.
    Cancelled,
    /// A fault in sandgate or in the guest runtime itself.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syntax => "syntax",
            Self::Exception => "exception",
            Self::Timeout => "timeout",
            Self::OutOfFuel => "out_of_fuel",
            Self::OutOfMemory => "out_of_memory",
            Self::StackOverflow => "stack_overflow",
            Self::OutputLimit => "output_limit",
            Self::CallLimit => "call_limit",
            Self::Unsettled => "unsettled",
            Self::ToolDenied => "tool_denied",
            Self::ToolError => "tool_error",
            Self::FileError => "file_error",
            Self::ModelDenied => "model_denied",
            Self::BudgetExceeded => "budget_exceeded",
            Self::InvalidRequest => "invalid_request",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its kind and, where the engine has them, the position and stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ExecError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl ExecError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), name: None, line: None, column: None, stack: None }
    }
}

/// Why an execution was not run at all.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejected {
    /// The request is malformed or asks for more than its ceiling.
    #[error("{0}")]
    Invalid(String),
    /// The code is larger than the code-size limit.
    #[error("code is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: u64 },
    /// Every execution slot is taken, or the queue wait passed its limit.
    #[error("server is at capacity; retry after {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    /// Cancelled while it waited for a CPU slot.
    #[error("the execution was cancelled before it started")]
    Cancelled,
    /// A fault in sandgate itself (a guest that cannot be loaded).
    #[error("{0}")]
    Internal(String),
}

impl Rejected {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) | Self::TooLarge { .. } => ErrorKind::InvalidRequest,
            Self::Overloaded { .. } => ErrorKind::Overloaded,
            Self::Cancelled => ErrorKind::Cancelled,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }
}

//! The one vocabulary of what went wrong, shared by every surface.
//!
//! Every error sandgate reports, whatever layer decided it (the sandbox, the service,
//! the model proxy, the store), carries one [`Kind`]. Each surface maps a kind in one
//! table of its own: the HTTP status (`http::error`), the MCP answer (`mcp::server`),
//! the CLI's exit code (`cli`), and what guest code sees (the kind string itself, on
//! the error a host call rejects with). A kind is a stable string an agent or a
//! client can act on; the README documents each.

use serde::{Deserialize, Serialize};

/// The `kind` of an error: one stable string per cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    // What the code itself did (an execution's outcome).
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

    // What a door out of the sandbox answered.
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
    /// Every model the call could go to failed (the provider's own error, passed on).
    UpstreamError,

    // What a request met before or around any execution.
    /// No credentials, or credentials sandgate does not know.
    Unauthorized,
    /// The caller's policies do not allow this.
    Forbidden,
    /// A rate limit or a per-principal share (executions at once, sessions,
    /// transfers, streams) is used up; retry after the indicated delay.
    RateLimited,
    /// Nothing the caller may see has that name.
    NotFound,
    /// The session runs another execution; its executions run one at a time.
    SessionBusy,
    /// What the request would change is no longer there to change: an approval
    /// decided already, or expired.
    Conflict,
    /// The request itself is malformed, too large, or did not arrive in time.
    InvalidRequest,
    /// The server is at capacity; retry after the indicated delay.
    Overloaded,
    /// The shared store (ledger, budgets, rate limits) cannot be reached; nothing was
    /// done, and the request can be retried.
    Unavailable,
    /// The execution was stopped before it ended: its caller went away or the server
    /// shut down.
    Cancelled,
    /// A fault in sandgate or in the guest runtime itself.
    Internal,
}

impl Kind {
    /// Every kind, for tables and their tests.
    pub const ALL: [Kind; 26] = [
        Kind::Syntax,
        Kind::Exception,
        Kind::Timeout,
        Kind::OutOfFuel,
        Kind::OutOfMemory,
        Kind::StackOverflow,
        Kind::OutputLimit,
        Kind::CallLimit,
        Kind::Unsettled,
        Kind::ToolDenied,
        Kind::ToolError,
        Kind::FileError,
        Kind::ModelDenied,
        Kind::BudgetExceeded,
        Kind::UpstreamError,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::RateLimited,
        Kind::NotFound,
        Kind::SessionBusy,
        Kind::Conflict,
        Kind::InvalidRequest,
        Kind::Overloaded,
        Kind::Unavailable,
        Kind::Cancelled,
        Kind::Internal,
    ];

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
            Self::UpstreamError => "upstream_error",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::SessionBusy => "session_busy",
            Self::Conflict => "conflict",
            Self::InvalidRequest => "invalid_request",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }

    /// The kind a string names.
    pub fn parse(text: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// Whether an error the guest reports may carry this kind. The kinds the host
    /// decides itself (every limit, `internal`, anything about the request) never
    /// come from inside the sandbox; host-call kinds do, but only on errors the host
    /// made (the guest checks that before it reports one).
    pub fn guest_may_report(self) -> bool {
        matches!(
            self,
            Self::Syntax
                | Self::Exception
                | Self::Unsettled
                | Self::OutputLimit
                | Self::CallLimit
                | Self::ToolDenied
                | Self::ToolError
                | Self::FileError
                | Self::ModelDenied
                | Self::BudgetExceeded
                | Self::UpstreamError
                | Self::RateLimited
                | Self::InvalidRequest
                | Self::Unavailable
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_string_that_names_it_back() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in Kind::ALL {
            assert!(seen.insert(kind.as_str()), "{kind} twice");
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(Kind::parse("no_such_kind"), None);
    }
}

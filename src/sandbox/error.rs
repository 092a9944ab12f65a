//! What can go wrong in an execution, as values an agent can act on: an error of the
//! code or of a door, with its [`Kind`] (the one vocabulary, `crate::error`) and, where
//! the engine has them, its position and stack.

use serde::{Deserialize, Serialize};

pub use crate::error::Kind;

/// An error with its kind and, where the engine has them, the position and stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ExecError {
    pub kind: Kind,
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
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
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
    pub fn kind(&self) -> Kind {
        match self {
            Self::Invalid(_) | Self::TooLarge { .. } => Kind::InvalidRequest,
            Self::Overloaded { .. } => Kind::Overloaded,
            Self::Cancelled => Kind::Cancelled,
            Self::Internal(_) => Kind::Internal,
        }
    }
}

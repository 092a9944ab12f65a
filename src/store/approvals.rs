//! Executions paused at calls that wait for a person, and the approvals they wait
//! for: what every replica must see, so an approval given on one replica resumes the
//! execution on it, whoever paused it and whether or not that replica still runs.

use serde::Serialize;

use super::StoreError;

/// An execution paused at held calls (`paused_executions`): everything needed to
/// resume it, on any replica. One row per execution; a resumed execution that pauses
/// again replaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PausedRecord {
    /// The execution's id.
    pub id: String,
    pub user: String,
    pub team: String,
    pub key: String,
    /// Who runs it and what it asked for (JSON): its doors are built again from it.
    pub context: String,
    /// The sandbox's account of the pause (JSON).
    pub state: String,
    /// The pages of its memory that differ from a fresh guest's.
    pub memory: Vec<u8>,
    pub paused_at_ms: i64,
    /// Set while a replica resumes it (a claim older than the stale bound is taken
    /// over: that replica died).
    pub claimed_at_ms: Option<i64>,
}

/// Where an approval stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "denied" => Ok(Self::Denied),
            "expired" => Ok(Self::Expired),
            other => Err(StoreError(format!("an approval has an unknown status `{other}`"))),
        }
    }
}

/// One held call waiting for (or decided by) an approver (`approvals`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub id: String,
    pub execution_id: String,
    /// The call's id within the execution.
    pub call_id: u32,
    /// Who made the call.
    pub user: String,
    pub team: String,
    pub key: String,
    /// The call's name (`tools.github.merge_pull_request`).
    pub tool: String,
    /// Its arguments (JSON).
    pub args: String,
    /// Why it waits: the rule, its reason, approvers and expiry (JSON).
    pub detail: String,
    pub status: ApprovalStatus,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// Who decided (`user (team T)`), when, and what they said.
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
    pub reason: Option<String>,
}

/// A decision on a pending approval. `Approved` and `Denied` apply only before it
/// expires; `Expired` only after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    pub status: ApprovalStatus,
    pub by: Option<String>,
    pub reason: Option<String>,
    pub at_ms: i64,
}

/// Which approvals to list, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApprovalQuery {
    pub status: Option<ApprovalStatus>,
    pub execution_id: Option<String>,
    /// Made at or after this (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// Only those whose expiry is at or before this (Unix milliseconds).
    pub expired_by_ms: Option<i64>,
    pub limit: u32,
}

pub(crate) const APPROVAL_COLUMNS: &str = "id, execution_id, call_id, user_name, team, key_name, tool, args, detail, \
     status, created_at_ms, expires_at_ms, decided_by, decided_at_ms, reason";

pub(crate) const PAUSED_COLUMNS: &str =
    "id, user_name, team, key_name, context, state, memory, paused_at_ms, claimed_at_ms";

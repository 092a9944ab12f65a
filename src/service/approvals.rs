//! Calls that need a person: an execution whose call a rule sends for approval
//! (`decision = "approve"`) pauses there, durably, and goes on once approvers decide.
//!
//! The sandbox pauses it ([`crate::sandbox::Paused`]): the guest returned, and its
//! memory and bookkeeping are all there is. `keep_paused` puts them in the store with
//! one approval per held call, so the execution holds no instance, CPU or admission
//! slot while it waits, and any replica can go on with it. A decision
//! ([`Service::decide`]) on the last pending approval resumes it on the replica that
//! took the decision ([`Service::resume_paused`]): each approved call is made then,
//! each denied or expired one rejects in the code with `tool_denied` and the reason,
//! and the code continues exactly where it stopped. Nothing is replayed, so nothing
//! is made twice.
//!
//! A replica that dies while it resumes an execution leaves a claim that goes stale
//! after [`RESUME_STALE`]; every replica's sweep ([`Service::watch_approvals`],
//! every [`APPROVAL_SWEEP`]) expires approvals past their time and resumes what no
//! replica is resuming.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Service, ServiceError};
use crate::auth::{Principal, Role};
use crate::error::Kind;
use crate::limits::Limits;
use crate::sandbox::{ExecError, MemoryImage, Outcome, Paused};
use crate::store::{
    now_ms, ApprovalQuery, ApprovalRecord, ApprovalStatus, Decided, HandleEnd, HandleRecord, HandleStatus,
    PausedRecord, Store, StoreError,
};

/// The most approvals one user may have pending at once. A pause past it is not
/// kept: the execution ends `tool_denied`, saying so.
pub const MAX_PENDING_APPROVALS: u32 = 20;

/// How long a replica's claim on a paused execution it resumes holds: after it,
/// another replica takes it over (the first one died).
pub const RESUME_STALE: Duration = Duration::from_secs(120);

/// How often each replica expires approvals past their time and resumes paused
/// executions no replica is resuming.
pub const APPROVAL_SWEEP: Duration = Duration::from_secs(1);

/// Who runs a paused execution and what it asked for: its doors are built again
/// from this when it resumes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PauseContext {
    pub user: String,
    pub team: String,
    pub teams: Vec<String>,
    pub key: String,
    pub role: Role,
    pub subject: Option<String>,
    pub local: bool,
    /// The identity provider's claims, which policy conditions read after the pause too.
    #[serde(default)]
    pub claims: Option<serde_json::Map<String, Value>>,
    pub limits: Limits,
    pub agent_session: Option<String>,
    /// Started in the background: its handle exists already.
    pub background: bool,
}

impl PauseContext {
    pub(crate) fn new(principal: &Principal, limits: Limits, agent_session: Option<String>, background: bool) -> Self {
        Self {
            user: principal.user.clone(),
            team: principal.team.clone(),
            teams: principal.teams.clone(),
            key: principal.key.clone(),
            role: principal.role,
            subject: principal.subject.clone(),
            local: principal.local,
            claims: principal.claims.as_ref().map(|claims| claims.0.clone()),
            limits,
            agent_session,
            background,
        }
    }

    fn principal(&self) -> Principal {
        Principal {
            user: self.user.clone(),
            team: self.team.clone(),
            teams: self.teams.clone(),
            key: self.key.clone(),
            role: self.role,
            subject: self.subject.clone(),
            signed_in: false,
            local: self.local,
            claims: self.claims.clone().map(|claims| Arc::new(crate::auth::TokenClaims(claims))),
        }
    }
}

/// An approval as the API, the CLI and the console show it.
#[derive(Clone, Debug, Serialize)]
pub struct ApprovalView {
    pub id: String,
    pub execution_id: String,
    pub status: ApprovalStatus,
    /// The call: its name and arguments.
    pub tool: String,
    pub args: Value,
    /// Who made it.
    pub caller: Value,
    /// Why it needs approval: the rule and its reason.
    pub reason: Value,
    pub rule: Value,
    pub approvers: Value,
    /// Whether the caller may approve it.
    pub self_approval: bool,
    pub created_at: String,
    /// `created_at` in Unix milliseconds.
    #[serde(skip)]
    pub created_at_ms: i64,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    /// How long it waited for its decision, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<i64>,
    /// Where a person decides it: the console's page for it.
    pub url: String,
}

/// Approvals of one tool decided by one approver (`""`: not decided by anyone yet, or
/// expired).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApprovalCount {
    pub tool: String,
    pub approver: String,
    pub approved: u64,
    pub denied: u64,
    pub expired: u64,
    pub pending: u64,
    /// Median time from the pause to the decision, in milliseconds.
    pub median_wait_ms: Option<i64>,
}

/// Whether `viewer` may decide approval `record` now (an approver, and not the
/// caller unless its rule allows it): the console offers its buttons.
pub fn may_decide(viewer: &Principal, view: &ApprovalView) -> bool {
    let caller = view.caller.get("user").and_then(Value::as_str).unwrap_or_default();
    view.status == ApprovalStatus::Pending
        && refusal(viewer, caller, &strings(&view.approvers), view.self_approval).is_none()
}

/// Why `viewer` may not decide a call `caller` made that `approvers` may approve:
/// it is their own (unless `self_approval`), or they are not among the approvers.
fn refusal(viewer: &Principal, caller: &str, approvers: &[String], self_approval: bool) -> Option<String> {
    if viewer.user == caller && !self_approval {
        return Some(
            "no one approves their own call: the rule that asks for this approval does not allow it \
             (self_approval)"
                .into(),
        );
    }
    (!crate::policy::approver_matches(approvers, viewer)).then(|| {
        format!(
            "user `{}` (team `{}`) is not among the approvers of this call: {}",
            viewer.user,
            viewer.team,
            approvers.join(", ")
        )
    })
}

fn detail(record: &ApprovalRecord) -> Value {
    serde_json::from_str(&record.detail).unwrap_or(Value::Null)
}

/// The strings of a JSON array (none for anything else).
fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_string)).collect()
}

fn approvers(record: &ApprovalRecord) -> Vec<String> {
    strings(&detail(record)["approvers"])
}

/// The console's page for approval `id`, under the public URL when one is set.
pub(crate) fn approval_url(public_url: Option<&str>, id: &str) -> String {
    format!("{}/ui/approvals/{id}", public_url.unwrap_or("").trim_end_matches('/'))
}

impl ApprovalView {
    fn new(record: ApprovalRecord, public_url: Option<&str>) -> Self {
        let detail = detail(&record);
        Self {
            url: approval_url(public_url, &record.id),
            id: record.id,
            execution_id: record.execution_id,
            status: record.status,
            tool: record.tool,
            args: serde_json::from_str(&record.args).unwrap_or(Value::Null),
            caller: json!({"user": record.user, "team": record.team, "key": record.key}),
            reason: detail.get("reason").cloned().unwrap_or(Value::Null),
            rule: detail.get("rule").cloned().unwrap_or(Value::Null),
            approvers: detail.get("approvers").cloned().unwrap_or(Value::Null),
            self_approval: detail.get("self_approval").and_then(Value::as_bool).unwrap_or(false),
            created_at: super::sessions::time(record.created_at_ms),
            created_at_ms: record.created_at_ms,
            expires_at: super::sessions::time(record.expires_at_ms),
            decided_by: record.decided_by,
            decided_at: record.decided_at_ms.map(super::sessions::time),
            decision_reason: record.reason,
            waited_ms: record.decided_at_ms.map(|at| at - record.created_at_ms),
        }
    }
}

/// Keeps the pause `outcome` carries in the store, with an approval for each call it
/// waits for that has none yet (those in `awaited` have one), and a handle for it
/// (`GET /v1/executions/{id}`) unless it has one already. `outcome` is told: its
/// `approvals`; or, when the pause cannot be kept, an end: `tool_denied` when its
/// user has [`MAX_PENDING_APPROVALS`] pending, `unavailable` when the store failed.
pub(crate) async fn keep_paused(
    store: &Arc<dyn Store>,
    public_url: Option<&str>,
    context: &PauseContext,
    outcome: &mut Outcome,
    awaited: &[u32],
    result_ttl: Duration,
) {
    if let Err(error) = try_keep_paused(store, public_url, context, outcome, awaited, result_ttl).await {
        // Not kept, so nothing could resume it: it ends here, recorded as such.
        tracing::warn!(%error, execution_id = %outcome.execution_id, "could not keep a paused execution");
        outcome.paused = None;
        outcome.status = None;
        outcome.approvals.clear();
        outcome.error = Some(ExecError::new(
            Kind::Unavailable,
            format!("the execution paused for approval, but the store could not keep it: {error}"),
        ));
    }
}

async fn try_keep_paused(
    store: &Arc<dyn Store>,
    public_url: Option<&str>,
    context: &PauseContext,
    outcome: &mut Outcome,
    awaited: &[u32],
    result_ttl: Duration,
) -> Result<(), StoreError> {
    let Some(paused) = outcome.paused.as_deref() else { return Ok(()) };
    let now = now_ms();
    let mut approvals = Vec::new();
    for held in paused.held.iter().filter(|held| !awaited.contains(&held.id)) {
        let expires_after_s = held.hold.detail.get("expires_after_s").and_then(Value::as_u64).unwrap_or(86_400);
        approvals.push(ApprovalRecord {
            id: format!("apr_{}", uuid::Uuid::now_v7().simple()),
            execution_id: outcome.execution_id.clone(),
            call_id: held.id,
            user: context.user.clone(),
            team: context.team.clone(),
            key: context.key.clone(),
            tool: held.name.clone(),
            args: held.args.to_string(),
            detail: held.hold.detail.to_string(),
            status: ApprovalStatus::Pending,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(i64::try_from(expires_after_s.saturating_mul(1000)).unwrap_or(i64::MAX)),
            decided_by: None,
            decided_at_ms: None,
            reason: None,
        });
    }
    let record = PausedRecord {
        id: outcome.execution_id.clone(),
        user: context.user.clone(),
        team: context.team.clone(),
        key: context.key.clone(),
        context: serde_json::to_string(context).unwrap_or_default(),
        state: serde_json::to_string(paused).unwrap_or_default(),
        memory: paused.memory.encode(),
        paused_at_ms: now,
        claimed_at_ms: None,
    };
    if !store.pause(&record, &approvals, MAX_PENDING_APPROVALS).await? {
        outcome.paused = None;
        outcome.status = None;
        outcome.error = Some(ExecError::new(
            Kind::ToolDenied,
            format!(
                "{} needs approval, but user `{}` already has {MAX_PENDING_APPROVALS} calls waiting for approval, \
                 the most one user may have; the call was not made",
                approvals.first().map_or("a call", |a| a.tool.as_str()),
                context.user
            ),
        ));
        return Ok(());
    }
    // An execution resumes only once none of its approvals is pending, so those just
    // made are all it waits for.
    outcome.approvals = approvals
        .iter()
        .map(|a| json!({"id": a.id, "tool": a.tool, "expires_at": super::sessions::time(a.expires_at_ms), "url": approval_url(public_url, &a.id)}))
        .collect();
    let last = approvals.iter().map(|a| a.expires_at_ms).max().unwrap_or(now);
    let expires_at_ms = last.saturating_add(result_ttl.as_millis() as i64);
    let body = serde_json::to_string(&*outcome).unwrap_or_default();
    if context.background || store.handle(&outcome.execution_id, now).await?.is_some() {
        let end = HandleEnd { status: HandleStatus::Paused, body, ended_at_ms: now, expires_at_ms };
        store.finish_handle(&outcome.execution_id, &end).await?;
    } else {
        store
            .create_handle(&HandleRecord {
                id: outcome.execution_id.clone(),
                user: context.user.clone(),
                team: context.team.clone(),
                key: context.key.clone(),
                session_id: None,
                status: HandleStatus::Paused,
                created_at_ms: paused.started_at_ms,
                ended_at_ms: Some(now),
                expires_at_ms,
                cancel_requested: false,
                body: Some(body),
            })
            .await?;
    }
    Ok(())
}

impl Service {
    /// The approvals `viewer` may see, newest first: an admin sees every one; anyone
    /// else those of their own calls and those they may decide.
    pub async fn approvals(
        &self,
        viewer: &Principal,
        status: Option<ApprovalStatus>,
        limit: u32,
    ) -> Result<Vec<ApprovalView>, ServiceError> {
        let query = ApprovalQuery { status, limit: limit.clamp(1, 1_000), ..Default::default() };
        let records = self.store.approvals(&query).await?;
        let public_url = self.auth.public_url.clone();
        Ok(records
            .into_iter()
            .filter(|record| may_see(viewer, record))
            .map(|record| ApprovalView::new(record, public_url.as_deref()))
            .collect())
    }

    /// The approvals of execution `id` that `viewer` may see, oldest first: the
    /// execution's pauses and their decisions, for its timeline.
    pub async fn execution_approvals(&self, viewer: &Principal, id: &str) -> Result<Vec<ApprovalView>, ServiceError> {
        let query = ApprovalQuery { execution_id: Some(id.to_string()), limit: 1_000, ..Default::default() };
        let mut records = self.store.approvals(&query).await?;
        records.reverse();
        let public_url = self.auth.public_url.clone();
        Ok(records
            .into_iter()
            .filter(|record| may_see(viewer, record))
            .map(|record| ApprovalView::new(record, public_url.as_deref()))
            .collect())
    }

    /// Approvals made since `since_ms` that `viewer` may see, counted per tool and
    /// approver (see [`approval_counts`]).
    pub async fn approval_counts(&self, viewer: &Principal, since_ms: i64) -> Result<Vec<ApprovalCount>, ServiceError> {
        Ok(approval_counts(self.store.as_ref(), viewer, since_ms, None).await?)
    }

    /// The usage report's approvals: those made in the report's window
    /// (`since_ms..until_ms`, each end open when not given), counted per tool and approver.
    pub async fn usage_approvals(
        &self,
        viewer: &Principal,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<ApprovalCount>, ServiceError> {
        Ok(approval_counts(self.store.as_ref(), viewer, since_ms.unwrap_or(0), until_ms).await?)
    }

    /// Approval `id`, when `viewer` may see it.
    pub async fn approval(&self, viewer: &Principal, id: &str) -> Result<ApprovalView, ServiceError> {
        match self.store.approval(id).await? {
            Some(record) if may_see(viewer, &record) => Ok(ApprovalView::new(record, self.auth.public_url.as_deref())),
            _ => Err(ServiceError::NotFound(format!("no approval `{id}`"))),
        }
    }

    /// `approver` approves (or denies) approval `id`, saying `reason`. Only one of its
    /// approvers may, never the caller who made the call unless its rule allows it,
    /// and only while it is pending: a second decision, or one after it expired, is
    /// refused (`conflict`). The last decision an execution waits for resumes it here.
    pub async fn decide(
        self: &Arc<Self>,
        approver: &Principal,
        id: &str,
        approve: bool,
        reason: Option<String>,
    ) -> Result<ApprovalView, ServiceError> {
        let record = match self.store.approval(id).await? {
            Some(record) if may_see(approver, &record) => record,
            _ => return Err(ServiceError::NotFound(format!("no approval `{id}`"))),
        };
        let self_approval = detail(&record).get("self_approval").and_then(Value::as_bool).unwrap_or(false);
        if let Some(why) = refusal(approver, &record.user, &approvers(&record), self_approval) {
            return Err(ServiceError::Forbidden(why));
        }
        if let Some(reason) = &reason {
            if reason.len() > 2_000 {
                return Err(ServiceError::Invalid("the reason is longer than 2,000 bytes".into()));
            }
        }
        let status = if approve { ApprovalStatus::Approved } else { ApprovalStatus::Denied };
        let decided = Decided {
            status,
            by: Some(format!("{} (team {})", approver.user, approver.team)),
            reason,
            at_ms: now_ms(),
        };
        let Some(decided) = self.store.decide_approval(id, &decided).await? else {
            let current = self.store.approval(id).await?;
            let why = match current.as_ref().map(|r| r.status) {
                Some(ApprovalStatus::Pending) | None => "it has expired".to_string(),
                Some(status) => format!(
                    "it is {} already{}",
                    status.as_str(),
                    current.and_then(|r| r.decided_by).map(|by| format!(", by {by}")).unwrap_or_default()
                ),
            };
            return Err(ServiceError::Conflict(format!("approval `{id}` cannot be decided: {why}")));
        };
        tracing::info!(approval = %id, execution_id = %decided.execution_id, status = status.as_str(), "approval decided");
        self.resume_soon(decided.execution_id.clone());
        Ok(ApprovalView::new(decided, self.auth.public_url.as_deref()))
    }

    /// Resumes paused execution `id` in the background, once every call it waits for
    /// is decided (see [`Service::resume_paused`]).
    pub fn resume_soon(self: &Arc<Self>, id: String) {
        let service = self.clone();
        self.executions.spawn(async move {
            if let Err(error) = service.resume_paused(&id).await {
                tracing::warn!(%error, execution_id = %id, "could not resume a paused execution; the sweep retries");
            }
        });
    }

    /// Goes on with paused execution `id` on this replica, if none of its approvals is
    /// pending and no other replica is at it: its held calls released as decided, the
    /// code resumed where it stopped, its outcome recorded and kept for its handle.
    /// An execution that pauses again is kept again.
    pub async fn resume_paused(&self, id: &str) -> Result<(), ServiceError> {
        let query = ApprovalQuery { execution_id: Some(id.to_string()), limit: 1_000, ..Default::default() };
        let decisions = self.store.approvals(&query).await?;
        if decisions.iter().any(|a| a.status == ApprovalStatus::Pending) {
            return Ok(());
        }
        let now = now_ms();
        let stale = now - RESUME_STALE.as_millis() as i64;
        let Some(record) = self.store.claim_paused(id, now, stale).await? else { return Ok(()) };
        let context: PauseContext = serde_json::from_str(&record.context)
            .map_err(|e| ServiceError::Internal(format!("a paused execution's context cannot be read: {e}")))?;
        let mut paused: Paused = serde_json::from_str(&record.state)
            .map_err(|e| ServiceError::Internal(format!("a paused execution's state cannot be read: {e}")))?;
        paused.memory = MemoryImage::decode(&record.memory)
            .ok_or_else(|| ServiceError::Internal("a paused execution's memory cannot be read".into()))?;
        let principal = Arc::new(context.principal());
        let decided = paused
            .held
            .iter()
            .filter_map(|held| {
                let approval = decisions.iter().find(|a| a.call_id == held.id)?;
                let by = approval.decided_by.clone().unwrap_or_default();
                let because = approval.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                let decision = match approval.status {
                    ApprovalStatus::Approved => Ok(Arc::from(approval.id.as_str())),
                    ApprovalStatus::Denied => Err(ExecError::new(
                        Kind::ToolDenied,
                        format!("{} was denied by {by}{because} (approval {})", held.name, approval.id),
                    )),
                    ApprovalStatus::Expired => Err(ExecError::new(
                        Kind::ToolDenied,
                        format!("{} was not approved in time: approval {} expired", held.name, approval.id),
                    )),
                    ApprovalStatus::Pending => return None,
                };
                Some((held.id, decision))
            })
            .collect();
        let capabilities = self.policies.current().capabilities(&principal);
        // Mounted directories, as the policies grant them now (writes to them landed
        // at once before the pause; a session's workspace never pauses).
        let workspace = crate::sessions::workspace::Workspace::new(
            None,
            capabilities.files.clone(),
            context.limits.result_bytes,
            self.scratch.clone(),
            crate::sessions::workspace::MountWrites {
                store: self.store.clone(),
                owner: crate::store::Owner::of(&principal),
            },
        );
        let workspace = (!workspace.is_empty()).then(|| Arc::new(workspace));
        let at = super::DoorsAt {
            workspace: workspace.clone(),
            agent_session: context.agent_session.clone(),
            session: None,
            used: Some(&paused.door_calls),
        };
        let doors = self.doors(&principal, capabilities, &context.limits, at);
        let admission = match self.sandbox.admit() {
            Ok(admission) => admission,
            Err(overloaded) => {
                // Full now: the sweep tries again.
                self.store.release_paused(id).await?;
                return Err(ServiceError::from(overloaded));
            }
        };
        let resume = crate::sandbox::Resume {
            paused,
            decisions: decided,
            doors,
            limits: context.limits,
            id: Arc::from(id),
            trace: Default::default(),
        };
        let cancel = self.stop.child_token();
        let outcome = self.sandbox.resume(admission, resume, None, &cancel).await;
        let mut outcome = match outcome {
            Ok(outcome) => outcome,
            Err(refused) => {
                self.store.release_paused(id).await?;
                return Err(ServiceError::from(refused));
            }
        };
        let awaited: Vec<u32> = decisions.iter().map(|a| a.call_id).collect();
        let mount_bytes = match &workspace {
            Some(workspace) => workspace.finish(false).await.1,
            None => 0,
        };
        if mount_bytes > 0 {
            let event = super::sessions::event(&principal, "", "files_written", mount_bytes);
            self.ledger.record(vec![event]).await?;
        }
        if outcome.paused.is_some() {
            let public_url = self.auth.public_url.as_deref();
            keep_paused(&self.store, public_url, &context, &mut outcome, &awaited, self.result_ttl).await;
        }
        if outcome.paused.is_some() {
            // Only the calls so far; the execution's own record comes when it ends.
            let mut calls = super::records(&principal, &outcome, context.agent_session.clone());
            calls.retain(|r| matches!(r, crate::store::Record::Call(_)));
            self.ledger.record(calls).await?;
            return Ok(());
        }
        self.end_paused_execution(&principal, outcome, context.agent_session).await?;
        tracing::info!(execution_id = %id, "a paused execution ended");
        Ok(())
    }

    /// Ends a paused execution with `outcome`: its record (and its calls since it went
    /// on) in the ledger, its result kept for its handle, its pause forgotten.
    async fn end_paused_execution(
        &self,
        principal: &Principal,
        mut outcome: Outcome,
        agent_session: Option<String>,
    ) -> Result<(), ServiceError> {
        let ended = now_ms();
        self.ledger.record(super::records(principal, &outcome, agent_session)).await?;
        let body = super::handles::kept_body(&mut outcome);
        let end = HandleEnd {
            status: super::handles::status_of(&outcome),
            body,
            ended_at_ms: ended,
            expires_at_ms: ended + self.result_ttl.as_millis() as i64,
        };
        self.store.finish_handle(&outcome.execution_id, &end).await?;
        self.store.end_paused(&outcome.execution_id).await?;
        Ok(())
    }

    /// Cancels paused execution `id` of `principal`: no replica will resume it, its
    /// pending approvals are denied (so no approver is asked any more), and it ends
    /// `cancelled`, recorded with what it used before the pause.
    pub async fn cancel_paused(&self, principal: &Principal, id: &str) -> Result<(), ServiceError> {
        let now = now_ms();
        // Claimed for good: no other replica resumes it while it is cancelled.
        let Some(record) = self.store.claim_paused(id, now, now - RESUME_STALE.as_millis() as i64).await? else {
            return Ok(());
        };
        let query = ApprovalQuery { execution_id: Some(id.to_string()), limit: 1_000, ..Default::default() };
        for approval in self.store.approvals(&query).await?.iter().filter(|a| a.status == ApprovalStatus::Pending) {
            let decided = Decided {
                status: ApprovalStatus::Denied,
                by: Some(format!(
                    "{} (team {}), the caller, who cancelled the execution",
                    principal.user, principal.team
                )),
                reason: Some("the execution was cancelled".into()),
                at_ms: now,
            };
            self.store.decide_approval(&approval.id, &decided).await?;
        }
        let paused: Option<Paused> = serde_json::from_str(&record.state).ok();
        let error = ExecError::new(Kind::Cancelled, "the execution was cancelled by its caller while it was paused");
        let usage = paused.as_ref().map(|p| crate::sandbox::Usage {
            fuel: p.fuel_used,
            wall_ms: p.wall_ms,
            memory_bytes: p.memory_peak,
            host_calls: p.calls_started,
            strip: None,
        });
        let outcome = Outcome {
            ok: false,
            result: None,
            logs: paused.as_ref().map(|p| p.logs.clone()).unwrap_or_default(),
            error: Some(error),
            status: None,
            approvals: Vec::new(),
            usage: usage.unwrap_or_default(),
            execution_id: id.to_string(),
            started_at_ms: paused.as_ref().map_or(now, |p| p.started_at_ms),
            calls: Vec::new(),
            session_image: None,
            paused: None,
        };
        let context: Option<PauseContext> = serde_json::from_str(&record.context).ok();
        self.end_paused_execution(principal, outcome, context.and_then(|c| c.agent_session)).await
    }

    /// Every [`APPROVAL_SWEEP`] until the service stops: approvals past their time
    /// expire, and paused executions with nothing pending that no replica is at (their
    /// deciding replica died, or was full) are resumed here.
    pub fn watch_approvals(self: &Arc<Self>) {
        self.every(APPROVAL_SWEEP, |service| async move {
            if let Err(error) = service.sweep_approvals().await {
                tracing::warn!(%error, "cannot sweep approvals");
            }
        });
    }

    async fn sweep_approvals(self: &Arc<Self>) -> Result<(), ServiceError> {
        let now = now_ms();
        let query = ApprovalQuery {
            status: Some(ApprovalStatus::Pending),
            expired_by_ms: Some(now),
            limit: 1_000,
            ..Default::default()
        };
        for approval in self.store.approvals(&query).await? {
            let decided = Decided { status: ApprovalStatus::Expired, by: None, reason: None, at_ms: now };
            if let Some(expired) = self.store.decide_approval(&approval.id, &decided).await? {
                tracing::info!(approval = %expired.id, execution_id = %expired.execution_id, "approval expired");
            }
        }
        let stale = now - RESUME_STALE.as_millis() as i64;
        for id in self.store.resumable(stale).await? {
            self.resume_paused(&id).await?;
        }
        Ok(())
    }
}

/// Approvals made from `since_ms` (to `until_ms`, when given) that `viewer` may see,
/// counted per tool and approver: how many were approved, denied, expired or are
/// pending, and the median wait for a decision. For the approvals page, the usage
/// report and `sandgate usage`.
pub async fn approval_counts(
    store: &dyn Store,
    viewer: &Principal,
    since_ms: i64,
    until_ms: Option<i64>,
) -> Result<Vec<ApprovalCount>, StoreError> {
    let query = ApprovalQuery { since_ms: Some(since_ms), limit: 100_000, ..Default::default() };
    let records = store.approvals(&query).await?;
    let mut counts: std::collections::BTreeMap<(String, String), (ApprovalCount, Vec<i64>)> = Default::default();
    let within = |record: &ApprovalRecord| until_ms.is_none_or(|until| record.created_at_ms < until);
    for record in records.into_iter().filter(|record| within(record) && may_see(viewer, record)) {
        let approver = record.decided_by.clone().unwrap_or_default();
        let (count, waits) = counts.entry((record.tool.clone(), approver.clone())).or_insert_with(|| {
            (ApprovalCount { tool: record.tool.clone(), approver, ..Default::default() }, Vec::new())
        });
        match record.status {
            ApprovalStatus::Pending => count.pending += 1,
            ApprovalStatus::Approved => count.approved += 1,
            ApprovalStatus::Denied => count.denied += 1,
            ApprovalStatus::Expired => count.expired += 1,
        }
        if let Some(at) = record.decided_at_ms {
            waits.push(at - record.created_at_ms);
        }
    }
    Ok(counts
        .into_values()
        .map(|(mut count, mut waits)| {
            waits.sort_unstable();
            count.median_wait_ms = waits.get(waits.len() / 2).copied();
            count
        })
        .collect())
}

/// Whether `viewer` may see `record`: an admin, the caller, or one of its approvers.
fn may_see(viewer: &Principal, record: &ApprovalRecord) -> bool {
    viewer.role == Role::Admin
        || (viewer.user == record.user && viewer.team == record.team)
        || crate::policy::approver_matches(&approvers(record), viewer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paused execution's principal comes back whole, claims included, so the rules'
    /// conditions decide its calls after the pause as they did before it.
    #[test]
    fn a_pause_keeps_who_runs_it_and_their_claims() {
        let mut principal = Principal::of_key("laptop", "alice", "platform", Role::Member);
        principal.teams.push("leads".into());
        principal.subject = Some("https://idp#alice".into());
        let mut claims = serde_json::Map::new();
        claims.insert("groups".into(), json!(["eng"]));
        principal.claims = Some(Arc::new(crate::auth::TokenClaims(claims)));
        let context = PauseContext::new(&principal, Limits::default(), Some("agent-1".into()), true);
        let kept: PauseContext = serde_json::from_str(&serde_json::to_string(&context).unwrap()).unwrap();
        let back = kept.principal();
        assert_eq!(
            (back.user.as_str(), back.team.as_str(), &back.teams, back.key.as_str(), back.role, &back.subject),
            ("alice", "platform", &principal.teams, "laptop", Role::Member, &principal.subject)
        );
        assert_eq!(back.claims, principal.claims);
        assert_eq!((kept.agent_session.as_deref(), kept.background), (Some("agent-1"), true));
    }
}

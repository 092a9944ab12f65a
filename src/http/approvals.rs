//! Calls waiting for a person: `GET /v1/approvals` lists those the caller may see
//! (their own, those they may decide; an admin every one), `GET /v1/approvals/{id}`
//! shows one, and `POST /v1/approvals/{id}` with `{"decision": "approve" | "deny",
//! "reason": "…"}` decides it. The last decision a paused execution waits for resumes
//! it (see `crate::service::approvals`).

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::extract::{Caller, JsonBody};
use super::{ApiError, AppState};
use crate::error::Kind;
use crate::service::approvals::ApprovalView;
use crate::store::ApprovalStatus;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    /// `pending` (the default), `approved`, `denied`, `expired` or `all`.
    status: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn list(
    State(app): State<AppState>,
    Caller(principal): Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::new(Kind::InvalidRequest, e.body_text()))?;
    let status = match params.status.as_deref().unwrap_or("pending") {
        "all" => None,
        text => Some(ApprovalStatus::parse(text).map_err(|_| {
            ApiError::new(
                Kind::InvalidRequest,
                format!("status `{text}` is not pending, approved, denied, expired or all"),
            )
        })?),
    };
    let approvals = app.service.approvals(&principal, status, params.limit.unwrap_or(100)).await?;
    Ok(Json(serde_json::json!({ "approvals": approvals })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CountParams {
    /// The last this many days (default 30).
    days: Option<u32>,
}

/// `GET /v1/approvals/counts?days=30`: the approvals the caller may see, counted
/// per tool and approver, with the median wait for a decision.
pub(super) async fn counts(
    State(app): State<AppState>,
    Caller(principal): Caller,
    params: Result<Query<CountParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::new(Kind::InvalidRequest, e.body_text()))?;
    let days = i64::from(params.days.unwrap_or(30).clamp(1, 3_650));
    let since = crate::time::now_ms() - days * 86_400_000;
    let counts = app.service.approval_counts(&principal, since).await?;
    Ok(Json(serde_json::json!({ "days": days, "counts": counts })))
}

pub(super) async fn show(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> Result<Json<ApprovalView>, ApiError> {
    Ok(Json(app.service.approval(&principal, &id).await?))
}

/// `POST /v1/approvals/{id}`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Decision {
    decision: Option<Verdict>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Approve,
    Deny,
}

pub(super) async fn decide(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
    JsonBody(decision): JsonBody<Decision>,
) -> Result<Json<ApprovalView>, ApiError> {
    let approve = match decision.decision {
        Some(verdict) => matches!(verdict, Verdict::Approve),
        None => {
            return Err(ApiError::new(
                Kind::InvalidRequest,
                "say the decision: {\"decision\": \"approve\" or \"deny\"}",
            ))
        }
    };
    Ok(Json(app.service.decide(&principal, &id, approve, decision.reason).await?))
}

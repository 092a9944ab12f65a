//! `GET /v1/usage?group_by=user|team|model|tier|day|agent_session&since=&until=&user=`: totals per
//! group from the ledger. Admins see everyone; others see only their own usage.

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::Caller;
use super::{ApiError, AppState};
use crate::error::Kind;
use crate::store::{self, GroupBy, UsageQuery, UsageRow};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Params {
    #[serde(default)]
    group_by: GroupBy,
    since: Option<String>,
    until: Option<String>,
    user: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    group_by: GroupBy,
    rows: Vec<UsageRow>,
    totals: UsageRow,
    /// Calls that waited for approval in the window, per tool and approver (those the
    /// caller may see).
    approvals: Vec<crate::service::approvals::ApprovalCount>,
}

pub(super) async fn usage(
    State(app): State<AppState>,
    Caller(principal): Caller,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Report>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::new(Kind::InvalidRequest, e.body_text()))?;
    let bound = |text: Option<String>| {
        text.map(|t| store::usage_time(&t)).transpose().map_err(|e| ApiError::new(Kind::InvalidRequest, e))
    };
    let query = UsageQuery {
        group_by: params.group_by,
        since_ms: bound(params.since)?,
        until_ms: bound(params.until)?,
        user: params.user,
    };
    let (since_ms, until_ms) = (query.since_ms, query.until_ms);
    let rows = app.service.usage(&principal, query).await?;
    let totals = store::total(&rows);
    let approvals = app.service.usage_approvals(&principal, since_ms, until_ms).await?;
    Ok(Json(Report { group_by: params.group_by, rows, totals, approvals }))
}

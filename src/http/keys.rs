//! Who the caller is, and personal keys.
//!
//! - `GET /v1/me`: the caller as sandgate sees them (user, teams, role, how they
//!   authenticated).
//! - `POST /v1/keys {name?, expires_in_s?}`: issues the caller, signed in with SSO, a
//!   personal key (201; the secret is in the answer, once).
//! - `GET /v1/keys`: the caller's live personal keys; `?all=true`: an admin's view
//!   of every key in the store, with its owner.
//! - `DELETE /v1/keys/{name}`: revokes one (its owner's, or any for an admin).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Caller, JsonBody};
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::error::Kind;
use crate::service::keys::{KeyInfo, KeyRequest};

/// How a principal authenticated, as `/v1/me` says it.
pub fn via(principal: &Principal) -> &'static str {
    match (principal.local, principal.signed_in, principal.subject.is_some()) {
        (true, _, _) => "local",
        (_, true, _) => "sso",
        (_, false, true) => "personal_key",
        _ => "key",
    }
}

#[derive(Serialize)]
struct Me<'a> {
    user: &'a str,
    team: &'a str,
    teams: &'a [String],
    role: &'static str,
    /// The key's name, or the issuer's for a token.
    key: &'a str,
    via: &'static str,
    subject: Option<&'a str>,
}

pub(super) async fn me(Caller(principal): Caller) -> Json<serde_json::Value> {
    let me = Me {
        user: &principal.user,
        team: &principal.team,
        teams: &principal.teams,
        role: principal.role.as_str(),
        key: &principal.key,
        via: via(&principal),
        subject: principal.subject.as_deref(),
    };
    Json(serde_json::to_value(me).unwrap_or_default())
}

#[derive(Serialize)]
struct Issued {
    /// The secret, shown this once.
    key: String,
    #[serde(flatten)]
    info: KeyInfo,
}

pub(super) async fn create(
    State(app): State<AppState>,
    Caller(principal): Caller,
    JsonBody(request): JsonBody<KeyRequest>,
) -> Result<Response, ApiError> {
    let (key, stored) = app.service.issue_personal_key(&principal, request).await?;
    Ok((StatusCode::CREATED, Json(Issued { key, info: KeyInfo::of(&stored) })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    #[serde(default)]
    all: bool,
}

pub(super) async fn list(
    State(app): State<AppState>,
    Caller(principal): Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::new(Kind::InvalidRequest, e.body_text()))?;
    let keys: Vec<KeyInfo> = app.service.personal_keys(&principal, params.all).await?.iter().map(KeyInfo::of).collect();
    Ok(Json(serde_json::json!({ "keys": keys })))
}

pub(super) async fn revoke(
    State(app): State<AppState>,
    Caller(principal): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.service.revoke_personal_key(&principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

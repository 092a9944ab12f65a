//! sandgate as an OAuth 2.1 resource server, as the MCP authorization spec asks
//! (revisions 2025-11-25 and 2026-07-28): its protected-resource metadata (RFC 9728)
//! names the organisation's identity provider, and a request to `/mcp` without a
//! valid token is told where to find that metadata:
//! `WWW-Authenticate: Bearer resource_metadata="…/.well-known/oauth-protected-resource/mcp"`.
//! A client then signs its user in at the provider (PKCE, with `resource` naming
//! sandgate, RFC 8707) and comes back with a token whose `aud` is sandgate's.
//! That token is sandgate's alone: nothing passes it on to an upstream MCP server or
//! model provider.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{ApiError, AppState};
use crate::error::Kind;

/// Where metadata lives, for the whole server and for `/mcp` (RFC 9728's
/// path-suffixed form).
pub(super) const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The URL clients reach sandgate at: `[auth] public_url`, else the scheme and
/// `Host` this request came in on.
pub(crate) fn base_url(app: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &app.service.auth_config().public_url {
        return url.clone();
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let https = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

fn metadata(app: &AppState, headers: &HeaderMap, path: &str) -> Response {
    let issuers = app.service.identity();
    if issuers.is_empty() {
        return ApiError::new(Kind::NotFound, "no identity provider is configured: this server takes API keys only")
            .into_response();
    }
    let resource = format!("{}{path}", base_url(app, headers));
    let scopes: Vec<&str> =
        issuers.all().iter().flat_map(|i| i.config.scopes.iter().map(String::as_str)).fold(Vec::new(), |mut all, s| {
            if !all.contains(&s) {
                all.push(s);
            }
            all
        });
    let body = serde_json::json!({
        "resource": resource,
        "authorization_servers": issuers.all().iter().map(|i| i.config.issuer.as_str()).collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
        "scopes_supported": scopes,
        "resource_name": "sandgate",
    });
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}

/// `GET /.well-known/oauth-protected-resource`: the whole server as a resource.
pub(super) async fn server_metadata(State(app): State<AppState>, headers: HeaderMap) -> Response {
    metadata(&app, &headers, "")
}

/// `GET /.well-known/oauth-protected-resource/mcp`: `/mcp` as a resource.
pub(super) async fn mcp_metadata(State(app): State<AppState>, headers: HeaderMap) -> Response {
    metadata(&app, &headers, "/mcp")
}

/// `GET /v1/auth/cli`: what `sandgate login` needs to sign a person in on the
/// command line: sandgate's resource identifier (the `resource` its tokens are asked
/// for, RFC 8707) and each issuer with a client for the command line.
pub(super) async fn cli_login(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let issuers: Vec<serde_json::Value> = app
        .service
        .identity()
        .all()
        .iter()
        .filter_map(|issuer| {
            let config = &issuer.config;
            let mut scopes = config.scopes.clone();
            // A refresh token is what lets `sandgate token` print fresh tokens.
            if !scopes.iter().any(|s| s == "offline_access") {
                scopes.push("offline_access".into());
            }
            Some(serde_json::json!({
                "name": config.name,
                "issuer": config.issuer,
                "client_id": config.cli_client_id.as_ref()?,
                "scopes": scopes,
            }))
        })
        .collect();
    if issuers.is_empty() {
        return ApiError::new(
            Kind::NotFound,
            "no identity provider has a client for the command line ([[auth.oidc]] cli_client_id): sign in with an \
             API key instead",
        )
        .into_response();
    }
    Json(serde_json::json!({ "resource": base_url(&app, &headers), "issuers": issuers })).into_response()
}

/// `refused` (a 401 on `/mcp`) with the challenge that sends an MCP client to sign in.
pub(super) fn challenge(app: &AppState, headers: &HeaderMap, refused: ApiError) -> Response {
    let presented = super::credential(app, headers).is_some();
    let mut response = refused.into_response();
    if response.status() != StatusCode::UNAUTHORIZED || app.service.identity().is_empty() {
        return response;
    }
    let url = format!("{}{METADATA_PATH}/mcp", base_url(app, headers));
    let error = if presented { r#", error="invalid_token""# } else { "" };
    if let Ok(value) = HeaderValue::from_str(&format!(r#"Bearer resource_metadata="{url}"{error}"#)) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

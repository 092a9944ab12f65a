//! The extractors every route shares: who is calling ([`Caller`]) and a JSON body
//! read under the server's limits ([`JsonBody`]), each refusing with sandgate's own
//! error body instead of axum's.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::Kind;

/// The caller of a request, from its bearer token (401 with a challenge otherwise).
pub struct Caller(pub Arc<Principal>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Ok(Caller(super::authenticate(app, &parts.headers).await?))
    }
}

/// A JSON body of type `T`, read up to `http.max_body_bytes` within the body timeout
/// (413 and 408 past them), and 400 when it is not `T`. An empty body reads as `T`'s
/// default.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = super::read_body(&parts.headers, body, app.config.http.max_body_bytes).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(Kind::InvalidRequest, format!("invalid request body: {e}")))
    }
}

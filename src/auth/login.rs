//! sandgate signing a person in at the identity provider (as a relying party): the
//! authorization code flow with PKCE (S256), for the console's "Sign in with SSO".
//!
//! The person is who the ID token says, checked like any token (signature, `iss`,
//! `exp`), with `aud` the client sandgate is registered as and the `nonce` of this
//! sign-in. Claims the ID token leaves out (many providers put `email` or `groups`
//! only in userinfo) are read from the userinfo endpoint with the access token.

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::oidc::{Claims, Issuer, TokenError};
use super::Principal;

/// A random URL-safe value of 256 bits: a `state`, `nonce` or PKCE verifier.
pub fn random_value() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 challenge of a PKCE verifier.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// What one sign-in sends and must find again when the person comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

impl Pending {
    pub fn new() -> Self {
        Self { state: random_value(), nonce: random_value(), verifier: random_value() }
    }
}

impl Default for Pending {
    fn default() -> Self {
        Self::new()
    }
}

fn client_id(issuer: &Issuer) -> Result<&str, TokenError> {
    issuer.config.client_id.as_deref().ok_or_else(|| {
        TokenError::Unreachable(format!(
            "issuer `{}` has no client_id: set [[auth.oidc]] client_id to sign people in",
            issuer.config.name
        ))
    })
}

/// Where to send the browser to sign in.
pub async fn authorization_url(issuer: &Issuer, redirect_uri: &str, pending: &Pending) -> Result<String, TokenError> {
    let discovery = issuer.discovery().await?;
    let endpoint = discovery
        .authorization_endpoint
        .as_deref()
        .ok_or_else(|| TokenError::Unreachable("discovery names no authorization_endpoint".into()))?;
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id(issuer)?)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &issuer.config.scopes.join(" "))
        .append_pair("state", &pending.state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &challenge(&pending.verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let joiner = if endpoint.contains('?') { '&' } else { '?' };
    Ok(format!("{endpoint}{joiner}{query}"))
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    access_token: Option<String>,
}

/// Redeems `code` and returns the person it signed in (their `subject` is the ID
/// token's `iss` and `sub`).
pub async fn finish(
    issuer: &Issuer,
    code: &str,
    redirect_uri: &str,
    pending: &Pending,
) -> Result<Principal, TokenError> {
    let discovery = issuer.discovery().await?;
    let endpoint = discovery
        .token_endpoint
        .as_deref()
        .ok_or_else(|| TokenError::Unreachable("discovery names no token_endpoint".into()))?;
    let client_id = client_id(issuer)?;
    let secret = match &issuer.config.client_secret_env {
        Some(name) => Some(std::env::var(name).map_err(|_| {
            TokenError::Unreachable(format!("the client secret's environment variable `{name}` is not set"))
        })?),
        None => None,
    };
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", pending.verifier.as_str()),
    ];
    let mut request = issuer.http().post(endpoint);
    match &secret {
        Some(secret) => request = request.basic_auth(urlencode(client_id), Some(urlencode(secret))),
        None => form.push(("client_id", client_id)),
    }
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let response = request
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| TokenError::Unreachable(format!("{endpoint}: {e}")))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| TokenError::Unreachable(format!("{endpoint}: {e}")))?;
    if !status.is_success() {
        return Err(TokenError::Invalid(format!(
            "the identity provider refused the sign-in ({status}): {}",
            text.chars().take(300).collect::<String>()
        )));
    }
    let tokens: TokenResponse =
        serde_json::from_str(&text).map_err(|e| TokenError::Malformed(format!("the token response: {e}")))?;
    let id_token = tokens.id_token.ok_or_else(|| TokenError::Invalid("the provider returned no ID token".into()))?;
    let mut claims = issuer.id_token_claims(&id_token, client_id, &pending.nonce).await?;
    let wanted = [issuer.config.user_claim.as_str(), issuer.config.teams_claim.as_str()];
    if let (Some(access), Some(userinfo)) = (&tokens.access_token, &discovery.userinfo_endpoint) {
        if wanted.iter().any(|claim| !claims.contains_key(*claim)) {
            let extra = userinfo_claims(issuer, userinfo, access).await?;
            // Userinfo is only trusted for the same subject.
            if extra.get("sub") == claims.get("sub") {
                for (name, value) in extra {
                    claims.entry(name).or_insert(value);
                }
            }
        }
    }
    issuer.principal(&claims)
}

async fn userinfo_claims(issuer: &Issuer, endpoint: &str, access_token: &str) -> Result<Claims, TokenError> {
    let response = issuer
        .http()
        .get(endpoint)
        .bearer_auth(access_token)
        .send()
        .await
        .map_err(|e| TokenError::Unreachable(format!("{endpoint}: {e}")))?;
    if !response.status().is_success() {
        return Err(TokenError::Unreachable(format!("{endpoint} answered {}", response.status())));
    }
    response.json().await.map_err(|e| TokenError::Unreachable(format!("{endpoint}: {e}")))
}

/// `application/x-www-form-urlencoded` for a client id or secret in Basic auth
/// (RFC 6749 §2.3.1).
fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenges_are_s256_of_the_verifier() {
        // BASE64URL(SHA256(verifier)) without padding, as Python's hashlib and base64 compute it.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mJ92IZ2vO5xd8tQ6yXcFqSMu7kYdBs"),
            "uOwrRQxQHTINMy2e_0gXZ1rhbBvjiJVK2ygQ7Y8IDEY"
        );
        let a = Pending::new();
        assert_ne!(a, Pending::new());
        assert_eq!(a.verifier.len(), 43);
    }
}

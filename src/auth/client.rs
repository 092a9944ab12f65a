//! sandgate's command line as an OAuth client of the organisation's identity
//! provider, for `sandgate login` and `sandgate token`: a person signs in once, with
//! the device authorization grant (RFC 8628) or the authorization code flow with PKCE
//! and a loopback redirect (RFC 8252), and the refresh token then yields fresh access
//! tokens for sandgate (`resource`, RFC 8707) whenever a client asks for one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::login::{challenge, random_value};
use super::oidc::Discovery;

/// The device grant's `grant_type`.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// How long one request to the identity provider may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why signing in or refreshing failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Unreachable(String),
    /// The provider answered with an OAuth error.
    #[error("the identity provider refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused { error: String, description: Option<String> },
    #[error("{0}")]
    Invalid(String),
}

/// What sandgate says about signing in on the command line (`GET /v1/auth/cli`).
#[derive(Clone, Debug, Deserialize)]
pub struct LoginInfo {
    /// The resource to ask tokens for: sandgate's own identifier.
    pub resource: String,
    pub issuers: Vec<LoginIssuer>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LoginIssuer {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

/// Tokens from the identity provider, with when the access token expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub expires_at: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// What the device authorization endpoint answers.
#[derive(Clone, Debug, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An HTTP client for the identity provider and sandgate: bounded, no redirects.
pub fn http() -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client builds")
}

/// The issuer's discovery document, checked to name the issuer asked for.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovery, ClientError> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let response = http.get(&url).send().await.map_err(|e| ClientError::Unreachable(format!("{url}: {e}")))?;
    if !response.status().is_success() {
        return Err(ClientError::Unreachable(format!("{url} answered {}", response.status())));
    }
    let found: Discovery = response.json().await.map_err(|e| ClientError::Unreachable(format!("{url}: {e}")))?;
    if found.issuer != issuer {
        return Err(ClientError::Invalid(format!("{url} names the issuer `{}`, not `{issuer}`", found.issuer)));
    }
    Ok(found)
}

fn token_endpoint(discovery: &Discovery) -> Result<&str, ClientError> {
    discovery.token_endpoint.as_deref().ok_or_else(|| ClientError::Invalid("discovery names no token_endpoint".into()))
}

/// Posts `form` to `endpoint`: the parsed answer, or the provider's OAuth error.
async fn post_form<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
) -> Result<T, ClientError> {
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let response = http
        .post(endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| ClientError::Unreachable(format!("{endpoint}: {e}")))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| ClientError::Unreachable(format!("{endpoint}: {e}")))?;
    if !status.is_success() {
        return Err(match serde_json::from_str::<OAuthError>(&text) {
            Ok(error) => ClientError::Refused { error: error.error, description: error.error_description },
            Err(_) => ClientError::Unreachable(format!(
                "{endpoint} answered {status}: {}",
                text.chars().take(300).collect::<String>()
            )),
        });
    }
    serde_json::from_str(&text).map_err(|e| ClientError::Invalid(format!("{endpoint}: {e}")))
}

fn tokens(response: TokenResponse, previous_refresh: Option<&str>) -> Tokens {
    Tokens {
        access_token: response.access_token,
        // A provider that does not rotate refresh tokens keeps the old one valid.
        refresh_token: response.refresh_token.or_else(|| previous_refresh.map(str::to_string)),
        expires_at: unix_now() + response.expires_in.unwrap_or(300),
    }
}

/// Starts the device grant: what to show the person.
pub async fn device_start(
    http: &reqwest::Client,
    discovery: &Discovery,
    issuer: &LoginIssuer,
    resource: &str,
) -> Result<DeviceAuthorization, ClientError> {
    let endpoint = discovery
        .device_authorization_endpoint
        .as_deref()
        .ok_or_else(|| ClientError::Invalid("the identity provider offers no device authorization endpoint".into()))?;
    let scope = issuer.scopes.join(" ");
    post_form(http, endpoint, &[("client_id", &issuer.client_id), ("scope", &scope), ("resource", resource)]).await
}

/// Polls until the person approves the device (or refuses, or the code expires).
pub async fn device_finish(
    http: &reqwest::Client,
    discovery: &Discovery,
    issuer: &LoginIssuer,
    device: &DeviceAuthorization,
) -> Result<Tokens, ClientError> {
    let endpoint = token_endpoint(discovery)?;
    let mut interval = Duration::from_secs(device.interval.unwrap_or(5).clamp(1, 60));
    let deadline = std::time::Instant::now() + Duration::from_secs(device.expires_in.min(3_600));
    loop {
        let form =
            [("grant_type", DEVICE_GRANT), ("device_code", &device.device_code), ("client_id", &issuer.client_id)];
        match post_form::<TokenResponse>(http, endpoint, &form).await {
            Ok(response) => return Ok(tokens(response, None)),
            Err(ClientError::Refused { error, .. }) if error == "authorization_pending" => {}
            Err(ClientError::Refused { error, .. }) if error == "slow_down" => interval += Duration::from_secs(5),
            Err(error) => return Err(error),
        }
        if std::time::Instant::now() + interval > deadline {
            return Err(ClientError::Invalid("the sign-in was not approved before its code expired".into()));
        }
        tokio::time::sleep(interval).await;
    }
}

/// A sign-in with the authorization code flow and a loopback redirect, under way:
/// the URL for the person's browser, and the listener the browser comes back to.
pub struct Loopback {
    pub url: String,
    listener: tokio::net::TcpListener,
    redirect_uri: String,
    state: String,
    verifier: String,
}

/// Starts a loopback sign-in: binds `127.0.0.1` on a free port.
pub async fn loopback_start(
    discovery: &Discovery,
    issuer: &LoginIssuer,
    resource: &str,
) -> Result<Loopback, ClientError> {
    let endpoint = discovery
        .authorization_endpoint
        .as_deref()
        .ok_or_else(|| ClientError::Invalid("discovery names no authorization_endpoint".into()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| ClientError::Unreachable(format!("cannot listen on loopback: {e}")))?;
    let port = listener.local_addr().map_err(|e| ClientError::Unreachable(e.to_string()))?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let (state, verifier) = (random_value(), random_value());
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &issuer.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", &issuer.scopes.join(" "))
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge(&verifier))
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", resource)
        .finish();
    let joiner = if endpoint.contains('?') { '&' } else { '?' };
    Ok(Loopback { url: format!("{endpoint}{joiner}{query}"), listener, redirect_uri, state, verifier })
}

/// Waits (at most `wait`) for the browser to come back with a code, answers it with
/// a page, and redeems the code.
pub async fn loopback_finish(
    http: &reqwest::Client,
    discovery: &Discovery,
    issuer: &LoginIssuer,
    resource: &str,
    pending: Loopback,
    wait: Duration,
) -> Result<Tokens, ClientError> {
    let code = tokio::time::timeout(wait, callback(&pending))
        .await
        .map_err(|_| ClientError::Invalid(format!("no sign-in came back within {} s", wait.as_secs())))??;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", pending.redirect_uri.as_str()),
        ("code_verifier", pending.verifier.as_str()),
        ("client_id", issuer.client_id.as_str()),
        ("resource", resource),
    ];
    Ok(tokens(post_form(http, token_endpoint(discovery)?, &form).await?, None))
}

/// Serves the loopback listener until a request to `/callback` carries this
/// sign-in's `state`: its `code`, or the provider's error.
async fn callback(pending: &Loopback) -> Result<String, ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, _) =
            pending.listener.accept().await.map_err(|e| ClientError::Unreachable(format!("loopback: {e}")))?;
        // A request line and headers fit in 16 KiB; nothing else is read.
        let mut buffer = vec![0u8; 16 << 10];
        let mut filled = 0;
        while filled < buffer.len() && !buffer[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer[filled..])).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => filled += n,
            }
        }
        let head = String::from_utf8_lossy(&buffer[..filled]);
        let target = head.lines().next().and_then(|line| line.split(' ').nth(1)).unwrap_or_default();
        let Some(query) = target.strip_prefix("/callback?") else {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            continue;
        };
        let params: std::collections::HashMap<String, String> =
            form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        if params.get("state") != Some(&pending.state) {
            let _ =
                stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            continue;
        }
        let (title, outcome) = match (params.get("code"), params.get("error")) {
            (Some(code), _) => ("Signed in", Ok(code.clone())),
            (None, error) => (
                "Sign-in failed",
                Err(ClientError::Refused {
                    error: error.cloned().unwrap_or_else(|| "no code".into()),
                    description: params.get("error_description").cloned(),
                }),
            ),
        };
        let page = format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{title}</title><h1>{title}</h1><p>You can close this page and return to the terminal.</p>"
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        return outcome;
    }
}

/// Fresh tokens from a refresh token.
pub async fn refresh(
    http: &reqwest::Client,
    discovery: &Discovery,
    client_id: &str,
    resource: &str,
    refresh_token: &str,
) -> Result<Tokens, ClientError> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", client_id),
        ("resource", resource),
    ];
    Ok(tokens(post_form(http, token_endpoint(discovery)?, &form).await?, Some(refresh_token)))
}

/// Revokes a token at the provider (RFC 7009), when it offers revocation.
pub async fn revoke(http: &reqwest::Client, discovery: &Discovery, client_id: &str, token: &str) {
    let Some(endpoint) = discovery.revocation_endpoint.as_deref() else { return };
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("token", token), ("client_id", client_id)])
        .finish();
    let _ = http.post(endpoint).header("content-type", "application/x-www-form-urlencoded").body(body).send().await;
}

//! Bearer tokens from the organisation's identity provider (OpenID Connect).
//!
//! Each `[[auth.oidc]]` issuer is found through its discovery document
//! (`/.well-known/openid-configuration`); its signing keys (JWKS) are fetched once and
//! kept. A token is checked here with `jsonwebtoken` (RSA by ring, the rest by
//! RustCrypto: see [`super::jose`]; no signature code of sandgate's own):
//! - the header's `alg` must be an asymmetric algorithm and the very one of the key
//!   its `kid` names, so `alg: none` and HS256 "signed" with a public key are refused;
//! - `iss` must be the issuer, `aud` one of the configured audiences (sandgate's own
//!   resource identifiers, RFC 8707), `exp` and `nbf` within a small leeway.
//!
//! A `kid` not in the cache triggers one refetch of the JWKS, at most once per
//! `jwks_refresh_s` per issuer and one at a time. Tokens signed with known keys never
//! wait on the provider: they are checked against the cache, which stays in force
//! while the provider is down or slow. A token naming an unknown key waits at most
//! for one bounded fetch (3 s) and is refused if the key is still unknown. So a flood
//! of made-up `kid`s costs the provider one request per interval and no one else
//! anything.
//!
//! The claims become a [`Principal`]: the user from `user_claim` (default `email`),
//! teams from `teams_claim` (default `groups`; through `teams` when that maps group
//! names to team names), admin when a group is in `admin_groups`.
//!
//! A client sends the same token with every request until it expires, so a token
//! that verified is remembered by its SHA-256 until its `exp` (at most
//! [`VERIFIED_CAPACITY`] of them): the next request with it costs a hash and a
//! lookup, not an RSA verification. What is remembered is that exact token, so a
//! token with other groups is a new token, verified and seen with its own teams at
//! once; and when the issuer's keys are fetched again every remembered token is
//! verified afresh against them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Digest;

use super::{Principal, Role};

/// The longest token accepted: real ones are 1-4 KiB; anything far larger is refused
/// before it is parsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How many verified tokens are remembered.
pub const VERIFIED_CAPACITY: usize = 50_000;

/// How long one discovery or JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// One configured issuer (`[[auth.oidc]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct OidcConfig {
    /// Names the issuer in records: a token's principal has this as its `key`.
    pub name: String,
    /// The `iss` its tokens carry, exactly; discovery is found under it.
    pub issuer: String,
    /// Accepted `aud` values: sandgate's own resource identifiers.
    pub audiences: Vec<String>,
    /// A header that carries the token instead of `Authorization` (an identity-aware
    /// proxy's signed assertion, such as `cf-access-jwt-assertion`), lower case.
    pub header: Option<String>,
    pub user_claim: String,
    pub teams_claim: String,
    /// Group name → team name. Empty: every group is a team of the same name.
    pub teams: BTreeMap<String, String>,
    /// The team of a person none of whose groups is a team; none: such a token is refused.
    pub default_team: Option<String>,
    /// Groups whose members are admins.
    pub admin_groups: Vec<String>,
    pub leeway: Duration,
    /// The least time between two JWKS fetches for unknown `kid`s.
    pub jwks_refresh: Duration,
    /// For console sign-in: the client registered at the issuer.
    pub client_id: Option<String>,
    /// The environment variable holding that client's secret (none: a public client).
    pub client_secret_env: Option<String>,
    /// For `sandgate login`: the public (native) client registered at the issuer for
    /// the command line, with the device grant or a loopback redirect allowed.
    pub cli_client_id: Option<String>,
    /// Scopes the console and `sandgate login` ask for.
    pub scopes: Vec<String>,
}

/// `[auth]`: sandgate's public address and its identity providers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthConfig {
    /// The URL clients reach sandgate at (`https://sandgate.example.com`): the
    /// resource MCP clients ask tokens for, and the base of redirect URLs.
    pub public_url: Option<String>,
    pub oidc: Vec<OidcConfig>,
}

/// Why a token was refused. Every one is a 401 to the caller, with this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token's algorithm `{0}` is not accepted: only asymmetric signatures (RS*, PS*, ES*, EdDSA) are")]
    Algorithm(String),
    #[error("the token's issuer `{0}` is not a configured identity provider")]
    UnknownIssuer(String),
    #[error("the token is signed with key `{0}`, which the identity provider does not publish")]
    UnknownKey(String),
    #[error("the identity provider's keys cannot be fetched: {0}")]
    Unreachable(String),
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the token has no `{0}` claim naming the person")]
    NoUser(String),
    #[error("none of the token's groups is a team, and [[auth.oidc]] default_team is not set")]
    NoTeam,
}

/// What discovery says about an issuer.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

/// One usable signing key.
struct SigningKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct Keys {
    /// Counts the fetches: a token verified against an earlier one is verified again.
    generation: u64,
    by_kid: HashMap<String, Arc<SigningKey>>,
    /// Keys published without a `kid` (tried for a token without one).
    anonymous: Vec<Arc<SigningKey>>,
}

/// One issuer: its configuration, discovery and cached keys.
pub struct Issuer {
    pub config: OidcConfig,
    http: reqwest::Client,
    discovery: RwLock<Option<Arc<Discovery>>>,
    keys: RwLock<Arc<Keys>>,
    /// Held while fetching; holds when the last fetch started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("issuer", &self.config.issuer).finish_non_exhaustive()
    }
}

/// Every configured issuer.
#[derive(Debug, Default)]
pub struct Issuers {
    issuers: Vec<Arc<Issuer>>,
    /// Tokens that verified, by SHA-256, until they expire.
    verified: std::sync::Mutex<HashMap<[u8; 32], Verified>>,
}

/// A token that verified: who it names, until when, against which fetch of keys.
#[derive(Debug)]
struct Verified {
    principal: Principal,
    /// `exp` plus the leeway, in Unix seconds.
    until: u64,
    issuer: usize,
    generation: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token's claims.
pub type Claims = serde_json::Map<String, serde_json::Value>;

impl Issuers {
    pub fn new(configs: &[OidcConfig]) -> Self {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds");
        let issuers = configs
            .iter()
            .map(|config| {
                Arc::new(Issuer {
                    config: config.clone(),
                    http: http.clone(),
                    discovery: RwLock::new(None),
                    keys: RwLock::new(Arc::new(Keys::default())),
                    fetching: tokio::sync::Mutex::new(None),
                })
            })
            .collect();
        Self { issuers, verified: Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn all(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    /// The headers other than `Authorization` that carry a token.
    pub fn assertion_headers(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().filter_map(|i| i.config.header.as_deref())
    }

    /// Fetches every issuer's discovery document and keys, so the first token is not
    /// kept waiting; a provider that is down is tried again when a token needs it.
    pub async fn warm(&self) {
        for issuer in &self.issuers {
            if let Err(error) = issuer.refresh(true).await {
                tracing::warn!(issuer = %issuer.config.issuer, %error, "cannot reach the identity provider yet");
            }
        }
    }

    /// True when `token` has the shape of a JWT (three base64url parts), as opposed
    /// to an API key.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
    }

    /// The principal a token names, once it is verified.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(principal) = self.remembered(&digest) {
            return Ok(principal);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) if token_alg(token).is_some() => {
                TokenError::Algorithm(token_alg(token).unwrap_or_default())
            }
            _ => TokenError::Malformed(e.to_string()),
        })?;
        if !asymmetric(header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        // The issuer is read before the signature is checked only to pick which
        // issuer's keys check it; `iss` is then verified with everything else.
        let unverified: Claims =
            jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let iss = unverified.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.config.issuer == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.chars().take(200).collect()))?;
        let (claims, generation) = issuer.verified_claims(token, &header, &issuer.config.audiences).await?;
        let principal = issuer.principal(&claims)?;
        if let Some(exp) = claims.get("exp").and_then(|e| e.as_u64()) {
            let until = exp.saturating_add(issuer.config.leeway.as_secs());
            self.remember(digest, Verified { principal: principal.clone(), until, issuer: index, generation });
        }
        Ok(principal)
    }

    /// The principal of a token verified before, while it has not expired and the
    /// issuer's keys have not been fetched again since.
    fn remembered(&self, digest: &[u8; 32]) -> Option<Principal> {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let entry = verified.get(digest)?;
        let current = self.issuers.get(entry.issuer).is_some_and(|i| i.generation() == entry.generation);
        if entry.until < unix_now() || !current {
            verified.remove(digest);
            return None;
        }
        Some(entry.principal.clone())
    }

    fn remember(&self, digest: [u8; 32], entry: Verified) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CAPACITY {
            let now = unix_now();
            verified.retain(|_, v| v.until >= now);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(digest, entry);
    }
}

/// The `alg` a token's header names, when the header is JSON with an `alg` string
/// (one `jsonwebtoken` does not know, such as `none`).
fn token_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(|s| s.chars().take(40).collect())
}

fn asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl Issuer {
    /// The discovery document, fetched when not yet known.
    pub async fn discovery(&self) -> Result<Arc<Discovery>, TokenError> {
        if let Some(found) = self.discovery.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(found);
        }
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let found: Discovery = self.fetch_json(&url).await?;
        if found.issuer != self.config.issuer {
            return Err(TokenError::Unreachable(format!(
                "{url} names the issuer `{}`, not `{}`",
                found.issuer, self.config.issuer
            )));
        }
        let found = Arc::new(found);
        *self.discovery.write().unwrap_or_else(|e| e.into_inner()) = Some(found.clone());
        Ok(found)
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, TokenError> {
        let response = self.http.get(url).send().await.map_err(|e| TokenError::Unreachable(format!("{url}: {e}")))?;
        if !response.status().is_success() {
            return Err(TokenError::Unreachable(format!("{url} answered {}", response.status())));
        }
        // A key set or discovery document is a few KiB; 1 MiB is plenty.
        let bytes = response.bytes().await.map_err(|e| TokenError::Unreachable(format!("{url}: {e}")))?;
        if bytes.len() > 1 << 20 {
            return Err(TokenError::Unreachable(format!("{url} answered more than 1 MiB")));
        }
        serde_json::from_slice(&bytes).map_err(|e| TokenError::Unreachable(format!("{url}: {e}")))
    }

    /// Fetches the JWKS again unless one was fetched within `jwks_refresh` (or
    /// another fetch is under way: then this waits for it). `force` ignores the
    /// interval (the first fetch at start).
    async fn refresh(&self, force: bool) -> Result<(), TokenError> {
        let slow = || TokenError::Unreachable(format!("no answer within {} s", FETCH_TIMEOUT.as_secs()));
        let mut last = tokio::time::timeout(FETCH_TIMEOUT, self.fetching.lock()).await.map_err(|_| slow())?;
        if !force && last.is_some_and(|at| at.elapsed() < self.config.jwks_refresh) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let set: JwkSet = tokio::time::timeout(FETCH_TIMEOUT, async {
            let discovery = self.discovery().await?;
            self.fetch_json(&discovery.jwks_uri).await
        })
        .await
        .map_err(|_| slow())??;
        let mut keys = usable_keys(&set);
        keys.generation = self.generation() + 1;
        tracing::info!(issuer = %self.config.issuer, keys = keys.by_kid.len() + keys.anonymous.len(), "fetched the identity provider's keys");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(())
    }

    fn key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<SigningKey>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None => keys.anonymous.iter().find(|k| k.algorithm == alg).cloned(),
        }
    }

    /// How many times the keys have been fetched.
    fn generation(&self) -> u64 {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).generation
    }

    /// The claims of an ID token this issuer made for the client `client_id` in
    /// answer to a sign-in that sent `nonce`.
    pub async fn id_token_claims(&self, token: &str, client_id: &str, nonce: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !asymmetric(header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let (claims, _) = self.verified_claims(token, &header, &[client_id.to_string()]).await?;
        if claims.get("nonce").and_then(|n| n.as_str()) != Some(nonce) {
            return Err(TokenError::Invalid("its nonce is not the sign-in's".into()));
        }
        Ok(claims)
    }

    /// The HTTP client for this issuer's endpoints (bounded timeouts, no redirects).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn verified_claims(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        audiences: &[String],
    ) -> Result<(Claims, u64), TokenError> {
        let generation = self.generation();
        let kid = header.kid.as_deref();
        let key = match self.key(kid, header.alg) {
            Some(key) => key,
            None => {
                // An unknown key: one refetch, bounded by the interval; a fetch that
                // fails leaves the cached keys in place.
                if let Err(error) = self.refresh(false).await {
                    tracing::warn!(issuer = %self.config.issuer, %error, "cannot refresh the identity provider's keys");
                }
                self.key(kid, header.alg)
                    .ok_or_else(|| TokenError::UnknownKey(kid.unwrap_or("(none)").chars().take(100).collect()))?
            }
        };
        if key.algorithm != header.alg {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            TokenError::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "it has expired".into(),
                ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".into(),
                ErrorKind::InvalidAudience => {
                    format!("it was issued for another audience; sandgate accepts {audiences:?}")
                }
                ErrorKind::InvalidIssuer => "its issuer does not match".into(),
                ErrorKind::InvalidSignature => "its signature does not verify".into(),
                ErrorKind::InvalidAlgorithm => "its algorithm does not match the key".into(),
                ErrorKind::MissingRequiredClaim(claim) => format!("it has no `{claim}` claim"),
                _ => e.to_string(),
            })
        })?;
        Ok((data.claims, generation))
    }

    /// The person the verified `claims` name.
    pub fn principal(&self, claims: &Claims) -> Result<Principal, TokenError> {
        let config = &self.config;
        let user = claims
            .get(&config.user_claim)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| TokenError::NoUser(config.user_claim.clone()))?;
        let groups: Vec<&str> = match claims.get(&config.teams_claim) {
            Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect(),
            Some(serde_json::Value::String(text)) => text.split([',', ' ']).filter(|g| !g.is_empty()).collect(),
            _ => Vec::new(),
        };
        let mut teams: Vec<String> = Vec::new();
        for group in &groups {
            let team =
                if config.teams.is_empty() { Some(*group) } else { config.teams.get(*group).map(String::as_str) };
            if let Some(team) = team {
                if !teams.iter().any(|t| t == team) {
                    teams.push(team.to_string());
                }
            }
        }
        if teams.is_empty() {
            teams.push(config.default_team.clone().ok_or(TokenError::NoTeam)?);
        }
        let role =
            if groups.iter().any(|g| config.admin_groups.iter().any(|a| a == g)) { Role::Admin } else { Role::Member };
        Ok(Principal {
            user: user.chars().take(256).collect(),
            team: teams[0].clone(),
            teams,
            key: config.name.clone(),
            role,
            subject: claims.get("sub").and_then(|s| s.as_str()).map(|sub| format!("{}#{sub}", config.issuer)),
            signed_in: true,
            local: false,
            claims: Some(Arc::new(super::TokenClaims(claims.clone()))),
        })
    }
}

/// The keys of `set` sandgate can verify with, each with its one algorithm.
fn usable_keys(set: &JwkSet) -> Keys {
    let mut keys = Keys::default();
    for jwk in &set.keys {
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
            continue;
        }
        let named = jwk.common.key_algorithm.and_then(|a| match a {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::ES384 => Some(Algorithm::ES384),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            _ => None,
        });
        // Without an `alg`, the key's type decides (RS256 for RSA, as OIDC's default).
        let algorithm = match (&jwk.algorithm, named) {
            (AlgorithmParameters::RSA(_), Some(a)) if a.family() == jsonwebtoken::AlgorithmFamily::Rsa => a,
            (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), named) => match (&p.curve, named) {
                (EllipticCurve::P256, None | Some(Algorithm::ES256)) => Algorithm::ES256,
                (EllipticCurve::P384, None | Some(Algorithm::ES384)) => Algorithm::ES384,
                _ => continue,
            },
            (AlgorithmParameters::OctetKeyPair(_), None | Some(Algorithm::EdDSA)) => Algorithm::EdDSA,
            // Symmetric keys and mismatched `alg`s are never used.
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        let key = Arc::new(SigningKey { key, algorithm });
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid.clone(), key);
            }
            None => keys.anonymous.push(key),
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(teams: &[(&str, &str)], default_team: Option<&str>) -> Issuer {
        let config = OidcConfig {
            name: "sso".into(),
            issuer: "https://idp.example.com".into(),
            audiences: vec!["https://sandgate.example.com".into()],
            header: None,
            user_claim: "email".into(),
            teams_claim: "groups".into(),
            teams: teams.iter().map(|(g, t)| (g.to_string(), t.to_string())).collect(),
            default_team: default_team.map(str::to_string),
            admin_groups: vec!["sandgate-admins".into()],
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(30),
            client_id: None,
            client_secret_env: None,
            cli_client_id: None,
            scopes: vec![],
        };
        Issuers::new(&[config]).issuers.pop().map(|i| Arc::try_unwrap(i).ok().unwrap()).unwrap()
    }

    fn claims(value: serde_json::Value) -> Claims {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn claims_map_to_person_teams_and_role() {
        let plain = issuer(&[], None);
        let p = plain
            .principal(&claims(serde_json::json!({"email": "ada@example.com", "groups": ["eng", "sandgate-admins"]})))
            .unwrap();
        assert_eq!((p.user.as_str(), p.team.as_str(), p.role), ("ada@example.com", "eng", Role::Admin));
        assert_eq!(p.teams, vec!["eng".to_string(), "sandgate-admins".to_string()]);
        assert_eq!(p.key, "sso");
        let mapped = issuer(&[("grp-payments", "payments")], None);
        let p = mapped
            .principal(&claims(serde_json::json!({"email": "bo@example.com", "groups": ["all", "grp-payments"]})))
            .unwrap();
        assert_eq!((p.team.as_str(), p.role), ("payments", Role::Member));
        assert_eq!(
            mapped.principal(&claims(serde_json::json!({"email": "c@example.com", "groups": ["all"]}))),
            Err(TokenError::NoTeam)
        );
        let fallback = issuer(&[("grp-payments", "payments")], Some("everyone"));
        assert_eq!(
            fallback.principal(&claims(serde_json::json!({"email": "c@example.com"}))).unwrap().team,
            "everyone"
        );
        assert_eq!(
            plain.principal(&claims(serde_json::json!({"groups": ["eng"]}))),
            Err(TokenError::NoUser("email".into()))
        );
    }

    #[test]
    fn only_asymmetric_well_formed_tokens_get_as_far_as_a_key() {
        let issuers = Issuers { issuers: vec![Arc::new(issuer(&[], None))], verified: Default::default() };
        let block = |f| futures::executor::block_on(f);
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(block(issuers.verify(&huge)), Err(TokenError::TooLarge));
        // {"alg":"none"} . {"iss":"https://idp.example.com"} .
        let none = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbSJ9.";
        assert_eq!(block(issuers.verify(none)), Err(TokenError::Algorithm("none".into())));
        // {"alg":"HS256"} . {"iss":"https://idp.example.com"} . x
        let hs = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbSJ9.eA";
        assert_eq!(block(issuers.verify(hs)), Err(TokenError::Algorithm("HS256".into())));
        assert!(matches!(block(issuers.verify("eyJ.not.jwt")), Err(TokenError::Malformed(_))));
        assert!(Issuers::looks_like_jwt(none) && !Issuers::looks_like_jwt("sg_abc"));
    }
}

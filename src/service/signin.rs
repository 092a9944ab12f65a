//! Console sign-ins, kept in the store so that every replica knows them and a
//! sign-out ends one everywhere (the cookie itself is in `console::signin`).

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Mode, Service, ServiceError};
use crate::auth::Principal;
use crate::store::{now_ms, ConsoleSession};

/// A sign-in through the identity provider, as the store keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SsoSubject {
    /// `iss#sub`: who the provider vouched for.
    subject: String,
    user: String,
    teams: Vec<String>,
    role: crate::auth::Role,
    key: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the store names a sign-in: the SHA-256 of its secret, so a copy of the store
/// cannot sign anyone in.
fn stored_id(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Who a sign-in with `key` is: the key itself (its hash), not its name.
fn key_subject(key_hash: &[u8; 32]) -> String {
    format!("key:{}", hex(key_hash))
}

impl Service {
    /// Signs a console browser in with the API key `key`, for `lifetime_ms`: the
    /// sign-in's secret, for the browser's cookie, and who signed in.
    pub async fn console_sign_in(&self, key: &str, lifetime_ms: i64) -> Result<(String, Arc<Principal>), ServiceError> {
        let principal = self.authenticate_key(key)?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| ServiceError::Internal(format!("no random source: {e}")))?;
        let secret = hex(&secret);
        let now = now_ms();
        let session = ConsoleSession {
            id: stored_id(&secret),
            subject: key_subject(&crate::auth::digest(key)),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(lifetime_ms),
        };
        self.store.create_console_session(&session).await?;
        Ok((secret, principal))
    }

    /// Signs a console browser in as `principal`, whom the identity provider vouched
    /// for (as its `subject`, `iss#sub`): the sign-in's secret. The person's teams and
    /// role are those of the sign-in; signing in again takes up changed groups.
    pub async fn console_sign_in_sso(&self, principal: &Principal, lifetime_ms: i64) -> Result<String, ServiceError> {
        let subject = principal
            .subject
            .as_deref()
            .ok_or_else(|| ServiceError::Internal("an SSO sign-in names no subject".into()))?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| ServiceError::Internal(format!("no random source: {e}")))?;
        let secret = hex(&secret);
        let now = now_ms();
        let who = SsoSubject {
            subject: subject.to_string(),
            user: principal.user.clone(),
            teams: principal.teams.clone(),
            role: principal.role,
            key: principal.key.clone(),
        };
        let session = ConsoleSession {
            id: stored_id(&secret),
            subject: format!("sso:{}", serde_json::to_string(&who).map_err(|e| ServiceError::Internal(e.to_string()))?),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(lifetime_ms),
        };
        self.store.create_console_session(&session).await?;
        Ok(secret)
    }

    /// Who the console sign-in with `secret` is, while it lasts (and, for a key's,
    /// while its key exists).
    pub async fn console_viewer(&self, secret: &str) -> Result<Option<Arc<Principal>>, ServiceError> {
        if self.mode == Mode::Local {
            return Ok(Some(Arc::new(Principal::local())));
        }
        let Some(session) = self.store.console_session(&stored_id(secret), now_ms()).await? else {
            return Ok(None);
        };
        if let Some(json) = session.subject.strip_prefix("sso:") {
            // An issuer no longer configured signs no one in.
            let Ok(who) = serde_json::from_str::<SsoSubject>(json) else { return Ok(None) };
            if !self.identity.all().iter().any(|i| who.subject.starts_with(&format!("{}#", i.config.issuer))) {
                return Ok(None);
            }
            let team = who.teams.first().cloned().unwrap_or_default();
            return Ok(Some(Arc::new(Principal {
                user: who.user,
                team,
                teams: who.teams,
                key: who.key,
                role: who.role,
                subject: Some(who.subject),
                signed_in: true,
                local: false,
                // The sign-in keeps who the person is, not every claim of the token.
                claims: None,
            })));
        }
        let Some(hash) =
            session.subject.strip_prefix("key:").and_then(|hex| crate::auth::parse_hash(&format!("sha256:{hex}")).ok())
        else {
            return Ok(None);
        };
        Ok(self.keys.read().unwrap_or_else(|e| e.into_inner()).by_hash(&hash))
    }

    /// Ends the console sign-in with `secret`, on every replica.
    pub async fn console_sign_out(&self, secret: &str) -> Result<(), ServiceError> {
        Ok(self.store.end_console_session(&stored_id(secret)).await?)
    }
}

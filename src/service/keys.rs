//! Personal keys: API keys a person signed in with SSO issues to themselves, for the
//! clients that cannot run a sign-in of their own (a CI job, a script, an SDK in a
//! notebook).
//!
//! A personal key is bound at creation to the person the identity provider vouched
//! for (`iss#sub`), with their user name, teams and role as they were then. It
//! expires (its policies set the longest lifetime, `[policy.keys] max_lifetime_days`),
//! its owner or an admin can revoke it, and one person holds at most
//! `[policy.keys] max` live ones. Only the identity provider's own word (a token, an
//! SSO console sign-in) may issue one: a key cannot issue another, so no key outlives
//! its expiry by renewing itself.

use serde::{Deserialize, Serialize};

use super::{Service, ServiceError};
use crate::auth::{digest, generate_key, KeyEntry, Principal, Role, KEY_PREFIX};
use crate::store::{KeyCreated, StoredKey};

/// The longest key name accepted.
pub const MAX_NAME_CHARS: usize = 64;

/// What a person asks for.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// The key's name (default: the person's name and a random suffix). Letters,
    /// digits, `.`, `_` and `-`; names are unique across the deployment, for good.
    pub name: Option<String>,
    /// Seconds until it expires (default, and at most: the policies' longest lifetime).
    pub expires_in_s: Option<u64>,
}

/// A key as its owner and admins see it: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub name: String,
    pub user: String,
    pub team: String,
    pub teams: Vec<String>,
    pub role: Role,
    /// The identity provider's subject of a personal key's owner; `None` for an
    /// operator's key.
    pub owner: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC; `None`: until revoked.
    pub expires_at: Option<String>,
}

impl KeyInfo {
    pub fn of(key: &StoredKey) -> Self {
        let e = &key.entry;
        Self {
            name: e.name.clone(),
            user: e.user.clone(),
            team: e.team.clone(),
            teams: e.teams.clone(),
            role: e.role,
            owner: e.owner.clone(),
            created_at: crate::time::rfc3339_seconds(key.created_at_ms),
            expires_at: e.expires_at_ms.map(crate::time::rfc3339_seconds),
        }
    }
}

/// Whether `name` may name a key: 1 to [`MAX_NAME_CHARS`] of letters, digits, `.`,
/// `_` and `-`, not starting with `-`, and not the `sg_` prefix of a secret.
pub fn check_name(name: &str) -> Result<(), ServiceError> {
    let fits = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !fits {
        return Err(ServiceError::Invalid(format!(
            "a key name is 1 to {MAX_NAME_CHARS} letters, digits, `.`, `_` and `-`, not starting with `-`"
        )));
    }
    if name.starts_with(KEY_PREFIX) {
        return Err(ServiceError::Invalid(format!("a key name may not start with `{KEY_PREFIX}`, as secrets do")));
    }
    Ok(())
}

/// The default name of a key for `user`: the part before any `@`, kept to the
/// characters names allow, and six random characters.
fn default_name(user: &str, secret: &str) -> String {
    let local: String = user
        .split('@')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(40)
        .collect();
    let local = local.trim_start_matches('-');
    let suffix = secret[KEY_PREFIX.len()..KEY_PREFIX.len() + 6].to_lowercase();
    if local.is_empty() {
        format!("key-{suffix}")
    } else {
        format!("{local}-{suffix}")
    }
}

impl Service {
    /// Issues `principal` a personal key: the secret (shown once; only its hash is
    /// kept) and the key as stored. Every replica accepts it within seconds, this one
    /// at once.
    pub async fn issue_personal_key(
        &self,
        principal: &Principal,
        request: KeyRequest,
    ) -> Result<(String, StoredKey), ServiceError> {
        let owner = match (&principal.subject, principal.signed_in) {
            (Some(subject), true) => subject.clone(),
            _ => {
                return Err(ServiceError::Forbidden(
                    "personal keys are issued to people signed in with SSO (a token from the identity provider or \
                     the console's SSO sign-in), not to a key"
                        .into(),
                ))
            }
        };
        let grant = self.policies.current().capabilities(principal).keys.ok_or_else(|| {
            ServiceError::Forbidden(format!(
                "no policy lets user `{}` issue personal keys (a [policy.keys] table grants them)",
                principal.user
            ))
        })?;
        let longest_s = u64::from(grant.max_lifetime_days) * 86_400;
        let lifetime_s = match request.expires_in_s {
            None => longest_s,
            Some(0) => return Err(ServiceError::Invalid("expires_in_s must be at least 1".into())),
            Some(asked) if asked > longest_s => {
                return Err(ServiceError::Invalid(format!(
                    "expires_in_s is {asked}, longer than the {longest_s} s ({} days) the policies allow \
                     (keys.max_lifetime_days)",
                    grant.max_lifetime_days
                )))
            }
            Some(asked) => asked,
        };
        let secret = generate_key();
        let name = match request.name {
            Some(name) => name.trim().to_string(),
            None => default_name(&principal.user, &secret),
        };
        check_name(&name)?;
        let file_keys = self.key_sources.lock().unwrap_or_else(|e| e.into_inner()).file.clone();
        if let Some(why) = super::admin::key_name_taken(self.store.as_ref(), &file_keys, &name).await? {
            return Err(ServiceError::Invalid(format!("{why}; choose another name")));
        }
        let now = crate::time::now_ms();
        let entry = KeyEntry {
            name: name.clone(),
            user: principal.user.clone(),
            team: principal.team.clone(),
            teams: principal.teams.clone(),
            role: principal.role,
            hash: digest(&secret),
            expires_at_ms: Some(now.saturating_add(i64::try_from(lifetime_s * 1000).unwrap_or(i64::MAX))),
            owner: Some(owner),
        };
        let stored = StoredKey { entry, created_at_ms: now };
        match self.store.create_key(&stored, Some(grant.max)).await? {
            KeyCreated::Created => {}
            KeyCreated::NameTaken => {
                return Err(ServiceError::Invalid(format!(
                "the store has or had a key named `{name}` (a revoked key's name stays reserved); choose another name"
            )))
            }
            KeyCreated::OwnerFull => {
                return Err(ServiceError::TooManyKeys { user: principal.user.clone(), limit: grant.max });
            }
        }
        self.install_stored_keys_now().await;
        tracing::info!(key = %name, user = %principal.user, "personal key issued");
        Ok((secret, stored))
    }

    /// Reads the store's keys again so that this replica acts on a change at once (the
    /// others within [`super::KEY_REFRESH`]). The change itself is done: a store that
    /// does not answer now leaves it to the next refresh.
    async fn install_stored_keys_now(&self) {
        if let Err(error) = self.refresh_stored_keys().await {
            tracing::warn!(%error, "cannot read the store's keys; the change takes effect at the next refresh");
        }
    }

    /// The live keys `principal` may see: their own personal keys, or, for an admin
    /// asking for `all`, every key in the store with its owner.
    pub async fn personal_keys(&self, principal: &Principal, all: bool) -> Result<Vec<StoredKey>, ServiceError> {
        if all && principal.role != Role::Admin {
            return Err(ServiceError::Forbidden("only admins may list everyone's keys".into()));
        }
        let keys = self.store.keys().await?;
        if all {
            return Ok(keys);
        }
        let Some(subject) = &principal.subject else { return Ok(Vec::new()) };
        Ok(keys.into_iter().filter(|k| k.entry.owner.as_ref() == Some(subject)).collect())
    }

    /// Revokes the key `name`: its owner's own, or any stored key for an admin. Every
    /// replica refuses it within seconds, this one at once. A key the principal may
    /// not revoke reads as none.
    pub async fn revoke_personal_key(&self, principal: &Principal, name: &str) -> Result<(), ServiceError> {
        let keys = self.store.keys().await?;
        let mine = |key: &&StoredKey| {
            principal.role == Role::Admin
                || (principal.subject.is_some() && key.entry.owner.as_ref() == principal.subject.as_ref())
        };
        let Some(key) = keys.iter().filter(mine).find(|k| k.entry.name == name) else {
            return Err(ServiceError::NotFound(format!("no live key named `{name}` that you may revoke")));
        };
        if !self.store.revoke_key(&key.entry.name).await? {
            return Err(ServiceError::NotFound(format!("no live key named `{name}` that you may revoke")));
        }
        self.install_stored_keys_now().await;
        tracing::info!(key = %name, by = %principal.user, "key revoked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_defaults_fit_them() {
        for good in ["laptop", "alice.ci-2", "a_b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "with space", "sg_abc", "x/y", "é", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let secret = generate_key();
        for user in ["alice@example.com", "-@x", "Bob Smith", "", "ü@x"] {
            let name = default_name(user, &secret);
            assert!(check_name(&name).is_ok(), "{user:?} gives {name:?}");
        }
        assert!(default_name("alice@example.com", &secret).starts_with("alice-"));
    }
}

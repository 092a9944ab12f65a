//! Who is calling. Every execution, tool call and model call is attributed to a
//! [`Principal`]; nothing guest code passes can change it. A caller presents an API
//! key (this module) or a token from the organisation's identity provider
//! ([`oidc`]).

pub mod client;
pub mod jose;
pub mod login;
pub mod oidc;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a principal may do beyond its policies: admins read everyone's usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Member,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Principal {
    pub user: String,
    /// The team its records are attributed to: the first of `teams`.
    pub team: String,
    /// Every team the caller is in (a key's one team, or a token's groups as teams):
    /// a policy for any of them applies.
    pub teams: Vec<String>,
    /// The name of the API key the caller used (`local` for the embedded default).
    pub key: String,
    pub role: Role,
    /// Who the identity provider vouched for, as `iss#sub`: set for a token, an SSO
    /// console sign-in, and a personal key (whose owner it names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// True when this request carries the identity provider's own word (a token or an
    /// SSO console sign-in), not a key: only such a principal may issue personal keys,
    /// so a key can never extend itself past its expiry.
    #[serde(skip)]
    pub signed_in: bool,
    /// True only for the principal of local mode (no keys configured): the policy
    /// selector `local` matches it and nothing else, whatever a key is named.
    #[serde(skip)]
    pub local: bool,
    /// The identity provider's claims about this principal (a token or an SSO
    /// sign-in), which policy conditions read as `principal.claims`; `None` for a key.
    #[serde(skip)]
    pub claims: Option<Arc<TokenClaims>>,
}

/// A token's claims, as policy conditions see them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenClaims(pub serde_json::Map<String, serde_json::Value>);

impl std::hash::Hash for TokenClaims {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Principals hash by who they are; claims only refine that.
        self.0.len().hash(state);
    }
}

impl Principal {
    /// The single principal of the embedded default: a server on loopback with no
    /// keys configured serves its local user, as an admin.
    pub fn local() -> Self {
        Self {
            user: "local".into(),
            team: "local".into(),
            teams: vec!["local".into()],
            key: "local".into(),
            role: Role::Admin,
            subject: None,
            signed_in: false,
            local: true,
            claims: None,
        }
    }

    /// The principal of an API key: its one team, no subject.
    pub fn of_key(name: &str, user: &str, team: &str, role: Role) -> Self {
        Self {
            user: user.into(),
            team: team.into(),
            teams: vec![team.into()],
            key: name.into(),
            role,
            subject: None,
            signed_in: false,
            local: false,
            claims: None,
        }
    }
}

/// The prefix of every key sandgate issues, so leaked keys are easy to scan for.
pub const KEY_PREFIX: &str = "sg_";

/// A configured API key: who it belongs to and the SHA-256 of the key itself.
/// Keys are 190 bits of randomness, so a fast hash is safe and keeps
/// authentication off the request's critical path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub name: String,
    pub user: String,
    /// The team its records are attributed to: the first of `teams`.
    pub team: String,
    /// Every team the key acts for: an operator's key has its one team; a personal
    /// key, its owner's teams when it was made.
    pub teams: Vec<String>,
    pub role: Role,
    pub hash: [u8; 32],
    /// When it stops working (Unix ms); `None`: an operator's key, until revoked.
    pub expires_at_ms: Option<i64>,
    /// A personal key's owner, as the identity provider named them (`iss#sub`).
    pub owner: Option<String>,
}

impl KeyEntry {
    /// An operator's key: one team, no expiry, no owner.
    pub fn operator(name: String, user: String, team: String, role: Role, hash: [u8; 32]) -> Self {
        Self { name, user, teams: vec![team.clone()], team, role, hash, expires_at_ms: None, owner: None }
    }

    /// Whether the key has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// A key's principal and when it stops working.
#[derive(Clone, Debug)]
struct KeyHolder {
    principal: Arc<Principal>,
    expires_at_ms: Option<i64>,
}

/// Configured keys, looked up by hash.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], KeyHolder>,
}

impl KeyRing {
    pub fn new(entries: &[KeyEntry]) -> Self {
        let by_hash = entries
            .iter()
            .map(|entry| {
                let mut teams = entry.teams.clone();
                if teams.first() != Some(&entry.team) {
                    teams.retain(|t| t != &entry.team);
                    teams.insert(0, entry.team.clone());
                }
                let principal = Principal {
                    user: entry.user.clone(),
                    team: entry.team.clone(),
                    teams,
                    key: entry.name.clone(),
                    role: entry.role,
                    subject: entry.owner.clone(),
                    signed_in: false,
                    local: false,
                    claims: None,
                };
                (entry.hash, KeyHolder { principal: Arc::new(principal), expires_at_ms: entry.expires_at_ms })
            })
            .collect();
        Self { by_hash }
    }

    /// True when no keys are configured: the embedded default's single local user.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Every configured key's principal.
    pub fn principals(&self) -> Vec<Arc<Principal>> {
        self.by_hash.values().map(|holder| holder.principal.clone()).collect()
    }

    /// The principal of the key whose SHA-256 is `hash`, unless it has expired.
    pub fn by_hash(&self, hash: &[u8; 32]) -> Option<Arc<Principal>> {
        let holder = self.by_hash.get(hash)?;
        let live = holder.expires_at_ms.is_none_or(|at| at > crate::time::now_ms());
        live.then(|| holder.principal.clone())
    }

    /// The principal a presented key belongs to, unless it has expired.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<Principal>> {
        self.by_hash(&digest(presented))
    }
}

/// The SHA-256 of a key: how it is stored and looked up.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The stored form of a key: `sha256:` and 64 hex digits.
pub fn hash_key(key: &str) -> String {
    let hex: String = digest(key).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Parses the stored form written by [`hash_key`].
pub fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let hex = text.strip_prefix("sha256:").ok_or("must start with `sha256:`")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be `sha256:` followed by 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A new random key: `sg_` and 32 base-62 characters.
pub fn generate_key() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut key = String::from(KEY_PREFIX);
    while key.len() < KEY_PREFIX.len() + 32 {
        let mut byte = [0u8; 1];
        getrandom::fill(&mut byte).expect("the OS random source is available");
        // Rejection sampling keeps every character equally likely.
        if byte[0] < 248 {
            key.push(ALPHABET[(byte[0] % 62) as usize] as char);
        }
    }
    key
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_authenticate_by_hash_only() {
        let key = generate_key();
        assert!(key.starts_with("sg_") && key.len() == 35);
        let entry = KeyEntry::operator(
            "laptop".into(),
            "alice".into(),
            "platform".into(),
            Role::Member,
            parse_hash(&hash_key(&key)).unwrap(),
        );
        let personal = generate_key();
        let expired = generate_key();
        let now = crate::time::now_ms();
        let ring = KeyRing::new(&[
            entry,
            KeyEntry {
                name: "bob-laptop".into(),
                user: "bob".into(),
                team: "web".into(),
                teams: vec!["data".into(), "web".into()],
                role: Role::Member,
                hash: digest(&personal),
                expires_at_ms: Some(now + 60_000),
                owner: Some("https://idp#bob".into()),
            },
            KeyEntry {
                name: "bob-old".into(),
                expires_at_ms: Some(now - 1),
                hash: digest(&expired),
                ..KeyEntry::operator("x".into(), "bob".into(), "web".into(), Role::Member, [0; 32])
            },
        ]);
        let principal = ring.authenticate(&key).unwrap();
        assert_eq!((principal.user.as_str(), principal.key.as_str()), ("alice", "laptop"));
        let bob = ring.authenticate(&personal).unwrap();
        assert_eq!(bob.teams, ["web", "data"], "the key's team comes first");
        assert_eq!(bob.subject.as_deref(), Some("https://idp#bob"));
        assert!(!bob.signed_in, "a key is never the identity provider's own word");
        assert!(ring.authenticate(&expired).is_none(), "an expired key is refused");
        assert!(ring.authenticate(&generate_key()).is_none());
        assert!(ring.authenticate(&hash_key(&key)).is_none(), "the stored hash is not a key");
        assert!(parse_hash("sha256:xyz").is_err());
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}

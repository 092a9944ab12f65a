//! Who is calling. Every execution, tool call and model call is attributed to a
//! [`Principal`]; nothing guest code passes can change it. A caller presents an API
//! key (this module) or a token from the organisation's identity provider
//! ([`oidc`]).

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
    /// True only for the principal of local mode (no keys configured): the policy
    /// selector `local` matches it and nothing else, whatever a key is named.
    #[serde(skip)]
    pub local: bool,
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
            local: true,
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
    pub team: String,
    pub role: Role,
    pub hash: [u8; 32],
}

/// Configured keys, looked up by hash.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
}

impl KeyRing {
    pub fn new(entries: &[KeyEntry]) -> Self {
        let by_hash = entries
            .iter()
            .map(|entry| {
                let principal = Principal {
                    user: entry.user.clone(),
                    team: entry.team.clone(),
                    teams: vec![entry.team.clone()],
                    key: entry.name.clone(),
                    role: entry.role,
                    local: false,
                };
                (entry.hash, Arc::new(principal))
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
        self.by_hash.values().cloned().collect()
    }

    /// The principal of the key whose SHA-256 is `hash`.
    pub fn by_hash(&self, hash: &[u8; 32]) -> Option<Arc<Principal>> {
        self.by_hash.get(hash).cloned()
    }

    /// The principal a presented key belongs to.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<Principal>> {
        self.by_hash.get(&digest(presented)).cloned()
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
        let entry = KeyEntry {
            name: "laptop".into(),
            user: "alice".into(),
            team: "platform".into(),
            role: Role::Member,
            hash: parse_hash(&hash_key(&key)).unwrap(),
        };
        let ring = KeyRing::new(&[entry]);
        let principal = ring.authenticate(&key).unwrap();
        assert_eq!((principal.user.as_str(), principal.key.as_str()), ("alice", "laptop"));
        assert!(ring.authenticate(&generate_key()).is_none());
        assert!(ring.authenticate(&hash_key(&key)).is_none(), "the stored hash is not a key");
        assert!(parse_hash("sha256:xyz").is_err());
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}

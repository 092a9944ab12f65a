//! The console's sign-in cookie: a key is presented once, and the browser keeps a
//! signed token for a sign-in the store records (HttpOnly, `SameSite=Strict`, path
//! `/ui`), never the key itself.
//!
//! The token is `v2.<sign-in secret>.<expiry ms>.<HMAC-SHA256>`. The store keeps only
//! the secret's SHA-256, with whom it signed in: the hash of the key presented (see
//! [`crate::service::Service::console_sign_in`]). A request checks the signature and
//! the expiry here (a forged or stale cookie costs no store read), then the sign-in
//! in the store, then that the key still exists. So:
//! - the cookie is bound to the key itself: a key revoked and another created under
//!   the same name (or a store key and a config key sharing one) is someone else;
//! - signing out ends the sign-in on every replica, whoever kept a copy of the cookie;
//! - revoking a key signs its browsers out.
//!
//! The signing secret is `SANDGATE_CONSOLE_SECRET` when set (give every replica the
//! same one), else random per process (a restart signs everyone out).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The cookie's name.
pub const COOKIE: &str = "sandgate_console";

/// How long a sign-in lasts.
pub const LIFETIME_MS: i64 = 12 * 3_600_000;

/// Signs and checks console tokens.
pub struct Signer {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// The secret from `SANDGATE_CONSOLE_SECRET`, else a random one.
    pub fn from_env() -> Self {
        match std::env::var("SANDGATE_CONSOLE_SECRET") {
            Ok(secret) if secret.len() >= 16 => Self { secret: secret.into_bytes() },
            _ => {
                let mut secret = vec![0u8; 32];
                getrandom::fill(&mut secret).expect("the OS random source is available");
                Self { secret }
            }
        }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(payload.as_bytes());
        mac
    }

    /// A token for the sign-in whose secret is `sign_in` (hex), valid until
    /// `expires_ms`.
    pub fn token(&self, sign_in: &str, expires_ms: i64) -> String {
        let payload = format!("v2.{sign_in}.{expires_ms}");
        let signature = hex(&self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// The sign-in secret a token signed here carries, if it is intact and not
    /// expired.
    pub fn check(&self, token: &str, now_ms: i64) -> Option<String> {
        let (payload, signature) = token.rsplit_once('.')?;
        let mut parts = payload.split('.');
        let (version, sign_in, expires) = (parts.next()?, parts.next()?, parts.next()?);
        if version != "v2" || parts.next().is_some() || sign_in.is_empty() {
            return None;
        }
        self.mac(payload).verify_slice(&unhex(signature)?).ok()?;
        if expires.parse::<i64>().ok()? <= now_ms {
            return None;
        }
        Some(sign_in.to_string())
    }
}

/// The cookie that carries a sign-in at the identity provider while it is under way.
pub const PENDING_COOKIE: &str = "sandgate_sso";

/// How long a person may take at the identity provider.
pub const PENDING_LIFETIME_MS: i64 = 10 * 60_000;

impl Signer {
    /// `fields` (none containing `.`) signed until `expires_ms`: a sign-in at the
    /// identity provider that is under way (its state, nonce, PKCE verifier, issuer).
    pub fn seal(&self, fields: &[&str], expires_ms: i64) -> String {
        let payload = format!("sso1.{}.{expires_ms}", fields.join("."));
        let signature = hex(&self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// The fields of a value [`Signer::seal`] made, if intact and not expired.
    pub fn open(&self, token: &str, now_ms: i64) -> Option<Vec<String>> {
        let (payload, signature) = token.rsplit_once('.')?;
        self.mac(payload).verify_slice(&unhex(signature)?).ok()?;
        let (fields, expires) = payload.strip_prefix("sso1.")?.rsplit_once('.')?;
        if expires.parse::<i64>().ok()? <= now_ms {
            return None;
        }
        Some(fields.split('.').map(str::to_string).collect())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(n, _)| *n == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_sign_in_until_they_expire_and_cannot_be_forged() {
        let signer = Signer { secret: b"0123456789abcdef0123".to_vec() };
        let token = signer.token("ab12", 2_000);
        assert_eq!(signer.check(&token, 1_000).as_deref(), Some("ab12"));
        assert_eq!(signer.check(&token, 2_000), None, "expired");
        let other = Signer { secret: b"another secret, another replica".to_vec() };
        assert_eq!(other.check(&token, 1_000), None, "another secret");
        let (payload, signature) = token.rsplit_once('.').unwrap();
        let forged = payload.replace("ab12", "cd34") + "." + signature;
        assert_eq!(signer.check(&forged, 1_000), None, "a changed sign-in");
        let later = payload.replace(".2000", ".9999999") + "." + signature;
        assert_eq!(signer.check(&later, 1_000), None, "a changed expiry");
        // The first version of the cookie named a key; it is no longer taken.
        let old = {
            let payload = format!("v1.{}.2000", hex(b"admin"));
            format!("{payload}.{}", hex(&signer.mac(&payload).finalize().into_bytes()))
        };
        assert_eq!(signer.check(&old, 1_000), None, "a cookie naming a key");
        assert_eq!(signer.check("v2.zz.1.00", 0), None);
        assert_eq!(signer.check("", 0), None);
        assert_eq!(cookie("a=1; sandgate_console=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("a=1", COOKIE), None);
        // A pending SSO sign-in: its fields back while it lasts, nothing once changed.
        let sealed = signer.seal(&["state", "nonce", "verifier", "0"], 2_000);
        assert_eq!(
            signer.open(&sealed, 1_000),
            Some(vec!["state".into(), "nonce".into(), "verifier".into(), "0".into()])
        );
        assert_eq!(signer.open(&sealed, 2_000), None);
        assert_eq!(signer.open(&sealed.replace("state", "other"), 1_000), None);
        assert_eq!(signer.check(&sealed, 1_000), None, "not a sign-in cookie");
    }
}

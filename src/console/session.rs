//! The console's sign-in: a key is presented once, and the browser keeps a signed
//! token naming it (HttpOnly, `SameSite=Strict`, path `/ui`), never the key itself.
//!
//! The token is `v1.<key name>.<expiry ms>.<HMAC-SHA256>`; each request checks the
//! signature, the expiry, and that the key still exists, so revoking a key signs its
//! browsers out. The signing secret is `SANDGATE_CONSOLE_SECRET` when set (give every
//! replica the same one), else random per process (a restart signs everyone out).

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

    /// A token for key `name`, valid until `expires_ms`.
    pub fn token(&self, name: &str, expires_ms: i64) -> String {
        let payload = format!("v1.{}.{expires_ms}", hex(name.as_bytes()));
        let signature = hex(&self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// The key name a token signed here names, if it is intact and not expired.
    pub fn check(&self, token: &str, now_ms: i64) -> Option<String> {
        let (payload, signature) = token.rsplit_once('.')?;
        let mut parts = payload.split('.');
        let (version, name, expires) = (parts.next()?, parts.next()?, parts.next()?);
        if version != "v1" || parts.next().is_some() {
            return None;
        }
        self.mac(payload).verify_slice(&unhex(signature)?).ok()?;
        if expires.parse::<i64>().ok()? <= now_ms {
            return None;
        }
        String::from_utf8(unhex(name)?).ok()
    }
}

fn hex(bytes: &[u8]) -> String {
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
    fn tokens_name_their_key_until_they_expire_and_cannot_be_forged() {
        let signer = Signer { secret: b"0123456789abcdef0123".to_vec() };
        let token = signer.token("alice's laptop", 2_000);
        assert_eq!(signer.check(&token, 1_000).as_deref(), Some("alice's laptop"));
        assert_eq!(signer.check(&token, 2_000), None, "expired");
        let other = Signer { secret: b"another secret, another replica".to_vec() };
        assert_eq!(other.check(&token, 1_000), None, "another secret");
        let (payload, signature) = token.rsplit_once('.').unwrap();
        let forged = payload.replace(&hex(b"alice's laptop"), &hex(b"admin")) + "." + signature;
        assert_eq!(signer.check(&forged, 1_000), None, "a changed name");
        let later = payload.replace(".2000", ".9999999") + "." + signature;
        assert_eq!(signer.check(&later, 1_000), None, "a changed expiry");
        assert_eq!(signer.check("v1.zz.1.00", 0), None);
        assert_eq!(signer.check("", 0), None);
        assert_eq!(cookie("a=1; sandgate_console=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("a=1", COOKIE), None);
    }
}

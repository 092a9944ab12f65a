//! The signature checks behind token validation: `jsonwebtoken`'s RustCrypto provider,
//! with RSA (RS256/384/512, PS256/384/512, what identity providers sign with) verified
//! by `ring` instead. ring's RSA verification is several times faster than the pure
//! Rust one (a token's first use is one verification), already in the build through
//! rustls, and refuses keys shorter than 2,048 bits. Everything else (EC, EdDSA,
//! signing, JWK utilities) is the RustCrypto provider's.

use std::sync::LazyLock;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey};
use ring::signature::{self as ring_sig, RsaParameters};

/// The provider [`install`] puts in place.
static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| {
    let mut provider = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.clone();
    provider.verifier_factory = verifier;
    provider
});

/// Makes this module's provider the process's provider for `jsonwebtoken`, once. Another
/// installed first (or a token decoded before) keeps its place: it verifies as well,
/// only slower.
pub fn install() {
    let _ = CryptoProvider::install_default(&PROVIDER);
}

/// RSA verification by ring, for one algorithm and key.
struct RingRsa {
    algorithm: Algorithm,
    parameters: &'static RsaParameters,
    key: DecodingKey,
}

impl signature::Verifier<Vec<u8>> for RingRsa {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match self.key.kind() {
            jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n, e } => {
                ring_sig::RsaPublicKeyComponents { n, e }.verify(self.parameters, message, signature)
            }
            jsonwebtoken::DecodingKeyKind::SecretOrDer(der) => {
                ring_sig::UnparsedPublicKey::new(self.parameters, der).verify(message, signature)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingRsa {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let parameters: &'static RsaParameters = match algorithm {
        Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
        _ => return (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key),
    };
    if key.family() != jsonwebtoken::AlgorithmFamily::Rsa {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingRsa { algorithm: *algorithm, parameters, key: key.clone() }))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, Validation};

    use super::*;

    #[test]
    fn ring_verifies_what_rustcrypto_signs_and_refuses_what_it_should() {
        install();
        let private = EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/token-signing-key.pem")).unwrap();
        let public =
            DecodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/token-signing-key.pub.pem")).unwrap();
        let claims = serde_json::json!({"sub": "ada", "exp": 4_000_000_000u64});
        for algorithm in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS512] {
            let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &private).unwrap();
            let mut validation = Validation::new(algorithm);
            validation.validate_aud = false;
            let decoded = jsonwebtoken::decode::<serde_json::Value>(&token, &public, &validation);
            assert_eq!(decoded.unwrap().claims["sub"], "ada", "{algorithm:?}");
            // One changed byte of the signature, or a claim changed under it, fails.
            let (head, signature) = token.rsplit_once('.').unwrap();
            let mut bad = signature.as_bytes().to_vec();
            bad[10] = if bad[10] == b'A' { b'B' } else { b'A' };
            let forged = format!("{head}.{}", String::from_utf8(bad).unwrap());
            assert!(jsonwebtoken::decode::<serde_json::Value>(&forged, &public, &validation).is_err());
            let other = jsonwebtoken::encode(
                &Header::new(algorithm),
                &serde_json::json!({"sub": "eve", "exp": 4_000_000_000u64}),
                &private,
            )
            .unwrap();
            let spliced = format!("{}.{}", other.rsplit_once('.').unwrap().0, signature);
            assert!(jsonwebtoken::decode::<serde_json::Value>(&spliced, &public, &validation).is_err());
        }
        // ring itself, whichever provider the process settled on: a good signature
        // verifies, a signature over other bytes does not.
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &private).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        use base64::Engine;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).unwrap();
        let ring = verifier(&Algorithm::RS256, &public).unwrap();
        assert!(signature::Verifier::verify(&*ring, message.as_bytes(), &signature).is_ok());
        assert!(signature::Verifier::verify(&*ring, b"something else", &signature).is_err());
        assert!(verifier(&Algorithm::RS256, &DecodingKey::from_secret(b"not rsa").unwrap()).is_err());
    }
}

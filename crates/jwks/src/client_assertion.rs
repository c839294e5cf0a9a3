//! `private_key_jwt` client authentication (RFC 7523 §2.2, OpenID Connect Core
//! §9): a short-lived JWT the gateway signs with its own private key to prove
//! to the authorization server which client it is, instead of sending a secret.
//!
//! The key is read from a PEM file once (PKCS#8 RSA, P-256 or Ed25519, PKCS#1
//! RSA, SEC1 P-256); the algorithm follows from the key (RS256, ES256, EdDSA).
//! Each assertion has a fresh `jti` and lives 60 seconds.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// How long an assertion is valid.
pub const ASSERTION_LIFETIME_SECS: i64 = 60;

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private key that signs client assertions.
pub struct AssertionKey {
    signer: Signer,
    kid: Option<String>,
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AssertionKey({})", self.algorithm())
    }
}

impl AssertionKey {
    /// Reads a PEM private key; `kid`, when set, goes into the JWT header.
    pub fn from_pem(pem: &[u8], kid: Option<String>) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("no PEM private key found ({e})"))?;
        let signer = match &der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
                .map(Signer::Rsa)
                .map_err(|e| format!("RSA key: {e}"))?,
            PrivateKeyDer::Sec1(k) => EcdsaKeyPair::from_private_key_der(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                k.secret_sec1_der(),
            )
            .map(Signer::Ec)
            .map_err(|e| format!("EC key (P-256 only): {e}"))?,
            PrivateKeyDer::Pkcs8(k) => {
                let der = k.secret_pkcs8_der();
                if let Ok(kp) = RsaKeyPair::from_pkcs8(der) {
                    Signer::Rsa(kp)
                } else if let Ok(kp) =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                {
                    Signer::Ec(kp)
                } else if let Ok(kp) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    Signer::Ed(kp)
                } else {
                    return Err(
                        "the PKCS#8 key is not RSA, P-256 or Ed25519 (RS256, ES256, EdDSA)"
                            .to_owned(),
                    );
                }
            }
            _ => return Err("unsupported private key format".to_owned()),
        };
        Ok(AssertionKey { signer, kid })
    }

    /// The JWS algorithm the key signs with.
    pub fn algorithm(&self) -> &'static str {
        match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
            Signer::Ed(_) => "EdDSA",
        }
    }

    /// A signed assertion for `client_id` to `audience` (the authorization
    /// server's issuer identifier), issued at `now` (unix seconds).
    pub fn assertion(&self, client_id: &str, audience: &str, now: i64) -> Result<String, String> {
        let mut header = serde_json::json!({ "alg": self.algorithm(), "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let jti: [u8; 16] = rand::rng().random();
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Rsa(kp) => {
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| format!("RSA signing failed: {e}"))?;
                sig
            }
            Signer::Ec(kp) => kp
                .sign(&rng, signing_input.as_bytes())
                .map_err(|e| format!("ECDSA signing failed: {e}"))?
                .as_ref()
                .to_vec(),
            Signer::Ed(kp) => kp.sign(signing_input.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{KeyPair as _, UnparsedPublicKey};

    fn pem(label: &str, der: &[u8]) -> Vec<u8> {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n").into_bytes()
    }

    fn check(token: &str, alg: &str, verify: impl Fn(&[u8], &[u8]) -> bool) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], alg);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "gw");
        assert_eq!(claims["sub"], "gw");
        assert_eq!(claims["aud"], "https://as/");
        assert_eq!(claims["exp"], 1_000 + ASSERTION_LIFETIME_SECS);
        let input = format!("{}.{}", parts[0], parts[1]);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert!(verify(input.as_bytes(), &sig), "{alg} signature verifies");
    }

    #[test]
    fn each_key_type_signs_a_verifiable_assertion() {
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let key = AssertionKey::from_pem(&pem("PRIVATE KEY", ec.as_ref()), None).unwrap();
        let public =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref())
                .unwrap()
                .public_key()
                .as_ref()
                .to_vec();
        check(
            &key.assertion("gw", "https://as/", 1_000).unwrap(),
            "ES256",
            |m, s| {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public)
                    .verify(m, s)
                    .is_ok()
            },
        );

        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = rsa.as_der().unwrap();
        let key =
            AssertionKey::from_pem(&pem("PRIVATE KEY", der.as_ref()), Some("k1".into())).unwrap();
        let public = rsa.public_key().as_ref().to_vec();
        let token = key.assertion("gw", "https://as/", 1_000).unwrap();
        let header = URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["kid"], "k1");
        check(&token, "RS256", |m, s| {
            UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &public)
                .verify(m, s)
                .is_ok()
        });

        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = AssertionKey::from_pem(&pem("PRIVATE KEY", ed.as_ref()), None).unwrap();
        let public = Ed25519KeyPair::from_pkcs8(ed.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        check(
            &key.assertion("gw", "https://as/", 1_000).unwrap(),
            "EdDSA",
            |m, s| {
                UnparsedPublicKey::new(&signature::ED25519, &public)
                    .verify(m, s)
                    .is_ok()
            },
        );
    }

    #[test]
    fn non_keys_are_refused() {
        assert!(AssertionKey::from_pem(b"not a key", None).is_err());
        assert!(AssertionKey::from_pem(&pem("PRIVATE KEY", b"garbage"), None).is_err());
    }
}

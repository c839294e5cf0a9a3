//! Signing keys and compact-JWS minting for the development authorization server
//! and the tests (RS256, PS256, ES256, EdDSA, HS256, and deliberately broken forms).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// Why a key could not be generated or a token signed.
#[derive(Debug, thiserror::Error)]
#[error("devkit signing: {0}")]
pub struct SignError(pub String);

enum Inner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

/// A signing key with its id and algorithm.
pub struct SigningKey {
    kid: String,
    alg: &'static str,
    inner: Inner,
}

/// A PEM block of `der` under `label`, in 64-character lines.
fn pem_block(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// base64url without padding.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A fresh RSA-2048 key for RS256 (or PS256 with [`SigningKey::with_alg`]).
    pub fn rsa(kid: &str) -> Result<Self, SignError> {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|e| SignError(e.to_string()))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            alg: "RS256",
            inner: Inner::Rsa(kp),
        })
    }

    /// A fresh P-256 key for ES256.
    pub fn ec(kid: &str) -> Result<Self, SignError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| SignError(e.to_string()))?;
        let kp =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .map_err(|e| SignError(e.to_string()))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            alg: "ES256",
            inner: Inner::Ec(kp),
        })
    }

    /// A fresh Ed25519 key for EdDSA.
    pub fn ed25519(kid: &str) -> Result<Self, SignError> {
        let kp = Ed25519KeyPair::generate().map_err(|e| SignError(e.to_string()))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            alg: "EdDSA",
            inner: Inner::Ed(kp),
        })
    }

    /// An HMAC key (HS256) from a secret.
    pub fn hmac(kid: &str, secret: &[u8]) -> Self {
        SigningKey {
            kid: kid.to_owned(),
            alg: "HS256",
            inner: Inner::Hmac(secret.to_vec()),
        }
    }

    /// Uses another algorithm of the same family (RS256 <-> PS256).
    pub fn with_alg(mut self, alg: &'static str) -> Self {
        self.alg = alg;
        self
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm name.
    pub fn alg(&self) -> &'static str {
        self.alg
    }

    /// The public JWK (with `kid`, `alg` and `use: sig`).
    pub fn public_jwk(&self) -> Value {
        match &self.inner {
            Inner::Rsa(kp) => {
                let pk = kp.public_key();
                json!({
                    "kty": "RSA", "kid": self.kid, "alg": self.alg, "use": "sig",
                    "n": b64(pk.modulus().big_endian_without_leading_zero()),
                    "e": b64(pk.exponent().big_endian_without_leading_zero()),
                })
            }
            Inner::Ec(kp) => {
                let point = kp.public_key().as_ref();
                json!({
                    "kty": "EC", "crv": "P-256", "kid": self.kid, "alg": self.alg, "use": "sig",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                })
            }
            Inner::Ed(kp) => json!({
                "kty": "OKP", "crv": "Ed25519", "kid": self.kid, "alg": self.alg, "use": "sig",
                "x": b64(kp.public_key().as_ref()),
            }),
            Inner::Hmac(secret) => {
                json!({ "kty": "oct", "kid": self.kid, "alg": self.alg, "k": b64(secret) })
            }
        }
    }

    /// The public key as a PEM `PUBLIC KEY` block (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> Result<String, SignError> {
        let der: Vec<u8> = match &self.inner {
            Inner::Rsa(kp) => kp
                .public_key()
                .as_der()
                .map_err(|e| SignError(e.to_string()))?
                .as_ref()
                .to_vec(),
            Inner::Ec(kp) => kp
                .public_key()
                .as_der()
                .map_err(|e| SignError(e.to_string()))?
                .as_ref()
                .to_vec(),
            Inner::Ed(kp) => kp
                .public_key()
                .as_der()
                .map_err(|e| SignError(e.to_string()))?
                .as_ref()
                .to_vec(),
            Inner::Hmac(_) => return Err(SignError("an HMAC key has no public key".into())),
        };
        Ok(pem_block("PUBLIC KEY", &der))
    }

    /// The private key as a PEM `PRIVATE KEY` block (PKCS#8), as a client
    /// using `private_key_jwt` keeps it.
    pub fn private_pem(&self) -> Result<String, SignError> {
        let err = |e: aws_lc_rs::error::Unspecified| SignError(e.to_string());
        let der: Vec<u8> = match &self.inner {
            Inner::Rsa(kp) => {
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = kp.as_der().map_err(err)?;
                der.as_ref().to_vec()
            }
            Inner::Ec(kp) => kp.to_pkcs8v1().map_err(err)?.as_ref().to_vec(),
            Inner::Ed(kp) => kp.to_pkcs8v1().map_err(err)?.as_ref().to_vec(),
            Inner::Hmac(_) => return Err(SignError("an HMAC key is a shared secret".into())),
        };
        Ok(pem_block("PRIVATE KEY", &der))
    }

    /// Signs `claims` with a header of `{alg, kid, typ: JWT}`.
    pub fn sign(&self, claims: &Value) -> Result<String, SignError> {
        let header = json!({ "alg": self.alg, "kid": self.kid, "typ": "JWT" });
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` under an arbitrary header, using this key's algorithm for the
    /// signature whatever the header says (for crafting confusion attacks).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, SignError> {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig = self.signature(input.as_bytes())?;
        Ok(format!("{input}.{}", b64(sig)))
    }

    /// The raw signature over `message`.
    pub fn signature(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let err = |e: aws_lc_rs::error::Unspecified| SignError(e.to_string());
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Rsa(kp) => {
                let padding: &'static dyn signature::RsaEncoding = if self.alg == "PS256" {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(padding, &rng, message, &mut sig).map_err(err)?;
                Ok(sig)
            }
            Inner::Ec(kp) => Ok(kp.sign(&rng, message).map_err(err)?.as_ref().to_vec()),
            Inner::Ed(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            Inner::Hmac(secret) => {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
                Ok(aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec())
            }
        }
    }
}

/// An unsigned `alg: none` token, for negative tests.
pub fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string()),
        b64(claims.to_string())
    )
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

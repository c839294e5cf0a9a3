//! Verification keys, parsed once, and the immutable key snapshot of one issuer.
//!
//! A [`VerifyingKey`] holds one pre-parsed `aws-lc-rs` verifier per algorithm it may
//! be used with, so that no verification re-parses key material. A [`KeySnapshot`]
//! is what the JWKS cache publishes and the verifier reads, lock-free.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use jsonwebtoken::Algorithm;

/// Why a key could not be turned into a verifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key's material is not valid for its type.
    #[error("key material rejected: {0}")]
    Rejected(String),
    /// None of the allowed algorithms can be used with this key.
    #[error("no allowed algorithm fits this key (key type {kty}, alg {alg})")]
    NoUsableAlgorithm {
        /// The JWK key type.
        kty: &'static str,
        /// The key's own `alg`, or `-`.
        alg: String,
    },
}

/// The elliptic curves accepted for ECDSA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (ES256).
    P256,
    /// NIST P-384 (ES384).
    P384,
}

enum Verifier {
    Public(ParsedPublicKey),
    Hmac(Box<aws_lc_rs::hmac::Key>),
}

/// A key of an issuer, parsed once, with one verifier per usable algorithm.
pub struct VerifyingKey {
    kid: Option<String>,
    kty: &'static str,
    verifiers: Vec<(Algorithm, Verifier)>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("kty", &self.kty)
            .field("algorithms", &self.algorithms().collect::<Vec<_>>())
            .finish()
    }
}

impl VerifyingKey {
    /// An RSA public key from its big-endian modulus and exponent.
    pub fn rsa(
        kid: Option<String>,
        alg: Option<Algorithm>,
        modulus: &[u8],
        exponent: &[u8],
        allowed: &[Algorithm],
    ) -> Result<Self, KeyError> {
        let components = RsaPublicKeyComponents {
            n: modulus,
            e: exponent,
        };
        let mut verifiers = Vec::new();
        for &a in usable(alg, allowed, RSA_ALGS) {
            let params = rsa_params(a);
            let parsed = components
                .to_parsed_public_key(params)
                .map_err(|e| KeyError::Rejected(e.to_string()))?;
            verifiers.push((a, Verifier::Public(parsed)));
        }
        Self::finish(kid, "RSA", alg, verifiers)
    }

    /// An EC public key from its affine coordinates.
    pub fn ec(
        kid: Option<String>,
        alg: Option<Algorithm>,
        curve: Curve,
        x: &[u8],
        y: &[u8],
        allowed: &[Algorithm],
    ) -> Result<Self, KeyError> {
        let (want, field_len, verify_alg): (
            Algorithm,
            usize,
            &'static dyn sig::VerificationAlgorithm,
        ) = match curve {
            Curve::P256 => (Algorithm::ES256, 32, &sig::ECDSA_P256_SHA256_FIXED),
            Curve::P384 => (Algorithm::ES384, 48, &sig::ECDSA_P384_SHA384_FIXED),
        };
        if x.len() != field_len || y.len() != field_len {
            return Err(KeyError::Rejected(format!(
                "EC coordinates must be {field_len} bytes for this curve"
            )));
        }
        let mut verifiers = Vec::new();
        if usable(alg, allowed, &[want]).next().is_some() {
            let mut point = Vec::with_capacity(1 + 2 * field_len);
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            let parsed = ParsedPublicKey::new(verify_alg, point)
                .map_err(|e| KeyError::Rejected(e.to_string()))?;
            verifiers.push((want, Verifier::Public(parsed)));
        }
        Self::finish(kid, "EC", alg, verifiers)
    }

    /// An Ed25519 (OKP) public key.
    pub fn ed25519(
        kid: Option<String>,
        alg: Option<Algorithm>,
        x: &[u8],
        allowed: &[Algorithm],
    ) -> Result<Self, KeyError> {
        if x.len() != 32 {
            return Err(KeyError::Rejected("Ed25519 keys are 32 bytes".into()));
        }
        let mut verifiers = Vec::new();
        if usable(alg, allowed, &[Algorithm::EdDSA]).next().is_some() {
            let parsed = ParsedPublicKey::new(&sig::ED25519, x)
                .map_err(|e| KeyError::Rejected(e.to_string()))?;
            verifiers.push((Algorithm::EdDSA, Verifier::Public(parsed)));
        }
        Self::finish(kid, "OKP", alg, verifiers)
    }

    /// A shared HMAC secret. Only for issuers configured with a secret and no
    /// asymmetric keys, so that algorithm confusion cannot arise.
    pub fn hmac(
        kid: Option<String>,
        alg: Option<Algorithm>,
        secret: &[u8],
        allowed: &[Algorithm],
    ) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::Rejected(
                "HMAC secrets must be at least 32 bytes".into(),
            ));
        }
        let verifiers = usable(alg, allowed, HMAC_ALGS)
            .map(|&a| {
                let h = match a {
                    Algorithm::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
                    Algorithm::HS512 => aws_lc_rs::hmac::HMAC_SHA512,
                    _ => aws_lc_rs::hmac::HMAC_SHA256,
                };
                (
                    a,
                    Verifier::Hmac(Box::new(aws_lc_rs::hmac::Key::new(h, secret))),
                )
            })
            .collect();
        Self::finish(kid, "oct", alg, verifiers)
    }

    /// A public key in DER (SubjectPublicKeyInfo, or PKCS#1 for RSA), as read from a
    /// PEM file. Every allowed asymmetric algorithm the key parses for is kept.
    pub fn from_public_key_der(
        kid: Option<String>,
        der: &[u8],
        allowed: &[Algorithm],
    ) -> Result<Self, KeyError> {
        let mut verifiers = Vec::new();
        let mut kty = "RSA";
        for &a in allowed {
            let (alg, family): (&'static dyn sig::VerificationAlgorithm, &'static str) = match a {
                Algorithm::ES256 => (&sig::ECDSA_P256_SHA256_FIXED, "EC"),
                Algorithm::ES384 => (&sig::ECDSA_P384_SHA384_FIXED, "EC"),
                Algorithm::EdDSA => (&sig::ED25519, "OKP"),
                a if RSA_ALGS.contains(&a) => (rsa_params(a), "RSA"),
                _ => continue,
            };
            if let Ok(parsed) = ParsedPublicKey::new(alg, der) {
                kty = family;
                verifiers.push((a, Verifier::Public(parsed)));
            }
        }
        Self::finish(kid, kty, None, verifiers)
    }

    fn finish(
        kid: Option<String>,
        kty: &'static str,
        alg: Option<Algorithm>,
        verifiers: Vec<(Algorithm, Verifier)>,
    ) -> Result<Self, KeyError> {
        if verifiers.is_empty() {
            return Err(KeyError::NoUsableAlgorithm {
                kty,
                alg: alg.map_or_else(|| "-".to_owned(), |a| format!("{a:?}")),
            });
        }
        Ok(VerifyingKey {
            kid,
            kty,
            verifiers,
        })
    }

    /// The key id, if the key has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The JWK key type (`RSA`, `EC`, `OKP`, `oct`).
    pub fn kty(&self) -> &'static str {
        self.kty
    }

    /// The algorithms this key verifies.
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.verifiers.iter().map(|(a, _)| *a)
    }

    /// Whether this key can verify tokens signed with `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Verifies `signature` over `message` for `alg`. False when the key does not
    /// support `alg` or the signature is wrong.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        let Some((_, verifier)) = self.verifiers.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        match verifier {
            Verifier::Public(key) => key.verify_sig(message, signature).is_ok(),
            Verifier::Hmac(key) => aws_lc_rs::hmac::verify(key, message, signature).is_ok(),
        }
    }
}

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const HMAC_ALGS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// The algorithms a key of a family may verify: the family's, intersected with the
/// issuer's allow-list and, when the key names one, its own `alg`.
fn usable<'a>(
    key_alg: Option<Algorithm>,
    allowed: &'a [Algorithm],
    family: &'a [Algorithm],
) -> impl Iterator<Item = &'a Algorithm> + 'a {
    allowed
        .iter()
        .filter(move |a| family.contains(a) && key_alg.is_none_or(|k| k == **a))
}

fn rsa_params(alg: Algorithm) -> &'static sig::RsaParameters {
    match alg {
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => &sig::RSA_PKCS1_2048_8192_SHA256,
    }
}

/// The immutable set of an issuer's keys at one moment, indexed by `kid`.
#[derive(Debug, Default)]
pub struct KeySnapshot {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    all: Vec<Arc<VerifyingKey>>,
    fingerprint: u64,
}

impl KeySnapshot {
    /// Builds a snapshot from parsed keys. `fingerprint` identifies the key set's
    /// content so caches can tell a rotation from a refetch of the same keys.
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        let all: Vec<Arc<VerifyingKey>> = keys.into_iter().map(Arc::new).collect();
        let by_kid = all
            .iter()
            .filter_map(|k| k.kid().map(|kid| (kid.to_owned(), Arc::clone(k))))
            .collect();
        let fingerprint = fingerprint(&all);
        KeySnapshot {
            by_kid,
            all,
            fingerprint,
        }
    }

    /// The key for a token: by `kid` when the token names one; without a kid, the
    /// key only when the set holds exactly one. A set of exactly one key that has
    /// no kid itself (a shared secret, a PEM file) serves tokens whatever kid they
    /// name, since there is nothing to match the kid against.
    pub fn select(&self, kid: Option<&str>) -> Option<&Arc<VerifyingKey>> {
        let sole_anonymous = || match self.all.as_slice() {
            [only] if only.kid().is_none() => Some(only),
            _ => None,
        };
        match kid {
            Some(kid) => self.by_kid.get(kid).or_else(sole_anonymous),
            None if self.all.len() == 1 => self.all.first(),
            None => None,
        }
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether the snapshot holds no key.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The key ids present, for diagnostics.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.all.iter().filter_map(|k| k.kid())
    }

    /// A content hash of the key ids and algorithms; changes when keys rotate.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

fn fingerprint(keys: &[Arc<VerifyingKey>]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut entries: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{}|{}|{:?}",
                k.kid().unwrap_or("-"),
                k.kty(),
                k.algorithms().collect::<Vec<_>>()
            )
        })
        .collect();
    entries.sort();
    let digest = Sha256::digest(entries.join("\n").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_without_kid_needs_a_single_key() {
        let secret = [7u8; 32];
        let one = VerifyingKey::hmac(None, None, &secret, &[Algorithm::HS256]).unwrap();
        let snap = KeySnapshot::new(vec![one]);
        assert!(snap.select(None).is_some());
        assert!(
            snap.select(Some("any")).is_some(),
            "a lone key without kid serves any kid"
        );
        let a = VerifyingKey::hmac(Some("a".into()), None, &secret, &[Algorithm::HS256]).unwrap();
        let b = VerifyingKey::hmac(Some("b".into()), None, &secret, &[Algorithm::HS256]).unwrap();
        let snap = KeySnapshot::new(vec![a, b]);
        assert!(snap.select(None).is_none());
        assert!(snap.select(Some("b")).is_some());
        assert!(snap.select(Some("c")).is_none());
    }

    #[test]
    fn key_alg_restricts_algorithms() {
        let secret = [7u8; 32];
        let err = VerifyingKey::hmac(None, Some(Algorithm::HS512), &secret, &[Algorithm::HS256]);
        assert!(matches!(err, Err(KeyError::NoUsableAlgorithm { .. })));
    }

    #[test]
    fn short_hmac_secret_refused() {
        assert!(VerifyingKey::hmac(None, None, b"short", &[Algorithm::HS256]).is_err());
    }
}

//! JWKS and PEM key documents: never panics, whatever the document holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::Algorithm;

fuzz_target!(|data: &[u8]| {
    let allowed = [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    let _ = portcullis_jwks::parse::parse_jwks(data, &allowed, false);
    let _ = portcullis_jwks::parse::parse_jwks(data, &[Algorithm::HS256], true);
    let _ = portcullis_jwks::parse::parse_pem(data, &allowed);
});

//! Project Wycheproof's JWS vectors (../shared/testdata/wycheproof, Apache-2.0)
//! against the gateway's own JWS layer: `jws::split`, the header checks and
//! `verify_signature`, with keys parsed by the JWKS fetcher's parser. Every
//! `invalid` case must be rejected; every `valid` compact case with a supported
//! algorithm accepted, except the exceptions listed (and explained in README.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::PathBuf;

use portcullis_jwks::parse::parse_jwks;
use portcullis_policy::verify::{parse_algorithm, verify_signature};
use portcullis_policy::{DEFAULT_ALGORITHMS, IssuerRules, KeySnapshot, jws};
use serde_json::{Value, json};

/// Valid vectors Portcullis refuses on purpose, with the reason.
const EXCEPTIONS: &[(u64, &str)] = &[
    (
        346,
        "RFC 7520 figure 20: the key's own alg is PS256 and the token says PS384; a key's alg is honoured",
    ),
    (
        347,
        "RFC 7520 figure 27: ES512 on P-521, a curve Portcullis does not support",
    ),
    (
        350,
        "RFC 7520 figure 20 (key_ops variant): key alg PS256, token PS384; a key's alg is honoured",
    ),
    (
        351,
        "RFC 7520 figure 27 (key_ops variant): ES512 on P-521, not supported",
    ),
    (
        372,
        "a '?' inside the header segment: strict base64url decoding refuses characters outside the alphabet",
    ),
    (
        373,
        "a '?' inside the payload segment: strict base64url decoding refuses characters outside the alphabet",
    ),
];

/// Invalid vectors whose text is byte-identical to a valid one (a defect of this
/// copy of the corpus: the padding they test did not survive). A verifier cannot
/// tell them apart from the valid vector, so they are accepted like it.
const IDENTICAL_TO_VALID: &[(u64, u64)] = &[(367, 357), (370, 357)];

fn corpus() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/wycheproof/json_web_signature_test.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared/ folder must sit beside the repository)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// Verifies one vector through the gateway's code; true when accepted.
fn accepts(key: &Value, jws_text: &Value) -> bool {
    let Some(token) = jws_text.as_str() else {
        return false; // JSON serialization: Portcullis only takes the compact form
    };
    let algorithms = match key
        .get("alg")
        .and_then(Value::as_str)
        .and_then(parse_algorithm)
    {
        Some(a) => vec![a],
        None => DEFAULT_ALGORITHMS.to_vec(),
    };
    let doc = json!({ "keys": [key] }).to_string();
    let keys = match parse_jwks(doc.as_bytes(), &algorithms, true) {
        Ok(parsed) => KeySnapshot::new(parsed.keys),
        Err(_) => return false,
    };
    let rules = IssuerRules {
        issuer: "wycheproof".into(),
        algorithms,
        leeway_secs: 0,
        required_typ: None,
        scope_claim: None,
    };
    let Ok(parts) = jws::split(token) else {
        return false;
    };
    verify_signature(
        &parts.header,
        parts.signing_input,
        &parts.signature,
        &rules,
        &keys,
    )
    .is_ok()
}

fn jws_of(corpus: &Value, id: u64) -> Value {
    corpus["testGroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["tests"].as_array().unwrap())
        .find(|t| t["tcId"] == id)
        .map(|t| t["jws"].clone())
        .unwrap()
}

#[test]
fn wycheproof_jws_vectors() {
    let corpus = corpus();
    let (mut valid, mut invalid, mut excepted) = (0, 0, 0);
    let mut failures = Vec::new();
    for group in corpus["testGroups"].as_array().unwrap() {
        let key = group.get("public").unwrap_or(&group["private"]);
        // Symmetric groups publish the secret as "private".
        let key = if key.get("kty") == Some(&json!("oct")) {
            &group["private"]
        } else {
            key
        };
        for test in group["tests"].as_array().unwrap() {
            let id = test["tcId"].as_u64().unwrap();
            let accepted = accepts(key, &test["jws"]);
            match test["result"].as_str().unwrap() {
                "valid" if EXCEPTIONS.iter().any(|(e, _)| *e == id) => {
                    assert!(
                        !accepted,
                        "tcId {id} is listed as an exception but was accepted: drop it from EXCEPTIONS"
                    );
                    excepted += 1;
                }
                "valid" => {
                    valid += 1;
                    if !accepted {
                        failures.push(format!(
                            "tcId {id} ({}) valid but rejected",
                            test["comment"]
                        ));
                    }
                }
                _ if IDENTICAL_TO_VALID.iter().any(|(e, _)| *e == id) => {
                    let (_, twin) = IDENTICAL_TO_VALID.iter().find(|(e, _)| *e == id).unwrap();
                    assert_eq!(
                        test["jws"],
                        jws_of(&corpus, *twin),
                        "tcId {id} no longer equals tcId {twin}: drop the exception"
                    );
                    excepted += 1;
                }
                _ => {
                    invalid += 1;
                    if accepted {
                        failures.push(format!(
                            "tcId {id} ({}) invalid but ACCEPTED",
                            test["comment"]
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        valid + invalid + excepted,
        corpus["numberOfTests"].as_u64().unwrap() as usize
    );
    assert_eq!(
        (valid, invalid, excepted),
        (40, 353, 8),
        "the corpus changed: review the exceptions"
    );
    println!(
        "wycheproof: {valid} valid accepted, {invalid} invalid rejected, {excepted} listed exceptions"
    );
}

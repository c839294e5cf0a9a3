//! Introspection answers (RFC 7662) as an authorization server might send them:
//! reading one never panics, only `"active": true` (a JSON boolean) is ever
//! active, and claims that pass are the configured issuer's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{IntrospectionAnswer, IssuerRules, check_introspected, parse_answer};

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = parse_answer(data) else {
        return;
    };
    let value: serde_json::Value = serde_json::from_slice(data).expect("parsed once already");
    let IntrospectionAnswer::Active(members) = answer else {
        assert_eq!(value.get("active"), Some(&serde_json::Value::Bool(false)));
        return;
    };
    assert_eq!(value.get("active"), Some(&serde_json::Value::Bool(true)));
    let rules = IssuerRules {
        issuer: "https://as.example/".to_owned(),
        algorithms: Vec::new(),
        leeway_secs: 60,
        required_typ: None,
        scope_claim: None,
    };
    if let Ok(claims) = check_introspected(members, &rules, 1_700_000_000) {
        assert_eq!(&*claims.issuer, "https://as.example/");
        assert!(claims.expires_at > 1_700_000_000 - 60);
    }
});

//! Every rejection reason and RFC 6750 case, end to end: a real gateway, a real
//! development authorization server and a counting upstream that proves rejected
//! requests never arrive.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use portcullis_devkit::{SigningKey, b64, now_unix, unsigned_token};
use portcullis_tests::{BASE_CONFIG, JwksFault, TestEnv};
use serde_json::{Value, json};

/// One case: the Authorization header values, and what must come back.
struct Case {
    name: &'static str,
    headers: Vec<String>,
    status: u16,
    reason: &'static str,
    challenge: Option<&'static str>,
}

fn bearer(t: &str) -> Vec<String> {
    vec![format!("Bearer {t}")]
}

fn re_sign_payload(token: &str, new_claims: &Value) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    let payload = b64(new_claims.to_string());
    parts[1] = &payload;
    parts.join(".")
}

#[tokio::test]
async fn each_reason_code_and_rfc6750_case() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let now = now_unix();
    let good = env.token("chat:write", json!({}));
    let key = env.auth.signing_key();
    let stranger = SigningKey::rsa("stranger").unwrap();
    let impostor = SigningKey::rsa("dev-rsa-1").unwrap();
    let claims = |extra: Value| env.auth.claims("chat:write", extra);
    // HS256 with the RSA public key as the HMAC secret: the classic confusion attack.
    let public_jwk = key.public_jwk().to_string();
    let confused = SigningKey::hmac("dev-rsa-1", public_jwk.as_bytes())
        .sign_with_header(
            &json!({"alg": "HS256", "kid": "dev-rsa-1"}),
            &claims(json!({})),
        )
        .unwrap();
    let tampered = re_sign_payload(&good, &claims(json!({"scope": "chat:write admin"})));
    let segments: Vec<&str> = good.split('.').collect();

    let cases = vec![
        Case {
            name: "no header",
            headers: vec![],
            status: 401,
            reason: "token_missing",
            challenge: Some("Bearer realm=\"portcullis\""),
        },
        Case {
            name: "basic scheme",
            headers: vec!["Basic dXNlcjpwYXNz".into()],
            status: 401,
            reason: "token_missing",
            challenge: Some("Bearer realm=\"portcullis\""),
        },
        Case {
            name: "two tokens",
            headers: vec![format!("Bearer {good} {good}")],
            status: 400,
            reason: "request_malformed",
            challenge: Some("error=\"invalid_request\""),
        },
        Case {
            name: "two headers",
            headers: vec![format!("Bearer {good}"), format!("Bearer {good}")],
            status: 400,
            reason: "request_malformed",
            challenge: Some("error=\"invalid_request\""),
        },
        Case {
            name: "empty bearer",
            headers: vec!["Bearer".into()],
            status: 400,
            reason: "request_malformed",
            challenge: Some("invalid_request"),
        },
        Case {
            name: "alg none",
            headers: bearer(&unsigned_token(&claims(json!({})))),
            status: 401,
            reason: "algorithm_not_allowed",
            challenge: Some("error=\"invalid_token\""),
        },
        Case {
            name: "HS256 with the RSA public key",
            headers: bearer(&confused),
            status: 401,
            reason: "algorithm_not_allowed",
            challenge: Some("invalid_token"),
        },
        Case {
            name: "unknown kid",
            headers: bearer(&stranger.sign(&claims(json!({}))).unwrap()),
            status: 401,
            reason: "key_unknown",
            challenge: Some("invalid_token"),
        },
        Case {
            name: "wrong key, right kid",
            headers: bearer(&impostor.sign(&claims(json!({}))).unwrap()),
            status: 401,
            reason: "signature_invalid",
            challenge: Some("invalid_token"),
        },
        Case {
            name: "tampered payload",
            headers: bearer(&tampered),
            status: 401,
            reason: "signature_invalid",
            challenge: Some("invalid_token"),
        },
        Case {
            name: "truncated",
            headers: bearer(&format!("{}.{}", segments[0], segments[1])),
            status: 401,
            reason: "token_malformed",
            challenge: Some("2 segments"),
        },
        Case {
            name: "five segments",
            headers: bearer(&format!("{good}.a.b")),
            status: 401,
            reason: "token_malformed",
            challenge: Some("JWE"),
        },
        Case {
            name: "non-base64url segment",
            headers: bearer(&format!(
                "{}.{}+/.{}",
                segments[0], segments[1], segments[2]
            )),
            status: 401,
            reason: "token_malformed",
            challenge: Some("base64url"),
        },
        Case {
            name: "oversized",
            headers: bearer(&"a".repeat(9000)),
            status: 401,
            reason: "token_too_large",
            challenge: Some("invalid_token"),
        },
        Case {
            name: "expired",
            headers: bearer(&env.token("chat:write", json!({"exp": now - 600}))),
            status: 401,
            reason: "token_expired",
            challenge: Some("token expired 10m"),
        },
        Case {
            name: "nbf in the future",
            headers: bearer(&env.token("chat:write", json!({"nbf": now + 600}))),
            status: 401,
            reason: "token_not_yet_valid",
            challenge: Some("not valid for another"),
        },
        Case {
            name: "iat in the future",
            headers: bearer(&env.token("chat:write", json!({"iat": now + 600}))),
            status: 401,
            reason: "token_not_yet_valid",
            challenge: Some("clock skew"),
        },
        Case {
            name: "wrong iss",
            headers: bearer(&env.token("chat:write", json!({"iss": "http://evil.example/"}))),
            status: 401,
            reason: "issuer_mismatch",
            challenge: Some("not accepted"),
        },
        Case {
            name: "no iss",
            headers: bearer(&env.token("chat:write", json!({"iss": null}))),
            status: 401,
            reason: "issuer_mismatch",
            challenge: Some("no iss"),
        },
        Case {
            name: "wrong aud",
            headers: bearer(&env.token("chat:write", json!({"aud": "other-api"}))),
            status: 401,
            reason: "audience_mismatch",
            challenge: Some("other-api"),
        },
        Case {
            name: "missing exp",
            headers: bearer(&env.token("chat:write", json!({"exp": null}))),
            status: 401,
            reason: "token_malformed",
            challenge: Some("no exp"),
        },
        Case {
            name: "exp of the wrong type",
            headers: bearer(&env.token("chat:write", json!({"exp": "tomorrow"}))),
            status: 401,
            reason: "token_malformed",
            challenge: Some("NumericDate"),
        },
        Case {
            name: "crit header",
            headers: bearer(
                &key.sign_with_header(
                    &json!({"alg": "RS256", "kid": "dev-rsa-1", "crit": ["exp"]}),
                    &claims(json!({})),
                )
                .unwrap(),
            ),
            status: 401,
            reason: "token_malformed",
            challenge: Some("crit"),
        },
        Case {
            name: "missing scope",
            headers: bearer(&env.token("chat:read", json!({}))),
            status: 403,
            reason: "scope_insufficient",
            challenge: Some(
                "error=\"insufficient_scope\", error_description=\"scope_insufficient: missing scope chat:write\", scope=\"chat:write\"",
            ),
        },
    ];

    for case in &cases {
        let before = env.upstream.requests();
        let headers: Vec<(&str, &str)> = case
            .headers
            .iter()
            .map(|v| ("authorization", v.as_str()))
            .collect();
        let reply = env.get("/v1/chat/x", &headers).await;
        assert_eq!(
            reply.status.as_u16(),
            case.status,
            "{}: {:?}",
            case.name,
            reply.json()
        );
        assert_eq!(
            reply.reason(),
            case.reason,
            "{}: {:?}",
            case.name,
            reply.json()
        );
        let body = reply.json();
        assert!(
            body["request_id"]
                .as_str()
                .is_some_and(|id| Some(id.to_owned()) == reply.header("x-request-id")),
            "{}",
            case.name
        );
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        if let Some(want) = case.challenge {
            let got = reply.header("www-authenticate").unwrap_or_default();
            assert!(
                got.contains(want),
                "{}: challenge {got:?} lacks {want:?}",
                case.name
            );
        }
        assert_eq!(
            env.upstream.requests(),
            before,
            "{}: a rejected request reached the upstream",
            case.name
        );
        // Never the token in a body or a challenge.
        if let Some(v) = case.headers.first() {
            let token = v.trim_start_matches("Bearer ");
            if token.len() > 20 {
                let text = String::from_utf8_lossy(&reply.body);
                let sig = token.rsplit('.').next().unwrap_or("");
                assert!(
                    sig.len() < 8 || !text.contains(sig),
                    "{}: token signature leaked",
                    case.name
                );
                assert!(
                    !reply
                        .header("www-authenticate")
                        .unwrap_or_default()
                        .contains(token),
                    "{}",
                    case.name
                );
            }
        }
    }
}

#[tokio::test]
async fn accepted_variants_reach_the_upstream() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let now = now_unix();
    let mut scp = env
        .auth
        .claims("", json!({"scp": ["chat:read", "chat:write"]}));
    scp.as_object_mut().unwrap().remove("scope");
    let accepted = [
        ("valid", env.token("chat:write", json!({}))),
        (
            "expired within leeway",
            env.token("chat:write", json!({"exp": now - 30})),
        ),
        (
            "aud array",
            env.token("chat:write", json!({"aud": ["x", "portcullis-demo"]})),
        ),
        ("scp array", env.auth.signing_key().sign(&scp).unwrap()),
    ];
    for (name, token) in &accepted {
        let before = env.upstream.requests();
        let reply = env
            .send(
                http::Method::GET,
                "/v1/chat/x",
                &[("authorization", &format!("bearer {token}"))],
                "",
            )
            .await;
        assert_eq!(reply.status, 200, "{name}: {:?}", reply.json());
        assert_eq!(env.upstream.requests(), before + 1, "{name}");
    }
}

#[tokio::test]
async fn rotated_in_key_is_fetched_and_accepted() {
    let env = TestEnv::start(BASE_CONFIG).await;
    assert_eq!(
        env.get_with_token("/v1/chat/x", &env.token("chat:write", json!({})))
            .await
            .status,
        200
    );
    env.auth.rotate_in(SigningKey::ec("dev-ec-2").unwrap());
    let es256 = env.token("chat:write", json!({}));
    let reply = env.get_with_token("/v1/chat/x", &es256).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    // The old key keeps working until it is removed from the set.
    env.auth.remove_key("dev-rsa-1");
    let ed = SigningKey::ed25519("dev-ed-3").unwrap();
    env.auth.rotate_in(ed);
    let reply = env
        .get_with_token("/v1/chat/x", &env.token("chat:write", json!({})))
        .await;
    assert_eq!(
        reply.status,
        200,
        "EdDSA after a second rotation: {:?}",
        reply.json()
    );
}

#[tokio::test]
async fn idp_unavailable_is_503_with_retry_after() {
    let auth = portcullis_tests::AuthServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    auth.set_fault(JwksFault::Status(500));
    let upstream = portcullis_tests::DemoUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let yaml = portcullis_tests::render(BASE_CONFIG, &auth, &upstream);
    let env = TestEnv::start_with(auth, upstream, &yaml).await;
    let reply = env
        .get_with_token("/v1/chat/x", &env.token("chat:write", json!({})))
        .await;
    assert_eq!(reply.status, 503, "{:?}", reply.json());
    assert_eq!(reply.reason(), "idp_unavailable");
    assert_eq!(reply.header("retry-after").as_deref(), Some("5"));
    assert!(
        reply.header("www-authenticate").is_none(),
        "not a token problem"
    );
    assert_eq!(env.upstream.requests(), 0);
}

const CLAIMS_CONFIG: &str = r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
issuers:
  dev: { issuer: "{ISSUER}", jwks_uri: "{ISSUER}jwks" }
upstreams:
  llm: { targets: ["{UPSTREAM}"] }
routes:
  - name: tenant
    match: { path_prefix: / }
    upstream: llm
    auth:
      issuers: [dev]
      audiences: [portcullis-demo]
      scopes: { any_of: [chat:write, chat:admin] }
      claims:
        - { claim: tenant, equals: acme }
        - { claim: roles, contains: operator }
"#;

#[tokio::test]
async fn claim_rules_and_any_of_scopes() {
    let env = TestEnv::start(CLAIMS_CONFIG).await;
    let ok = env.token(
        "chat:admin",
        json!({"tenant": "acme", "roles": ["operator", "x"]}),
    );
    assert_eq!(env.get_with_token("/a", &ok).await.status, 200);
    let wrong_tenant = env.token(
        "chat:admin",
        json!({"tenant": "globex", "roles": ["operator"]}),
    );
    let reply = env.get_with_token("/a", &wrong_tenant).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason().as_str()),
        (403, "claim_mismatch")
    );
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );
    let no_scope = env.token(
        "models:read",
        json!({"tenant": "acme", "roles": ["operator"]}),
    );
    let reply = env.get_with_token("/a", &no_scope).await;
    assert_eq!(reply.reason(), "scope_insufficient");
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("chat:write chat:admin")
    );
}

#[tokio::test]
async fn removed_key_invalidates_cached_verifications() {
    let env = TestEnv::start(BASE_CONFIG).await;
    let old = env.token("chat:write", json!({}));
    assert_eq!(env.get_with_token("/v1/chat/x", &old).await.status, 200);
    assert_eq!(
        env.get_with_token("/v1/chat/x", &old).await.status,
        200,
        "served from the token cache"
    );
    // Rotate: a new key signs, the old one leaves the set.
    env.auth.rotate_in(SigningKey::ec("dev-ec-9").unwrap());
    env.auth.remove_key("dev-rsa-1");
    let new = env.token("chat:write", json!({}));
    assert_eq!(
        env.get_with_token("/v1/chat/x", &new).await.status,
        200,
        "the new kid triggers a refetch"
    );
    let reply = env.get_with_token("/v1/chat/x", &old).await;
    assert_eq!(
        reply.status,
        401,
        "the cached verification died with its key: {:?}",
        reply.json()
    );
    assert_eq!(reply.reason(), "key_unknown");
}

#[tokio::test]
async fn report_only_mode_forwards_and_counts_would_deny() {
    let config = BASE_CONFIG.replace(
        "      scopes: { all_of: [chat:write] }\n",
        "      scopes: { all_of: [chat:write] }\n      mode: report\n",
    );
    let env = TestEnv::start(&config).await;
    let weak = env.token("chat:read", json!({}));
    let reply = env.get("/v1/chat/x", &[]).await;
    assert_eq!(reply.status, 200, "report-only lets the request through");
    assert!(
        reply.json()["headers"]
            .get("x-portcullis-subject")
            .is_none(),
        "no claims without a valid token"
    );
    assert_eq!(env.get_with_token("/v1/chat/x", &weak).await.status, 200);
    assert_eq!(env.upstream.requests(), 2);
    let text = env.metrics.render();
    for reason in ["token_missing", "scope_insufficient"] {
        let line =
            format!("portcullis_auth_would_deny_total{{reason=\"{reason}\",route=\"chat\"}} 1");
        assert!(text.contains(&line), "missing {line}:\n{text}");
    }
}

const OPTIONS_CONFIG: &str = r#"
listen: { address: "127.0.0.1:0" }
admin: { enabled: false }
logging: { access_log: false }
issuers:
  dev: { issuer: "{ISSUER}", jwks_uri: "{ISSUER}jwks" }
  typed: { issuer: "{ISSUER}", jwks_uri: "{ISSUER}jwks", required_typ: at+jwt }
  perms: { issuer: "{ISSUER}", jwks_uri: "{ISSUER}jwks", scope_claim: permissions }
  shared: { issuer: "https://shared.example/", secret: "0123456789abcdef0123456789abcdef-shared" }
upstreams:
  llm: { targets: ["{UPSTREAM}"] }
routes:
  - { name: query, match: { path_prefix: /q/ }, upstream: llm, auth: { issuers: [dev], audiences: [portcullis-demo], query_token: true } }
  - { name: plain, match: { path_prefix: /plain/ }, upstream: llm, auth: { issuers: [dev], audiences: [portcullis-demo] } }
  - { name: typed, match: { path_prefix: /typed/ }, upstream: llm, auth: { issuers: [typed], audiences: [portcullis-demo] } }
  - { name: perms, match: { path_prefix: /perms/ }, upstream: llm, auth: { issuers: [perms], audiences: [portcullis-demo], scopes: { all_of: [read] } } }
  - { name: hmac, match: { path_prefix: /hmac/ }, upstream: llm, auth: { issuers: [shared], audiences: [portcullis-demo] } }
  - { name: passthrough, match: { path_prefix: /pass/ }, upstream: llm, auth: { issuers: [dev], audiences: [portcullis-demo], forward_token: true } }
"#;

#[tokio::test]
async fn route_and_issuer_options() {
    let env = TestEnv::start(OPTIONS_CONFIG).await;
    let token = env.token("", json!({}));

    // Query tokens only where enabled, never forwarded, never together with a header.
    let reply = env
        .get(&format!("/q/x?a=1&access_token={token}&b=2"), &[])
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(
        reply.json()["uri"],
        "/q/x?a=1&b=2",
        "the query token is not forwarded"
    );
    let reply = env
        .get_with_token(&format!("/q/x?access_token={token}"), &token)
        .await;
    assert_eq!(reply.reason(), "request_malformed");
    let reply = env
        .get(&format!("/plain/x?access_token={token}"), &[])
        .await;
    assert_eq!(
        reply.reason(),
        "token_missing",
        "query tokens are refused unless the route enables them"
    );

    // required_typ: the token endpoint issues at+jwt; a plain JWT is refused.
    let reply = env.get_with_token("/typed/x", &token).await;
    assert_eq!(reply.reason(), "token_malformed");
    assert!(reply.json()["detail"].as_str().unwrap().contains("typ"));
    let claims = env.auth.claims("", json!({}));
    let key = env.auth.signing_key();
    let at_jwt = key
        .sign_with_header(
            &json!({"alg": "RS256", "kid": key.kid(), "typ": "at+jwt"}),
            &claims,
        )
        .unwrap();
    assert_eq!(env.get_with_token("/typed/x", &at_jwt).await.status, 200);
    assert_eq!(
        env.get_with_token("/plain/x", &at_jwt).await.status,
        200,
        "the same iss without typ rules"
    );

    // A custom scope claim.
    let with_perms = env.token("", json!({"scope": null, "permissions": ["read", "write"]}));
    assert_eq!(
        env.get_with_token("/perms/x", &with_perms).await.status,
        200
    );
    let scope_only = env.token("read", json!({}));
    assert_eq!(
        env.get_with_token("/perms/x", &scope_only).await.reason(),
        "scope_insufficient",
        "only the configured claim counts"
    );

    // A shared-secret issuer takes HS256 and nothing else.
    let secret = b"0123456789abcdef0123456789abcdef-shared";
    let hs = SigningKey::hmac("s", secret)
        .sign(
            &env.auth
                .claims("", json!({"iss": "https://shared.example/"})),
        )
        .unwrap();
    assert_eq!(env.get_with_token("/hmac/x", &hs).await.status, 200);
    let rs = env.token("", json!({"iss": "https://shared.example/"}));
    assert_eq!(
        env.get_with_token("/hmac/x", &rs).await.reason(),
        "algorithm_not_allowed"
    );
    let wrong_secret = SigningKey::hmac("s", b"another-secret-another-secret-12345")
        .sign(
            &env.auth
                .claims("", json!({"iss": "https://shared.example/"})),
        )
        .unwrap();
    assert_eq!(
        env.get_with_token("/hmac/x", &wrong_secret).await.reason(),
        "signature_invalid"
    );

    // forward_token keeps the client's Authorization towards the upstream.
    let reply = env.get_with_token("/pass/x", &token).await;
    assert_eq!(
        reply.json()["headers"]["authorization"][0],
        format!("Bearer {token}")
    );
    let reply = env.get_with_token("/plain/x", &token).await;
    assert!(reply.json()["headers"].get("authorization").is_none());
}

/// The challenge's `scope=` names what the token still lacks, never a scope it
/// already has: the route needs `a` and one of `b`, `c`.
#[tokio::test]
async fn scope_hints_name_only_what_is_missing() {
    let config = BASE_CONFIG.replace(
        "scopes: { all_of: [chat:write] }",
        "scopes: { all_of: [a], any_of: [b, c] }",
    );
    let env = TestEnv::start(&config).await;
    for (held, hint) in [("a", "b c"), ("", "a b"), ("b", "a"), ("c x", "a")] {
        let token = env.token(held, json!({}));
        let reply = env.get_with_token("/v1/chat/x", &token).await;
        assert_eq!(reply.status, 403, "holding {held:?}");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.ends_with(&format!("scope=\"{hint}\"")),
            "holding {held:?}: {challenge}"
        );
    }
    let token = env.token("a c", json!({}));
    assert_eq!(env.get_with_token("/v1/chat/x", &token).await.status, 200);
}

/// `responses.detail: minimal`: a refusal names its reason (and the scope hint a
/// client needs), but not the accepted issuers, audiences or claim values.
#[tokio::test]
async fn minimal_detail_tells_the_reason_and_nothing_of_the_configuration() {
    let config = BASE_CONFIG.replace(
        "logging: { access_log: false }",
        "logging: { access_log: false }\nresponses: { detail: minimal }",
    );
    let env = TestEnv::start(&config).await;
    let foreign = env.token("chat:write", json!({"iss": "https://other.example/"}));
    let wrong_aud = env.token("chat:write", json!({"aud": "someone-else"}));
    let no_scope = env.token("", json!({}));
    for (token, reason) in [
        (&foreign, "issuer_mismatch"),
        (&wrong_aud, "audience_mismatch"),
        (&no_scope, "scope_insufficient"),
    ] {
        let reply = env.get_with_token("/v1/chat/x", token).await;
        assert_eq!(reply.reason(), reason);
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        let told = format!("{} {challenge}", String::from_utf8_lossy(&reply.body));
        for secret in [
            env.auth.issuer(),
            "portcullis-demo",
            "someone-else",
            "other.example",
        ] {
            assert!(!told.contains(secret), "{reason} told {secret:?}: {told}");
        }
        assert!(told.contains("request_id"), "{told}");
        let title = portcullis_policy::Reason::from_code(reason)
            .unwrap()
            .title();
        assert_eq!(
            reply.json()["detail"],
            format!("{title}; the gateway's log has the details under this request_id")
        );
    }
    // With full detail (the default) the same refusal names the issuer it expected.
    let full = TestEnv::start(BASE_CONFIG).await;
    let foreign = full.token("chat:write", json!({"iss": "https://other.example/"}));
    let reply = full.get_with_token("/v1/chat/x", &foreign).await;
    assert!(
        String::from_utf8_lossy(&reply.body).contains("other.example"),
        "{:?}",
        reply.body
    );
    let reply = env.get_with_token("/v1/chat/x", &no_scope).await;
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .ends_with("scope=\"chat:write\""),
        "the scope hint stays"
    );
}

//! CORS end to end: preflights answered by the gateway before authentication,
//! refusals naming what is not allowed, and responses (refusals included)
//! carrying the headers a browser needs, for allowed origins only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use http::Method;
use portcullis_tests::{BASE_CONFIG, TestEnv};
use serde_json::json;

fn config() -> String {
    BASE_CONFIG.replace(
        "      claim_headers: { sub: X-Portcullis-Subject, tenant: X-Tenant }",
        "      claim_headers: { sub: X-Portcullis-Subject, tenant: X-Tenant }\n    cors:\n      allowed_origins: [\"https://chat.example.com\"]\n      allowed_methods: [POST]\n      allow_credentials: true\n      max_age: 5m",
    )
}

const CHAT: &str = "https://chat.example.com";

#[tokio::test]
async fn preflights_are_answered_before_authentication() {
    let env = TestEnv::start(&config()).await;
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        let env = &env;
        async move {
            env.send(
                Method::OPTIONS,
                "/v1/chat/completions",
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                    ("access-control-request-headers", headers),
                ],
                "",
            )
            .await
        }
    };
    let ok = preflight(CHAT, "POST", "authorization, content-type").await;
    assert_eq!(ok.status, 204, "{:?}", ok.body);
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some(CHAT)
    );
    assert_eq!(
        ok.header("access-control-allow-methods").as_deref(),
        Some("POST")
    );
    assert_eq!(
        ok.header("access-control-allow-headers").as_deref(),
        Some("authorization, content-type")
    );
    assert_eq!(ok.header("access-control-max-age").as_deref(), Some("300"));
    assert_eq!(
        ok.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(ok.header("vary").as_deref(), Some("Origin"));

    for (origin, method, headers, why) in [
        (
            "https://evil.example",
            "POST",
            "authorization",
            "origin https://evil.example",
        ),
        (CHAT, "DELETE", "authorization", "method DELETE"),
        (
            CHAT,
            "POST",
            "authorization, x-evil",
            "request header x-evil",
        ),
    ] {
        let r = preflight(origin, method, headers).await;
        assert_eq!(
            (r.status.as_u16(), r.reason().as_str()),
            (403, "cors_not_allowed"),
            "{why}"
        );
        assert!(
            r.json()["detail"].as_str().unwrap().contains(why),
            "{:?}",
            r.body
        );
        assert!(r.header("access-control-allow-origin").is_none(), "{why}");
    }
    // A route without a cors block allows no preflight.
    let r = env
        .send(
            Method::OPTIONS,
            "/public/x",
            &[("origin", CHAT), ("access-control-request-method", "GET")],
            "",
        )
        .await;
    assert_eq!(r.reason(), "cors_not_allowed");
    assert_eq!(
        env.upstream.requests(),
        0,
        "no preflight reached the upstream"
    );
}

#[tokio::test]
async fn responses_to_allowed_origins_carry_the_headers_refusals_included() {
    let env = TestEnv::start(&config()).await;
    let token = env.token("chat:write", json!({}));
    let auth = format!("Bearer {token}");
    let ok = env
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("origin", CHAT), ("authorization", &auth)],
            "{}",
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some(CHAT)
    );
    assert_eq!(
        ok.header("access-control-expose-headers").as_deref(),
        Some("x-request-id")
    );
    assert_eq!(ok.header("vary").as_deref(), Some("Origin"));
    // A refusal is readable by the page: it carries the CORS headers too.
    let refused = env
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("origin", CHAT)],
            "{}",
        )
        .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("access-control-allow-origin").as_deref(),
        Some(CHAT)
    );
    // Another origin gets no CORS headers, only Vary.
    let other = env
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("origin", "https://evil.example"), ("authorization", &auth)],
            "{}",
        )
        .await;
    assert_eq!(other.status, 200);
    assert!(other.header("access-control-allow-origin").is_none());
    assert_eq!(other.header("vary").as_deref(), Some("Origin"));
}

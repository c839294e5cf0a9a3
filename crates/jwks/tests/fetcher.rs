//! The JWKS fetcher against a real development authorization server on 127.0.0.1:
//! discovery, rotation, cache lifetimes, outages, single-flight and size limits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use portcullis_devkit::{AuthServer, JwksFault, SigningKey};
use portcullis_jwks::{
    FetchError, JwksSettings, KeyCache, KeySource, KeyStatus, KidLookup, NoopObserver,
};
use portcullis_policy::DEFAULT_ALGORITHMS;

fn settings() -> JwksSettings {
    JwksSettings {
        min_ttl: Duration::ZERO,
        retries: 0,
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..JwksSettings::default()
    }
}

async fn server() -> AuthServer {
    AuthServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn cache(server: &AuthServer, source: KeySource, settings: JwksSettings) -> Arc<KeyCache> {
    Arc::new(
        KeyCache::new(
            server.issuer().to_owned(),
            source,
            settings,
            DEFAULT_ALGORITHMS.to_vec(),
            Arc::new(NoopObserver),
        )
        .unwrap(),
    )
}

/// Polls `cond` until it holds; fails the test after a generous deadline.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn discovery_then_keys() {
    let s = server().await;
    let c = cache(&s, KeySource::Discovery, settings());
    assert_eq!(c.status(), KeyStatus::Pending);
    assert!(c.usable_snapshot().is_none());
    c.refresh().await.unwrap();
    assert_eq!(c.status(), KeyStatus::Fresh);
    let snap = c.usable_snapshot().unwrap();
    assert!(snap.select(Some("dev-rsa-1")).is_some());
    assert_eq!(s.control.discovery_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn discovery_falls_back_to_rfc8414_metadata() {
    let s = server().await;
    s.control.oidc_discovery.store(false, Ordering::SeqCst);
    let c = cache(&s, KeySource::Discovery, settings());
    c.refresh().await.unwrap();
    assert!(
        c.usable_snapshot()
            .unwrap()
            .select(Some("dev-rsa-1"))
            .is_some()
    );
    assert_eq!(
        s.control.discovery_hits.load(Ordering::SeqCst),
        1,
        "the RFC 8414 document served the keys' location"
    );
}

#[tokio::test]
async fn discovery_issuer_mismatch_refused() {
    let s = server().await;
    *s.control.issuer_override.lock().unwrap() = Some("http://evil.example/".into());
    let c = cache(&s, KeySource::Discovery, settings());
    let err = c.refresh().await.unwrap_err();
    assert!(matches!(err, FetchError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("mix-up"), "{err}");
    assert_eq!(c.status(), KeyStatus::Failed);
    assert!(c.usable_snapshot().is_none());
    assert_eq!(
        s.jwks_hits(),
        0,
        "keys must not be fetched after a mismatched discovery"
    );
}

#[tokio::test]
async fn rotation_new_kid_found_and_removed_kid_gone() {
    let s = server().await;
    let mut st = settings();
    st.min_refetch_interval = Duration::ZERO;
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), st);
    c.refresh().await.unwrap();
    s.rotate_in(SigningKey::ec("dev-ec-2").unwrap());
    assert!(
        c.usable_snapshot()
            .unwrap()
            .select(Some("dev-ec-2"))
            .is_none()
    );
    assert_eq!(c.refresh_for_kid(Some("dev-ec-2")).await, KidLookup::Found);
    let gen_before = c.state().generation;
    s.remove_key("dev-rsa-1");
    c.refresh().await.unwrap();
    let snap = c.usable_snapshot().unwrap();
    assert!(snap.select(Some("dev-rsa-1")).is_none());
    assert!(snap.select(Some("dev-ec-2")).is_some());
    assert!(
        c.state().generation > gen_before,
        "a key-set change bumps the generation"
    );
}

#[tokio::test]
async fn cache_control_honoured_and_clamped() {
    let s = server().await;
    let lifetime = |c: &KeyCache| {
        let st = c.state();
        st.expires_at
            .unwrap()
            .duration_since(st.fetched_instant.unwrap())
    };
    s.control.max_age.store(120, Ordering::SeqCst);
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), settings());
    c.refresh().await.unwrap();
    assert_eq!(lifetime(&c), Duration::from_secs(120));

    let mut st = settings();
    st.min_ttl = Duration::from_secs(600);
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), st);
    c.refresh().await.unwrap();
    assert_eq!(
        lifetime(&c),
        Duration::from_secs(600),
        "clamped up to min_ttl"
    );

    s.control.max_age.store(10_000_000, Ordering::SeqCst);
    let mut st = settings();
    st.max_ttl = Duration::from_secs(3600);
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), st);
    c.refresh().await.unwrap();
    assert_eq!(
        lifetime(&c),
        Duration::from_secs(3600),
        "clamped down to max_ttl"
    );
}

#[tokio::test]
async fn refreshed_in_background_before_expiry() {
    let s = server().await;
    s.control.max_age.store(1, Ordering::SeqCst);
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), settings());
    let task = c.spawn_refresher().unwrap();
    eventually("three background fetches", || s.jwks_hits() >= 3).await;
    // Each refresh happened while the previous keys were still fresh or within
    // max_stale, so a reader never saw the cache empty.
    assert!(c.usable_snapshot().is_some());
    task.abort();
}

#[tokio::test]
async fn outages_keep_the_last_good_keys() {
    let s = server().await;
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), settings());
    c.refresh().await.unwrap();
    let faults = [
        (JwksFault::Status(500), "http_error"),
        (
            JwksFault::Body("<html>oops</html>".into()),
            "invalid_document",
        ),
        (JwksFault::Body("{\"keys\":[]}".into()), "invalid_document"),
        (JwksFault::Delay(Duration::from_secs(5)), "timeout"),
    ];
    for (fault, kind) in faults {
        s.set_fault(fault.clone());
        let err = c.refresh().await.unwrap_err();
        assert_eq!(err.kind(), kind, "{fault:?}: {err}");
        let snap = c.usable_snapshot().expect("stale keys keep serving");
        assert!(snap.select(Some("dev-rsa-1")).is_some());
        assert!(c.state().last_error.is_some());
    }
    s.set_fault(JwksFault::None);
    s.handle.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = c.refresh().await.unwrap_err();
    assert_eq!(err.kind(), "connect_error", "{err}");
    assert!(c.usable_snapshot().is_some());
}

#[tokio::test]
async fn beyond_max_stale_there_are_no_usable_keys() {
    let s = server().await;
    s.control.max_age.store(0, Ordering::SeqCst);
    let mut st = settings();
    st.max_stale = Duration::ZERO;
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), st);
    c.refresh().await.unwrap();
    s.set_fault(JwksFault::Status(503));
    let _ = c.refresh().await;
    assert_eq!(c.status(), KeyStatus::Failed);
    assert!(c.usable_snapshot().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_unknown_kid_lookups_cause_one_fetch() {
    let s = server().await;
    // No rate limit, so only single flight and the unknown-kid memory hold it to one.
    let mut st = settings();
    st.min_refetch_interval = Duration::ZERO;
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), st);
    c.refresh().await.unwrap();
    let before = s.jwks_hits();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.refresh_for_kid(Some("no-such-kid")).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), KidLookup::Unknown);
    }
    assert_eq!(s.jwks_hits() - before, 1, "single flight");
}

#[tokio::test]
async fn garbage_kids_are_rate_limited() {
    let s = server().await;
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), settings());
    c.refresh().await.unwrap();
    let before = s.jwks_hits();
    for i in 0..50 {
        assert_eq!(
            c.refresh_for_kid(Some(&format!("garbage-{i}"))).await,
            KidLookup::Unknown
        );
    }
    assert_eq!(
        s.jwks_hits(),
        before,
        "within min_refetch_interval of the last fetch: no fetch at all"
    );
}

#[tokio::test]
async fn oversized_document_refused() {
    let s = server().await;
    s.set_fault(JwksFault::Body(format!(
        "{{\"keys\":[],\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    )));
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), settings());
    let err = c.refresh().await.unwrap_err();
    assert_eq!(err.kind(), "too_large", "{err}");
}

#[tokio::test]
async fn every_key_type_parsed_and_bad_key_skipped() {
    let s = server().await;
    s.rotate_in(SigningKey::ec("ec").unwrap());
    s.rotate_in(SigningKey::ed25519("ed").unwrap());
    s.rotate_in(SigningKey::rsa("ps").unwrap().with_alg("PS256"));
    let c = cache(&s, KeySource::JwksUri(s.jwks_uri()), settings());
    c.refresh().await.unwrap();
    let snap = c.usable_snapshot().unwrap();
    for kid in ["dev-rsa-1", "ec", "ed", "ps"] {
        assert!(snap.select(Some(kid)).is_some(), "{kid}");
    }
    // A document with one good key and garbage beside it.
    let good = s.signing_key().public_jwk();
    s.set_fault(JwksFault::Body(format!(
        "{{\"keys\":[{good},{{\"kty\":\"RSA\",\"kid\":\"broken\",\"n\":\"!!\",\"e\":\"AQAB\"}},{{\"kty\":\"oct\",\"kid\":\"sym\",\"k\":\"c2VjcmV0\"}}]}}"
    )));
    c.refresh().await.unwrap();
    let st = c.state();
    assert_eq!(st.snapshot.len(), 1);
    assert_eq!(st.skipped.len(), 2);
}

#[tokio::test]
async fn static_pem_and_jwks_need_no_network() {
    let key = SigningKey::ec("file-ec").unwrap();
    let pem = key.public_pem().unwrap();
    let c = KeyCache::new(
        "https://static.example/".into(),
        KeySource::StaticPem {
            path: "k.pem".into(),
            pem: pem.into_bytes(),
        },
        settings(),
        DEFAULT_ALGORITHMS.to_vec(),
        Arc::new(NoopObserver),
    )
    .unwrap();
    assert_eq!(c.status(), KeyStatus::Fresh);
    assert!(c.usable_snapshot().unwrap().select(None).is_some());
    let doc = serde_json::json!({"keys": [key.public_jwk()]}).to_string();
    let c = KeyCache::new(
        "https://static.example/".into(),
        KeySource::StaticJwks {
            path: "k.json".into(),
            document: doc.into_bytes(),
        },
        settings(),
        DEFAULT_ALGORITHMS.to_vec(),
        Arc::new(NoopObserver),
    )
    .unwrap();
    assert!(
        c.usable_snapshot()
            .unwrap()
            .select(Some("file-ec"))
            .is_some()
    );
}

//! OpenID Connect Discovery 1.0 §4 and RFC 8414 §3: finding an issuer's `jwks_uri`,
//! with the mix-up defence that the document's `issuer` equals the configured one.

use serde::Deserialize;

use crate::fetch::{FetchError, Fetcher};

#[derive(Deserialize)]
struct Metadata {
    issuer: Option<String>,
    jwks_uri: Option<String>,
    introspection_endpoint: Option<String>,
}

/// The metadata URLs to try, in order: OIDC (`issuer + /.well-known/openid-configuration`),
/// then RFC 8414 (well-known segment inserted before the issuer's path).
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let trimmed = issuer.trim_end_matches('/');
    let mut urls = vec![format!("{trimmed}/.well-known/openid-configuration")];
    if let Some(scheme_end) = trimmed.find("://") {
        let after = &trimmed[scheme_end + 3..];
        let (host, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        urls.push(format!(
            "{}://{host}/.well-known/oauth-authorization-server{path}",
            &trimmed[..scheme_end]
        ));
    }
    urls
}

/// Discovers the `jwks_uri` of `issuer`. A 404 on the OIDC document falls back to
/// RFC 8414; any other failure is returned as is.
pub async fn discover(fetcher: &Fetcher, issuer: &str) -> Result<String, FetchError> {
    let mut last = None;
    for url in metadata_urls(issuer) {
        match fetcher.get(&url).await {
            Ok(doc) => return jwks_uri_from(&doc.body, issuer, &url),
            Err(e @ FetchError::Status { status: 404, .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| FetchError::BadUrl {
        url: issuer.to_owned(),
        why: "no discovery URL".to_owned(),
    }))
}

/// Discovers the `introspection_endpoint` of `issuer` (RFC 8414 §2), with the
/// same mix-up defence and fallback as [`discover`].
pub async fn discover_introspection_endpoint(
    fetcher: &Fetcher,
    issuer: &str,
) -> Result<String, FetchError> {
    let mut last = None;
    for url in metadata_urls(issuer) {
        match fetcher.get(&url).await {
            Ok(doc) => {
                let meta = metadata_of(&doc.body, issuer, &url)?;
                return meta
                    .introspection_endpoint
                    .ok_or_else(|| FetchError::Invalid {
                        url,
                        why: "metadata has no introspection_endpoint (set introspection.endpoint)"
                            .to_owned(),
                    });
            }
            Err(e @ FetchError::Status { status: 404, .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| FetchError::BadUrl {
        url: issuer.to_owned(),
        why: "no discovery URL".to_owned(),
    }))
}

/// The `issuer` an issuer's own metadata document names (where `validate
/// --online` compares spellings), and the URL it came from; `Ok(None)` when the
/// authorization server publishes no metadata document (404 at every URL).
pub async fn published_issuer(
    fetcher: &Fetcher,
    issuer: &str,
) -> Result<Option<(String, String)>, FetchError> {
    for url in metadata_urls(issuer) {
        match fetcher.get(&url).await {
            Ok(doc) => {
                let meta: Metadata =
                    serde_json::from_slice(&doc.body).map_err(|e| FetchError::Invalid {
                        url: url.clone(),
                        why: format!("metadata is not JSON: {e}"),
                    })?;
                return match meta.issuer {
                    Some(found) => Ok(Some((found, url))),
                    None => Err(FetchError::Invalid {
                        url,
                        why: "metadata has no issuer".to_owned(),
                    }),
                };
            }
            Err(FetchError::Status { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn jwks_uri_from(body: &[u8], issuer: &str, url: &str) -> Result<String, FetchError> {
    metadata_of(body, issuer, url)?
        .jwks_uri
        .ok_or_else(|| FetchError::Invalid {
            url: url.to_owned(),
            why: "metadata has no jwks_uri".to_owned(),
        })
}

/// A metadata document whose `issuer` is the configured one.
fn metadata_of(body: &[u8], issuer: &str, url: &str) -> Result<Metadata, FetchError> {
    let invalid = |why: String| FetchError::Invalid {
        url: url.to_owned(),
        why,
    };
    let meta: Metadata =
        serde_json::from_slice(body).map_err(|e| invalid(format!("metadata is not JSON: {e}")))?;
    match meta.issuer.as_deref() {
        Some(found) if found == issuer => {}
        Some(found) => {
            return Err(invalid(format!(
                "metadata issuer {found:?} differs from the configured {issuer:?} (mix-up defence: they must be equal)"
            )));
        }
        None => return Err(invalid("metadata has no issuer".to_owned())),
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            metadata_urls("https://idp.example.com/tenant/"),
            vec![
                "https://idp.example.com/tenant/.well-known/openid-configuration",
                "https://idp.example.com/.well-known/oauth-authorization-server/tenant"
            ]
        );
    }

    #[test]
    fn issuer_must_match() {
        let doc = br#"{"issuer":"https://evil/","jwks_uri":"https://evil/jwks"}"#;
        assert!(jwks_uri_from(doc, "https://idp/", "u").is_err());
        let doc = br#"{"issuer":"https://idp/","jwks_uri":"https://idp/jwks"}"#;
        assert_eq!(
            jwks_uri_from(doc, "https://idp/", "u").unwrap(),
            "https://idp/jwks"
        );
    }
}

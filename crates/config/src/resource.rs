//! `routes[].auth.resource`: the protected resource a route is (RFC 9728), and
//! where its metadata document is served.

use crate::model::ProtectedResource;

/// The well-known prefix of protected resource metadata (RFC 9728 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// Checks a resource identifier and derives its metadata's path and URL: for
/// `https://api.example.com/mcp`, `/.well-known/oauth-protected-resource/mcp`
/// on the same host (§3.1: the well-known string between host and path).
pub fn protected_resource(resource: &str) -> Result<ProtectedResource, String> {
    let usage = "an absolute http:// or https:// URL without query or fragment, e.g. https://api.example.com/mcp";
    let (scheme, rest) = resource
        .split_once("://")
        .ok_or_else(|| format!("{resource:?} is not {usage}"))?;
    if scheme != "https" && scheme != "http" {
        return Err(format!("{resource:?} is not {usage}"));
    }
    if resource.contains('#') || resource.contains('?') {
        return Err(format!(
            "{resource:?} has a query or fragment; it must be {usage}"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{resource:?} names no host (or has userinfo); it must be {usage}"
        ));
    }
    if !path.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!("{resource:?} has characters a path cannot carry"));
    }
    let suffix = path.trim_end_matches('/');
    let metadata_path = format!("{WELL_KNOWN}{suffix}");
    Ok(ProtectedResource {
        resource: resource.to_owned(),
        metadata_url: format!("{scheme}://{authority}{metadata_path}"),
        metadata_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_paths_follow_rfc_9728() {
        let r = protected_resource("https://api.example.com/mcp").unwrap();
        assert_eq!(r.metadata_path, "/.well-known/oauth-protected-resource/mcp");
        assert_eq!(
            r.metadata_url,
            "https://api.example.com/.well-known/oauth-protected-resource/mcp"
        );
        let root = protected_resource("https://api.example.com").unwrap();
        assert_eq!(root.metadata_path, WELL_KNOWN);
        let slash = protected_resource("https://api.example.com/").unwrap();
        assert_eq!(slash.metadata_path, WELL_KNOWN);
        for bad in [
            "api.example.com/mcp",
            "ftp://x/y",
            "https://x/y#f",
            "https://x/y?q=1",
            "https:///y",
            "https://u@x/y",
        ] {
            assert!(protected_resource(bad).is_err(), "{bad}");
        }
    }
}

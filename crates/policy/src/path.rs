//! Request paths the route table can match safely: no dot-segments (RFC 3986
//! §5.2.4) and no percent-encoded separators or dots, which an upstream might
//! resolve into another route's path than the one the gateway matched.

use crate::reason::{Reason, Rejection};

/// Refuses a path that is not in canonical form.
pub fn check(path: &str) -> Result<(), Rejection> {
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(Rejection::new(
            Reason::PathInvalid,
            "path has a `.` or `..` segment",
        ));
    }
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(Rejection::new(Reason::PathInvalid, "path has a backslash"));
    }
    let encoded_separator = bytes.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_uppercase()),
                (b'2', b'E' | b'F') | (b'5', b'C')
            )
    });
    if encoded_separator {
        return Err(Rejection::new(
            Reason::PathInvalid,
            "path has a percent-encoded `.`, `/` or backslash",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn canonical_paths_pass_others_fail() {
        for ok in [
            "/",
            "/v1/chat/completions",
            "/a.b/c..d/.well-known",
            "/x%20y",
            "/%41",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/v1/../admin",
            "/v1/./x",
            "/v1/..",
            "/v1/%2e%2e/admin",
            "/v1/%2E/x",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}

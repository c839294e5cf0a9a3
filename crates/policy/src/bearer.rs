//! Bearer token extraction from the `Authorization` header (RFC 6750 §2.1).
//!
//! `credentials = "Bearer" 1*SP b64token`, the scheme matched case-insensitively
//! (RFC 9110 §11.1). Exactly one header and exactly one token are accepted.

use crate::reason::{Reason, Rejection};

/// Extracts the bearer token from the `Authorization` header values of a request.
///
/// `values` yields each `Authorization` field line's raw bytes. `max_len` caps the
/// token size; a larger token is refused before any parsing.
pub fn extract<'a, I>(values: I, max_len: usize) -> Result<&'a str, Rejection>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut values = values.into_iter();
    let Some(value) = values.next() else {
        return Err(Rejection::new(
            Reason::TokenMissing,
            "no Authorization header; send `Authorization: Bearer <token>`",
        ));
    };
    if values.next().is_some() {
        return Err(Rejection::new(
            Reason::RequestMalformed,
            "more than one Authorization header",
        ));
    }
    let value = trim_ows(value);
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, &value[value.len()..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        let shown = if scheme.len() <= 16 && scheme.iter().all(u8::is_ascii_alphanumeric) {
            String::from_utf8_lossy(scheme).into_owned()
        } else {
            "an unknown scheme".to_owned()
        };
        return Err(Rejection::new(
            Reason::TokenMissing,
            format!("Authorization uses {shown}; a Bearer token is required"),
        ));
    }
    let token = trim_ows(rest);
    if token.is_empty() {
        return Err(Rejection::new(
            Reason::RequestMalformed,
            "Bearer scheme without a token",
        ));
    }
    // One pass decides the common case; the rarer checks below only pick the
    // message when it fails.
    let well_formed = is_b64token(token);
    if !well_formed && (token.contains(&b' ') || token.contains(&b'\t')) {
        return Err(Rejection::new(
            Reason::RequestMalformed,
            "more than one token after the Bearer scheme",
        ));
    }
    if token.len() > max_len {
        return Err(Rejection::new(
            Reason::TokenTooLarge,
            format!("token is {} bytes; the limit is {max_len}", token.len()),
        ));
    }
    if !well_formed {
        return Err(Rejection::new(
            Reason::RequestMalformed,
            "token contains characters outside the RFC 6750 b64token set",
        ));
    }
    // b64token is ASCII, so this cannot fail; map defensively all the same.
    std::str::from_utf8(token)
        .map_err(|_| Rejection::new(Reason::RequestMalformed, "token is not ASCII"))
}

/// The `access_token` query parameter (RFC 6750 §2.3), for routes that enable it.
/// `None` when the query has none; two of them, or one that is not a plain
/// b64token, is `request_malformed`.
pub fn extract_from_query(query: &str, max_len: usize) -> Option<Result<&str, Rejection>> {
    let mut found = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("access_token="));
    let token = found.next()?;
    if found.next().is_some() {
        return Some(Err(Rejection::new(
            Reason::RequestMalformed,
            "more than one access_token parameter",
        )));
    }
    if token.len() > max_len {
        return Some(Err(Rejection::new(
            Reason::TokenTooLarge,
            format!("token is {} bytes; the limit is {max_len}", token.len()),
        )));
    }
    // Form encoding turns '+' into a space; a JWT never needs escaping, so anything
    // that is not a plain b64token (no '%', no '+') is refused rather than guessed at.
    if token.is_empty() || token.contains('+') || !is_b64token(token.as_bytes()) {
        return Some(Err(Rejection::new(
            Reason::RequestMalformed,
            "access_token parameter is empty or not a plain b64token",
        )));
    }
    Some(Ok(token))
}

/// Removes every `access_token` parameter from a query, so the credential is never
/// forwarded.
pub fn strip_query_token(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !p.starts_with("access_token=") && !p.is_empty())
        .collect::<Vec<_>>()
        .join("&")
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &[u8]) -> bool {
    let body_end = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    // This runs on every request over the whole token, so it is written to
    // vectorise: fixed-size blocks folded without early exit, compares only.
    let body = &token[..body_end];
    let mut blocks = body.chunks_exact(32);
    let blocks_ok = blocks
        .by_ref()
        .all(|block| block.iter().fold(true, |ok, &c| ok & is_b64token_byte(c)));
    body_end > 0 && blocks_ok && blocks.remainder().iter().all(|&c| is_b64token_byte(c))
}

/// Whether `c` may appear in a b64token body.
#[inline(always)]
fn is_b64token_byte(c: u8) -> bool {
    let lower = c | 0x20;
    (lower.wrapping_sub(b'a') < 26)
        | (c.wrapping_sub(b'0') < 10)
        | (c == b'-')
        | (c == b'.')
        | (c == b'_')
        | (c == b'~')
        | (c == b'+')
        | (c == b'/')
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[&str]) -> Result<String, Reason> {
        extract(values.iter().map(|v| v.as_bytes()), 64)
            .map(str::to_owned)
            .map_err(|r| r.reason)
    }

    #[test]
    fn cases() {
        let table: &[(&[&str], Result<&str, Reason>)] = &[
            (&[], Err(Reason::TokenMissing)),
            (&["Bearer abc.def.ghi"], Ok("abc.def.ghi")),
            (&["bearer abc"], Ok("abc")),
            (&["BEARER   abc  "], Ok("abc")),
            (&["Basic dXNlcjpwYXNz"], Err(Reason::TokenMissing)),
            (&["Bearer"], Err(Reason::RequestMalformed)),
            (&["Bearer "], Err(Reason::RequestMalformed)),
            (&["Bearer a b"], Err(Reason::RequestMalformed)),
            (&["Bearer a", "Bearer b"], Err(Reason::RequestMalformed)),
            (&["Bearer a,b"], Err(Reason::RequestMalformed)),
            (&["Bearer ===="], Err(Reason::RequestMalformed)),
            (&["Bearer abc=="], Ok("abc==")),
            (&["Bearer a=b"], Err(Reason::RequestMalformed)),
        ];
        for (input, want) in table {
            assert_eq!(run(input), want.map(str::to_owned), "input {input:?}");
        }
    }

    #[test]
    fn query_tokens() {
        assert_eq!(
            extract_from_query("a=1&access_token=abc.def", 64)
                .unwrap()
                .unwrap(),
            "abc.def"
        );
        assert!(extract_from_query("a=1", 64).is_none());
        assert_eq!(
            extract_from_query("access_token=a&access_token=b", 64)
                .unwrap()
                .unwrap_err()
                .reason,
            Reason::RequestMalformed
        );
        assert_eq!(
            extract_from_query("access_token=a%2Eb", 64)
                .unwrap()
                .unwrap_err()
                .reason,
            Reason::RequestMalformed
        );
        assert_eq!(strip_query_token("a=1&access_token=x&b=2"), "a=1&b=2");
        assert_eq!(strip_query_token("access_token=x"), "");
    }

    #[test]
    fn b64token_bytes_match_the_grammar() {
        for c in 0..=255u8 {
            let spec = c.is_ascii_alphanumeric() || b"-._~+/".contains(&c);
            assert_eq!(is_b64token_byte(c), spec, "byte {c:#04x}");
        }
    }

    #[test]
    fn a_bad_byte_anywhere_is_found() {
        // Across whole 32-byte blocks and the remainder.
        let good = vec![b'a'; 70];
        assert!(is_b64token(&good));
        for i in 0..good.len() {
            for bad in [b' ', b'\t', b'=', b'%', 0x80, 0xff, b'@', b'[', b'`', b'{'] {
                let mut t = good.clone();
                t[i] = bad;
                let padding_at_end = bad == b'=' && i == good.len() - 1;
                assert_eq!(is_b64token(&t), padding_at_end, "byte {bad:#04x} at {i}");
            }
        }
        assert!(is_b64token(b"abc=="));
        assert!(!is_b64token(b"=="));
    }

    #[test]
    fn too_large() {
        let long = format!("Bearer {}", "a".repeat(65));
        assert_eq!(run(&[&long]), Err(Reason::TokenTooLarge));
    }
}

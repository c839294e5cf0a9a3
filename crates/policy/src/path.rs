//! One canonical request path: what the route table matches is exactly what the
//! upstream receives, so an upstream that normalises paths differently from the
//! gateway cannot be reached under another route's policy (path confusion).
//!
//! [`canonicalise`] applies these rules, each refusal naming the rule that fired:
//!
//! | rule | what | default |
//! | --- | --- | --- |
//! | `origin_form` | the path starts with `/` | always |
//! | `raw_character` | only visible ASCII (RFC 3986 §2); anything else must be percent-encoded | always |
//! | `dot_segment` | no `.` or `..` segment (RFC 3986 §5.2.4), raw or encoded, with or without `;params` | always |
//! | `backslash` | no `\` (Windows servers treat it as `/`) | always |
//! | `bad_escape` | every `%` is followed by two hex digits | always |
//! | `encoded_control` | no `%00`–`%1F` or `%7F` (NUL included) | always |
//! | `double_encoding` | no `%25` followed by two hex digits (`%252e`) | always |
//! | `invalid_utf8` | percent-decoded bytes are valid UTF-8 (no overlong `%c0%ae`) | always |
//! | `trailing_dot_or_space` | no segment ends with `.` or a space (Windows drops them) | always |
//! | `escaped_slash` | `%2F` / `%5C` refused, or kept encoded | refuse |
//! | `semicolon` | `;` path parameters refused, or kept | refuse |
//! | `empty_segment` | `//` merged into `/`, or refused | merge |
//!
//! Percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-._~`)
//! are decoded (`/%61dmin` is `/admin`), and the remaining escapes are written with
//! upper-case digits (§6.2.2.1). A path that is already canonical is returned as
//! it came, without a copy.

use std::borrow::Cow;

use crate::reason::{Reason, Rejection};

/// What to do with `%2F` and `%5C` (encoded `/` and `\`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request (`path_invalid`, rule `escaped_slash`).
    #[default]
    Reject,
    /// Keep them encoded: the upstream receives `%2F` (for APIs whose ids hold slashes).
    Keep,
}

/// What to do with `;` in a path (path parameters, which Java servers strip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Semicolons {
    /// Refuse the request (`path_invalid`, rule `semicolon`).
    #[default]
    Reject,
    /// Keep them as they are; a segment is still a dot segment with its parameters
    /// taken off (`..;x` is refused).
    Keep,
}

/// What to do with empty segments (`//`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmptySegments {
    /// Merge consecutive slashes into one (the upstream receives the merged path).
    #[default]
    Merge,
    /// Refuse the request (`path_invalid`, rule `empty_segment`).
    Reject,
}

/// The configurable part of path canonicalisation (`paths:` in gateway.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathRules {
    /// `%2F` / `%5C`.
    pub escaped_slashes: EscapedSlashes,
    /// `;` parameters.
    pub semicolons: Semicolons,
    /// `//`.
    pub empty_segments: EmptySegments,
}

/// The canonical form of `path` (the path component only, without the query), or
/// the rule it breaks.
pub fn canonicalise<'a>(path: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, Rejection> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(refuse("origin_form", "the path does not start with `/`"));
    }
    if is_plain(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut decoded_high = false;
    // Segments after the leading `/`; the last one may be empty (a trailing slash).
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, raw) in segments.iter().enumerate() {
        if raw.is_empty() && i != last {
            match rules.empty_segments {
                EmptySegments::Merge => continue,
                EmptySegments::Reject => {
                    return Err(refuse(
                        "empty_segment",
                        "the path has an empty segment (`//`)",
                    ));
                }
            }
        }
        out.push('/');
        let start = out.len();
        decoded_high |= push_segment(raw, rules, &mut out)?;
        check_segment(&out[start..], rules)?;
    }
    if out.is_empty() {
        out.push('/');
    }
    if decoded_high {
        check_utf8(&out)?;
    }
    // Checked on the output, since decoding can make the digits: `%25D%63` is
    // `%25Dc`, which a double-decoding upstream reads as byte 0xDC.
    if out
        .as_bytes()
        .windows(5)
        .any(|w| w[..3].eq_ignore_ascii_case(b"%25") && hex(w[3]).is_some() && hex(w[4]).is_some())
    {
        return Err(refuse(
            "double_encoding",
            "the path is percent-encoded twice (%25 followed by two hex digits)",
        ));
    }
    if out == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// Refuses a path that is not canonical; the form the route table and the
/// upstream would see otherwise is not checked here. Kept for callers that only
/// need a yes or no with the default rules.
pub fn check(path: &str) -> Result<(), Rejection> {
    canonicalise(path, &PathRules::default()).map(|_| ())
}

/// Whether no rule can apply: no `%`, `;`, `\`, `//`, and no segment that is a
/// dot segment or ends with a dot. The common case, decided in one pass.
fn is_plain(bytes: &[u8]) -> bool {
    let mut prev = b'/';
    let mut segment_len = 0usize;
    let mut all_dots = true;
    for &b in bytes.iter().skip(1) {
        match b {
            b'%' | b';' | b'\\' | 0..=0x20 | 0x7f.. => return false,
            b'/' => {
                if prev == b'/' || prev == b'.' {
                    return false;
                }
                segment_len = 0;
                all_dots = true;
            }
            _ => {
                segment_len += 1;
                all_dots &= b == b'.';
            }
        }
        prev = b;
    }
    !(prev == b'.' || (segment_len > 0 && all_dots))
}

/// Appends one segment with its escapes decoded or normalised; `true` when a
/// decoded byte is above 0x7F (the whole path is then checked for UTF-8).
fn push_segment(raw: &str, rules: &PathRules, out: &mut String) -> Result<bool, Rejection> {
    let bytes = raw.as_bytes();
    let mut high = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(refuse(
                        "bad_escape",
                        "a `%` in the path is not followed by two hex digits",
                    ));
                };
                let decoded = (h << 4) | l;
                push_escape(decoded, rules, out)?;
                high |= decoded >= 0x80;
                i += 3;
                continue;
            }
            b'\\' => return Err(refuse("backslash", "the path has a backslash")),
            0..=0x20 | 0x7f.. => {
                return Err(refuse(
                    "raw_character",
                    "the path has a character that is not visible ASCII (it must be percent-encoded)",
                ));
            }
            b';' if rules.semicolons == Semicolons::Reject => {
                return Err(refuse(
                    "semicolon",
                    "the path has a `;` (path parameters; paths.semicolons: keep allows them)",
                ));
            }
            _ => out.push(char::from(b)),
        }
        i += 1;
    }
    Ok(high)
}

/// Appends one decoded escape: an unreserved character as itself, anything else
/// as `%XX` with upper-case digits, or the rule it breaks.
fn push_escape(decoded: u8, rules: &PathRules, out: &mut String) -> Result<(), Rejection> {
    match decoded {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
            out.push(char::from(decoded));
            return Ok(());
        }
        b'/' | b'\\' if rules.escaped_slashes == EscapedSlashes::Reject => {
            return Err(refuse(
                "escaped_slash",
                "the path has an encoded `/` or `\\` (%2F, %5C; paths.escaped_slashes: keep allows them)",
            ));
        }
        0x00..=0x1f | 0x7f => {
            return Err(refuse(
                "encoded_control",
                "the path has an encoded control character (%00-%1F or %7F)",
            ));
        }
        _ => {}
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(decoded >> 4)]));
    out.push(char::from(HEX[usize::from(decoded & 0xf)]));
    Ok(())
}

/// Checks one canonical segment: not a dot segment (its `;params` taken off) and
/// no trailing dot or space.
fn check_segment(segment: &str, rules: &PathRules) -> Result<(), Rejection> {
    let name = match rules.semicolons {
        Semicolons::Keep => segment.split(';').next().unwrap_or(segment),
        Semicolons::Reject => segment,
    };
    if name == "." || name == ".." {
        return Err(refuse("dot_segment", "the path has a `.` or `..` segment"));
    }
    if name.ends_with('.') || name.ends_with("%20") {
        return Err(refuse(
            "trailing_dot_or_space",
            "a path segment ends with `.` or a space",
        ));
    }
    Ok(())
}

/// Checks that the percent-decoded path is valid UTF-8 (overlong forms such as
/// `%C0%AE` for `.` are not).
fn check_utf8(canonical: &str) -> Result<(), Rejection> {
    let bytes = canonical.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            decoded.push((h << 4) | l);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded).map(|_| ()).map_err(|_| {
        refuse(
            "invalid_utf8",
            "the percent-decoded path is not valid UTF-8 (overlong or truncated sequence)",
        )
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn refuse(rule: &'static str, what: &str) -> Rejection {
    Rejection::new(Reason::PathInvalid, format!("{what} (rule {rule})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(path: &str) -> Result<String, String> {
        canonicalise(path, &PathRules::default())
            .map(Cow::into_owned)
            .map_err(|r| r.detail)
    }

    #[test]
    fn canonical_paths_come_back_borrowed() {
        for ok in [
            "/",
            "/v1/chat/completions",
            "/a.b/c..d/.well-known",
            "/v1/",
            "/x-y_z~",
        ] {
            assert!(
                matches!(
                    canonicalise(ok, &PathRules::default()),
                    Ok(Cow::Borrowed(_))
                ),
                "{ok}"
            );
        }
    }

    #[test]
    fn normalised_forms() {
        for (input, want) in [
            ("/%61dmin/x", "/admin/x"),
            ("/%41%2d%7e", "/A-~"),
            ("//admin/x", "/admin/x"),
            ("/v1//chat///x", "/v1/chat/x"),
            ("/v1/", "/v1/"),
            ("/x%20y", "/x%20y"),
            ("/x%2cy", "/x%2Cy"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/100%25off", "/100%25off"),
            ("//", "/"),
        ] {
            assert_eq!(canon(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refusals_name_their_rule() {
        for (bad, rule) in [
            ("v1/x", "origin_form"),
            ("*", "origin_form"),
            ("/v1/../admin", "dot_segment"),
            ("/v1/./x", "dot_segment"),
            ("/v1/..", "dot_segment"),
            ("/v1/%2e%2e/admin", "dot_segment"),
            ("/v1/%2E/x", "dot_segment"),
            ("/v1/.%2e/x", "dot_segment"),
            ("/a%2fb", "escaped_slash"),
            ("/a%5Cb", "escaped_slash"),
            ("/a\\b", "backslash"),
            ("/v1/..;/admin", "semicolon"),
            ("/admin;x=1/", "semicolon"),
            ("/%252e%252e/admin", "double_encoding"),
            ("/%c0%ae%c0%ae/admin", "invalid_utf8"),
            ("/%ff", "invalid_utf8"),
            ("/a%00b", "encoded_control"),
            ("/a%0a", "encoded_control"),
            ("/a%7f", "encoded_control"),
            ("/a%", "bad_escape"),
            ("/a%4", "bad_escape"),
            ("/a%zz", "bad_escape"),
            ("/admin.", "trailing_dot_or_space"),
            ("/admin%20/x", "trailing_dot_or_space"),
            ("/admin%2e", "trailing_dot_or_space"),
        ] {
            let err = canon(bad).expect_err(bad);
            assert!(err.contains(&format!("(rule {rule})")), "{bad}: {err}");
        }
    }

    #[test]
    fn settings_change_what_is_kept() {
        let keep = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            semicolons: Semicolons::Keep,
            empty_segments: EmptySegments::Reject,
        };
        let c = |p| canonicalise(p, &keep).map(Cow::into_owned);
        assert_eq!(c("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(c("/a;v=1/b").as_deref(), Ok("/a;v=1/b"));
        assert!(c("/v1/..;/admin").is_err(), "a dot segment with parameters");
        assert!(c("/v1/.;x/admin").is_err());
        assert!(c("//admin").unwrap_err().detail.contains("empty_segment"));
        assert!(
            c("/a%2e%2e%2fb").is_ok(),
            "`..` inside a segment is not a dot segment"
        );
    }

    #[test]
    fn canonical_output_is_a_fixed_point() {
        for input in ["/%61dmin", "//x//y/", "/x%2cy", "/caf%c3%a9", "/a%7Eb"] {
            let once = canon(input).unwrap();
            assert_eq!(canon(&once).unwrap(), once, "{input}");
        }
    }
}

//! `portcullis token inspect`: decodes a token's header and claims WITHOUT
//! verifying it, with times in words. Never prints the signature.

use std::io::Read;
use std::process::ExitCode;

use portcullis_policy::jws;
use portcullis_policy::time::human_duration;
use serde_json::Value;

/// Prints the decoded token; exit 1 when it is not a decodable JWS.
pub fn main(token: Option<&str>) -> ExitCode {
    let token = match token {
        Some(t) => t.trim().to_owned(),
        None => {
            let mut s = String::new();
            if std::io::stdin().read_to_string(&mut s).is_err() {
                eprintln!("portcullis token inspect: cannot read the token from standard input");
                return ExitCode::from(2);
            }
            s.trim().to_owned()
        }
    };
    let token = token.strip_prefix("Bearer ").unwrap_or(&token);
    match jws::decode(token) {
        Ok(t) => {
            print!("{}", render(&t, portcullis_devkit::now_unix()));
            ExitCode::SUCCESS
        }
        Err(r) => {
            eprintln!("portcullis token inspect: {}: {}", r.reason, r.detail);
            ExitCode::from(1)
        }
    }
}

/// The human rendering of an unverified token at `now`.
pub fn render(t: &jws::UnverifiedToken<'_>, now: i64) -> String {
    let mut out = String::from(
        "UNVERIFIED — decoded without checking the signature; use `portcullis diagnose` to verify\n\n",
    );
    let header = serde_json::json!({
        "alg": t.header.alg, "kid": t.header.kid, "typ": t.header.typ, "crit": t.header.crit,
    });
    out.push_str(&format!(
        "header: {}\n",
        serde_json::to_string_pretty(&header).unwrap_or_default()
    ));
    out.push_str(&format!(
        "claims: {}\n",
        serde_json::to_string_pretty(&Value::Object(t.claims.clone())).unwrap_or_default()
    ));
    out.push_str(&format!(
        "signature: {} bytes (not shown)\n\n",
        t.signature.len()
    ));
    for (name, label) in [("iat", "issued"), ("nbf", "valid from"), ("exp", "expires")] {
        let Some(at) = t.claims.get(name).and_then(Value::as_i64) else {
            continue;
        };
        let when = if at <= now {
            format!("{} ago", human_duration(now - at))
        } else {
            format!("in {}", human_duration(at - now))
        };
        out.push_str(&format!("{label:<11} {at} ({when})\n"));
    }
    match t.claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > now => {
            out.push_str(&format!("time left   {}\n", human_duration(exp - now)))
        }
        Some(exp) => out.push_str(&format!(
            "time left   none: expired {} ago\n",
            human_duration(now - exp)
        )),
        None => {
            out.push_str("time left   unknown: no exp claim (Portcullis refuses such tokens)\n")
        }
    }
    out
}

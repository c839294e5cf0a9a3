//! The README is part of the product: every reason code of the catalogue has a
//! row in its troubleshooting table, and every top-level `rate_limits` setting
//! the configuration reads is documented with its default.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use portcullis_policy::Reason;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn every_reason_has_a_troubleshooting_row() {
    let text = readme();
    let start = text.find("## Reason codes and troubleshooting").unwrap();
    let end = start + text[start..].find("\n## Diagnose").unwrap();
    let table = &text[start..end];
    for reason in Reason::ALL {
        let cell = format!("| `{}` |", reason.as_str());
        assert!(table.contains(&cell), "no troubleshooting row for {reason}");
    }
}

#[test]
fn every_rate_limit_setting_is_documented() {
    let text = readme();
    for key in [
        "store",
        "store_password",
        "store_timeout",
        "store_ca_file",
        "on_store_error",
        "consistency",
        "sync_interval",
        "key_prefix",
        "max_keys",
        "response_headers",
        "default",
    ] {
        assert!(
            text.contains(&format!("| `rate_limits.{key}`"))
                || text.contains(&format!("`rate_limits.{key}` /")),
            "rate_limits.{key} is not in the configuration reference"
        );
    }
}

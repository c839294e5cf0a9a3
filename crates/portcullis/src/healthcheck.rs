//! `portcullis healthcheck`: a GET against the admin listener for container
//! HEALTHCHECKs, since distroless images carry no curl. Exit 0 on HTTP 200.

use std::process::ExitCode;

use crate::admin_client;

/// Probes `url` (http only) with a 3 s budget.
pub fn main(url: &str) -> ExitCode {
    match admin_client::get(url, &[]) {
        Ok(r) if r.status == 200 => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("portcullis healthcheck: {url} answered HTTP {}", r.status);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("portcullis healthcheck: {url}: {e}");
            ExitCode::from(1)
        }
    }
}

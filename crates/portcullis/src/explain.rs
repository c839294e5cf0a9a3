//! `portcullis explain REQUEST_ID`: the decision trace of a refused request, by
//! the request id its client was given, from a running gateway's admin listener
//! (`GET /debug/requests/{id}`). Exit 0 found, 1 not kept, 2 could not ask.

use std::process::ExitCode;

use crate::admin_client;
use crate::cli::ExplainArgs;

/// Runs the command.
pub fn main(args: &ExplainArgs) -> ExitCode {
    match explain(args) {
        Ok((code, body)) => {
            print!("{body}");
            if !body.ends_with('\n') {
                println!();
            }
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("portcullis explain: {e}");
            ExitCode::from(2)
        }
    }
}

fn explain(args: &ExplainArgs) -> Result<(u8, String), String> {
    let mut headers = vec![if args.json {
        "Accept: application/json".to_owned()
    } else {
        "Accept: text/plain".to_owned()
    }];
    if let Some(file) = &args.token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        headers.push(format!("Authorization: Bearer {}", token.trim()));
    }
    let admin = args.admin.trim_end_matches('/');
    let url = format!("{admin}/debug/requests/{}", args.request_id);
    let response = admin_client::get(&url, &headers).map_err(|e| format!("{url}: {e}"))?;
    match response.status {
        200 => Ok((0, response.body)),
        404 => Ok((1, response.body)),
        401 => Err(format!(
            "{admin} needs the admin token: pass --token-file (the file admin.token_file names)"
        )),
        status => Err(format!(
            "{url} answered HTTP {status}: {}",
            response.body.trim()
        )),
    }
}

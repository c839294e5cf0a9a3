//! `portcullis demo`: the gateway with the repository's gateway.yaml, a development
//! authorization server and a demo OpenAI-compatible upstream, in one process on
//! loopback ports, with the curl commands to try it.

use anyhow::{Context, anyhow};
use portcullis_devkit::{AuthServer, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DemoUpstream};

use crate::cli::DemoArgs;
use crate::run::{build_runtime, run, shutdown_signal};

/// Runs the demo until SIGINT/SIGTERM.
pub fn main(args: &DemoArgs) -> anyhow::Result<()> {
    let config = portcullis_config::load(&args.config).map_err(|e| anyhow!("{e}"))?;
    let _log_writer = crate::logging::init(&config.logging);
    let runtime = build_runtime()?;
    runtime.block_on(async {
        let auth = AuthServer::start(args.auth_address)
            .await
            .with_context(|| format!("development authorization server on {}", args.auth_address))?;
        let upstream = DemoUpstream::start(args.upstream_address)
            .await
            .with_context(|| format!("demo upstream on {}", args.upstream_address))?;
        let gw = config.listen.address;
        let admin = config.admin.map_or("(admin off)".to_owned(), |a| a.to_string());
        println!(
            "\nPortcullis demo\n  gateway        http://{gw}\n  admin          http://{admin}  (/metrics /healthz /readyz /debug/requests)\n  authorization  {issuer}  (client {DEMO_CLIENT_ID} / {DEMO_CLIENT_SECRET})\n  upstream       {up}\n\n\
Get a token:\n  TOKEN=$(curl -s -u {DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET} -d grant_type=client_credentials {issuer}token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')\n\n\
Call the gateway:\n  curl -s http://{gw}/v1/models -H \"Authorization: Bearer $TOKEN\"\n  curl -sN http://{gw}/v1/chat/completions -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\\n       -d '{{\"model\":\"portcullis-demo-1\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'\n  curl -si http://{gw}/v1/models                      # 401 token_missing\n  curl -si http://{gw}/v1/admin/usage -H \"Authorization: Bearer $TOKEN\"   # 403 scope_insufficient\n\n\
Model routing (the body's model picks the route; `fast` reaches the upstream as demo-small,\n`smart` falls back from an upstream answering 429; the access log shows request_model,\nmodel, input_tokens, output_tokens and attempts):\n  curl -s http://{gw}/v1/chat/completions -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\\n       -d '{{\"model\":\"fast\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'\n  curl -s http://{gw}/v1/chat/completions -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\\n       -d '{{\"model\":\"smart\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'\n  curl -si http://{gw}/v1/chat/completions -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\\n       -d '{{\"model\":\"gpt-4o\",\"messages\":[]}}'   # 403 model_not_allowed\n\n\
Rate limit (chat: 5 at once per client, then 10 a minute): the 6th quick call is 429 rate_limited:\n  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' http://{gw}/v1/chat/completions -H \"Authorization: Bearer $TOKEN\" \\\n       -H 'content-type: application/json' -d '{{\"model\":\"portcullis-demo-1\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'; done; echo\n",
            issuer = auth.issuer(),
            up = upstream.url(),
        );
        let result = run(args.config.clone(), config, true, shutdown_signal()).await;
        drop(auth);
        drop(upstream);
        result
    })
}

//! Command-line interface definitions (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Portcullis: an OAuth 2.0 enforcing API gateway.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run` when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run(RunArgs),
    /// Check a configuration: exit 0, or 1 with every error as file:line:column: path: message.
    Validate(ValidateArgs),
    /// Run the embedded demo: gateway, development authorization server and demo upstream.
    Demo(DemoArgs),
    /// Name the exact step at which the gateway would refuse a request, with evidence and fix.
    Diagnose(DiagnoseArgs),
    /// Print the decision trace of a refused request by its request id, from a
    /// running gateway: exit 0 found, 1 not kept, 2 could not ask.
    Explain(ExplainArgs),
    /// Probe a health endpoint (for container HEALTHCHECKs): exit 0 on HTTP 200, else 1.
    Healthcheck {
        /// The URL to GET (plain http).
        #[arg(long, default_value = "http://127.0.0.1:9091/healthz")]
        url: String,
    },
    /// Work with tokens.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `portcullis token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Decode a token's header and claims without verifying it (UNVERIFIED).
    Inspect {
        /// The token; read from standard input when absent.
        token: Option<String>,
    },
}

/// Options of `diagnose`.
#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// The configuration file.
    #[arg(long, short, default_value = "gateway.yaml", env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,
    /// The request URL, e.g. https://api.example.com/v1/chat/completions.
    #[arg(long)]
    pub url: String,
    /// The request method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// The bearer token.
    #[arg(long, conflicts_with_all = ["token_file", "token_env"])]
    pub token: Option<String>,
    /// Read the bearer token from a file.
    #[arg(long, conflicts_with = "token_env")]
    pub token_file: Option<PathBuf>,
    /// Read the bearer token from an environment variable.
    #[arg(long)]
    pub token_env: Option<String>,
    /// The TCP peer address the request comes from (default 127.0.0.1).
    #[arg(long)]
    pub client_ip: Option<std::net::IpAddr>,
    /// The X-Forwarded-For value the request carries.
    #[arg(long)]
    pub forwarded_for: Option<String>,
    /// Extra request headers, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// The request body size, to check against the route's limit.
    #[arg(long)]
    pub content_length: Option<u64>,
    /// The JSON body's model, for routes matched or authorized by model
    /// (`match.models`, `auth.models`); the body is otherwise not described.
    #[arg(long)]
    pub model: Option<String>,
    /// Do not probe the upstream.
    #[arg(long)]
    pub no_upstream: bool,
    /// Send the described request (without a body) to the upstream through the
    /// gateway's own forward step (rewrite, credential, claim headers) and report
    /// its answer, instead of probing the upstream.
    #[arg(long, conflicts_with_all = ["no_upstream", "content_length"])]
    pub send: bool,
    /// Print a stable JSON document instead of the checklist.
    #[arg(long)]
    pub json: bool,
}

/// Options of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The request id: the response's `x-request-id`, or `request_id` in its body.
    pub request_id: String,
    /// The gateway's admin listener.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9091",
        env = "PORTCULLIS_ADMIN"
    )]
    pub admin: String,
    /// The admin token's file, when the admin listener needs one (admin.token_file).
    #[arg(long, env = "PORTCULLIS_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the JSON document instead of the checklist.
    #[arg(long)]
    pub json: bool,
}

/// Options of `run` and `validate`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, short, default_value = "gateway.yaml", env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,
    /// Do not watch the file; reload only on SIGHUP or `POST /-/reload`.
    #[arg(long)]
    pub no_watch: bool,
}

/// Options of `validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The configuration file.
    #[arg(long, short, default_value = "gateway.yaml", env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,
    /// Also fetch each issuer's metadata document and check that its `issuer`
    /// is spelled exactly as configured (a trailing slash counts).
    #[arg(long)]
    pub online: bool,
}

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The configuration the demo gateway runs (it expects the dev servers on 9000/9001).
    #[arg(long, short, default_value = "gateway.yaml")]
    pub config: PathBuf,
    /// Address of the development authorization server.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub auth_address: std::net::SocketAddr,
    /// Address of the demo upstream.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub upstream_address: std::net::SocketAddr,
}

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
    Validate(RunArgs),
    /// Run the embedded demo: gateway, development authorization server and demo upstream.
    Demo(DemoArgs),
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

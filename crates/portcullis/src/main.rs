//! The `portcullis` command: run the gateway, validate a configuration, run the
//! embedded demo, diagnose a request, inspect a token.

mod admin_client;
mod cli;
mod demo;
mod diagnose;
mod explain;
mod healthcheck;
mod inspect;
mod logging;
mod run;
mod summary;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, TokenCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => run::main(&args.config, !args.no_watch),
        Command::Validate(args) => return run::validate(&args.config, args.online),
        Command::Demo(args) => demo::main(&args),
        Command::Diagnose(args) => return diagnose::main(&args),
        Command::Explain(args) => return explain::main(&args),
        Command::Healthcheck { url } => return healthcheck::main(&url),
        Command::Token {
            command: TokenCommand::Inspect { token },
        } => return inspect::main(token.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::from(2)
        }
    }
}

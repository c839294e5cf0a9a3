//! The `portcullis` command: run the gateway, validate a configuration, run the
//! embedded demo, and (later) diagnose a request.

mod cli;
mod demo;
mod logging;
mod run;
mod summary;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => run::main(&args.config, !args.no_watch),
        Command::Validate(args) => return run::validate(&args.config),
        Command::Demo(args) => demo::main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! The `ncf` binary: `main` → `run` → exit code, errors printed with their whole chain.

mod backend;
mod checkpoint;
mod cli;
mod config;
mod curves;
mod data;
mod data_cmd;
mod evaluate;
mod export;
mod host;
mod pairs;
mod progress;
mod recommend;
mod score;
mod train;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run(&args),
        Command::Recommend(args) => recommend::run(&args),
        Command::Evaluate(args) => evaluate::run(&args),
        Command::Score(args) => score::run(&args),
        Command::Data(cmd) => data_cmd::run(&cmd),
    }
}

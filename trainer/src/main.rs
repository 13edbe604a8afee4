//! The `ncf` binary: `main` → `run` → exit code, errors printed with their whole chain.

// First, so that `say!` is in scope in the modules below.
#[macro_use]
mod progress;

mod alloc;
mod backend;
mod bench;
mod bench_report;
mod checkpoint;
mod cli;
mod config;
mod curves;
mod data;
mod data_cmd;
mod evaluate;
mod export;
mod history;
mod host;
mod output;
mod pairs;
mod recommend;
mod score;
mod train;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // A closed stdout (`ncf train | head`) ends the process as it ends other Unix tools, by
    // SIGPIPE (exit status 141 in a shell), instead of a panic in the next println.
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    progress::set_quiet(cli.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Tensor work allocates per op; the data commands stream and are kept lean instead.
    if !matches!(cli.command, Command::Data(_)) {
        alloc::keep_heap();
    }
    match cli.command {
        Command::Train(args) => train::run(&args),
        Command::Recommend(args) => recommend::run(&args),
        Command::Evaluate(args) => evaluate::run(&args),
        Command::Score(args) => score::run(&args),
        Command::Data(cmd) => data_cmd::run(&cmd),
        Command::Bench(args) => bench::run(&args),
    }
}

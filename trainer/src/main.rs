//! The `ncf` binary: `main` → `ncf_trainer::run` → exit code, errors printed with their whole
//! chain.

use std::process::ExitCode;

use clap::Parser;
use ncf_trainer::cli::Cli;

fn main() -> ExitCode {
    // A closed stdout (`ncf train | head`) ends the process as it ends other Unix tools, by
    // SIGPIPE (exit status 141 in a shell), instead of a panic in the next println.
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    ncf_trainer::progress::set_quiet(cli.quiet);
    match ncf_trainer::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

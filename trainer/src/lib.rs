//! The `ncf` trainer as a library: every command of the `ncf` binary, which only parses its
//! arguments and calls [`run`]. Benchmarks share its allocator set-up.

// First, so that `say!` is in scope in the modules below.
#[macro_use]
pub mod progress;

pub mod alloc;
mod backend;
mod bench;
mod bench_report;
mod checkpoint;
pub mod cli;
mod config;
mod curves;
mod data;
mod data_cmd;
mod evaluate;
mod export;
mod features;
mod history;
mod host;
mod manifest;
mod model_export;
mod output;
mod pairs;
mod recommend;
mod runs;
mod score;
mod shard;
mod train;
mod tune;

use crate::cli::{Cli, Command};

/// Sizes the one thread pool every CPU part reads its thread count from: `--threads`, else
/// `NCF_THREADS`, else the cores available to the process.
fn init_threads(flag: Option<usize>) -> anyhow::Result<usize> {
    let env = std::env::var("NCF_THREADS").ok().filter(|v| !v.trim().is_empty());
    let n = match (flag, env) {
        (Some(n), _) => n,
        (None, Some(v)) => v.trim().parse().map_err(|_| anyhow::anyhow!("NCF_THREADS={v:?}: expected a whole number of threads, e.g. 8"))?,
        (None, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if n == 0 {
        anyhow::bail!("--threads / NCF_THREADS must be at least 1");
    }
    // Already built (a second command in one process): keep it.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    Ok(rayon::current_num_threads())
}

/// Runs one `ncf` command to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_threads(cli.threads)?;
    // Tensor work allocates per op; the data commands stream and are kept lean instead.
    if !matches!(cli.command, Command::Data(_)) {
        alloc::keep_heap();
    }
    // The one place clap's arguments become the commands' resolved options.
    match cli.command {
        Command::Train(args) => train::run(&args.job()?),
        Command::Recommend(args) => match args.merge {
            Some(dir) => recommend::check_shards(&dir),
            None => recommend::run(&args.job()?),
        },
        Command::Evaluate(args) => evaluate::run(&args.job()?),
        Command::Score(args) => score::run(&args.job()?),
        Command::Export(args) => model_export::run(&args.job()),
        Command::Data(cmd) => data_cmd::run(&cmd.job()?),
        Command::Bench(args) => bench::run(&args.job()),
        Command::Runs(args) => runs::run(&args.job()),
        Command::Tune(args) => tune::run(&args.job()?),
    }
}

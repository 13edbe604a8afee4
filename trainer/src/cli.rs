//! Command-line definitions shared by the subcommands.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use ncf_datasets::{ColumnRef, Format, ReadOptions};

use crate::backend::BackendName;
use crate::config::RunConfig;

/// Neural collaborative filtering: train GMF, MLP, NeuMF or MF and export recommendations.
#[derive(Debug, Parser)]
#[command(name = "ncf", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model (on the built-in demo data when no --data is given).
    Train(TrainArgs),
    /// Export top-N recommendations per user from a checkpoint.
    Recommend(RecommendArgs),
    /// Inspect or split an interaction file.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Users, items, interactions, density, per-user/item quantiles, duplicates.
    Stats {
        file: PathBuf,
        #[command(flatten)]
        read: ReadFlags,
    },
    /// Clean and split a file as `ncf train` would, and write train.csv, test.csv and
    /// test.negative (the NCF reference format) so other tools can use the same split.
    /// Prints the seconds each phase took.
    Split {
        /// Interaction file (optional with split.method = "given", which reads split.train_path).
        file: Option<PathBuf>,
        #[command(flatten)]
        read: ReadFlags,
        /// Output directory.
        #[arg(long, required_unless_present = "no_write")]
        out: Option<PathBuf>,
        /// Read, clean, split and draw the candidates, but write nothing (to time or check).
        #[arg(long)]
        no_write: bool,
        /// TOML config whose [split], [data.clean] and [train] eval_negatives apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override any config field (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

/// Flags every command that reads interactions takes.
#[derive(Debug, Clone, Args, Default)]
pub struct ReaderArgs {
    /// Interaction file (CSV, TSV, MovieLens u.data or ratings.dat, Parquet).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ReadFlags,
}

/// How to parse an interaction file.
#[derive(Debug, Clone, Args, Default)]
pub struct ReadFlags {
    /// Input format: csv, tsv, movielens or parquet (auto-detected by default).
    #[arg(long)]
    pub format: Option<String>,
    /// User column: name or 0-based index.
    #[arg(long)]
    pub user_col: Option<String>,
    /// Item column: name or 0-based index.
    #[arg(long)]
    pub item_col: Option<String>,
    /// Rating column: name or 0-based index.
    #[arg(long)]
    pub rating_col: Option<String>,
    /// Timestamp column: name or 0-based index.
    #[arg(long)]
    pub time_col: Option<String>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub reader: ReaderArgs,
    /// TOML config (presets in configs/); flags and --set override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any config field: --set train.lr=0.002 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run directory (default: runs/<model>-<n>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
    /// Model: gmf, mlp, neumf or mf (= --set model.kind=...).
    #[arg(long)]
    pub model: Option<String>,
    /// Epochs (= --set train.epochs=...).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed for every random choice (= --set seed=...).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps between reads of the running loss from the device (= --set train.log_every=...).
    #[arg(long)]
    pub log_every: Option<usize>,
    /// Print host reads per step and where each epoch's time goes.
    #[arg(long)]
    pub profile: bool,
}

impl TrainArgs {
    /// The config file, then `--set`, then the shorthand flags.
    pub fn resolve_config(&self) -> Result<RunConfig> {
        let mut sets = self.sets.clone();
        if let Some(m) = &self.model {
            sets.push(format!("model.kind=\"{m}\""));
        }
        if let Some(e) = self.epochs {
            sets.push(format!("train.epochs={e}"));
        }
        if let Some(s) = self.seed {
            sets.push(format!("seed={s}"));
        }
        if let Some(n) = self.log_every {
            sets.push(format!("train.log_every={n}"));
        }
        let mut config = RunConfig::resolve(self.config.as_deref(), &sets)?;
        if let Some(path) = &self.reader.data {
            config.data.path = Some(path.clone());
        }
        self.reader.flags.apply(&mut config.data.read)?;
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// Run directory (uses its best/) or a checkpoint directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Items per user.
    #[arg(long, default_value_t = 10)]
    pub top_n: usize,
    /// Output CSV file.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep items the user had in training.
    #[arg(long)]
    pub include_seen: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
}

impl ReadFlags {
    /// Overrides `read` with the flags that were given.
    pub fn apply(&self, read: &mut ReadOptions) -> Result<()> {
        if let Some(f) = &self.format {
            read.format = Some(f.parse::<Format>()?);
        }
        let col = |c: &Option<String>| c.as_deref().map(|s| s.parse::<ColumnRef>().expect("infallible"));
        read.user_col = col(&self.user_col).or(read.user_col.take());
        read.item_col = col(&self.item_col).or(read.item_col.take());
        read.rating_col = col(&self.rating_col).or(read.rating_col.take());
        read.time_col = col(&self.time_col).or(read.time_col.take());
        Ok(())
    }
}

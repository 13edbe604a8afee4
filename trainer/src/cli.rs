//! Command-line definitions shared by the subcommands.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use ncf_datasets::{ColumnRef, Format, ReadOptions};

use crate::backend::BackendName;
use crate::config::RunConfig;
use crate::export::OutFormat;
use crate::recommend::UnknownUsers;

/// Neural collaborative filtering: train GMF, MLP, NeuMF or MF and export recommendations.
#[derive(Debug, Parser)]
#[command(name = "ncf", version, about)]
pub struct Cli {
    /// No progress lines or bars: only warnings, errors and the command's results.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// CPU threads for every CPU part of the command (default: NCF_THREADS, else the cores
    /// available to the process). Results do not depend on it.
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model (on the built-in demo data when no --data is given).
    Train(TrainArgs),
    /// Export top-N recommendations per user from a checkpoint.
    Recommend(RecommendArgs),
    /// Evaluate a checkpoint on its saved test split or a given test file.
    Evaluate(EvaluateArgs),
    /// Score given (user, item) pairs from a checkpoint.
    Score(ScoreArgs),
    /// Export a checkpoint's model: a PyTorch state dict (python/ncf_torch.py rebuilds it), or
    /// user and item vectors as Parquet for vector databases.
    Export(ExportArgs),
    /// Inspect or split an interaction file.
    #[command(subcommand)]
    Data(DataCommand),
    /// Training, evaluation and recommend throughput on every backend, side by side.
    Bench(BenchArgs),
    /// Compare training runs: best metrics, the config values that differ, wall time, backend.
    Runs(RunsArgs),
    /// Search hyperparameters: a grid or a random sample of runs, chosen on validation.
    Tune(TuneArgs),
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// How a side-feature file (user or item attributes) would be encoded: each column's kind
    /// (categorical, multi-hot, numeric buckets, flag, or skipped and why), values and missing.
    Features {
        file: std::path::PathBuf,
        /// Key column (user or item id): name or 0-based index (default: an id-like name, else 0).
        #[arg(long)]
        key: Option<String>,
        /// Declare a column's kind: --kind zip=categorical (repeatable; categorical, multi_hot,
        /// numeric, flag or skip).
        #[arg(long = "kind", value_name = "COLUMN=KIND")]
        kinds: Vec<String>,
        /// Quantile buckets of numeric columns.
        #[arg(long, default_value_t = 10)]
        buckets: usize,
    },
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
        /// Write into --out even when it is not an ncf split output (only ncf's files are replaced).
        #[arg(long)]
        force: bool,
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
    pub format: Option<Format>,
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
    /// Override any config field: --set optim.lr=0.002 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run directory (default: runs/<model>-<n>). An existing run is refused: continue it with
    /// --resume, or start it afresh with --force.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start afresh in an existing --out run (its checkpoints, metrics and curves are replaced),
    /// or write a run into a directory that is not one (only ncf's files are written).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
    /// Model: gmf, mlp, neumf or mf (= --set model.kind=...).
    #[arg(long)]
    pub model: Option<ncf_model::ModelKind>,
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
    /// User attributes: a key column (the user id) plus categorical, multi-hot, numeric or 0/1
    /// columns, added to each user's vector (= --set features.user.path=...; see `ncf data features`).
    #[arg(long, value_name = "FILE")]
    pub user_features: Option<PathBuf>,
    /// Item attributes, likewise (= --set features.item.path=...).
    #[arg(long, value_name = "FILE")]
    pub item_features: Option<PathBuf>,
    /// Data-parallel training on these devices of --backend, e.g. 0,1: CUDA ordinals, or wgpu
    /// adapters of the chosen type; on flex (one CPU device) and a software wgpu adapter, replicas
    /// for checking, not speed. train.batch_size stays the global batch, split across them.
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    /// Continue RUN from its last/ checkpoint (weights, optimizer state, epoch, metrics) up to
    /// train.epochs; only --epochs, --log-every and train.patience may change.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["config", "out", "data"])]
    pub resume: Option<PathBuf>,
}

impl TrainArgs {
    /// The config file, then `--set`, then the shorthand flags.
    pub fn resolve_config(&self) -> Result<RunConfig> {
        let mut sets = self.sets.clone();
        let flags = [
            ("--model", "model.kind", self.model.map(|m| format!("\"{}\"", m.name()))),
            ("--epochs", "train.epochs", self.epochs.map(|e| e.to_string())),
            ("--seed", "seed", self.seed.map(|s| s.to_string())),
            ("--log-every", "train.log_every", self.log_every.map(|n| n.to_string())),
        ];
        for (flag, key, value) in flags {
            let Some(value) = value else { continue };
            // A key set twice would silently take the flag's value: refuse instead.
            if let Some(set) = self.sets.iter().find(|s| crate::config::split_set(s).is_some_and(|(k, _)| k == key)) {
                anyhow::bail!("{flag} and --set {set} both set {key}: pass one of them");
            }
            sets.push(format!("{key}={value}"));
        }
        // A resumed run starts from its own saved configuration.
        let base = self.resume.as_ref().map(|run| run.join("config.toml"));
        let mut config = RunConfig::resolve(base.as_deref().or(self.config.as_deref()), &sets)?;
        if let Some(path) = &self.reader.data {
            config.data.path = Some(path.clone());
        }
        for (flag, path, side) in
            [("--user-features", &self.user_features, &mut config.features.user), ("--item-features", &self.item_features, &mut config.features.item)]
        {
            if let Some(path) = path {
                if self.resume.is_some() {
                    anyhow::bail!("{flag}: a resumed run keeps the features it was started with");
                }
                side.path = Some(path.clone());
            }
        }
        self.reader.flags.apply(&mut config.data.read)?;
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// Run directory (uses its best/) or a checkpoint directory.
    #[arg(long, required_unless_present = "merge")]
    pub checkpoint: Option<PathBuf>,
    /// Users: `all`, a file with one raw user id per line, or id,id,... (adds a `source` column).
    #[arg(long, default_value = "all")]
    pub users: String,
    /// Items per user.
    #[arg(long, default_value_t = 10)]
    pub top_n: usize,
    /// Output file: .csv, .parquet or .jsonl (with --shard: a directory for the parts).
    #[arg(long, required_unless_present = "merge")]
    pub out: Option<PathBuf>,
    /// Output format (default: from the extension of --out; parquet for --shard parts).
    #[arg(long, value_enum)]
    pub out_format: Option<OutFormat>,
    /// Replace --out even when it is not an ncf export with these columns.
    #[arg(long)]
    pub force: bool,
    /// Only shard I of N of the users, chosen by a hash of the raw user id: writes
    /// --out/part-IIIII-of-NNNNN.<format> and its manifest (.json), replacing only that shard.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::shard::Shard>,
    /// Check the sharded export in DIR (every shard present, one checkpoint and set of options,
    /// parts intact) and print its totals; reads nothing else.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["checkpoint", "out", "shard"])]
    pub merge: Option<PathBuf>,
    /// Keep items the user had in training or validation (left out by default).
    #[arg(long)]
    pub include_seen: bool,
    /// Only recommend these items: a file with one raw item id per line, or id,id,...
    #[arg(long)]
    pub items: Option<String>,
    /// Requested users the checkpoint has never seen (and, with --user-features, without a line
    /// there): fail, leave out, or give popular items.
    #[arg(long, value_enum, default_value = "popular")]
    pub unknown_users: UnknownUsers,
    /// Attributes of users the checkpoint has never seen, with the training file's columns: they
    /// are scored from their features (source = features) instead of popularity. Needs a model
    /// trained with --user-features.
    #[arg(long, value_name = "FILE")]
    pub user_features: Option<PathBuf>,
    /// Item table to join (CSV, TSV, pipe-separated like MovieLens u.item; Latin-1 accepted).
    #[arg(long)]
    pub item_metadata: Option<PathBuf>,
    /// Item id column of --item-metadata: name or 0-based index (default: an item-like name, else 0).
    #[arg(long)]
    pub item_key: Option<String>,
    /// Columns of --item-metadata to join, comma-separated names or indices (default: all).
    #[arg(long)]
    pub item_columns: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Run directory (uses its best/) or a checkpoint directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Test interactions (raw ids, read like --data); default: the split saved with the checkpoint.
    #[arg(long)]
    pub test: Option<PathBuf>,
    #[command(flatten)]
    pub read: ReadFlags,
    /// Cutoff K (default: the run's train.k).
    #[arg(long)]
    pub k: Option<usize>,
    /// Write per-user metrics here (.csv, .parquet or .jsonl).
    #[arg(long)]
    pub per_user: Option<PathBuf>,
    /// Replace --per-user even when it is not an ncf export with these columns.
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Run directory (uses its best/) or a checkpoint directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// (user, item) pairs with raw ids, read like --data.
    #[arg(long)]
    pub pairs: PathBuf,
    #[command(flatten)]
    pub read: ReadFlags,
    /// Output file: .csv, .parquet or .jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Output format (default: from the extension of --out).
    #[arg(long, value_enum)]
    pub out_format: Option<OutFormat>,
    /// Replace --out even when it is not an ncf export with these columns.
    #[arg(long)]
    pub force: bool,
    /// Pairs with a user or item the checkpoint has never seen (users: and without a line in
    /// --user-features): fail or leave out.
    #[arg(long, value_enum, default_value = "skip")]
    pub unknown: UnknownPairs,
    /// Attributes of users the checkpoint has never seen, scored from them (a model trained
    /// with --user-features).
    #[arg(long, value_name = "FILE")]
    pub user_features: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run directory (uses its best/) or a checkpoint directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// torch: model.safetensors (PyTorch names and layouts), config.json, user_ids.json and
    /// item_ids.json; embeddings: users.parquet and items.parquet (raw id, vectors, biases) and
    /// config.json.
    #[arg(long, value_enum)]
    pub to: crate::model_export::Target,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Write into --out even when it is not an ncf export of this kind (only ncf's files are replaced).
    #[arg(long)]
    pub force: bool,
    /// Backend the checkpoint loads on (default flex: an export computes almost nothing, and
    /// reads every weight back to the host).
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendName,
}

/// What `ncf score` does with pairs naming an unknown user or item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownPairs {
    Error,
    Skip,
}

impl ReadFlags {
    /// Overrides `read` with the flags that were given.
    pub fn apply(&self, read: &mut ReadOptions) -> Result<()> {
        if let Some(f) = self.format {
            read.format = Some(f);
        }
        let col = |c: &Option<String>| c.as_deref().map(|s| s.parse::<ColumnRef>().expect("infallible"));
        read.user_col = col(&self.user_col).or(read.user_col.take());
        read.item_col = col(&self.item_col).or(read.item_col.take());
        read.rating_col = col(&self.rating_col).or(read.rating_col.take());
        read.time_col = col(&self.time_col).or(read.time_col.take());
        Ok(())
    }
}

/// `ncf runs`: which runs, the metric to sort by, and the outputs.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Run directories, or directories holding runs (searched 3 levels deep). Default: runs.
    pub dirs: Vec<PathBuf>,
    /// Metric to show and sort by, best first: valid_recall@20, test_ndcg@10, or ndcg@10 (each
    /// run's choosing split). Default: the metric the runs chose their best epoch by.
    #[arg(long, value_name = "METRIC")]
    pub sort: Option<String>,
    /// Worst first.
    #[arg(long)]
    pub reverse: bool,
    /// Print CSV instead of aligned columns.
    #[arg(long)]
    pub csv: bool,
    /// Also draw the runs' curves of the metric per epoch (validation where they have it) into
    /// this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
}

/// How `ncf tune` stops hopeless trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Prune {
    /// Median stopping rule: after --prune-after epochs, a trial whose best validation metric so
    /// far is below the median of the earlier trials' at the same epoch stops.
    Median,
    /// Every trial runs all its epochs (or until train.patience stops it).
    None,
}

/// `ncf tune`: the base config (as `ncf train` takes it), the grid, the search and its budget.
#[derive(Debug, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub reader: ReaderArgs,
    /// Base TOML config (presets in configs/); --set and the grid override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a base config field for every trial: --set train.epochs=20 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// A tuned key and its values: --grid optim.lr=[0.001,0.01] (repeatable: the combinations of
    /// every --grid are tried).
    #[arg(long, value_name = "KEY=[V1,V2,...]", required = true)]
    pub grid: Vec<String>,
    /// Try this many combinations drawn at random (with --seed) instead of all of them.
    #[arg(long, value_name = "N")]
    pub random: Option<usize>,
    /// Seed of the --random draw (the runs' own seed is the config's `seed`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start no trial after this many minutes; rerun the same command to continue.
    #[arg(long, value_name = "M")]
    pub budget_minutes: Option<f64>,
    /// How hopeless trials stop early.
    #[arg(long, value_enum, default_value = "median")]
    pub prune: Prune,
    /// Epochs every trial runs before the median rule may stop it (default: a quarter of
    /// train.epochs).
    #[arg(long, value_name = "EPOCHS")]
    pub prune_after: Option<usize>,
    /// Epochs per trial (= --set train.epochs=...).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Tune directory (default: tunes/tune-<n>). Rerunning the same command on it continues the tune.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write into --out even when it is not an ncf tune (only ncf's files are written).
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
    /// Show each trial's epochs, not just a line per trial.
    #[arg(long)]
    pub verbose: bool,
}

/// `ncf bench`: workloads, backends, what to measure, and the optional PyTorch peer.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Backends: comma list of flex, wgpu, ndarray, cuda, or all-available (default; wgpu,cuda with --suite gpu).
    #[arg(long)]
    pub backends: Option<String>,
    /// Data shape: small, ml-1m (default) or ml-20m (default with --suite gpu).
    #[arg(long, value_enum)]
    pub workload: Option<crate::bench::Workload>,
    /// Preset: gpu (NeuMF at batch 256, 4096 and 1M in the ml-20m DeepLearningExamples shape).
    #[arg(long, value_enum)]
    pub suite: Option<crate::bench::Suite>,
    /// Directory for bench.json and bench.png (default runs/bench-<workload>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write into --out even when it is not an ncf bench output (only ncf's files are replaced).
    #[arg(long)]
    pub force: bool,
    /// Models, comma-separated (default gmf,mlp,neumf,mf).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<ncf_model::ModelKind>,
    /// Training batch sizes, comma-separated (default: the workload's two).
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Measurements, comma-separated: train, eval, recommend (default all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<crate::bench::Part>,
    /// Timed repetitions after warm-up (default: the workload's).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Training steps per repetition (default: about the workload's samples per repetition).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Users in the catalogue (default: the workload's).
    #[arg(long)]
    pub users: Option<usize>,
    /// Items in the catalogue (default: the workload's). Several, comma-separated (with
    /// `--only train`): training at each catalogue, repetitions interleaved, and the per-step growth.
    #[arg(long, value_delimiter = ',')]
    pub items: Vec<usize>,
    /// GMF/MF factors (default: 8; 64 for ml-20m).
    #[arg(long)]
    pub factors: Option<usize>,
    /// MLP widths, comma-separated (default: 64,32,16,8; 256,256,128,64 for ml-20m).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// Dense Adam on the embedding tables (as torch.optim.Adam) instead of row-sparse.
    #[arg(long)]
    pub dense_adam: bool,
    /// Row-sparse table updates as composed burn ops, and the head's forward and backward through
    /// autodiff, instead of the backend's fused kernels (`optim.fused = false`): the
    /// before/after of the kernels in one binary.
    #[arg(long)]
    pub composed_rows: bool,
    /// Users per evaluation pass: a number or all (default: all; 4096 for ml-20m).
    #[arg(long)]
    pub eval_users: Option<crate::bench::Count>,
    /// Users per recommend pass: a number or all (default: all; 8192 for ml-20m).
    #[arg(long)]
    pub recommend_users: Option<crate::bench::Count>,
    /// PyTorch peer script (../shared/tools/torch_neumf_step.py), run beside factor-8 NeuMF
    /// training: once per round of ncf's timed repetitions (at each catalogue), so both meet the
    /// same machine load.
    #[arg(long)]
    pub torch_peer: Option<PathBuf>,
    /// Python with torch for the peer (default: $PYTHON, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Device the peer runs on: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub torch_device: String,
    /// CPU threads for the peer (sets OMP_NUM_THREADS; default: torch's own choice).
    #[arg(long)]
    pub torch_threads: Option<usize>,
    /// Seed of the synthetic data and the models.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[cfg(test)]
mod flag_tests {
    use super::*;

    fn train_args(args: &[&str]) -> TrainArgs {
        match Cli::try_parse_from(["ncf", "train"].iter().chain(args)).unwrap().command {
            Command::Train(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_key_set_by_a_flag_and_by_set_is_refused() {
        let e = train_args(&["--seed", "3", "--set", "seed=9"]).resolve_config().unwrap_err().to_string();
        assert!(e.contains("--seed") && e.contains("seed=9"), "{e}");
        let e = train_args(&["--epochs", "3", "--set", "train.epochs = 5"]).resolve_config().unwrap_err().to_string();
        assert!(e.contains("--epochs") && e.contains("train.epochs"), "{e}");
        let c = train_args(&["--seed", "3", "--model", "mf", "--set", "train.epochs=5"]).resolve_config().unwrap();
        assert_eq!((c.seed, c.train.epochs, c.model.kind), (3, 5, ncf_model::ModelKind::Mf));
    }
}

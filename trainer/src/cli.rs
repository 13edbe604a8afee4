//! The command line: clap's definitions of every command and flag, and their conversion into
//! the resolved options each command's module takes. Nothing but the dispatch in `lib.rs` (and
//! `main.rs`) uses this module, so the commands never see clap.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use ncf_datasets::{ColumnRef, Format, ReadOptions};

use crate::backend::BackendName;
use crate::bench::BenchJob;
use crate::config::ConfigSources;
use crate::data_cmd::{DataJob, SplitJob};
use crate::evaluate::EvaluateJob;
use crate::export::OutFormat;
use crate::model_export::ExportJob;
use crate::recommend::{RecommendJob, UnknownUsers};
use crate::runs::RunsJob;
use crate::score::{ScoreJob, UnknownPairs};
use crate::train::TrainJob;
use crate::tune::{Axis, Prune, TuneJob};

/// Neural collaborative filtering: train GMF, MLP, NeuMF, MF or EASE and export recommendations.
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
    /// Model: gmf, mlp, neumf, mf or ease (= --set model.kind=...).
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
    /// Where the run's configuration comes from: a resumed run starts from its own saved one.
    fn sources(&self) -> ConfigSources {
        let shorthands = [
            ("--model", "model.kind", self.model.map(|m| format!("\"{}\"", m.name()))),
            ("--epochs", "train.epochs", self.epochs.map(|e| e.to_string())),
            ("--seed", "seed", self.seed.map(|s| s.to_string())),
            ("--log-every", "train.log_every", self.log_every.map(|n| n.to_string())),
        ];
        ConfigSources {
            file: self.resume.as_ref().map(|run| run.join("config.toml")).or_else(|| self.config.clone()),
            sets: self.sets.clone(),
            shorthands: shorthands.into_iter().filter_map(|(flag, key, value)| Some((flag, key, value?))).collect(),
            data: self.reader.data.clone(),
            read: self.reader.flags.options(),
            user_features: self.user_features.clone(),
            item_features: self.item_features.clone(),
            resume: self.resume.is_some(),
        }
    }

    /// The resolved run: its configuration and directory (`--out`, `--resume`'s run, or
    /// `runs/<model>-<n>`).
    pub fn job(self) -> Result<TrainJob> {
        let config = self.sources().resolve()?;
        let resume = self.resume.is_some();
        let dir = match self.resume.or(self.out) {
            Some(dir) => dir,
            None => crate::train::default_run_dir(config.model.kind.name()),
        };
        Ok(TrainJob { config, config_file: self.config, dir, resume, force: self.force, backend: self.backend, devices: self.devices, profile: self.profile })
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

/// A column flag's value: a name, or a 0-based index.
fn column(flag: &Option<String>) -> Option<ColumnRef> {
    flag.as_deref().map(|s| s.parse::<ColumnRef>().expect("infallible"))
}

impl ReadFlags {
    /// The read options the flags give (everything else auto-detected).
    pub fn options(&self) -> ReadOptions {
        ReadOptions {
            format: self.format,
            user_col: column(&self.user_col),
            item_col: column(&self.item_col),
            rating_col: column(&self.rating_col),
            time_col: column(&self.time_col),
            ..Default::default()
        }
    }
}

impl RecommendArgs {
    /// The export, checked: `--checkpoint` and `--out` given, `--top-n` at least 1, the format
    /// known (parquet by default for `--shard` parts).
    pub fn job(self) -> Result<RecommendJob> {
        let (Some(checkpoint), Some(out)) = (self.checkpoint, self.out) else { bail!("--checkpoint and --out are required") };
        if self.top_n == 0 {
            bail!("--top-n must be at least 1");
        }
        let format = match self.shard {
            Some(_) => self.out_format.unwrap_or(OutFormat::Parquet),
            None => OutFormat::resolve(&out, self.out_format)?,
        };
        Ok(RecommendJob {
            checkpoint,
            out,
            format,
            force: self.force,
            users: self.users,
            top_n: self.top_n,
            shard: self.shard,
            include_seen: self.include_seen,
            items: self.items,
            unknown_users: self.unknown_users,
            user_features: self.user_features,
            item_metadata: self.item_metadata,
            item_key: column(&self.item_key),
            item_columns: self.item_columns.map(|c| c.split(',').map(|s| s.trim().parse::<ColumnRef>().expect("infallible")).collect()),
            backend: self.backend,
        })
    }
}

impl EvaluateArgs {
    /// The evaluation, with the `--per-user` file's format known.
    pub fn job(self) -> Result<EvaluateJob> {
        let per_user = self.per_user.map(|p| OutFormat::from_extension(&p).map(|f| (p, f))).transpose()?;
        Ok(EvaluateJob {
            checkpoint: self.checkpoint,
            test: self.test,
            read: self.read.options(),
            k: self.k,
            per_user,
            force: self.force,
            backend: self.backend,
        })
    }
}

impl ScoreArgs {
    /// The scoring, with the output format known.
    pub fn job(self) -> Result<ScoreJob> {
        let format = OutFormat::resolve(&self.out, self.out_format)?;
        Ok(ScoreJob {
            checkpoint: self.checkpoint,
            pairs: self.pairs,
            read: self.read.options(),
            out: self.out,
            format,
            force: self.force,
            unknown: self.unknown,
            user_features: self.user_features,
            backend: self.backend,
        })
    }
}

impl ExportArgs {
    pub fn job(self) -> ExportJob {
        ExportJob { checkpoint: self.checkpoint, to: self.to, out: self.out, force: self.force, backend: self.backend }
    }
}

impl RunsArgs {
    /// The runs to show (default: `runs`).
    pub fn job(self) -> RunsJob {
        let dirs = if self.dirs.is_empty() { vec![PathBuf::from("runs")] } else { self.dirs };
        RunsJob { dirs, sort: self.sort, reverse: self.reverse, csv: self.csv, plot: self.plot }
    }
}

impl TuneArgs {
    /// The tune, its grid parsed and its directory chosen (default `tunes/tune-<n>`).
    pub fn job(self) -> Result<TuneJob> {
        let grid = self.grid.iter().map(|g| Axis::parse(g)).collect::<Result<Vec<_>>>()?;
        let base = ConfigSources {
            file: self.config,
            sets: self.sets,
            shorthands: self.epochs.map(|e| ("--epochs", "train.epochs", e.to_string())).into_iter().collect(),
            data: self.reader.data,
            read: self.reader.flags.options(),
            ..Default::default()
        };
        Ok(TuneJob {
            base,
            grid,
            random: self.random,
            seed: self.seed,
            budget_minutes: self.budget_minutes,
            prune: self.prune,
            prune_after: self.prune_after,
            dir: self.out.unwrap_or_else(crate::tune::default_dir),
            force: self.force,
            backend: self.backend,
            verbose: self.verbose,
        })
    }
}

impl BenchArgs {
    pub fn job(self) -> BenchJob {
        BenchJob {
            backends: self.backends,
            workload: self.workload,
            suite: self.suite,
            out: self.out,
            force: self.force,
            models: self.models,
            batch: self.batch,
            only: self.only,
            reps: self.reps,
            steps: self.steps,
            users: self.users,
            items: self.items,
            factors: self.factors,
            layers: self.layers,
            dense_adam: self.dense_adam,
            composed_rows: self.composed_rows,
            eval_users: self.eval_users,
            recommend_users: self.recommend_users,
            torch_peer: self.torch_peer,
            python: self.python,
            torch_device: self.torch_device,
            torch_threads: self.torch_threads,
            seed: self.seed,
        }
    }
}

impl DataCommand {
    /// The `ncf data` subcommand with its options resolved.
    pub fn job(self) -> Result<DataJob> {
        Ok(match self {
            DataCommand::Stats { file, read } => DataJob::Stats { file, read: read.options() },
            DataCommand::Features { file, key, kinds, buckets } => DataJob::Features { file, key: column(&key), kinds, buckets },
            DataCommand::Split { file, read, out, force, no_write, config, sets } => {
                let sources = ConfigSources { file: config.clone(), sets, data: file, read: read.options(), ..Default::default() };
                DataJob::Split(SplitJob { config: sources.resolve()?, config_file: config, out: if no_write { None } else { out }, force })
            }
        })
    }
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
        let e = train_args(&["--seed", "3", "--set", "seed=9"]).sources().resolve().unwrap_err().to_string();
        assert!(e.contains("--seed") && e.contains("seed=9"), "{e}");
        let e = train_args(&["--epochs", "3", "--set", "train.epochs = 5"]).sources().resolve().unwrap_err().to_string();
        assert!(e.contains("--epochs") && e.contains("train.epochs"), "{e}");
        let c = train_args(&["--seed", "3", "--model", "mf", "--set", "train.epochs=5"]).sources().resolve().unwrap();
        assert_eq!((c.seed, c.train.epochs, c.model.kind), (3, 5, ncf_model::ModelKind::Mf));
    }

    #[test]
    fn reader_flags_replace_only_the_columns_they_name() {
        let sets = ["--set", "data.read.user_col=\"u\"", "--set", "data.read.item_col=\"movie\""];
        let c = train_args(&[&["--user-col", "0", "--format", "tsv"][..], &sets].concat()).sources().resolve().unwrap();
        assert_eq!(c.data.read.user_col, Some(ColumnRef::Index(0)));
        assert_eq!(c.data.read.item_col, Some(ColumnRef::Name("movie".into())));
        assert_eq!(c.data.read.format, Some(Format::Tsv));
    }

    #[test]
    fn a_resumed_run_starts_from_its_saved_config() {
        let e = train_args(&["--resume", "runs/x"]).sources();
        assert_eq!(e.file, Some(PathBuf::from("runs/x/config.toml")));
        assert!(e.resume);
        let job = train_args(&["--out", "runs/y", "--seed", "1"]).job().unwrap();
        assert_eq!((job.dir, job.resume, job.config.seed), (PathBuf::from("runs/y"), false, 1));
    }
}

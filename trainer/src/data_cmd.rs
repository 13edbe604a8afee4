//! `ncf data stats`, `ncf data features` and `ncf data split`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ncf_datasets::{ColumnRef, IdMap, Quantiles, ReadOptions, SampledCandidates, SplitMethod, Stats, UserItems, reader};

use crate::config::RunConfig;
use crate::data;
use crate::export::csv_writer;
use crate::output::{self, DirKind};

/// One `ncf data` subcommand, its options resolved.
#[derive(Debug, Clone)]
pub enum DataJob {
    /// Users, items, interactions, density, quantiles and duplicates of `file`.
    Stats {
        file: PathBuf,
        read: ReadOptions,
    },
    /// How a side-feature file would be encoded: `kinds` declares columns' kinds (COLUMN=KIND).
    Features {
        file: PathBuf,
        key: Option<ColumnRef>,
        kinds: Vec<String>,
        buckets: usize,
    },
    Split(SplitJob),
}

pub fn run(job: &DataJob) -> Result<()> {
    match job {
        DataJob::Stats { file, read } => stats(file, read),
        DataJob::Features { file, key, kinds, buckets } => features(file, key.as_ref(), kinds, *buckets),
        DataJob::Split(job) => split(job),
    }
}

fn stats(file: &Path, opts: &ReadOptions) -> Result<()> {
    let data = reader::read(file, opts)?;
    let s = Stats::of(&data);
    let q = |name: &str, q: &Quantiles| {
        format!("{name:<14} min {}  p25 {}  median {}  p75 {}  p90 {}  max {}  mean {:.1}", q.min, q.p25, q.p50, q.p75, q.p90, q.max, q.mean)
    };
    println!("file           {}", file.display());
    println!("users          {}", s.users);
    println!("items          {}", s.items);
    println!("interactions   {}", s.interactions);
    println!("density        {:.6}", s.density);
    println!("duplicates     {} rows repeat an earlier user-item pair", s.duplicates);
    println!("{}", q("per user", &s.per_user));
    println!("{}", q("per item", &s.per_item));
    if let Some(r) = &data.rating {
        let (lo, hi) = r.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        println!("ratings        {lo} to {hi}");
    }
    Ok(())
}

/// `ncf data features`: the fitted encoding of a side-feature file, a line per column.
fn features(file: &Path, key: Option<&ColumnRef>, kinds: &[String], buckets: usize) -> Result<()> {
    use ncf_datasets::features::{FeatureConfig, FeatureKind, FeatureVocab};
    let mut config = FeatureConfig { buckets: buckets.max(1), ..Default::default() };
    for k in kinds {
        let (column, kind) = crate::config::split_set(k).with_context(|| format!("--kind {k:?}: expected COLUMN=KIND"))?;
        let kind: FeatureKind = toml::Value::String(kind.to_owned())
            .try_into()
            .map_err(|_| anyhow::anyhow!("--kind {k:?}: {kind:?} is none of categorical, multi_hot, numeric, flag, skip"))?;
        config.columns.insert(column.to_owned(), kind);
    }
    let table = ncf_datasets::table::read_keyed_with(file, key, &[], ["key", "kind"])?;
    let (vocab, summary) = FeatureVocab::fit(&table, &config);
    println!("file           {} ({} keys, {} repeated keys ignored)", file.display(), table.len(), table.duplicates);
    println!("feature rows   {}", vocab.rows);
    for (c, s) in vocab.columns.iter().zip(&summary) {
        let how = if s.inferred { "inferred" } else { "declared" };
        let shown: Vec<&str> = c.values.iter().take(6).map(String::as_str).collect();
        let values = match c.kind {
            FeatureKind::Categorical | FeatureKind::MultiHot => format!("  values {}{}", shown.join(", "), if c.values.len() > 6 { ", ..." } else { "" }),
            FeatureKind::Numeric => format!("  edges {:?}", c.edges),
            _ => String::new(),
        };
        let note = if s.note.is_empty() { String::new() } else { format!("  ({})", s.note) };
        println!(
            "column {:<14} {:<11} {how:<8}  {} rows  {} distinct  {} missing{values}{note}",
            format!("{:?}", c.name),
            c.kind.name(),
            c.rows(),
            s.distinct,
            s.missing
        );
    }
    Ok(())
}

/// What `ncf data split` splits and where the files go.
#[derive(Debug, Clone)]
pub struct SplitJob {
    /// The resolved config: its [data], [split], [data.clean] and train.eval_negatives apply.
    pub config: RunConfig,
    /// The `--config` file: an input `out` may not write over.
    pub config_file: Option<PathBuf>,
    /// Output directory; `None` writes nothing (`--no-write`).
    pub out: Option<PathBuf>,
    /// Write into `out` even when it is not an ncf split output.
    pub force: bool,
}

/// `ncf data split`: the run's data preparation, then the three files (unless `out` is `None`).
fn split(job: &SplitJob) -> Result<()> {
    let (mut config, out) = (job.config.clone(), job.out.as_deref());
    if config.data.path.is_none() && config.split.method != SplitMethod::Given {
        bail!("no interaction file: pass FILE (or use split.method = \"given\" with split.train_path and split.test_path)");
    }
    if let Some(out) = out {
        let mut inputs = config.input_paths();
        inputs.extend(job.config_file.as_deref());
        output::claim_dir(out, DirKind::Split, &SPLIT_FILES, &inputs, job.force)?;
    }
    config.absolutize_paths();
    let p = data::prepare(&config)?;
    let mut timings = p.timings.clone();
    let t = Instant::now();
    if let Some(out) = out {
        write_split(out, &p, &config)?;
        timings.push(("write", t.elapsed().as_secs_f64()));
    }
    say!("data: {}: {} users, {} items, {} interactions", p.source, p.data.n_users(), p.data.n_items(), p.data.len());
    let valid = p.split.valid.as_ref().map_or(String::new(), |v| format!(", {} validation", v.nnz()));
    let what = format!(
        "{} train{valid} and {} test pairs, {} test rows × {} negatives",
        p.split.train.nnz(),
        p.split.test.nnz(),
        p.candidates.rows(),
        p.candidates.negatives
    );
    match out {
        Some(out) => say!("wrote {what} to {}", out.display()),
        None => say!("split {what} (--no-write: nothing written)"),
    }
    let total: f64 = timings.iter().map(|t| t.1).sum();
    let parts: Vec<String> = timings.iter().map(|(n, s)| format!("{n} {s:.2}s")).collect();
    say!("seconds: {} (total {total:.2}s)", parts.join(", "));
    Ok(())
}

/// The files `ncf data split` writes (`valid.csv` only with a validation split).
const SPLIT_FILES: [&str; 6] = ["train.csv", "valid.csv", "test.csv", "test.negative", "config.toml", output::MARKER];

/// Writes train.csv, valid.csv (with a validation split), test.csv, test.negative and config.toml
/// into `out` through [`output::write_dir`]: other files in `out` are left alone, a failure
/// leaves no partial file, and a `valid.csv` of an earlier split there goes when this split has
/// none, so the directory never mixes two splits.
fn write_split(out: &Path, p: &data::Prepared, config: &RunConfig) -> Result<()> {
    output::write_dir(out, &SPLIT_FILES, "split", |tmp| {
        let (users, items) = (&p.data.users, &p.data.items);
        write_pairs(&tmp.join("train.csv"), &p.split.train, users, items)?;
        if let Some(valid) = &p.split.valid {
            write_pairs(&tmp.join("valid.csv"), valid, users, items)?;
        }
        write_pairs(&tmp.join("test.csv"), &p.split.test, users, items)?;
        write_negatives(&tmp.join("test.negative"), &p.candidates, users, items)?;
        std::fs::write(tmp.join("config.toml"), config.to_toml()).with_context(|| format!("writing {}", tmp.display()))?;
        output::mark(tmp, DirKind::Split)
    })
}

fn create(path: &Path) -> Result<csv::Writer<std::fs::File>> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(csv_writer(f))
}

/// `user,item` rows with raw ids, in user order.
fn write_pairs(path: &Path, table: &UserItems, users: &IdMap, items: &IdMap) -> Result<()> {
    let mut w = create(path)?;
    let io = || format!("writing {}", path.display());
    w.write_record(["user", "item"]).with_context(io)?;
    for (u, i) in table.pairs() {
        w.write_record([users.raw(u), items.raw(i)]).with_context(io)?;
    }
    w.flush().with_context(io)
}

/// The NCF reference `.test.negative` format: `(user,item)` then the negatives, tab-separated.
/// An id holding a tab, comma, parenthesis, quote or line break is written in double quotes
/// (quotes doubled), which `split.method = "given"` reads back.
fn write_negatives(path: &Path, c: &SampledCandidates, users: &IdMap, items: &IdMap) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let io = |e| anyhow::Error::new(e).context(format!("writing {}", path.display()));
    let width = c.width();
    let q = ncf_datasets::given::quote_negative_id;
    for (r, &u) in c.user.iter().enumerate() {
        let row = &c.items[r * width..(r + 1) * width];
        write!(w, "({},{})", q(users.raw(u)), q(items.raw(row[0]))).map_err(io)?;
        for &j in &row[1..] {
            write!(w, "\t{}", q(items.raw(j))).map_err(io)?;
        }
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)
}

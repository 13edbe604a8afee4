//! `ncf data stats` and `ncf data split`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ncf_datasets::{IdMap, Quantiles, ReadOptions, SampledCandidates, SplitMethod, Stats, UserItems, reader};

use crate::cli::{DataCommand, ReadFlags};
use crate::config::RunConfig;
use crate::data;
use crate::export::csv_writer;
use crate::output::{self, DirKind};

pub fn run(cmd: &DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Stats { file, read } => stats(file, read),
        DataCommand::Features { file, key, kinds, buckets } => features(file, key.as_deref(), kinds, *buckets),
        DataCommand::Split { file, read, out, force, no_write, config, sets } => {
            split(file.as_deref(), read, if *no_write { None } else { out.as_deref() }, *force, config.as_deref(), sets)
        }
    }
}

fn stats(file: &Path, flags: &ReadFlags) -> Result<()> {
    let mut opts = ReadOptions::default();
    flags.apply(&mut opts)?;
    let data = reader::read(file, &opts)?;
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
fn features(file: &Path, key: Option<&str>, kinds: &[String], buckets: usize) -> Result<()> {
    use ncf_datasets::features::{FeatureConfig, FeatureKind, FeatureVocab};
    let mut config = FeatureConfig { buckets: buckets.max(1), ..Default::default() };
    for k in kinds {
        let (column, kind) = crate::config::split_set(k).with_context(|| format!("--kind {k:?}: expected COLUMN=KIND"))?;
        let kind: FeatureKind = toml::Value::String(kind.to_owned())
            .try_into()
            .map_err(|_| anyhow::anyhow!("--kind {k:?}: {kind:?} is none of categorical, multi_hot, numeric, flag, skip"))?;
        config.columns.insert(column.to_owned(), kind);
    }
    let key = key.map(|k| k.parse::<ncf_datasets::ColumnRef>().expect("infallible"));
    let table = ncf_datasets::table::read_keyed_with(file, key.as_ref(), &[], ["key", "kind"])?;
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

/// `ncf data split`: the run's data preparation, then the three files (unless `out` is `None`).
fn split(file: Option<&Path>, flags: &ReadFlags, out: Option<&Path>, force: bool, config_path: Option<&Path>, sets: &[String]) -> Result<()> {
    let mut config = RunConfig::resolve(config_path, sets)?;
    if let Some(f) = file {
        config.data.path = Some(f.to_path_buf());
    }
    flags.apply(&mut config.data.read)?;
    if config.data.path.is_none() && config.split.method != SplitMethod::Given {
        bail!("no interaction file: pass FILE (or use split.method = \"given\" with split.train_path and split.test_path)");
    }
    if let Some(out) = out {
        let mut inputs = config.input_paths();
        inputs.extend(config_path);
        output::claim_dir(out, DirKind::Split, &SPLIT_FILES, &inputs, force)?;
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

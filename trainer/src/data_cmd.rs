//! `ncf data stats` and `ncf data split`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use ncf_datasets::{Quantiles, ReadOptions, SampledCandidates, Split, Stats, reader};

use crate::cli::{DataCommand, ReadFlags};
use crate::config::RunConfig;

pub fn run(cmd: &DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Stats { file, read } => stats(file, read),
        DataCommand::Split { file, read, out, config, sets } => split(file, read, out, config.as_deref(), sets),
    }
}

fn read_file(file: &Path, flags: &ReadFlags, base: ReadOptions) -> Result<ncf_datasets::Interactions> {
    let mut opts = base;
    flags.apply(&mut opts)?;
    Ok(reader::read(file, &opts)?)
}

fn stats(file: &Path, flags: &ReadFlags) -> Result<()> {
    let data = read_file(file, flags, ReadOptions::default())?;
    let s = Stats::of(&data);
    let q = |name: &str, q: &Quantiles| {
        format!(
            "{name:<14} min {}  p25 {}  median {}  p75 {}  p90 {}  max {}  mean {:.1}",
            q.min, q.p25, q.p50, q.p75, q.p90, q.max, q.mean
        )
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

fn split(file: &Path, flags: &ReadFlags, out: &Path, config: Option<&Path>, sets: &[String]) -> Result<()> {
    let config = RunConfig::resolve(config, sets)?;
    let mut data = read_file(file, flags, config.data.read.clone())?;
    config.data.clean.apply(&mut data);
    let split = Split::new(&data, &config.split, config.seed)?;
    let cands = SampledCandidates::draw(&split, config.train.eval_negatives, config.seed);
    let (users, items) = (&data.users, &data.items);
    let pairs = |t: &ncf_datasets::UserItems| {
        let mut s = String::from("user,item\n");
        for (u, i) in t.pairs() {
            let _ = writeln!(s, "{},{}", users.raw(u), items.raw(i));
        }
        s
    };
    let mut negative = String::new();
    let w = cands.width();
    for r in 0..cands.rows() {
        let row = &cands.items[r * w..(r + 1) * w];
        let _ = write!(negative, "({},{})", users.raw(cands.user[r]), items.raw(row[0]));
        for &j in &row[1..] {
            let _ = write!(negative, "\t{}", items.raw(j));
        }
        negative.push('\n');
    }
    let tmp = out.with_file_name(format!(".{}.tmp-{}", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::fs::write(tmp.join("train.csv"), pairs(&split.train))?;
    std::fs::write(tmp.join("test.csv"), pairs(&split.test))?;
    std::fs::write(tmp.join("test.negative"), negative)?;
    std::fs::write(tmp.join("config.toml"), config.to_toml())?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))?;
    println!(
        "wrote {} train and {} test pairs, {} test rows × {} negatives to {}",
        split.train.nnz(),
        split.test.nnz(),
        cands.rows(),
        cands.negatives,
        out.display()
    );
    Ok(())
}

//! `ncf tune`: a grid (or a seeded random sample of it) of training runs, in sequence, as child
//! runs of one tune directory; chosen on the validation split, never on test.
//!
//! ```text
//! DIR/tune.toml     the search: base config hash, grid, random sample (resuming checks it)
//! DIR/trial-NNN/    one ncf run per combination (run.json says how it ended)
//! DIR/results.csv   every trial run so far, best first (also printed)
//! DIR/best.toml     the best trial's resolved config, usable with `ncf train --config`
//! DIR/tune.png      the validation metric against each tuned key's values
//! ```
//!
//! Killed and rerun with the same command, it continues: trials that ended (finished, stopped
//! early, pruned or failed) are not rerun, a trial cut off mid-way resumes from its `last/`.
//! Hopeless trials stop early by the median stopping rule: after `--prune-after` epochs, a trial
//! whose best validation metric so far is below the median of the earlier trials' at the same
//! epoch stops there.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ncf_datasets::rng::{self, RngExt};
use serde::{Deserialize, Serialize};

use crate::backend::BackendName;
use crate::config::{self, ConfigSources};
use crate::history::{EpochRecord, SelectOn};
use crate::manifest::{self, Manifest, Status};
use crate::output::{self, DirKind};
use crate::runs::{self, MetricKey, RunSummary};
use crate::train::TrainJob;

/// Earlier trials needed at an epoch before the median rule stops anything.
const MIN_PEERS: usize = 3;

/// The random stream of trial sampling (see `ncf_datasets::rng::stream`).
const SAMPLE_STREAM: u64 = 0x7475_6e65;

/// What `ncf tune` writes into its directory, trials aside.
const TUNE_FILES: [&str; 5] = ["tune.toml", "results.csv", "best.toml", "tune.png", output::MARKER];

/// One tuned key and the values it takes (each as `--set` would take it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl Axis {
    /// Parses `KEY=[v1,v2,…]`: TOML values (numbers, booleans, quoted strings, arrays) or bare words.
    pub fn parse(arg: &str) -> Result<Self> {
        let hint = || format!("--grid {arg:?}: write it like optim.lr=[0.001,0.01] or model.kind=[gmf,mlp]");
        let (key, raw) = config::split_set(arg).with_context(hint)?;
        if key.is_empty() || !raw.starts_with('[') || !raw.ends_with(']') {
            bail!(hint());
        }
        let values: Vec<String> = match config::parse_value(raw) {
            toml::Value::Array(a) => a.iter().map(toml::Value::to_string).collect(),
            _ => raw[1..raw.len() - 1].split(',').map(|v| v.trim().to_owned()).collect(),
        };
        if values.is_empty() || values.iter().any(String::is_empty) {
            bail!("{}: every value must be non-empty", hint());
        }
        if values.iter().collect::<HashSet<_>>().len() != values.len() {
            bail!("--grid {arg:?}: a value is listed twice");
        }
        Ok(Self { key: key.to_owned(), values })
    }
}

/// The search, as `tune.toml` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Search {
    /// Hash of the resolved base config (before the grid's values).
    pub base_config_hash: String,
    pub grid: Vec<Axis>,
    /// A seeded sample of this many combinations instead of the whole grid.
    pub random: Option<usize>,
    pub seed: u64,
}

impl Search {
    /// The combinations to run, in order: each a value index per axis. The whole grid (last key
    /// fastest), or `random` distinct combinations drawn with `seed`.
    pub fn trials(&self) -> Vec<Vec<usize>> {
        let sizes: Vec<usize> = self.grid.iter().map(|a| a.values.len()).collect();
        let total = sizes.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)).unwrap_or(usize::MAX);
        let decode = |mut i: usize| -> Vec<usize> {
            let mut idx = vec![0; sizes.len()];
            for (slot, &n) in idx.iter_mut().zip(&sizes).rev() {
                (*slot, i) = (i % n, i / n);
            }
            idx
        };
        match self.random {
            Some(n) if n < total => {
                let mut rng = rng::stream(self.seed, &[SAMPLE_STREAM]);
                let mut seen = HashSet::new();
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    let i = rng.random_range(0..total);
                    if seen.insert(i) {
                        out.push(decode(i));
                    }
                }
                out
            }
            _ => (0..total).map(decode).collect(),
        }
    }

    /// A trial's `--set`s.
    pub fn sets(&self, trial: &[usize]) -> Vec<String> {
        self.grid.iter().zip(trial).map(|(a, &v)| format!("{}={}", a.key, a.values[v])).collect()
    }
}

/// The median stopping rule: `Some(reason)` when `history`'s best `key` up to `epoch` is below
/// the median of `peers`' best up to the same epoch (peers that reached it; at least
/// [`MIN_PEERS`]).
pub fn median_rule(peers: &[RunSummary], key: &MetricKey, epoch: usize, history: &[EpochRecord]) -> Option<String> {
    let best_to = |h: &[EpochRecord], get: &dyn Fn(&EpochRecord) -> Option<f64>| {
        h.iter().filter(|r| r.epoch <= epoch).filter_map(get).fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v))))
    };
    let on = key.on.unwrap_or(SelectOn::Valid);
    let own = best_to(history, &|r| r.on(on).and_then(|m| m.get(&key.metric)))?;
    let mut others: Vec<f64> = peers
        .iter()
        .filter(|p| p.history.last().is_some_and(|l| l.epoch >= epoch))
        .filter_map(|p| best_to(&p.history, &|r| r.on(on).and_then(|m| m.get(&key.metric))))
        .collect();
    if others.len() < MIN_PEERS {
        return None;
    }
    others.sort_by(f64::total_cmp);
    let n = others.len();
    let median = if n % 2 == 1 { others[n / 2] } else { (others[n / 2 - 1] + others[n / 2]) / 2.0 };
    (own < median).then(|| format!("best {} so far {own:.4} < median {median:.4} of {n} earlier trials at epoch {epoch}", key.label()))
}

/// How a trial directory stands before this invocation.
fn trial_state(dir: &Path) -> Result<Option<Manifest>> {
    if !dir.exists() {
        return Ok(None);
    }
    Manifest::read(dir)
}

/// `seconds` as `1h02m`, `3m05s` or `42s`.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
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

/// What `ncf tune` runs: the base config's sources (as `ncf train` takes them), the grid, the
/// search and its budget.
#[derive(Debug, Clone)]
pub struct TuneJob {
    /// The base config of every trial; each trial adds its grid values as `--set`s.
    pub base: ConfigSources,
    /// The tuned keys and their values.
    pub grid: Vec<Axis>,
    /// Try this many combinations drawn at random instead of all of them.
    pub random: Option<usize>,
    /// Seed of the `random` draw.
    pub seed: u64,
    /// Start no trial after this many minutes.
    pub budget_minutes: Option<f64>,
    pub prune: Prune,
    /// Epochs every trial runs before the median rule may stop it (default: a quarter of
    /// train.epochs).
    pub prune_after: Option<usize>,
    /// The tune directory.
    pub dir: PathBuf,
    /// Write into `dir` even when it is not an ncf tune.
    pub force: bool,
    pub backend: BackendName,
    /// Show each trial's epochs, not just a line per trial.
    pub verbose: bool,
}

/// `tunes/tune-<n>` with the first free n.
pub fn default_dir() -> PathBuf {
    (1..).map(|n| PathBuf::from(format!("tunes/tune-{n:03}"))).find(|p| !p.exists()).unwrap()
}

/// The config sources of one trial: the base's plus `sets`; a resumed trial starts from the
/// config.toml its run saved.
fn trial_sources(job: &TuneJob, sets: Vec<String>, resume: Option<&Path>) -> ConfigSources {
    let sets = job.base.sets.iter().cloned().chain(sets).collect();
    match resume {
        None => ConfigSources { sets, ..job.base.clone() },
        Some(dir) => ConfigSources { file: Some(dir.join("config.toml")), sets, shorthands: job.base.shorthands.clone(), resume: true, ..Default::default() },
    }
}

pub fn run(job: &TuneJob) -> Result<()> {
    let grid = job.grid.clone();
    if let Some(dup) = grid.iter().enumerate().find(|(i, a)| grid[..*i].iter().any(|b| b.key == a.key)) {
        bail!("--grid {}: the key is given twice; list all its values in one --grid", dup.1.key);
    }
    if job.random == Some(0) {
        bail!("--random 0 runs nothing: give the number of combinations to sample");
    }
    // The base config, then every trial's, checked before anything runs.
    let base = job.base.resolve()?;
    if base.train.select_on != SelectOn::Valid {
        bail!("ncf tune chooses on the validation split, but train.select_on = \"{}\"; leave it at \"valid\"", base.train.select_on.name());
    }
    let mut absolute_base = base.clone();
    absolute_base.absolutize_paths();
    let search = Search { base_config_hash: manifest::config_hash(&absolute_base), grid, random: job.random, seed: job.seed };
    let trials = search.trials();
    for t in &trials {
        trial_sources(job, search.sets(t), None).resolve().with_context(|| format!("the trial {}", search.sets(t).join(" ")))?;
    }
    let key = MetricKey { on: Some(SelectOn::Valid), metric: base.train.best_metric.name().to_owned(), k: base.train.k };

    let dir = &job.dir;
    let mut inputs = base.input_paths();
    inputs.extend(job.base.file.as_deref());
    let state = output::claim_dir(dir, DirKind::Tune, &TUNE_FILES, &inputs, job.force)?;
    let spec_path = dir.join("tune.toml");
    if state == output::DirState::Same
        && let Ok(text) = std::fs::read_to_string(&spec_path)
    {
        let saved: Search = toml::from_str(&text).with_context(|| format!("{}: malformed", spec_path.display()))?;
        if saved != search {
            bail!(
                "{}: holds a tune of another search (base config, grid, --random or --seed differ); rerun its own command to continue it, \
                 or choose a new --out",
                dir.display()
            );
        }
        say!("continuing the tune in {}", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    output::write_atomic(&spec_path, toml::to_string_pretty(&search).expect("the search serializes").as_bytes())?;
    output::mark(dir, DirKind::Tune)?;

    let prune_after = job.prune_after.unwrap_or_else(|| base.train.epochs.div_ceil(4).max(1));
    let names: Vec<String> = (0..trials.len()).map(|i| format!("trial-{i:03}")).collect();
    say!(
        "tune: {} trials of {} ({}), chosen on {}; {}",
        trials.len(),
        search.grid.iter().map(|a| a.key.as_str()).collect::<Vec<_>>().join(", "),
        if search.random.is_some_and(|n| n < search.grid.iter().map(|a| a.values.len()).product()) {
            format!("a random sample, seed {}", search.seed)
        } else {
            "the whole grid".to_owned()
        },
        key.label(),
        match job.prune {
            Prune::Median => format!("hopeless trials stop after epoch {prune_after} (median rule)"),
            Prune::None => "no pruning".to_owned(),
        }
    );
    let started = Instant::now();
    let mut done: Vec<RunSummary> = Vec::new();
    let mut ran_secs = Vec::new();
    let mut left_out = 0;
    let quiet = crate::progress::quiet();
    for (i, (trial, name)) in trials.iter().zip(&names).enumerate() {
        let tdir = dir.join(name);
        let previous = trial_state(&tdir)?;
        let ended = previous.as_ref().is_some_and(|m| m.status != Status::Running);
        if !ended {
            if job.budget_minutes.is_some_and(|m| started.elapsed().as_secs_f64() >= m * 60.0) {
                left_out = trials.len() - i;
                break;
            }
            let resume = tdir.join("last/checkpoint.json").exists();
            let force = tdir.exists() && !resume;
            say!("{name}: {}{}", search.sets(trial).join(" "), if resume { " (resuming)" } else { "" });
            let t0 = Instant::now();
            crate::progress::set_quiet(quiet || !job.verbose);
            let key = key.clone();
            let peers = done.clone();
            let mut prune = |epoch: usize, history: &[EpochRecord]| match job.prune {
                Prune::Median if epoch >= prune_after => median_rule(&peers, &key, epoch, history),
                _ => None,
            };
            let result = trial_sources(job, search.sets(trial), resume.then_some(tdir.as_path())).resolve().and_then(|config| {
                let train = TrainJob {
                    config,
                    config_file: if resume { None } else { job.base.file.clone() },
                    dir: tdir.clone(),
                    resume,
                    force,
                    backend: job.backend,
                    devices: None,
                    profile: false,
                };
                crate::train::run_with(&train, &mut prune)
            });
            crate::progress::set_quiet(quiet);
            if let Err(e) = result {
                // A trial that never started (no manifest) failed on what every trial shares.
                if trial_state(&tdir)?.is_none() {
                    return Err(e).with_context(|| format!("{name} failed before training"));
                }
                eprintln!("warning: {name} failed: {e:#}");
            }
            ran_secs.push(t0.elapsed().as_secs_f64());
        }
        let summary = RunSummary::read(&tdir)?;
        let status = match summary.manifest.as_ref().map(|m| m.status) {
            Some(Status::Pruned) => format!("pruned after epoch {}", summary.history.last().map_or(0, |r| r.epoch)),
            s => s.map_or("–", Status::name).to_owned(),
        };
        let value = summary.value(&key);
        done.push(summary);
        let best = best_trial(&done, &key);
        let mean = ran_secs.iter().sum::<f64>() / ran_secs.len().max(1) as f64;
        let eta = if ran_secs.is_empty() { String::new() } else { format!(", ETA {}", duration(mean * (trials.len() - i - 1) as f64)) };
        say!(
            "{name} {status}: {} {} | {}/{} done, best {}{eta}",
            key.label(),
            value.map_or("–".into(), |v| format!("{v:.4}")),
            i + 1,
            trials.len(),
            best.map_or("–".into(), |b| format!("{} {:.4}", b.dir.file_name().unwrap_or_default().to_string_lossy(), b.value(&key).unwrap_or(f64::NAN))),
        );
    }
    finish(dir, &search, &done, &key)?;
    if left_out > 0 {
        say!("budget of {} minutes reached: {left_out} trials not run; rerun the same command to continue", job.budget_minutes.unwrap_or(0.0));
    }
    Ok(())
}

/// The trial with the best validation metric (the first of equals).
fn best_trial<'a>(trials: &'a [RunSummary], key: &MetricKey) -> Option<&'a RunSummary> {
    trials.iter().filter(|t| t.value(key).is_some()).fold(None, |b: Option<&RunSummary>, t| match b {
        Some(b) if b.value(key) >= t.value(key) => Some(b),
        _ => Some(t),
    })
}

/// Writes `results.csv`, `best.toml` and `tune.png`, and prints the results table.
fn finish(dir: &Path, search: &Search, trials: &[RunSummary], key: &MetricKey) -> Result<()> {
    let mut sorted = trials.to_vec();
    runs::sort(&mut sorted, key);
    let rows = runs::table(&sorted, key);
    output::write_atomic(&dir.join("results.csv"), crate::export::csv_string(rows.clone()).as_bytes())?;
    print!("{}", runs::aligned(&rows));
    let Some(best) = best_trial(trials, key) else {
        say!("no trial has a validation {} yet", key.label());
        return Ok(());
    };
    let config = std::fs::read_to_string(best.dir.join("config.toml")).with_context(|| format!("reading {}", best.dir.display()))?;
    let header = format!(
        "# ncf tune: the best of {} trials by validation {} ({:.4}), {}\n",
        trials.len(),
        key.label(),
        best.value(key).unwrap_or(f64::NAN),
        best.dir.display()
    );
    output::write_atomic(&dir.join("best.toml"), format!("{header}{config}").as_bytes())?;
    let panels: Vec<crate::curves::Scatter> = search
        .grid
        .iter()
        .map(|axis| {
            let points = trials
                .iter()
                .filter_map(|t| {
                    let v = t.get(&axis.key)?;
                    let at = axis.values.iter().position(|x| same_value(x, v))?;
                    Some((at, t.value(key)?))
                })
                .collect();
            crate::curves::Scatter { title: axis.key.clone(), labels: axis.values.clone(), points }
        })
        .collect();
    crate::curves::write_scatter(&dir.join("tune.png"), &key.label(), &panels)?;
    say!("best: {} ({} {:.4}); its config: {}", best.dir.display(), key.label(), best.value(key).unwrap_or(f64::NAN), dir.join("best.toml").display());
    say!("next: ncf train --config {}", dir.join("best.toml").display());
    Ok(())
}

/// Whether a grid value and a config value (as `config.toml` writes it) are the same value.
fn same_value(grid: &str, config: &str) -> bool {
    let (g, c) = (config::parse_value(grid), config::parse_value(config));
    g == c
        || matches!((&g, &c), (toml::Value::Integer(a), toml::Value::Float(b)) | (toml::Value::Float(b), toml::Value::Integer(a)) if *a as f64 == *b)
        || g.as_str().is_some_and(|s| c.as_str() == Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_values_parse_as_toml_or_bare_words() {
        let a = Axis::parse("optim.lr=[0.001, 0.01]").unwrap();
        assert_eq!((a.key.as_str(), a.values.clone()), ("optim.lr", vec!["0.001".to_owned(), "0.01".into()]));
        assert_eq!(Axis::parse("model.kind=[gmf,mlp]").unwrap().values, ["gmf", "mlp"]);
        assert_eq!(Axis::parse("model.kind=[\"gmf\"]").unwrap().values, ["\"gmf\""]);
        assert_eq!(Axis::parse("model.layers=[[64,32],[32,16]]").unwrap().values, ["[64, 32]", "[32, 16]"]);
        for bad in ["optim.lr=0.1", "optim.lr=[]", "=[1]", "optim.lr=[1,1]", "optim.lr"] {
            assert!(Axis::parse(bad).is_err(), "{bad}");
        }
        assert!(same_value("0.001", "0.001") && same_value("gmf", "gmf") && same_value("\"gmf\"", "gmf") && same_value("64", "64.0"));
        assert!(!same_value("0.01", "0.001"));
    }

    #[test]
    fn trials_cover_the_grid_or_a_seeded_sample() {
        let axis = |k: &str, n: usize| Axis { key: k.into(), values: (0..n).map(|i| i.to_string()).collect() };
        let mut s = Search { base_config_hash: String::new(), grid: vec![axis("a", 2), axis("b", 3)], random: None, seed: 1 };
        let all = s.trials();
        assert_eq!(all, [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]);
        assert_eq!(s.sets(&all[5]), ["a=1", "b=2"]);
        s.random = Some(4);
        let sample = s.trials();
        assert_eq!(sample.len(), 4);
        assert_eq!(sample.iter().collect::<HashSet<_>>().len(), 4, "distinct");
        assert_eq!(sample, s.trials(), "seeded");
        s.seed = 2;
        let other: Vec<_> = (2..40).map(|seed| Search { seed, ..s.clone() }.trials()).collect();
        assert!(other.iter().any(|t| *t != sample), "the seed matters");
        s.random = Some(10);
        assert_eq!(s.trials(), all, "a sample as large as the grid is the grid");
    }

    #[test]
    fn median_rule_stops_trials_below_the_median_of_earlier_ones() {
        use crate::history::{Metric, Metrics};
        let run = |values: &[f64]| RunSummary {
            dir: PathBuf::new(),
            config: Default::default(),
            history: values.iter().enumerate().map(|(i, &v)| EpochRecord::new(i + 1, 0.1, Some(Metrics { hr: v, ndcg: v, full: None }), None, 1.0)).collect(),
            k: 10,
            chosen_by: (Metric::Hr, SelectOn::Valid),
            manifest: None,
        };
        let key = MetricKey { on: Some(SelectOn::Valid), metric: "hr".into(), k: 10 };
        let peers = vec![run(&[0.3, 0.5, 0.6]), run(&[0.4, 0.4, 0.7]), run(&[0.2, 0.6, 0.6])];
        let me = run(&[0.1, 0.45]).history;
        // At epoch 2 the peers' best so far are 0.5, 0.4, 0.6: median 0.5 > 0.45.
        assert!(median_rule(&peers, &key, 2, &me).unwrap().contains("median 0.5000"));
        // At epoch 1: 0.3, 0.4, 0.2 → 0.3 > 0.1.
        assert!(median_rule(&peers, &key, 1, &me[..1]).is_some());
        let good = run(&[0.35, 0.55]).history;
        assert!(median_rule(&peers, &key, 2, &good).is_none());
        assert!(median_rule(&peers[..2], &key, 2, &me).is_none(), "too few peers");
        assert!(median_rule(&[peers[0].clone(), peers[1].clone(), run(&[0.9])], &key, 2, &me).is_none(), "peers that stopped before the epoch don't count");
    }
}

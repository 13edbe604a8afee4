//! Where a run's interactions come from (the built-in demo data, a file, or a split given as
//! files), then cleaning, the split (with its validation split unless `train.select_on = "test"`)
//! and the sampled-evaluation candidates.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ncf_datasets::{Interactions, SampledCandidates, Split, SplitMethod, drop_unsplittable_users, given, reader};

use crate::config::{DataConfig, RunConfig};

/// A run's data, ready to train and evaluate on.
pub struct Prepared {
    pub data: Interactions,
    /// Where the data came from and what cleaning or importing changed, for the run's log.
    pub source: String,
    pub split: Split,
    /// Sampled-evaluation candidates of the test pairs.
    pub candidates: SampledCandidates,
    /// Sampled-evaluation candidates of the validation pairs (`None` without validation).
    pub valid_candidates: Option<SampledCandidates>,
    /// Seconds per phase (read, clean, split, candidates), for `ncf data split`.
    pub timings: Vec<(&'static str, f64)>,
}

/// Loads, cleans and splits the interactions of a run and fixes its evaluation candidates.
pub fn prepare(config: &RunConfig) -> Result<Prepared> {
    if config.split.method == SplitMethod::Given {
        return prepare_given(config);
    }
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &'static str| {
        timings.push((name, clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };
    let (mut data, source) = read(&config.data, config.seed)?;
    lap("read");
    let source = clean(&config.data, &mut data, source);
    let (users, rows) = drop_unsplittable_users(&mut data, config.split.method);
    if users > 0 {
        eprintln!(
            "warning: {}: dropped {users} users with a single interaction ({rows} interactions): leave-one-out would leave \
             them nothing to train on (set data.clean.min_user_interactions to drop more)",
            config.split.method.label()
        );
    }
    lap("clean");
    let split = Split::new(&data, &config.split, config.seed, config.validation())?;
    lap("split");
    let candidates = SampledCandidates::draw(&split, config.train.eval_negatives, config.seed);
    let valid_candidates = SampledCandidates::draw_valid(&split, config.train.eval_negatives, config.seed);
    lap("candidates");
    Ok(Prepared { data, source, split, candidates, valid_candidates, timings })
}

/// The interactions a run trains on and where they came from.
fn read(config: &DataConfig, seed: u64) -> Result<(Interactions, String)> {
    Ok(match &config.path {
        None => {
            let d = &config.demo;
            (d.generate(seed), format!("built-in demo data ({} users × {} items, seed {seed})", d.users, d.items))
        }
        Some(path) => (reader::read(path, &config.read)?, path.display().to_string()),
    })
}

/// Applies `[data.clean]` and appends what it dropped to `source`.
fn clean(config: &DataConfig, data: &mut Interactions, source: String) -> String {
    let report = config.clean.apply(data);
    let mut notes = Vec::new();
    if report.below_threshold > 0 {
        notes.push(format!("{} below the rating threshold", report.below_threshold));
    }
    if report.duplicates > 0 {
        notes.push(format!("{} duplicate pairs (latest kept)", report.duplicates));
    }
    if report.k_core > 0 {
        notes.push(format!("{} by the k-core filter", report.k_core));
    }
    if notes.is_empty() { source } else { format!("{source}; dropped {}", notes.join(", ")) }
}

/// `split.method = "given"`: train and test (and optionally the candidates) from files, as given.
fn prepare_given(config: &RunConfig) -> Result<Prepared> {
    let s = &config.split;
    let train: PathBuf = match (&s.train_path, &config.data.path) {
        (Some(t), Some(d)) if t != d => {
            bail!("split.train_path ({}) and data.path/--data ({}) differ; give the training file once", t.display(), d.display())
        }
        (Some(t), _) | (None, Some(t)) => t.clone(),
        (None, None) => bail!("split.method = \"given\" needs split.train_path (or --data) and split.test_path"),
    };
    let Some(test) = &s.test_path else { bail!("split.method = \"given\" needs split.test_path") };
    let c = &config.data.clean;
    if c.min_rating.is_some() || c.min_user_interactions > 1 || c.min_item_interactions > 1 {
        bail!(
            "a given split is used as is: data.clean.min_rating and the k-core settings do not apply to it; \
             clean before splitting (e.g. with `ncf data split`) or unset them"
        );
    }
    let t0 = Instant::now();
    let mut g = given::read(&train, test, s.valid_path.as_deref(), s.negatives_path.as_deref(), &config.data.read)
        .with_context(|| format!("reading the given split (train {}, test {})", train.display(), test.display()))?;
    let mut timings = vec![("read", t0.elapsed().as_secs_f64())];
    let mut source = format!("given split: train {}, test {}", train.display(), test.display());
    match &s.valid_path {
        Some(valid) => source.push_str(&format!(", validation {}", valid.display())),
        None if config.validation() => {
            g.split.carve_valid(s.valid_ratio, config.seed);
            source.push_str(&format!(", validation {} of each user's training items drawn at random", s.valid_ratio));
        }
        None => {}
    }
    let candidates = match (g.candidates, &s.negatives_path) {
        (Some(c), Some(path)) => {
            source.push_str(&format!(", evaluation negatives from {}", path.display()));
            c
        }
        _ => {
            let t = Instant::now();
            let c = SampledCandidates::draw(&g.split, config.train.eval_negatives, config.seed);
            timings.push(("candidates", t.elapsed().as_secs_f64()));
            c
        }
    };
    let valid_candidates = SampledCandidates::draw_valid(&g.split, config.train.eval_negatives, config.seed);
    let r = g.report;
    if r.dropped_test_rows > 0 || r.dropped_negative_lines > 0 {
        source.push_str(&format!(
            "; dropped {} test rows and {} negatives lines of users absent from the training file",
            r.dropped_test_rows, r.dropped_negative_lines
        ));
    }
    if r.dropped_valid_rows > 0 {
        source.push_str(&format!("; dropped {} validation rows of users absent from the training file", r.dropped_valid_rows));
    }
    if r.new_items > 0 {
        source.push_str(&format!("; {} items absent from the training file added to the catalogue", r.new_items));
    }
    Ok(Prepared { data: g.data, source, split: g.split, candidates, valid_candidates, timings })
}

//! `ncf evaluate`: the training run's metrics for a checkpoint — sampled HR/NDCG (NCF protocol)
//! and full-ranking Recall/Precision/NDCG/MAP/coverage — on the saved test split or a given test
//! file, training and validation items masked, through the trainer's own evaluators; optionally
//! per user.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use ncf_datasets::{ReadOptions, SampledCandidates, Split, UserItems};

use crate::backend::{self, BackendName};
use crate::checkpoint::{self, Checkpoint};
use crate::export::{Export, Kind, OutFormat, Values};
use crate::output;
use crate::pairs::Pairs;
use crate::train::{FullEval, SampledEval, split_name};

/// The test split to evaluate: the saved one, or `--test` mapped onto the checkpoint's ids.
fn test_split(job: &EvaluateJob, ck: &Checkpoint) -> Result<(UserItems, String)> {
    let Some(path) = &job.test else {
        return Ok((ck.test.clone(), format!("the run's saved test split ({})", split_name(&ck.config))));
    };
    let pairs = Pairs::read(path, &job.read, &ck.users, &ck.items)?;
    let (unknown, examples) = pairs.unknown();
    let known: Vec<(u32, u32)> = (0..pairs.data.len()).filter_map(|r| Some((pairs.user[r]?, pairs.item[r]?))).collect();
    let seen = ck.seen();
    let in_train = known.iter().filter(|&&(u, i)| seen.contains(u, i)).count();
    let kept: Vec<(u32, u32)> = known.into_iter().filter(|&(u, i)| !seen.contains(u, i)).collect();
    if unknown > 0 {
        eprintln!(
            "warning: {}: {unknown} of {} pairs name a user or item not in the checkpoint and are left out (e.g. {})",
            path.display(),
            pairs.data.len(),
            examples.join(", ")
        );
    }
    if in_train > 0 {
        eprintln!("warning: {}: {in_train} pairs are training or validation interactions (masked in ranking) and are left out", path.display());
    }
    if kept.is_empty() {
        bail!("{}: no test pair left to evaluate", path.display());
    }
    Ok((UserItems::from_pairs(ck.meta.n_users, kept), path.display().to_string()))
}

/// What `ncf evaluate` evaluates: the checkpoint, the test split, the cutoff, and where per-user
/// metrics go.
#[derive(Debug, Clone)]
pub struct EvaluateJob {
    /// Run directory (its best/) or checkpoint directory.
    pub checkpoint: PathBuf,
    /// Test interactions (raw ids); `None`: the split saved with the checkpoint.
    pub test: Option<PathBuf>,
    /// How to read `test`.
    pub read: ReadOptions,
    /// Cutoff K; `None`: the run's train.k.
    pub k: Option<usize>,
    /// Per-user metrics file and its format.
    pub per_user: Option<(PathBuf, OutFormat)>,
    /// Replace `per_user` even when it is not an ncf export with these columns.
    pub force: bool,
    pub backend: BackendName,
}

pub fn run(job: &EvaluateJob) -> Result<()> {
    let inputs = [job.test.as_deref().unwrap_or(Path::new(""))];
    if let Some((out, _)) = &job.per_user {
        output::refuse_inputs(out, &inputs)?;
    }
    let selected = backend::select(job.backend)?;
    say!("{}", selected.line());
    let device = &selected.device;
    let ck = checkpoint::load(&job.checkpoint, device)?;
    let k = job.k.unwrap_or(ck.config.train.k);
    if k == 0 {
        bail!("--k must be at least 1");
    }
    let (test, source) = test_split(job, &ck)?;
    let split = Split { train: ck.train.clone(), valid: ck.valid.clone(), test, n_items: ck.meta.n_items, method: ck.config.split.method };
    let negatives = ck.config.train.eval_negatives;
    // The same candidates training used: imported ones kept in the checkpoint, else redrawn from
    // the same split, negatives and seed.
    let candidates = match (&ck.candidates, &job.test) {
        (Some(c), None) => c.clone(),
        _ => SampledCandidates::draw(&split, negatives, ck.config.seed),
    };
    let model = ck.scoring_model();
    let sampled = SampledEval::upload(&candidates, ck.config.model.layout().width(), device).rows(&model, k);
    let full = FullEval::upload(&split.seen_before_test(), &split.test, split.n_items, &model, (k, selected.host_memory()), device);
    let (per_user, coverage) = full.rows(&model, k, device);

    let mean = |v: &mut dyn Iterator<Item = f32>, n: usize| v.map(f64::from).sum::<f64>() / n.max(1) as f64;
    let hr = mean(&mut sampled.iter().map(|r| r[0]), sampled.len());
    let ndcg = mean(&mut sampled.iter().map(|r| r[1]), sampled.len());
    let f: Vec<f64> = (0..4).map(|j| mean(&mut per_user.iter().map(|r| r[j]), per_user.len())).collect();
    println!(
        "checkpoint {} (epoch {}), evaluated on {source}: {} test users, {} test items",
        checkpoint::resolve_dir(&job.checkpoint).display(),
        ck.meta.epoch,
        per_user.len(),
        split.test.nnz()
    );
    println!("sampled ({} negatives per test item): HR@{k} {hr:.4}  NDCG@{k} {ndcg:.4}", candidates.negatives);
    println!(
        "full ranking (all items, training and validation items masked): Recall@{k} {:.4}  Precision@{k} {:.4}  NDCG@{k} {:.4}  MAP@{k} {:.4}  coverage {coverage:.4}",
        f[0], f[1], f[2], f[3]
    );

    if let Some((path, format)) = &job.per_user {
        // Sampled rows are grouped per user (one per test item); average them per user.
        let mut sums = vec![(0.0f64, 0.0f64, 0usize); ck.meta.n_users];
        for (r, &u) in candidates.user.iter().enumerate() {
            let s = &mut sums[u as usize];
            *s = (s.0 + sampled[r][0] as f64, s.1 + sampled[r][1] as f64, s.2 + 1);
        }
        let users = &full.user_ids;
        let columns: Vec<(String, Kind)> = [("user", Kind::Str), ("test_items", Kind::U32)]
            .into_iter()
            .map(|(n, kd)| (n.to_owned(), kd))
            .chain(["hr", "ndcg", "recall", "precision", "full_ndcg", "map"].iter().map(|m| (format!("{m}@{k}"), Kind::F32)))
            .collect();
        let mut export = Export::create(path, *format, &columns, &inputs, job.force)?;
        let sampled_mean = |u: u32, j: usize| {
            let s = sums[u as usize];
            (if j == 0 { s.0 } else { s.1 } / s.2.max(1) as f64) as f32
        };
        let mut batch = vec![
            Values::Str(users.iter().map(|&u| Some(ck.users.raw(u).to_owned())).collect()),
            Values::U32(users.iter().map(|&u| split.test.items(u).len() as u32).collect()),
            Values::F32(users.iter().map(|&u| sampled_mean(u, 0)).collect()),
            Values::F32(users.iter().map(|&u| sampled_mean(u, 1)).collect()),
        ];
        batch.extend((0..4).map(|j| Values::F32(per_user.iter().map(|r| r[j]).collect())));
        export.write(&batch)?;
        export.finish()?;
        say!("wrote per-user metrics for {} users to {}", users.len(), path.display());
    }
    Ok(())
}

//! `ncf score`: one value per given (user, item) pair, in file order: the purchase propensity
//! (sigmoid of the model output) for BCE-trained models, the raw score for BPR-trained ones.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, Tensor, TensorData};
use ncf_datasets::ReadOptions;

use crate::backend::{self, BackendName};
use crate::checkpoint;
use crate::export::{Export, Kind, OutFormat, Values};
use crate::host;
use crate::output;
use crate::pairs::Pairs;

/// Pairs per device call (and per output batch).
const BATCH: usize = 1 << 16;

/// What `ncf score` does with pairs naming an unknown user or item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownPairs {
    Error,
    Skip,
}

/// What `ncf score` scores: the checkpoint, the pairs file and how to read it, and the output.
#[derive(Debug, Clone)]
pub struct ScoreJob {
    /// Run directory (its best/) or checkpoint directory.
    pub checkpoint: PathBuf,
    /// (user, item) pairs with raw ids.
    pub pairs: PathBuf,
    pub read: ReadOptions,
    pub out: PathBuf,
    pub format: OutFormat,
    /// Replace `out` even when it is not an ncf export with these columns.
    pub force: bool,
    pub unknown: UnknownPairs,
    /// Attributes of users the checkpoint has never seen, scored from them.
    pub user_features: Option<PathBuf>,
    pub backend: BackendName,
}

pub fn run(job: &ScoreJob) -> Result<()> {
    let format = job.format;
    output::refuse_inputs(&job.out, &[job.pairs.as_path(), job.user_features.as_deref().unwrap_or(Path::new(""))])?;
    let selected = backend::select(job.backend)?;
    say!("{}", selected.line());
    let device = &selected.device;
    let ck = checkpoint::load(&job.checkpoint, device)?;
    let mut pairs = Pairs::read(&job.pairs, &job.read, &ck.users, &ck.items)?;
    // Users new to the checkpoint with a line in --user-features are scored from their features.
    let features = match &job.user_features {
        None => ck.features.clone(),
        Some(path) => {
            let mut new: Vec<&str> = (0..pairs.data.len()).filter(|&r| pairs.user[r].is_none()).map(|r| pairs.raw_user(r)).collect();
            new.sort_unstable();
            new.dedup();
            let (features, dense) = ck.new_users_from(path, &new)?;
            for r in 0..pairs.data.len() {
                if pairs.user[r].is_none() {
                    pairs.user[r] = dense.get(pairs.raw_user(r)).copied();
                }
            }
            features
        }
    };
    let (unknown, examples) = pairs.unknown();
    if unknown > 0 {
        let head = format!(
            "{}: {unknown} of {} pairs name a user or item not in the checkpoint (e.g. {})",
            job.pairs.display(),
            pairs.data.len(),
            examples.join(", ")
        );
        match job.unknown {
            UnknownPairs::Error => bail!("{head}; pass --unknown skip to score the others"),
            UnknownPairs::Skip if unknown == pairs.data.len() => bail!("{head}: nothing to score"),
            UnknownPairs::Skip => eprintln!("warning: {head}; left out (--unknown skip)"),
        }
    }
    let probability = ck.scores_are_probabilities();
    let column = if probability { "probability" } else { "score" };
    if probability {
        println!("{column}: sigmoid of the model output (the model was trained with BCE)");
    } else if ck.config.model.kind == ncf_model::ModelKind::Ease {
        println!("{column}: EASE's score, the sum of the user's training items' rows of B (a ranking score, not a probability)");
    } else {
        let loss = ck.config.train.loss.name();
        println!("{column}: the raw model output (trained with {loss}: a ranking score, not a probability)");
    }
    let rows: Vec<usize> = (0..pairs.data.len()).filter(|&r| pairs.user[r].is_some() && pairs.item[r].is_some()).collect();
    let columns = [("user".to_owned(), Kind::Str), ("item".into(), Kind::Str), (column.into(), Kind::F32)];
    let mut export = Export::create(&job.out, format, &columns, &[job.pairs.as_path()], job.force)?;
    let model = ck.scoring_model_with(&features);
    for block in rows.chunks(BATCH) {
        let n = block.len();
        let ints = |v: Vec<i32>| Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device);
        let u = ints(block.iter().map(|&r| pairs.user[r].unwrap() as i32).collect());
        let i = ints(block.iter().map(|&r| pairs.item[r].unwrap() as i32).collect());
        let logits = model.score_pairs(u, i);
        let values = host::read_f32(if probability { sigmoid(logits) } else { logits });
        export.write(&[
            Values::Str(block.iter().map(|&r| Some(pairs.raw_user(r).to_owned())).collect()),
            Values::Str(block.iter().map(|&r| Some(pairs.raw_item(r).to_owned())).collect()),
            Values::F32(values),
        ])?;
    }
    export.finish()?;
    say!("wrote {} scored pairs to {}", rows.len(), job.out.display());
    Ok(())
}

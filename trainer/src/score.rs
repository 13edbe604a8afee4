//! `ncf score`: one value per given (user, item) pair, in file order: the purchase propensity
//! (sigmoid of the model output) for BCE-trained models, the raw score for BPR-trained ones.

use anyhow::{Result, bail};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, Tensor, TensorData};

use crate::backend;
use crate::checkpoint;
use crate::cli::{ScoreArgs, UnknownPairs};
use crate::export::{Export, Kind, OutFormat, Values};
use crate::host;
use crate::output;
use crate::pairs::Pairs;

/// Pairs per device call (and per output batch).
const BATCH: usize = 1 << 16;

pub fn run(args: &ScoreArgs) -> Result<()> {
    let format = OutFormat::resolve(&args.out, args.out_format)?;
    output::refuse_inputs(&args.out, &[args.pairs.as_path(), args.user_features.as_deref().unwrap_or(std::path::Path::new(""))])?;
    let selected = backend::select(args.backend)?;
    say!("{}", selected.line());
    let device = &selected.device;
    let ck = checkpoint::load(&args.checkpoint, device)?;
    let mut pairs = Pairs::read(&args.pairs, &args.read, &ck.users, &ck.items)?;
    // Users new to the checkpoint with a line in --user-features are scored from their features.
    let features = match &args.user_features {
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
            args.pairs.display(),
            pairs.data.len(),
            examples.join(", ")
        );
        match args.unknown {
            UnknownPairs::Error => bail!("{head}; pass --unknown skip to score the others"),
            UnknownPairs::Skip if unknown == pairs.data.len() => bail!("{head}: nothing to score"),
            UnknownPairs::Skip => eprintln!("warning: {head}; left out (--unknown skip)"),
        }
    }
    let probability = ck.scores_are_probabilities();
    let column = if probability { "probability" } else { "score" };
    if probability {
        println!("{column}: sigmoid of the model output (the model was trained with BCE)");
    } else {
        let loss = ck.config.train.loss.name();
        println!("{column}: the raw model output (trained with {loss}: a ranking score, not a probability)");
    }
    let rows: Vec<usize> = (0..pairs.data.len()).filter(|&r| pairs.user[r].is_some() && pairs.item[r].is_some()).collect();
    let columns = [("user".to_owned(), Kind::Str), ("item".into(), Kind::Str), (column.into(), Kind::F32)];
    let mut export = Export::create(&args.out, format, &columns, &[args.pairs.as_path()], args.force)?;
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
    say!("wrote {} scored pairs to {}", rows.len(), args.out.display());
    Ok(())
}

//! `ncf train`: interactions → split → epochs of row-sparse steps → per-epoch evaluation →
//! checkpoints and metrics in the run directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ncf_datasets::{Batch, BatchBuilder, EpochSamples, HistoryDraws, NegativeSampler, SampledCandidates, SharedDraws, Split, UserItems};
use ncf_model::data_parallel::HostBatch;
use ncf_model::eval::{RankingChunk, full_ranking_rows, full_ranking_sums, sampled_rows, sampled_sums};
use ncf_model::step::{Later, StepEngine};
use ncf_model::{DataParallel, LossConfig, LossKind, ModelKind, Ncf, Optimizer, StepInput};

use crate::backend::{self, BackendName};
use crate::checkpoint::{self, FORMAT_VERSION, Meta, Saved};
use crate::config::RunConfig;
use crate::curves;
use crate::features::RunFeatures;
use crate::history::{self, EpochRecord, FullMetrics, Metrics, SelectOn};
use crate::host;
use crate::manifest::{self, Recorder, Status};
use crate::output::{self, DirKind, DirState};
use crate::progress::Progress;

/// Embedding values gathered per side and device call in sampled evaluation (8 MiB of f32):
/// bounds evaluation memory, so wide tables (MF with 200 factors) score in cache-sized chunks
/// instead of page-faulting fresh gigabyte buffers.
const EVAL_PAIR_VALUES: usize = 2 << 20;

/// The sampled-protocol candidates, uploaded once.
pub(crate) struct SampledEval {
    chunks: Vec<(Tensor<1, Int>, Tensor<2, Int>)>,
    rows: usize,
    negatives: usize,
}

impl SampledEval {
    /// Uploads the candidates in chunks sized for a model whose embedding rows are
    /// `table_width` values wide.
    pub(crate) fn upload(c: &SampledCandidates, table_width: usize, device: &Device) -> Self {
        let w = c.width();
        let chunk_rows = (EVAL_PAIR_VALUES / (w * table_width.max(1)).max(1)).max(1);
        let chunks = (0..c.rows())
            .step_by(chunk_rows)
            .map(|start| {
                let end = (start + chunk_rows).min(c.rows());
                let users: Vec<i32> = c.user[start..end].iter().map(|&u| u as i32).collect();
                let items: Vec<i32> = c.items[start * w..end * w].iter().map(|&i| i as i32).collect();
                (Tensor::from_data(TensorData::new(users, [end - start]), device), Tensor::from_data(TensorData::new(items, [end - start, w]), device))
            })
            .collect();
        Self { chunks, rows: c.rows(), negatives: c.negatives }
    }

    /// `[hit, ndcg]` at k of every candidate row, in row order, with one device→host read.
    pub(crate) fn rows(&self, model: &Ncf, k: usize) -> Vec<[f32; 2]> {
        let rows: Vec<Tensor<2>> = self.chunks.iter().map(|(u, items)| sampled_rows(model, u.clone(), items.clone(), k)).collect();
        if rows.is_empty() {
            return Vec::new();
        }
        host::read_f32(Tensor::cat(rows, 0)).chunks_exact(2).map(|r| [r[0], r[1]]).collect()
    }

    /// (HR@k, NDCG@k), with one device→host read.
    pub(crate) fn evaluate(&self, model: &Ncf, k: usize) -> (f64, f64) {
        let mut sum: Option<Tensor<1>> = None;
        for (u, items) in &self.chunks {
            let s = sampled_sums(model, u.clone(), items.clone(), k);
            sum = Some(match sum {
                Some(acc) => acc + s,
                None => s,
            });
        }
        let Some(sum) = sum else { return (0.0, 0.0) };
        let v = host::read_f32(sum);
        (v[0] as f64 / self.rows as f64, v[1] as f64 / self.rows as f64)
    }
}

/// Full-ranking evaluation of one held-out split. On a GPU every user's chunk is uploaded once
/// and ranked, masked and scored on the device; on CPU backends the scores are already in host
/// memory, so `ncf recommend`'s scorer ranks them with a partial selection and the metrics are
/// the pure functions of `ncf_model::metrics`.
pub(crate) struct FullEval {
    /// Device path: the users' chunks (empty on the host path).
    chunks: Vec<RankingChunk>,
    /// Host path: each user's masked and held-out items.
    host: Option<(UserItems, UserItems)>,
    users: usize,
    /// The evaluated users (those with a held-out item), in chunk order.
    pub(crate) user_ids: Vec<u32>,
}

impl FullEval {
    /// Ranks `held`'s items per user among all `n_items`, the user's `masked` items left out
    /// (training items for validation; training and validation items for test); `host_top_k`
    /// for backends whose tensors live in host memory.
    pub(crate) fn upload(masked: &UserItems, held: &UserItems, n_items: usize, model: &Ncf, (k, host_top_k): (usize, bool), device: &Device) -> Self {
        let users: Vec<u32> = (0..held.n_users() as u32).filter(|&u| !held.items(u).is_empty()).collect();
        if host_top_k {
            return Self { chunks: Vec::new(), host: Some((masked.clone(), held.clone())), users: users.len(), user_ids: users };
        }
        let n = n_items;
        let width = model.head.mlp.first().map_or(1, |l| l.weight.val().dims()[1]);
        let per_chunk = ((16 << 20) / (n * width).max(1)).clamp(1, 4096);
        let chunks = users
            .chunks(per_chunk)
            .map(|ids| {
                let train: Vec<Vec<u32>> = ids.iter().map(|&u| masked.items(u).to_vec()).collect();
                let test: Vec<Vec<u32>> = ids.iter().map(|&u| held.items(u).to_vec()).collect();
                RankingChunk::new(ids, &train, &test, n, k, device)
            })
            .collect();
        Self { chunks, host: None, users: users.len(), user_ids: users }
    }

    /// `[recall, precision, ndcg, map]` at k of every user in `user_ids`, and the catalogue
    /// coverage, with one device→host read (one per chunk of users on the host path).
    pub(crate) fn rows(&self, model: &Ncf, k: usize, device: &Device) -> (Vec<[f32; 4]>, f64) {
        if let Some((masked, held)) = &self.host {
            return self.host_rows(model, (masked, held), k, device);
        }
        let side = model.item_side();
        let mut covered = Tensor::<1>::zeros([model.n_items()], device);
        let rows: Vec<Tensor<2>> = self.chunks.iter().map(|c| full_ranking_rows(model, &side, c, k, &mut covered)).collect();
        if rows.is_empty() {
            return (Vec::new(), 0.0);
        }
        let n_covered = covered.greater_elem(0.0).int().sum().float();
        let v = host::read_f32(Tensor::cat(vec![Tensor::cat(rows, 0).reshape([self.users * 4]), n_covered], 0));
        let per_user = v[..self.users * 4].chunks_exact(4).map(|r| [r[0], r[1], r[2], r[3]]).collect();
        (per_user, v[self.users * 4] as f64 / model.n_items() as f64)
    }

    /// [`rows`](Self::rows) through `ncf recommend`'s scorer and a host top-k.
    fn host_rows(&self, model: &Ncf, (masked, held): (&UserItems, &UserItems), k: usize, device: &Device) -> (Vec<[f32; 4]>, f64) {
        let scorer = crate::recommend::Scorer::new(model, masked, device, None, false, true, k);
        let mut covered = vec![false; model.n_items()];
        let mut per_user = Vec::with_capacity(self.users);
        for ids in self.user_ids.chunks(scorer.chunk) {
            let Some(scores) = scorer.scores(ids) else { continue };
            for (&user, top) in ids.iter().zip(scorer.select(scores, true)) {
                let ranked: Vec<u32> = top.iter().map(|&(item, _)| item).collect();
                ranked.iter().for_each(|&i| covered[i as usize] = true);
                let m = ncf_model::metrics::ranking_at(&ranked, held.items(user), k).expect("evaluated users have held-out items");
                per_user.push([m.recall, m.precision, m.ndcg, m.map].map(|x| x as f32));
            }
        }
        let n_covered = covered.iter().filter(|&&c| c).count();
        (per_user, n_covered as f64 / model.n_items().max(1) as f64)
    }

    /// Mean (recall, precision, ndcg, map) at k and catalogue coverage, with one read on a GPU.
    pub(crate) fn evaluate(&self, model: &Ncf, k: usize, device: &Device) -> [f64; 5] {
        if self.host.is_some() {
            let (rows, coverage) = self.rows(model, k, device);
            let u = rows.len().max(1) as f64;
            let mean = |j: usize| rows.iter().map(|r| r[j] as f64).sum::<f64>() / u;
            return [mean(0), mean(1), mean(2), mean(3), coverage];
        }
        let side = model.item_side();
        let mut covered = Tensor::<1>::zeros([model.n_items()], device);
        let mut sum: Option<Tensor<1>> = None;
        for chunk in &self.chunks {
            let s = full_ranking_sums(model, &side, chunk, k, &mut covered);
            sum = Some(match sum {
                Some(acc) => acc + s,
                None => s,
            });
        }
        let Some(sum) = sum else { return [0.0; 5] };
        let n_covered = covered.greater_elem(0.0).int().sum().float();
        let v = host::read_f32(Tensor::cat(vec![sum, n_covered], 0));
        let u = self.users.max(1) as f64;
        [v[0] as f64 / u, v[1] as f64 / u, v[2] as f64 / u, v[3] as f64 / u, v[4] as f64 / model.n_items() as f64]
    }
}

/// One split's evaluators (validation or test), uploaded once: its sampled candidates and, with
/// `train.full_ranking`, its full ranking.
struct SplitEval {
    sampled: SampledEval,
    full: Option<FullEval>,
}

impl SplitEval {
    /// The split's metrics at k.
    fn evaluate(&self, model: &Ncf, k: usize, device: &Device) -> Metrics {
        let (hr, ndcg) = self.sampled.evaluate(model, k);
        let full = self.full.as_ref().map(|f| {
            let v = f.evaluate(model, k, device);
            FullMetrics { recall: v[0], precision: v[1], ndcg: v[2], map: v[3], coverage: v[4] }
        });
        Metrics { hr, ndcg, full }
    }
}

/// Where an epoch's time went, for `--profile`.
#[derive(Debug, Default, Clone, Copy)]
pub struct EpochProfile {
    pub steps: u64,
    /// Device→host reads made while stepping (loss logging included).
    pub reads: u64,
    /// Seconds the device side waited for the batch thread.
    pub wait_batches: f64,
    /// Seconds spent issuing steps (and, on CPU backends, running them).
    pub steps_secs: f64,
    /// Seconds in loss reads (which wait for queued device work).
    pub read_secs: f64,
}

/// Negatives shared by every positive of a batch, and how the loss treats them.
#[derive(Clone)]
pub(crate) struct SharedSetup {
    pub(crate) draws: SharedDraws,
    pub(crate) config: LossConfig,
    /// Log-probabilities of each item as an in-batch positive and as a shared negative, on the
    /// device, when the loss corrects for them (`loss.logq`).
    pub(crate) log_probs: Option<(Tensor<1>, Tensor<1>)>,
}

impl SharedSetup {
    /// The run's shared negatives when its loss trains on them (softmax, ccl, or
    /// `sampler.shared_negatives` > 0); `None` for per-positive negatives.
    pub(crate) fn new(config: &RunConfig, sampler: &NegativeSampler, split: &Split, device: &Device) -> Option<Self> {
        if !config.shared_negatives() {
            return None;
        }
        let draws = sampler.shared();
        let log_probs = config.loss.logq.then(|| {
            let counts = split.train.item_counts(split.n_items);
            let total = split.train.nnz().max(1) as f32;
            // An item never trained on is never an in-batch candidate; any finite value will do.
            let as_positive: Vec<f32> = counts.iter().map(|&c| (c.max(1) as f32 / total).ln()).collect();
            let upload = |v: Vec<f32>| {
                let n = v.len();
                Tensor::<1>::from_data(TensorData::new(v, [n]), device)
            };
            (upload(as_positive), upload(draws.log_probs()))
        });
        Some(Self { draws, config: config.loss.clone(), log_probs })
    }
}

/// One epoch of steps through one [`StepEngine`]; batches are built beside the steps while the
/// device computes.
/// Returns the model and the epoch's mean loss (read back once per `log_every` steps and at the end).
/// With `dp`, every batch is a global batch split across its devices, `model` and `optim`
/// being replica 0.
pub(crate) fn run_epoch(
    mut model: Ncf,
    optim: &mut Optimizer,
    mut dp: Option<&mut DataParallel>,
    samples: &EpochSamples,
    (batch_size, group, loss_kind): (usize, usize, LossKind),
    (shared, history, epoch): (Option<&SharedSetup>, Option<&HistoryDraws>, u64),
    features: &RunFeatures,
    log_every: usize,
    device: &Device,
    bar: &indicatif::ProgressBar,
) -> (Ncf, f64, EpochProfile) {
    let (n_users, n_items) = (model.n_users(), model.n_items());
    let mut prof = EpochProfile::default();
    let reads_before = host::reads();
    let mut acc: Option<Tensor<1>> = None;
    let model = {
        // One batch ahead: the engine fetches the next batch's rows of a large item table while a
        // step computes, and leaves that table's update running into the next step.
        let engine = StepEngine::new(batch_size);
        // Batch k + 1 is built beside the steps while step k - 1 runs (`StepEngine::later`), the
        // builder handed from one job to the next.
        let build = |builder: BatchBuilder, k: usize| {
            let (start, end) = (k * batch_size, ((k + 1) * batch_size).min(samples.len()));
            let (user, item, label) = (samples.user[start..end].to_vec(), samples.item[start..end].to_vec(), samples.label[start..end].to_vec());
            let draws = shared.map(|s| s.draws.clone());
            let history = history.cloned();
            engine.later(move || {
                let mut builder = builder;
                let negatives = draws.map_or_else(Vec::new, |d| d.draw(epoch, k as u64));
                let batch = builder.build_shared(&user, &item, &label, &negatives, history.as_ref().map(|h| (h, epoch, k as u64)));
                (builder, batch)
            })
        };
        let n_batches = samples.len().div_ceil(batch_size);
        let mut seen = 0usize;
        let mut step = 0usize;
        let mut builder = Some(BatchBuilder::new(n_users, n_items));
        // Batch k's job, if there is a batch k; the builder comes back with its result.
        let post = |builder: &mut Option<BatchBuilder>, k: usize| (k < n_batches).then(|| build(builder.take().expect("one job holds the builder"), k));
        let collect = |builder: &mut Option<BatchBuilder>, job: Option<Later<(BatchBuilder, Batch)>>| {
            job.map(|j| {
                let (b, batch) = j.get();
                *builder = Some(b);
                batch
            })
        };
        let first = post(&mut builder, 0);
        let mut next = collect(&mut builder, first);
        let mut pending = None;
        loop {
            let t_wait = Instant::now();
            let Some(batch) = next.take() else { break };
            let job = pending.take().or_else(|| post(&mut builder, step + 1));
            next = collect(&mut builder, job);
            pending = post(&mut builder, step + 2);
            prof.wait_batches += t_wait.elapsed().as_secs_f64();
            let t_step = Instant::now();
            let (m, loss) = match dp.as_deref_mut() {
                Some(dp) => {
                    let host = HostBatch { packed: &batch.packed, n_users: batch.n_users, n_items: batch.n_items, len: batch.len, n_hist: batch.n_hist };
                    dp.step(model, optim, host, shared.map(|s| (&s.config, s.log_probs.as_ref())), loss_kind, group)
                }
                None => {
                    let (user_features, item_features) = features.batch(&batch, device);
                    let n = batch.packed.len();
                    let packed = Tensor::<1, Int>::from_data(TensorData::new(batch.packed, [n]), device);
                    let mut input = StepInput::from_packed(
                        packed,
                        (batch.n_users, batch.n_items, batch.len),
                        shared.map(|s| (s.config.clone(), s.log_probs.clone())),
                        batch.n_hist,
                    );
                    (input.user_features, input.item_features) = (user_features, item_features);
                    engine.step(model, optim, input, next.as_ref().map(|b| b.uniq_items().to_vec()), loss_kind, group)
                }
            };
            model = m;
            let weighted = loss.mul_scalar(batch.len as f32);
            acc = Some(match acc.take() {
                Some(a) => a + weighted,
                None => weighted,
            });
            seen += batch.len;
            step += 1;
            prof.steps_secs += t_step.elapsed().as_secs_f64();
            bar.inc(batch.len as u64);
            if step.is_multiple_of(log_every) {
                let t_read = Instant::now();
                let total = host::read_f32(acc.clone().unwrap())[0] as f64;
                prof.read_secs += t_read.elapsed().as_secs_f64();
                bar.set_message(format!("loss {:.4}", total / seen as f64));
            }
        }
        // The model and the optimizer are read after this: no update may still be running.
        engine.finish();
        prof.steps = step as u64;
        model
    };
    prof.reads = host::reads() - reads_before;
    let t_read = Instant::now();
    let mean = acc.map_or(0.0, |a| host::read_f32(a)[0] as f64 / samples.len().max(1) as f64);
    prof.read_secs += t_read.elapsed().as_secs_f64();
    (model, mean, prof)
}

/// `runs/<model>-<n>` with the first free n.
pub fn default_run_dir(model: &str) -> PathBuf {
    (1..).map(|n| PathBuf::from(format!("runs/{model}-{n:03}"))).find(|p| !p.exists()).unwrap()
}

/// The model a fresh run starts from: seeded initialisation, or NeuMF built from pretrained
/// GMF and MLP runs on the same data.
fn initial_model(config: &RunConfig, data: &ncf_datasets::Interactions, features: &RunFeatures, device: &Device) -> Result<Ncf> {
    let (Some(gmf_dir), Some(mlp_dir)) = (&config.pretrain.gmf, &config.pretrain.mlp) else {
        return Ok(features.init_model(config, data.n_users(), data.n_items(), device));
    };
    if features.table_rows() != (None, None) {
        anyhow::bail!("pretrain.gmf/pretrain.mlp with side features: pretraining builds NeuMF from id embeddings only; train NeuMF with features from scratch");
    }
    let load = |dir: &Path| -> Result<checkpoint::Checkpoint> {
        let ck = checkpoint::load(dir, device).with_context(|| format!("loading pretrained run {}", dir.display()))?;
        if ck.users.raw_ids() != data.users.raw_ids() || ck.items.raw_ids() != data.items.raw_ids() {
            anyhow::bail!("pretrained run {} was trained on other users or items than this run's data", dir.display());
        }
        Ok(ck)
    };
    let (gmf, mlp) = (load(gmf_dir)?, load(mlp_dir)?);
    let model = Ncf::from_pretrained(&config.model, &gmf.model, &mlp.model, config.pretrain.alpha).map_err(anyhow::Error::msg)?;
    say!(
        "pretrained: NeuMF from GMF {} (epoch {}) and MLP {} (epoch {}), alpha {}",
        gmf_dir.display(),
        gmf.meta.epoch,
        mlp_dir.display(),
        mlp.meta.epoch,
        config.pretrain.alpha
    );
    Ok(model)
}

/// What a resumed run continues from: `RUN/last` after checking it belongs to this data and
/// config, or the run's first epoch when it was stopped before writing one.
fn resume_from(
    run: &Path,
    config: &RunConfig,
    data: &ncf_datasets::Interactions,
    split: &Split,
    features: &RunFeatures,
    device: &Device,
) -> Result<(Ncf, Optimizer, Vec<EpochRecord>)> {
    let saved_path = run.join("config.toml");
    let text = std::fs::read_to_string(&saved_path).with_context(|| format!("{}: not a run directory", saved_path.display()))?;
    let saved: RunConfig = toml::from_str(&text).with_context(|| format!("{}: malformed", saved_path.display()))?;
    let comparable = |c: &RunConfig| {
        let mut c = c.clone();
        (c.train.epochs, c.train.log_every, c.train.patience, c.train.eval_every) = (0, 0, 0, 0);
        c.absolutize_paths();
        c
    };
    if comparable(&saved) != comparable(config) {
        anyhow::bail!("--resume {}: only --epochs, --log-every, train.patience and train.eval_every may change when resuming", run.display());
    }
    let last = run.join("last");
    if !last.join("checkpoint.json").exists() {
        say!("resuming {}: it was stopped before its first checkpoint, so it starts from epoch 1", run.display());
        return Ok((initial_model(config, data, features, device)?, Optimizer::new(config.optim.clone()), Vec::new()));
    }
    let ck = checkpoint::load(&last, device)?;
    if ck.train != split.train || ck.valid != split.valid || ck.features != *features {
        anyhow::bail!("{}: the data or split differs from the one this run was trained on", last.display());
    }
    let optim = checkpoint::load_optimizer(&last, &ck, device)?;
    say!("resuming {} after epoch {} ({} optimizer steps)", run.display(), ck.meta.epoch, ck.meta.optim_step);
    Ok((ck.model, optim, ck.meta.history))
}

/// What `ncf train` writes into a run directory (besides `best/` and `last/`).
const RUN_FILES: [&str; 7] = ["config.toml", "metrics.csv", "curves.png", manifest::FILE, "best", "last", output::MARKER];

/// The run directory to write: `--resume`'s, or `--out` after checking that it may be written;
/// an existing run is refused unless `--force`, which clears its checkpoints, metrics and curves
/// first.
fn claim_run_dir(job: &TrainJob, config: &RunConfig) -> Result<PathBuf> {
    if job.resume {
        return Ok(job.dir.clone());
    }
    let dir = job.dir.clone();
    let mut inputs = config.input_paths();
    inputs.extend(job.config_file.as_deref());
    if output::claim_dir(&dir, DirKind::Run, &RUN_FILES, &inputs, job.force)? == DirState::Same {
        if !job.force {
            anyhow::bail!(
                "{}: already holds a run; continue it with --resume {0}, or pass --force to start it afresh \
                 (its checkpoints, metrics and curves are replaced)",
                dir.display()
            );
        }
        for name in ["best", "last"] {
            let ck = dir.join(name);
            if ck.join("checkpoint.json").exists() {
                std::fs::remove_dir_all(&ck).with_context(|| format!("removing {}", ck.display()))?;
            }
        }
        for name in ["metrics.csv", "curves.png"] {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    Ok(dir)
}

/// What `ncf train` runs: the resolved configuration and where and how to run it.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The run's configuration, resolved from its sources (paths as given; made absolute before
    /// they are saved).
    pub config: RunConfig,
    /// The `--config` file: an input the run directory may not write over.
    pub config_file: Option<PathBuf>,
    /// The run directory: `--out` (default `runs/<model>-<n>`), or the run being resumed.
    pub dir: PathBuf,
    /// Continue `dir` from its `last/` checkpoint.
    pub resume: bool,
    /// Start afresh in an existing run, or write a run into a directory that is not one.
    pub force: bool,
    pub backend: BackendName,
    /// `--devices`: the device list as given (data-parallel training).
    pub devices: Option<String>,
    /// Print host reads per step and where each epoch's time goes.
    pub profile: bool,
}

pub fn run(job: &TrainJob) -> Result<()> {
    run_with(job, &mut |_, _| None).map(drop)
}

/// Asked after every epoch with the epoch and the history so far; `Some(reason)` ends the run
/// there as pruned (`ncf tune` stops hopeless trials so).
pub type Pruner<'a> = dyn FnMut(usize, &[EpochRecord]) -> Option<String> + 'a;

/// [`run`], with `prune` consulted after every epoch; returns the run directory.
pub fn run_with(job: &TrainJob, prune: &mut Pruner) -> Result<PathBuf> {
    let started = (Instant::now(), std::time::SystemTime::now());
    let mut config = job.config.clone();
    config.absolutize_paths();
    let run_dir = claim_run_dir(job, &config)?;
    let ease = config.model.kind == ModelKind::Ease;
    let features_given = config.features.user.path.is_some() || config.features.item.path.is_some();
    if ease && features_given {
        anyhow::bail!(
            "model.kind = \"ease\" learns from interactions alone: drop --user-features/--item-features (features.*), or train mf/gmf/mlp/neumf with them"
        );
    }
    // A bad list or a loss that cannot be split is refused before anything is read or written.
    if let Some(list) = &job.devices
        && backend::parse_devices(list)?.len() > 1
    {
        if ease {
            anyhow::bail!("--devices {list}: EASE is fitted on one device; drop --devices");
        }
        DataParallel::supports(config.train.loss, config.shared_negatives()).map_err(|e| anyhow::anyhow!("--devices {list}: {e}"))?;
        if features_given {
            anyhow::bail!("--devices {list}: side features (--user-features, --item-features) train on one device for now; drop --devices");
        }
    }
    let mut selected = backend::select(job.backend)?;
    say!("{}", selected.line());
    // `--devices`: device 0 of the list is the run's device (evaluation, checkpoints); a list of
    // one is that device alone.
    let devices = job.devices.as_deref().map(|list| selected.devices(list)).transpose()?.unwrap_or_default();
    if let Some((first, _)) = devices.first() {
        selected.device = first.clone();
    }
    let selected = selected;
    let device = &selected.device;

    let t_data = Instant::now();
    let crate::data::Prepared { data, source, split, candidates, valid_candidates, .. } = crate::data::prepare(&config)?;
    let data_secs = t_data.elapsed().as_secs_f64();
    say!("data: {source}: {} users, {} items, {} interactions", data.n_users(), data.n_items(), data.len());
    let select_on = config.train.select_on;
    if let Some(valid) = &split.valid {
        if valid.nnz() == 0 {
            anyhow::bail!(
                "the {} split left no validation interaction (users need 3 interactions under leave-one-out); \
                 use more data, or choose on test as the NCF paper does with train.select_on = \"test\"",
                split_name(&config)
            );
        }
        say!("split: {} train, {} validation, {} test interactions", split.train.nnz(), valid.nnz(), split.test.nnz());
    }
    let features = RunFeatures::load(&config, &data)?;
    let width = config.model.layout().width();
    if ease {
        check_ease_memory((data.n_users(), data.n_items()), selected.available_memory(), ncf_model::ease::table_values(device))?;
        // Its users × items scores are a table only up to what any adapter binds
        // (`ease::table_values`), else summed per chunk of users when scored.
        selected.check_table("EASE's items × items matrix", data.n_items(), data.n_items())?;
    }
    selected.check_table("the user embedding table", data.n_users(), width)?;
    selected.check_table("the item embedding table", data.n_items(), width)?;
    // Candidates read from a .test.negative file cannot be redrawn: checkpoints keep them.
    let imported_candidates = (config.split.method == ncf_datasets::SplitMethod::Given && config.split.negatives_path.is_some()).then_some(&candidates);
    // With shared negatives, an epoch's samples are its positives alone.
    let per_positive = if config.shared_negatives() { 0 } else { config.sampler.negatives };
    let sampler_config = ncf_datasets::SamplerConfig { negatives: per_positive, ..config.sampler.clone() };
    let sampler = NegativeSampler::new(&split.train, data.n_items(), sampler_config, config.seed);
    let shared = SharedSetup::new(&config, &sampler, &split, device);
    let history_draws =
        (config.model.history > 0.0).then(|| HistoryDraws::new(std::sync::Arc::new(split.train.clone()), config.sampler.history_max, config.seed));
    let (mut model, mut optim, mut history) = if job.resume {
        resume_from(&run_dir, &config, &data, &split, &features, device)?
    } else {
        (initial_model(&config, &data, &features, device)?, Optimizer::new(config.optim.clone()), Vec::new())
    };
    let k = config.train.k;
    // Validation ranks against the training items masked; test against training and validation.
    let upload = |c: &SampledCandidates, masked: &UserItems, held: &UserItems| SplitEval {
        sampled: SampledEval::upload(c, width, device),
        full: config.train.full_ranking.then(|| FullEval::upload(masked, held, split.n_items, &model, (k, selected.host_memory()), device)),
    };
    let seen_before_test = split.seen_before_test();
    let test_eval = upload(&candidates, &seen_before_test, &split.test);
    let valid_eval = split.valid.as_ref().zip(valid_candidates.as_ref()).map(|(held, c)| upload(c, &split.train, held));

    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating run directory {}", run_dir.display()))?;
    for f in RUN_FILES {
        output::sweep_leftovers(&run_dir.join(f));
    }
    output::write_atomic(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
    output::mark(&run_dir, DirKind::Run)?;
    let negatives = test_eval.sampled.negatives;
    let protocol = match config.train.full_ranking {
        true => format!("hr/ndcg: sampled-{negatives} + others: full ranking ({})", split_name(&config)),
        false => format!("sampled-{negatives} ({})", split_name(&config)),
    };
    let metric = config.train.best_metric;
    let metric_label = history::label(metric.name(), k);
    match select_on {
        SelectOn::Valid => say!("best checkpoint: chosen on validation {metric_label}; test is reported, never chosen on"),
        SelectOn::Test => say!("best checkpoint: chosen on test {metric_label} (paper protocol, train.select_on = \"test\"): no validation split"),
        SelectOn::Last => say!("best checkpoint: the last epoch (train.select_on = \"last\": epochs fixed in advance, nothing chosen; no validation split)"),
    }
    let stop_rule = (metric, select_on, config.train.patience);

    let pairwise = config.train.loss == LossKind::Bpr && shared.is_none();
    let group = if pairwise { 1 + config.sampler.negatives } else { 1 };
    if pairwise && config.sampler.negatives == 0 {
        anyhow::bail!("train.loss = \"bpr\" needs sampler.negatives ≥ 1");
    }
    // Whole groups per batch, so every positive meets its negatives in the same step.
    let batch_size = config.train.batch_size.div_ceil(group) * group;
    let first = history.len() + 1;
    // EASE is fitted in closed form: its one epoch is the fit.
    let epochs = if ease { 1 } else { config.train.epochs };
    if ease && config.train.epochs != 1 {
        say!("model.kind = \"ease\" is fitted in closed form in one pass: train.epochs = {} is read as 1", config.train.epochs);
    }
    if first > epochs && ease {
        say!("{} holds a fitted EASE model: nothing to continue (start afresh with --force, e.g. with another model.ease_lambda)", run_dir.display());
    } else if first > epochs {
        say!("{} already has {} epochs; pass --epochs N (N > {}) to train further", run_dir.display(), history.len(), history.len());
    }
    let mut dp = (devices.len() > 1).then(|| {
        let dp = DataParallel::new(&model, &optim, devices.iter().map(|(d, _)| d.clone()).collect());
        let k = devices.len();
        let (least, most) = ((batch_size / group / k) * group, (batch_size / group).div_ceil(k) * group);
        let per_device = if least == most { least.to_string() } else { format!("{least}-{most}") };
        say!(
            "data parallel: {k} devices ({}); global batch {batch_size}, {per_device} samples per device; gradients summed by {} ({width} values per unique row)",
            devices.iter().map(|(_, what)| what.as_str()).collect::<Vec<_>>().join(", "),
            dp.reduce().name(),
        );
        dp
    });
    let mut recorder = Recorder::begin(&run_dir, &config, &selected, first, started)?;
    if !devices.is_empty() {
        recorder.devices(devices.iter().map(|(_, what)| what.clone()).collect());
    }
    *recorder.phases() = manifest::Phases { data: data_secs, setup: started.0.elapsed().as_secs_f64() - data_secs, ..Default::default() };
    recorder.save(&run_dir, &config, &history, Status::Running)?;
    let progress = Progress::new(epochs);
    progress.epochs.inc(history.len() as u64);
    // The epochs and the closing writes; an error in them is recorded in run.json before it is
    // reported.
    let train = || -> Result<Status> {
        let mut status = Status::Finished;
        for epoch in first..=epochs {
            let t0 = Instant::now();
            // Dropout masks come from the device's generator: seeded per epoch, so a resumed run
            // draws the same ones.
            device.seed(config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch as u64);
            // Each device its own masks (data parallel with dropout trains like one device only in
            // distribution).
            // Replicas sharing device 0 (flex) share its generator.
            for (j, (d, _)) in devices.iter().enumerate().skip(1).filter(|(_, (d, _))| d != device) {
                d.seed(config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch as u64 ^ ((j as u64) << 32));
            }
            optim.config.lr = config.optim.lr_at(epoch, config.train.epochs);
            let samples = if ease { EpochSamples::default() } else { sampler.epoch_grouped(epoch as u64, pairwise) };
            let bar = progress.batches(samples.len());
            let t_sample = t0.elapsed().as_secs_f64();
            let (m, loss, prof) = if ease {
                // The loss is read off the folded model the evaluation below builds.
                (ncf_model::ease::fit(&model, split.train.offsets(), split.train.all_items(), config.model.ease_lambda), f64::NAN, EpochProfile::default())
            } else {
                run_epoch(
                    model,
                    &mut optim,
                    dp.as_mut(),
                    &samples,
                    (batch_size, group, config.train.loss),
                    (shared.as_ref(), history_draws.as_ref(), epoch as u64),
                    &features,
                    config.train.log_every,
                    device,
                    &bar,
                )
            };
            model = m;
            bar.finish_and_clear();
            recorder.phases().train += t0.elapsed().as_secs_f64();
            let t_eval = Instant::now();
            let eval_reads = host::reads();
            let evaluated = history::evaluate_at(&history, epoch, epochs, config.train.eval_every, stop_rule);
            // Scored as `ncf recommend` will: features composed in, the users' training histories
            // folded in.
            let scoring = evaluated.then(|| features.compose(&model).fold_history(split.train.offsets(), split.train.all_items()));
            // EASE's one epoch is its last, so always evaluated: its loss is the fit's reconstruction error.
            let loss = match scoring.as_ref().filter(|_| ease) {
                Some(folded) => host::read_f32(ncf_model::ease::reconstruction_error(folded, split.train.offsets(), split.train.all_items()))[0] as f64,
                None => loss,
            };
            let valid = valid_eval.as_ref().zip(scoring.as_ref()).map(|(e, m)| e.evaluate(m, k, device));
            let test = scoring.as_ref().map(|m| test_eval.evaluate(m, k, device));
            if job.profile {
                progress.println(&format!(
                "profile: {} steps, {:.3} host reads/step ({} reads in the step loop, log every {}); sampling {:.2}s, waiting for batches {:.2}s, steps {:.2}s, loss reads {:.2}s, evaluation {:.2}s ({} reads)",
                prof.steps,
                prof.reads as f64 / prof.steps.max(1) as f64,
                prof.reads,
                config.train.log_every,
                t_sample,
                prof.wait_batches,
                prof.steps_secs,
                prof.read_secs,
                t_eval.elapsed().as_secs_f64(),
                host::reads() - eval_reads,
            ));
            }
            recorder.phases().eval += t_eval.elapsed().as_secs_f64();
            let t_write = Instant::now();
            let secs = t0.elapsed().as_secs_f64();
            let shown = match (&valid, &test) {
                (_, None) => format!("(not evaluated: train.eval_every = {})", config.train.eval_every),
                (Some(v), Some(t)) => format!("valid {}  | test {}", v.brief(k), t.brief(k)),
                (None, Some(t)) => format!("test {}", t.brief(k)),
            };
            let speed = if ease {
                format!("fitted in closed form, λ {}; loss: ‖X − XB‖² per training interaction", config.model.ease_lambda)
            } else {
                format!("{:.0} samples/s", samples.len() as f64 / secs)
            };
            progress.println(&format!("epoch {epoch:>3}  loss {loss:.4}  {shown}  ({secs:.1}s, {speed})"));
            let record = EpochRecord::new(epoch, loss, valid, test, secs);
            let metrics = record.named(k);
            history.push(record);
            output::write_atomic(&run_dir.join("metrics.csv"), history::csv(&history, k, &protocol, select_on).as_bytes())?;
            let meta = Meta {
                format_version: FORMAT_VERSION,
                model: config.model.kind.name().into(),
                n_users: data.n_users(),
                n_items: data.n_items(),
                epoch,
                metrics,
                history: history.clone(),
                optim_step: optim.step,
                checksums: Default::default(),
                user_features: None,
                item_features: None,
            };
            let saved = |optim| Saved {
                meta: &meta,
                config: &config,
                model: &model,
                train: &split.train,
                valid: split.valid.as_ref(),
                test: &split.test,
                users: &data.users,
                items: &data.items,
                optim,
                candidates: imported_candidates,
                features: &features,
            };
            // best/ first: a run stopped at any moment that has a last/ has a best/ too.
            let best_now = history::best(&history, metric, select_on).is_some_and(|b| b.epoch == epoch);
            if best_now {
                checkpoint::save(&run_dir.join("best"), &saved(None), None)?;
            }
            // last/ shares best/'s weights and split files when they are this epoch's.
            checkpoint::save(&run_dir.join("last"), &saved(Some(&optim)), best_now.then(|| run_dir.join("best")).as_deref())?;
            progress.epochs.inc(1);
            recorder.phases().write += t_write.elapsed().as_secs_f64();
            recorder.save(&run_dir, &config, &history, Status::Running)?;
            if history::should_stop(&history, metric, select_on, config.train.patience, epoch) {
                let on = if select_on == SelectOn::Valid { "validation" } else { "test" };
                progress.println(&format!("early stop: no better {on} {metric_label} in {} epochs", config.train.patience));
                status = Status::StoppedEarly;
                break;
            }
            if epoch < epochs
                && let Some(reason) = prune(epoch, &history)
            {
                progress.println(&format!("pruned after epoch {epoch}: {reason}"));
                status = Status::Pruned;
                break;
            }
        }
        progress.epochs.finish_and_clear();
        if !history.is_empty() {
            let t_write = Instant::now();
            write_curves(&run_dir.join("curves.png"), &history, k, config.train.full_ranking)?;
            recorder.phases().write += t_write.elapsed().as_secs_f64();
        }
        Ok(status)
    };
    let status = match train() {
        Ok(status) => status,
        Err(e) => {
            recorder.fail(&run_dir, &config, &history, &e);
            return Err(e);
        }
    };
    recorder.save(&run_dir, &config, &history, status)?;
    if let Some(b) = history::best(&history, metric, select_on) {
        let record = history.iter().find(|r| r.epoch == b.epoch);
        match (select_on, record.and_then(EpochRecord::test).and_then(|t| t.get(metric.name()))) {
            (SelectOn::Valid, Some(t)) => say!("best: epoch {} valid {metric_label} {:.4} (test {metric_label} {t:.4})", b.epoch, b.value),
            (SelectOn::Last, _) => say!("best: the last epoch, {}: test {metric_label} {:.4}", b.epoch, b.value),
            _ => say!("best: epoch {} test {metric_label} {:.4} (chosen on test: paper protocol)", b.epoch, b.value),
        }
    }
    say!("run directory: {}", run_dir.display());
    say!("next: ncf recommend --checkpoint {} --top-n 10 --out {}", run_dir.display(), run_dir.join("recommendations.csv").display());
    Ok(run_dir)
}

/// Refuses, before anything is written, an EASE fit that would not fit in `available` bytes
/// (when known: the CPU backends), its scores kept as a table up to `table_values`.
fn check_ease_memory((n_users, n_items): (usize, usize), available: Option<u64>, table_values: usize) -> Result<()> {
    let size = |bytes: f64| backend::human(bytes as u64);
    // The scores are a table up to `table_values`, else chunks of users well under it.
    let (b, scores) = ((n_items * n_items * 4) as f64, ((n_users * n_items).min(table_values) * 4) as f64);
    let needed = EASE_B_COPIES * b + 2.0 * scores;
    if let Some(available) = available.filter(|&a| needed > a as f64) {
        anyhow::bail!(
            "model.kind = \"ease\" keeps an items × items matrix ({n_items} items: {}) and up to {} of user scores at a time: \
             the fit needs about {}, but {} are available. Use a machine with more memory, fewer items \
             (data.clean.min_item_interactions), or model.kind = \"mf\", e.g. --config configs/implicit-sparse.toml",
            size(b),
            size(scores),
            size(needed),
            size(available as f64)
        );
    }
    Ok(())
}

/// Peak memory of an EASE fit in copies of B (the Gram matrix, the inverse's blocks, B itself):
/// measured 3.3 at 26k items (BENCHMARKS.md), planned with a margin.
const EASE_B_COPIES: f64 = 3.5;

/// `curves.png`: the loss, and validation and test metrics per epoch (gaps where not evaluated).
fn write_curves(path: &Path, history: &[EpochRecord], k: usize, full_ranking: bool) -> Result<()> {
    let names = [("hr", "HR", "sampled"), ("ndcg", "NDCG", "sampled"), ("recall", "Recall", "full"), ("full_ndcg", "NDCG", "full")];
    let shown = if full_ranking { &names[..] } else { &names[..2] };
    let mut columns = Vec::new();
    for on in [SelectOn::Valid, SelectOn::Test] {
        if history.iter().all(|r| r.on(on).is_none()) {
            continue;
        }
        for &(metric, title, protocol) in shown {
            let values: Vec<f64> = history.iter().map(|r| r.on(on).and_then(|m| m.get(metric)).unwrap_or(f64::NAN)).collect();
            columns.push((format!("{} {title}@{k} ({protocol})", on.name()), values));
        }
    }
    let series: Vec<curves::Series> = columns.iter().map(|(name, values)| curves::Series { name, values }).collect();
    curves::write(path, &history.iter().map(|r| r.loss).collect::<Vec<f64>>(), &series)
}

pub(crate) fn split_name(config: &RunConfig) -> &'static str {
    match (config.split.method, config.split.group) {
        (ncf_datasets::SplitMethod::Random, ncf_datasets::SplitGroup::Item) => "random holdout per item",
        (method, _) => method.label(),
    }
}

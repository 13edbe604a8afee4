//! `ncf bench`: the same workloads on every backend, side by side. Per backend, on synthetic data of
//! the workload's shape: training throughput per model and batch size, evaluation time (sampled and
//! full ranking) and recommend throughput (top-10 over all items), each after a warm-up, repeated,
//! reported as median and spread. Optionally the PyTorch peer runs the same NeuMF steps beside it.
//!
//! Timing is honest on GPU backends: every timed region ends with a device→host read (the epoch's
//! loss, the summed metrics, the top-k lists), which waits for all queued work.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::ValueEnum;
use ncf_datasets::{EpochSamples, NegativeSampler, SampledCandidates, SamplerConfig, Split, UserItems, rng, rng::RngExt, shaped_split};
use ncf_model::{LossKind, ModelConfig, ModelKind, Ncf, OptimConfig, Optimizer};

use crate::backend::{self, BackendName};
use crate::bench_report::{self, BackendReport, Figure, Measure, PeerFigure, PeerReport, Report, VariantInfo, WorkloadInfo};
use crate::output::{self, DirKind};
use crate::recommend;
use crate::train::{self, FullEval, SampledEval};

/// The data shapes `ncf bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// 200 users × 300 items, tiny batches and few repetitions: keeps CI (and lavapipe) fast.
    Small,
    /// MovieLens 1M's shape: 6,040 users × 3,706 items, about 1M interactions.
    #[value(name = "ml-1m")]
    Ml1m,
    /// MovieLens 20M's shape: 138,493 users × 26,744 items, about 20M interactions.
    #[value(name = "ml-20m")]
    Ml20m,
}

/// Which measurements to run (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// Training throughput per batch size.
    Train,
    /// Sampled and full-ranking evaluation passes.
    Eval,
    /// Top-k over all items for many users.
    Recommend,
}

/// Presets that choose models, batches and measurements together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// NeuMF at batch 256, 4096 and 1M in the NVIDIA DeepLearningExamples ml-20m shape (factor 64,
    /// MLP [256, 256, 128, 64]) with recommend top-10 for all users, plus the paper's factor-8 NeuMF
    /// (the shape the PyTorch peer runs) for the ratio. Backends default to wgpu,cuda.
    Gpu,
}

/// What `ncf bench` was asked for: the backends, the workload and the flags that reshape it (each
/// `None` or empty takes the workload's or the suite's default, see [`plan`]), the output and
/// the optional PyTorch peer.
#[derive(Debug, Clone)]
pub struct BenchJob {
    /// Comma list of backends or `all-available`; `None`: all-available (wgpu,cuda with the gpu suite).
    pub backends: Option<String>,
    pub workload: Option<Workload>,
    pub suite: Option<Suite>,
    /// Directory for bench.json and bench.png; `None`: runs/bench-<workload>.
    pub out: Option<PathBuf>,
    /// Write into `out` even when it is not an ncf bench output.
    pub force: bool,
    pub models: Vec<ModelKind>,
    /// Training batch sizes.
    pub batch: Vec<usize>,
    /// Measurements to run.
    pub only: Vec<Part>,
    /// Timed repetitions after warm-up.
    pub reps: Option<usize>,
    /// Training steps per repetition.
    pub steps: Option<usize>,
    /// Users in the catalogue.
    pub users: Option<usize>,
    /// Items in the catalogue; several: training at each.
    pub items: Vec<usize>,
    /// GMF/MF factors.
    pub factors: Option<usize>,
    /// MLP widths.
    pub layers: Vec<usize>,
    /// Dense Adam on the embedding tables instead of row-sparse.
    pub dense_adam: bool,
    /// Composed burn ops instead of the backend's fused kernels (`optim.fused = false`).
    pub composed_rows: bool,
    /// Users per evaluation pass.
    pub eval_users: Option<Count>,
    /// Users per recommend pass.
    pub recommend_users: Option<Count>,
    /// PyTorch peer script, run beside factor-8 NeuMF training.
    pub torch_peer: Option<PathBuf>,
    /// Python with torch for the peer; `None`: $PYTHON, else python3.
    pub python: Option<PathBuf>,
    /// Device the peer runs on: cpu or cuda.
    pub torch_device: String,
    /// CPU threads for the peer.
    pub torch_threads: Option<usize>,
    /// Seed of the synthetic data and the models.
    pub seed: u64,
}

/// Everything one bench run does, resolved from the workload, the suite and the flags.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workload: Workload,
    pub users: usize,
    pub items: usize,
    /// Training is measured at each of these catalogues (`items` first), repetitions interleaved.
    pub catalogues: Vec<usize>,
    /// Interactions per user wanted (at most half the catalogue are drawn).
    pub per_user: usize,
    pub variants: Vec<Variant>,
    pub batches: Vec<usize>,
    /// Training samples a repetition aims for (steps = this / batch, at least `min_steps`).
    pub samples_per_rep: usize,
    pub steps: Option<usize>,
    pub min_steps: usize,
    pub warmup_steps: usize,
    pub reps: usize,
    pub eval_users: usize,
    pub recommend_users: usize,
    pub k: usize,
    pub eval_negatives: usize,
    pub optim: OptimConfig,
    pub seed: u64,
}

/// One model shape under test and which measurements it gets.
#[derive(Debug, Clone)]
pub struct Variant {
    pub label: String,
    pub config: ModelConfig,
    pub measures: Vec<Part>,
}

impl Plan {
    /// Training steps per repetition at `batch`.
    pub fn steps(&self, batch: usize) -> usize {
        self.steps.unwrap_or(self.samples_per_rep / batch).max(self.min_steps)
    }

    /// Samples the training pool must hold for the largest batch.
    fn pool_samples(&self) -> usize {
        self.batches.iter().map(|&b| (self.warmup_steps + self.reps * self.steps(b)) * b).max().unwrap_or(0)
    }

    /// This plan at catalogue `items` (one of [`Plan::catalogues`]).
    fn at_items(&self, items: usize) -> Plan {
        Plan { items, ..self.clone() }
    }

    /// Whether any variant measures `m`.
    fn wants(&self, m: Part) -> bool {
        self.variants.iter().any(|v| v.measures.contains(&m))
    }
}

/// The paper's factor-8 NeuMF, the shape the PyTorch peer runs.
fn paper_shape(kind: ModelKind) -> ModelConfig {
    ModelConfig { kind, ..Default::default() }
}

/// Resolves workload defaults, the suite and the flags into a plan.
pub fn plan(job: &BenchJob) -> Result<Plan> {
    let workload = job.workload.unwrap_or(if job.suite == Some(Suite::Gpu) { Workload::Ml20m } else { Workload::Ml1m });
    // (users, items, interactions per user, batches, samples per rep, min steps, warm-up, reps, eval users, recommend users)
    let (users, items, per_user, batches, samples_per_rep, min_steps, warmup_steps, reps, eval_users, recommend_users) = match workload {
        Workload::Small => (200, 300, 20, vec![64, 256], 1024, 2, 2, 3, usize::MAX, usize::MAX),
        Workload::Ml1m => (6040, 3706, 166, vec![256, 4096], 65_536, 3, 3, 5, usize::MAX, usize::MAX),
        Workload::Ml20m => (138_493, 26_744, 144, vec![256, 4096], 262_144, 3, 3, 5, 4096, 8192),
    };
    let all = [Part::Train, Part::Eval, Part::Recommend];
    let measures: Vec<Part> = if job.only.is_empty() { all.to_vec() } else { job.only.clone() };
    let mut batches = if job.batch.is_empty() { batches } else { job.batch.clone() };
    let mut recommend_users = job.recommend_users.map_or(recommend_users, |c| c.0);
    let shape = |kind: ModelKind, big: bool| -> ModelConfig {
        let mut c = if big { ModelConfig { kind, factors: 64, layers: vec![256, 256, 128, 64], ..Default::default() } } else { paper_shape(kind) };
        if let Some(f) = job.factors {
            c.factors = f;
        }
        if !job.layers.is_empty() {
            c.layers = job.layers.clone();
        }
        c
    };
    let variants = match job.suite {
        Some(Suite::Gpu) => {
            if job.batch.is_empty() {
                batches = if workload == Workload::Small { vec![64, 256, 1024] } else { vec![256, 4096, 1 << 20] };
            }
            if job.recommend_users.is_none() {
                recommend_users = usize::MAX;
            }
            let only = |m: &[Part]| m.iter().copied().filter(|x| measures.contains(x)).collect::<Vec<_>>();
            vec![
                Variant { label: "neumf-f64".into(), config: shape(ModelKind::Neumf, true), measures: only(&[Part::Train, Part::Recommend]) },
                Variant { label: "neumf-f8".into(), config: paper_shape(ModelKind::Neumf), measures: only(&[Part::Train]) },
            ]
        }
        None => {
            let kinds = if job.models.is_empty() { vec![ModelKind::Gmf, ModelKind::Mlp, ModelKind::Neumf, ModelKind::Mf] } else { job.models.clone() };
            kinds
                .into_iter()
                .map(|kind| Variant { label: kind.name().into(), config: shape(kind, workload == Workload::Ml20m), measures: measures.clone() })
                .collect()
        }
    };
    for v in &variants {
        v.config.validate().map_err(anyhow::Error::msg).with_context(|| format!("model {}", v.label))?;
    }
    let users = job.users.unwrap_or(users);
    let catalogues = if job.items.is_empty() { vec![items] } else { job.items.clone() };
    let items = catalogues[0];
    if users < 2 || catalogues.iter().any(|&n| n < 4) {
        bail!("--users must be at least 2 and --items at least 4");
    }
    if let Some(n) = catalogues.iter().enumerate().find_map(|(i, n)| catalogues[..i].contains(n).then_some(n)) {
        bail!("--items lists {n} twice");
    }
    if catalogues.len() > 1 && measures.iter().any(|&m| m != Part::Train) {
        bail!("--items with several catalogues measures training only: add --only train");
    }
    if batches.contains(&0) || job.reps == Some(0) || job.steps == Some(0) {
        bail!("--batch, --reps and --steps must be at least 1");
    }
    let optim = OptimConfig { sparse: !job.dense_adam, fused: !job.composed_rows, ..Default::default() };
    Ok(Plan {
        workload,
        users,
        items,
        catalogues,
        per_user,
        variants,
        batches,
        samples_per_rep,
        steps: job.steps,
        min_steps,
        warmup_steps,
        reps: job.reps.unwrap_or(reps),
        eval_users: job.eval_users.map_or(eval_users, |c| c.0).min(users),
        recommend_users: recommend_users.min(users),
        k: 10,
        eval_negatives: 100,
        optim,
        seed: job.seed,
    })
}

/// The backends to try: a comma list, or `all-available` (every backend ncf knows; software wgpu
/// adapters are then listed as skipped, as `--backend auto` never picks them).
pub fn parse_backends(spec: &str) -> Result<Vec<BackendName>> {
    if spec.trim() == "all-available" {
        return Ok(vec![BackendName::Flex, BackendName::Wgpu, BackendName::Ndarray, BackendName::Cuda]);
    }
    let mut out = Vec::new();
    for s in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match BackendName::from_str(s, true) {
            Ok(BackendName::Auto) | Err(_) => bail!("--backends: unknown backend {s:?}: use flex, wgpu, ndarray, cuda or all-available"),
            Ok(b) if !out.contains(&b) => out.push(b),
            Ok(_) => {}
        }
    }
    if out.is_empty() {
        bail!("--backends: name at least one backend");
    }
    Ok(out)
}

/// Opens a backend, or says why it is not available.
fn open(name: BackendName) -> std::result::Result<backend::Selected, String> {
    let compiled = match name {
        BackendName::Flex => cfg!(feature = "flex"),
        BackendName::Wgpu => cfg!(feature = "wgpu"),
        BackendName::Ndarray => cfg!(feature = "ndarray"),
        BackendName::Cuda => cfg!(feature = "cuda"),
        BackendName::Auto => true,
    };
    if !compiled {
        return Err(format!("not compiled in (cargo feature {})", name.as_str()));
    }
    backend::select(name).map_err(|e| format!("{e:#}"))
}

/// The host-side inputs every backend shares: the split, the training samples and the candidates.
struct Inputs {
    split: Split,
    /// Training samples for the longest run, in epoch order (cycled epochs when one is too short).
    pool: EpochSamples,
    /// The split with test items only for the evaluated users.
    eval_split: Split,
    candidates: SampledCandidates,
}

impl Inputs {
    fn build(plan: &Plan) -> Self {
        let split = shaped_split(plan.users, plan.items, plan.per_user.min(plan.items / 2).max(2), plan.seed);
        let pool = if plan.wants(Part::Train) { training_pool(&split.train, plan.items, plan.pool_samples(), plan.seed) } else { EpochSamples::default() };
        let test = UserItems::from_pairs(plan.users, (0..plan.eval_users as u32).flat_map(|u| split.test.items(u).iter().map(move |&i| (u, i))));
        let eval_split = Split { train: split.train.clone(), valid: None, test, n_items: split.n_items, method: split.method };
        let candidates = if plan.wants(Part::Eval) {
            SampledCandidates::draw(&eval_split, plan.eval_negatives, plan.seed)
        } else {
            SampledCandidates { user: Vec::new(), items: Vec::new(), negatives: plan.eval_negatives }
        };
        Self { split, pool, eval_split, candidates }
    }
}

/// At least `need` training samples (positives with 4 negatives each, shuffled as an epoch is).
/// When an epoch holds far more than needed, positives are thinned uniformly first, so batches mix
/// users and items as a real epoch does; the negatives then avoid only the kept positives, which
/// changes no timing.
fn training_pool(train: &UserItems, n_items: usize, need: usize, seed: u64) -> EpochSamples {
    let sampler_config = SamplerConfig::default();
    let per = 1 + sampler_config.negatives;
    let keep = ((need / per) as f64 * 1.2 + 1024.0) / train.nnz().max(1) as f64;
    let thinned;
    let source = if keep < 1.0 {
        let mut rng = rng::stream(seed, &[0xBE_4C11]);
        thinned = UserItems::from_pairs(train.n_users(), train.pairs().filter(|_| rng.random::<f64>() < keep));
        &thinned
    } else {
        train
    };
    let sampler = NegativeSampler::new(source, n_items, sampler_config, seed);
    let mut pool = EpochSamples::default();
    let mut epoch = 0;
    while pool.len() < need {
        let e = sampler.epoch(epoch);
        if e.is_empty() {
            break;
        }
        pool.user.extend_from_slice(&e.user);
        pool.item.extend_from_slice(&e.item);
        pool.label.extend_from_slice(&e.label);
        epoch += 1;
    }
    pool
}

fn slice(pool: &EpochSamples, start: usize, len: usize) -> EpochSamples {
    let end = (start + len).min(pool.len());
    EpochSamples { user: pool.user[start..end].to_vec(), item: pool.item[start..end].to_vec(), label: pool.label[start..end].to_vec() }
}

/// Training at one batch size on one or more catalogues: a fresh model per catalogue, warm-up
/// steps, then `reps` timed runs of the training loop `ncf train` uses (batches built on a
/// background thread), each ending with the loss read. With several catalogues the repetitions
/// take turns (the order reversed every other round), so that drift in the machine's speed meets
/// all of them alike and their ratio is the growth with the catalogue. `before_rep(c)` runs,
/// untimed, once per round for each catalogue `c`, before the round's timed runs (the PyTorch
/// peer's run, interleaved); when it ran something, each timed run's steps first run once
/// untimed, as the peer warms up in each of its runs: right after a peer that freed a gigabyte,
/// 3 warm-up steps left ncf's repetitions 15–18 % apart, a full repetition 5–8 %. One figure per
/// catalogue, in order.
fn measure_train(catalogues: &[(&Plan, &Inputs)], v: &Variant, batch: usize, device: &Device, before_rep: &mut dyn FnMut(usize) -> bool) -> Vec<Figure> {
    let mut runs: Vec<TrainRun> = catalogues.iter().map(|&(plan, inputs)| TrainRun::start(plan, v, batch, inputs, device)).collect();
    let reps = catalogues.first().map_or(0, |c| c.0.reps);
    for r in 0..reps {
        let order: Vec<usize> = if r % 2 == 0 { (0..runs.len()).collect() } else { (0..runs.len()).rev().collect() };
        // The round's peer runs first, then ncf's: every catalogue's repetition then meets the
        // aftermath of the same peer runs (the largest catalogue's leaves the most behind).
        let mut peer_ran = false;
        for &c in &order {
            peer_ran |= before_rep(c);
        }
        for &c in &order {
            runs[c].rep(r, peer_ran);
        }
    }
    let several = runs.len() > 1;
    runs.into_iter().map(|run| run.figure(several)).collect()
}

/// One catalogue's training measurement in progress ([`measure_train`]).
struct TrainRun<'a> {
    plan: &'a Plan,
    inputs: &'a Inputs,
    label: &'a str,
    device: &'a Device,
    batch: usize,
    steps: usize,
    /// `None` only while a run has it.
    model: Option<Ncf>,
    optim: Optimizer,
    times: Vec<f64>,
    /// Samples per timed run.
    work: usize,
}

impl<'a> TrainRun<'a> {
    /// A fresh model and optimizer, after the warm-up steps.
    fn start(plan: &'a Plan, v: &'a Variant, batch: usize, inputs: &'a Inputs, device: &'a Device) -> Self {
        let model = Ncf::init(&v.config, plan.users, plan.items, plan.seed, device);
        let optim = Optimizer::new(plan.optim.clone());
        let mut run = Self { plan, inputs, label: &v.label, device, batch, steps: plan.steps(batch), model: Some(model), optim, times: Vec::new(), work: 0 };
        run.steps_from(0, plan.warmup_steps);
        run
    }

    /// `n` steps on the pool's samples from step `start` on: (seconds, samples).
    fn steps_from(&mut self, start: usize, n: usize) -> (f64, usize) {
        let samples = slice(&self.inputs.pool, start * self.batch, n * self.batch);
        let model = self.model.take().expect("the model is back after every run");
        let bar = indicatif::ProgressBar::hidden();
        let t = Instant::now();
        let (model, _loss, _) = train::run_epoch(
            model,
            &mut self.optim,
            None,
            &samples,
            (self.batch, 1, LossKind::Bce),
            (None, None, 0),
            &Default::default(),
            usize::MAX,
            self.device,
            &bar,
        );
        let secs = t.elapsed().as_secs_f64();
        self.model = Some(model);
        (secs, samples.len())
    }

    /// Timed repetition `r`, its steps first run once untimed when `rewarm`.
    fn rep(&mut self, r: usize, rewarm: bool) {
        let start = self.plan.warmup_steps + r * self.steps;
        if rewarm {
            self.steps_from(start, self.steps);
        }
        let (secs, n) = self.steps_from(start, self.steps);
        self.times.push(secs);
        self.work = n;
    }

    /// The figure; it names its catalogue when the run measured `several`.
    fn figure(self, several: bool) -> Figure {
        let mut f = Figure::from_times(self.label, Measure::Train, Some(self.batch), self.work, self.steps, "samples/s", "ms/step", &self.times);
        f.items = several.then_some(self.plan.items);
        f
    }
}

/// Evaluation passes as `ncf train` runs them each epoch, candidates uploaded once beforehand.
fn measure_eval(plan: &Plan, v: &Variant, inputs: &Inputs, (device, host_top_k): (&Device, bool)) -> [Figure; 2] {
    let model = Ncf::init(&v.config, plan.users, plan.items, plan.seed, device);
    let reps = plan.reps.min(3);
    let sampled = SampledEval::upload(&inputs.candidates, v.config.layout().width(), device);
    let full = FullEval::upload(&inputs.eval_split.train, &inputs.eval_split.test, inputs.eval_split.n_items, &model, (plan.k, host_top_k), device);
    let users = inputs.candidates.rows();
    let time = |f: &dyn Fn()| {
        f(); // warm-up
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect::<Vec<f64>>()
    };
    let ts = time(&|| {
        std::hint::black_box(sampled.evaluate(&model, plan.k));
    });
    let tf = time(&|| {
        std::hint::black_box(full.evaluate(&model, plan.k, device));
    });
    [
        Figure::from_times(&v.label, Measure::EvalSampled, None, users, 1, "users/s", "ms/pass", &ts),
        Figure::from_times(&v.label, Measure::EvalFull, None, users, 1, "users/s", "ms/pass", &tf),
    ]
}

/// Recommend: top-k over all items for the first `recommend_users` users, training items masked,
/// scored in the chunks `ncf recommend` uses (CSV writing excluded).
fn measure_recommend(plan: &Plan, v: &Variant, selected: &backend::Selected, inputs: &Inputs) -> Figure {
    let model = Ncf::init(&v.config, plan.users, plan.items, plan.seed, &selected.device);
    let k = plan.k.min(plan.items);
    let scorer = recommend::Scorer::new(&model, &inputs.split.train, &selected.device, None, false, selected.host_memory(), k);
    let chunk = scorer.chunk;
    let users: Vec<u32> = (0..plan.recommend_users as u32).collect();
    let pass = |ids: &[u32]| {
        let mut n = 0;
        for c in ids.chunks(chunk) {
            n += scorer.scores(c).map_or(0, |s| scorer.select(s, true).len());
        }
        n
    };
    pass(&users[..chunk.min(users.len())]); // warm-up
    let times: Vec<f64> = (0..plan.reps.min(3))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(pass(&users));
            t.elapsed().as_secs_f64()
        })
        .collect();
    Figure::from_times(&v.label, Measure::Recommend, None, users.len(), 1, "users/s", "ms/pass", &times)
}

/// The PyTorch peer's command line.
struct Peer {
    python: PathBuf,
    script: PathBuf,
    device: String,
    /// OMP_NUM_THREADS / MKL_NUM_THREADS for the peer, when set.
    threads: Option<usize>,
}

impl Peer {
    /// Runs one peer measurement: (samples/s, ms/step).
    fn run(&self, batch: usize, steps: usize, users: usize, items: usize) -> Result<(f64, f64)> {
        let mut cmd = std::process::Command::new(&self.python);
        if let Some(n) = self.threads {
            cmd.env("OMP_NUM_THREADS", n.to_string()).env("MKL_NUM_THREADS", n.to_string());
        }
        let out = cmd
            .arg(&self.script)
            .args([batch.to_string(), steps.to_string(), self.device.clone(), users.to_string(), items.to_string()])
            .output()
            .with_context(|| format!("running {}", self.python.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            bail!("{} {} failed: {last}", self.python.display(), self.script.display());
        }
        parse_peer_line(&stdout).with_context(|| format!("no 'samples/s (… ms/step)' in the peer's output: {stdout:?}"))
    }
}

/// `… 123456 samples/s (2.074 ms/step) …` → (123456, 2.074).
pub fn parse_peer_line(text: &str) -> Option<(f64, f64)> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let at = tokens.iter().position(|t| *t == "samples/s")?;
    let rate = tokens.get(at.checked_sub(1)?)?.parse().ok()?;
    let ms = tokens.get(at + 1)?.trim_start_matches('(').parse().ok()?;
    Some((rate, ms))
}

/// The peer's report before any figure: says so up front when no variant has the peer's shape.
fn peer_report(plan: &Plan, peer: &Peer) -> PeerReport {
    let matches = plan.variants.iter().any(|v| v.measures.contains(&Part::Train) && v.config == paper_shape(ModelKind::Neumf));
    PeerReport {
        script: peer.script.display().to_string(),
        python: peer.python.display().to_string(),
        device: format!("torch-{}", peer.device),
        threads: peer.threads,
        shape: "NeuMF factor 8, MLP [64, 32, 16, 8], BCE, dense Adam (torch.optim.Adam), uniform random batches".into(),
        figures: Vec::new(),
        error: (!matches).then(|| "no factor-8 NeuMF training in this run; the peer supports only that shape".into()),
    }
}

/// The peer's runs at one batch and catalogue, one in each round of ncf's timed runs
/// ([`measure_train`]), so that both sides meet the same machine load as it drifts (this VM's
/// speed wanders by 10–30 % within minutes).
struct PeerRuns<'a> {
    peer: &'a Peer,
    batch: usize,
    steps: usize,
    users: usize,
    items: usize,
    runs: Vec<(f64, f64)>,
    error: Option<String>,
}

impl<'a> PeerRuns<'a> {
    /// `None` once the peer's figure at `batch` on `plan`'s catalogue is recorded or the peer has
    /// failed.
    fn new(plan: &Plan, peer: &'a Peer, report: &PeerReport, batch: usize) -> Option<Self> {
        let pending = report.error.is_none() && !report.figures.iter().any(|f| f.batch == batch && f.items == plan.items);
        pending.then(|| Self { peer, batch, steps: plan.steps(batch).max(5), users: plan.users, items: plan.items, runs: Vec::new(), error: None })
    }

    /// One peer run; after a failure, nothing. Whether it ran.
    fn run_once(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        match self.peer.run(self.batch, self.steps, self.users, self.items) {
            Ok(r) => self.runs.push(r),
            Err(e) => {
                eprintln!("peer: {e:#}");
                self.error = Some(format!("{e:#}"));
            }
        }
        true
    }

    /// Records the figure (or the failure) in `report` and prints the peer's row, naming the
    /// catalogue when the run measured `several`.
    fn finish(self, report: &mut PeerReport, several: bool) {
        if let Some(e) = self.error {
            report.error = Some(e);
            return;
        }
        if self.runs.is_empty() {
            return;
        }
        let mut rates: Vec<f64> = self.runs.iter().map(|r| r.0).collect();
        let mut ms: Vec<f64> = self.runs.iter().map(|r| r.1).collect();
        let (median, min, max) = bench_report::stats(&mut rates);
        let (ms_median, _, _) = bench_report::stats(&mut ms);
        let (batch, items) = (self.batch, self.items);
        let what = bench_report::train_what(batch, several.then_some(items));
        println!("{:<8} {:<10} {what:<20} {median:>12.0} {:<10}          {ms_median:>10.3} ms/step", report.device, "neumf-f8", "samples/s");
        report.figures.push(PeerFigure { batch, steps: self.steps, users: self.users, items, reps: rates, median, min, max, ms_median });
    }
}

pub fn run(job: &BenchJob) -> Result<()> {
    if job.models.contains(&ModelKind::Ease) {
        anyhow::bail!(
            "--models ease: ncf bench times training steps and scoring of the NCF models; EASE has no steps (ncf train fits it in closed form and prints the time)"
        );
    }
    let plan = plan(job)?;
    let default_backends = if job.suite == Some(Suite::Gpu) { "wgpu,cuda" } else { "all-available" };
    let spec = job.backends.as_deref().unwrap_or(default_backends);
    let backends = parse_backends(spec)?;
    let all_available = spec.trim() == "all-available";
    let out_dir = job.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/bench-{}", workload_name(plan.workload))));
    let peer_script: Vec<&Path> = job.torch_peer.as_deref().into_iter().collect();
    output::claim_dir(&out_dir, DirKind::Bench, &["bench.json", "bench.png", output::MARKER], &peer_script, job.force)?;
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    output::mark(&out_dir, DirKind::Bench)?;

    let t = Instant::now();
    // Training at further catalogues (`--items A,B,…`) gets its own data of the same shape.
    let catalogue_plans: Vec<Plan> = plan.catalogues.iter().skip(1).map(|&n| plan.at_items(n)).collect();
    let inputs = Inputs::build(&plan);
    let catalogue_inputs: Vec<Inputs> = catalogue_plans.iter().map(Inputs::build).collect();
    let catalogues: Vec<(&Plan, &Inputs)> = std::iter::once((&plan, &inputs)).chain(catalogue_plans.iter().zip(&catalogue_inputs)).collect();
    let interactions = |i: &Inputs| i.split.train.nnz() + i.split.test.nnz();
    let listed = |f: &dyn Fn(&(&Plan, &Inputs)) -> usize| catalogues.iter().map(|c| f(c).to_string()).collect::<Vec<_>>().join(" and ");
    let (items, counts) = (listed(&|c| c.0.items), listed(&|c| interactions(c.1)));
    println!(
        "bench: workload {} — {} users × {items} items, {counts} synthetic interactions (built in {:.1}s); {} reps after warm-up, median and min–max",
        workload_name(plan.workload),
        plan.users,
        t.elapsed().as_secs_f64(),
        plan.reps
    );

    let peer_cmd = job.torch_peer.as_ref().map(|script| {
        let python = job.python.clone().or_else(|| std::env::var_os("PYTHON").map(PathBuf::from)).unwrap_or_else(|| "python3".into());
        Peer { python, script: script.clone(), device: job.torch_device.clone(), threads: job.torch_threads }
    });
    let mut peer = peer_cmd.as_ref().map(|p| peer_report(&plan, p));

    let mut reports = Vec::new();
    let mut failures = 0;
    println!("{}", bench_report::header());
    for name in backends {
        let selected = match open(name) {
            Ok(s) => s,
            Err(reason) => {
                println!("{:<8} not available: {reason}", name.as_str());
                reports.push(BackendReport { name: name.as_str().into(), available: false, reason, adapter: None, figures: Vec::new(), failure: None });
                continue;
            }
        };
        if all_available && selected.software_adapter() {
            // As `--backend auto`: a software adapter runs, slowly, only when named.
            let reason = format!("skipped: software adapter {} (name it in --backends to measure it)", selected.adapter);
            println!("{:<8} {reason}", name.as_str());
            reports.push(BackendReport {
                name: name.as_str().into(),
                available: false,
                reason,
                adapter: Some(selected.adapter.clone()),
                figures: Vec::new(),
                failure: None,
            });
            continue;
        }
        println!("{}", selected.line());
        let mut figures = Vec::new();
        let emit = |f: Figure, figures: &mut Vec<Figure>| {
            println!("{}", bench_report::row(selected.name.as_str(), &f));
            figures.push(f);
        };
        let mut failure = None;
        'variants: for v in &plan.variants {
            let paper = v.config == paper_shape(ModelKind::Neumf);
            // A device failure (e.g. a buffer larger than the adapter allows) becomes a recorded
            // failure of this backend instead of aborting the other backends' figures.
            let mut guarded = |what: String, f: &mut dyn FnMut() -> Vec<Figure>| match catch(f) {
                Ok(fs) => Some(fs),
                Err(msg) => {
                    let msg = format!("{} {what} failed: {msg}", v.label);
                    println!("{:<8} {msg}", name.as_str());
                    failure = Some(msg);
                    None
                }
            };
            if v.measures.contains(&Part::Train) {
                for &batch in &plan.batches {
                    let mut peer_runs: Vec<Option<PeerRuns>> = catalogues
                        .iter()
                        .map(|&(plan, _)| match (paper, &peer_cmd, &peer) {
                            (true, Some(cmd), Some(report)) => PeerRuns::new(plan, cmd, report, batch),
                            _ => None,
                        })
                        .collect();
                    let mut before_rep = |c: usize| peer_runs[c].as_mut().is_some_and(PeerRuns::run_once);
                    let measured = guarded(format!("train b={batch}"), &mut || measure_train(&catalogues, v, batch, &selected.device, &mut before_rep));
                    if let Some(report) = peer.as_mut() {
                        peer_runs.into_iter().flatten().for_each(|p| p.finish(report, catalogues.len() > 1));
                    }
                    let Some(mut fs) = measured else { break 'variants };
                    if let (true, Some(report)) = (paper, &peer) {
                        fs.iter_mut().for_each(|f| f.attach_peer(report));
                    }
                    fs.into_iter().for_each(|f| emit(f, &mut figures));
                }
            }
            if v.measures.contains(&Part::Eval) {
                let Some(fs) = guarded("eval".into(), &mut || measure_eval(&plan, v, &inputs, (&selected.device, selected.host_memory())).to_vec()) else {
                    break 'variants;
                };
                fs.into_iter().for_each(|f| emit(f, &mut figures));
            }
            if v.measures.contains(&Part::Recommend) {
                let Some(fs) = guarded("recommend".into(), &mut || vec![measure_recommend(&plan, v, &selected, &inputs)]) else { break 'variants };
                fs.into_iter().for_each(|f| emit(f, &mut figures));
            }
        }
        failures += failure.is_some() as usize;
        reports.push(BackendReport {
            name: name.as_str().into(),
            available: true,
            reason: selected.reason.clone(),
            adapter: Some(selected.adapter.clone()),
            figures,
            failure,
        });
    }
    if let Some(peer) = &peer {
        for line in bench_report::peer_lines(peer, &reports) {
            println!("{line}");
        }
    }
    for line in bench_report::growth_lines(&reports, peer.as_ref()) {
        println!("{line}");
    }

    let report = Report::new(
        WorkloadInfo {
            name: workload_name(plan.workload).into(),
            users: plan.users,
            items: plan.items,
            catalogues: plan.catalogues.clone(),
            interactions: interactions(&inputs),
            batches: plan.batches.clone(),
            reps: plan.reps,
            warmup_steps: plan.warmup_steps,
            eval_users: plan.eval_users,
            eval_negatives: plan.eval_negatives,
            recommend_users: plan.recommend_users,
            k: plan.k,
            optimizer: match (plan.optim.sparse, plan.optim.fused) {
                (true, true) => "adam, row-sparse (lazy) tables, fused row kernels and head pass where the backend has them".into(),
                (true, false) => "adam, row-sparse (lazy) tables, composed burn ops and autodiff".into(),
                (false, _) => "adam, dense tables".into(),
            },
            variants: plan
                .variants
                .iter()
                .map(|v| VariantInfo { label: v.label.clone(), kind: v.config.kind.name().into(), factors: v.config.factors, layers: v.config.layers.clone() })
                .collect(),
        },
        reports,
        peer,
    );
    let json = out_dir.join("bench.json");
    bench_report::write_json(&json, &report)?;
    let png = out_dir.join("bench.png");
    bench_report::write_chart(&png, &report)?;
    println!("wrote {} and {}", json.display(), png.display());
    if failures > 0 {
        bail!("{failures} backend(s) failed part of the run (their `failure` in {})", json.display());
    }
    Ok(())
}

/// Runs `f`, turning a panic (burn reports device failures by panicking) into its message.
fn catch(f: &mut dyn FnMut() -> Vec<Figure>) -> std::result::Result<Vec<Figure>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let msg = e.downcast_ref::<String>().map(String::as_str).or_else(|| e.downcast_ref::<&str>().copied()).unwrap_or("panic");
        // burn's device errors list every skipped kernel; keep the causes.
        let keep = |l: &&str| {
            !l.trim().is_empty()
                && !l.trim_start().starts_with("skipped `")
                && !l.starts_with("Caused by")
                && !l.starts_with("No backtrace")
                && !l.starts_with("Asked at")
        };
        msg.lines().filter(keep).map(str::trim).take(8).collect::<Vec<_>>().join(" | ")
    })
}

pub fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Small => "small",
        Workload::Ml1m => "ml-1m",
        Workload::Ml20m => "ml-20m",
    }
}

/// A user count: a number or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub usize);

impl std::str::FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(Self(usize::MAX));
        }
        s.parse().map(Self).map_err(|_| format!("{s:?}: expected a number or `all`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_reject_auto() {
        assert_eq!(parse_backends("flex, wgpu").unwrap(), vec![BackendName::Flex, BackendName::Wgpu]);
        assert_eq!(parse_backends("all-available").unwrap().len(), 4);
        assert!(parse_backends("auto").is_err());
        assert!(parse_backends("tpu").is_err());
        assert!(parse_backends(",").is_err());
    }

    #[test]
    fn missing_features_are_named() {
        if !cfg!(feature = "ndarray") {
            assert_eq!(open(BackendName::Ndarray).unwrap_err(), "not compiled in (cargo feature ndarray)");
        }
        if !cfg!(feature = "cuda") {
            assert_eq!(open(BackendName::Cuda).unwrap_err(), "not compiled in (cargo feature cuda)");
        }
    }

    #[test]
    fn peer_output_parses() {
        let line = "torch-cpu   users 6040 items 3706 batch    256 steps   100: 123456 samples/s (2.074 ms/step) loss 0.5012\n";
        assert_eq!(parse_peer_line(line), Some((123456.0, 2.074)));
        assert_eq!(parse_peer_line("nothing here"), None);
    }

    #[test]
    fn pool_covers_every_step_and_thins_large_epochs() {
        let split = shaped_split(300, 500, 40, 1);
        let pool = training_pool(&split.train, 500, 5000, 1);
        assert!(pool.len() >= 5000, "{}", pool.len());
        assert!(pool.len() < split.train.nnz() * 5, "thinned: {} of {}", pool.len(), split.train.nnz() * 5);
        let users: std::collections::HashSet<u32> = pool.user[..5000].iter().copied().collect();
        assert!(users.len() > 250, "positives spread over users: {}", users.len());
        let big = training_pool(&split.train, 500, split.train.nnz() * 5 * 2 + 7, 1);
        assert!(big.len() >= split.train.nnz() * 10 + 7, "cycles epochs");
    }
}

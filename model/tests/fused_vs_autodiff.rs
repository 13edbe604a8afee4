//! The step's two routes against each other over the configuration space. The fused flex pass
//! (`ncf_model::head_grad`) is a second copy of the model's math beside autodiff's
//! (`Head::forward_rows` and the losses); `head_grad::supports` is the one gate between them.
//!
//! Cases come from an explicit product: models (kinds × factors × tower depths and widths ×
//! which layers have biases) × losses (BCE, BPR in groups of 2, 5 and 65) × batch shapes (1 to
//! 2145 samples, users and items each distinct or repeated). Where the gate lets the fused pass
//! in, one SGD step along each route from the same weights must give the same loss and the same
//! updated weights up to f32 rounding (see [`RTOL`]). The knobs it refuses (dropout, cosine,
//! history, the losses over shared negatives with their options) are enumerated too: those
//! steps must train through autodiff with the fused pass not run. Run with `--nocapture` for the
//! counts.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ncf_model::{LossConfig, LossKind, ModelConfig, ModelKind, Ncf, OptimConfig, OptimKind, Optimizer, StepInput, head_grad, train_step};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// Tolerance on the loss and on each tensor's updates, relative to the loss and to the tensor's
/// largest autodiff update. The routes sum in other orders and the fused one contracts
/// multiply-adds, so a value may differ by rounding, a few ε (1.2e-7) per term of its longest
/// sum (at most 2145 samples here); 2e-5 is ~170 ε, and a model computed differently (a bias
/// dropped, another activation) moves values by far more.
const RTOL: f32 = 2e-5;

/// Rounding a gradient may carry besides [`RTOL`], in ε per unit of the sizes of the terms
/// summed into it (the loss's gradients at the samples that touch it, times the logit's partial
/// derivatives, O(1) on the grid): a value zero but for rounding (BPR's loss is the same for any
/// shift of a group's logits, so e.g. a bias feeding every sample alike gets none) has no scale
/// of its own to be compared at.
const SUMS: f32 = 64.0;

/// SGD's learning rate: large, so an update outweighs the weight it is added to and the
/// rounding of storing `w - lr·g` (≤ ε·|w|, allowed for on top of [`RTOL`]) stays small beside
/// the update.
const LR: f64 = 1e3;

/// Every weight and embedding lies on this grid (multiples of 1/16): each pre-activation of the
/// tower (at most 4 layers) is then a sum the routes compute exactly in any order, so no ReLU
/// falls on different sides of zero along the two routes by rounding (which would change that
/// unit's gradient wholesale), and differences beyond rounding are the model's.
const GRID: f32 = 16.0;

/// Which dense layers (MLP layers, then the output layer) keep their bias. `Ncf::init` gives
/// every layer one; the fused pass also takes layers without.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Biases {
    All,
    None,
    /// Even-numbered layers only.
    Alternate,
}

/// Where a batch's users and items come from.
#[derive(Debug, Clone, Copy)]
enum Pool {
    /// Every sample (every BPR group) its own user, every sample its own item.
    Distinct,
    /// 3 users and 5 items: each repeated within the batch.
    Few,
}

#[derive(Debug, Clone)]
struct Case {
    model: ModelConfig,
    biases: Biases,
    loss: LossKind,
    /// BPR's group (a positive and its negatives); 1 otherwise.
    group: usize,
    samples: usize,
    pool: Pool,
    /// Shared negatives, with the loss settings over them.
    shared: Option<LossConfig>,
}

/// MLP towers (`model.layers`): depths 1 to 4 in three width patterns: odd narrow widths (the
/// fused pass's general loops), its register-blocked widths 8/16/32/64, and widths that grow
/// and shrink down to one.
fn towers() -> Vec<Vec<usize>> {
    let patterns: [&[usize]; 3] = [&[10, 7, 5, 3, 1], &[64, 32, 16, 8, 16], &[2, 8, 3, 32, 1]];
    patterns.iter().flat_map(|p| (2..=p.len()).map(|n| p[..n].to_vec())).collect()
}

/// Every model kind × factors × tower, with the knobs given. Every `ModelConfig` field is named:
/// one added stops this compiling until the cases cover it. (`init_std` shapes no part of the
/// head's math, and [`model`] draws the tables anew.)
fn models(dropout: f64, cosine: bool, history: f64) -> Vec<ModelConfig> {
    let mut out = Vec::new();
    for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::Neumf, ModelKind::Mf] {
        // MLP has no factors; GMF and MF no tower.
        let factors: &[usize] = if kind == ModelKind::Mlp { &[8] } else { &[1, 5, 8] };
        let towers = if matches!(kind, ModelKind::Mlp | ModelKind::Neumf) { towers() } else { vec![Vec::new()] };
        for &factors in factors {
            for layers in &towers {
                // id_embeddings decides which tables the step updates, not the head's math (the
                // pass sees the rows it is given, side features already added): not an axis.
                // ease_lambda belongs to EASE, which has no step (`head_grad::supports` refuses it).
                out.push(ModelConfig { kind, factors, layers: layers.clone(), init_std: 0.5, dropout, cosine, history, id_embeddings: true, ease_lambda: 0.0 });
            }
        }
    }
    out
}

/// Loss settings over shared negatives. Every `LossConfig` field is named, as in [`models`].
fn loss_config(temperature: f64, margin: f64, in_batch: bool, logq: bool) -> LossConfig {
    LossConfig { temperature, margin, negative_weight: 2.0, in_batch, logq }
}

/// The cases the fused pass takes: every model without the refused knobs × biases × BCE and BPR
/// × batch shapes.
fn fused_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for model in models(0.0, false, 0.0) {
        let biases: &[Biases] = match model.kind {
            ModelKind::Mf => &[Biases::All],
            ModelKind::Gmf => &[Biases::All, Biases::None],
            ModelKind::Mlp | ModelKind::Neumf => &[Biases::All, Biases::None, Biases::Alternate],
            ModelKind::Ease => unreachable!("models() has no EASE: it has no training step"),
        };
        for &biases in biases {
            for (loss, group) in [(LossKind::Bce, 1), (LossKind::Bpr, 2), (LossKind::Bpr, 5), (LossKind::Bpr, 65)] {
                // Samples for BCE (one, a partial chunk of 64, a whole one, one past it); groups
                // for BPR (65 is a group larger than a chunk).
                let counts: &[usize] = if loss == LossKind::Bce { &[1, 2, 7, 64, 65, 200] } else { &[1, 3, 14] };
                let case = |samples, pool| Case { model: model.clone(), biases, loss, group, samples, pool, shared: None };
                for &n in counts {
                    out.extend([case(n * group, Pool::Distinct), case(n * group, Pool::Few)]);
                }
                // Over 2048 unique rows (users and items): the first layer's work is shared with
                // a second thread.
                if biases == Biases::All {
                    out.push(case(2100usize.div_ceil(group) * group, Pool::Distinct));
                }
            }
        }
    }
    out
}

/// The cases the fused pass refuses: every model with dropout, by cosine, or with history
/// (under BCE and BPR), and under every loss over shared negatives with its options.
fn refused_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let case =
        |model: &ModelConfig, loss, group, shared| Case { model: model.clone(), biases: Biases::All, loss, group, samples: 6 * group, pool: Pool::Few, shared };
    for model in [models(0.3, false, 0.0), models(0.0, true, 0.0), models(0.0, false, 0.5)].concat() {
        out.extend([case(&model, LossKind::Bce, 1, None), case(&model, LossKind::Bpr, 2, None)]);
    }
    for model in models(0.0, false, 0.0) {
        for (in_batch, logq) in [(true, true), (true, false), (false, true), (false, false)] {
            out.push(case(&model, LossKind::Softmax, 1, Some(loss_config(0.2, 0.4, in_batch, logq))));
        }
        for in_batch in [true, false] {
            out.push(case(&model, LossKind::Ccl, 1, Some(loss_config(0.1, 0.1, in_batch, false))));
        }
        for loss in [LossKind::Bce, LossKind::Bpr] {
            out.push(case(&model, loss, 1, Some(loss_config(0.1, 0.4, true, false))));
        }
    }
    out
}

fn grid(x: f32) -> f32 {
    (x * GRID).round() / GRID
}

/// Moves every parameter onto [`GRID`].
struct OntoGrid;

impl ModuleMapper for OntoGrid {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let (shape, device) = (t.shape(), t.device());
            let v: Vec<f32> = t.into_data().try_into_vec_as::<f32>().unwrap().into_iter().map(grid).collect();
            Tensor::from_data(TensorData::new(v, shape), &device)
        })
    }
}

/// A case's batch on the host: per sample its user and item (table rows) and label; the shared
/// negatives; per table user its history items; the tables' sizes.
struct Batch {
    user: Vec<usize>,
    item: Vec<usize>,
    label: Vec<i32>,
    negatives: Vec<usize>,
    history: Vec<Vec<usize>>,
    n_users: usize,
    n_items: usize,
}

fn batch(case: &Case, rng: &mut Xoshiro256PlusPlus) -> Batch {
    let (b, g) = (case.samples, case.group);
    let (pool_users, pool_items) = match case.pool {
        Pool::Distinct => (b / g, b),
        Pool::Few => (3, 5),
    };
    // Two rows of each table the batch never touches.
    let (n_users, n_items) = (pool_users + 2, pool_items + 2);
    // A BPR group's samples share their user.
    let user: Vec<usize> = match case.pool {
        Pool::Distinct => (0..b).map(|k| k / g).collect(),
        Pool::Few => (0..b / g).flat_map(|_| std::iter::repeat_n(rng.random_range(0..pool_users), g)).collect(),
    };
    let item: Vec<usize> = match case.pool {
        Pool::Distinct => {
            let mut order: Vec<usize> = (0..b).collect();
            for k in (1..b).rev() {
                order.swap(k, rng.random_range(0..=k));
            }
            order
        }
        Pool::Few => (0..b).map(|_| rng.random_range(0..pool_items)).collect(),
    };
    let label = (0..b).map(|k| if case.loss == LossKind::Bpr { (k % g == 0) as i32 } else { rng.random_bool(0.3) as i32 }).collect();
    let negatives = if case.shared.is_some() { (0..3).map(|_| rng.random_range(0..pool_items)).collect() } else { Vec::new() };
    // Up to 3 history items per user, some users none.
    let history = (0..n_users).map(|_| (0..rng.random_range(0..4)).map(|_| rng.random_range(0..pool_items)).collect()).collect();
    Batch { user, item, label, negatives, history, n_users, n_items }
}

/// First-seen positions of `ids` among the unique ones, appended to `rows`.
fn positions(ids: &[usize], rows: &mut Vec<usize>, seen: &mut HashMap<usize, usize>) -> Vec<i32> {
    ids.iter()
        .map(|&id| {
            *seen.entry(id).or_insert_with(|| {
                rows.push(id);
                rows.len() - 1
            }) as i32
        })
        .collect()
}

/// The batch as the trainer packs it (`StepInput::from_packed`'s layout).
fn pack(case: &Case, x: &Batch, d: &Device) -> StepInput {
    let (mut users, mut items) = (Vec::new(), Vec::new());
    let (mut seen_users, mut seen_items) = (HashMap::new(), HashMap::new());
    let user_pos = positions(&x.user, &mut users, &mut seen_users);
    let item_pos = positions(&x.item, &mut items, &mut seen_items);
    let neg_pos = positions(&x.negatives, &mut items, &mut seen_items);
    let mut hist = [Vec::new(), Vec::new(), Vec::new()];
    let with_history = case.model.history > 0.0;
    if with_history {
        for (k, &u) in users.clone().iter().enumerate() {
            let entries = positions(&x.history[u], &mut items, &mut seen_items);
            hist[1].extend(std::iter::repeat_n(k as i32, entries.len()));
            hist[2].push(entries.len() as i32);
            hist[0].extend(entries);
        }
    }
    let ints = |v: &[usize]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
    let packed: Vec<i32> = [ints(&users), user_pos, ints(&items), item_pos, x.label.clone(), neg_pos, hist.concat()].concat();
    let n = packed.len();
    let log_probs = |rng: &mut Xoshiro256PlusPlus| {
        let v: Vec<f32> = (0..x.n_items).map(|_| rng.random_range(-5.0f32..-1.0)).collect();
        Tensor::<1>::from_data(TensorData::new(v, [x.n_items]), d)
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(x.n_items as u64);
    let shared = case.shared.clone().map(|c| {
        let logq = c.logq.then(|| (log_probs(&mut rng), log_probs(&mut rng)));
        (c, logq)
    });
    let input = Tensor::<1, Int>::from_data(TensorData::new(packed, [n]), d);
    StepInput::from_packed(input, (users.len(), items.len(), x.user.len()), shared, with_history.then_some(hist[0].len()))
}

/// The case's model: [`ModelConfig`] through `Ncf::init`, its biases as the case says, its tables
/// drawn afresh (every column, MF's biases too, which `Ncf::init` starts at zero) and every
/// value on [`GRID`].
fn model(case: &Case, x: &Batch, rng: &mut Xoshiro256PlusPlus, d: &Device) -> Ncf {
    case.model.validate().unwrap();
    let mut m = Ncf::init(&case.model, x.n_users, x.n_items, rng.random(), d);
    let keep = |k: usize| match case.biases {
        Biases::All => true,
        Biases::None => false,
        Biases::Alternate => k.is_multiple_of(2),
    };
    let Ncf { user, item, head, .. } = &mut m;
    for (k, layer) in head.mlp.iter_mut().chain(head.output.as_mut()).enumerate() {
        if !keep(k) {
            layer.bias = None;
        }
    }
    for table in [user, item] {
        let [n, w] = table.dims();
        let v: Vec<f32> = (0..n * w).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        *table = Param::from_tensor(Tensor::from_data(TensorData::new(v, [n, w]), d));
    }
    m.map(&mut OntoGrid)
}

/// Every parameter's values: the tables, then the head's in visit order.
fn values(m: &Ncf) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.val().into_data().try_into_vec_as::<f32>().unwrap());
        }
    }
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

/// One step's results.
struct Outcome {
    loss: f32,
    params: Vec<Vec<f32>>,
    /// Whether the step ran the fused pass.
    fused: bool,
}

/// One SGD step of `model` on the case's batch, `optim.fused` as given.
fn step(case: &Case, model: &Ncf, x: &Batch, fused: bool, d: &Device) -> Outcome {
    let mut optim = Optimizer::new(OptimConfig { kind: OptimKind::Sgd, lr: LR, fused, ..Default::default() });
    let before = head_grad::passes_on_this_thread();
    // Dropout's masks: the same on both routes.
    d.seed(7);
    let (m, loss) = train_step(model.clone(), &mut optim, pack(case, x, d), case.loss, case.group);
    let loss = loss.into_scalar::<f32>();
    Outcome { loss, params: values(&m), fused: head_grad::passes_on_this_thread() > before }
}

/// `|fused - autodiff|` as a fraction of its allowance, at worst over a tensor: [`RTOL`] of the
/// tensor's largest autodiff value plus `floor(j)` for value `j`; at most 1 passes.
fn excess(fused: &[f32], autodiff: &[f32], floor: impl Fn(usize) -> f32) -> f32 {
    let scale = autodiff.iter().fold(0f32, |s, x| s.max(x.abs()));
    let excess = |j: usize| {
        let d = (fused[j] - autodiff[j]).abs();
        if d == 0.0 { 0.0 } else { d / (RTOL * scale + floor(j)) }
    };
    (0..fused.len()).map(excess).fold(0f32, f32::max)
}

/// A case's batch and model, from its seed.
fn setup(case: &Case, seed: u64, d: &Device) -> (Batch, Ncf) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let x = batch(case, &mut rng);
    let m = model(case, &x, &mut rng, d);
    (x, m)
}

/// Compares the two routes on a case the gate lets in; returns the largest excess.
fn compare(case: &Case, x: &Batch, m: &Ncf, d: &Device) -> f32 {
    let start = values(m);
    let (fused, autodiff) = (step(case, m, x, true, d), step(case, m, x, false, d));
    assert!(fused.fused && !autodiff.fused, "{case:?}: the gate lets it in, so optim.fused runs the fused pass and only it");
    let mut worst = excess(&[fused.loss], &[autodiff.loss], |_| 0.0);
    assert!(worst <= 1.0, "{case:?}: loss {} fused vs {} autodiff", fused.loss, autodiff.loss);
    assert_eq!(fused.params.len(), autodiff.params.len(), "{case:?}: parameter count");
    // Sizes of the loss's gradients summed into each value: per sample at most group/batch
    // (1/batch for BCE; BPR's positive g/b, its negatives 1/pairs), and at most 2 in all.
    let per_sample = case.group as f32 / case.samples as f32;
    let terms = |count: usize| (count as f32 * per_sample).min(2.0);
    let count = |ids: &[usize], rows: usize| (0..rows).map(|r| terms(ids.iter().filter(|&&i| i == r).count())).collect::<Vec<f32>>();
    let rows = [count(&x.user, x.n_users), count(&x.item, x.n_items)];
    for (k, ((w0, a), b)) in start.iter().zip(&fused.params).zip(&autodiff.params).enumerate() {
        let update = |w: &[f32]| w.iter().zip(w0).map(|(w, w0)| w - w0).collect::<Vec<f32>>();
        let (ua, ub) = (update(a), update(b));
        // Storing each updated weight rounds it by ε·|w| on each route.
        let slack = 4.0 * f32::EPSILON * w0.iter().chain(a).chain(b).fold(0f32, |s, x| s.max(x.abs()));
        // A table's row gathers its samples' terms; a head parameter every sample's.
        let floor = |j: usize| SUMS * f32::EPSILON * LR as f32 * rows.get(k).map_or(terms(case.samples), |t| t[j * t.len() / w0.len()]) + slack;
        let e = excess(&ua, &ub, floor);
        if e > 1.0 {
            let at = (0..ua.len()).max_by(|&p, &q| (ua[p] - ub[p]).abs().total_cmp(&(ua[q] - ub[q]).abs())).unwrap_or(0);
            panic!(
                "{case:?}: parameter {k} (0 user table, 1 item table, then the head's) update [{at}]: fused {} vs autodiff {} ({e}× the tolerance)",
                ua[at], ub[at]
            );
        }
        worst = worst.max(e);
    }
    worst
}

/// Runs a case the gate refuses along both settings of `optim.fused`.
fn refused(case: &Case, x: &Batch, m: &Ncf, why: &str, d: &Device) {
    let (asked, plain) = (step(case, m, x, true, d), step(case, m, x, false, d));
    assert!(!asked.fused && !plain.fused, "{case:?}: refused ({why}) yet the fused pass ran");
    assert!(asked.loss.is_finite() && asked.params.iter().flatten().all(|v| v.is_finite()), "{case:?}: the autodiff step trains");
    // Both are the autodiff step: the same loss to the bit.
    assert_eq!(asked.loss.to_bits(), plain.loss.to_bits(), "{case:?}");
}

#[test]
fn the_fused_pass_equals_autodiff_wherever_the_gate_lets_it_in() {
    let d = Device::flex();
    let (fused, refusing) = (fused_cases(), refused_cases());
    let mut worst = 0f32;
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (seed, case) in fused.iter().chain(&refusing).enumerate() {
        let (x, m) = setup(case, seed as u64, &d);
        let gate = head_grad::supports(&m.head, &pack(case, &x, &d), case.loss, case.group);
        match (gate, seed < fused.len()) {
            (Ok(()), true) => worst = worst.max(compare(case, &x, &m, &d)),
            (Err(why), false) => {
                refused(case, &x, &m, why, &d);
                *reasons.entry(why).or_default() += 1;
            }
            (Ok(()), false) => panic!("{case:?}: the gate lets in a knob the fused pass does not implement"),
            (Err(why), true) => panic!("{case:?}: refused ({why}), but the fused pass implements it"),
        }
    }
    println!(
        "fused vs autodiff: {} configurations compared (largest difference {worst:.3} of the tolerance); {} refused and trained by autodiff: {reasons:?}",
        fused.len(),
        refusing.len()
    );
    // Each refused knob the cases enumerate is refused for its own reason.
    assert_eq!(reasons.len(), 5, "{reasons:?}");
}

/// Inputs neither route trains: BPR over a partial group (the step refuses it with a message on
/// both settings of `optim.fused`), and a head whose layers do not fit its layout (the gate
/// refuses it).
#[test]
fn malformed_steps_are_refused_on_both_routes() {
    let d = Device::flex();
    let case = fused_cases().into_iter().find(|c| c.model.kind == ModelKind::Neumf && c.loss == LossKind::Bpr && c.group == 5).unwrap();
    let (x, m) = setup(&case, 1, &d);
    let mut misfit = m.clone();
    misfit.head.mlp.pop();
    assert!(head_grad::supports(&misfit.head, &pack(&case, &x, &d), case.loss, case.group).unwrap_err().contains("do not fit"));
    // One sample short of whole groups.
    let (mut short, mut y) = (case.clone(), setup(&case, 1, &d).0);
    short.samples -= 1;
    y.user.pop();
    y.item.pop();
    y.label.pop();
    assert!(head_grad::supports(&m.head, &pack(&short, &y, &d), short.loss, short.group).unwrap_err().contains("partial group"));
    for fused in [true, false] {
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(&short, &m, &y, fused, &d))).err().expect("refused");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("whole groups"), "optim.fused = {fused}: {message}");
    }
}

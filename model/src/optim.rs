//! Optimizers for the two kinds of parameters: the dense head (updated whole) and the
//! embedding tables (updated only at the rows a batch touched).
//!
//! Row-sparse Adam with catch-up: a table row is touched only on steps whose batch contains it.
//! Plain lazy Adam (TensorFlow's LazyAdam, PyTorch's SparseAdam) simply skips the other steps,
//! which for rarely seen rows differs a lot from dense Adam (no momentum between visits, second
//! moments that never decay) and measurably costs accuracy. Here each row remembers the step it
//! was last updated; when it comes back after `k` skipped steps its moments are decayed by
//! `β1^k`, `β2^k` and the `k` momentum-only moves dense Adam would have made are applied at once
//! in closed form (a geometric series; exact up to ε and the drift of the bias correction over
//! those steps). So `sparse = true` follows dense Adam closely at a cost that grows with the batch,
//! not the catalogue. `sparse = false` updates every row every step and matches PyTorch's
//! `torch.optim.Adam` exactly.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Gradients;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use crate::ncf::Ncf;
use crate::rows::{self, AdamRows, CatchUp, RowStep};
use crate::scatter;
use serde::{Deserialize, Serialize};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    /// Adam (paper default).
    #[default]
    Adam,
    /// Plain SGD (paper: NeuMF after pretraining).
    Sgd,
}

/// How the learning rate changes over a run's epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr` every epoch.
    #[default]
    Constant,
    /// Cosine annealing per epoch: epoch e of E trains at `lr · (1 + cos(π (e-1) / E)) / 2`,
    /// from `lr` down towards 0 in the last epoch.
    Cosine,
}

/// Optimizer settings. Defaults: Adam, lr 0.001 every epoch, β = (0.9, 0.999), ε = 1e-8, no L2,
/// sparse rows through fused kernels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (PyTorch `weight_decay`); on tables, only rows in the batch.
    pub l2: f64,
    /// Row-sparse table updates (lazy Adam). `false` updates every row every step.
    pub sparse: bool,
    /// Fused kernels where the backend has them: row-sparse updates (flex, wgpu, CUDA; see
    /// [`crate::rows`]) and the head's forward and backward in one pass (flex; see
    /// [`crate::head_grad`]). `false` runs the same step as composed tensor ops and autodiff:
    /// slower, kept for comparison and as a fallback.
    pub fused: bool,
    /// The learning rate over epochs. A row that comes back after skipped steps catches up at
    /// the current epoch's rate.
    pub schedule: LrSchedule,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { kind: OptimKind::Adam, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 0.0, sparse: true, fused: true, schedule: LrSchedule::Constant }
    }
}

impl OptimConfig {
    /// The learning rate of epoch `epoch` (1-based) of `epochs` under `schedule`.
    pub fn lr_at(&self, epoch: usize, epochs: usize) -> f64 {
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let t = (epoch.max(1) - 1) as f64 / epochs.max(1) as f64;
                self.lr * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

/// First and second moments of one parameter, same shape as it.
#[derive(Debug, Clone)]
pub struct Moments<const D: usize> {
    pub m: Tensor<D>,
    pub v: Tensor<D>,
}

impl<const D: usize> Moments<D> {
    fn zeros_like(t: &Tensor<D>) -> Self {
        Self { m: t.zeros_like(), v: t.zeros_like() }
    }
}

/// Adam state of an embedding table: per-row moments and, for the sparse path, the step each
/// row was last updated at.
#[derive(Debug, Clone)]
pub struct RowMoments {
    pub m: Tensor<2>,
    pub v: Tensor<2>,
    /// `[rows]`: global step of the row's last update (0 = never).
    pub last: Tensor<1>,
}

impl RowMoments {
    fn zeros_like(t: &Tensor<2>) -> Self {
        let rows = t.dims()[0];
        Self { m: t.zeros_like(), v: t.zeros_like(), last: Tensor::zeros([rows], &t.device()) }
    }
}

/// Optimizer state: the step count, per-parameter moments of the head, and per-row moments of
/// the tables (allocated once, updated in place at the batch's rows).
#[derive(Debug, Clone)]
pub struct Optimizer {
    pub config: OptimConfig,
    pub step: u64,
    /// Head moments, flattened, in the order the head's parameters are visited.
    pub head: Vec<Option<Moments<1>>>,
    pub user: Option<RowMoments>,
    pub item: Option<RowMoments>,
    /// Moments of the side-feature tables (see [`crate::features`]).
    pub user_features: Option<RowMoments>,
    pub item_features: Option<RowMoments>,
}

impl Optimizer {
    pub fn new(config: OptimConfig) -> Self {
        Self { config, step: 0, head: Vec::new(), user: None, item: None, user_features: None, item_features: None }
    }

    /// Bias-corrected step sizes for the current step: (lr / (1-β1ᵗ), 1 / sqrt(1-β2ᵗ)).
    fn corrections(&self) -> (f64, f64) {
        self.row_step().corrections()
    }

    /// This step's scalars as the fused row kernels take them.
    pub(crate) fn row_step(&self) -> RowStep {
        let c = &self.config;
        RowStep { t: self.step as f64, lr: c.lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, l2: c.l2 }
    }

    /// Starts a step: call once before the updates of that step.
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// The update to subtract for gradient `g` given moments at these positions; returns the
    /// update and the new moments.
    fn adam<const D: usize>(&self, g: Tensor<D>, m: Tensor<D>, v: Tensor<D>) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
        let c = &self.config;
        let m = m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + (g.clone() * g).mul_scalar(1.0 - c.beta2);
        let (step, inv_sqrt_c2) = self.corrections();
        let update = m.clone().mul_scalar(step) / (v.clone().sqrt().mul_scalar(inv_sqrt_c2).add_scalar(c.eps));
        (update, m, v)
    }

    /// Updates table `table` at `rows` (unique) with their gradient `grad`.
    ///
    /// # Shapes
    /// - table: `[n, width]`, rows: `[r]`, grad: `[r, width]`
    pub fn update_rows(&mut self, side: TableSide, table: Tensor<2>, rows: Tensor<1, Int>, grad: Tensor<2>) -> Tensor<2> {
        let c = self.config.clone();
        if c.fused && rows::fused_on(&table.device()) && (c.sparse || c.kind == OptimKind::Sgd) {
            return self.fused_update(side, table, rows, grad);
        }
        let g = if c.l2 > 0.0 { grad + table.clone().select(0, rows.clone()).mul_scalar(c.l2) } else { grad };
        match c.kind {
            OptimKind::Sgd => scatter::select_assign(table, 0, rows, g.mul_scalar(-c.lr), IndexingUpdateOp::Add),
            OptimKind::Adam => {
                let state = self.slot(side).take().unwrap_or_else(|| RowMoments::zeros_like(&table));
                if c.sparse {
                    let (table, state) = self.sparse_adam(table, rows, g, state);
                    *self.slot(side) = Some(state);
                    table
                } else {
                    let dense = scatter::select_assign(table.zeros_like(), 0, rows, g, IndexingUpdateOp::Add);
                    let (update, m, v) = self.adam(dense, state.m, state.v);
                    let last = state.last.zeros_like().add_scalar(self.step as f64);
                    *self.slot(side) = Some(RowMoments { m, v, last });
                    table - update
                }
            }
        }
    }

    /// [`Optimizer::update_rows`] through the fused kernels of [`crate::rows`].
    fn fused_update(&mut self, side: TableSide, table: Tensor<2>, rows: Tensor<1, Int>, grad: Tensor<2>) -> Tensor<2> {
        let step = self.row_step();
        match self.config.kind {
            OptimKind::Sgd => rows::sgd_rows(table, rows, grad, step),
            OptimKind::Adam => {
                let state = self.take_rows(side, table);
                let out = rows::adam_rows(state, rows, grad, step);
                self.put_rows(side, out)
            }
        }
    }

    /// Whether [`Optimizer::update_rows`] on `device` is the fused row-sparse Adam, which
    /// [`Optimizer::take_rows`] and [`Optimizer::put_rows`] let a caller run elsewhere.
    pub(crate) fn fused_adam_on(&self, device: &burn::tensor::Device) -> bool {
        let c = &self.config;
        c.fused && c.sparse && c.kind == OptimKind::Adam && rows::fused_on(device)
    }

    /// Moves a table's Adam state out, with the table, for a fused update elsewhere (see
    /// [`Optimizer::fused_adam_on`]); [`Optimizer::put_rows`] takes the result back.
    pub(crate) fn take_rows(&mut self, side: TableSide, table: Tensor<2>) -> AdamRows {
        let state = self.slot(side).take().unwrap_or_else(|| RowMoments::zeros_like(&table));
        AdamRows { table, m: state.m, v: state.v, last: state.last }
    }

    /// Stores an updated table's Adam state; returns the table.
    pub(crate) fn put_rows(&mut self, side: TableSide, out: AdamRows) -> Tensor<2> {
        *self.slot(side) = Some(RowMoments { m: out.m, v: out.v, last: out.last });
        out.table
    }

    /// Adam at `rows` only, catching each row up on the steps it skipped (see the module docs).
    /// Per-row factors are computed on `[r, 1]` columns so the `[r, width]` work stays a handful
    /// of element-wise passes; the moments are written back with `Assign`, the table with `Add`.
    fn sparse_adam(&self, table: Tensor<2>, rows: Tensor<1, Int>, g: Tensor<2>, state: RowMoments) -> (Tensor<2>, RowMoments) {
        let c = &self.config;
        let t = self.step as f64;
        let last = state.last.clone().select(0, rows.clone());
        let r_count = last.dims()[0];
        // Steps since the row's last update, excluding this one: [r, 1].
        let skipped = last.clone().neg().add_scalar(t - 1.0).unsqueeze_dim::<2>(1);
        // The catch-up of the skipped steps and the moments' decays, per row as a [r, 1] column:
        // the fused kernels' formula (see `CatchUp::factors_of`).
        let f = CatchUp::new(&self.row_step()).factors_of(skipped, last.unsqueeze_dim::<2>(1));
        let (catch_factor, decay1, decay2) = (f.catch_up, f.decay1, f.decay2);

        let m_old = state.m.clone().select(0, rows.clone());
        let v_old = state.v.clone().select(0, rows.clone());
        let catch_up = m_old.clone() * catch_factor / v_old.clone().sqrt().add_scalar(c.eps);
        let m_new = m_old * decay1 + g.clone().mul_scalar(1.0 - c.beta1);
        let v_new = v_old * decay2 + (g.clone() * g).mul_scalar(1.0 - c.beta2);
        let (step, inv_sqrt_c2) = self.corrections();
        let update = m_new.clone().mul_scalar(step) / v_new.clone().sqrt().mul_scalar(inv_sqrt_c2).add_scalar(c.eps);
        let now = Tensor::<1>::full([r_count], t, &table.device());
        let state = RowMoments {
            m: scatter::select_assign(state.m, 0, rows.clone(), m_new, IndexingUpdateOp::Assign),
            v: scatter::select_assign(state.v, 0, rows.clone(), v_new, IndexingUpdateOp::Assign),
            last: scatter::select_assign(state.last, 0, rows.clone(), now, IndexingUpdateOp::Assign),
        };
        (scatter::select_assign(table, 0, rows, (update + catch_up).neg(), IndexingUpdateOp::Add), state)
    }

    fn slot(&mut self, side: TableSide) -> &mut Option<RowMoments> {
        match side {
            TableSide::User => &mut self.user,
            TableSide::Item => &mut self.item,
            TableSide::UserFeatures => &mut self.user_features,
            TableSide::ItemFeatures => &mut self.item_features,
        }
    }
}

/// Sizes of a module's float parameters in visit order.
struct ParamSizes(Vec<usize>);

impl ModuleVisitor for ParamSizes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().dims().iter().product());
    }
}

impl Optimizer {
    /// The state needed to continue training exactly: named flat tensors (the step count is
    /// [`Optimizer::step`]). Head moments are named by visit order, so they survive a reload
    /// of the model (whose parameter ids change).
    pub fn state_tensors(&self) -> Vec<(String, Tensor<1>)> {
        let mut out = Vec::new();
        for (i, m) in self.head.iter().enumerate() {
            if let Some(m) = m {
                out.push((format!("head.{i}.m"), m.m.clone()));
                out.push((format!("head.{i}.v"), m.v.clone()));
            }
        }
        for (side, state) in [("user", &self.user), ("item", &self.item), ("user_features", &self.user_features), ("item_features", &self.item_features)] {
            if let Some(s) = state {
                let n: usize = s.m.dims().iter().product();
                out.push((format!("{side}.m"), s.m.clone().reshape([n])));
                out.push((format!("{side}.v"), s.v.clone().reshape([n])));
                out.push((format!("{side}.last"), s.last.clone()));
            }
        }
        out
    }

    /// Rebuilds an optimizer from [`Optimizer::state_tensors`] for `model`, checking every size.
    pub fn restore(config: OptimConfig, step: u64, mut tensors: HashMap<String, Tensor<1>>, model: &Ncf) -> Result<Self, String> {
        let mut take = |name: &str, len: usize| -> Result<Option<Tensor<1>>, String> {
            match tensors.remove(name) {
                Some(t) if t.dims()[0] == len => Ok(Some(t)),
                Some(t) => Err(format!("optimizer state {name} has {} values, the model needs {len}", t.dims()[0])),
                None => Ok(None),
            }
        };
        let mut sizes = ParamSizes(Vec::new());
        model.head.visit(&mut sizes);
        let mut head = Vec::with_capacity(sizes.0.len());
        for (i, &n) in sizes.0.iter().enumerate() {
            head.push(match (take(&format!("head.{i}.m"), n)?, take(&format!("head.{i}.v"), n)?) {
                (Some(m), Some(v)) => Some(Moments { m, v }),
                (None, None) => None,
                _ => return Err(format!("optimizer state for head parameter {i} is incomplete")),
            });
        }
        let mut table = |side: &str, t: Tensor<2>| -> Result<Option<RowMoments>, String> {
            let [rows, width] = t.dims();
            let (m, v, last) = (take(&format!("{side}.m"), rows * width)?, take(&format!("{side}.v"), rows * width)?, take(&format!("{side}.last"), rows)?);
            match (m, v, last) {
                (Some(m), Some(v), Some(last)) => Ok(Some(RowMoments { m: m.reshape([rows, width]), v: v.reshape([rows, width]), last })),
                (None, None, None) => Ok(None),
                _ => Err(format!("optimizer state for the {side} table is incomplete")),
            }
        };
        let user = table("user", model.user.val())?;
        let item = table("item", model.item.val())?;
        let user_features = model.user_features.as_ref().map(|t| table("user_features", t.val())).transpose()?.flatten();
        let item_features = model.item_features.as_ref().map(|t| table("item_features", t.val())).transpose()?.flatten();
        if let Some(name) = tensors.keys().next() {
            return Err(format!("unexpected optimizer state {name}"));
        }
        Ok(Self { config, step, head, user, item, user_features, item_features })
    }
}

/// Which embedding table an update is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSide {
    User,
    Item,
    UserFeatures,
    ItemFeatures,
}

/// Where a step's head gradients come from.
pub enum HeadGradients {
    /// Autodiff: the head's parameters were tracked leaves of this backward pass.
    Graph(Gradients),
    /// Computed directly, flattened, in the head's visit order (see [`crate::head_grad`]).
    Given(Vec<Tensor<1>>),
    /// Flattened, in the head's visit order, `None` for a parameter without a gradient: what
    /// [`HeadGradients::into_slots`] gives, e.g. after summing across devices.
    Slots(Vec<Option<Tensor<1>>>),
}

impl HeadGradients {
    /// Every head parameter's gradient, flattened, in visit order; `head` is the head whose
    /// parameters key the gradients (the tracked one after autodiff).
    pub fn into_slots(self, head: &crate::ncf::Head) -> Vec<Option<Tensor<1>>> {
        match self {
            Self::Given(grads) => grads.into_iter().map(Some).collect(),
            Self::Slots(slots) => slots,
            Self::Graph(grads) => {
                struct Collect<'a>(&'a Gradients, Vec<Option<Tensor<1>>>);
                impl ModuleVisitor for Collect<'_> {
                    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                        let t = param.val();
                        let n: usize = t.dims().iter().product();
                        self.1.push(t.grad(self.0).map(|g| g.reshape([n])));
                    }
                }
                let mut c = Collect(&grads, Vec::new());
                head.visit(&mut c);
                c.1
            }
        }
    }
}

/// Maps a head to its updated plain parameters, given this step's gradients.
pub struct HeadUpdate<'a> {
    optim: &'a mut Optimizer,
    grads: &'a HeadGradients,
    /// Position of the next parameter in visit order (keys the head moments).
    next: usize,
}

impl<'a> HeadUpdate<'a> {
    pub fn new(optim: &'a mut Optimizer, grads: &'a HeadGradients) -> Self {
        Self { optim, grads, next: 0 }
    }
}

impl ModuleMapper for HeadUpdate<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let slot = self.next;
        self.next += 1;
        if self.optim.head.len() <= slot {
            self.optim.head.resize(slot + 1, None);
        }
        param.map(|t| {
            let dims = t.dims();
            let n: usize = dims.iter().product();
            let grad = match self.grads {
                HeadGradients::Graph(grads) => t.grad(grads).map(|g| g.reshape([n])),
                HeadGradients::Given(grads) => grads.get(slot).cloned(),
                HeadGradients::Slots(grads) => grads.get(slot).cloned().flatten(),
            };
            let w = t.inner();
            let Some(g) = grad else { return w };
            let c = self.optim.config.clone();
            let flat: Tensor<1> = w.reshape([n]);
            #[cfg(feature = "flex")]
            if c.kind == OptimKind::Adam && c.fused && rows::on_flex(&flat.device()) {
                // One pass instead of the composed ops below, with the same bits.
                let state = self.optim.head[slot].take().unwrap_or_else(|| Moments::zeros_like(&flat));
                let (flat, m, v) = rows::flex::dense_adam(flat, g, state.m, state.v, &self.optim.row_step());
                self.optim.head[slot] = Some(Moments { m, v });
                return flat.reshape(dims);
            }
            let g = if c.l2 > 0.0 { g + flat.clone().mul_scalar(c.l2) } else { g };
            let update = match c.kind {
                OptimKind::Sgd => g.mul_scalar(c.lr),
                OptimKind::Adam => {
                    let state = self.optim.head[slot].take().unwrap_or_else(|| Moments::zeros_like(&flat));
                    let (update, m, v) = self.optim.adam(g, state.m, state.v);
                    self.optim.head[slot] = Some(Moments { m, v });
                    update
                }
            };
            (flat - update).reshape(dims)
        })
    }
}

/// Makes every head parameter a tracked leaf for one step's backward pass.
pub struct Track;

impl ModuleMapper for Track {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.autodiff().require_grad())
    }
}

#[cfg(all(test, any(feature = "flex", feature = "cube")))]
pub(crate) mod fused_tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData};

    /// The devices with fused kernels in this build that can run here. A missing wgpu adapter
    /// is skipped with a note (install mesa-vulkan-drivers), or fails with NCF_REQUIRE_WGPU=1.
    pub(crate) fn devices() -> Vec<Device> {
        let mut out = Vec::new();
        #[cfg(feature = "flex")]
        out.push(Device::flex());
        #[cfg(feature = "cube")]
        {
            // wgpu's runtime registers once per process: every test shares the one device.
            static WGPU: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
            let wgpu = WGPU.get_or_init(|| Device::wgpu_options().device_kind(burn::tensor::DeviceKind::Cpu).init().map_err(|e| e.to_string()));
            match wgpu.clone() {
                Ok(d) => out.push(d),
                Err(e) if std::env::var("NCF_REQUIRE_WGPU").is_ok_and(|v| v == "1") => panic!("NCF_REQUIRE_WGPU=1 but wgpu is unavailable: {e}"),
                Err(e) => eprintln!("skipping wgpu: no adapter ({e}); install mesa-vulkan-drivers to run it"),
            }
        }
        out
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-6 + 1e-5 * y.abs(), "{what}[{k}]: fused {x} vs composed {y}");
        }
    }

    /// A table of `n` rows with Adam state whose rows were last updated at assorted steps
    /// (never, the previous step, long ago) before step `t`.
    fn state(n: usize, w: usize, t: u64, d: &Device) -> (Tensor<2>, RowMoments) {
        let table = Tensor::<2>::random([n, w], Distribution::Normal(0.0, 0.1), d);
        let m = Tensor::<2>::random([n, w], Distribution::Normal(0.0, 0.01), d);
        let v = Tensor::<2>::random([n, w], Distribution::Uniform(0.0, 1e-4), d);
        let last: Vec<f32> = (0..n).map(|r| [0, t - 1, t / 2, 1, t - 7][r % 5] as f32).collect();
        (table, RowMoments { m, v, last: Tensor::from_data(TensorData::new(last, [n]), d) })
    }

    #[test]
    fn fused_adam_matches_the_composed_ops() {
        for d in devices() {
            assert!(rows::fused_on(&d));
            // 60000 x 40 floats is past flex's huge-page and two-thread thresholds, so those paths
            // run too.
            for (n, w) in [(50, 6), (60_000, 40)] {
                let t = 41;
                let (table, st) = state(n, w, t, &d);
                let ids: Vec<i32> = (0..n as i32).filter(|r| r % 3 != 1).rev().collect();
                let r = ids.len();
                let rows_t = Tensor::<1, Int>::from_data(TensorData::new(ids, [r]), &d);
                let grad = Tensor::<2>::random([r, w], Distribution::Normal(0.0, 0.05), &d);
                let mut optim = Optimizer::new(OptimConfig { l2: 0.01, lr: 0.003, ..Default::default() });
                optim.step = t;
                // The gather too (split over two threads on the large table).
                assert_eq!(values(rows::gather(table.clone(), rows_t.clone())), values(table.clone().select(0, rows_t.clone())));
                let g = grad.clone() + table.clone().select(0, rows_t.clone()).mul_scalar(0.01);
                let (want_table, want) = optim.sparse_adam(table.clone(), rows_t.clone(), g, st.clone());
                let step = RowStep { t: t as f64, lr: 0.003, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 0.01 };
                let got = rows::adam_rows(AdamRows { table, m: st.m, v: st.v, last: st.last }, rows_t, grad, step);
                let on = format!("{d:?} {n}x{w}");
                assert_close(&values(got.table), &values(want_table), &format!("{on} table"));
                assert_close(&values(got.m), &values(want.m), &format!("{on} m"));
                assert_close(&values(got.v), &values(want.v), &format!("{on} v"));
                assert_eq!(values(got.last), values(want.last), "{on} last");
            }
        }
    }

    /// The head's Adam on flex is one pass per parameter; it must give the composed ops' bits,
    /// with and without L2 and through a learning-rate schedule, for every parameter and both
    /// moments.
    #[cfg(feature = "flex")]
    #[test]
    fn head_adam_on_flex_gives_the_composed_ops_bits() {
        use crate::config::{ModelConfig, ModelKind};
        use crate::ncf::Ncf;
        let d = Device::flex();
        for l2 in [0.0, 1e-3] {
            let cfg = ModelConfig { kind: ModelKind::Neumf, factors: 4, layers: vec![8, 6, 3], init_std: 0.1, ..Default::default() };
            let start = Ncf::init(&cfg, 3, 3, 11, &d).head;
            let config = OptimConfig { lr: 0.01, l2, schedule: LrSchedule::Cosine, ..Default::default() };
            let mut one_pass = Optimizer::new(OptimConfig { fused: true, ..config.clone() });
            let mut composed = Optimizer::new(OptimConfig { fused: false, ..config.clone() });
            let (mut a, mut b) = (start.clone(), start);
            for step in 0..40u64 {
                // A training loop's schedule: a new learning rate every 4 steps (an "epoch").
                let lr = config.lr_at(step as usize / 4 + 1, 10);
                (one_pass.config.lr, composed.config.lr) = (lr, lr);
                // Gradients of every parameter, flattened in visit order, different each step.
                let mut sizes = ParamSizes(Vec::new());
                a.visit(&mut sizes);
                let grads: Vec<Tensor<1>> = sizes
                    .0
                    .iter()
                    .enumerate()
                    .map(|(k, &n)| Tensor::<1>::random([n], Distribution::Normal(0.0, 0.1 * (1 + (step + k as u64) % 3) as f64), &d))
                    .collect();
                let grads = HeadGradients::Given(grads);
                one_pass.begin_step();
                composed.begin_step();
                a = a.map(&mut HeadUpdate::new(&mut one_pass, &grads));
                b = b.map(&mut HeadUpdate::new(&mut composed, &grads));
            }
            let (mut pa, mut pb) = (Vec::new(), Vec::new());
            a.visit(&mut Values(&mut pa));
            b.visit(&mut Values(&mut pb));
            assert_eq!(pa, pb, "l2 {l2}: parameters");
            for (k, (x, y)) in one_pass.head.iter().zip(&composed.head).enumerate() {
                let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
                assert_eq!(values(x.m.clone()), values(y.m.clone()), "l2 {l2}: m of parameter {k}");
                assert_eq!(values(x.v.clone()), values(y.v.clone()), "l2 {l2}: v of parameter {k}");
            }
        }
    }

    /// Each parameter's values, in visit order.
    struct Values<'a>(&'a mut Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Values<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(values(param.val()));
        }
    }

    /// Many steps in sequence, as training runs them: random subsets of the rows each step (so
    /// rows skip steps and catch up), the state carried from call to call, t from 1. The fused
    /// update must follow the composed one step by step, not only on one call.
    #[test]
    fn fused_adam_follows_the_composed_ops_over_many_steps() {
        for d in devices() {
            let (n, w, steps) = (300usize, 8usize, 200u64);
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let init: Vec<f32> = (0..n * w).map(|_| (next() % 2001) as f32 / 10_000.0 - 0.1).collect();
            let mut fused_table = Tensor::<2>::from_data(TensorData::new(init.clone(), [n, w]), &d);
            let mut composed_table = Tensor::<2>::from_data(TensorData::new(init, [n, w]), &d);
            let config = OptimConfig { lr: 0.01, ..Default::default() };
            let mut fused = Optimizer::new(OptimConfig { fused: true, ..config.clone() });
            let mut composed = Optimizer::new(OptimConfig { fused: false, ..config });
            let mut worst = [0.0f32; 3];
            for step in 1..=steps {
                // About a third of the rows, some rows rarely: row r is in with probability ~ 1/(1 + r % 7).
                let ids: Vec<i32> = (0..n as i32).filter(|&r| next() % (1 + r as u64 % 7) == 0 && next() % 3 == 0).collect();
                if ids.is_empty() {
                    continue;
                }
                let r = ids.len();
                let g: Vec<f32> = (0..r * w).map(|_| (next() % 2001) as f32 / 20_000.0 - 0.05).collect();
                // The rows sliced from a larger buffer, as a training batch packs them: after `off`
                // other values (offsets 0 and unaligned) and before positions in the batch, which
                // are row ids too.
                let off = step as usize % 3;
                let packed: Vec<i32> = (0..off as i32).chain(ids.iter().copied()).chain(0..r as i32).collect();
                let len = packed.len();
                let rows_t = Tensor::<1, Int>::from_data(TensorData::new(packed, [len]), &d).slice([off..off + r]);
                let grad = Tensor::<2>::from_data(TensorData::new(g, [r, w]), &d);
                fused.begin_step();
                composed.begin_step();
                fused_table = fused.update_rows(TableSide::Item, fused_table, rows_t.clone(), grad.clone());
                composed_table = composed.update_rows(TableSide::Item, composed_table, rows_t, grad);
                let (a, b) = (values(fused_table.clone()), values(composed_table.clone()));
                let (fs, cs) = (fused.item.as_ref().unwrap(), composed.item.as_ref().unwrap());
                let (fm, cm) = (values(fs.m.clone()), values(cs.m.clone()));
                let (fv, cv) = (values(fs.v.clone()), values(cs.v.clone()));
                let (fl, cl) = (values(fs.last.clone()), values(cs.last.clone()));
                assert_eq!(fl, cl, "{d:?} step {step} last");
                for k in 0..n * w {
                    let what = || {
                        format!(
                            "{d:?} step {step} row {} col {}: table {} vs {}, m {} vs {}, v {} vs {}, last {}",
                            k / w,
                            k % w,
                            a[k],
                            b[k],
                            fm[k],
                            cm[k],
                            fv[k],
                            cv[k],
                            fl[k / w]
                        )
                    };
                    // v relative to itself, m and the table relative to their scale: m crosses zero.
                    let err =
                        [(fv[k] - cv[k]).abs() / cv[k].max(1e-30), (fm[k] - cm[k]).abs() / cm[k].abs().max(1e-3), (a[k] - b[k]).abs() / b[k].abs().max(0.1)];
                    for (worst, e) in worst.iter_mut().zip(err) {
                        *worst = worst.max(e);
                    }
                    assert!(err[0] <= 2e-6 && err[1] <= 2e-6 && err[2] <= 1e-5, "{}: relative errors (v, m, table) {err:?}", what());
                }
            }
            eprintln!("{d:?}: largest relative errors (v, m, table) over {steps} steps {worst:?}");
        }
    }

    #[test]
    fn fused_sgd_and_gather_match_the_composed_ops() {
        for d in devices() {
            let table = Tensor::<2>::random([30, 5], Distribution::Normal(0.0, 0.1), &d);
            let rows_t = Tensor::<1, Int>::from_data(TensorData::new(vec![7, 0, 29, 3], [4]), &d);
            let grad = Tensor::<2>::random([4, 5], Distribution::Normal(0.0, 0.05), &d);
            assert_eq!(values(rows::gather(table.clone(), rows_t.clone())), values(table.clone().select(0, rows_t.clone())));
            let want = table.clone().select_assign(
                0,
                rows_t.clone(),
                (grad.clone() + table.clone().select(0, rows_t.clone()).mul_scalar(0.1)).mul_scalar(-0.5),
                IndexingUpdateOp::Add,
            );
            let step = RowStep { t: 1.0, lr: 0.5, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 0.1 };
            assert_close(&values(rows::sgd_rows(table, rows_t, grad, step)), &values(want), &format!("{d:?} table"));
        }
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn cosine_schedule_starts_at_lr_and_falls_every_epoch() {
        let c = OptimConfig { lr: 0.01, schedule: LrSchedule::Cosine, ..Default::default() };
        let lrs: Vec<f64> = (1..=10).map(|e| c.lr_at(e, 10)).collect();
        assert_eq!(lrs[0], 0.01);
        assert!((lrs[5] - 0.005).abs() < 1e-12, "halfway: {}", lrs[5]);
        assert!(lrs.windows(2).all(|w| w[1] < w[0]) && lrs[9] > 0.0, "{lrs:?}");
        assert_eq!(OptimConfig { lr: 0.01, ..Default::default() }.lr_at(7, 10), 0.01);
    }
}

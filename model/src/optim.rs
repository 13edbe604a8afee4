//! Optimizers for the two kinds of parameters: the dense head (updated whole) and the
//! embedding tables (updated only at the rows a batch touched).
//!
//! Row-sparse ("lazy") Adam: a table row's moments decay and its weights move only on steps whose
//! batch contains that row, with the global step count in the bias correction (as TensorFlow's
//! LazyAdam and PyTorch's SparseAdam). Dense Adam (every row, every step) stays available with
//! `sparse = false` and matches PyTorch's `torch.optim.Adam` exactly.

use std::collections::HashMap;

use burn::module::{ModuleMapper, Param, ParamId};
use burn::tensor::Gradients;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};
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

/// Optimizer settings. Defaults: Adam, lr 0.001, β = (0.9, 0.999), ε = 1e-8, no L2, sparse rows.
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
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { kind: OptimKind::Adam, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 0.0, sparse: true }
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

/// Optimizer state: the step count, per-parameter moments of the head, and per-row moments of
/// the tables (allocated once, updated in place at the batch's rows).
#[derive(Debug, Clone)]
pub struct Optimizer {
    pub config: OptimConfig,
    pub step: u64,
    /// Head moments, flattened, keyed by parameter id.
    pub head: HashMap<ParamId, Moments<1>>,
    pub user: Option<Moments<2>>,
    pub item: Option<Moments<2>>,
}

impl Optimizer {
    pub fn new(config: OptimConfig) -> Self {
        Self { config, step: 0, head: HashMap::new(), user: None, item: None }
    }

    /// Bias-corrected step sizes for the current step: (lr / (1-β1ᵗ), 1 / sqrt(1-β2ᵗ)).
    fn corrections(&self) -> (f64, f64) {
        let t = self.step as i32;
        let c1 = 1.0 - self.config.beta1.powi(t);
        let c2 = 1.0 - self.config.beta2.powi(t);
        (self.config.lr / c1, 1.0 / c2.sqrt())
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
        let g = if c.l2 > 0.0 { grad + table.clone().select(0, rows.clone()).mul_scalar(c.l2) } else { grad };
        match c.kind {
            OptimKind::Sgd => table.select_assign(0, rows, g.mul_scalar(-c.lr), IndexingUpdateOp::Add),
            OptimKind::Adam => {
                let slot = match side {
                    TableSide::User => &mut self.user,
                    TableSide::Item => &mut self.item,
                };
                let state = slot.take().unwrap_or_else(|| Moments::zeros_like(&table));
                if c.sparse {
                    let m_old = state.m.clone().select(0, rows.clone());
                    let v_old = state.v.clone().select(0, rows.clone());
                    let (update, m_new, v_new) = self.adam(g, m_old.clone(), v_old.clone());
                    let add = |t: Tensor<2>, delta: Tensor<2>| t.select_assign(0, rows.clone(), delta, IndexingUpdateOp::Add);
                    let moments = Moments { m: add(state.m, m_new - m_old), v: add(state.v, v_new - v_old) };
                    let table = add(table, update.neg());
                    *self.slot(side) = Some(moments);
                    table
                } else {
                    let dense = table.zeros_like().select_assign(0, rows, g, IndexingUpdateOp::Add);
                    let (update, m, v) = self.adam(dense, state.m, state.v);
                    *self.slot(side) = Some(Moments { m, v });
                    table - update
                }
            }
        }
    }

    fn slot(&mut self, side: TableSide) -> &mut Option<Moments<2>> {
        match side {
            TableSide::User => &mut self.user,
            TableSide::Item => &mut self.item,
        }
    }
}

/// Which embedding table an update is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSide {
    User,
    Item,
}

/// Maps a tracked head (after backward) to its updated plain parameters.
pub struct HeadUpdate<'a> {
    pub optim: &'a mut Optimizer,
    pub grads: &'a Gradients,
}

impl ModuleMapper for HeadUpdate<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        param.map(|t| {
            let Some(grad) = t.grad(self.grads) else { return t.inner() };
            let w = t.inner();
            let dims = w.dims();
            let n: usize = dims.iter().product();
            let c = self.optim.config.clone();
            let g: Tensor<1> = grad.reshape([n]);
            let flat: Tensor<1> = w.clone().reshape([n]);
            let g = if c.l2 > 0.0 { g + flat.clone().mul_scalar(c.l2) } else { g };
            let update = match c.kind {
                OptimKind::Sgd => g.mul_scalar(c.lr),
                OptimKind::Adam => {
                    let state = self.optim.head.remove(&id).unwrap_or_else(|| Moments::zeros_like(&flat));
                    let (update, m, v) = self.optim.adam(g, state.m, state.v);
                    self.optim.head.insert(id, Moments { m, v });
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

//! The NCF model family behind one contract: user and item tables plus a head that turns a user
//! row and an item row into a logit.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution as _, Normal, Uniform};

use crate::config::{ModelConfig, ModelKind, TableLayout};
use crate::features::FeatureRows;

/// GMF, MLP, NeuMF or MF: one user table, one item table (columns laid out by [`TableLayout`])
/// and the dense head.
#[derive(Module, Debug)]
pub struct Ncf {
    /// `[n_users, layout.width()]`
    pub user: Param<Tensor<2>>,
    /// `[n_items, layout.width()]`
    pub item: Param<Tensor<2>>,
    pub head: Head,
    /// Side-feature tables, `[feature rows, layout.width()]`: an entity's vector is its id row
    /// plus the weighted sum of its feature rows (see [`crate::features`]).
    pub user_features: Option<Param<Tensor<2>>>,
    pub item_features: Option<Param<Tensor<2>>>,
    /// Whether the id tables are trained (`ModelConfig::id_embeddings`); without, they stay zero
    /// and the model is a pure feature model.
    #[module(skip)]
    pub ids: bool,
    /// EASE folded with histories too many to score as one users × items table
    /// ([`Ncf::fold_history`]): the histories, from which each chunk of users' scores `XB` are
    /// summed when scored. `None` otherwise (an EASE fold that fits holds its scores as the
    /// user table).
    #[module(skip)]
    pub ease_history: Option<std::sync::Arc<Histories>>,
}

/// Users' histories as CSR: user `u`'s items are `items[offsets[u]..offsets[u + 1]]`.
#[derive(Debug, Clone)]
pub struct Histories {
    pub offsets: Vec<usize>,
    pub items: Vec<u32>,
}

/// The dense part: the MLP tower and the output layer. Small; updated densely.
#[derive(Module, Debug)]
pub struct Head {
    pub mlp: Vec<Linear>,
    pub output: Option<Linear>,
    #[module(skip)]
    pub layout: TableLayout,
    /// Dropout probability after each hidden MLP layer, applied by [`Head::forward_train`] only.
    #[module(skip)]
    pub dropout: f64,
    /// GMF/MF factors compared by cosine (see `ModelConfig::cosine`).
    #[module(skip)]
    pub cosine: bool,
    /// Weight of the mean of a user's history rows in its user row (see `ModelConfig::history`).
    #[module(skip)]
    pub history: f64,
}

/// Rows of users' histories: per history entry, the index of its item row and of its user row,
/// and per user row its number of entries.
#[derive(Debug, Clone)]
pub struct HistoryRows {
    /// `[h]`
    pub item_pos: Tensor<1, Int>,
    /// `[h]`
    pub user_pos: Tensor<1, Int>,
    /// `[u]`
    pub count: Tensor<1, Int>,
}

/// Values of history rows gathered per device call when folding histories in (16 MiB of f32:
/// 65,536 entries at width 64, fewer for EASE's catalogue-wide rows).
pub(crate) const FOLD_VALUES: usize = 1 << 22;

/// Item-side work shared by every user chunk when scoring against the whole catalogue.
pub struct ItemSide {
    /// `[n_items, width]`
    table: Tensor<2>,
    /// Item half of the factor dot product, transposed, with a row of ones (and MF's item-bias
    /// row) so user-side biases fold into the same matmul: `[gmf + 1 (+1 for MF), n_items]`;
    /// MF by cosine has no biases: `[gmf, n_items]`.
    dot_t: Option<Tensor<2>>,
    /// First MLP layer applied to the item half, bias included: `[n_items, layers[1]]`.
    mlp_in: Option<Tensor<2>>,
}

impl ItemSide {
    pub fn n_items(&self) -> usize {
        self.table.dims()[0]
    }
}

/// Added to a row's squared L2 norm before the square root when factors are compared by cosine,
/// so a zero row stays zero; exports name it so other code normalises identically.
pub const COSINE_EPS: f64 = 1e-12;

/// Rows scaled to unit L2 norm (a zero row stays zero).
fn normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).add_scalar(COSINE_EPS).sqrt();
    x / norm
}

/// Host ids as an int tensor on `device`.
pub(crate) fn int_tensor(v: Vec<i32>, device: &Device) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

fn host_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn linear(d_in: usize, d_out: usize, rng: &mut Xoshiro256PlusPlus, device: &Device) -> Linear {
    // PyTorch's default: U(-1/sqrt(d_in), 1/sqrt(d_in)) for weight and bias.
    let k = 1.0 / (d_in as f32).sqrt();
    let u = Uniform::new(-k, k).expect("valid range");
    let w = (0..d_in * d_out).map(|_| u.sample(rng)).collect();
    let b = (0..d_out).map(|_| u.sample(rng)).collect();
    Linear { weight: Param::from_tensor(host_tensor(w, [d_in, d_out], device)), bias: Some(Param::from_tensor(host_tensor(b, [d_out], device))) }
}

impl Ncf {
    /// A freshly initialised model; all weights come from `seed`, drawn on the host so every
    /// backend starts from the same numbers.
    pub fn init(config: &ModelConfig, n_users: usize, n_items: usize, seed: u64, device: &Device) -> Self {
        let layout = config.layout();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x4E_CF1A);
        let normal = Normal::new(0.0f32, config.init_std as f32).expect("valid std");
        let table = |rows: usize, rng: &mut Xoshiro256PlusPlus| {
            let w = layout.width();
            let mut v: Vec<f32> = (0..rows * w).map(|_| normal.sample(rng)).collect();
            if layout.kind == ModelKind::Mf {
                // Biases start at zero.
                (0..rows).for_each(|r| v[r * w + w - 1] = 0.0);
            }
            Param::from_tensor(host_tensor(v, [rows, w], device))
        };
        let (user, item) = if config.kind == ModelKind::Ease {
            // Filled by `crate::ease::fit`; a user has no row of its own.
            (Param::from_tensor(Tensor::zeros([n_users, 1], device)), Param::from_tensor(Tensor::zeros([n_items, n_items], device)))
        } else if config.id_embeddings {
            (table(n_users, &mut rng), table(n_items, &mut rng))
        } else {
            let zeros = |rows: usize| Param::from_tensor(Tensor::zeros([rows, layout.width()], device));
            (zeros(n_users), zeros(n_items))
        };
        let mlp: Vec<Linear> = match config.kind {
            ModelKind::Mlp | ModelKind::Neumf => config.layers.windows(2).map(|w| linear(w[0], w[1], &mut rng, device)).collect(),
            _ => Vec::new(),
        };
        let out_width = match config.kind {
            ModelKind::Gmf => config.factors,
            ModelKind::Mlp => *config.layers.last().unwrap(),
            ModelKind::Neumf => config.factors + config.layers.last().unwrap(),
            ModelKind::Mf | ModelKind::Ease => 0,
        };
        let output = (out_width > 0).then(|| linear(out_width, 1, &mut rng, device));
        let head = Head { mlp, output, layout, dropout: config.dropout, cosine: config.cosine, history: config.history };
        Self { user, item, head, user_features: None, item_features: None, ids: config.id_embeddings, ease_history: None }
    }

    /// The model with side-feature tables of `rows` rows per side (`None`: no features on that
    /// side), drawn like the id tables from `seed`.
    pub fn with_feature_tables(mut self, init_std: f64, (user, item): (Option<usize>, Option<usize>), seed: u64) -> Self {
        let (w, device) = (self.head.layout.width(), self.user.val().device());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xFEA7_0000);
        let normal = Normal::new(0.0f32, init_std as f32).expect("valid std");
        let mut table = |rows: usize| {
            let v: Vec<f32> = (0..rows * w).map(|_| normal.sample(&mut rng)).collect();
            Param::from_tensor(host_tensor(v, [rows, w], &device))
        };
        self.user_features = user.map(&mut table);
        self.item_features = item.map(&mut table);
        self
    }

    /// The model as scoring sees it with features: each side's table replaced by id rows plus
    /// composed feature rows ([`FeatureRows::compose`]), no feature tables left. A side's
    /// composition may cover more entities than its id table (entities the model has never
    /// seen, scored from features alone: their id rows are zero).
    pub fn compose_features(&self, user: Option<&FeatureRows>, item: Option<&FeatureRows>) -> Ncf {
        let side = |ids: &Param<Tensor<2>>, table: &Option<Param<Tensor<2>>>, rows: Option<&FeatureRows>| -> Param<Tensor<2>> {
            let ids = ids.val();
            let (Some(t), Some(f)) = (table, rows) else { return Param::from_tensor(ids) };
            let [n, w] = ids.dims();
            assert!(f.n >= n, "a composition covers every entity of the table: {} < {n}", f.n);
            let ids = if f.n > n { Tensor::cat(vec![ids.clone(), Tensor::zeros([f.n - n, w], &ids.device())], 0) } else { ids };
            Param::from_tensor(ids + f.compose(t.val()))
        };
        Ncf {
            user: side(&self.user, &self.user_features, user),
            item: side(&self.item, &self.item_features, item),
            head: self.head.clone(),
            user_features: None,
            item_features: None,
            ids: self.ids,
            ease_history: self.ease_history.clone(),
        }
    }

    /// NeuMF initialised from trained GMF and MLP models (paper §3.4.1): the tables side by side,
    /// the MLP tower copied, and the output layer `[α·h_GMF ; (1-α)·h_MLP]` with bias
    /// `α·b_GMF + (1-α)·b_MLP`, so its logit starts as `α·GMF + (1-α)·MLP`.
    pub fn from_pretrained(config: &ModelConfig, gmf: &Ncf, mlp: &Ncf, alpha: f64) -> Result<Self, String> {
        if config.kind != ModelKind::Neumf {
            return Err(format!("pretraining builds a NeuMF model, not {}", config.kind.name()));
        }
        let layout = config.layout();
        let (g, m) = (gmf.head.layout, mlp.head.layout);
        if g.kind != ModelKind::Gmf || m.kind != ModelKind::Mlp {
            return Err(format!("pretraining needs a GMF and an MLP model, got {} and {}", g.kind.name(), m.kind.name()));
        }
        if g.gmf != layout.gmf {
            return Err(format!("the GMF model has {} factors, the NeuMF config {}", g.gmf, layout.gmf));
        }
        let widths = |n: &Ncf| -> Vec<usize> {
            n.head.mlp.first().map(|l| l.weight.val().dims()[0]).into_iter().chain(n.head.mlp.iter().map(|l| l.weight.val().dims()[1])).collect()
        };
        if widths(mlp) != config.layers {
            return Err(format!("the MLP model has layers {:?}, the NeuMF config {:?}", widths(mlp), config.layers));
        }
        if (gmf.n_users(), gmf.n_items()) != (mlp.n_users(), mlp.n_items()) {
            return Err(format!(
                "the GMF model has {}×{} users×items, the MLP model {}×{}: pretrain both on the same data",
                gmf.n_users(),
                gmf.n_items(),
                mlp.n_users(),
                mlp.n_items()
            ));
        }
        let join = |a: &Param<Tensor<2>>, b: &Param<Tensor<2>>| Param::from_tensor(Tensor::cat(vec![a.val(), b.val()], 1));
        let (go, mo) = (gmf.head.output.as_ref().expect("GMF output"), mlp.head.output.as_ref().expect("MLP output"));
        let weight = Tensor::cat(vec![go.weight.val().mul_scalar(alpha), mo.weight.val().mul_scalar(1.0 - alpha)], 0);
        let bias = match (&go.bias, &mo.bias) {
            (Some(a), Some(b)) => Some(Param::from_tensor(a.val().mul_scalar(alpha) + b.val().mul_scalar(1.0 - alpha))),
            _ => None,
        };
        let output = Linear { weight: Param::from_tensor(weight), bias };
        let mlp_layers = mlp
            .head
            .mlp
            .iter()
            .map(|l| Linear { weight: Param::from_tensor(l.weight.val()), bias: l.bias.as_ref().map(|b| Param::from_tensor(b.val())) })
            .collect();
        Ok(Self {
            user: join(&gmf.user, &mlp.user),
            item: join(&gmf.item, &mlp.item),
            head: Head { mlp: mlp_layers, output: Some(output), layout, dropout: config.dropout, cosine: config.cosine, history: config.history },
            user_features: None,
            item_features: None,
            ids: true,
            ease_history: None,
        })
    }

    pub fn n_users(&self) -> usize {
        self.user.val().dims()[0]
    }

    pub fn n_items(&self) -> usize {
        self.item.val().dims()[0]
    }

    /// Logits of `(users[k], items[k])` pairs.
    ///
    /// # Shapes
    /// - users, items: `[batch]` → `[batch]`
    pub fn score_pairs(&self, users: Tensor<1, burn::tensor::Int>, items: Tensor<1, burn::tensor::Int>) -> Tensor<1> {
        if self.head.layout.kind == ModelKind::Ease {
            return crate::ease::score_pairs(self, users, items);
        }
        self.head.forward(self.user.val().select(0, users), self.item.val().select(0, items))
    }

    /// The model as scoring sees it: with `history` > 0, each user's row is replaced by its
    /// mix with the mean of its history items' rows ([`Head::with_history`], the step's formula),
    /// the histories given as CSR (`offsets[u]..offsets[u + 1]` of `items`). Without history,
    /// the model itself.
    pub fn fold_history(&self, offsets: &[usize], items: &[u32]) -> Ncf {
        self.fold_history_within(offsets, items, crate::ease::table_values(&self.item.val().device()))
    }

    /// [`Ncf::fold_history`], EASE keeping its scores as a table only up to `table_values`.
    pub(crate) fn fold_history_within(&self, offsets: &[usize], items: &[u32], table_values: usize) -> Ncf {
        let ease = self.head.layout.kind == ModelKind::Ease;
        if self.head.history == 0.0 && !ease {
            return self.clone();
        }
        let n_users = self.n_users();
        assert_eq!(offsets.len(), n_users + 1, "one history per user");
        let h = Histories { offsets: offsets.to_vec(), items: items.to_vec() };
        let mut folded = self.clone();
        if ease && n_users * self.n_items() > table_values {
            folded.ease_history = Some(std::sync::Arc::new(h));
            return folded;
        }
        folded.user = Param::from_tensor(self.fold_rows(&(0..n_users).collect::<Vec<_>>(), &h));
        folded
    }

    /// The rows of `users` with their histories `h` folded in ([`Head::with_history`]), gathered
    /// in chunks of at most [`FOLD_VALUES`] history values (one user at least); each user is
    /// summed within one chunk, so the bits do not depend on the chunking.
    ///
    /// # Shapes
    /// - `[users.len(), width]` (EASE: `[users.len(), n_items]`)
    pub(crate) fn fold_rows(&self, users: &[usize], h: &Histories) -> Tensor<2> {
        let (table, item_table) = (self.user.val(), self.item.val());
        let device = table.device();
        let offsets = &h.offsets;
        let len = |u: usize| offsets[u + 1] - offsets[u];
        let per_call = (FOLD_VALUES / item_table.dims()[1]).max(1);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < users.len() {
            // Users until the chunk holds `per_call` entries (at least one user).
            let (mut end, mut entries) = (start + 1, len(users[start]));
            while end < users.len() && entries + len(users[end]) <= per_call {
                entries += len(users[end]);
                end += 1;
            }
            let chunk = &users[start..end];
            let rows = HistoryRows {
                item_pos: int_tensor(chunk.iter().flat_map(|&u| h.items[offsets[u]..offsets[u + 1]].iter().map(|&i| i as i32)).collect(), &device),
                user_pos: int_tensor(chunk.iter().enumerate().flat_map(|(k, &u)| std::iter::repeat_n(k as i32, len(u))).collect(), &device),
                count: int_tensor(chunk.iter().map(|&u| len(u) as i32).collect(), &device),
            };
            let own = int_tensor(chunk.iter().map(|&u| u as i32).collect(), &device);
            parts.push(self.head.with_history(table.clone().select(0, own), item_table.clone(), &rows));
            start = end;
        }
        if parts.is_empty() {
            let w = if self.head.layout.kind == ModelKind::Ease { self.n_items() } else { table.dims()[1] };
            return Tensor::zeros([0, w], &device);
        }
        Tensor::cat(parts, 0)
    }

    /// The item-side part of whole-catalogue scoring, computed once per pass.
    pub fn item_side(&self) -> ItemSide {
        self.head.item_side(self.item.val())
    }

    /// Logits of every user in `users` against every item, without forming pair rows for
    /// GMF and MF (one matmul) and with the item half of the first MLP layer precomputed.
    ///
    /// # Shapes
    /// - users: `[chunk]` → `[chunk, n_items]`
    pub fn score_all(&self, users: Tensor<1, burn::tensor::Int>, items: &ItemSide) -> Tensor<2> {
        if self.ease_history.is_some() {
            return crate::ease::score_all(self, users);
        }
        let u = self.user.val().select(0, users);
        self.head.score_all(u, items)
    }
}

impl Head {
    /// User rows with their histories mixed in: `(1 - w)·row + w·mean(history item rows)` with
    /// w = `history`, for users with a history; the others keep their row. Differentiable in
    /// both the user and the item rows. EASE: the sum of the history rows, its scores.
    ///
    /// # Shapes
    /// - user_rows: `[u, width]`, item_rows: `[i, width]`, history: `[h]`, `[h]`, `[u]` → `[u, width]`
    ///   (EASE: `[u, 1]`, `[i, i]` → `[u, i]`)
    pub fn with_history(&self, user_rows: Tensor<2>, item_rows: Tensor<2>, history: &HistoryRows) -> Tensor<2> {
        let u = user_rows.dims()[0];
        let width = item_rows.dims()[1];
        let entries = item_rows.select(0, history.item_pos.clone());
        let sum =
            crate::scatter::select_assign(Tensor::<2>::zeros([u, width], &user_rows.device()), 0, history.user_pos.clone(), entries, IndexingUpdateOp::Add);
        if self.layout.kind == ModelKind::Ease {
            return sum;
        }
        let count = history.count.clone().float().reshape([u, 1]);
        // w for users with a history, 0 for the rest (whose sum is zero).
        let w = count.clone().greater_elem(0.0).float().mul_scalar(self.history);
        user_rows * (w.clone().neg().add_scalar(1.0)) + sum / count.clamp_min(1.0) * w
    }

    /// The GMF/MF factor part of table rows, L2-normalised when the head compares by cosine.
    ///
    /// # Shapes
    /// - rows: `[r, width]` → `[r, gmf]`
    pub fn factors(&self, rows: Tensor<2>) -> Tensor<2> {
        let [r, _] = rows.dims();
        let f = rows.slice([0..r, 0..self.layout.gmf]);
        if self.cosine { normalize(f) } else { f }
    }

    /// The item-side part of scoring every user against the item rows `table` (the whole
    /// catalogue, or a batch's candidates).
    pub fn item_side(&self, table: Tensor<2>) -> ItemSide {
        let l = self.layout;
        let n = table.dims()[0];
        let mlp_in = (l.mlp > 0).then(|| {
            let first = &self.mlp[0];
            let w = first.weight.val();
            let [d_in, d_out] = w.dims();
            let w_item = w.slice([d_in / 2..d_in, 0..d_out]);
            let x = table.clone().slice([0..n, l.gmf..l.gmf + l.mlp]).matmul(w_item);
            match &first.bias {
                Some(b) => x + b.val().unsqueeze_dim(0),
                None => x,
            }
        });
        let dot_t = (l.gmf > 0).then(|| {
            let device = table.device();
            let mut parts = vec![self.factors(table.clone())];
            match (l.kind, self.cosine) {
                // MF by cosine has no biases: the score is the cosine alone.
                (ModelKind::Mf, true) => {}
                // [i, 1, b_i]: the ones meet the user bias, the item bias the user's ones.
                (ModelKind::Mf, false) => parts.extend([Tensor::ones([n, 1], &device), table.clone().slice([0..n, l.gmf..l.gmf + 1])]),
                // [i, 1]: the ones meet the output bias.
                _ => parts.push(Tensor::ones([n, 1], &device)),
            }
            Tensor::cat(parts, 1).transpose()
        });
        ItemSide { table, dot_t, mlp_in }
    }

    /// Logits of every user row against every item row, for training against a batch's shared
    /// candidates: one matmul for GMF and MF; the MLP tower runs per (user, item) pair, so its
    /// cost grows with `b × m`. Dropout applies in the tower.
    ///
    /// # Shapes
    /// - user: `[b, width]`, items: `[m, width]` → `[b, m]`
    pub fn score_matrix(&self, user: Tensor<2>, items: Tensor<2>) -> Tensor<2> {
        let side = self.item_side(items);
        self.score_all_with(user, &side, true)
    }

    /// Logits from gathered user and item rows (inference: no dropout).
    ///
    /// # Shapes
    /// - user, item: `[batch, width]` → `[batch]`
    pub fn forward(&self, user: Tensor<2>, item: Tensor<2>) -> Tensor<1> {
        self.forward_with(user, item, false)
    }

    /// [`Head::forward`] with dropout in the MLP tower, for training steps. Masks come from the
    /// device's random generator, which the trainer seeds from the run's seed.
    pub fn forward_train(&self, user: Tensor<2>, item: Tensor<2>) -> Tensor<1> {
        self.forward_with(user, item, true)
    }

    /// Training forward from the batch's unique rows and each sample's position in them: the
    /// first MLP layer runs once per unique user and item (its input halves are separable), then
    /// per-sample rows are gathered; no `[batch, 2·width]` concatenation is formed. Equal to
    /// [`Head::forward_train`] on `user_rows.select(0, user_pos)`, `item_rows.select(0, item_pos)`.
    ///
    /// # Shapes
    /// - user_rows: `[u, width]`, user_pos: `[batch]`, item_rows: `[i, width]`, item_pos: `[batch]`
    ///   → `[batch]`
    pub fn forward_rows(&self, user_rows: Tensor<2>, user_pos: Tensor<1, Int>, item_rows: Tensor<2>, item_pos: Tensor<1, Int>) -> Tensor<1> {
        let l = self.layout;
        if l.mlp == 0 {
            return self.forward_with(user_rows.select(0, user_pos), item_rows.select(0, item_pos), true);
        }
        let [b] = user_pos.dims();
        let ([nu, _], [ni, _]) = (user_rows.dims(), item_rows.dims());
        let first = &self.mlp[0];
        let w1 = first.weight.val();
        let [d_in, d_out] = w1.dims();
        let pu = user_rows.clone().slice([0..nu, l.gmf..l.gmf + l.mlp]).matmul(w1.clone().slice([0..d_in / 2, 0..d_out]));
        let pi = item_rows.clone().slice([0..ni, l.gmf..l.gmf + l.mlp]).matmul(w1.slice([d_in / 2..d_in, 0..d_out]));
        let mut x = pu.select(0, user_pos.clone()) + pi.select(0, item_pos.clone());
        if let Some(bias) = &first.bias {
            x = x + bias.val().unsqueeze_dim(0);
        }
        let mut h = self.dropout(relu(x), true);
        h = self.tower(h, 1, true);
        let h = if l.gmf > 0 {
            let ug = self.factors(user_rows).select(0, user_pos);
            let ig = self.factors(item_rows).select(0, item_pos);
            Tensor::cat(vec![ug * ig, h], 1)
        } else {
            h
        };
        self.output.as_ref().expect("output layer").forward(h).reshape([b])
    }

    fn forward_with(&self, user: Tensor<2>, item: Tensor<2>, train: bool) -> Tensor<1> {
        let l = self.layout;
        assert!(l.kind != ModelKind::Ease, "EASE scores through Ncf::score_pairs and score_all, which know the item ids");
        let [b, _] = user.dims();
        if l.kind == ModelKind::Mf {
            let f = l.gmf;
            let dot = (self.factors(user.clone()) * self.factors(item.clone())).sum_dim(1);
            if self.cosine {
                return dot.reshape([b]);
            }
            return (dot + user.slice([0..b, f..f + 1]) + item.slice([0..b, f..f + 1])).reshape([b]);
        }
        let mut parts = Vec::with_capacity(2);
        if l.gmf > 0 {
            parts.push(self.factors(user.clone()) * self.factors(item.clone()));
        }
        if l.mlp > 0 {
            let x = Tensor::cat(vec![user.slice([0..b, l.gmf..l.gmf + l.mlp]), item.slice([0..b, l.gmf..l.gmf + l.mlp])], 1);
            parts.push(self.tower(x, 0, train));
        }
        let h = if parts.len() == 1 { parts.pop().unwrap() } else { Tensor::cat(parts, 1) };
        self.output.as_ref().expect("output layer").forward(h).reshape([b])
    }

    /// The MLP tower from layer `from` on, ReLU after every layer (paper), inverted dropout
    /// after each when training.
    fn tower(&self, mut x: Tensor<2>, from: usize, train: bool) -> Tensor<2> {
        for layer in &self.mlp[from..] {
            x = self.dropout(relu(layer.forward(x)), train);
        }
        x
    }

    /// Inverted dropout on a hidden activation when training.
    fn dropout(&self, x: Tensor<2>, train: bool) -> Tensor<2> {
        if !train || self.dropout <= 0.0 {
            return x;
        }
        let keep = 1.0 - self.dropout;
        let mask = Tensor::<2>::random(x.shape(), Distribution::Bernoulli(keep), &x.device());
        x * mask.mul_scalar(1.0 / keep)
    }

    /// See [`Ncf::score_all`].
    ///
    /// # Shapes
    /// - user: `[chunk, width]` → `[chunk, n_items]`
    pub fn score_all(&self, user: Tensor<2>, items: &ItemSide) -> Tensor<2> {
        self.score_all_with(user, items, false)
    }

    fn score_all_with(&self, user: Tensor<2>, items: &ItemSide, train: bool) -> Tensor<2> {
        let l = self.layout;
        if l.kind == ModelKind::Ease {
            // Folded EASE user rows are the scores.
            return user;
        }
        let [c, _] = user.dims();
        let n = items.n_items();
        let device = user.device();
        if l.kind == ModelKind::Mf {
            let dot_t = items.dot_t.clone().expect("item side built for this head");
            if self.cosine {
                return self.factors(user).matmul(dot_t);
            }
            // [u, b_u, 1] · [i, 1, b_i] = u·i + b_u + b_i in one matmul.
            let u = Tensor::cat(vec![user, Tensor::ones([c, 1], &device)], 1);
            return u.matmul(dot_t);
        }
        let out = self.output.as_ref().expect("output layer");
        let w = out.weight.val(); // [gmf + last, 1]
        let [w_rows, _] = w.dims();
        let bias = out.bias.as_ref().map(|b| b.val().reshape([1, 1])).unwrap_or_else(|| w.zeros_like().slice([0..1, 0..1]));
        let mut scores = if l.gmf > 0 {
            // (u ⊙ w_gmf) · i + b  ==  [u ⊙ w_gmfᵀ, b] @ [i, 1]ᵀ
            let wg = w.clone().slice([0..l.gmf, 0..1]).transpose();
            let ug = self.factors(user.clone()) * wg;
            Tensor::cat(vec![ug, bias.expand([c, 1])], 1).matmul(items.dot_t.clone().expect("item side built for this head"))
        } else {
            bias
        };
        if l.mlp > 0 {
            let first = &self.mlp[0];
            let w1 = first.weight.val();
            let [d_in, d_out] = w1.dims();
            let pu = user.slice([0..c, l.gmf..l.gmf + l.mlp]).matmul(w1.slice([0..d_in / 2, 0..d_out]));
            let pi = items.mlp_in.clone().expect("item side built for this head");
            let x = self.dropout(relu(pu.unsqueeze_dim::<3>(1) + pi.unsqueeze_dim::<3>(0)).reshape([c * n, d_out]), train);
            let h = self.tower(x, 1, train);
            let wm = w.slice([l.gmf..w_rows, 0..1]);
            scores = scores + h.matmul(wm).reshape([c, n]);
        }
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn ints(v: Vec<i32>, d: &Device) -> Tensor<1, Int> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), d)
    }

    fn vecf<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn shapes_and_whole_catalogue_scoring_match_pairwise_forward() {
        let d = Device::flex();
        let (nu, ni) = (7, 11);
        for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::Neumf, ModelKind::Mf] {
            let cfg = ModelConfig { kind, factors: 4, layers: vec![8, 6, 3], init_std: 0.5, ..Default::default() };
            let model = Ncf::init(&cfg, nu, ni, 1, &d);
            assert_eq!(model.user.val().dims(), [nu, cfg.layout().width()]);
            let users = [0i32, 3, 6];
            let all = model.score_all(ints(users.to_vec(), &d), &model.item_side());
            assert_eq!(all.dims(), [3, ni]);
            let all = vecf(all);
            let pu: Vec<i32> = users.iter().flat_map(|&u| std::iter::repeat_n(u, ni)).collect();
            let pi: Vec<i32> = (0..users.len()).flat_map(|_| 0..ni as i32).collect();
            let pairs = model.score_pairs(ints(pu, &d), ints(pi, &d));
            assert_eq!(pairs.dims(), [3 * ni]);
            for (a, b) in all.iter().zip(vecf(pairs)) {
                assert!((a - b).abs() < 1e-4, "{kind:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn pretrained_neumf_starts_from_its_gmf_and_mlp_scores() {
        let d = Device::flex();
        let layers = vec![6, 4, 2];
        let gmf = Ncf::init(&ModelConfig { kind: ModelKind::Gmf, factors: 3, layers: layers.clone(), init_std: 0.5, ..Default::default() }, 5, 7, 1, &d);
        let mlp = Ncf::init(&ModelConfig { kind: ModelKind::Mlp, factors: 3, layers: layers.clone(), init_std: 0.5, ..Default::default() }, 5, 7, 2, &d);
        let cfg = ModelConfig { kind: ModelKind::Neumf, factors: 3, layers, init_std: 0.5, ..Default::default() };
        let alpha = 0.3;
        let neumf = Ncf::from_pretrained(&cfg, &gmf, &mlp, alpha).unwrap();
        let (u, i) = (vec![0, 1, 4, 4, 2], vec![6, 0, 3, 5, 1]);
        let score = |m: &Ncf| vecf(m.score_pairs(ints(u.clone(), &d), ints(i.clone(), &d)));
        let (n, g, p) = (score(&neumf), score(&gmf), score(&mlp));
        for k in 0..u.len() {
            let want = alpha as f32 * g[k] + (1.0 - alpha as f32) * p[k];
            assert!((n[k] - want).abs() < 1e-5, "pair {k}: {} vs {want}", n[k]);
        }
        let wrong = ModelConfig { factors: 4, ..cfg.clone() };
        assert!(Ncf::from_pretrained(&wrong, &gmf, &mlp, alpha).unwrap_err().contains("factors"));
        assert!(Ncf::from_pretrained(&cfg, &mlp, &gmf, alpha).is_err());
    }

    /// Autodiff gradients of the BCE loss with respect to the gathered rows and the output layer
    /// agree with central finite differences, for every model.
    #[test]
    fn gradients_match_finite_differences() {
        use crate::loss::bce_with_logits;
        use crate::optim::Track;
        let d = Device::flex();
        let h = 1e-2f32;
        for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::Neumf, ModelKind::Mf] {
            let cfg = ModelConfig { kind, factors: 3, layers: vec![6, 4, 3], init_std: 0.5, ..Default::default() };
            let model = Ncf::init(&cfg, 4, 5, 3, &d);
            let (users, items) = (ints(vec![0, 2, 3, 2], &d), ints(vec![1, 4, 0, 0], &d));
            let labels = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0, 0.0], [4]), &d);
            let u_rows = model.user.val().select(0, users);
            let i_rows = model.item.val().select(0, items);
            let loss_at =
                |u: &Tensor<2>, i: &Tensor<2>, head: &Head| -> f32 { bce_with_logits(head.forward(u.clone(), i.clone()), labels.clone()).into_scalar::<f32>() };
            let (ut, it) = (u_rows.clone().autodiff().require_grad(), i_rows.clone().autodiff().require_grad());
            let head = model.head.clone().map(&mut Track);
            let grads = bce_with_logits(head.forward(ut.clone(), it.clone()), labels.clone()).backward();
            let check = |name: &str, analytic: Vec<f32>, numeric: Vec<f32>| {
                assert_eq!(analytic.len(), numeric.len());
                for (k, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
                    assert!((a - n).abs() <= 1e-3 + 2e-2 * n.abs(), "{kind:?} {name}[{k}]: autodiff {a}, finite difference {n}");
                }
            };
            let bump = |t: &Tensor<2>, k: usize, by: f32| -> Tensor<2> {
                let mut v = vecf(t.clone());
                v[k] += by;
                host_tensor(v, t.dims(), &d)
            };
            for (name, leaf, rows) in [("user rows", &ut, &u_rows), ("item rows", &it, &i_rows)] {
                let analytic = vecf(leaf.grad(&grads).unwrap());
                let numeric = (0..analytic.len())
                    .map(|k| {
                        let (plus, minus) = (bump(rows, k, h), bump(rows, k, -h));
                        let (lp, lm) = if name == "user rows" {
                            (loss_at(&plus, &i_rows, &model.head), loss_at(&minus, &i_rows, &model.head))
                        } else {
                            (loss_at(&u_rows, &plus, &model.head), loss_at(&u_rows, &minus, &model.head))
                        };
                        (lp - lm) / (2.0 * h)
                    })
                    .collect();
                check(name, analytic, numeric);
            }
            if let Some(out) = &head.output {
                let analytic = vecf(out.weight.val().grad(&grads).unwrap());
                let w = model.head.output.as_ref().unwrap().weight.val();
                let numeric = (0..analytic.len())
                    .map(|k| {
                        let at = |by: f32| {
                            let mut head = model.head.clone();
                            head.output.as_mut().unwrap().weight = Param::from_tensor(bump(&w, k, by));
                            loss_at(&u_rows, &i_rows, &head)
                        };
                        (at(h) - at(-h)) / (2.0 * h)
                    })
                    .collect();
                check("output weight", analytic, numeric);
            }
        }
    }

    #[test]
    fn dropout_applies_to_training_forward_only_and_follows_the_device_seed() {
        let d = Device::flex();
        let cfg = ModelConfig { kind: ModelKind::Mlp, layers: vec![8, 16, 8], dropout: 0.5, init_std: 0.5, ..Default::default() };
        let model = Ncf::init(&cfg, 3, 3, 1, &d);
        let (u, i) = (model.user.val(), model.item.val());
        let eval = vecf(model.head.forward(u.clone(), i.clone()));
        assert_eq!(eval, vecf(model.head.forward(u.clone(), i.clone())));
        d.seed(7);
        let a = vecf(model.head.forward_train(u.clone(), i.clone()));
        d.seed(7);
        let b = vecf(model.head.forward_train(u.clone(), i.clone()));
        assert_eq!(a, b);
        assert_ne!(a, eval);
    }

    #[test]
    fn row_forward_equals_pairwise_forward() {
        let d = Device::flex();
        for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::Neumf, ModelKind::Mf] {
            let cfg = ModelConfig { kind, factors: 3, layers: vec![6, 4, 2], init_std: 0.5, ..Default::default() };
            let model = Ncf::init(&cfg, 5, 6, 4, &d);
            let (users, items) = (ints(vec![4, 1, 3], &d), ints(vec![0, 5], &d));
            let (upos, ipos) = (ints(vec![0, 2, 1, 1, 0], &d), ints(vec![1, 0, 0, 1, 1], &d));
            let ur = model.user.val().select(0, users);
            let ir = model.item.val().select(0, items);
            let rows = vecf(model.head.forward_rows(ur.clone(), upos.clone(), ir.clone(), ipos.clone()));
            let pairs = vecf(model.head.forward(ur.select(0, upos), ir.select(0, ipos)));
            for (a, b) in rows.iter().zip(&pairs) {
                assert!((a - b).abs() < 1e-5, "{kind:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn folded_history_mixes_each_users_mean_item_row_in_every_chunk() {
        let d = Device::flex();
        // Width 64: a fold chunk holds 65,536 history entries (f32 sums of that many: 1e-4).
        let cfg = ModelConfig { kind: ModelKind::Mf, factors: 63, init_std: 0.1, history: 0.25, ..Default::default() };
        let (n_users, n_items) = (4, 7);
        let model = Ncf::init(&cfg, n_users, n_items, 5, &d);
        // User 0 has a history longer than a fold chunk (so user 1 starts the next one), user 2
        // none, user 3 two items.
        let mut histories: Vec<Vec<u32>> = vec![(0..(FOLD_VALUES / cfg.layout().width()) as u32 + 3).map(|k| k % 7).collect(), vec![2], vec![], vec![6, 1]];
        histories[0].sort();
        let offsets: Vec<usize> = std::iter::once(0)
            .chain(histories.iter().scan(0, |n, h| {
                *n += h.len();
                Some(*n)
            }))
            .collect();
        let items: Vec<u32> = histories.concat();
        let folded = model.fold_history(&offsets, &items);
        let (own, item_rows, got) = (vecf(model.user.val()), vecf(model.item.val()), vecf(folded.user.val()));
        let w = cfg.layout().width();
        for (u, h) in histories.iter().enumerate() {
            for c in 0..w {
                let mean = h.iter().map(|&i| item_rows[i as usize * w + c] as f64).sum::<f64>() / h.len().max(1) as f64;
                let wu = if h.is_empty() { 0.0 } else { 0.25 };
                let want = (1.0 - wu) * own[u * w + c] as f64 + wu * mean;
                assert!((got[u * w + c] as f64 - want).abs() < 1e-4, "user {u} column {c}: {} vs {want}", got[u * w + c]);
            }
        }
        assert_eq!(vecf(folded.item.val()), item_rows, "items untouched");
        let plain = Ncf::init(&ModelConfig { history: 0.0, ..cfg }, n_users, n_items, 5, &d);
        assert_eq!(vecf(plain.fold_history(&offsets, &items).user.val()), vecf(plain.user.val()), "no history, no change");
    }

    #[test]
    fn init_is_seeded_and_mf_biases_start_at_zero() {
        let d = Device::flex();
        let cfg = ModelConfig { kind: ModelKind::Mf, factors: 3, ..Default::default() };
        let a = vecf(Ncf::init(&cfg, 4, 5, 7, &d).user.val());
        assert_eq!(a, vecf(Ncf::init(&cfg, 4, 5, 7, &d).user.val()));
        assert_ne!(a, vecf(Ncf::init(&cfg, 4, 5, 8, &d).user.val()));
        assert!(a.chunks(4).all(|row| row[3] == 0.0));
    }
}

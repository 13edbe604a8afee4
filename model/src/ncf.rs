//! The NCF model family behind one contract: user and item tables plus a head that turns a user
//! row and an item row into a logit.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, Normal, Uniform};

use crate::config::{ModelConfig, ModelKind, TableLayout};

/// GMF, MLP, NeuMF or MF: one user table, one item table (columns laid out by [`TableLayout`])
/// and the dense head.
#[derive(Module, Debug)]
pub struct Ncf {
    /// `[n_users, layout.width()]`
    pub user: Param<Tensor<2>>,
    /// `[n_items, layout.width()]`
    pub item: Param<Tensor<2>>,
    pub head: Head,
}

/// The dense part: the MLP tower and the output layer. Small; updated densely.
#[derive(Module, Debug)]
pub struct Head {
    pub mlp: Vec<Linear>,
    pub output: Option<Linear>,
    #[module(skip)]
    pub layout: TableLayout,
}

/// Item-side work shared by every user chunk when scoring against the whole catalogue.
pub struct ItemSide {
    /// `[n_items, width]`
    table: Tensor<2>,
    /// Item half of the factor dot product, transposed, with a row of ones (and MF's item-bias
    /// row) so user-side biases fold into the same matmul: `[gmf + 1 (+1 for MF), n_items]`.
    dot_t: Option<Tensor<2>>,
    /// First MLP layer applied to the item half, bias included: `[n_items, layers[1]]`.
    mlp_in: Option<Tensor<2>>,
}

impl ItemSide {
    pub fn n_items(&self) -> usize {
        self.table.dims()[0]
    }
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
    Linear {
        weight: Param::from_tensor(host_tensor(w, [d_in, d_out], device)),
        bias: Some(Param::from_tensor(host_tensor(b, [d_out], device))),
    }
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
        let user = table(n_users, &mut rng);
        let item = table(n_items, &mut rng);
        let mlp: Vec<Linear> = match config.kind {
            ModelKind::Mlp | ModelKind::Neumf => {
                config.layers.windows(2).map(|w| linear(w[0], w[1], &mut rng, device)).collect()
            }
            _ => Vec::new(),
        };
        let out_width = match config.kind {
            ModelKind::Gmf => config.factors,
            ModelKind::Mlp => *config.layers.last().unwrap(),
            ModelKind::Neumf => config.factors + config.layers.last().unwrap(),
            ModelKind::Mf => 0,
        };
        let output = (out_width > 0).then(|| linear(out_width, 1, &mut rng, device));
        Self { user, item, head: Head { mlp, output, layout } }
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
        self.head.forward(self.user.val().select(0, users), self.item.val().select(0, items))
    }

    /// The item-side part of whole-catalogue scoring, computed once per pass.
    pub fn item_side(&self) -> ItemSide {
        let table = self.item.val();
        let l = self.head.layout;
        let mlp_in = (l.mlp > 0).then(|| {
            let first = &self.head.mlp[0];
            let w = first.weight.val();
            let [d_in, d_out] = w.dims();
            let w_item = w.slice([d_in / 2..d_in, 0..d_out]);
            let x = table.clone().slice([0..self.n_items(), l.gmf..l.gmf + l.mlp]).matmul(w_item);
            match &first.bias {
                Some(b) => x + b.val().unsqueeze_dim(0),
                None => x,
            }
        });
        let n = self.n_items();
        let dot_t = (l.gmf > 0).then(|| {
            let device = table.device();
            let mut parts = vec![table.clone().slice([0..n, 0..l.gmf]), Tensor::ones([n, 1], &device)];
            if l.kind == ModelKind::Mf {
                parts.push(table.clone().slice([0..n, l.gmf..l.gmf + 1]));
            }
            Tensor::cat(parts, 1).transpose()
        });
        ItemSide { table, dot_t, mlp_in }
    }

    /// Logits of every user in `users` against every item, without forming pair rows for
    /// GMF and MF (one matmul) and with the item half of the first MLP layer precomputed.
    ///
    /// # Shapes
    /// - users: `[chunk]` → `[chunk, n_items]`
    pub fn score_all(&self, users: Tensor<1, burn::tensor::Int>, items: &ItemSide) -> Tensor<2> {
        let u = self.user.val().select(0, users);
        self.head.score_all(u, items)
    }
}

impl Head {
    /// Logits from gathered user and item rows.
    ///
    /// # Shapes
    /// - user, item: `[batch, width]` → `[batch]`
    pub fn forward(&self, user: Tensor<2>, item: Tensor<2>) -> Tensor<1> {
        let l = self.layout;
        let [b, _] = user.dims();
        if l.kind == ModelKind::Mf {
            let f = l.gmf;
            let dot = (user.clone().slice([0..b, 0..f]) * item.clone().slice([0..b, 0..f])).sum_dim(1);
            return (dot + user.slice([0..b, f..f + 1]) + item.slice([0..b, f..f + 1])).reshape([b]);
        }
        let mut parts = Vec::with_capacity(2);
        if l.gmf > 0 {
            parts.push(user.clone().slice([0..b, 0..l.gmf]) * item.clone().slice([0..b, 0..l.gmf]));
        }
        if l.mlp > 0 {
            let x = Tensor::cat(
                vec![user.slice([0..b, l.gmf..l.gmf + l.mlp]), item.slice([0..b, l.gmf..l.gmf + l.mlp])],
                1,
            );
            parts.push(self.tower(x, 0));
        }
        let h = if parts.len() == 1 { parts.pop().unwrap() } else { Tensor::cat(parts, 1) };
        self.output.as_ref().expect("output layer").forward(h).reshape([b])
    }

    /// The MLP tower from layer `from` on, ReLU after every layer (paper).
    fn tower(&self, mut x: Tensor<2>, from: usize) -> Tensor<2> {
        for layer in &self.mlp[from..] {
            x = relu(layer.forward(x));
        }
        x
    }

    /// See [`Ncf::score_all`].
    ///
    /// # Shapes
    /// - user: `[chunk, width]` → `[chunk, n_items]`
    pub fn score_all(&self, user: Tensor<2>, items: &ItemSide) -> Tensor<2> {
        let l = self.layout;
        let [c, _] = user.dims();
        let n = items.n_items();
        let device = user.device();
        if l.kind == ModelKind::Mf {
            // [u, b_u, 1] · [i, 1, b_i] = u·i + b_u + b_i in one matmul.
            let u = Tensor::cat(vec![user, Tensor::ones([c, 1], &device)], 1);
            return u.matmul(items.dot_t.clone().expect("item side built for this head"));
        }
        let out = self.output.as_ref().expect("output layer");
        let w = out.weight.val(); // [gmf + last, 1]
        let [w_rows, _] = w.dims();
        let bias = out.bias.as_ref().map(|b| b.val().reshape([1, 1])).unwrap_or_else(|| w.zeros_like().slice([0..1, 0..1]));
        let mut scores = if l.gmf > 0 {
            // (u ⊙ w_gmf) · i + b  ==  [u ⊙ w_gmfᵀ, b] @ [i, 1]ᵀ
            let wg = w.clone().slice([0..l.gmf, 0..1]).transpose();
            let ug = user.clone().slice([0..c, 0..l.gmf]) * wg;
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
            let x = relu(pu.unsqueeze_dim::<3>(1) + pi.unsqueeze_dim::<3>(0)).reshape([c * n, d_out]);
            let h = self.tower(x, 1);
            let wm = w.slice([l.gmf..w_rows, 0..1]);
            scores = scores + h.matmul(wm).reshape([c, n]);
        }
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Int;

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
            let cfg = ModelConfig { kind, factors: 4, layers: vec![8, 6, 3], init_std: 0.5 };
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
    fn init_is_seeded_and_mf_biases_start_at_zero() {
        let d = Device::flex();
        let cfg = ModelConfig { kind: ModelKind::Mf, factors: 3, ..Default::default() };
        let a = vecf(Ncf::init(&cfg, 4, 5, 7, &d).user.val());
        assert_eq!(a, vecf(Ncf::init(&cfg, 4, 5, 7, &d).user.val()));
        assert_ne!(a, vecf(Ncf::init(&cfg, 4, 5, 8, &d).user.val()));
        assert!(a.chunks(4).all(|row| row[3] == 0.0));
    }
}

//! Training losses on logits: per sample (BCE, BPR over a positive's own negatives) and over a
//! batch's score matrix against negatives shared by every positive of the batch ([`shared_loss`]).

use burn::tensor::{
    Bool, Int, Tensor,
    activation::{log_sigmoid, log_softmax, relu},
};
use serde::{Deserialize, Serialize};

/// Which loss trains the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Pointwise binary cross-entropy with sampled negatives (NCF paper).
    #[default]
    Bce,
    /// Pairwise Bayesian personalised ranking.
    Bpr,
    /// Sampled softmax: each positive against the batch's shared negatives (and the batch's
    /// other positives), scores divided by a temperature, logQ-corrected for how candidates
    /// were sampled. Trains on shared negatives only.
    Softmax,
    /// Cosine contrastive loss (SimpleX, Mao et al. 2021): `(1 - s⁺)₊ + w · mean (s⁻ - m)₊` on
    /// cosine scores (`model.cosine`; other heads' logits pass through tanh). Trains on shared
    /// negatives only.
    Ccl,
}

impl LossKind {
    /// The name used in configs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bce => "bce",
            Self::Bpr => "bpr",
            Self::Softmax => "softmax",
            Self::Ccl => "ccl",
        }
    }

    /// Whether the loss needs a batch's shared negatives (see [`shared_loss`]).
    pub fn shared_only(self) -> bool {
        matches!(self, Self::Softmax | Self::Ccl)
    }
}

/// Settings of the losses over a batch's shared negatives ([`shared_loss`]). Defaults: τ 0.1,
/// CCL margin 0.4 and negative weight 1, the batch's other positives as negatives too, logQ
/// correction on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Softmax temperature τ: logits are scores / τ (small τ suits cosine scores).
    pub temperature: f64,
    /// CCL margin m: negatives whose cosine is below it add no loss.
    pub margin: f64,
    /// CCL weight w of the negative term (the mean over a positive's negatives).
    pub negative_weight: f64,
    /// Also score each positive against the other positives' items of its batch (in-batch
    /// negatives), an item repeated in the batch excepted.
    pub in_batch: bool,
    /// Softmax: subtract each candidate's log sampling rate (logQ correction), so popular items
    /// drawn often as negatives are not pushed down for it.
    pub logq: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { temperature: 0.1, margin: 0.4, negative_weight: 1.0, in_batch: true, logq: true }
    }
}

impl LossConfig {
    /// Checks ranges before training starts.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!("loss.temperature = {}: must be positive", self.temperature));
        }
        if !(-1.0..1.0).contains(&self.margin) {
            return Err(format!("loss.margin = {}: a cosine margin lies in [-1, 1)", self.margin));
        }
        if !(self.negative_weight >= 0.0 && self.negative_weight.is_finite()) {
            return Err(format!("loss.negative_weight = {}: must be ≥ 0", self.negative_weight));
        }
        Ok(())
    }
}

/// Mean binary cross-entropy of `logits` against 0/1 `labels`, computed stably from logits.
///
/// # Shapes
/// - logits, labels: `[batch]`
pub fn bce_with_logits(logits: Tensor<1>, labels: Tensor<1>) -> Tensor<1> {
    // -(y·log σ(x) + (1-y)·log σ(-x)) = (1-y)·x - log σ(x)
    let ones = labels.ones_like();
    ((ones - labels) * logits.clone() - log_sigmoid(logits)).mean()
}

/// Mean BPR loss: -log σ(positive - negative).
///
/// # Shapes
/// - pos, neg: `[batch]`
pub fn bpr(pos: Tensor<1>, neg: Tensor<1>) -> Tensor<1> {
    log_sigmoid(pos - neg).mean().neg()
}

/// A training batch's loss from its logits: BCE against `labels`, or BPR over groups of `group`
/// samples, a positive followed by its negatives (every (positive, negative) pair).
///
/// # Shapes
/// - logits, labels: `[batch]` → `[1]`
pub fn batch_loss(kind: LossKind, logits: Tensor<1>, labels: Tensor<1>, group: usize) -> Tensor<1> {
    match kind {
        LossKind::Bce => bce_with_logits(logits, labels),
        LossKind::Bpr => {
            let [b] = logits.dims();
            assert!(group >= 2 && b.is_multiple_of(group), "BPR trains on whole groups of a positive and its negatives: {b} samples in groups of {group}");
            let g = logits.reshape([b / group, group]);
            let pos = g.clone().slice([0..b / group, 0..1]).expand([b / group, group - 1]);
            let neg = g.slice([0..b / group, 1..group]);
            let n = (b / group) * (group - 1);
            bpr(pos.reshape([n]), neg.reshape([n]))
        }
        LossKind::Softmax | LossKind::Ccl => unreachable!("{} trains on shared negatives (shared_loss)", kind.name()),
    }
}

/// A batch's scores against shared candidates, and which of them are negatives of each row.
///
/// Column `j < b` is the item of the batch's positive `j` (so the diagonal holds each row's own
/// positive); columns `b..` are the shared negatives.
///
/// # Shapes
/// - scores: `[b, b + n]`; negative: `[b, b + n]` (true where the column is a negative of the
///   row: never the diagonal, nor a column holding the row's own item); log_rate: `[b + n]`
pub struct SharedScores {
    pub scores: Tensor<2>,
    pub negative: Tensor<2, Bool>,
    /// Log of each candidate's expected count among a batch's candidates (logQ correction);
    /// `None`: no correction.
    pub log_rate: Option<Tensor<1>>,
}

/// The mean loss of a batch scored against shared candidates (see [`SharedScores`]):
/// - `bce`: every (row, candidate) pair weighted equally, `-log σ(s⁺) - Σ log σ(-s⁻)` over
///   `1 + negatives` per row;
/// - `bpr`: `-log σ(s⁺ - s⁻)` over every (positive, negative) pair;
/// - `softmax`: cross-entropy of the positive among its row's candidates at logits
///   `s / τ - log rate`;
/// - `ccl`: `(1 - s⁺)₊ + w · mean (s⁻ - m)₊` (scores expected in [-1, 1]).
///
/// # Shapes
/// - → `[1]`
pub fn shared_loss(kind: LossKind, config: &LossConfig, s: SharedScores) -> Tensor<1> {
    let [b, c] = s.scores.dims();
    let device = s.scores.device();
    let diag = Tensor::<1, Int>::arange(0..b as i64, &device).reshape([b, 1]);
    let pos = s.scores.clone().gather(1, diag.clone()); // [b, 1]
    let neg = s.negative.clone().float();
    let count = neg.clone().sum_dim(1); // [b, 1]
    match kind {
        LossKind::Bce => {
            let per_row = log_sigmoid(pos).neg() + (log_sigmoid(s.scores.neg()).neg() * neg).sum_dim(1);
            (per_row / count.add_scalar(1.0)).mean()
        }
        LossKind::Bpr => {
            let pairs = log_sigmoid(pos.expand([b, c]) - s.scores).neg() * neg;
            pairs.sum() / count.sum().clamp_min(1.0)
        }
        LossKind::Softmax => {
            let mut z = s.scores.div_scalar(config.temperature);
            if let Some(rate) = s.log_rate {
                z = z - rate.reshape([1, c]);
            }
            // Candidates that are neither the row's positive nor one of its negatives drop out.
            let keep = s.negative.bool_or(diag_mask(b, c, &device));
            let z = z.mask_fill(keep.bool_not(), -1e9);
            log_softmax(z, 1).gather(1, diag).neg().mean()
        }
        LossKind::Ccl => {
            let pos_term = relu(pos.neg().add_scalar(1.0));
            let neg_term = (relu(s.scores.sub_scalar(config.margin)) * neg).sum_dim(1) / count.clamp_min(1.0);
            (pos_term + neg_term.mul_scalar(config.negative_weight)).mean()
        }
    }
}

/// `[b, c]` true on the diagonal.
fn diag_mask(b: usize, c: usize, device: &burn::tensor::Device) -> Tensor<2, Bool> {
    let rows = Tensor::<1, Int>::arange(0..b as i64, device).reshape([b, 1]).expand([b, c]);
    let cols = Tensor::<1, Int>::arange(0..c as i64, device).reshape([1, c]).expand([b, c]);
    rows.equal(cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn bce_matches_hand_computation() {
        let d = Device::flex();
        let x = Tensor::<1>::from_data(TensorData::from([0.0f32, 2.0, -1.0]), &d);
        let y = Tensor::<1>::from_data(TensorData::from([1.0f32, 0.0, 0.0]), &d);
        let got: f32 = bce_with_logits(x, y).into_scalar();
        let s = |v: f32| 1.0 / (1.0 + (-v).exp());
        let want = -((s(0.0)).ln() + (1.0 - s(2.0)).ln() + (1.0 - s(-1.0)).ln()) / 3.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn bpr_matches_hand_computation() {
        let d = Device::flex();
        let p = Tensor::<1>::from_data(TensorData::from([1.0f32, 0.0]), &d);
        let n = Tensor::<1>::from_data(TensorData::from([0.0f32, 0.5]), &d);
        let got: f32 = bpr(p, n).into_scalar();
        let want = ((1.0 + (-1.0f32).exp()).ln() + (1.0 + 0.5f32.exp()).ln()) / 2.0;
        assert!((got - want).abs() < 1e-5);
    }

    /// Autodiff's gradient of [`shared_loss`] with respect to the scores, beside the gradient
    /// derived by hand (below), for every loss, with accidental hits, rows whose in-batch
    /// columns are off and a logQ correction.
    #[test]
    fn shared_losses_gradients_match_their_derivation() {
        use rand::{RngExt, SeedableRng};
        let d = Device::flex();
        let (b, n) = (3usize, 4usize);
        let c = b + n;
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(5);
        let s: Vec<f32> = (0..b * c).map(|_| rng.random_range(-0.99f32..0.99)).collect();
        let rate: Vec<f32> = (0..c).map(|_| rng.random_range(-3.0f32..0.0)).collect();
        // Row 0 meets its own item again in column 4; row 2 sees no in-batch negatives.
        let negative: Vec<bool> = (0..b * c).map(|k| (k / c != k % c) && k != 4 && !(k / c == 2 && k % c < b)).collect();
        let config = LossConfig { temperature: 0.5, margin: 0.1, negative_weight: 3.0, ..Default::default() };
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        for kind in [LossKind::Bce, LossKind::Bpr, LossKind::Softmax, LossKind::Ccl] {
            let scores = Tensor::<2>::from_data(TensorData::new(s.clone(), [b, c]), &d).autodiff().require_grad();
            let mask = Tensor::<2, Bool>::from_data(TensorData::new(negative.clone(), [b, c]), &d);
            let log_rate = Some(Tensor::<1>::from_data(TensorData::new(rate.clone(), [c]), &d));
            let loss = shared_loss(kind, &config, SharedScores { scores: scores.clone(), negative: mask, log_rate });
            let got: Vec<f32> = scores.grad(&loss.backward()).unwrap().into_data().try_into_vec_as().unwrap();
            let mut want = vec![0.0f32; b * c];
            let total_neg = negative.iter().filter(|&&x| x).count() as f32;
            for r in 0..b {
                let row = &s[r * c..(r + 1) * c];
                let neg = |j: usize| negative[r * c + j];
                let count = (0..c).filter(|&j| neg(j)).count() as f32;
                let p = row[r];
                match kind {
                    LossKind::Bce => {
                        want[r * c + r] = -(1.0 - sig(p)) / (1.0 + count) / b as f32;
                        for j in (0..c).filter(|&j| neg(j)) {
                            want[r * c + j] = sig(row[j]) / (1.0 + count) / b as f32;
                        }
                    }
                    LossKind::Bpr => {
                        for j in (0..c).filter(|&j| neg(j)) {
                            let g = sig(row[j] - p) / total_neg;
                            want[r * c + j] = g;
                            want[r * c + r] -= g;
                        }
                    }
                    LossKind::Softmax => {
                        let t = config.temperature as f32;
                        let z: Vec<f32> = (0..c).map(|j| row[j] / t - rate[j]).collect();
                        let kept: Vec<usize> = (0..c).filter(|&j| j == r || neg(j)).collect();
                        let m = kept.iter().map(|&j| z[j]).fold(f32::MIN, f32::max);
                        let sum: f32 = kept.iter().map(|&j| (z[j] - m).exp()).sum();
                        for &j in &kept {
                            let prob = (z[j] - m).exp() / sum;
                            want[r * c + j] = (prob - (j == r) as u8 as f32) / t / b as f32;
                        }
                    }
                    LossKind::Ccl => {
                        want[r * c + r] = -((p < 1.0) as u8 as f32) / b as f32;
                        for j in (0..c).filter(|&j| neg(j) && row[j] > config.margin as f32) {
                            want[r * c + j] = config.negative_weight as f32 / count / b as f32;
                        }
                    }
                }
            }
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "{kind:?} score ({}, {}): autodiff {g} vs derived {w}", k / c, k % c);
            }
        }
    }
}

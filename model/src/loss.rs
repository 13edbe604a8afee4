//! Training losses on logits.

use burn::tensor::{Tensor, activation::log_sigmoid};

/// Which loss trains the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Pointwise binary cross-entropy with sampled negatives (NCF paper).
    #[default]
    Bce,
    /// Pairwise Bayesian personalised ranking.
    Bpr,
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
            let g = logits.reshape([b / group, group]);
            let pos = g.clone().slice([0..b / group, 0..1]).expand([b / group, group - 1]);
            let neg = g.slice([0..b / group, 1..group]);
            let n = (b / group) * (group - 1);
            bpr(pos.reshape([n]), neg.reshape([n]))
        }
    }
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
}

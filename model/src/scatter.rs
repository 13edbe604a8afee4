//! `select_assign` over many indices, in pieces. burn-cubecl 0.22.1's kernel walks a select's
//! indices in one loop per output slot, and on wgpu (seen on lavapipe) it silently drops every
//! index past the 65,536th: `ncf recommend --backend wgpu` then left training items unmasked
//! for users past that point. Pieces of at most [`PIECE`] indices keep every backend exact.

use burn::tensor::{IndexingUpdateOp, Int, Tensor};

/// Indices per `select_assign` call.
pub const PIECE: usize = 1 << 15;

/// `tensor.select_assign(dim, indices, values, op)`, [`PIECE`] indices at a time.
///
/// # Shapes
/// - indices: `[m]`, values: `tensor`'s shape with `m` along `dim` → `tensor`'s shape
pub fn select_assign<const D: usize>(tensor: Tensor<D>, dim: usize, indices: Tensor<1, Int>, values: Tensor<D>, op: IndexingUpdateOp) -> Tensor<D> {
    let [m] = indices.dims();
    if m <= PIECE {
        return tensor.select_assign(dim, indices, values, op);
    }
    (0..m).step_by(PIECE).fold(tensor, |t, start| {
        let len = PIECE.min(m - start);
        t.select_assign(dim, indices.clone().slice([start..start + len]), values.clone().narrow(dim, start, len), op)
    })
}

#[cfg(all(test, any(feature = "flex", feature = "cube")))]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// Every index lands, on every backend, past the count where burn's kernel stops on wgpu.
    #[test]
    fn every_index_lands_on_every_backend() {
        let m = 3 * PIECE + 17;
        for d in crate::optim::fused_tests::devices() {
            let idx: Vec<i32> = (0..m as i32).map(|k| (k * 7) % (2 * m as i32)).collect();
            let indices = Tensor::<1, Int>::from_data(TensorData::new(idx, [m]), &d);
            let ones = Tensor::<1>::ones([m], &d);
            let sum = |t: Tensor<1>| t.sum().into_scalar::<f32>();
            let added = select_assign(Tensor::<1>::zeros([2 * m], &d), 0, indices.clone(), ones, IndexingUpdateOp::Add);
            assert_eq!(sum(added), m as f32, "{d:?}");
            // Rows of a matrix, as the history mean and the optimizer's row updates use it.
            let rows = select_assign(Tensor::<2>::zeros([2 * m, 2], &d), 0, indices, Tensor::ones([m, 2], &d), IndexingUpdateOp::Add);
            assert_eq!(sum(rows.reshape([4 * m])), 2.0 * m as f32, "{d:?}");
        }
    }
}

//! Side features in the model: an entity's vector is its id row plus the weighted sum of its
//! feature rows (a categorical value, a bucket of a number, a genre). The feature tables are
//! ordinary embedding tables, one per side, updated row-sparsely like the id tables; which rows
//! make each entity, and with what weight, comes from the data ([`FeatureRows`]).
//!
//! Composition sits outside the head: a step adds the composed rows to the gathered id rows
//! before the head sees them, and splits the head's gradient with respect to those rows into
//! the id rows' (the same) and the feature rows' ([`FeatureRows::backward`]). So every model,
//! loss and backend trains with features through the path it already has.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::scatter;

/// Which feature rows make each of `n` entities: per (entity, feature) pair, the entity, the
/// feature row and its weight. The rows are listed once (`rows`), so a step's update of the
/// feature table touches each used row once.
#[derive(Debug, Clone)]
pub struct FeatureRows {
    /// The feature-table rows used, unique: `[f]`.
    pub rows: Tensor<1, Int>,
    /// Per pair, the entity's index among the `n` entities: `[nnz]`.
    pub entity: Tensor<1, Int>,
    /// Per pair, the feature's index into `rows`: `[nnz]`.
    pub feature: Tensor<1, Int>,
    /// Per pair, its weight: `[nnz]`.
    pub weight: Tensor<1>,
    /// Entities composed.
    pub n: usize,
}

/// [`FeatureRows`] on the host, as a batch builder or a checkpoint holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFeatureRows {
    pub rows: Vec<i32>,
    pub entity: Vec<i32>,
    pub feature: Vec<i32>,
    pub weight: Vec<f32>,
    pub n: usize,
}

impl HostFeatureRows {
    /// The pairs of `entities` (indices into a CSR of (row, weight) pairs per entity, as
    /// `offsets[e]..offsets[e + 1]` of `rows`/`weights`), their used rows numbered in order of
    /// first use.
    pub fn gather(entities: impl IntoIterator<Item = usize>, offsets: &[u32], rows: &[u32], weights: &[f32], table_rows: usize) -> Self {
        // Dense row → position map: feature tables are small next to the id tables.
        let mut position = vec![-1i32; table_rows];
        let mut out = Self::default();
        for (k, e) in entities.into_iter().enumerate() {
            let (a, b) = (offsets[e] as usize, offsets[e + 1] as usize);
            for (&r, &w) in rows[a..b].iter().zip(&weights[a..b]) {
                let p = &mut position[r as usize];
                if *p < 0 {
                    *p = out.rows.len() as i32;
                    out.rows.push(r as i32);
                }
                out.entity.push(k as i32);
                out.feature.push(*p);
                out.weight.push(w);
            }
            out.n = k + 1;
        }
        out
    }

    pub fn to_device(&self, device: &Device) -> FeatureRows {
        let ints = |v: &[i32]| Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        FeatureRows {
            rows: ints(&self.rows),
            entity: ints(&self.entity),
            feature: ints(&self.feature),
            weight: Tensor::from_data(TensorData::new(self.weight.clone(), [self.weight.len()]), device),
            n: self.n,
        }
    }
}

impl FeatureRows {
    /// Each entity's weighted sum of its feature rows, from the whole feature table.
    ///
    /// # Shapes
    /// - table: `[table_rows, width]` → `[n, width]`
    pub fn compose(&self, table: Tensor<2>) -> Tensor<2> {
        self.mix(table.select(0, self.rows.clone()))
    }

    /// Each entity's weighted sum of the used rows `picked` (in the order of `rows`).
    ///
    /// # Shapes
    /// - picked: `[f, width]` → `[n, width]`
    pub fn mix(&self, picked: Tensor<2>) -> Tensor<2> {
        let [_, width] = picked.dims();
        let [nnz] = self.weight.dims();
        let zeros = Tensor::zeros([self.n, width], &picked.device());
        if nnz == 0 {
            return zeros;
        }
        let terms = picked.select(0, self.feature.clone()) * self.weight.clone().reshape([nnz, 1]);
        scatter::select_assign(zeros, 0, self.entity.clone(), terms, IndexingUpdateOp::Add)
    }

    /// The gradient of [`FeatureRows::mix`] with respect to the used rows, given its gradient
    /// with respect to the composed rows.
    ///
    /// # Shapes
    /// - grad: `[n, width]` → `[f, width]`
    pub fn backward(&self, grad: Tensor<2>) -> Tensor<2> {
        let [_, width] = grad.dims();
        let ([f], [nnz]) = (self.rows.dims(), self.weight.dims());
        let zeros = Tensor::zeros([f, width], &grad.device());
        if nnz == 0 {
            return zeros;
        }
        let terms = grad.select(0, self.entity.clone()) * self.weight.clone().reshape([nnz, 1]);
        scatter::select_assign(zeros, 0, self.feature.clone(), terms, IndexingUpdateOp::Add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// Three entities over a 4-row table: e0 = r2, e1 = ½(r0 + r2), e2 = nothing.
    fn rows(d: &Device) -> (HostFeatureRows, FeatureRows) {
        let offsets = [0u32, 1, 3, 3];
        let host = HostFeatureRows::gather([0, 1, 2], &offsets, &[2, 0, 2], &[1.0, 0.5, 0.5], 4);
        assert_eq!(host.rows, [2, 0], "used rows in order of first use");
        assert_eq!((host.entity.as_slice(), host.feature.as_slice(), host.n), (&[0, 1, 1][..], &[0, 1, 0][..], 3));
        let on = host.to_device(d);
        (host, on)
    }

    #[test]
    fn compose_sums_weighted_rows_and_backward_is_its_transpose() {
        let d = Device::flex();
        let (_, f) = rows(&d);
        let table = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 10.0, 20.0, 100.0, 200.0, 7.0, 7.0], [4, 2]), &d);
        assert_eq!(values(f.compose(table.clone())), [100.0, 200.0, 50.5, 101.0, 0.0, 0.0]);
        // <mix(x), g> = <x, backward(g)> for any x, g: the adjoint.
        let x = Tensor::<2>::from_data(TensorData::new(vec![0.3f32, -1.0, 2.0, 0.5], [2, 2]), &d);
        let g = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, -3.0, 0.25, 9.0, 9.0], [3, 2]), &d);
        let lhs: f32 = (f.mix(x.clone()) * g.clone()).sum().into_scalar();
        let rhs: f32 = (x * f.backward(g)).sum().into_scalar();
        assert!((lhs - rhs).abs() < 1e-5, "{lhs} vs {rhs}");
    }

    #[test]
    fn backward_matches_autodiff() {
        let d = Device::flex().autodiff();
        let (_, f) = rows(&d);
        let picked = Tensor::<2>::from_data(TensorData::new(vec![0.3f32, -1.0, 2.0, 0.5], [2, 2]), &d).require_grad();
        let g = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, -3.0, 0.25, 9.0, 9.0], [3, 2]), &d);
        let grads = (f.mix(picked.clone()) * g.clone()).sum().backward();
        let auto = values(picked.grad(&grads).unwrap());
        let ours = values(f.backward(g).inner());
        assert_eq!(auto, ours);
    }
}

//! EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): item-item weights
//! `B = I - P·diag(1/diag(P))` with `P = (XᵀX + λI)⁻¹`, i.e. `B[j, i] = -P[j, i] / P[i, i]` off
//! the diagonal and 0 on it, fitted in closed form. A user's scores are `x_u·B`, the sum of its
//! history items' rows of B ([`crate::Ncf::fold_history`]): kept as one table where it is small
//! enough ([`table_values`]), else summed per chunk of users whenever scored ([`scores`],
//! [`Ncf::score_pairs`]).
//!
//! The Gram matrix is counted exactly on the host from the histories (integer counts, so in any
//! order the same bits); the inverse runs on the device as a recursive block inversion made of
//! matmuls, so a GPU does the `O(n³)` work and no value is read back.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::config::ModelKind;
use crate::ncf::Ncf;

/// The model `model` (an EASE [`Ncf`] from [`Ncf::init`]) with B fitted to the users' histories,
/// given as CSR (`offsets[u]..offsets[u + 1]` of `items`), with L2 weight `lambda`.
pub fn fit(model: &Ncf, offsets: &[usize], items: &[u32], lambda: f64) -> Ncf {
    assert_eq!(model.head.layout.kind, ModelKind::Ease, "ease::fit fits EASE models");
    let n = model.n_items();
    let device = model.item.val().device();
    let gram = gram(offsets, items, n, lambda as f32);
    let p = spd_inverse(Tensor::from_data(TensorData::new(gram, [n, n]), &device));
    let mut fitted = model.clone();
    fitted.item = burn::module::Param::from_tensor(weights_from_inverse(p));
    fitted
}

/// The most users × items scores an EASE fold on `device` keeps as one table: 1 GiB of f32 on
/// flex, 128 MiB elsewhere (what any wgpu adapter binds in one buffer). Past it, each chunk of
/// users is summed from the histories whenever scored ([`Ncf::ease_history`]): memory stays
/// bounded by B whatever the number of users (ML-20M's 138k × 26.7k as a table would take
/// 14.8 GB), at the cost of a fold per scoring pass instead of one.
pub fn table_values(device: &Device) -> usize {
    if crate::rows::on_flex(device) { 1 << 28 } else { 1 << 25 }
}

/// [`Ncf::score_pairs`] of a folded EASE model: from its table of scores, picking
/// `user·n_items + item`; or, summed from the histories, the pairs taken by chunks of users
/// (each chunk's `[users, n_items]` scores at most [`crate::ncf::FOLD_VALUES`] values, one user
/// at least) and put back in the callers' order.
pub(crate) fn score_pairs(model: &Ncf, users: Tensor<1, Int>, items: Tensor<1, Int>) -> Tensor<1> {
    let n = model.n_items();
    let Some(h) = &model.ease_history else {
        let table = model.user.val();
        assert_eq!(table.dims()[1], n, "EASE scores through the model Ncf::fold_history returns");
        let nu = table.dims()[0];
        return table.reshape([nu * n]).select(0, users.mul_scalar(n as i64) + items);
    };
    let device = model.user.val().device();
    let (users, items) = (host_ids(users), host_ids(items));
    let mut order: Vec<usize> = (0..users.len()).collect();
    order.sort_by_key(|&k| users[k]);
    let per_chunk = (crate::ncf::FOLD_VALUES / n).max(1);
    let mut parts = Vec::new();
    let mut at = 0;
    while at < order.len() {
        // Pairs of the next `per_chunk` distinct users.
        let (mut chunk_users, mut flat) = (Vec::new(), Vec::new());
        while at < order.len() {
            let u = users[order[at]];
            if chunk_users.last() != Some(&u) {
                if chunk_users.len() == per_chunk {
                    break;
                }
                chunk_users.push(u);
            }
            flat.push(((chunk_users.len() - 1) * n + items[order[at]]) as i32);
            at += 1;
        }
        let scores = model.fold_rows(&chunk_users, h);
        let c = chunk_users.len();
        parts.push(scores.reshape([c * n]).select(0, crate::ncf::int_tensor(flat, &device)));
    }
    if parts.is_empty() {
        return Tensor::zeros([0], &device);
    }
    // Back from user order to the callers' order.
    let mut back = vec![0i32; order.len()];
    for (pos, &k) in order.iter().enumerate() {
        back[k] = pos as i32;
    }
    Tensor::cat(parts, 0).select(0, crate::ncf::int_tensor(back, &device))
}

/// Ids on the host (EASE's chunked scoring groups them by user there).
fn host_ids(t: Tensor<1, Int>) -> Vec<usize> {
    t.into_data().iter::<i64>().map(|v| v as usize).collect()
}

/// [`Ncf::score_all`] of a folded EASE model whose scores are summed from the histories.
///
/// # Shapes
/// - users: `[chunk]` → `[chunk, n_items]`
pub(crate) fn score_all(model: &Ncf, users: Tensor<1, Int>) -> Tensor<2> {
    scores(model, &host_ids(users))
}

/// A folded EASE model's scores of `users` against every item.
///
/// # Shapes
/// - `[users.len(), n_items]`
pub fn scores(model: &Ncf, users: &[usize]) -> Tensor<2> {
    match &model.ease_history {
        Some(h) => model.fold_rows(users, h),
        None => {
            let device = model.user.val().device();
            model.user.val().select(0, crate::ncf::int_tensor(users.iter().map(|&u| u as i32).collect(), &device))
        }
    }
}

/// `‖X − XB‖²_F` divided by the number of training interactions (EASE's reconstruction error,
/// its objective without the L2 term), from `folded`, the model after
/// [`Ncf::fold_history`] with the same histories, whose scores are `XB`; summed over chunks of
/// users, so no users × items table is formed.
///
/// # Shapes
/// → `[1]`
pub fn reconstruction_error(folded: &Ncf, offsets: &[usize], items: &[u32]) -> Tensor<1> {
    let device = folded.item.val().device();
    let (n, n_users, nnz) = (folded.n_items(), offsets.len() - 1, items.len());
    let per_chunk = (ERROR_CHUNK_VALUES / n.max(1)).max(1);
    let mut total = Tensor::<1>::zeros([1], &device);
    for start in (0..n_users).step_by(per_chunk) {
        let users: Vec<usize> = (start..(start + per_chunk).min(n_users)).collect();
        let f = scores(folded, &users);
        let on_x: Vec<i32> =
            users.iter().flat_map(|&u| items[offsets[u]..offsets[u + 1]].iter().map(move |&i| ((u - start) * n + i as usize) as i32)).collect();
        let on_x = f.clone().reshape([users.len() * n]).select(0, crate::ncf::int_tensor(on_x, &device)).sum();
        // Σ (x − f)² = Σ f² − 2 Σ_{x = 1} f + nnz
        total = total + f.powf_scalar(2.0).sum() - on_x.mul_scalar(2.0);
    }
    total.add_scalar(nnz as f64).div_scalar(nnz.max(1) as f64)
}

/// Scores per chunk of users in [`reconstruction_error`] (64 MiB of f32).
const ERROR_CHUNK_VALUES: usize = 1 << 24;

/// `XᵀX + λI` of the binary user × item matrix the histories describe, row-major `[n, n]`:
/// entry `(i, j)` counts the users who have both items.
pub fn gram(offsets: &[usize], items: &[u32], n_items: usize, lambda: f32) -> Vec<f32> {
    let mut g = vec![0f32; n_items * n_items];
    for w in offsets.windows(2) {
        let h = &items[w[0]..w[1]];
        for &i in h {
            let row = &mut g[i as usize * n_items..(i as usize + 1) * n_items];
            for &j in h {
                row[j as usize] += 1.0;
            }
        }
    }
    (0..n_items).for_each(|i| g[i * n_items + i] += lambda);
    g
}

/// B from `P = (XᵀX + λI)⁻¹`: each column divided by its diagonal entry and negated, the diagonal
/// zeroed (an item does not recommend itself).
///
/// # Shapes
/// - p: `[n, n]` → `[n, n]`
pub fn weights_from_inverse(p: Tensor<2>) -> Tensor<2> {
    let [n, _] = p.dims();
    let device = p.device();
    // P's diagonal, picked from the flat matrix at i·(n + 1) (not summed out of P ⊙ I).
    let at = Tensor::<1, Int>::arange(0..n as i64, &device).mul_scalar(n as i64 + 1);
    let diag = p.clone().reshape([n * n]).select(0, at).reshape([1, n]);
    let b = p.div(diag).neg();
    // `diag_mask` is true off the diagonal.
    b.mask_fill(Tensor::<2, Bool>::diag_mask([n, n], 0, &device).bool_not(), 0.0)
}

/// The inverse of a symmetric positive-definite matrix by recursive 2×2 block inversion through
/// the Schur complement, matmuls only (no pivoting: SPD blocks and their Schur complements stay
/// SPD). About `4n³/3` flops, the same bits for any thread count on a given backend.
///
/// # Shapes
/// - m: `[n, n]` → `[n, n]`
pub fn spd_inverse(m: Tensor<2>) -> Tensor<2> {
    let [n, n2] = m.dims();
    assert_eq!(n, n2, "a square matrix");
    if n == 1 {
        return m.recip();
    }
    let h = n / 2;
    let a = m.clone().slice([0..h, 0..h]);
    let b = m.clone().slice([0..h, h..n]);
    let d = m.slice([h..n, h..n]);
    let a_inv = spd_inverse(a);
    let a_inv_b = a_inv.clone().matmul(b.clone()); // [h, n - h]
    let schur = d - b.transpose().matmul(a_inv_b.clone());
    let s_inv = spd_inverse(schur);
    // [[A⁻¹ + A⁻¹B·S⁻¹·BᵀA⁻¹, -A⁻¹B·S⁻¹], [-S⁻¹·BᵀA⁻¹, S⁻¹]]
    let upper_right = a_inv_b.clone().matmul(s_inv.clone()).neg();
    let upper_left = a_inv - upper_right.clone().matmul(a_inv_b.transpose());
    let lower_left = upper_right.clone().transpose();
    Tensor::cat(vec![Tensor::cat(vec![upper_left, upper_right], 1), Tensor::cat(vec![lower_left, s_inv], 1)], 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use burn::tensor::Device;
    use rand::{RngExt, SeedableRng};

    fn vecf(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// Gauss-Jordan with partial pivoting in f64: the reference the device inverse is held to.
    fn inverse_f64(m: &[f64], n: usize) -> Vec<f64> {
        let mut a = m.to_vec();
        let mut inv: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect();
        for c in 0..n {
            let p = (c..n).max_by(|&x, &y| a[x * n + c].abs().total_cmp(&a[y * n + c].abs())).unwrap();
            for k in 0..n {
                a.swap(c * n + k, p * n + k);
                inv.swap(c * n + k, p * n + k);
            }
            let piv = a[c * n + c];
            for k in 0..n {
                a[c * n + k] /= piv;
                inv[c * n + k] /= piv;
            }
            for r in (0..n).filter(|&r| r != c) {
                let f = a[r * n + c];
                for k in 0..n {
                    a[r * n + k] -= f * a[c * n + k];
                    inv[r * n + k] -= f * inv[c * n + k];
                }
            }
        }
        inv
    }

    /// Random histories: 40 users over `n` items, 0 to 12 items each, sorted and distinct.
    fn histories(n: usize, seed: u64) -> (Vec<usize>, Vec<u32>) {
        histories_of(40, n, seed)
    }

    /// The same for `users` users.
    fn histories_of(users: usize, n: usize, seed: u64) -> (Vec<usize>, Vec<u32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut offsets, mut items) = (vec![0], Vec::new());
        for _ in 0..users {
            let mut h: Vec<u32> = (0..rng.random_range(0..=12)).map(|_| rng.random_range(0..n as u32)).collect();
            h.sort();
            h.dedup();
            items.extend(h);
            offsets.push(items.len());
        }
        (offsets, items)
    }

    #[test]
    fn spd_inverse_matches_gauss_jordan_on_odd_and_even_sizes() {
        let d = Device::flex();
        for n in [1, 2, 7, 33] {
            let (offsets, items) = histories(n, n as u64);
            let g = gram(&offsets, &items, n, 3.0);
            let want = inverse_f64(&g.iter().map(|&x| x as f64).collect::<Vec<_>>(), n);
            let got = vecf(spd_inverse(Tensor::from_data(TensorData::new(g, [n, n]), &d)));
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "n {n} entry {k}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn gram_counts_co_occurrences_and_adds_lambda_on_the_diagonal() {
        // Users {0, 2}, {2}, {1, 2}.
        let g = gram(&[0, 2, 3, 5], &[0, 2, 2, 1, 2], 3, 0.5);
        assert_eq!(g, vec![1.5, 0.0, 1.0, 0.0, 1.5, 1.0, 1.0, 1.0, 3.5]);
    }

    #[test]
    fn fitted_scores_are_the_histories_times_steck_b() {
        let d = Device::flex();
        let (n_users, n) = (40, 17);
        let (offsets, items) = histories(n, 11);
        let cfg = ModelConfig { kind: ModelKind::Ease, ease_lambda: 2.0, ..Default::default() };
        let model = fit(&Ncf::init(&cfg, n_users, n, 1, &d), &offsets, &items, cfg.ease_lambda);
        // Steck's closed form in f64.
        let g: Vec<f64> = gram(&offsets, &items, n, 2.0).iter().map(|&x| x as f64).collect();
        let p = inverse_f64(&g, n);
        let b: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 0.0 } else { -p[k] / p[(k % n) * n + k % n] }).collect();
        let got_b = vecf(model.item.val());
        for (k, (x, y)) in got_b.iter().zip(&b).enumerate() {
            assert!((*x as f64 - y).abs() < 1e-4, "B entry {k}: {x} vs {y}");
        }
        // Scores through the model contract: folded rows and scored pairs are x_u·B.
        let folded = model.fold_history(&offsets, &items);
        let all = vecf(folded.user.val());
        let users: Vec<i32> = (0..n_users as i32).flat_map(|u| std::iter::repeat_n(u, n)).collect();
        let its: Vec<i32> = (0..n_users * n).map(|k| (k % n) as i32).collect();
        let ints = |v: Vec<i32>| Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(v.clone(), [v.len()]), &d);
        let pairs = folded.score_pairs(ints(users), ints(its)).into_data().try_into_vec_as::<f32>().unwrap();
        for u in 0..n_users {
            for i in 0..n {
                let want: f64 = items[offsets[u]..offsets[u + 1]].iter().map(|&j| b[j as usize * n + i]).sum();
                assert!((all[u * n + i] as f64 - want).abs() < 1e-4, "user {u} item {i}: {} vs {want}", all[u * n + i]);
                assert_eq!(pairs[u * n + i], all[u * n + i]);
            }
        }
    }

    #[test]
    fn scores_summed_per_chunk_of_users_equal_the_folded_table() {
        // 5000 users × 2048 items: three chunks of users per pass (4M values each), and users
        // with empty histories; B random (the fold does not care how it was fitted).
        let d = Device::flex();
        let (n_users, n) = (5000, 2048);
        let (offsets, items) = histories_of(n_users, n, 5);
        let cfg = ModelConfig { kind: ModelKind::Ease, ..Default::default() };
        let mut model = Ncf::init(&cfg, n_users, n, 1, &d);
        model.item = burn::module::Param::from_tensor(Tensor::random([n, n], burn::tensor::Distribution::Normal(0.0, 0.1), &d));
        let table = model.fold_history(&offsets, &items);
        let lazy = model.fold_history_within(&offsets, &items, 0);
        assert!(table.ease_history.is_none() && lazy.ease_history.is_some());
        assert_eq!(lazy.user.val().dims(), [n_users, 1], "no users × items table");
        // Pairs in no particular order, users repeated and far apart.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let p = 20_000;
        let users: Vec<i32> = (0..p).map(|_| rng.random_range(0..n_users as i32)).collect();
        let its: Vec<i32> = (0..p).map(|_| rng.random_range(0..n as i32)).collect();
        let ints = |v: &[i32]| Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), &d);
        let pairs = |m: &Ncf| m.score_pairs(ints(&users), ints(&its)).into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(pairs(&lazy), pairs(&table));
        let some = [4999, 0, 17, 17, 2500];
        let all = |m: &Ncf| vecf(m.score_all(ints(&some), &m.item_side()));
        assert_eq!(all(&lazy), all(&table));
        let err = |m: &Ncf| reconstruction_error(m, &offsets, &items).into_scalar::<f32>();
        assert_eq!(err(&lazy), err(&table));
        // And the table is x_u·B.
        let b = vecf(model.item.val());
        let scores = vecf(table.user.val());
        for u in [0, 1, 2500, 4999] {
            for i in [0, 7, 2047] {
                let want: f32 = items[offsets[u]..offsets[u + 1]].iter().map(|&j| b[j as usize * n + i]).sum();
                assert!((scores[u * n + i] - want).abs() < 1e-4, "user {u} item {i}");
            }
        }
    }

    /// The chunked sums on every device this build runs (wgpu: host ids, chunks and the way back
    /// to the callers' order), against flex's table.
    #[cfg(all(feature = "flex", feature = "cube"))]
    #[test]
    fn chunked_scores_agree_across_devices() {
        let (n_users, n) = (300, 120);
        let (offsets, items) = histories_of(n_users, n, 8);
        let cfg = ModelConfig { kind: ModelKind::Ease, ..Default::default() };
        let b: Vec<f32> = {
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            (0..n * n).map(|_| rng.random_range(-0.1f32..0.1)).collect()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let users: Vec<i32> = (0..2000).map(|_| rng.random_range(0..n_users as i32)).collect();
        let its: Vec<i32> = (0..2000).map(|_| rng.random_range(0..n as i32)).collect();
        let run = |d: &Device, table_values: usize| {
            let mut model = Ncf::init(&cfg, n_users, n, 1, d);
            model.item = burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(b.clone(), [n, n]), d));
            let folded = model.fold_history_within(&offsets, &items, table_values);
            let ints = |v: &[i32]| Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), d);
            let pairs = folded.score_pairs(ints(&users), ints(&its)).into_data().try_into_vec_as::<f32>().unwrap();
            let all = vecf(folded.score_all(ints(&[7, 299, 0]), &folded.item_side()));
            let err = reconstruction_error(&folded, &offsets, &items).into_scalar::<f32>();
            (pairs, all, err)
        };
        let want = run(&Device::flex(), usize::MAX);
        for d in crate::optim::fused_tests::devices() {
            let got = run(&d, 0);
            for (a, b) in got.0.iter().zip(&want.0).chain(got.1.iter().zip(&want.1)) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b} on {d:?}");
            }
            assert!((got.2 - want.2).abs() < 1e-4 * want.2.abs(), "{} vs {} on {d:?}", got.2, want.2);
        }
    }
}

//! Evaluation on the device: scores, ranks and hit counts stay there; callers read back only
//! the summed metrics.

use burn::tensor::{Int, Tensor};

use crate::ncf::Ncf;

/// Summed sampled-protocol metrics of a chunk of candidate rows: `[hits, ndcg]` at `k`.
///
/// Column 0 of `items` is the test item; rank = number of negatives scoring ≥ it. Columns that
/// repeat the test item are padding (a user who has seen nearly every item has fewer negatives
/// to draw) and never count.
///
/// # Shapes
/// - users: `[rows]`, items: `[rows, width]` → `[2]`
pub fn sampled_sums(model: &Ncf, users: Tensor<1, Int>, items: Tensor<2, Int>, k: usize) -> Tensor<1> {
    sampled_rows(model, users, items, k).sum_dim(0).reshape([2])
}

/// Per-row sampled-protocol metrics: `[hit, ndcg]` at `k` for each candidate row (see
/// [`sampled_sums`], which sums them).
///
/// # Shapes
/// - users: `[rows]`, items: `[rows, width]` → `[rows, 2]`
pub fn sampled_rows(model: &Ncf, users: Tensor<1, Int>, items: Tensor<2, Int>, k: usize) -> Tensor<2> {
    let [rows, width] = items.dims();
    let user_rep = users.unsqueeze_dim::<2>(1).expand([rows, width]).reshape([rows * width]);
    let real = items.clone().slice([0..rows, 1..width]).not_equal(items.clone().slice([0..rows, 0..1]).expand([rows, width - 1]));
    let scores = model.score_pairs(user_rep, items.reshape([rows * width])).reshape([rows, width]);
    let test = scores.clone().slice([0..rows, 0..1]);
    let negs = scores.slice([0..rows, 1..width]);
    let rank = negs.greater_equal(test.expand([rows, width - 1])).bool_and(real).int().sum_dim(1).float(); // [rows, 1]
    let hit = rank.clone().lower_elem(k as f32).float();
    let ndcg = hit.clone() * (rank.add_scalar(2.0).log().recip().mul_scalar(std::f32::consts::LN_2));
    Tensor::cat(vec![hit, ndcg], 1)
}

/// One chunk of users for full-ranking evaluation, prepared on the host once and uploaded.
#[derive(Debug, Clone)]
pub struct RankingChunk {
    /// Users of the chunk (all with at least one test item): `[c]`.
    pub users: Tensor<1, Int>,
    /// Flat `row * n_items + item` of the users' training items (masked): `[m]`.
    pub train_flat: Tensor<1, Int>,
    /// Flat `row * n_items + item` of the users' test items: `[t]`.
    pub test_flat: Tensor<1, Int>,
    /// Per user: number of test items, and the ideal DCG and MAP divisor at k: `[c, 3]`.
    pub per_user: Tensor<2>,
}

impl RankingChunk {
    /// Builds a chunk from host data; `test_counts[r]` must be ≥ 1.
    pub fn new(users: &[u32], train: &[Vec<u32>], test: &[Vec<u32>], n_items: usize, k: usize, device: &burn::tensor::Device) -> Self {
        use burn::tensor::TensorData;
        let flat =
            |lists: &[Vec<u32>]| -> Vec<i32> { lists.iter().enumerate().flat_map(|(r, l)| l.iter().map(move |&i| (r * n_items) as i32 + i as i32)).collect() };
        let int = |v: Vec<i32>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        let mut per_user = Vec::with_capacity(users.len() * 3);
        for t in test {
            let ideal = k.min(t.len());
            let idcg: f64 = (0..ideal).map(|p| 1.0 / ((p + 2) as f64).log2()).sum();
            per_user.extend([t.len() as f32, idcg as f32, ideal as f32]);
        }
        Self {
            users: int(users.iter().map(|&u| u as i32).collect()),
            train_flat: int(flat(train)),
            test_flat: int(flat(test)),
            per_user: Tensor::from_data(TensorData::new(per_user, [users.len(), 3]), device),
        }
    }
}

/// Full-ranking sums over a chunk: `[recall, precision, ndcg, map]` at `k`, all items ranked with
/// the users' training items masked; `covered` (`[n_items]`) counts how often each item is in a
/// top-k list.
pub fn full_ranking_sums(model: &Ncf, items: &crate::ncf::ItemSide, chunk: &RankingChunk, k: usize, covered: &mut Tensor<1>) -> Tensor<1> {
    full_ranking_rows(model, items, chunk, k, covered).sum_dim(0).reshape([4])
}

/// Per-user full-ranking metrics of a chunk: `[recall, precision, ndcg, map]` at `k` for each
/// user (see [`full_ranking_sums`], which sums them).
///
/// # Shapes
/// - chunk of `c` users → `[c, 4]`
pub fn full_ranking_rows(model: &Ncf, items: &crate::ncf::ItemSide, chunk: &RankingChunk, k: usize, covered: &mut Tensor<1>) -> Tensor<2> {
    use burn::tensor::IndexingUpdateOp;
    let n = items.n_items();
    let c = chunk.users.dims()[0];
    let device = covered.device();
    let mut scores = model.score_all(chunk.users.clone(), items).reshape([c * n]);
    let m = chunk.train_flat.dims()[0];
    if m > 0 {
        let mask = Tensor::<1>::full([m], f32::NEG_INFINITY, &device);
        scores = crate::scatter::select_assign(scores, 0, chunk.train_flat.clone(), mask, IndexingUpdateOp::Add);
    }
    // A catalogue smaller than k ranks all its items (precision still divides by k).
    let (k_all, k) = (k, k.min(n));
    // burn's argtopk wants k < n; with k = n the full order is the top k.
    let scores = scores.reshape([c, n]);
    let top = if k < n { scores.argtopk(k, 1) } else { scores.argsort_descending(1) }; // [c, k]
    let t = chunk.test_flat.dims()[0];
    let relevant =
        crate::scatter::select_assign(Tensor::<1>::zeros([c * n], &device), 0, chunk.test_flat.clone(), Tensor::ones([t], &device), IndexingUpdateOp::Add)
            .reshape([c, n]);
    let hits = relevant.gather(1, top.clone()); // [c, k] of 0/1
    *covered = crate::scatter::select_assign(covered.clone(), 0, top.reshape([c * k]), Tensor::ones([c * k], &device), IndexingUpdateOp::Add);

    let positions: Vec<f32> = (0..k).map(|p| p as f32).collect();
    let pos = Tensor::<1>::from_data(burn::tensor::TensorData::new(positions, [k]), &device);
    let discount = pos.clone().add_scalar(2.0).log().recip().mul_scalar(std::f32::consts::LN_2).reshape([k, 1]);
    let upper: Vec<f32> = (0..k * k).map(|x| ((x / k) <= (x % k)) as u8 as f32).collect();
    let upper = Tensor::<2>::from_data(burn::tensor::TensorData::new(upper, [k, k]), &device); // cumsum along k
    let n_test = chunk.per_user.clone().slice([0..c, 0..1]);
    let idcg = chunk.per_user.clone().slice([0..c, 1..2]);
    let ideal = chunk.per_user.clone().slice([0..c, 2..3]);
    let hit_count = hits.clone().sum_dim(1); // [c, 1]
    let recall = hit_count.clone() / n_test;
    let precision = hit_count.div_scalar(k_all as f32);
    let ndcg = hits.clone().matmul(discount) / idcg;
    let precision_at = hits.clone().matmul(upper) / pos.add_scalar(1.0).reshape([1, k]);
    let ap = (hits * precision_at).sum_dim(1) / ideal;
    Tensor::cat(vec![recall, precision, ndcg, ap], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, ModelKind};
    use crate::metrics::{hit_at, ndcg_single_at, ranking_at, sampled_rank};
    use burn::tensor::{Device, TensorData};

    fn scores_of(model: &Ncf, user: u32, n_items: usize, d: &Device) -> Vec<f32> {
        let users = Tensor::<1, Int>::from_data(TensorData::new(vec![user as i32; n_items], [n_items]), d);
        let items = Tensor::<1, Int>::from_data(TensorData::new((0..n_items as i32).collect::<Vec<_>>(), [n_items]), d);
        model.score_pairs(users, items).into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// A row padded with its test item (fewer unseen items than negatives) ranks the test item
    /// among its real negatives only: padding never counts as a tie.
    #[test]
    fn padding_never_outranks_the_test_item() {
        let d = Device::flex();
        let model = Ncf::init(&ModelConfig { kind: ModelKind::Gmf, init_std: 1.0, ..Default::default() }, 1, 5, 3, &d);
        let s = scores_of(&model, 0, 5, &d);
        // Item 0's rank among items 1..5, then the same row padded to 20 negatives.
        let rank = sampled_rank(s[0], &s[1..]);
        let row: Vec<i32> = (0..5).chain(std::iter::repeat_n(0, 16)).collect();
        let users = Tensor::<1, Int>::from_data(TensorData::new(vec![0], [1]), &d);
        let items = Tensor::<2, Int>::from_data(TensorData::new(row, [1, 21]), &d);
        let got = sampled_rows(&model, users, items, 10).into_data().try_into_vec_as::<f32>().unwrap();
        assert!(got[0] == 1.0 && (got[1] as f64 - ndcg_single_at(rank, 10)).abs() < 1e-6, "rank {rank}: {got:?}");
        // All padding: the test item is first.
        let users = Tensor::<1, Int>::from_data(TensorData::new(vec![0], [1]), &d);
        let items = Tensor::<2, Int>::from_data(TensorData::new(vec![3; 12], [1, 12]), &d);
        assert_eq!(sampled_rows(&model, users, items, 1).into_data().try_into_vec_as::<f32>().unwrap(), [1.0, 1.0]);
    }

    #[test]
    fn sampled_sums_match_host_definitions() {
        let d = Device::flex();
        let (nu, ni, w) = (6, 40, 9);
        for kind in [ModelKind::Gmf, ModelKind::Neumf] {
            let cfg = ModelConfig { kind, init_std: 1.0, ..Default::default() };
            let model = Ncf::init(&cfg, nu, ni, 3, &d);
            let items: Vec<i32> = (0..nu * w).map(|x| ((x * 7 + x / w) % ni) as i32).collect();
            let (mut hr, mut nd) = (0.0, 0.0);
            for u in 0..nu {
                let s = scores_of(&model, u as u32, ni, &d);
                let row = &items[u * w..(u + 1) * w];
                let negs: Vec<f32> = row[1..].iter().map(|&j| s[j as usize]).collect();
                let rank = sampled_rank(s[row[0] as usize], &negs);
                hr += hit_at(rank, 3);
                nd += ndcg_single_at(rank, 3);
            }
            let users = Tensor::<1, Int>::from_data(TensorData::new((0..nu as i32).collect::<Vec<_>>(), [nu]), &d);
            let items_t = Tensor::<2, Int>::from_data(TensorData::new(items.clone(), [nu, w]), &d);
            let got = sampled_sums(&model, users, items_t, 3).into_data().try_into_vec_as::<f32>().unwrap();
            assert!((got[0] as f64 - hr).abs() < 1e-4 && (got[1] as f64 - nd).abs() < 1e-4, "{kind:?}: {got:?} vs {hr} {nd}");
        }
    }

    #[test]
    fn full_ranking_sums_match_host_definitions() {
        let d = Device::flex();
        let (nu, ni, k) = (5usize, 30usize, 4usize);
        let cfg = ModelConfig { kind: ModelKind::Mf, init_std: 1.0, ..Default::default() };
        let model = Ncf::init(&cfg, nu, ni, 9, &d);
        let train: Vec<Vec<u32>> = (0..nu).map(|u| (0..ni as u32).filter(|i| (i + u as u32).is_multiple_of(4)).collect()).collect();
        let test: Vec<Vec<u32>> = (0..nu).map(|u| (0..ni as u32).filter(|i| (i + 2 * u as u32) % 5 == 1 && !train[u].contains(i)).collect()).collect();
        let users: Vec<u32> = (0..nu as u32).collect();
        let chunk = RankingChunk::new(&users, &train, &test, ni, k, &d);
        let mut covered = Tensor::<1>::zeros([ni], &d);
        let side = model.item_side();
        let got = full_ranking_sums(&model, &side, &chunk, k, &mut covered).into_data().try_into_vec_as::<f32>().unwrap();
        let mut want = [0.0f64; 4];
        let mut cover = std::collections::HashSet::new();
        for u in 0..nu {
            let s = scores_of(&model, u as u32, ni, &d);
            let mut cand: Vec<u32> = (0..ni as u32).filter(|i| !train[u].contains(i)).collect();
            cand.sort_by(|a, b| s[*b as usize].total_cmp(&s[*a as usize]));
            cand.truncate(k);
            cover.extend(cand.iter().copied());
            let m = ranking_at(&cand, &test[u], k).unwrap();
            for (w, v) in want.iter_mut().zip([m.recall, m.precision, m.ndcg, m.map]) {
                *w += v;
            }
        }
        for j in 0..4 {
            assert!((got[j] as f64 - want[j]).abs() < 1e-4, "metric {j}: {got:?} vs {want:?}");
        }
        let covered = covered.into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(covered.iter().filter(|&&c| c > 0.0).count(), cover.len());
    }
}

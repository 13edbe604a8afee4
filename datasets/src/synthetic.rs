//! The built-in demo dataset: deterministic synthetic implicit feedback with a popularity skew and
//! planted latent preferences, so that a model that learns preferences beats item popularity.

use serde::{Deserialize, Serialize};

use crate::interactions::{IdMap, Interactions};
use crate::rng::{self, RngExt};
use crate::split::{Split, SplitMethod};
use crate::user_items::UserItems;

/// Shape of the demo data. Defaults: 3000 users, 2000 items, 8 latent factors, 20–80 items per user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    pub users: usize,
    pub items: usize,
    /// Dimension of the planted user/item preference vectors.
    pub factors: usize,
    pub min_per_user: usize,
    pub max_per_user: usize,
    /// Weight of log-popularity in the choice (0 = no skew).
    pub popularity_skew: f64,
    /// Weight of the planted preference in the choice.
    pub preference_strength: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self { users: 3000, items: 2000, factors: 8, min_per_user: 20, max_per_user: 80, popularity_skew: 1.0, preference_strength: 2.0 }
    }
}

impl DemoConfig {
    /// Generates the interactions; the same config and seed give the same data everywhere.
    pub fn generate(&self, seed: u64) -> Interactions {
        let d = self.factors.max(1);
        let mut rng = rng::stream(seed, &[0xDE_3000]);
        let mut vecs = |n: usize| -> Vec<f32> { (0..n * d).map(|_| rng::normal(&mut rng)).collect() };
        let user_vec = vecs(self.users);
        let item_vec = vecs(self.items);
        // Zipf-like popularity over a random permutation of the items.
        let mut rank: Vec<usize> = (0..self.items).collect();
        for k in (1..rank.len()).rev() {
            rank.swap(k, rng.random_range(0..=k));
        }
        let item_bias: Vec<f32> = rank.iter().map(|&r| -(self.popularity_skew as f32) * ((r + 1) as f32).ln()).collect();
        let scale = self.preference_strength as f32 / (d as f32).sqrt();

        let (mut user, mut item, mut time) = (Vec::new(), Vec::new(), Vec::new());
        let mut keyed: Vec<(f32, u32)> = Vec::with_capacity(self.items);
        let span = self.max_per_user.max(self.min_per_user) - self.min_per_user;
        for u in 0..self.users {
            let n = (self.min_per_user + rng.random_range(0..=span)).min(self.items);
            let pu = &user_vec[u * d..(u + 1) * d];
            // Gumbel top-n: a draw of n distinct items with probability ∝ exp(utility).
            keyed.clear();
            for i in 0..self.items {
                let qi = &item_vec[i * d..(i + 1) * d];
                let dot: f32 = pu.iter().zip(qi).map(|(a, b)| a * b).sum();
                let g = -(-(rng.random::<f64>().max(1e-300)).ln()).ln() as f32;
                keyed.push((scale * dot + item_bias[i] + g, i as u32));
            }
            keyed.select_nth_unstable_by(n - 1, |a, b| b.0.total_cmp(&a.0));
            let chosen = &mut keyed[..n];
            // Random order in time, so the latest interaction is no easier than the others.
            for k in (1..chosen.len()).rev() {
                chosen.swap(k, rng.random_range(0..=k));
            }
            for (t, &(_, i)) in chosen.iter().enumerate() {
                user.push(u as u32);
                item.push(i);
                time.push(t as i64);
            }
        }
        let mut data = Interactions {
            user,
            item,
            rating: None,
            time: Some(time),
            users: IdMap::from_raw((1..=self.users).map(|u| u.to_string()).collect()),
            items: IdMap::from_raw((1..=self.items).map(|i| i.to_string()).collect()),
        };
        data.compact_ids();
        data
    }
}

/// A leave-one-out split of a given shape, generated in time linear in its size, for benchmarks
/// at sizes where [`DemoConfig::generate`] (which scores every user against every item) is too slow:
/// ml-20m, or a catalogue of a million items. Each user gets about `per_user` distinct items (uniform
/// between a quarter and 1¾ of it) drawn with Zipf-like popularity (rank = ⌊items^x⌋ - 1, x uniform)
/// over a seeded permutation of the items, and no planted preferences; the last drawn is the test item.
pub fn shaped_split(users: usize, items: usize, per_user: usize, seed: u64) -> Split {
    let mut rng = rng::stream(seed, &[0x5A_A9ED]);
    let mut perm: Vec<u32> = (0..items as u32).collect();
    for k in (1..perm.len()).rev() {
        perm.swap(k, rng.random_range(0..=k));
    }
    let lo = (per_user / 4).max(2);
    let hi = (2 * per_user).saturating_sub(lo).max(lo);
    let cap = (items / 2).max(1);
    let mut stamp = vec![u32::MAX; items];
    let (mut offsets, mut train, mut test_items) = (vec![0usize], Vec::new(), Vec::with_capacity(users));
    let mut row: Vec<u32> = Vec::new();
    for u in 0..users as u32 {
        let n = rng.random_range(lo..=hi).min(cap);
        row.clear();
        let mut tries = 0;
        while row.len() < n {
            tries += 1;
            let i = if tries <= 8 * n {
                let rank = (items as f64).powf(rng.random::<f64>()) as usize - 1;
                perm[rank.min(items - 1)]
            } else {
                rng.random_range(0..items as u32)
            };
            if stamp[i as usize] != u {
                stamp[i as usize] = u;
                row.push(i);
            }
        }
        let test = row.pop().expect("at least one item");
        test_items.push(test);
        row.sort_unstable();
        train.extend_from_slice(&row);
        offsets.push(train.len());
    }
    let test_offsets = (0..=users).collect();
    Split {
        train: UserItems::from_csr(offsets, train).expect("rows are sorted and distinct"),
        valid: None,
        test: UserItems::from_csr(test_offsets, test_items).expect("one item per user"),
        n_items: items,
        method: SplitMethod::LeaveOneOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_skewed_and_sized() {
        let cfg = DemoConfig { users: 200, items: 300, ..Default::default() };
        let a = cfg.generate(1);
        let b = cfg.generate(1);
        assert_eq!(a.user, b.user);
        assert_eq!(a.item, b.item);
        assert_ne!(a.item, cfg.generate(2).item);
        assert_eq!(a.n_users(), 200);
        assert!(a.len() >= 200 * 20 && a.len() <= 200 * 80);
        // Popularity skew: the top 10% of items hold well over 10% of interactions.
        let mut counts = vec![0usize; a.n_items()];
        for &i in &a.item {
            counts[i as usize] += 1;
        }
        counts.sort_unstable_by(|x, y| y.cmp(x));
        let top: usize = counts[..a.n_items() / 10].iter().sum();
        assert!(top as f64 > 0.25 * a.len() as f64, "top decile holds {top} of {}", a.len());
    }

    #[test]
    fn shaped_split_has_the_shape_asked_for() {
        let split = shaped_split(500, 1000, 40, 3);
        assert_eq!(split.train.n_users(), 500);
        assert_eq!(split.test.nnz(), 500);
        let nnz = split.train.nnz() + split.test.nnz();
        assert!((nnz as f64 - 500.0 * 40.0).abs() < 0.1 * 500.0 * 40.0, "{nnz}");
        for u in 0..500u32 {
            let t = split.test.items(u)[0];
            assert!(!split.train.contains(u, t), "user {u}: test item {t} also in train");
            assert!(!split.train.items(u).is_empty());
        }
        assert_eq!(split.train, shaped_split(500, 1000, 40, 3).train);
        assert_ne!(split.train, shaped_split(500, 1000, 40, 4).train);
        let mut counts = split.train.item_counts(1000);
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top: u32 = counts[..100].iter().sum();
        assert!(top as f64 > 0.3 * split.train.nnz() as f64, "top decile holds {top} of {}", split.train.nnz());
    }
}

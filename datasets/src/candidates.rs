//! Fixed candidates for the sampled protocol (NCF paper): each test pair with N items the user
//! never interacted with, drawn once from the seed so every epoch ranks the same lists.

use crate::rng::{self, RngExt};
use crate::split::Split;

/// One row per (user, test item): the test item followed by `negatives` unseen items.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledCandidates {
    pub user: Vec<u32>,
    /// Row-major `[rows, 1 + negatives]`; column 0 is the test item.
    pub items: Vec<u32>,
    pub negatives: usize,
}

impl SampledCandidates {
    /// Draws `negatives` distinct unseen items (neither train nor test) for every test pair.
    pub fn draw(split: &Split, negatives: usize, seed: u64) -> Self {
        let mut user = Vec::new();
        let mut items = Vec::new();
        let n_items = split.n_items as u32;
        for u in 0..split.test.n_users() as u32 {
            for &t in split.test.items(u) {
                let mut rng = rng::stream(seed, &[0xCA_0D1D, u as u64, t as u64]);
                let unseen = n_items as usize - split.train.items(u).len() - split.test.items(u).len();
                let want = negatives.min(unseen);
                user.push(u);
                items.push(t);
                let start = items.len();
                while items.len() - start < want {
                    let j = rng.random_range(0..n_items);
                    if !split.train.contains(u, j) && !split.test.contains(u, j) && !items[start..].contains(&j) {
                        items.push(j);
                    }
                }
                // A user who has seen nearly everything pads with the test item itself, which
                // never outranks it, so the row keeps its shape without a fake hit.
                items.resize(start + negatives, t);
            }
        }
        Self { user, items, negatives }
    }

    pub fn rows(&self) -> usize {
        self.user.len()
    }

    /// Items per row: the test item plus the negatives.
    pub fn width(&self) -> usize {
        self.negatives + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user_items::UserItems;
    use crate::split::SplitMethod;

    #[test]
    fn negatives_are_unseen_distinct_and_seeded() {
        let train = UserItems::from_pairs(2, [(0, 0), (0, 1), (1, 2)]);
        let test = UserItems::from_pairs(2, [(0, 2), (1, 3)]);
        let split = Split { train, test, n_items: 30, method: SplitMethod::LeaveOneOut };
        let c = SampledCandidates::draw(&split, 10, 5);
        assert_eq!(c.rows(), 2);
        assert_eq!(c.items.len(), 22);
        for r in 0..2 {
            let row = &c.items[r * 11..(r + 1) * 11];
            let u = c.user[r];
            assert!(split.test.contains(u, row[0]));
            for &j in &row[1..] {
                assert!(!split.train.contains(u, j) && !split.test.contains(u, j));
            }
            let mut d = row[1..].to_vec();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 10);
        }
        assert_eq!(c, SampledCandidates::draw(&split, 10, 5));
        assert_ne!(c, SampledCandidates::draw(&split, 10, 6));
    }
}

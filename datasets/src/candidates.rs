//! Fixed candidates for the sampled protocol (NCF paper): each test pair with N items the user
//! never interacted with, drawn once from the seed so every epoch ranks the same lists.

use crate::rng::{self, RngExt};
use crate::split::Split;
use crate::user_items::UserItems;

/// One row per (user, test item): the test item followed by `negatives` unseen items.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledCandidates {
    pub user: Vec<u32>,
    /// Row-major `[rows, 1 + negatives]`; column 0 is the test item.
    pub items: Vec<u32>,
    pub negatives: usize,
}

impl SampledCandidates {
    /// Draws `negatives` distinct unseen items (in none of train, validation and test) for every
    /// test pair.
    pub fn draw(split: &Split, negatives: usize, seed: u64) -> Self {
        Self::draw_for(split, &split.test, negatives, seed, 0xCA_0D1D)
    }

    /// Like [`SampledCandidates::draw`], for every validation pair (`None` without a validation
    /// split); drawn from a stream of its own, so the test candidates do not depend on it.
    pub fn draw_valid(split: &Split, negatives: usize, seed: u64) -> Option<Self> {
        split.valid.as_ref().map(|valid| Self::draw_for(split, valid, negatives, seed, 0x7A_11D))
    }

    /// One row per pair of `held` (the test or the validation items of `split`).
    fn draw_for(split: &Split, held: &UserItems, negatives: usize, seed: u64, stream: u64) -> Self {
        let mut user = Vec::new();
        let mut items = Vec::new();
        let n_items = split.n_items as u32;
        let valid = split.valid.as_ref();
        let seen = |u: u32, j: u32| split.train.contains(u, j) || split.test.contains(u, j) || valid.is_some_and(|v| v.contains(u, j));
        for u in 0..held.n_users() as u32 {
            let n_valid = valid.map_or(0, |v| v.items(u).len());
            let unseen = (n_items as usize).saturating_sub(split.train.items(u).len() + split.test.items(u).len() + n_valid);
            for &t in held.items(u) {
                let mut rng = rng::stream(seed, &[stream, u as u64, t as u64]);
                let want = negatives.min(unseen);
                user.push(u);
                items.push(t);
                let start = items.len();
                while items.len() - start < want {
                    let j = rng.random_range(0..n_items);
                    if !seen(u, j) && !items[start..].contains(&j) {
                        items.push(j);
                    }
                }
                // A user who has seen nearly everything pads with the held-out item itself, which
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
    use crate::split::SplitMethod;

    #[test]
    fn negatives_are_unseen_distinct_and_seeded() {
        let train = UserItems::from_pairs(2, [(0, 0), (0, 1), (1, 2)]);
        let test = UserItems::from_pairs(2, [(0, 2), (1, 3)]);
        let split = Split { train, valid: None, test, n_items: 30, method: SplitMethod::LeaveOneOut };
        let c = SampledCandidates::draw(&split, 10, 5);
        assert!(SampledCandidates::draw_valid(&split, 10, 5).is_none());
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

    #[test]
    fn validation_rows_get_candidates_unseen_in_every_split() {
        // User 0 has seen 6 of 8 items: its rows hold the 2 unseen ones, then padding.
        let train = UserItems::from_pairs(2, [(0, 0), (0, 1), (0, 2), (0, 3), (1, 2)]);
        let valid = UserItems::from_pairs(2, [(0, 4), (1, 5)]);
        let test = UserItems::from_pairs(2, [(0, 5), (1, 3)]);
        let split = Split { train, valid: Some(valid), test, n_items: 8, method: SplitMethod::Random };
        for (c, held) in
            [(SampledCandidates::draw(&split, 4, 1), &split.test), (SampledCandidates::draw_valid(&split, 4, 1).unwrap(), split.valid.as_ref().unwrap())]
        {
            assert_eq!(c.rows(), 2);
            for r in 0..2 {
                let (u, row) = (c.user[r], &c.items[r * 5..(r + 1) * 5]);
                assert!(held.contains(u, row[0]));
                let negs: Vec<u32> = row[1..].iter().copied().filter(|&j| j != row[0]).collect();
                for &j in &negs {
                    assert!(!split.train.contains(u, j) && !split.test.contains(u, j) && !split.valid.as_ref().unwrap().contains(u, j), "{u} {j}");
                }
                if u == 0 {
                    assert_eq!(negs.len(), 2, "{row:?}");
                }
            }
        }
    }
}

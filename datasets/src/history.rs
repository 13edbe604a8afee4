//! Each batch user's training history, for models that mix the mean of a user's item rows into
//! its user vector (SimpleX's history aggregation).

use std::sync::Arc;

use crate::UserItems;
use crate::rng::{self, RngExt};

/// The history rows of a batch's users: all of a user's training items, or `max` of them drawn
/// without replacement per (seed, epoch, batch) when the user has more.
#[derive(Debug, Clone)]
pub struct HistoryDraws {
    train: Arc<UserItems>,
    max: usize,
    seed: u64,
}

impl HistoryDraws {
    /// `max` = 0: whole histories.
    pub fn new(train: Arc<UserItems>, max: usize, seed: u64) -> Self {
        Self { train, max, seed }
    }

    /// The history items of each of `users` (in order, concatenated) and each user's count.
    pub fn draw(&self, epoch: u64, batch: u64, users: &[i32]) -> (Vec<u32>, Vec<i32>) {
        let mut rng = rng::stream(self.seed, &[0x415_7021, epoch, batch]);
        let mut items = Vec::new();
        let mut counts = Vec::with_capacity(users.len());
        for &u in users {
            let all = self.train.items(u as u32);
            if self.max == 0 || all.len() <= self.max {
                items.extend_from_slice(all);
                counts.push(all.len() as i32);
                continue;
            }
            // A partial Fisher-Yates shuffle: the first `max` slots are a uniform sample.
            let start = items.len();
            items.extend_from_slice(all);
            let drawn = &mut items[start..];
            for k in 0..self.max {
                let j = rng.random_range(k..drawn.len());
                drawn.swap(k, j);
            }
            items.truncate(start + self.max);
            counts.push(self.max as i32);
        }
        (items, counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_or_capped_histories_drawn_from_the_seed() {
        let train = Arc::new(UserItems::from_pairs(3, [(0, 1), (0, 4), (0, 2), (0, 7), (0, 9), (2, 3)]));
        let all = HistoryDraws::new(train.clone(), 0, 1);
        assert_eq!(all.draw(1, 0, &[2, 1, 0]), (vec![3, 1, 2, 4, 7, 9], vec![1, 0, 5]));
        let capped = HistoryDraws::new(train.clone(), 3, 1);
        let (items, counts) = capped.draw(1, 0, &[0, 2]);
        assert_eq!(counts, vec![3, 1]);
        let mut drawn = items[..3].to_vec();
        drawn.sort();
        drawn.dedup();
        assert_eq!(drawn.len(), 3, "without replacement: {items:?}");
        assert!(drawn.iter().all(|i| train.items(0).contains(i)));
        assert_eq!(items[3], 3);
        assert_eq!(capped.draw(1, 0, &[0, 2]), (items.clone(), counts));
        // Other batches draw other subsets, and every item turns up.
        let mut seen: Vec<u32> = (0..20).flat_map(|b| capped.draw(1, b, &[0]).0).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, train.items(0));
    }
}

//! Training negatives: for each positive, `negatives` items the user has not interacted with,
//! resampled every epoch from the run's seed, in parallel chunks whose draws do not depend on the
//! number of threads.

use serde::{Deserialize, Serialize};

use crate::rng::{self, RngExt};
use crate::user_items::UserItems;

/// Which items negatives are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NegativeDistribution {
    /// Uniform over the items the user has not interacted with (NCF paper).
    #[default]
    Uniform,
    /// Proportional to item popularity^0.75 among the user's unseen items.
    Popularity,
}

/// Sampler settings. Defaults: 4 uniform negatives per positive (NCF paper).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    pub negatives: usize,
    pub distribution: NegativeDistribution,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self { negatives: 4, distribution: NegativeDistribution::Uniform }
    }
}

/// One epoch of labelled training pairs in shuffled order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochSamples {
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    pub label: Vec<f32>,
}

impl EpochSamples {
    pub fn len(&self) -> usize {
        self.user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
    }
}

/// Draws negatives for the training pairs of a split.
pub struct NegativeSampler<'a> {
    train: &'a UserItems,
    n_items: u32,
    config: SamplerConfig,
    /// Cumulative popularity weights for [`NegativeDistribution::Popularity`].
    cumulative: Vec<f64>,
    seed: u64,
}

const CHUNK: usize = 1 << 16;

impl<'a> NegativeSampler<'a> {
    pub fn new(train: &'a UserItems, n_items: usize, config: SamplerConfig, seed: u64) -> Self {
        let cumulative = match config.distribution {
            NegativeDistribution::Uniform => Vec::new(),
            NegativeDistribution::Popularity => {
                let mut acc = 0.0;
                train
                    .item_counts(n_items)
                    .iter()
                    .map(|&c| {
                        acc += (c as f64 + 1.0).powf(0.75);
                        acc
                    })
                    .collect()
            }
        };
        Self { train, n_items: n_items as u32, config, cumulative, seed }
    }

    /// Draws one item `user` has not interacted with, or `None` when there is none.
    fn draw(&self, rng: &mut rng::Rng, user: u32) -> Option<u32> {
        let seen = self.train.items(user);
        if seen.len() >= self.n_items as usize {
            return None;
        }
        // Rejection sampling: cheap while users have seen a small share of the catalogue.
        for _ in 0..64 {
            let j = match self.config.distribution {
                NegativeDistribution::Uniform => rng.random_range(0..self.n_items),
                NegativeDistribution::Popularity => {
                    let x = rng.random::<f64>() * self.cumulative.last().copied().unwrap_or(0.0);
                    self.cumulative.partition_point(|&c| c <= x).min(self.n_items as usize - 1) as u32
                }
            };
            if seen.binary_search(&j).is_err() {
                return Some(j);
            }
        }
        // Dense users: pick uniformly among the unseen items directly.
        let k = rng.random_range(0..self.n_items - seen.len() as u32);
        let (mut lo, mut hi) = (0u32, self.n_items);
        // Find the k-th unseen item: smallest j with j + 1 - |seen ≤ j| > k.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let unseen = mid + 1 - seen.partition_point(|&s| s <= mid) as u32;
            if unseen > k { hi = mid } else { lo = mid + 1 }
        }
        Some(lo)
    }

    /// The labelled pairs of `epoch`: every training positive and its negatives, shuffled.
    pub fn epoch(&self, epoch: u64) -> EpochSamples {
        self.epoch_grouped(epoch, false)
    }

    /// Like [`epoch`](Self::epoch); with `grouped`, each positive stays followed by its
    /// negatives (a group of `1 + negatives` samples) and whole groups are shuffled, as pairwise
    /// losses such as BPR need.
    pub fn epoch_grouped(&self, epoch: u64, grouped: bool) -> EpochSamples {
        let positives: Vec<(u32, u32)> = self.train.pairs().collect();
        let per = 1 + self.config.negatives;
        let mut out = EpochSamples {
            user: vec![0; positives.len() * per],
            item: vec![0; positives.len() * per],
            label: vec![0.0; positives.len() * per],
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunks: Vec<_> = positives
            .chunks(CHUNK)
            .zip(out.user.chunks_mut(CHUNK * per))
            .zip(out.item.chunks_mut(CHUNK * per))
            .zip(out.label.chunks_mut(CHUNK * per))
            .enumerate()
            .collect();
        let next = std::sync::Mutex::new(chunks.into_iter());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let Some((c, (((pos, us), is), ls))) = next.lock().unwrap().next() else { break };
                        let mut rng = rng::stream(self.seed, &[0x5A_3B1E, epoch, c as u64]);
                        for (k, &(u, i)) in pos.iter().enumerate() {
                            let base = k * per;
                            us[base] = u;
                            is[base] = i;
                            ls[base] = 1.0;
                            for n in 1..per {
                                us[base + n] = u;
                                is[base + n] = self.draw(&mut rng, u).unwrap_or(i);
                            }
                        }
                    }
                });
            }
        });
        // Shuffle all samples together, as the paper's reference does, or whole groups.
        let mut rng = rng::stream(self.seed, &[0x5_4FF1E, epoch]);
        let g = if grouped { per } else { 1 };
        for k in (1..out.len() / g).rev() {
            let j = rng.random_range(0..=k);
            for o in 0..g {
                out.user.swap(k * g + o, j * g + o);
                out.item.swap(k * g + o, j * g + o);
                out.label.swap(k * g + o, j * g + o);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train() -> UserItems {
        UserItems::from_pairs(3, [(0, 0), (0, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)])
    }

    #[test]
    fn negatives_are_unseen_and_counts_match() {
        let t = train();
        for dist in [NegativeDistribution::Uniform, NegativeDistribution::Popularity] {
            let cfg = SamplerConfig { negatives: 3, distribution: dist };
            let s = NegativeSampler::new(&t, 6, cfg, 9).epoch(0);
            assert_eq!(s.len(), t.nnz() * 4);
            assert_eq!(s.label.iter().filter(|&&l| l == 1.0).count(), t.nnz());
            for k in 0..s.len() {
                let seen = t.contains(s.user[k], s.item[k]);
                assert_eq!(seen, s.label[k] == 1.0, "sample {k}");
            }
        }
    }

    #[test]
    fn grouped_epochs_keep_each_positive_before_its_negatives() {
        let t = train();
        let s = NegativeSampler::new(&t, 9, SamplerConfig { negatives: 2, ..Default::default() }, 4).epoch_grouped(1, true);
        assert_eq!(s.len(), t.nnz() * 3);
        for g in s.label.chunks(3).zip(s.user.chunks(3)) {
            assert_eq!(g.0, &[1.0, 0.0, 0.0]);
            assert!(g.1.iter().all(|&u| u == g.1[0]));
        }
    }

    #[test]
    fn seeded_and_resampled_per_epoch() {
        let t = train();
        let s = NegativeSampler::new(&t, 50, SamplerConfig::default(), 1);
        assert_eq!(s.epoch(0), s.epoch(0));
        assert_ne!(s.epoch(0), s.epoch(1));
        assert_ne!(s.epoch(0), NegativeSampler::new(&t, 50, SamplerConfig::default(), 2).epoch(0));
    }

    #[test]
    fn dense_user_falls_back_to_exact_draw() {
        // User 0 has seen every item but 7 of 0..8.
        let t = UserItems::from_pairs(1, (0..7).map(|i| (0, i)));
        let s = NegativeSampler::new(&t, 8, SamplerConfig::default(), 0);
        let mut rng = rng::stream(0, &[]);
        for _ in 0..100 {
            assert_eq!(s.draw(&mut rng, 0), Some(7));
        }
        let full = UserItems::from_pairs(1, (0..8).map(|i| (0, i)));
        assert_eq!(NegativeSampler::new(&full, 8, SamplerConfig::default(), 0).draw(&mut rng, 0), None);
    }
}

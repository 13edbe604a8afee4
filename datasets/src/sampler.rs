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

/// Sampler settings. Defaults: 4 uniform negatives per positive (NCF paper), none shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// Negatives drawn per positive, each its own labelled sample (unused when
    /// `shared_negatives` is set).
    pub negatives: usize,
    pub distribution: NegativeDistribution,
    /// Negatives drawn once per batch and shared by all its positives (0 = off): every positive
    /// is scored against all of them in one `[batch × negatives]` matmul. Drawn from
    /// `distribution` over the whole catalogue; a user's own item among them is masked.
    pub shared_negatives: usize,
    /// History items drawn per user and batch for a model with `model.history` (0 = all of
    /// them): bounds a step's cost on catalogues with very long histories; scoring always
    /// uses whole histories.
    pub history_max: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self { negatives: 4, distribution: NegativeDistribution::Uniform, shared_negatives: 0, history_max: 0 }
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
    /// Walker alias table for [`NegativeDistribution::Popularity`]: O(1) per draw.
    alias: Option<std::sync::Arc<Alias>>,
    seed: u64,
}

/// Positives per parallel work unit; each chunk's draws come from its own seeded stream.
const CHUNK: usize = 1 << 16;
/// Shuffle buckets: each sample (or group) goes to a random bucket, then each bucket is shuffled
/// on its own, in cache and in parallel. Uniform: bucket sizes do not depend on the order.
const BUCKETS: usize = 512;
/// Users with more training items than this get a bitset for O(1) membership tests.
const BITSET_MIN_SEEN: usize = 32;
/// A sample packed for the shuffle: label in bit 63, user in bits 32..63, item in bits 0..32.
const LABEL_BIT: u64 = 1 << 63;

/// Walker's alias method: a draw is one uniform index and one comparison.
struct Alias {
    prob: Vec<f64>,
    alias: Vec<u32>,
    /// Natural log of each item's probability.
    log_p: Vec<f32>,
}

impl Alias {
    fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let log_p = weights.iter().map(|w| (w / total).ln() as f32).collect();
        let mut prob: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<u32>, Vec<u32>) = (0..n as u32).partition(|&i| prob[i as usize] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s as usize] = l;
            prob[l as usize] -= 1.0 - prob[s as usize];
            if prob[l as usize] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Rounding leftovers are certain picks of themselves.
        for i in small.into_iter().chain(large) {
            prob[i as usize] = 1.0;
        }
        Self { prob, alias, log_p }
    }

    #[inline]
    fn draw(&self, rng: &mut rng::Rng) -> u32 {
        let k = rng.random_range(0..self.prob.len() as u32);
        if rng.random::<f64>() < self.prob[k as usize] { k } else { self.alias[k as usize] }
    }
}

/// Membership in one user's training items: a bitset for heavy users, else binary search.
struct Seen<'s> {
    items: &'s [u32],
    bits: &'s [u64],
}

impl Seen<'_> {
    #[inline]
    fn contains(&self, j: u32) -> bool {
        if self.bits.is_empty() { self.items.binary_search(&j).is_ok() } else { self.bits[j as usize / 64] >> (j % 64) & 1 == 1 }
    }
}

impl<'a> NegativeSampler<'a> {
    pub fn new(train: &'a UserItems, n_items: usize, config: SamplerConfig, seed: u64) -> Self {
        assert!(train.n_users() < 1 << 31 && n_items <= u32::MAX as usize, "ids must fit the packed samples");
        let alias = match config.distribution {
            NegativeDistribution::Uniform => None,
            NegativeDistribution::Popularity => {
                let weights: Vec<f64> = train.item_counts(n_items).iter().map(|&c| (c as f64 + 1.0).powf(0.75)).collect();
                Some(std::sync::Arc::new(Alias::new(&weights)))
            }
        };
        Self { train, n_items: n_items as u32, config, alias, seed }
    }

    /// Draws one item the user has not interacted with, or `None` when there is none.
    #[inline]
    fn draw(&self, rng: &mut rng::Rng, seen: &Seen) -> Option<u32> {
        if seen.items.len() >= self.n_items as usize {
            return None;
        }
        // Rejection sampling: cheap while users have seen a small share of the catalogue.
        for _ in 0..64 {
            let j = match &self.alias {
                None => rng.random_range(0..self.n_items),
                Some(a) => a.draw(rng),
            };
            if !seen.contains(j) {
                return Some(j);
            }
        }
        // Dense users: pick uniformly among the unseen items directly.
        let seen = seen.items;
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

    /// The drawer of this sampler's batch-shared negatives (`shared_negatives` per batch).
    pub fn shared(&self) -> SharedDraws {
        SharedDraws { n_items: self.n_items, count: self.config.shared_negatives, alias: self.alias.clone(), seed: self.seed }
    }

    /// The labelled pairs of `epoch`: every training positive and its negatives, shuffled.
    pub fn epoch(&self, epoch: u64) -> EpochSamples {
        self.epoch_grouped(epoch, false)
    }

    /// Like [`epoch`](Self::epoch); with `grouped`, each positive stays followed by its
    /// negatives (a group of `1 + negatives` samples) and whole groups are shuffled, as pairwise
    /// losses such as BPR need.
    ///
    /// Work is split into chunks of positives (draws) and shuffle buckets, each with its own
    /// stream of the seed, so the result does not depend on the number of threads.
    pub fn epoch_grouped(&self, epoch: u64, grouped: bool) -> EpochSamples {
        let per = 1 + self.config.negatives;
        let unit = if grouped { per } else { 1 };
        let n_pos = self.train.nnz();
        let threads = rayon::current_num_threads();
        let n_chunks = n_pos.div_ceil(CHUNK);
        // 1. Draw: per chunk of positives, the packed samples dealt into random buckets.
        let parts: Vec<Vec<Vec<u64>>> = par_map(n_chunks, threads, |c| self.draw_chunk(epoch, c, unit));
        // 2. Lay the buckets out one after another, chunks in order inside each bucket.
        let mut by_bucket: Vec<Vec<Vec<u64>>> = (0..BUCKETS).map(|_| Vec::with_capacity(n_chunks)).collect();
        for chunk in parts {
            for (b, part) in chunk.into_iter().enumerate() {
                by_bucket[b].push(part);
            }
        }
        let total = n_pos * per;
        let mut out = EpochSamples { user: vec![0; total], item: vec![0; total], label: vec![0.0; total] };
        let mut jobs = Vec::with_capacity(BUCKETS);
        let (mut us, mut is, mut ls) = (&mut out.user[..], &mut out.item[..], &mut out.label[..]);
        for (b, parts) in by_bucket.into_iter().enumerate() {
            let len: usize = parts.iter().map(Vec::len).sum();
            let (u, u_rest) = std::mem::take(&mut us).split_at_mut(len);
            let (i, i_rest) = std::mem::take(&mut is).split_at_mut(len);
            let (l, l_rest) = std::mem::take(&mut ls).split_at_mut(len);
            (us, is, ls) = (u_rest, i_rest, l_rest);
            jobs.push((b, parts, u, i, l));
        }
        // 3. Shuffle each bucket (by units) and unpack it into its slice of the output.
        let next = std::sync::Mutex::new(jobs.into_iter());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut scratch: Vec<u64> = Vec::new();
                    loop {
                        let Some((b, parts, us, is, ls)) = next.lock().unwrap().next() else { break };
                        scratch.clear();
                        for p in parts {
                            scratch.extend_from_slice(&p);
                        }
                        let mut rng = rng::stream(self.seed, &[0x5_4FF1E, epoch, b as u64]);
                        let units = scratch.len() / unit;
                        for k in (1..units).rev() {
                            let j = rng.random_range(0..=k);
                            for o in 0..unit {
                                scratch.swap(k * unit + o, j * unit + o);
                            }
                        }
                        for (k, &x) in scratch.iter().enumerate() {
                            us[k] = ((x & !LABEL_BIT) >> 32) as u32;
                            is[k] = x as u32;
                            ls[k] = if x & LABEL_BIT != 0 { 1.0 } else { 0.0 };
                        }
                    }
                });
            }
        });
        out
    }

    /// The samples of chunk `c` of the positives (in user order), packed and dealt into
    /// [`BUCKETS`] buckets by units of `unit` samples.
    fn draw_chunk(&self, epoch: u64, c: usize, unit: usize) -> Vec<Vec<u64>> {
        let per = 1 + self.config.negatives;
        let mut rng = rng::stream(self.seed, &[0x5A_3B1E, epoch, c as u64]);
        let mut deal = rng::stream(self.seed, &[0xDEA1, epoch, c as u64]);
        let mut buckets: Vec<Vec<u64>> = (0..BUCKETS).map(|_| Vec::with_capacity(CHUNK * per / BUCKETS * 5 / 4)).collect();
        let offsets = self.train.offsets();
        let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(self.train.nnz()));
        // The first user whose items reach into this chunk.
        let mut u = offsets.partition_point(|&o| o <= lo) - 1;
        let mut bits: Vec<u64> = vec![0; (self.n_items as usize).div_ceil(64)];
        // Bucket picks: 9 bits each, seven from one 64-bit draw.
        const _: () = assert!(BUCKETS == 1 << 9);
        let (mut picks, mut left) = (0u64, 0u32);
        let mut pick = move || {
            if left == 0 {
                (picks, left) = (deal.random::<u64>(), 7);
            }
            left -= 1;
            let b = (picks & (BUCKETS as u64 - 1)) as usize;
            picks >>= 9;
            b
        };
        let mut pos = lo;
        while pos < hi {
            while offsets[u + 1] <= pos {
                u += 1;
            }
            let items = self.train.items(u as u32);
            let end = offsets[u + 1].min(hi);
            let dense = items.len() > BITSET_MIN_SEEN && self.config.negatives > 0;
            if dense {
                for &j in items {
                    bits[j as usize / 64] |= 1 << (j % 64);
                }
            }
            let seen = Seen { items, bits: if dense { &bits } else { &[] } };
            let user_bits = (u as u64) << 32;
            for &i in &self.train.all_items()[pos..end] {
                let group = if unit == 1 { None } else { Some(pick()) };
                let mut put = |x: u64| buckets[group.unwrap_or_else(&mut pick)].push(x);
                put(LABEL_BIT | user_bits | i as u64);
                for _ in 1..per {
                    put(user_bits | self.draw(&mut rng, &seen).unwrap_or(i) as u64);
                }
            }
            if dense {
                for &j in items {
                    bits[j as usize / 64] = 0;
                }
            }
            pos = end;
        }
        buckets
    }
}

/// Negatives shared by a batch's positives, drawn with replacement from the sampler's
/// distribution over the whole catalogue; batch `k` of epoch `e` always gets the same draws.
#[derive(Clone)]
pub struct SharedDraws {
    n_items: u32,
    count: usize,
    alias: Option<std::sync::Arc<Alias>>,
    seed: u64,
}

impl SharedDraws {
    /// The negatives of batch `batch` of `epoch`.
    pub fn draw(&self, epoch: u64, batch: u64) -> Vec<u32> {
        let mut rng = rng::stream(self.seed, &[0x54A_12ED, epoch, batch]);
        (0..self.count)
            .map(|_| match &self.alias {
                None => rng.random_range(0..self.n_items),
                Some(a) => a.draw(&mut rng),
            })
            .collect()
    }

    /// Natural log of each item's probability per draw, for the logQ correction.
    pub fn log_probs(&self) -> Vec<f32> {
        match &self.alias {
            None => vec![-(self.n_items as f32).ln(); self.n_items as usize],
            Some(a) => a.log_p.clone(),
        }
    }
}

/// `f(0..n)` on `threads` threads, results in index order.
fn par_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let results: Vec<std::sync::Mutex<Option<T>>> = (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(n.max(1)) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= n {
                        break;
                    }
                    *results[k].lock().unwrap() = Some(f(k));
                }
            });
        }
    });
    results.into_iter().map(|r| r.into_inner().unwrap().expect("every chunk ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train() -> UserItems {
        UserItems::from_pairs(3, [(0, 0), (0, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)])
    }

    #[test]
    fn shared_draws_follow_the_seed_epoch_and_batch_and_their_distribution() {
        let t = train();
        for dist in [NegativeDistribution::Uniform, NegativeDistribution::Popularity] {
            let cfg = SamplerConfig { shared_negatives: 4000, distribution: dist, ..Default::default() };
            let d = NegativeSampler::new(&t, 6, cfg, 9).shared();
            let a = d.draw(1, 2);
            assert_eq!(a.len(), 4000);
            assert_eq!(a, d.draw(1, 2));
            assert_ne!(a, d.draw(1, 3));
            assert_ne!(a, d.draw(2, 2));
            // Each item's share of the draws matches the probability the logQ correction uses.
            let p: Vec<f64> = d.log_probs().iter().map(|&l| (l as f64).exp()).collect();
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
            for (item, &q) in p.iter().enumerate() {
                let share = a.iter().filter(|&&j| j as usize == item).count() as f64 / a.len() as f64;
                assert!((share - q).abs() < 0.03, "{dist:?} item {item}: drawn {share}, p {q}");
            }
        }
    }

    #[test]
    fn negatives_are_unseen_and_counts_match() {
        let t = train();
        for dist in [NegativeDistribution::Uniform, NegativeDistribution::Popularity] {
            let cfg = SamplerConfig { negatives: 3, distribution: dist, ..Default::default() };
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
    fn heavy_users_use_the_bitset_and_the_shuffle_mixes() {
        // User 0 has 40 of 50 items (bitset path), user 1 has 3 (binary search path).
        let t = UserItems::from_pairs(2, (0..40).map(|i| (0, i * 7 % 50)).chain([(1, 0), (1, 1), (1, 2)]));
        for grouped in [false, true] {
            let s = NegativeSampler::new(&t, 50, SamplerConfig { negatives: 6, ..Default::default() }, 2).epoch_grouped(0, grouped);
            assert_eq!(s.len(), 43 * 7);
            for k in 0..s.len() {
                assert_eq!(t.contains(s.user[k], s.item[k]), s.label[k] == 1.0, "sample {k}");
            }
            // Shuffled: the users no longer come in blocks (sorted by chance: < 1e-4).
            let firsts: Vec<u32> = s.user.chunks(if grouped { 7 } else { 1 }).map(|g| g[0]).collect();
            assert!(!firsts.windows(2).all(|w| w[0] <= w[1]), "{firsts:?}");
        }
    }

    #[test]
    fn alias_table_matches_the_weights() {
        let w = [1.0, 2.0, 3.0, 0.0, 4.0];
        let a = Alias::new(&w);
        let mut rng = rng::stream(3, &[]);
        let mut counts = [0usize; 5];
        let n = 200_000;
        for _ in 0..n {
            counts[a.draw(&mut rng) as usize] += 1;
        }
        for (c, w) in counts.iter().zip(w) {
            let want = w / 10.0;
            assert!((*c as f64 / n as f64 - want).abs() < 0.005, "{counts:?}");
        }
    }

    #[test]
    fn dense_user_falls_back_to_exact_draw() {
        // User 0 has seen every item but 7 of 0..8.
        let t = UserItems::from_pairs(1, (0..7).map(|i| (0, i)));
        let s = NegativeSampler::new(&t, 8, SamplerConfig::default(), 0);
        let mut rng = rng::stream(0, &[]);
        let seen = Seen { items: t.items(0), bits: &[] };
        for _ in 0..100 {
            assert_eq!(s.draw(&mut rng, &seen), Some(7));
        }
        let full = UserItems::from_pairs(1, (0..8).map(|i| (0, i)));
        let seen = Seen { items: full.items(0), bits: &[] };
        assert_eq!(NegativeSampler::new(&full, 8, SamplerConfig::default(), 0).draw(&mut rng, &seen), None);
    }
}

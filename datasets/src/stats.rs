//! Summary statistics of an interaction table, for `ncf data stats`.

use crate::interactions::Interactions;

/// Quantiles of a count distribution: min, p25, median, p75, p90, max.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quantiles {
    pub min: u64,
    pub p25: u64,
    pub p50: u64,
    pub p75: u64,
    pub p90: u64,
    pub max: u64,
    pub mean: f64,
}

impl Quantiles {
    /// Nearest-rank quantiles of `counts`.
    pub fn of(mut counts: Vec<u64>) -> Self {
        if counts.is_empty() {
            return Self::default();
        }
        counts.sort_unstable();
        let at = |q: f64| counts[((q * counts.len() as f64).ceil() as usize).clamp(1, counts.len()) - 1];
        Self {
            min: counts[0],
            p25: at(0.25),
            p50: at(0.5),
            p75: at(0.75),
            p90: at(0.9),
            max: *counts.last().unwrap(),
            mean: counts.iter().sum::<u64>() as f64 / counts.len() as f64,
        }
    }
}

/// What `ncf data stats` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    /// Interactions / (users × items), counting distinct pairs.
    pub density: f64,
    /// Rows repeating an earlier (user, item) pair.
    pub duplicates: usize,
    pub per_user: Quantiles,
    pub per_item: Quantiles,
}

impl Stats {
    pub fn of(data: &Interactions) -> Self {
        let mut per_user = vec![0u64; data.n_users()];
        let mut per_item = vec![0u64; data.n_items()];
        for (&u, &i) in data.user.iter().zip(&data.item) {
            per_user[u as usize] += 1;
            per_item[i as usize] += 1;
        }
        let mut pairs: Vec<u64> = data.user.iter().zip(&data.item).map(|(&u, &i)| ((u as u64) << 32) | i as u64).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let cells = (data.n_users() as f64 * data.n_items() as f64).max(1.0);
        Self {
            users: data.n_users(),
            items: data.n_items(),
            interactions: data.len(),
            density: pairs.len() as f64 / cells,
            duplicates: data.len() - pairs.len(),
            per_user: Quantiles::of(per_user),
            per_item: Quantiles::of(per_item),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interactions::IdMap;

    #[test]
    fn counts_and_quantiles() {
        let d = Interactions {
            user: vec![0, 0, 0, 1, 1],
            item: vec![0, 1, 0, 1, 2],
            users: IdMap::from_raw(vec!["a".into(), "b".into()]),
            items: IdMap::from_raw(vec!["x".into(), "y".into(), "z".into()]),
            ..Default::default()
        };
        let s = Stats::of(&d);
        assert_eq!((s.users, s.items, s.interactions, s.duplicates), (2, 3, 5, 1));
        assert!((s.density - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!((s.per_user.min, s.per_user.max), (2, 3));
        let q = Quantiles::of((1..=10).collect());
        assert_eq!((q.p25, q.p50, q.p75, q.p90), (3, 5, 8, 9));
    }
}

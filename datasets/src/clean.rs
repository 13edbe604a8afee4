//! Cleaning before the split: implicit conversion by rating threshold, duplicate user-item pairs
//! (the latest kept), and k-core filtering iterated to a fixed point.

use serde::{Deserialize, Serialize};

use crate::interactions::Interactions;

/// Cleaning settings. Defaults: keep every rating, drop duplicate pairs, no k-core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanConfig {
    /// Keep only interactions with rating ≥ this (implicit conversion); `None` keeps all.
    pub min_rating: Option<f64>,
    /// Drop repeated user-item pairs, keeping the latest (by time, then file order).
    pub dedupe: bool,
    /// Minimum interactions per user after filtering (k-core).
    pub min_user_interactions: usize,
    /// Minimum interactions per item after filtering (k-core).
    pub min_item_interactions: usize,
}

impl Default for CleanConfig {
    fn default() -> Self {
        Self { min_rating: None, dedupe: true, min_user_interactions: 0, min_item_interactions: 0 }
    }
}

/// What cleaning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub below_threshold: usize,
    pub duplicates: usize,
    pub k_core: usize,
}

impl CleanConfig {
    /// Applies the cleaning steps in order: threshold, dedupe, k-core; then re-densifies ids.
    pub fn apply(&self, data: &mut Interactions) -> CleanReport {
        let mut report = CleanReport::default();
        if let (Some(min), Some(r)) = (self.min_rating, data.rating.as_ref()) {
            let keep: Vec<bool> = r.iter().map(|&x| x as f64 >= min).collect();
            report.below_threshold = keep.iter().filter(|&&k| !k).count();
            data.retain_rows(&keep);
        }
        if self.dedupe {
            let keep = latest_of_duplicates(data);
            report.duplicates = keep.iter().filter(|&&k| !k).count();
            data.retain_rows(&keep);
        }
        if self.min_user_interactions > 1 || self.min_item_interactions > 1 {
            let before = data.len();
            loop {
                let mut per_user = vec![0usize; data.n_users()];
                let mut per_item = vec![0usize; data.n_items()];
                for (&u, &i) in data.user.iter().zip(&data.item) {
                    per_user[u as usize] += 1;
                    per_item[i as usize] += 1;
                }
                let keep: Vec<bool> = data
                    .user
                    .iter()
                    .zip(&data.item)
                    .map(|(&u, &i)| per_user[u as usize] >= self.min_user_interactions && per_item[i as usize] >= self.min_item_interactions)
                    .collect();
                if keep.iter().all(|&k| k) {
                    break;
                }
                data.retain_rows(&keep);
            }
            report.k_core = before - data.len();
        }
        data.compact_ids();
        report
    }
}

/// Marks every row except the latest (by time, then file order) of each repeated (user, item)
/// pair: each user's rows are walked from the latest back, and an item seen again is a duplicate.
pub fn latest_of_duplicates(data: &Interactions) -> Vec<bool> {
    let by_user = data.by_user_chronological();
    let mut keep = vec![true; data.len()];
    // seen_by[item] = 1 + the last user whose walk met the item.
    let mut seen_by = vec![0u32; data.n_items()];
    for u in 0..by_user.n_users() as u32 {
        for &r in by_user.user_rows(u).iter().rev() {
            let seen = &mut seen_by[data.item[r as usize] as usize];
            if *seen == u + 1 {
                keep[r as usize] = false;
            } else {
                *seen = u + 1;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interactions::IdMap;

    fn data(pairs: &[(u32, u32)], ratings: Option<Vec<f32>>) -> Interactions {
        let nu = pairs.iter().map(|p| p.0).max().unwrap() as usize + 1;
        let ni = pairs.iter().map(|p| p.1).max().unwrap() as usize + 1;
        Interactions {
            user: pairs.iter().map(|p| p.0).collect(),
            item: pairs.iter().map(|p| p.1).collect(),
            rating: ratings,
            time: Some((0..pairs.len() as i64).collect()),
            users: IdMap::from_raw((0..nu).map(|u| format!("u{u}")).collect()),
            items: IdMap::from_raw((0..ni).map(|i| format!("i{i}")).collect()),
        }
    }

    #[test]
    fn dedupe_keeps_latest() {
        let mut d = data(&[(0, 0), (0, 1), (0, 0)], Some(vec![1.0, 2.0, 3.0]));
        let r = CleanConfig::default().apply(&mut d);
        assert_eq!(r.duplicates, 1);
        assert_eq!(d.item, vec![1, 0]);
        assert_eq!(d.rating, Some(vec![2.0, 3.0]));
    }

    #[test]
    fn dedupe_keeps_latest_by_time_not_file_order() {
        let mut d = data(&[(0, 0), (1, 0), (0, 0), (0, 1)], Some(vec![1.0, 2.0, 3.0, 4.0]));
        d.time = Some(vec![9, 1, 3, 9]);
        let r = CleanConfig::default().apply(&mut d);
        assert_eq!(r.duplicates, 1);
        assert_eq!(d.rating, Some(vec![1.0, 2.0, 4.0]));
    }

    #[test]
    fn threshold_then_k_core_to_fixed_point() {
        // Item 2 has one interaction; removing it leaves user 1 with one, which then goes too.
        let pairs = [(0, 0), (0, 1), (1, 0), (1, 2), (2, 0), (2, 1), (0, 3)];
        let mut d = data(&pairs, Some(vec![5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 1.0]));
        let cfg = CleanConfig { min_rating: Some(4.0), min_user_interactions: 2, min_item_interactions: 2, ..Default::default() };
        let r = cfg.apply(&mut d);
        assert_eq!(r.below_threshold, 1);
        assert_eq!(r.k_core, 2);
        assert_eq!(d.len(), 4);
        assert_eq!(d.n_users(), 2);
        assert_eq!(d.n_items(), 2);
        assert_eq!(d.users.raw_ids(), &["u0".to_string(), "u2".to_string()]);
    }
}

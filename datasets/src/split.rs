//! Train/test splits: leave-one-out (NCF paper), per-user random holdout, global temporal cut, or a
//! split given as files (see [`crate::given`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::interactions::Interactions;
use crate::rng::{self, RngExt};
use crate::user_items::UserItems;

/// How interactions are divided into train and test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SplitMethod {
    /// Each user's latest interaction is the test item (ties broken by file order).
    #[default]
    LeaveOneOut,
    /// Per user, a random `test_ratio` share of interactions (at least one train item kept).
    Random,
    /// One global time cut: the latest `test_ratio` share of all interactions is test.
    Temporal,
    /// Train and test read from `train_path` and `test_path` (e.g. a published split), with the
    /// sampled-evaluation candidates from `negatives_path` when given; see [`crate::given`].
    Given,
}

impl SplitMethod {
    /// The name used in messages and metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::LeaveOneOut => "leave-one-out",
            Self::Random => "random holdout",
            Self::Temporal => "temporal",
            Self::Given => "given split",
        }
    }
}

/// Whose interactions `random` holds out a share of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SplitGroup {
    /// `test_ratio` of each user's interactions (at least one kept for training).
    #[default]
    User,
    /// `test_ratio` of each item's interactions (at least one kept for training), as
    /// recommenders-team's `python_stratified_split(filter_by="item")` does in their benchmark.
    Item,
}

/// Split settings. Defaults: leave-one-out, test ratio 0.25 for the ratio-based methods, grouped
/// by user, no files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    pub method: SplitMethod,
    /// Share of interactions held out by `random` and `temporal`.
    pub test_ratio: f64,
    /// `random`: hold out the share per user (default) or per item.
    pub group: SplitGroup,
    /// `given`: the training interactions (read like `data.path`; `data.path` is used when unset).
    pub train_path: Option<PathBuf>,
    /// `given`: the test interactions, read with the same reader options as the training file.
    pub test_path: Option<PathBuf>,
    /// `given`, optional: the sampled-evaluation candidates in the NCF reference `.test.negative`
    /// format (`(user,item)\tneg1\tneg2...`), used instead of drawing them.
    pub negatives_path: Option<PathBuf>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self { method: SplitMethod::LeaveOneOut, test_ratio: 0.25, group: SplitGroup::User, train_path: None, test_path: None, negatives_path: None }
    }
}

/// Train and test items per user, over the same dense ids as the interactions.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: UserItems,
    pub test: UserItems,
    pub n_items: usize,
    pub method: SplitMethod,
}

impl Split {
    /// Splits `data`; every random choice comes from `seed`.
    pub fn new(data: &Interactions, config: &SplitConfig, seed: u64) -> Result<Self> {
        if data.is_empty() {
            return Err(DataError::Invalid("no interactions to split".into()));
        }
        if config.method == SplitMethod::Given {
            return Err(DataError::Invalid(
                "split.method = \"given\" reads split.train_path and split.test_path (ncf_datasets::given::read)".into(),
            ));
        }
        let by_user = data.by_user_chronological();
        let mut is_test = vec![false; data.len()];
        match config.method {
            SplitMethod::LeaveOneOut => {
                for u in 0..by_user.n_users() as u32 {
                    if let Some(&last) = by_user.user_rows(u).last() {
                        is_test[last as usize] = true;
                    }
                }
            }
            SplitMethod::Random => {
                let mut rng = rng::stream(seed, &[0x5_9117]);
                let by_item = (config.group == SplitGroup::Item).then(|| rows_by_item(data));
                let groups: Vec<&[u32]> = match &by_item {
                    Some(rows) => rows.iter().map(Vec::as_slice).collect(),
                    None => (0..by_user.n_users() as u32).map(|u| by_user.user_rows(u)).collect(),
                };
                for group in groups {
                    let mut rows: Vec<u32> = group.to_vec();
                    if rows.is_empty() {
                        continue;
                    }
                    // Fisher–Yates, then hold out the first round(ratio * n), keeping one train row.
                    for k in (1..rows.len()).rev() {
                        rows.swap(k, rng.random_range(0..=k));
                    }
                    let n_test = ((rows.len() as f64 * config.test_ratio).round() as usize).min(rows.len() - 1);
                    for &r in &rows[..n_test] {
                        is_test[r as usize] = true;
                    }
                }
            }
            SplitMethod::Given => unreachable!("handled above"),
            SplitMethod::Temporal => {
                let mut rows: Vec<u32> = (0..data.len() as u32).collect();
                if let Some(t) = &data.time {
                    rows.sort_unstable_by_key(|&r| (t[r as usize], r));
                }
                let n_test = (data.len() as f64 * config.test_ratio).round() as usize;
                for &r in &rows[data.len() - n_test..] {
                    is_test[r as usize] = true;
                }
            }
        }
        drop(by_user);
        let is_test = &is_test;
        let pairs = |test: bool| {
            (0..data.len()).filter(move |&r| is_test[r] == test).map(|r| (data.user[r], data.item[r]))
        };
        let train = UserItems::from_pairs(data.n_users(), pairs(false));
        let mut test = UserItems::from_pairs(data.n_users(), pairs(true));
        if config.method == SplitMethod::Temporal {
            // A test item the user also had before the cut is not a new interaction to predict.
            let kept = test.pairs().filter(|&(u, i)| !train.contains(u, i)).collect::<Vec<_>>();
            test = UserItems::from_pairs(data.n_users(), kept);
        }
        if config.method != SplitMethod::Temporal {
            if let Some(u) = (0..data.n_users() as u32).find(|&u| train.items(u).is_empty()) {
                let split = config.method.label();
                return Err(DataError::EmptyTrainUser { user: data.users.raw(u).to_owned(), split, need: 2 });
            }
        }
        Ok(Self { train, test, n_items: data.n_items(), method: config.method })
    }
}

/// Drops the users `method` cannot split, with their interactions, as the NCF reference does
/// implicitly: under leave-one-out a user with a single interaction would have nothing left to
/// train on. Returns how many users and interactions were dropped.
pub fn drop_unsplittable_users(data: &mut Interactions, method: SplitMethod) -> (usize, usize) {
    if method != SplitMethod::LeaveOneOut {
        return (0, 0);
    }
    let mut per_user = vec![0usize; data.n_users()];
    for &u in &data.user {
        per_user[u as usize] += 1;
    }
    let users = per_user.iter().filter(|&&c| c == 1).count();
    if users == 0 {
        return (0, 0);
    }
    let keep: Vec<bool> = data.user.iter().map(|&u| per_user[u as usize] > 1).collect();
    let before = data.len();
    data.retain_rows(&keep);
    data.compact_ids();
    (users, before - data.len())
}

/// Row indices of each item's interactions, in file order.
fn rows_by_item(data: &Interactions) -> Vec<Vec<u32>> {
    let mut rows = vec![Vec::new(); data.n_items()];
    for (r, &i) in data.item.iter().enumerate() {
        rows[i as usize].push(r as u32);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interactions::IdMap;

    fn data(user: Vec<u32>, item: Vec<u32>, time: Option<Vec<i64>>) -> Interactions {
        let nu = *user.iter().max().unwrap() as usize + 1;
        let ni = *item.iter().max().unwrap() as usize + 1;
        Interactions {
            user,
            item,
            time,
            users: IdMap::from_raw((0..nu).map(|u| format!("u{u}")).collect()),
            items: IdMap::from_raw((0..ni).map(|i| format!("i{i}")).collect()),
            rating: None,
        }
    }

    #[test]
    fn leave_one_out_takes_latest_with_file_order_ties() {
        let d = data(vec![0, 0, 0, 1, 1], vec![0, 1, 2, 0, 3], Some(vec![5, 9, 9, 1, 0]));
        let s = Split::new(&d, &SplitConfig::default(), 0).unwrap();
        assert_eq!(s.test.items(0), &[2]); // items 1 and 2 tie at t=9: the later row wins
        assert_eq!(s.test.items(1), &[0]);
        assert_eq!(s.train.items(0), &[0, 1]);
        assert_eq!(s.train.items(1), &[3]);
    }

    #[test]
    fn leave_one_out_rejects_single_interaction_users_unless_dropped() {
        let mut d = data(vec![0, 0, 1, 2, 2], vec![0, 1, 2, 0, 3], None);
        let err = Split::new(&d, &SplitConfig::default(), 0).unwrap_err().to_string();
        assert!(err.contains("\"u1\"") && err.contains("data.clean.min_user_interactions"), "{err}");
        assert_eq!(drop_unsplittable_users(&mut d, SplitMethod::Random), (0, 0));
        assert_eq!(drop_unsplittable_users(&mut d, SplitMethod::LeaveOneOut), (1, 1));
        assert_eq!(d.users.raw_ids(), &["u0", "u2"]);
        assert_eq!(d.items.raw_ids(), &["i0", "i1", "i3"], "the dropped user's only item goes too");
        let s = Split::new(&d, &SplitConfig::default(), 0).unwrap();
        assert_eq!((s.train.nnz(), s.test.nnz()), (2, 2));
    }

    #[test]
    fn random_split_keeps_ratio_and_disjointness() {
        let n = 40u32;
        let d = data((0..n * 8).map(|r| r / 8).collect(), (0..n * 8).map(|r| r % 8 + (r / 8) % 3).collect(), None);
        let cfg = SplitConfig { method: SplitMethod::Random, test_ratio: 0.25, ..Default::default() };
        let s = Split::new(&d, &cfg, 3).unwrap();
        for u in 0..n {
            assert_eq!(s.test.items(u).len(), 2);
            assert_eq!(s.train.items(u).len(), 6);
            assert!(s.test.items(u).iter().all(|&i| !s.train.contains(u, i)));
        }
        let again = Split::new(&d, &cfg, 3).unwrap();
        assert_eq!(again.test, s.test);
        assert_ne!(Split::new(&d, &cfg, 4).unwrap().test, s.test);
    }

    #[test]
    fn random_split_by_item_holds_out_a_share_of_each_item() {
        // 12 users who each rated all 8 items: per item, round(0.25 * 12) = 3 held out.
        let (nu, ni) = (12u32, 8u32);
        let d = data((0..nu * ni).map(|r| r / ni).collect(), (0..nu * ni).map(|r| r % ni).collect(), None);
        let cfg = SplitConfig { method: SplitMethod::Random, test_ratio: 0.25, group: SplitGroup::Item, ..Default::default() };
        let s = Split::new(&d, &cfg, 5).unwrap();
        let mut per_item = vec![0; ni as usize];
        for (u, i) in s.test.pairs() {
            per_item[i as usize] += 1;
            assert!(!s.train.contains(u, i));
        }
        assert_eq!(per_item, vec![3; ni as usize]);
        assert_eq!(s.train.nnz() + s.test.nnz(), (nu * ni) as usize);
        // Per-user counts vary, unlike the per-user split.
        let counts: Vec<usize> = (0..nu).map(|u| s.test.items(u).len()).collect();
        assert!(counts.iter().any(|&c| c != counts[0]), "{counts:?}");
    }

    #[test]
    fn temporal_split_cuts_globally() {
        let d = data(vec![0, 1, 0, 1], vec![0, 1, 2, 3], Some(vec![1, 2, 3, 4]));
        let cfg = SplitConfig { method: SplitMethod::Temporal, test_ratio: 0.5, ..Default::default() };
        let s = Split::new(&d, &cfg, 0).unwrap();
        assert_eq!(s.test.items(0), &[2]);
        assert_eq!(s.test.items(1), &[3]);
        assert_eq!(s.train.nnz(), 2);
    }
}

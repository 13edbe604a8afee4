//! Train/validation/test splits: leave-one-out (NCF paper), per-user random holdout, global
//! temporal cut, or a split given as files (see [`crate::given`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::interactions::Interactions;
use crate::rng::{self, RngExt};
use crate::user_items::UserItems;

/// How interactions are divided into train, validation and test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SplitMethod {
    /// Each user's latest interaction is the test item (ties broken by file order), the
    /// second-latest the validation item.
    #[default]
    LeaveOneOut,
    /// Per user, a random `test_ratio` share of interactions for test, then `valid_ratio` for
    /// validation (at least one train item kept).
    Random,
    /// One global time cut: the latest `test_ratio` share of all interactions is test, the
    /// `valid_ratio` share just before it validation.
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

/// Split settings. Defaults: leave-one-out, test ratio 0.25 and validation ratio 0.1 for the
/// ratio-based methods, grouped by user, no files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    pub method: SplitMethod,
    /// Share of interactions held out for test by `random` and `temporal`.
    pub test_ratio: f64,
    /// Share of interactions held out for validation by `random` and `temporal` (carved after
    /// test), and by `given` from each user's training rows when `valid_path` is unset.
    pub valid_ratio: f64,
    /// `random`: hold out the share per user (default) or per item.
    pub group: SplitGroup,
    /// `given`: the training interactions (read like `data.path`; `data.path` is used when unset).
    pub train_path: Option<PathBuf>,
    /// `given`: the test interactions, read with the same reader options as the training file.
    pub test_path: Option<PathBuf>,
    /// `given`, optional: the validation interactions, read like the test file.
    pub valid_path: Option<PathBuf>,
    /// `given`, optional: the sampled-evaluation candidates in the NCF reference `.test.negative`
    /// format (`(user,item)\tneg1\tneg2...`), used instead of drawing them.
    pub negatives_path: Option<PathBuf>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            method: SplitMethod::LeaveOneOut,
            test_ratio: 0.25,
            valid_ratio: 0.1,
            group: SplitGroup::User,
            train_path: None,
            test_path: None,
            valid_path: None,
            negatives_path: None,
        }
    }
}

/// Train, validation and test items per user, over the same dense ids as the interactions.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: UserItems,
    /// Held out for choosing the best epoch and stopping early; `None` when validation is off.
    pub valid: Option<UserItems>,
    pub test: UserItems,
    pub n_items: usize,
    pub method: SplitMethod,
}

/// Where a row of the interactions goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Train,
    Valid,
    Test,
}

impl Split {
    /// Splits `data`; every random choice comes from `seed`. With `validation` false no
    /// validation split is carved, and train and test are exactly those of a split without one
    /// (with it, test is the same and validation comes out of train).
    pub fn new(data: &Interactions, config: &SplitConfig, seed: u64, validation: bool) -> Result<Self> {
        if data.is_empty() {
            return Err(DataError::Invalid("no interactions to split".into()));
        }
        if config.method == SplitMethod::Given {
            return Err(DataError::Invalid("split.method = \"given\" reads split.train_path and split.test_path (ncf_datasets::given::read)".into()));
        }
        let valid_ratio = if validation { config.valid_ratio } else { 0.0 };
        let by_user = data.by_user_chronological();
        let mut role = vec![Role::Train; data.len()];
        match config.method {
            SplitMethod::LeaveOneOut => {
                for u in 0..by_user.n_users() as u32 {
                    let rows = by_user.user_rows(u);
                    if let Some((&last, before)) = rows.split_last() {
                        role[last as usize] = Role::Test;
                        // A user with two interactions keeps one to train on, none to validate.
                        if validation && before.len() >= 2 {
                            role[before[before.len() - 1] as usize] = Role::Valid;
                        }
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
                    let (n_test, n_valid) = hold_out(&mut rows, config.test_ratio, valid_ratio, &mut rng);
                    for &r in &rows[..n_test] {
                        role[r as usize] = Role::Test;
                    }
                    for &r in &rows[n_test..n_test + n_valid] {
                        role[r as usize] = Role::Valid;
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
                let n_valid = ((data.len() as f64 * valid_ratio).round() as usize).min(data.len() - n_test);
                let valid_from = data.len() - n_test - n_valid;
                for (k, &r) in rows.iter().enumerate().skip(valid_from) {
                    role[r as usize] = if k < data.len() - n_test { Role::Valid } else { Role::Test };
                }
            }
        }
        drop(by_user);
        let role = &role;
        let pairs = |want: Role| (0..data.len()).filter(move |&r| role[r] == want).map(|r| (data.user[r], data.item[r]));
        let train = UserItems::from_pairs(data.n_users(), pairs(Role::Train));
        // A held-out pair the user also has earlier in the split (a repeated interaction) is not a
        // new one to predict: validation leaves out training pairs, test validation ones and,
        // under the temporal cut, training ones too.
        let valid = validation.then(|| UserItems::from_pairs(data.n_users(), pairs(Role::Valid).filter(|&(u, i)| !train.contains(u, i))));
        let seen_before = |u: u32, i: u32| valid.as_ref().is_some_and(|v| v.contains(u, i)) || (config.method == SplitMethod::Temporal && train.contains(u, i));
        let test = UserItems::from_pairs(data.n_users(), pairs(Role::Test).filter(|&(u, i)| !seen_before(u, i)));
        if config.method != SplitMethod::Temporal
            && let Some(u) = (0..data.n_users() as u32).find(|&u| train.items(u).is_empty())
        {
            let split = config.method.label();
            return Err(DataError::EmptyTrainUser { user: data.users.raw(u).to_owned(), split, need: 2 });
        }
        Ok(Self { train, valid, test, n_items: data.n_items(), method: config.method })
    }

    /// Moves a random `ratio` share of each user's training items into a validation split (at
    /// least one training item kept), for splits that come without one (`given` without
    /// `valid_path`). Draws from `seed`.
    pub fn carve_valid(&mut self, ratio: f64, seed: u64) {
        let mut rng = rng::stream(seed, &[0x7A_11D]);
        let n_users = self.train.n_users();
        let (mut train, mut valid) = (Vec::with_capacity(self.train.nnz()), Vec::new());
        for u in 0..n_users as u32 {
            let mut items = self.train.items(u).to_vec();
            let (_, n_valid) = hold_out(&mut items, 0.0, ratio, &mut rng);
            valid.extend(items[..n_valid].iter().map(|&i| (u, i)));
            train.extend(items[n_valid..].iter().map(|&i| (u, i)));
        }
        self.train = UserItems::from_pairs(n_users, train);
        self.valid = Some(UserItems::from_pairs(n_users, valid));
    }

    /// Each user's items the model must not be credited for recommending at test time:
    /// training and validation items.
    pub fn seen_before_test(&self) -> UserItems {
        self.train.union_with(self.valid.as_ref())
    }
}

/// Shuffles one group's rows (Fisher–Yates) and returns how many of the first are test
/// (`round(test_ratio · n)`) and how many after those are validation (`round(valid_ratio · n)`),
/// always leaving one row for training. The shuffle does not depend on `valid_ratio`, so test is
/// the same with or without validation.
fn hold_out(rows: &mut [u32], test_ratio: f64, valid_ratio: f64, rng: &mut rng::Rng) -> (usize, usize) {
    if rows.is_empty() {
        return (0, 0);
    }
    for k in (1..rows.len()).rev() {
        rows.swap(k, rng.random_range(0..=k));
    }
    let n = rows.len() as f64;
    let n_test = ((n * test_ratio).round() as usize).min(rows.len() - 1);
    let n_valid = ((n * valid_ratio).round() as usize).min(rows.len() - 1 - n_test);
    (n_test, n_valid)
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
        let s = Split::new(&d, &SplitConfig::default(), 0, false).unwrap();
        assert_eq!(s.test.items(0), &[2]); // items 1 and 2 tie at t=9: the later row wins
        assert_eq!(s.test.items(1), &[0]);
        assert_eq!(s.train.items(0), &[0, 1]);
        assert_eq!(s.train.items(1), &[3]);
    }

    #[test]
    fn leave_one_out_rejects_single_interaction_users_unless_dropped() {
        let mut d = data(vec![0, 0, 1, 2, 2], vec![0, 1, 2, 0, 3], None);
        let err = Split::new(&d, &SplitConfig::default(), 0, false).unwrap_err().to_string();
        assert!(err.contains("\"u1\"") && err.contains("data.clean.min_user_interactions"), "{err}");
        assert_eq!(drop_unsplittable_users(&mut d, SplitMethod::Random), (0, 0));
        assert_eq!(drop_unsplittable_users(&mut d, SplitMethod::LeaveOneOut), (1, 1));
        assert_eq!(d.users.raw_ids(), &["u0", "u2"]);
        assert_eq!(d.items.raw_ids(), &["i0", "i1", "i3"], "the dropped user's only item goes too");
        let s = Split::new(&d, &SplitConfig::default(), 0, false).unwrap();
        assert_eq!((s.train.nnz(), s.test.nnz()), (2, 2));
    }

    #[test]
    fn random_split_keeps_ratio_and_disjointness() {
        let n = 40u32;
        let d = data((0..n * 8).map(|r| r / 8).collect(), (0..n * 8).map(|r| r % 8 + (r / 8) % 3).collect(), None);
        let cfg = SplitConfig { method: SplitMethod::Random, test_ratio: 0.25, ..Default::default() };
        let s = Split::new(&d, &cfg, 3, false).unwrap();
        for u in 0..n {
            assert_eq!(s.test.items(u).len(), 2);
            assert_eq!(s.train.items(u).len(), 6);
            assert!(s.test.items(u).iter().all(|&i| !s.train.contains(u, i)));
        }
        let again = Split::new(&d, &cfg, 3, false).unwrap();
        assert_eq!(again.test, s.test);
        assert_ne!(Split::new(&d, &cfg, 4, false).unwrap().test, s.test);
    }

    #[test]
    fn random_split_by_item_holds_out_a_share_of_each_item() {
        // 12 users who each rated all 8 items: per item, round(0.25 * 12) = 3 held out.
        let (nu, ni) = (12u32, 8u32);
        let d = data((0..nu * ni).map(|r| r / ni).collect(), (0..nu * ni).map(|r| r % ni).collect(), None);
        let cfg = SplitConfig { method: SplitMethod::Random, test_ratio: 0.25, group: SplitGroup::Item, ..Default::default() };
        let s = Split::new(&d, &cfg, 5, false).unwrap();
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
        let s = Split::new(&d, &cfg, 0, false).unwrap();
        assert_eq!(s.test.items(0), &[2]);
        assert_eq!(s.test.items(1), &[3]);
        assert_eq!(s.train.nnz(), 2);
    }

    /// Every pair of a split, tagged 0 train, 1 validation, 2 test.
    fn tagged(s: &Split) -> Vec<(u32, u32, u8)> {
        let valid = s.valid.iter().flat_map(|v| v.pairs().map(|(u, i)| (u, i, 1)));
        let mut all: Vec<_> = s.train.pairs().map(|(u, i)| (u, i, 0)).chain(valid).chain(s.test.pairs().map(|(u, i)| (u, i, 2))).collect();
        all.sort();
        all
    }

    /// Train, validation and test are disjoint.
    fn assert_disjoint(s: &Split) {
        let v = s.valid.as_ref().expect("a validation split");
        for (u, i) in v.pairs() {
            assert!(!s.train.contains(u, i) && !s.test.contains(u, i), "({u},{i})");
        }
        for (u, i) in s.test.pairs() {
            assert!(!s.train.contains(u, i), "({u},{i})");
        }
    }

    /// 40 users with 10 distinct items each, times 0..10 in row order.
    fn grid() -> Interactions {
        let n = 40u32;
        let rows = n * 10;
        data((0..rows).map(|r| r / 10).collect(), (0..rows).map(|r| r % 10 + (r / 10) % 7).collect(), Some((0..rows).map(|r| (r % 10) as i64).collect()))
    }

    #[test]
    fn leave_one_out_validates_on_the_second_latest() {
        let d = data(vec![0, 0, 0, 0, 1, 1, 2, 2, 2], vec![0, 1, 2, 3, 0, 3, 4, 1, 2], Some(vec![5, 9, 7, 9, 1, 0, 3, 1, 2]));
        let s = Split::new(&d, &SplitConfig::default(), 0, true).unwrap();
        let v = s.valid.as_ref().unwrap();
        // User 0: t=9 twice, the later row (item 3) is test, item 1 validation.
        assert_eq!((s.test.items(0), v.items(0), s.train.items(0)), (&[3][..], &[1][..], &[0, 2][..]));
        // User 1 has two interactions: one to train on, one to test, none to validate.
        assert_eq!((s.test.items(1), v.items(1), s.train.items(1)), (&[0][..], &[][..], &[3][..]));
        assert_eq!((s.test.items(2), v.items(2), s.train.items(2)), (&[4][..], &[2][..], &[1][..]));
        assert_disjoint(&s);
        // Without validation the split is today's: the validation items train.
        let off = Split::new(&d, &SplitConfig::default(), 0, false).unwrap();
        assert!(off.valid.is_none());
        assert_eq!(off.test, s.test);
        assert_eq!(off.train, s.train.union(v));
    }

    #[test]
    fn random_validation_is_carved_after_test_and_seeded() {
        let d = grid();
        for group in [SplitGroup::User, SplitGroup::Item] {
            let cfg = SplitConfig { method: SplitMethod::Random, test_ratio: 0.2, valid_ratio: 0.1, group, ..Default::default() };
            let s = Split::new(&d, &cfg, 3, true).unwrap();
            assert_disjoint(&s);
            let v = s.valid.as_ref().unwrap();
            assert_eq!(s.train.nnz() + v.nnz() + s.test.nnz(), d.len(), "{group:?}");
            if group == SplitGroup::User {
                for u in 0..40 {
                    assert_eq!((s.train.items(u).len(), v.items(u).len(), s.test.items(u).len()), (7, 1, 2));
                }
            }
            // Same seed, same split; another seed, another one.
            let again = Split::new(&d, &cfg, 3, true).unwrap();
            assert_eq!(tagged(&again), tagged(&s));
            assert_ne!(Split::new(&d, &cfg, 4, true).unwrap().valid, s.valid);
            // Off: exactly the split without validation, whose test is the same.
            let off = Split::new(&d, &cfg, 3, false).unwrap();
            assert_eq!(off.test, s.test);
            assert_eq!(off.train, s.train.union(v));
            let today = Split::new(&d, &SplitConfig { valid_ratio: 0.0, ..cfg.clone() }, 3, true).unwrap();
            assert_eq!((today.train, today.test), (off.train, off.test));
        }
    }

    #[test]
    fn random_validation_keeps_a_training_row() {
        // Two interactions per user: round(0.5 · 2) = 1 test, then nothing left to validate.
        let d = data(vec![0, 0, 1, 1], vec![0, 1, 2, 3], None);
        let cfg = SplitConfig { method: SplitMethod::Random, test_ratio: 0.5, valid_ratio: 0.5, ..Default::default() };
        let s = Split::new(&d, &cfg, 1, true).unwrap();
        assert_eq!((s.train.nnz(), s.valid.as_ref().unwrap().nnz(), s.test.nnz()), (2, 0, 2));
    }

    #[test]
    fn temporal_validation_is_just_before_the_test_cut() {
        let d = grid();
        let cfg = SplitConfig { method: SplitMethod::Temporal, test_ratio: 0.2, valid_ratio: 0.1, ..Default::default() };
        let s = Split::new(&d, &cfg, 0, true).unwrap();
        assert_disjoint(&s);
        let v = s.valid.as_ref().unwrap();
        // Times 8 and 9 (20% of rows) are test, time 7 (10%) validation, for every user.
        let t = |u: u32, tt: u32| (u * 10 + tt) % 10 + u % 7;
        for u in 0..40u32 {
            assert_eq!(
                s.test.items(u),
                &{
                    let mut x = vec![t(u, 8), t(u, 9)];
                    x.sort();
                    x
                }[..]
            );
            assert_eq!(v.items(u), &[t(u, 7)]);
        }
        let off = Split::new(&d, &cfg, 0, false).unwrap();
        assert_eq!(off.test, s.test);
        assert_eq!(off.train, s.train.union(v));
    }

    #[test]
    fn carved_validation_keeps_a_training_item_per_user() {
        let d = data(vec![0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2], vec![0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9], None);
        let cfg = SplitConfig { method: SplitMethod::Random, test_ratio: 0.0, ..Default::default() };
        let base = Split::new(&d, &cfg, 0, false).unwrap();
        let mut s = base.clone();
        s.carve_valid(0.2, 9);
        let v = s.valid.clone().unwrap();
        assert_eq!(s.train.items(0), &[0]);
        assert_eq!((s.train.items(2).len(), v.items(2).len()), (8, 2));
        assert_eq!(s.train.union(&v), base.train);
        let mut again = base.clone();
        again.carve_valid(0.2, 9);
        assert_eq!(again.valid, s.valid);
        assert_eq!(s.seen_before_test(), base.train);
    }
}

//! The data pipeline on the real MovieLens files in ../shared/data (skipped with a reason when the
//! folder is absent; CI has it): counts and split invariants.

#[path = "common.rs"]
mod common;

use common::shared_data as shared;
use ncf_datasets::{CleanConfig, NegativeSampler, ReadOptions, SampledCandidates, SamplerConfig, Split, SplitConfig, reader};

fn check_split(split: &Split, n_users: usize) {
    assert_eq!(split.test.n_users(), n_users);
    for u in 0..n_users as u32 {
        assert_eq!(split.test.items(u).len(), 1, "one test item for user {u}");
        assert!(!split.train.items(u).is_empty());
        assert!(!split.train.contains(u, split.test.items(u)[0]), "test item not in train for {u}");
    }
}

#[test]
fn ml_100k_udata() {
    let Some(path) = shared("ml-100k/u.data") else { return };
    let mut data = reader::read(&path, &ReadOptions::default()).unwrap();
    assert_eq!((data.n_users(), data.n_items(), data.len()), (943, 1682, 100_000));
    assert!(data.rating.is_some() && data.time.is_some());
    let report = CleanConfig::default().apply(&mut data);
    assert_eq!(report.duplicates, 0);
    let split = Split::new(&data, &SplitConfig::default(), 1, true).unwrap();
    check_split(&split, 943);
    // Every ml-100k user has 20+ ratings: one test and one validation item each.
    let valid = split.valid.as_ref().unwrap();
    assert_eq!((split.train.nnz(), valid.nnz()), (100_000 - 2 * 943, 943));

    let cands = SampledCandidates::draw(&split, 100, 1);
    assert_eq!(cands.rows(), 943);
    for r in 0..cands.rows() {
        let u = cands.user[r];
        let row = &cands.items[r * 101..(r + 1) * 101];
        assert_eq!(row[0], split.test.items(u)[0]);
        assert!(row[1..].iter().all(|&j| !split.train.contains(u, j) && !valid.contains(u, j) && j != row[0]), "negatives unseen for {u}");
    }
    let samples = NegativeSampler::new(&split.train, data.n_items(), SamplerConfig::default(), 1).epoch(0);
    assert_eq!(samples.len(), split.train.nnz() * 5);
    for k in 0..samples.len() {
        if samples.label[k] == 0.0 {
            assert!(!split.train.contains(samples.user[k], samples.item[k]));
        }
    }
}

#[test]
fn ml_latest_small_csv() {
    let Some(path) = shared("ml-latest-small/ratings.csv") else { return };
    let data = reader::read(&path, &ReadOptions::default()).unwrap();
    assert_eq!((data.n_users(), data.n_items(), data.len()), (610, 9724, 100_836));
    assert_eq!(data.users.raw(0), "1");
    let split = Split::new(&data, &SplitConfig::default(), 3, true).unwrap();
    check_split(&split, 610);
}

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

/// A directory of parts (as Spark writes them: bookkeeping files beside the parts) and a glob read
/// exactly as the concatenation of the parts, text and Parquet alike; parts whose columns differ
/// are refused naming the part.
#[test]
fn part_directories_and_globs_read_as_their_concatenation() {
    use ncf_datasets::table::{Kind, Values};
    let dir = std::env::temp_dir().join(format!("ncf-parts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let parts = dir.join("parts");
    std::fs::create_dir_all(&parts).unwrap();
    // 3 parts of user,item,rating; ids repeat across parts, and part 2 brings new ones.
    let rows: Vec<(String, String, f32)> = (0..300).map(|k| (format!("u{}", (k * 7) % 23), format!("i{}", (k * 11) % 37 + k / 150), (k % 5) as f32)).collect();
    let mut whole = String::from("user,item,rating\n");
    for (p, chunk) in rows.chunks(100).enumerate() {
        let mut text = String::from("user,item,rating\n");
        for (u, i, r) in chunk {
            text += &format!("{u},{i},{r}\n");
        }
        whole += &text["user,item,rating\n".len()..];
        std::fs::write(parts.join(format!("part-{p:05}.csv")), text).unwrap();
    }
    std::fs::write(parts.join("_SUCCESS"), "").unwrap();
    std::fs::write(parts.join(".part-00000.csv.crc"), "crc").unwrap();
    std::fs::write(dir.join("whole.csv"), &whole).unwrap();
    let opts = ReadOptions::default();
    let reference = reader::read(&dir.join("whole.csv"), &opts).unwrap();
    let same = |got: &ncf_datasets::Interactions, what: &str| {
        assert_eq!(got.users.raw_ids(), reference.users.raw_ids(), "{what}");
        assert_eq!(got.items.raw_ids(), reference.items.raw_ids(), "{what}");
        assert_eq!((&got.user, &got.item, &got.rating), (&reference.user, &reference.item, &reference.rating), "{what}");
    };
    same(&reader::read(&parts, &opts).unwrap(), "directory");
    same(&reader::read(&parts.join("part-*.csv"), &opts).unwrap(), "glob");

    // The same rows as Parquet parts.
    let pq = dir.join("pq");
    std::fs::create_dir_all(&pq).unwrap();
    let cols = [("user".to_owned(), Kind::Str), ("item".to_owned(), Kind::Str), ("rating".to_owned(), Kind::F32)];
    for (p, chunk) in rows.chunks(100).enumerate() {
        let path = pq.join(format!("part-{p:05}.snappy.parquet"));
        let mut sink = ncf_datasets::ParquetSink::new(std::fs::File::create(&path).unwrap(), &path, &cols).unwrap();
        sink.write(&[
            Values::Str(chunk.iter().map(|r| Some(r.0.clone())).collect()),
            Values::Str(chunk.iter().map(|r| Some(r.1.clone())).collect()),
            Values::F32(chunk.iter().map(|r| r.2).collect()),
        ])
        .unwrap();
        sink.finish().unwrap();
    }
    same(&reader::read(&pq, &opts).unwrap(), "parquet parts");

    // A part without the rating column; no match; an empty directory.
    std::fs::write(parts.join("part-00003.csv"), "user,item\nu1,i1\n").unwrap();
    let err = reader::read(&parts, &opts).unwrap_err().to_string();
    assert!(err.contains("part-00003.csv") && err.contains("columns must agree"), "{err}");
    let err = reader::read(&parts.join("x-*.csv"), &opts).unwrap_err().to_string();
    assert!(err.contains("no file matches"), "{err}");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("empty/_SUCCESS"), "").unwrap();
    let err = reader::read(&dir.join("empty"), &opts).unwrap_err().to_string();
    assert!(err.contains("no part files"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// MovieLens 100K's side tables fit as one would by hand: u.user's age numeric, gender and
/// occupation categorical, zip code skipped as identifier-like; u.item's 19 genre columns flags,
/// title and URL skipped; every movie has at least one genre row.
#[test]
fn ml_100k_side_features_are_inferred() {
    use ncf_datasets::features::{FeatureConfig, FeatureKind::*, FeatureVocab};
    let (Some(users), Some(items), Some(data)) = (shared("ml-100k/u.user"), shared("ml-100k/u.item"), shared("ml-100k/u.data")) else { return };
    let data = reader::read(&data, &ReadOptions::default()).unwrap();
    let t = ncf_datasets::table::read_keyed(&users, None, &[]).unwrap();
    let (vocab, _) = FeatureVocab::fit(&t, &FeatureConfig::default());
    let kinds: Vec<_> = vocab.columns.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [Numeric, Categorical, Categorical, Skip], "age, gender, occupation, zip");
    assert_eq!((vocab.columns[1].values.len(), vocab.columns[2].values.len()), (2, 21));
    let (f, without) = vocab.encode_all(&t, &data.users);
    assert_eq!((f.len(), without), (943, 0));
    assert!((0..943).all(|u| f.of(u).count() == 3), "one row per kept column");

    let t = ncf_datasets::table::read_keyed(&items, None, &[]).unwrap();
    let (vocab, summary) = FeatureVocab::fit(&t, &FeatureConfig::default());
    let flags = vocab.columns.iter().filter(|c| c.kind == Flag).count();
    assert_eq!(flags, 19, "{summary:?}");
    assert_eq!((vocab.columns[0].kind, vocab.columns[3].kind), (Skip, Skip), "title and URL: {summary:?}");
    let (f, without) = vocab.encode_all(&t, &data.items);
    assert_eq!(without, 0);
    let genre_weights = |i: usize| f.of(i).filter(|&(r, _)| vocab.columns.iter().any(|c| c.kind == Flag && c.offset == r)).map(|(_, w)| w).sum::<f32>();
    // Movie 267 has no genre flag set in u.item ("unknown" is itself a flag column).
    assert!((0..data.n_items()).all(|i| (genre_weights(i) - 1.0).abs() < 1e-5 || genre_weights(i) == 0.0));
}

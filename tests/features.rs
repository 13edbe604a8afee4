//! Side features end to end: a synthetic set where what a user likes is a function of one user
//! attribute alone. A model trained with `--user-features` recommends new users (never in the
//! training data) from that attribute; without it, new users can only get popularity.

#[path = "ncf_bin.rs"]
mod ncf_bin;

use std::collections::HashMap;
use std::path::Path;

use ncf_bin::{ncf, temp_dir};

const USERS: usize = 400;
/// Users `COLD..USERS` never appear in the training interactions (10 %).
const COLD: usize = 360;
const ITEMS: usize = 60;
const PER_USER: usize = 12;

/// A user's segment: even users like items `0..30`, odd users `30..60`.
fn segment(u: usize) -> usize {
    u % 2
}

/// Each user's items: `PER_USER` distinct items of its segment's half, drawn by a fixed LCG.
fn items_of(u: usize) -> Vec<usize> {
    let mut state = (u as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    while out.len() < PER_USER {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let i = segment(u) * ITEMS / 2 + (state >> 33) as usize % (ITEMS / 2);
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// interactions.csv (warm users only), users.csv (every user: segment plus a noise column),
/// items.csv (each item's half).
fn write_data(dir: &Path) {
    let mut inter = String::from("user,item\n");
    for u in 0..COLD {
        for i in items_of(u) {
            inter += &format!("u{u},i{i}\n");
        }
    }
    std::fs::write(dir.join("interactions.csv"), inter).unwrap();
    let mut users = String::from("user,segment,shoe_size\n");
    for u in 0..USERS {
        users += &format!("u{u},{},{}\n", ["north", "south"][segment(u)], 36 + (u * 7) % 12);
    }
    std::fs::write(dir.join("users.csv"), users).unwrap();
    let mut items = String::from("item,half\n");
    for i in 0..ITEMS {
        items += &format!("i{i},{}\n", ["a", "b"][i / (ITEMS / 2)]);
    }
    std::fs::write(dir.join("items.csv"), items).unwrap();
}

fn run(cmd: &mut assert_cmd::Command) -> String {
    let output = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "ncf failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn train(dir: &Path, out: &str, extra: &[&str]) -> String {
    run(ncf()
        .args(["train", "--backend", "flex", "--model", "gmf", "--epochs", "12", "--seed", "3", "--data"])
        .arg(dir.join("interactions.csv"))
        .args(["--set", "optim.lr=0.01", "--set", "train.batch_size=256", "--out"])
        .arg(dir.join(out))
        .args(extra))
}

/// Per cold user: its recommended items (numbers) and their `source`.
fn recommend(dir: &Path, run_dir: &str, extra: &[&str]) -> HashMap<usize, (Vec<usize>, String)> {
    let users: Vec<String> = (COLD..USERS).map(|u| format!("u{u}")).collect();
    let out = dir.join(format!("{run_dir}.csv"));
    run(ncf()
        .args(["recommend", "--backend", "flex", "--top-n", "10", "--users", &users.join(","), "--checkpoint"])
        .arg(dir.join(run_dir))
        .arg("--out")
        .arg(&out)
        .args(extra));
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lists: HashMap<usize, (Vec<usize>, String)> = HashMap::new();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect(); // user,rank,item,score,source
        let u: usize = cells[0][1..].parse().unwrap();
        let entry = lists.entry(u).or_insert_with(|| (Vec::new(), cells[4].to_owned()));
        entry.0.push(cells[2][1..].parse().unwrap());
        assert_eq!(entry.1, cells[4], "one source per user");
    }
    assert_eq!(lists.len(), USERS - COLD, "every cold user gets a list");
    lists
}

/// Mean Recall@10 of the cold users' own items.
fn recall(lists: &HashMap<usize, (Vec<usize>, String)>) -> f64 {
    let per: Vec<f64> = lists.iter().map(|(&u, (got, _))| got.iter().filter(|i| items_of(u).contains(i)).count() as f64 / PER_USER as f64).collect();
    per.iter().sum::<f64>() / per.len() as f64
}

#[test]
fn new_users_are_scored_from_their_features() {
    let dir = temp_dir("cold");
    write_data(&dir);
    let printed = train(&dir, "with", &["--user-features", dir.join("users.csv").to_str().unwrap()]);
    assert!(printed.contains("features: user:"), "{printed}");

    let from_features = recommend(&dir, "with", &["--user-features", dir.join("users.csv").to_str().unwrap()]);
    assert!(from_features.values().all(|(_, s)| s == "features"), "cold users with a feature line are scored from it");
    // Without the file (or without features in the model) new users get popularity.
    let popular = recommend(&dir, "with", &[]);
    assert!(popular.values().all(|(_, s)| s == "popularity"));
    train(&dir, "without", &[]);
    let without = recommend(&dir, "without", &[]);
    assert!(without.values().all(|(_, s)| s == "popularity"));

    let (r_features, r_popular) = (recall(&from_features), recall(&without));
    // Popularity cannot tell the segments apart: about half its items are in the user's half.
    // The segment alone decides the preference, so the features model gets its half right.
    let own_half = |lists: &HashMap<usize, (Vec<usize>, String)>| {
        let hits: usize = lists.iter().map(|(&u, (got, _))| got.iter().filter(|&&i| i / (ITEMS / 2) == segment(u)).count()).sum();
        hits as f64 / (10 * lists.len()) as f64
    };
    eprintln!(
        "cold users: recall@10 {r_features:.3} from features vs {r_popular:.3} popularity; own half {:.2} vs {:.2}",
        own_half(&from_features),
        own_half(&without)
    );
    assert!(own_half(&from_features) > 0.9, "features model recommends across segments: {:.2}", own_half(&from_features));
    assert!(own_half(&without) < 0.75, "popularity should not know the segment: {:.2}", own_half(&without));
    assert!(r_features >= 1.5 * r_popular, "recall@10 from features {r_features:.3} < 1.5 × popularity {r_popular:.3}");
}

#[test]
fn a_pure_feature_model_trains_and_bad_feature_files_are_refused() {
    let dir = temp_dir("pure");
    write_data(&dir);
    let users = dir.join("users.csv");
    let items = dir.join("items.csv");
    let printed =
        train(&dir, "pure", &["--user-features", users.to_str().unwrap(), "--item-features", items.to_str().unwrap(), "--set", "model.id_embeddings=false"]);
    assert!(printed.contains("features: item:"), "{printed}");
    let lists = recommend(&dir, "pure", &["--user-features", users.to_str().unwrap()]);
    let own: usize = lists.iter().map(|(&u, (got, _))| got.iter().filter(|&&i| i / (ITEMS / 2) == segment(u)).count()).sum();
    assert!(own as f64 / (10 * lists.len()) as f64 > 0.9, "a pure feature model knows the segments: {own}");

    // Bad inputs: a clear message naming the file, a non-zero exit, no run written.
    let refuse = |args: &[&str], out: &str, needle: &str| {
        let output = ncf()
            .args(["train", "--backend", "flex", "--epochs", "1", "--data"])
            .arg(dir.join("interactions.csv"))
            .arg("--out")
            .arg(dir.join(out))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!dir.join(out).join("best").exists(), "{args:?} wrote a checkpoint");
    };
    let key_only = dir.join("key_only.csv");
    std::fs::write(&key_only, "user\nu1\nu2\n").unwrap();
    refuse(&["--user-features", key_only.to_str().unwrap()], "bad1", "key_only.csv");
    refuse(&["--user-features", dir.join("missing.csv").to_str().unwrap()], "bad2", "missing.csv");
    refuse(&["--user-features", users.to_str().unwrap(), "--set", "model.id_embeddings=false"], "bad3", "--item-features");
    refuse(&["--user-features", users.to_str().unwrap(), "--devices", "0,1"], "bad4", "one device");
    // Recommending new users from features with a model trained without them.
    train(&dir, "plain", &[]);
    let output = ncf()
        .args(["recommend", "--backend", "flex", "--users", "u399", "--user-features", users.to_str().unwrap(), "--checkpoint"])
        .arg(dir.join("plain"))
        .arg("--out")
        .arg(dir.join("plain.csv"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("trained without user features"));
    assert!(!dir.join("plain.csv").exists());
}

//! End-to-end tests of `ncf recommend`, `ncf evaluate` and `ncf score` on checkpoints of tiny demo
//! runs: exports against a brute-force reference (every pair scored through the model's pairwise
//! forward, not the whole-catalogue path the exports use), output formats, unknown users, item
//! metadata, metric reproduction, and clean failures on bad inputs.

#[path = "ncf_bin.rs"]
mod ncf_bin;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;

#[path = "common.rs"]
mod common;

use assert_cmd::Command;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ncf_bin::{ncf, temp_dir, wgpu_available};
use ncf_datasets::{DemoConfig, ReadOptions, Split, SplitConfig, reader};
use ncf_model::{ModelConfig, Ncf};

const USERS: usize = 40;
const ITEMS: usize = 60;
const SEED: u64 = 11;
/// At most half the catalogue per user, so every user has items left to recommend.
const MAX_PER_USER: usize = 30;

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Trains `model` for `epochs` on the tiny demo set into `out`.
fn train(out: &Path, model: &str, epochs: usize, extra: &[&str]) {
    let mut cmd = ncf();
    cmd.args(["train", "--backend", "flex", "--model", model, "--seed", &SEED.to_string(), "--epochs", &epochs.to_string()])
        .args(["--set", &format!("data.demo.users={USERS}"), "--set", &format!("data.demo.items={ITEMS}")])
        .args(["--set", &format!("data.demo.max_per_user={MAX_PER_USER}")])
        .args(["--set", "model.factors=6", "--set", "model.layers=[8,6,4]", "--set", "model.init_std=0.5"]);
    for s in extra {
        cmd.args(["--set", s]);
    }
    ok(run(cmd.arg("--out").arg(out)));
}

/// The demo split rebuilt independently: raw user → (items seen before test: training and
/// validation, test items), raw ids.
fn split() -> HashMap<String, (HashSet<String>, HashSet<String>)> {
    let data = DemoConfig { users: USERS, items: ITEMS, max_per_user: MAX_PER_USER, ..Default::default() }.generate(SEED);
    let split = Split::new(&data, &SplitConfig::default(), SEED, true).unwrap();
    let seen = split.seen_before_test();
    let raw = |t: &ncf_datasets::UserItems, u: u32| t.items(u).iter().map(|&i| data.items.raw(i).to_owned()).collect();
    (0..data.n_users() as u32).map(|u| (data.users.raw(u).to_owned(), (raw(&seen, u), raw(&split.test, u)))).collect()
}

/// The checkpoint's model loaded straight from its files, with its raw id lists.
struct Reference {
    model: Ncf,
    users: Vec<String>,
    items: Vec<String>,
    device: Device,
}

impl Reference {
    fn load(run: &Path) -> Self {
        let dir = run.join("best");
        let config: toml::Table = std::fs::read_to_string(dir.join("config.toml")).unwrap().parse().unwrap();
        let model_cfg: ModelConfig = config["model"].clone().try_into().unwrap();
        // The raw ids are bytes in train.safetensors, each id ending at the offset in `*_id_ends`.
        let buf = std::fs::read(dir.join("train.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
        let ids = |name: &str| -> Vec<String> {
            let all = st.tensor(&format!("{name}_ids")).unwrap().data().to_vec();
            let ends = st.tensor(&format!("{name}_id_ends")).unwrap().data().to_vec();
            let mut start = 0;
            ends.chunks_exact(8)
                .map(|c| {
                    let end = i64::from_le_bytes(c.try_into().unwrap()) as usize;
                    let id = String::from_utf8(all[start..end].to_vec()).unwrap();
                    start = end;
                    id
                })
                .collect()
        };
        let (users, items) = (ids("user"), ids("item"));
        let device = Device::flex();
        let mut model = Ncf::init(&model_cfg, users.len(), items.len(), 0, &device);
        let applied = model.load_from(&mut SafetensorsStore::from_file(dir.join("model.safetensors"))).unwrap();
        assert!(applied.is_success() && applied.missing.is_empty(), "{applied}");
        Self { model, users, items, device }
    }

    /// Every item's score for raw `user`, through the pairwise forward.
    fn scores(&self, user: &str) -> Vec<f32> {
        let u = self.users.iter().position(|x| x == user).unwrap() as i32;
        let n = self.items.len();
        let ints = |v: Vec<i32>| Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &self.device);
        let s = self.model.score_pairs(ints(vec![u; n]), ints((0..n as i32).collect()));
        s.into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// Brute-force top-n (raw item, score) for `user`, best first, ties by lower item id.
    fn top_n(&self, user: &str, n: usize, exclude: &HashSet<String>) -> Vec<(String, f32)> {
        let s = self.scores(user);
        let mut idx: Vec<usize> = (0..self.items.len()).filter(|&i| !exclude.contains(&self.items[i])).collect();
        idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        idx.into_iter().take(n).map(|i| (self.items[i].clone(), s[i])).collect()
    }
}

/// Parses a CSV export (no quoted fields in these tests) into rows of fields, checking the header.
fn csv_rows(path: &Path, header: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header), "{}", path.display());
    lines.map(|l| l.split(',').map(str::to_owned).collect()).collect()
}

/// Asserts one user's exported (item, score) list equals the reference: same items in the same
/// order (swaps allowed only between reference scores within 1e-6), scores within 1e-5.
fn assert_matches(user: &str, got: &[(String, f32)], want: &[(String, f32)]) {
    assert_eq!(got.len(), want.len(), "user {user}: {got:?} vs {want:?}");
    for (r, ((gi, gs), (wi, ws))) in got.iter().zip(want).enumerate() {
        assert!((gs - ws).abs() <= 1e-5, "user {user} rank {}: score {gs} vs {ws}", r + 1);
        if gi != wi {
            let tie = want.iter().any(|(i, s)| i == gi && (s - ws).abs() <= 1e-6);
            assert!(tie, "user {user} rank {}: item {gi} vs {wi}\n{got:?}\n{want:?}", r + 1);
        }
    }
}

/// `recommend` for all users on `backend` equals the brute-force reference; training items never appear.
fn matches_reference(backend: &str, model: &str) {
    let dir = temp_dir(&format!("ref-{backend}-{model}"));
    let run_dir = dir.join("run");
    train(&run_dir, model, 1, &[]);
    let reference = Reference::load(&run_dir);
    let split = split();
    let top_n = 7;
    let out = dir.join("recs.csv");
    ok(run(ncf().args(["recommend", "--backend", backend, "--top-n", &top_n.to_string(), "--checkpoint"]).arg(&run_dir).arg("--out").arg(&out)));
    let mut got: HashMap<String, Vec<(String, f32)>> = HashMap::new();
    for (k, row) in csv_rows(&out, "user,rank,item,score").into_iter().enumerate() {
        let list = got.entry(row[0].clone()).or_default();
        assert_eq!(row[1].parse::<usize>().unwrap(), list.len() + 1, "ranks from 1 in order, row {k}");
        list.push((row[2].clone(), row[3].parse().unwrap()));
    }
    assert_eq!(got.len(), USERS, "every user present");
    for (user, list) in &got {
        let seen = &split[user].0;
        assert!(list.iter().all(|(i, _)| !seen.contains(i)), "user {user} got a training item: {list:?}");
        assert_matches(user, list, &reference.top_n(user, top_n, seen));
    }

    // --include-seen ranks the whole catalogue.
    let all = dir.join("all.csv");
    ok(run(ncf()
        .args(["recommend", "--backend", backend, "--top-n", "5", "--include-seen", "--users", "3,1", "--checkpoint"])
        .arg(&run_dir)
        .arg("--out")
        .arg(&all)));
    let rows = csv_rows(&all, "user,rank,item,score,source");
    assert_eq!(rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), [["3"; 5], ["1"; 5]].concat(), "request order");
    for user in ["3", "1"] {
        let list: Vec<(String, f32)> = rows.iter().filter(|r| r[0] == user).map(|r| (r[2].clone(), r[3].parse().unwrap())).collect();
        assert_matches(user, &list, &reference.top_n(user, 5, &HashSet::new()));
    }

    // More than the unseen items asked for: each user gets exactly the unseen items (device top-k
    // pads such rows; the padding must not leak).
    let wide = dir.join("wide.csv");
    ok(run(ncf().args(["recommend", "--backend", backend, "--top-n", "1000", "--checkpoint"]).arg(&run_dir).arg("--out").arg(&wide)));
    let rows = csv_rows(&wide, "user,rank,item,score");
    for (user, (seen, _)) in &split {
        let items: HashSet<&str> = rows.iter().filter(|r| &r[0] == user).map(|r| r[2].as_str()).collect();
        let unseen: HashSet<&str> = reference.items.iter().map(String::as_str).filter(|i| !seen.contains(*i)).collect();
        assert_eq!(items, unseen, "user {user}");
    }
}

#[test]
fn mf_recommendations_match_brute_force_on_flex() {
    matches_reference("flex", "mf");
}

#[test]
fn neumf_recommendations_match_brute_force_on_flex() {
    matches_reference("flex", "neumf");
}

#[test]
fn neumf_recommendations_match_brute_force_on_wgpu() {
    if wgpu_available() {
        matches_reference("wgpu", "neumf");
    }
}

/// On wgpu, recommendations and full-ranking metrics for a catalogue whose users have more
/// than 65,536 seen items in one scoring chunk equal flex's: burn's wgpu `select_assign` drops
/// indices past that count, which left later users' training items unmasked
/// (`ncf_model::scatter` applies them in pieces).
#[test]
fn wgpu_masks_every_seen_item_of_large_chunks() {
    if !wgpu_available() {
        return;
    }
    let dir = temp_dir("wgpu-mask");
    let run_dir = dir.join("run");
    // The default demo: 3000 users with ~48 seen items each, all in one chunk.
    ok(run(ncf().args(["train", "--backend", "flex", "--model", "mf", "--epochs", "1", "-q", "--out"]).arg(&run_dir)));
    let lists = |backend: &str| -> HashMap<String, HashSet<String>> {
        let out = dir.join(format!("{backend}.csv"));
        ok(run(ncf().args(["recommend", "--backend", backend, "--top-n", "10", "--checkpoint"]).arg(&run_dir).arg("--out").arg(&out)));
        let mut by_user: HashMap<String, HashSet<String>> = HashMap::new();
        for r in csv_rows(&out, "user,rank,item,score") {
            by_user.entry(r[0].clone()).or_default().insert(r[2].clone());
        }
        by_user
    };
    let (gpu, cpu) = (lists("wgpu"), lists("flex"));
    assert_eq!(gpu.len(), 3000);
    // Scores round differently on the two backends, so a near tie may swap an item at rank 10.
    let differ = cpu.iter().filter(|(u, items)| gpu[*u] != **items).count();
    assert!(differ <= 30, "{differ} of 3000 users get other items on wgpu");
    let recall = |backend: &str| metric(&ok(run(ncf().args(["evaluate", "--backend", backend, "--checkpoint"]).arg(&run_dir))), "full", "Recall@10");
    let (a, b) = (recall("wgpu"), recall("flex"));
    assert!((a - b).abs() < 2e-3, "Recall@10 on wgpu {a} vs flex {b}");
}

#[test]
fn formats_unknown_users_candidates_and_metadata() {
    let dir = temp_dir("formats");
    let run_dir = dir.join("run");
    train(&run_dir, "gmf", 1, &[]);
    let split = split();
    let rec = |extra: &[&str], out: &Path| -> Output {
        run(ncf().args(["recommend", "--backend", "flex", "--checkpoint"]).arg(&run_dir).args(extra).arg("--out").arg(out))
    };

    // Same recommendations in CSV, Parquet (read back through the interaction reader) and JSONL.
    let (csv, pq, jsonl) = (dir.join("r.csv"), dir.join("r.parquet"), dir.join("r.data"));
    ok(rec(&["--top-n", "4"], &csv));
    ok(rec(&["--top-n", "4"], &pq));
    ok(rec(&["--top-n", "4", "--out-format", "jsonl"], &jsonl));
    let from_csv: Vec<(String, String)> = csv_rows(&csv, "user,rank,item,score").into_iter().map(|r| (r[0].clone(), r[2].clone())).collect();
    let d = reader::read(&pq, &ReadOptions::default()).unwrap();
    let from_pq: Vec<(String, String)> = d.user.iter().zip(&d.item).map(|(&u, &i)| (d.users.raw(u).to_owned(), d.items.raw(i).to_owned())).collect();
    let from_jsonl: Vec<(String, String)> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["rank"].is_u64() && v["score"].is_f64(), "{l}");
            (v["user"].as_str().unwrap().to_owned(), v["item"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(from_csv.len(), USERS * 4);
    assert_eq!(from_pq, from_csv);
    assert_eq!(from_jsonl, from_csv);

    // Unknown users: warned with the count, popular items flagged, or skipped, or an error.
    let out = dir.join("u.csv");
    let o = rec(&["--users", "5,nobody,2,ghost", "--top-n", "3"], &out);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    assert!(stderr.contains("2 of 4 requested users are not in the checkpoint"), "{stderr}");
    let rows = csv_rows(&out, "user,rank,item,score,source");
    assert_eq!(rows.len(), 12);
    let popular: Vec<&Vec<String>> = rows.iter().filter(|r| r[4] == "popularity").collect();
    assert_eq!(popular.iter().map(|r| r[0].as_str()).collect::<HashSet<_>>(), HashSet::from(["nobody", "ghost"]));
    assert!(rows.iter().filter(|r| r[0] == "5" || r[0] == "2").all(|r| r[4] == "model"));
    // Popularity = training users per item, most popular first.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    split.values().flat_map(|(train, _)| train).for_each(|i| *counts.entry(i).or_default() += 1);
    let top = counts.values().max().unwrap();
    assert_eq!(popular[0][3].parse::<f32>().unwrap() as usize, *top);
    assert_eq!(counts[popular[0][2].as_str()], *top);
    ok(rec(&["--users", "5,nobody", "--unknown-users", "skip"], &out));
    assert!(csv_rows(&out, "user,rank,item,score,source").iter().all(|r| r[0] == "5"));
    let o = rec(&["--users", "5,nobody", "--unknown-users", "error"], &dir.join("e.csv"));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("\"nobody\""));
    assert!(!dir.join("e.csv").exists());

    // --users FILE, --items restricting candidates, and Latin-1 pipe-separated metadata joined.
    std::fs::write(dir.join("users.txt"), "7\n\n3\n").unwrap();
    std::fs::write(dir.join("items.txt"), (1..=20).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    // MovieLens u.item style: pipe-separated, no header, é as the single Latin-1 byte 0xE9.
    let meta: String = (1..=ITEMS).map(|i| format!("{i}|Title é{i}|x\n")).collect();
    std::fs::write(dir.join("u.item"), meta.chars().map(|c| c as u32 as u8).collect::<Vec<u8>>()).unwrap();
    let users_file = dir.join("users.txt");
    let items_file = dir.join("items.txt");
    let meta_file = dir.join("u.item");
    let out = dir.join("m.csv");
    ok(run(ncf()
        .args(["recommend", "--backend", "flex", "--top-n", "30", "--checkpoint"])
        .arg(&run_dir)
        .arg("--users")
        .arg(&users_file)
        .arg("--items")
        .arg(&items_file)
        .arg("--item-metadata")
        .arg(&meta_file)
        .args(["--item-key", "0", "--item-columns", "1"])
        .arg("--out")
        .arg(&out)));
    let rows = csv_rows(&out, "user,rank,item,score,source,1");
    let catalogue = Reference::load(&run_dir).items;
    for user in ["7", "3"] {
        let items: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] == user).collect();
        let allowed = (1..=20).map(|i| i.to_string()).filter(|i| catalogue.contains(i) && !split[user].0.contains(i)).count();
        assert_eq!(items.len(), allowed, "user {user}: every allowed unseen item, no more");
        for r in items {
            let i: usize = r[2].parse().unwrap();
            assert!(i <= 20 && !split[user].0.contains(&r[2]));
            assert_eq!(r[5], format!("Title é{i}"));
        }
    }
}

/// The real MovieLens item tables (u.item: pipe-separated, Latin-1, no header; movies.csv: quoted
/// titles) join on the demo's item ids 1..ITEMS, which are MovieLens movie ids too.
#[test]
fn movielens_item_metadata_joins() {
    let (Some(u_item), Some(movies)) = (common::shared_data("ml-100k/u.item"), common::shared_data("ml-latest-small/movies.csv")) else {
        return;
    };
    let dir = temp_dir("movielens-meta");
    let run_dir = dir.join("run");
    train(&run_dir, "mf", 1, &[]);
    let recommend = |meta: &Path, extra: &[&str], out: &Path| {
        ok(run(ncf()
            .args(["recommend", "--backend", "flex", "--top-n", "3", "--users", "1,2", "--checkpoint"])
            .arg(&run_dir)
            .arg("--item-metadata")
            .arg(meta)
            .args(extra)
            .arg("--out")
            .arg(out)));
    };
    let titles_100k: HashMap<String, (String, String)> = std::fs::read(&u_item)
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let s: String = l.iter().map(|&b| b as char).collect(); // Latin-1
            let f: Vec<&str> = s.split('|').collect();
            (f[0].to_owned(), (f[1].to_owned(), f[2].to_owned()))
        })
        .collect();
    let out = dir.join("a.jsonl");
    recommend(&u_item, &["--item-columns", "1,2"], &out);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        let (title, date) = &titles_100k[r["item"].as_str().unwrap()];
        assert_eq!((r["1"].as_str().unwrap(), r["2"].as_str().unwrap()), (title.as_str(), date.as_str()), "{r}");
    }
    let out = dir.join("b.jsonl");
    recommend(&movies, &["--item-key", "movieId"], &out);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let one = rows.iter().find(|r| r["item"] == "1");
    if let Some(r) = one {
        assert_eq!(r["title"], "Toy Story (1995)");
    }
    assert!(rows.iter().all(|r| r["title"].is_string() && r["genres"].is_string()), "{rows:?}");
}

/// A metric column of the run's `metrics.csv` at the epoch saved in `RUN/best`.
fn logged_at_best(run_dir: &Path) -> impl Fn(&str) -> f64 {
    let metrics = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("best/checkpoint.json")).unwrap()).unwrap();
    let best_epoch = json["epoch"].as_u64().unwrap() as usize;
    let header: Vec<String> = metrics.lines().next().unwrap().split(',').map(str::to_owned).collect();
    let row: Vec<String> = metrics.lines().nth(best_epoch).unwrap().split(',').map(str::to_owned).collect();
    move |name: &str| row[header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"))].parse().unwrap()
}

/// Reads `name VALUE` pairs from `ncf evaluate` output, e.g. "HR@10 0.1833".
fn metric(stdout: &str, line_start: &str, name: &str) -> f64 {
    let line = stdout.lines().find(|l| l.starts_with(line_start)).unwrap_or_else(|| panic!("{line_start} in {stdout}"));
    let rest = &line[line.find(&format!("{name} ")).unwrap_or_else(|| panic!("{name} in {line}")) + name.len() + 1..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// A model that mixes users' histories into their rows (`model.history`) is scored by
/// `evaluate` as training evaluated it (histories folded in, `Checkpoint::scoring_model`): the
/// same metrics from the checkpoint. Trained with a cosine learning-rate schedule.
#[test]
fn histories_folded_in_score_as_training_evaluated() {
    let dir = temp_dir("history");
    let run_dir = dir.join("run");
    let sets = ["model.history=0.5", "model.cosine=true", "train.loss=softmax", "sampler.shared_negatives=20", "train.batch_size=64", "optim.schedule=cosine"];
    train(&run_dir, "mf", 3, &sets);
    let logged = logged_at_best(&run_dir);
    let stdout = ok(run(ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(&run_dir)));
    for (start, name, column) in [("sampled", "HR@10", "test_hr@10"), ("full", "Recall@10", "test_recall@10"), ("full", "NDCG@10", "test_full_ndcg@10")] {
        let (a, b) = (metric(&stdout, start, name), logged(column));
        assert!((a - b).abs() < 6e-5, "{name}: {a} vs {b}\n{stdout}");
    }
}

#[test]
fn evaluate_reproduces_training_metrics_and_scores_are_probabilities() {
    let dir = temp_dir("evaluate");
    let run_dir = dir.join("run");
    train(&run_dir, "neumf", 2, &[]);
    let logged = logged_at_best(&run_dir);

    let per_user = dir.join("per_user.csv");
    let stdout = ok(run(ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(&run_dir).arg("--per-user").arg(&per_user)));
    // evaluate prints 4 decimals, metrics.csv 6.
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 6e-5, "{what}: {a} vs {b}\n{stdout}");
    close(metric(&stdout, "sampled", "HR@10"), logged("test_hr@10"), "hr");
    close(metric(&stdout, "sampled", "NDCG@10"), logged("test_ndcg@10"), "ndcg");
    close(metric(&stdout, "full", "Recall@10"), logged("test_recall@10"), "recall");
    close(metric(&stdout, "full", "NDCG@10"), logged("test_full_ndcg@10"), "full ndcg");
    close(metric(&stdout, "full", "MAP@10"), logged("test_map@10"), "map");
    close(metric(&stdout, "full", "coverage"), logged("test_coverage@10"), "coverage");
    let rows = csv_rows(&per_user, "user,test_items,hr@10,ndcg@10,recall@10,precision@10,full_ndcg@10,map@10");
    assert_eq!(rows.len(), USERS);
    let mean = |j: usize| rows.iter().map(|r| r[j].parse::<f64>().unwrap()).sum::<f64>() / rows.len() as f64;
    close(mean(2), logged("test_hr@10"), "per-user hr mean");
    close(mean(4), logged("test_recall@10"), "per-user recall mean");

    // The same split given as a file (raw ids) gives the same numbers.
    let test_csv = dir.join("test.csv");
    let split = split();
    let text: String = split.iter().flat_map(|(u, (_, test))| test.iter().map(move |i| format!("{u},{i}\n"))).collect();
    std::fs::write(&test_csv, format!("user,item\n{text}")).unwrap();
    let from_file = ok(run(ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(&run_dir).arg("--test").arg(&test_csv)));
    for (start, name) in [("sampled", "HR@10"), ("full", "Recall@10"), ("full", "MAP@10")] {
        close(metric(&from_file, start, name), metric(&stdout, start, name), name);
    }

    // score: sigmoid of the pairwise forward for this BCE model, in file order, unknown pairs left out.
    let reference = Reference::load(&run_dir);
    let pairs = dir.join("pairs.csv");
    std::fs::write(&pairs, "customer,product\n4,9\n1,2\nstranger,3\n4,1\n").unwrap();
    let out = dir.join("scores.jsonl");
    let o = run(ncf()
        .args(["score", "--backend", "flex", "--user-col", "customer", "--item-col", "product", "--checkpoint"])
        .arg(&run_dir)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--out")
        .arg(&out));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let stdout = ok(o);
    assert!(stdout.contains("probability") && stderr.contains("1 of 4 pairs"), "{stdout}\n{stderr}");
    let got: Vec<(String, String, f64)> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["user"].as_str().unwrap().to_owned(), v["item"].as_str().unwrap().to_owned(), v["probability"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(got.iter().map(|g| (g.0.as_str(), g.1.as_str())).collect::<Vec<_>>(), [("4", "9"), ("1", "2"), ("4", "1")]);
    for (u, i, p) in got {
        let logit = reference.scores(&u)[reference.items.iter().position(|x| *x == i).unwrap()] as f64;
        assert!((p - 1.0 / (1.0 + (-logit).exp())).abs() < 1e-5, "({u}, {i}): {p} vs sigmoid({logit})");
    }
}

#[test]
fn bpr_scores_are_written_raw() {
    let dir = temp_dir("bpr");
    let run_dir = dir.join("run");
    train(&run_dir, "mf", 1, &["train.loss=bpr", "sampler.negatives=1"]);
    let pairs = dir.join("pairs.csv");
    std::fs::write(&pairs, "user,item\n2,5\n").unwrap();
    let out = dir.join("s.csv");
    let stdout = ok(run(ncf().args(["score", "--backend", "flex", "--checkpoint"]).arg(&run_dir).arg("--pairs").arg(&pairs).arg("--out").arg(&out)));
    assert!(stdout.contains("raw model output (trained with bpr"), "{stdout}");
    let rows = csv_rows(&out, "user,item,score");
    let reference = Reference::load(&run_dir);
    let want = reference.scores("2")[reference.items.iter().position(|x| x == "5").unwrap()];
    assert!((rows[0][2].parse::<f32>().unwrap() - want).abs() < 1e-5);
}

/// A format-3 checkpoint (before validation splits: no validation items, test metrics only) still
/// loads: a run without a validation split (`train.select_on = "test"`) relabelled as format 3
/// recommends and evaluates as before.
#[test]
fn format_3_checkpoints_still_load() {
    let dir = temp_dir("format3");
    let run_dir = dir.join("run");
    train(&run_dir, "gmf", 1, &["train.select_on=test"]);
    let best = run_dir.join("best");
    let st = std::fs::read(best.join("train.safetensors")).unwrap();
    assert!(!safetensors::SafeTensors::deserialize(&st).unwrap().names().iter().any(|n| n.starts_with("valid")));
    let meta = std::fs::read_to_string(best.join("checkpoint.json")).unwrap();
    assert!(!meta.contains("\"valid\""), "{meta}");
    let before = ok(run(ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(&run_dir)));
    std::fs::write(best.join("checkpoint.json"), ncf_bin::with_format_version(&meta, 3)).unwrap();
    let after = ok(run(ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(&run_dir)));
    let numbers = |s: &str| s.lines().filter(|l| l.starts_with("sampled") || l.starts_with("full")).collect::<Vec<_>>().join("\n");
    assert_eq!(numbers(&after), numbers(&before));
    ok(run(ncf().args(["recommend", "--backend", "flex", "--top-n", "3", "--checkpoint"]).arg(&run_dir).arg("--out").arg(dir.join("r.csv"))));
}

#[test]
fn bad_inputs_fail_clearly_without_partial_output() {
    let dir = temp_dir("bad");
    let good = dir.join("run");
    train(&good, "neumf", 1, &[]);
    let copy = |name: &str| -> PathBuf {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(good.join("best")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
        to
    };
    let truncated = copy("truncated");
    let w = std::fs::read(truncated.join("model.safetensors")).unwrap();
    std::fs::write(truncated.join("model.safetensors"), &w[..w.len() - 100]).unwrap();
    let reshaped = copy("reshaped");
    let cfg = std::fs::read_to_string(reshaped.join("config.toml")).unwrap().replace("factors = 6", "factors = 5");
    assert!(cfg.contains("factors = 5"));
    std::fs::write(reshaped.join("config.toml"), cfg).unwrap();
    let old = copy("old-format");
    let meta = std::fs::read_to_string(old.join("checkpoint.json")).unwrap();
    let meta = ncf_bin::with_format_version(&meta, 1);
    assert!(meta.contains("\"format_version\": 1"));
    std::fs::write(old.join("checkpoint.json"), meta).unwrap();
    let meta_file = dir.join("movies.csv");
    std::fs::write(&meta_file, "movieId,title\n1,A\n").unwrap();

    let out = dir.join("out").join("recs.csv");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let cases: Vec<(Vec<String>, PathBuf, &str)> = vec![
        (vec![], dir.join("missing"), "no such checkpoint"),
        (vec![], truncated, "model.safetensors"),
        (vec![], reshaped, "needs F32"),
        (vec![], old, "format version 1"),
        (vec!["--item-metadata".into(), meta_file.display().to_string(), "--item-key".into(), "item".into()], good.clone(), "--item-key"),
        (vec!["--users".into(), " , ".into()], good.clone(), "--users"),
        (vec!["--items".into(), "nope".into()], good.clone(), "none of the 1 items"),
        (vec!["--out-format".into(), "csv".into(), "--top-n".into(), "0".into()], good.clone(), "--top-n"),
    ];
    for (extra, checkpoint, want) in cases {
        let o = run(ncf().args(["recommend", "--backend", "flex", "--checkpoint"]).arg(&checkpoint).args(&extra).arg("--out").arg(&out));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} {}: should fail", checkpoint.display());
        assert!(stderr.contains(want) && !stderr.contains("panicked"), "{extra:?} {}: {stderr}", checkpoint.display());
        assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 0, "no output or temp file after {extra:?}");
    }
    let o = run(ncf()
        .args(["score", "--backend", "flex", "--user-col", "customer", "--checkpoint"])
        .arg(&good)
        .arg("--pairs")
        .arg(&meta_file)
        .arg("--out")
        .arg(&out));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("customer") && stderr.contains("--user-col"), "{stderr}");
    let o = run(ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(&good).arg("--per-user").arg(dir.join("out/p.txt")));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains(".jsonl"));
    assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 0);
}

/// `--shard I/N` in N = 4 separate processes at once: the union of the parts is exactly the
/// unsharded export; rerunning one shard rewrites only its part; `--merge` checks the set and
/// names a missing shard or a shard from another checkpoint.
#[test]
fn four_shards_in_separate_processes_equal_the_unsharded_export() {
    let dir = temp_dir("shards");
    let (run_a, run_b) = (dir.join("a"), dir.join("b"));
    train(&run_a, "mf", 2, &[]);
    train(&run_b, "mf", 3, &[]);
    let whole = dir.join("all.csv");
    ok(run(ncf().args(["recommend", "--backend", "flex", "--checkpoint"]).arg(&run_a).arg("--out").arg(&whole)));
    let parts = dir.join("parts");
    let shard = |i: usize, ck: &Path| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("ncf"))
            .args(["-q", "recommend", "--backend", "flex", "--out-format", "csv", "--shard", &format!("{i}/4"), "--checkpoint"])
            .arg(ck)
            .arg("--out")
            .arg(&parts)
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..4).map(|i| shard(i, &run_a)).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let sorted_rows = |files: &[PathBuf]| {
        let mut rows: Vec<String> =
            files.iter().flat_map(|f| std::fs::read_to_string(f).unwrap().lines().skip(1).map(str::to_owned).collect::<Vec<_>>()).collect();
        rows.sort();
        rows
    };
    let part = |i: usize| parts.join(format!("part-{i:05}-of-00004.csv"));
    let union = sorted_rows(&(0..4).map(part).collect::<Vec<_>>());
    assert_eq!(union, sorted_rows(&[whole]), "the parts hold exactly the unsharded rows");
    let users_per_part: Vec<usize> = (0..4)
        .map(|i| std::fs::read_to_string(part(i)).unwrap().lines().skip(1).map(|l| l.split(',').next().unwrap().to_owned()).collect::<HashSet<_>>().len())
        .collect();
    assert_eq!(users_per_part.iter().sum::<usize>(), USERS, "each user in one shard: {users_per_part:?}");
    let merged = ok(run(ncf().args(["recommend", "--merge"]).arg(&parts)));
    assert!(merged.contains("all 4 shards present") && merged.contains(&format!("{USERS} users")), "{merged}");

    // Rerunning shard 1 replaces its part alone.
    let before: Vec<Vec<u8>> = (0..4).map(|i| std::fs::read(part(i)).unwrap()).collect();
    std::fs::write(part(1), "damaged").unwrap();
    let out = run(ncf().args(["recommend", "--merge"]).arg(&parts));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("rerun shard 1"));
    assert!(shard(1, &run_a).wait().unwrap().success());
    let after: Vec<Vec<u8>> = (0..4).map(|i| std::fs::read(part(i)).unwrap()).collect();
    assert_eq!(before, after);

    // A shard from another checkpoint, then a missing shard, are refused by --merge.
    assert!(shard(2, &run_b).wait().unwrap().success());
    let out = run(ncf().args(["recommend", "--merge"]).arg(&parts));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("another checkpoint"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(parts.join("part-00002-of-00004.json")).unwrap();
    let out = run(ncf().args(["recommend", "--merge"]).arg(&parts));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("1 of 4 shards are missing: 2"));
    // A directory of other files is not written into.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let out = run(ncf().args(["recommend", "--backend", "flex", "--shard", "0/2", "--checkpoint"]).arg(&run_a).arg("--out").arg(&other));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("notes.txt"));
}

/// EASE end to end: `train` fits B; `recommend` exports, per user, the unseen items ranked by
/// the sum of its training items' rows of B (the reference computes it on the host from the
/// checkpoint's B and an independently rebuilt split); `evaluate` reproduces the run's metrics;
/// `export` refuses it without creating its output; on wgpu the fit gives the same B.
#[test]
fn ease_recommends_history_times_b_and_fits_alike_on_wgpu() {
    let dir = temp_dir("ease");
    let run_dir = dir.join("run");
    train(&run_dir, "ease", 1, &["model.ease_lambda=3"]);
    let reference = Reference::load(&run_dir);
    let n = reference.items.len();
    let b = reference.model.item.val().into_data().try_into_vec_as::<f32>().unwrap();
    assert_eq!(b.len(), n * n);
    assert!((0..n).all(|i| b[i * n + i] == 0.0), "an item does not recommend itself");
    assert!(b.iter().any(|&x| x != 0.0), "B was fitted");
    // The histories EASE scores from: the training split alone (validation held out).
    let data = DemoConfig { users: USERS, items: ITEMS, max_per_user: MAX_PER_USER, ..Default::default() }.generate(SEED);
    let train_split = Split::new(&data, &SplitConfig::default(), SEED, true).unwrap().train;
    let item_pos: HashMap<&str, usize> = reference.items.iter().enumerate().map(|(k, i)| (i.as_str(), k)).collect();
    let top_n = 5;
    let out = dir.join("recs.csv");
    ok(run(ncf().args(["recommend", "--backend", "flex", "--top-n", &top_n.to_string(), "--checkpoint"]).arg(&run_dir).arg("--out").arg(&out)));
    let mut got: HashMap<String, Vec<(String, f32)>> = HashMap::new();
    for row in csv_rows(&out, "user,rank,item,score") {
        got.entry(row[0].clone()).or_default().push((row[2].clone(), row[3].parse().unwrap()));
    }
    let split = split();
    assert_eq!(got.len(), USERS);
    let scores_of = |u: u32| -> Vec<f32> {
        let history: Vec<usize> = train_split.items(u).iter().map(|&i| item_pos[data.items.raw(i)]).collect();
        (0..n).map(|i| history.iter().map(|&j| b[j * n + i] as f64).sum::<f64>() as f32).collect()
    };
    for u in 0..data.n_users() as u32 {
        let user = data.users.raw(u);
        let scores = scores_of(u);
        let seen = &split[user].0;
        let mut idx: Vec<usize> = (0..n).filter(|&i| !seen.contains(&reference.items[i])).collect();
        idx.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]).then(x.cmp(&y)));
        let want: Vec<(String, f32)> = idx.into_iter().take(top_n).map(|i| (reference.items[i].clone(), scores[i])).collect();
        assert_matches(user, &got[user], &want);
    }

    let logged = logged_at_best(&run_dir);
    let stdout = ok(run(ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(&run_dir)));
    for (start, name, column) in [("sampled", "HR@10", "test_hr@10"), ("full", "Recall@10", "test_recall@10"), ("full", "NDCG@10", "test_full_ndcg@10")] {
        let (a, b) = (metric(&stdout, start, name), logged(column));
        assert!((a - b).abs() < 6e-5, "{name}: {a} vs {b}\n{stdout}");
    }
    // The one epoch is the best: last/ links best/'s weights and split instead of writing them
    // again, and loads (its checksums verified) to the same metrics.
    #[cfg(unix)]
    for name in ["model.safetensors", "train.safetensors"] {
        use std::os::unix::fs::MetadataExt;
        let inode = |d: &str| std::fs::metadata(run_dir.join(d).join(name)).unwrap().ino();
        assert_eq!(inode("best"), inode("last"), "{name} is one file in best/ and last/");
    }
    let from_last = ok(run(ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(run_dir.join("last"))));
    assert_eq!(metric(&from_last, "full", "NDCG@10"), metric(&stdout, "full", "NDCG@10"));

    // `score`: EASE's raw scores (never a sigmoid, though the config's loss is BCE).
    let (user, item) = (data.users.raw(2), data.items.raw(5));
    let pairs = dir.join("pairs.csv");
    std::fs::write(&pairs, format!("user,item\n{user},{item}\n")).unwrap();
    let scored = dir.join("s.csv");
    let stdout = ok(run(ncf().args(["score", "--backend", "flex", "--checkpoint"]).arg(&run_dir).arg("--pairs").arg(&pairs).arg("--out").arg(&scored)));
    assert!(stdout.contains("EASE's score"), "{stdout}");
    let rows = csv_rows(&scored, "user,item,score");
    let want = scores_of(2)[item_pos[item]];
    assert!((rows[0][2].parse::<f32>().unwrap() - want).abs() < 1e-5, "{rows:?} vs {want}");

    let export = run(ncf().args(["export", "--to", "torch", "--checkpoint"]).arg(&run_dir).arg("--out").arg(dir.join("torch")));
    assert!(!export.status.success());
    assert!(String::from_utf8_lossy(&export.stderr).contains("EASE model has no user and item vectors"), "{}", String::from_utf8_lossy(&export.stderr));
    assert!(!dir.join("torch").exists(), "a refused export writes nothing");

    if wgpu_available() {
        let gpu_dir = dir.join("gpu");
        let mut cmd = ncf();
        cmd.args(["train", "--backend", "wgpu", "--model", "ease", "--seed", &SEED.to_string(), "--epochs", "1", "--set", "model.ease_lambda=3"])
            .args(["--set", &format!("data.demo.users={USERS}"), "--set", &format!("data.demo.items={ITEMS}")])
            .args(["--set", &format!("data.demo.max_per_user={MAX_PER_USER}")]);
        ok(run(cmd.arg("--out").arg(&gpu_dir)));
        let gpu = Reference::load(&gpu_dir).model.item.val().into_data().try_into_vec_as::<f32>().unwrap();
        let worst = b.iter().zip(&gpu).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "B on wgpu differs from flex by {worst}");
    }
}

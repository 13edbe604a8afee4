//! `ncf export` end to end on tiny demo runs: a torch export reloaded with the `safetensors`
//! reader and scored in plain Rust (no burn) reproduces `ncf score` within 1e-5 for every model
//! kind and score transform (sigmoid, raw, cosine, biases, folded history); an embeddings export
//! holds every id once with its vectors and rebuilds MF and GMF scores; bad checkpoints and
//! outputs are refused clearly with nothing written.

#[path = "ncf_bin.rs"]
mod ncf_bin;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use ncf_bin::{ncf, temp_dir};
use polars::prelude::{DataFrame, ParquetReader, SerReader};

const USERS: usize = 30;
const ITEMS: usize = 50;

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// stderr of a command that must fail.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} succeeded");
    assert!(stderr.starts_with("error:") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Trains `model` for two epochs on the tiny demo set into `run`, with `sets` on top.
fn train(run: &Path, model: &str, sets: &[&str]) {
    let mut cmd = ncf();
    cmd.args(["train", "--backend", "flex", "--model", model, "--seed", "3", "--epochs", "2", "-q"])
        .args(["--set", &format!("data.demo.users={USERS}"), "--set", &format!("data.demo.items={ITEMS}"), "--set", "data.demo.max_per_user=20"])
        .args(["--set", "model.factors=6", "--set", "model.layers=[8,6,4]", "--set", "model.init_std=0.5"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    ok(cmd.arg("--out").arg(run).output().unwrap());
}

fn export(run: &Path, to: &str, out: &Path) -> String {
    ok(ncf().args(["export", "--checkpoint"]).arg(run).args(["--to", to, "--out"]).arg(out).output().unwrap())
}

/// `ncf score` for every (user, item) pair of the catalogue: raw (user, item) → value, and the
/// name of the value's column (`probability` or `score`).
fn ncf_scores(dir: &Path, run: &Path) -> (HashMap<(String, String), f32>, String) {
    let pairs = dir.join("pairs.csv");
    let rows: String = (1..=USERS).flat_map(|u| (1..=ITEMS).map(move |i| format!("{u},{i}\n"))).collect();
    std::fs::write(&pairs, format!("user,item\n{rows}")).unwrap();
    let out = dir.join("scores.csv");
    ok(ncf().args(["score", "--backend", "flex", "-q", "--checkpoint"]).arg(run).arg("--pairs").arg(&pairs).arg("--out").arg(&out).output().unwrap());
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    let column = lines.next().unwrap().rsplit(',').next().unwrap().to_owned();
    let scores: HashMap<_, _> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ((f[0].to_owned(), f[1].to_owned()), f[2].parse().unwrap())
        })
        .collect();
    // Some demo ids may not occur in the data; most pairs must be scored.
    assert!(scores.len() > USERS * ITEMS / 2, "{} pairs scored", scores.len());
    (scores, column)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_ids(path: &Path) -> Vec<String> {
    serde_json::from_value(read_json(path)).unwrap()
}

/// A torch export read back with the `safetensors` crate, scored in plain Rust.
struct TorchExport {
    config: serde_json::Value,
    /// name → (shape, row-major values)
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    users: Vec<String>,
    items: Vec<String>,
}

impl TorchExport {
    fn load(dir: &Path) -> Self {
        let buf = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
                let values = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                (name, (view.shape().to_vec(), values))
            })
            .collect();
        Self { config: read_json(&dir.join("config.json")), tensors, users: read_ids(&dir.join("user_ids.json")), items: read_ids(&dir.join("item_ids.json")) }
    }

    fn names(&self) -> Vec<(&str, &[usize])> {
        let mut v: Vec<(&str, &[usize])> = self.tensors.iter().map(|(n, (s, _))| (n.as_str(), s.as_slice())).collect();
        v.sort();
        v
    }

    fn tensor(&self, name: &str) -> &[f32] {
        &self.tensors.get(name).unwrap_or_else(|| panic!("no tensor {name}")).1
    }

    /// Row `r` of the 2-D tensor `name`.
    fn row(&self, name: &str, r: usize) -> &[f32] {
        let (shape, v) = &self.tensors[name];
        &v[r * shape[1]..(r + 1) * shape[1]]
    }

    /// A GMF/MF factor row as the score compares it.
    fn factors(&self, name: &str, r: usize) -> Vec<f32> {
        let x = self.row(name, r).to_vec();
        if self.config["cosine"] != true {
            return x;
        }
        let eps = self.config["cosine_eps"].as_f64().unwrap() as f32;
        let norm = (x.iter().map(|a| a * a).sum::<f32>() + eps).sqrt();
        x.iter().map(|a| a / norm).collect()
    }

    /// The model's logit for table rows `u` and `i`, from the exported tensors alone.
    fn logit(&self, u: usize, i: usize) -> f32 {
        let kind = self.config["model"].as_str().unwrap();
        if kind == "mf" {
            let dot: f32 = self.factors("mf_user.weight", u).iter().zip(self.factors("mf_item.weight", i)).map(|(a, b)| a * b).sum();
            if self.config["cosine"] == true {
                return dot;
            }
            return dot + self.row("user_bias.weight", u)[0] + self.row("item_bias.weight", i)[0];
        }
        let mut h: Vec<f32> = Vec::new();
        if kind != "mlp" {
            h.extend(self.factors("gmf_user.weight", u).iter().zip(self.factors("gmf_item.weight", i)).map(|(a, b)| a * b));
        }
        if kind != "gmf" {
            let mut x: Vec<f32> = [self.row("mlp_user.weight", u), self.row("mlp_item.weight", i)].concat();
            for k in 0.. {
                let Some((shape, w)) = self.tensors.get(&format!("mlp.{k}.weight")) else { break };
                let b = self.tensor(&format!("mlp.{k}.bias"));
                // torch's [out, in]
                let (d_out, d_in) = (shape[0], shape[1]);
                assert_eq!(d_in, x.len(), "mlp.{k}.weight is [out, in]");
                x = (0..d_out).map(|o| (b[o] + (0..d_in).map(|j| w[o * d_in + j] * x[j]).sum::<f32>()).max(0.0)).collect();
            }
            h.extend(x);
        }
        let w = self.tensor("predict.weight");
        assert_eq!(w.len(), h.len());
        self.tensor("predict.bias")[0] + w.iter().zip(&h).map(|(a, b)| a * b).sum::<f32>()
    }

    /// What `ncf score` writes for rows `u`, `i`.
    fn score(&self, u: usize, i: usize) -> f32 {
        let s = self.logit(u, i);
        match self.config["score_transform"].as_str().unwrap() {
            "sigmoid" => 1.0 / (1.0 + (-s).exp()),
            "none" => s,
            other => panic!("score_transform {other}"),
        }
    }
}

/// Asserts `got(u, i)` (by table rows) equals `ncf score` within 1e-5 for every scored pair.
fn assert_reproduces(what: &str, scores: &HashMap<(String, String), f32>, users: &[String], items: &[String], got: impl Fn(usize, usize) -> f32) {
    let (urow, irow): (HashMap<&str, usize>, HashMap<&str, usize>) =
        (users.iter().enumerate().map(|(r, u)| (u.as_str(), r)).collect(), items.iter().enumerate().map(|(r, i)| (i.as_str(), r)).collect());
    let mut worst = 0f32;
    for ((u, i), &want) in scores {
        let g = got(urow[u.as_str()], irow[i.as_str()]);
        assert!((g - want).abs() <= 1e-5, "{what}: ({u}, {i}): {g} vs ncf score {want}");
        worst = worst.max((g - want).abs());
    }
    eprintln!("{what}: {} pairs, max |diff| {worst:e}", scores.len());
}

/// Tensor names and shapes of an export with `n` users and `m` items.
type Shapes = fn(usize, usize) -> Vec<(&'static str, Vec<usize>)>;

/// Trains `model` with `sets`, exports it to torch, and checks names, shapes, config and scores.
fn torch_export_reproduces_scores(name: &str, model: &str, sets: &[&str], shapes: Shapes, transform: &str) {
    let dir = temp_dir(name);
    let run = dir.join("run");
    train(&run, model, sets);
    let out = dir.join("torch");
    let said = export(&run, "torch", &out);
    assert!(said.contains(&format!("wrote the torch export of {model}")), "{said}");
    let ex = TorchExport::load(&out);
    assert_eq!(ex.config["model"], model);
    assert_eq!(ex.config["score_transform"], transform);
    let (n, m) = (ex.users.len(), ex.items.len());
    assert_eq!((n, m), (ex.config["n_users"].as_u64().unwrap() as usize, ex.config["n_items"].as_u64().unwrap() as usize));
    assert!(n > USERS / 2 && m > ITEMS / 2, "{n} users, {m} items");
    let mut want = shapes(n, m);
    want.sort();
    assert_eq!(ex.names(), want.iter().map(|(k, s)| (*k, s.as_slice())).collect::<Vec<_>>(), "{name}: tensor names and shapes");
    let listed = ex.config["tensors"].as_object().unwrap();
    assert!(want.iter().all(|(k, s)| listed[*k] == serde_json::json!(s)) && listed.len() == want.len(), "config.json lists every tensor: {listed:?}");
    let (scores, column) = ncf_scores(&dir, &run);
    assert_eq!(column, if transform == "sigmoid" { "probability" } else { "score" });
    assert_reproduces(name, &scores, &ex.users, &ex.items, |u, i| ex.score(u, i));
}

#[test]
fn gmf_torch_export_reproduces_ncf_score() {
    let shapes: Shapes =
        |n, m| vec![("gmf_user.weight", vec![n, 6]), ("gmf_item.weight", vec![m, 6]), ("predict.weight", vec![1, 6]), ("predict.bias", vec![1])];
    torch_export_reproduces_scores("gmf", "gmf", &[], shapes, "sigmoid");
}

#[test]
fn mlp_torch_export_reproduces_ncf_score() {
    let shapes: Shapes = |n, m| {
        vec![
            ("mlp_user.weight", vec![n, 4]),
            ("mlp_item.weight", vec![m, 4]),
            ("mlp.0.weight", vec![6, 8]),
            ("mlp.0.bias", vec![6]),
            ("mlp.1.weight", vec![4, 6]),
            ("mlp.1.bias", vec![4]),
            ("predict.weight", vec![1, 4]),
            ("predict.bias", vec![1]),
        ]
    };
    torch_export_reproduces_scores("mlp", "mlp", &[], shapes, "sigmoid");
}

fn neumf_shapes(n: usize, m: usize) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("gmf_user.weight", vec![n, 6]),
        ("gmf_item.weight", vec![m, 6]),
        ("mlp_user.weight", vec![n, 4]),
        ("mlp_item.weight", vec![m, 4]),
        ("mlp.0.weight", vec![6, 8]),
        ("mlp.0.bias", vec![6]),
        ("mlp.1.weight", vec![4, 6]),
        ("mlp.1.bias", vec![4]),
        ("predict.weight", vec![1, 10]),
        ("predict.bias", vec![1]),
    ]
}

#[test]
fn neumf_torch_export_reproduces_ncf_score() {
    torch_export_reproduces_scores("neumf", "neumf", &[], neumf_shapes, "sigmoid");
}

/// NeuMF comparing its GMF factors by cosine, trained with sampled softmax (temperature is a
/// training setting only: the raw logit is the score).
#[test]
fn cosine_neumf_softmax_torch_export_reproduces_ncf_score() {
    let sets = ["model.cosine=true", "train.loss=softmax", "sampler.shared_negatives=16", "loss.temperature=0.2"];
    torch_export_reproduces_scores("neumf-cosine", "neumf", &sets, neumf_shapes, "none");
}

#[test]
fn mf_bpr_torch_export_reproduces_ncf_score() {
    let shapes: Shapes =
        |n, m| vec![("mf_user.weight", vec![n, 6]), ("mf_item.weight", vec![m, 6]), ("user_bias.weight", vec![n, 1]), ("item_bias.weight", vec![m, 1])];
    torch_export_reproduces_scores("mf-bpr", "mf", &["train.loss=bpr", "sampler.negatives=1"], shapes, "none");
}

/// SimpleX-style MF: cosine (no biases), CCL, and the users' histories folded into their rows.
#[test]
fn mf_cosine_ccl_history_torch_export_reproduces_ncf_score() {
    let shapes: Shapes = |n, m| vec![("mf_user.weight", vec![n, 6]), ("mf_item.weight", vec![m, 6])];
    let sets = ["model.cosine=true", "model.history=0.4", "train.loss=ccl", "sampler.shared_negatives=16", "loss.margin=0.5"];
    torch_export_reproduces_scores("mf-ccl", "mf", &sets, shapes, "none");
}

/// An embeddings export's side table: row, raw id, and the named vector/bias columns.
struct Side {
    ids: Vec<String>,
    df: DataFrame,
}

impl Side {
    fn read(path: &Path) -> Self {
        let df = ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap();
        let rows: Vec<u32> = df.column("row").unwrap().u32().unwrap().into_no_null_iter().collect();
        assert_eq!(rows, (0..df.height() as u32).collect::<Vec<_>>(), "{}: rows in table order", path.display());
        let ids = df.column("id").unwrap().str().unwrap().iter().map(|id| id.unwrap().to_owned()).collect();
        Self { ids, df }
    }

    fn columns(&self) -> Vec<String> {
        self.df.get_column_names().iter().map(|c| c.to_string()).collect()
    }

    fn vectors(&self, name: &str) -> Vec<Vec<f32>> {
        let list = self.df.column(name).unwrap().list().unwrap().clone();
        (0..list.len()).map(|r| list.get_as_series(r).unwrap().f32().unwrap().into_no_null_iter().collect()).collect()
    }

    fn floats(&self, name: &str) -> Vec<f32> {
        self.df.column(name).unwrap().f32().unwrap().into_no_null_iter().collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Trains and exports both targets; returns the scores, the torch export's ids, and both sides.
fn embeddings(name: &str, model: &str, sets: &[&str]) -> (HashMap<(String, String), f32>, serde_json::Value, Side, Side) {
    let dir = temp_dir(name);
    let run = dir.join("run");
    train(&run, model, sets);
    let (torch, out) = (dir.join("torch"), dir.join("emb"));
    export(&run, "torch", &torch);
    let said = export(&run, "embeddings", &out);
    assert!(said.contains("users.parquet, items.parquet, config.json"), "{said}");
    let (users, items) = (Side::read(&out.join("users.parquet")), Side::read(&out.join("items.parquet")));
    assert_eq!(users.ids, read_ids(&torch.join("user_ids.json")), "user ids in table order");
    assert_eq!(items.ids, read_ids(&torch.join("item_ids.json")), "item ids in table order");
    let config = read_json(&out.join("config.json"));
    assert_eq!((users.ids.len() as u64, items.ids.len() as u64), (config["n_users"].as_u64().unwrap(), config["n_items"].as_u64().unwrap()));
    assert_eq!(config["columns"], serde_json::json!(users.columns()));
    assert_eq!(users.columns(), items.columns());
    (ncf_scores(&dir, &run).0, config, users, items)
}

#[test]
fn mf_embeddings_rebuild_scores_with_biases() {
    let (scores, config, users, items) = embeddings("emb-mf", "mf", &["train.loss=bpr", "sampler.negatives=1"]);
    assert_eq!(users.columns(), ["row", "id", "vector", "bias"]);
    assert_eq!(config["score"], "dot(user.vector, item.vector) + user.bias + item.bias");
    let (uv, iv, ub, ib) = (users.vectors("vector"), items.vectors("vector"), users.floats("bias"), items.floats("bias"));
    assert!(uv.iter().chain(&iv).all(|v| v.len() == 6));
    assert_reproduces("mf embeddings", &scores, &users.ids, &items.ids, |u, i| dot(&uv[u], &iv[i]) + ub[u] + ib[i]);
}

#[test]
fn cosine_mf_embeddings_are_unit_vectors_whose_dot_is_the_score() {
    let sets = ["model.cosine=true", "model.history=0.4", "train.loss=ccl", "sampler.shared_negatives=16"];
    let (scores, _, users, items) = embeddings("emb-mf-cosine", "mf", &sets);
    assert_eq!(users.columns(), ["row", "id", "vector"], "cosine MF has no biases");
    let (uv, iv) = (users.vectors("vector"), items.vectors("vector"));
    assert!(uv.iter().chain(&iv).all(|v| (dot(v, v) - 1.0).abs() < 1e-5), "L2-normalised");
    assert_reproduces("cosine mf embeddings", &scores, &users.ids, &items.ids, |u, i| dot(&uv[u], &iv[i]));
}

#[test]
fn gmf_embeddings_rebuild_scores_through_the_predict_weights() {
    let (scores, config, users, items) = embeddings("emb-gmf", "gmf", &[]);
    assert_eq!(users.columns(), ["row", "id", "vector"]);
    let w: Vec<f32> = serde_json::from_value(config["predict_weight"].clone()).unwrap();
    let b = config["predict_bias"].as_f64().unwrap() as f32;
    let (uv, iv) = (users.vectors("vector"), items.vectors("vector"));
    assert_eq!(config["score_transform"], "sigmoid");
    let logit = |u: usize, i: usize| b + (0..w.len()).map(|k| w[k] * uv[u][k] * iv[i][k]).sum::<f32>();
    assert_reproduces("gmf embeddings", &scores, &users.ids, &items.ids, |u, i| 1.0 / (1.0 + (-logit(u, i)).exp()));
}

#[test]
fn neumf_embeddings_hold_both_parts_and_say_they_are_not_a_dot_product() {
    let dir = temp_dir("emb-neumf");
    let run = dir.join("run");
    train(&run, "neumf", &[]);
    let out = dir.join("emb");
    export(&run, "embeddings", &out);
    let config = read_json(&out.join("config.json"));
    assert!(config["score"].as_str().unwrap().contains("--to torch"), "{}", config["score"]);
    for (side, n) in [("users.parquet", "n_users"), ("items.parquet", "n_items")] {
        let s = Side::read(&out.join(side));
        assert_eq!(s.columns(), ["row", "id", "gmf_vector", "mlp_vector"]);
        assert_eq!(s.ids.len() as u64, config[n].as_u64().unwrap());
        assert!(s.vectors("gmf_vector").iter().all(|v| v.len() == 6));
        assert!(s.vectors("mlp_vector").iter().all(|v| v.len() == 4));
    }
}

#[test]
fn bad_checkpoints_and_outputs_are_refused_clearly() {
    let dir = temp_dir("bad");
    let out = dir.join("out");
    let missing = dir.join("no-such-run");
    let e = refused(ncf().args(["export", "--to", "torch", "--checkpoint"]).arg(&missing).arg("--out").arg(&out));
    assert!(e.contains(&missing.display().to_string()) && e.contains("no such checkpoint directory"), "{e}");
    let not_ck = dir.join("empty");
    std::fs::create_dir(&not_ck).unwrap();
    let e = refused(ncf().args(["export", "--to", "embeddings", "--checkpoint"]).arg(&not_ck).arg("--out").arg(&out));
    assert!(e.contains("not a checkpoint (missing checkpoint.json)"), "{e}");
    assert!(!out.exists(), "nothing written");
    let e = refused(ncf().args(["export", "--to", "onnx", "--out", "x", "--checkpoint"]).arg(&not_ck));
    assert!(e.contains("torch") && e.contains("embeddings"), "{e}");

    let run = dir.join("run");
    train(&run, "gmf", &[]);
    // The checkpoint itself, and a directory that is not an export, are not written over.
    for target in [run.clone(), run.join("best")] {
        let e = refused(ncf().args(["export", "--to", "torch", "--force", "--checkpoint"]).arg(&run).arg("--out").arg(&target));
        assert!(e.contains("is also an input"), "{e}");
    }
    let mine = dir.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep").unwrap();
    let e = refused(ncf().args(["export", "--to", "torch", "--checkpoint"]).arg(&run).arg("--out").arg(&mine));
    assert!(e.contains("not an ncf torch export output") && e.contains("--force"), "{e}");
    // An export is replaced by an export of its kind, not by the other kind without --force.
    export(&run, "torch", &out);
    export(&run, "torch", &out);
    let e = refused(ncf().args(["export", "--to", "embeddings", "--checkpoint"]).arg(&run).arg("--out").arg(&out));
    assert!(e.contains("holds an ncf torch export output"), "{e}");
    // --force writes ncf's files beside the user's and leaves those alone.
    ok(ncf().args(["export", "--to", "embeddings", "--force", "--checkpoint"]).arg(&run).arg("--out").arg(&mine).output().unwrap());
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "keep");
    assert!(mine.join("users.parquet").exists() && mine.join("items.parquet").exists());
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

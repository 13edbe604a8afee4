//! Runs an ML engineer can compare: `run.json` manifests and `ncf runs`.

#[path = "ncf_bin.rs"]
mod ncf_bin;

use std::path::Path;

use ncf_bin::{ncf, temp_dir};
use serde_json::Value;

/// Trains a small demo run into `out` with `sets`; `extra` args before them (e.g. --resume).
fn train(out: &Path, epochs: usize, sets: &[&str]) {
    let mut cmd = ncf();
    cmd.args(["-q", "train", "--backend", "flex", "--seed", "3", "--epochs", &epochs.to_string()]);
    for s in ["data.demo.users=100", "data.demo.items=120"].iter().chain(sets) {
        cmd.args(["--set", s]);
    }
    let output = cmd.arg("--out").arg(out).output().unwrap();
    assert!(output.status.success(), "train failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn manifest(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap()
}

/// `metrics.csv`'s column `name`, one value per epoch (`None` where empty).
fn column(run: &Path, name: &str) -> Vec<Option<f64>> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let at = lines.next().unwrap().split(',').position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"));
    lines.map(|l| l.split(',').nth(at).unwrap().parse().ok()).collect()
}

/// The manifest names what produced the run (command line, commit, backend, threads, host,
/// times per phase) and its best epoch as `metrics.csv` has it; `--resume` adds an invocation.
#[test]
fn manifest_records_the_run_and_resume_adds_an_invocation() {
    let dir = temp_dir("manifest");
    let run = dir.join("run");
    train(&run, 2, &[]);
    let m = manifest(&run);
    assert_eq!(m["status"], "finished");
    assert_eq!(m["epochs"], 2);
    assert_eq!(m["model"], "neumf");
    assert_eq!(m["config_hash"].as_str().unwrap().len(), 16);
    assert_eq!(m["ncf_version"], env!("CARGO_PKG_VERSION"));
    // Built from this checkout: the commit is the checkout's HEAD (when git is at hand).
    if let Ok(out) = std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output()
        && out.status.success()
    {
        assert_eq!(m["git_commit"].as_str(), Some(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let inv = &m["invocations"][0];
    let args: Vec<&str> = inv["command_line"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"train") && args.contains(&"--epochs"), "{args:?}");
    assert_eq!(inv["backend"], "flex");
    assert!(inv["threads"].as_u64().unwrap() >= 1 && !inv["host"].as_str().unwrap().is_empty());
    for t in ["started_at", "ended_at"] {
        let t = inv[t].as_str().unwrap();
        assert!(t.len() == 20 && t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
    let phases = &inv["phases"];
    let part: f64 = ["data", "setup", "train", "eval", "write"].iter().map(|p| phases[p].as_f64().unwrap()).sum();
    let total = phases["total"].as_f64().unwrap();
    assert!(phases["train"].as_f64().unwrap() > 0.0 && part <= total + 1e-6 && part > 0.5 * total, "{phases}");

    // The best epoch and its metrics are metrics.csv's.
    let valid = column(&run, "valid_hr@10");
    let best = valid.iter().enumerate().fold((0, f64::MIN), |b, (i, v)| if v.unwrap() > b.1 { (i, v.unwrap()) } else { b });
    assert_eq!(m["best"]["epoch"], best.0 + 1);
    assert_eq!(m["best"]["chosen_on"], "valid");
    assert!((m["best"]["valid"]["hr@10"].as_f64().unwrap() - best.1).abs() < 1e-6);
    let test = column(&run, "test_ndcg@10")[best.0].unwrap();
    assert!((m["best"]["test"]["ndcg@10"].as_f64().unwrap() - test).abs() < 1e-6);

    let resumed = ncf().args(["-q", "train", "--epochs", "3", "--resume"]).arg(&run).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let m2 = manifest(&run);
    assert_eq!(m2["epochs"], 3);
    assert_eq!(m2["invocations"].as_array().unwrap().len(), 2);
    assert_eq!(m2["invocations"][0], m["invocations"][0], "the first invocation is kept as it was");
    assert_eq!(m2["invocations"][1]["first_epoch"], 3);
    // The hash is of the resolved config, which now says 3 epochs.
    assert_ne!(m2["config_hash"], m["config_hash"]);
}

/// `ncf runs` lists every run under a directory, best first by the metric asked for, with the
/// config values that differ as columns, `–` for what a run without a manifest lacks, and draws
/// their curves.
#[test]
fn runs_table_sorts_and_shows_what_differs() {
    let dir = temp_dir("table");
    let runs = dir.join("runs");
    for (name, lr) in [("a", "0.0005"), ("b", "0.005"), ("c", "0.02")] {
        train(&runs.join(name), 2, &[&format!("optim.lr={lr}")]);
    }
    // A run made before manifests.
    std::fs::remove_file(runs.join("c/run.json")).unwrap();
    let plot = dir.join("curves.png");
    let out = ncf().args(["runs", "--csv", "--sort", "valid_ndcg@10", "--plot"]).arg(&plot).arg(&runs).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> = stdout.lines().filter(|l| !l.starts_with("curves:")).map(|l| l.split(',').collect()).collect();
    let header = &rows[0];
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name} in {header:?}"));
    assert!(!header.contains(&"train.epochs"), "equal values are not shown: {header:?}");
    assert_eq!(rows.len(), 4, "{stdout}");
    let ndcg: Vec<f64> = rows[1..].iter().map(|r| r[col("valid_ndcg@10")].parse().unwrap()).collect();
    assert!(ndcg.windows(2).all(|w| w[0] >= w[1]), "best first: {ndcg:?}");
    for r in &rows[1..] {
        let name = Path::new(r[col("run")]).file_name().unwrap().to_str().unwrap();
        let lr = ["0.0005", "0.005", "0.02"][(name.as_bytes()[0] - b'a') as usize];
        assert_eq!(r[col("optim.lr")], lr);
        // Each run's best valid_ndcg is its metrics.csv maximum.
        let best = column(&runs.join(name), "valid_hr@10");
        let at = best.iter().enumerate().fold(0, |b, (i, v)| if v.unwrap() > best[b].unwrap() { i } else { b });
        let expected = column(&runs.join(name), "valid_ndcg@10")[at].unwrap();
        assert!((r[col("valid_ndcg@10")].parse::<f64>().unwrap() - expected).abs() < 1e-4, "{name}");
        let missing = name == "c";
        assert_eq!(r[col("status")] == "–", missing, "{r:?}");
        assert_eq!(r[col("backend")] == "–", missing, "{r:?}");
    }
    let png = std::fs::read(&plot).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // Reversed: worst first; nothing to list: a clear error.
    let rev = ncf().args(["runs", "--csv", "--reverse", "--sort", "valid_ndcg@10"]).arg(&runs).output().unwrap();
    let rev_ndcg: Vec<f64> =
        String::from_utf8_lossy(&rev.stdout).lines().skip(1).map(|l| l.split(',').nth(col("valid_ndcg@10")).unwrap().parse().unwrap()).collect();
    assert!(rev_ndcg.windows(2).all(|w| w[0] <= w[1]), "{rev_ndcg:?}");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = ncf().arg("runs").arg(&empty).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("holds no ncf run"), "{stderr}");
    let out = ncf().args(["runs", "--sort", "valid_auc@10"]).arg(&runs).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("none of"));
}

/// Runs `ncf tune` on the small demo with `args`; returns stdout.
fn tune(dir: &Path, args: &[&str]) -> String {
    let out = ncf()
        .args(["tune", "--backend", "flex", "--set", "data.demo.users=100", "--set", "data.demo.items=120", "--set", "seed=3"])
        .args(args)
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "tune failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// `results.csv` as (run, column → value) rows.
fn results(dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines.map(|l| header.iter().map(|h| h.to_string()).zip(l.split(',').map(str::to_owned)).collect()).collect()
}

/// `ncf tune` runs every combination as a child run, chooses the best on validation, writes a
/// `best.toml` that `ncf train --config` takes, and rerun after a trial is lost runs that trial
/// alone.
#[test]
fn tune_runs_the_grid_chooses_on_validation_and_continues() {
    let dir = temp_dir("tune");
    let t = dir.join("tune");
    let args = ["--epochs", "2", "--prune", "none", "--grid", "optim.lr=[0.0005,0.01]", "--grid", "model.kind=[gmf,mf]"];
    tune(&t, &args);
    let rows = results(&t);
    assert_eq!(rows.len(), 4);
    let mut combos: Vec<(String, String)> = rows.iter().map(|r| (r["optim.lr"].clone(), r["model"].clone())).collect();
    combos.sort();
    assert_eq!(combos, [("0.0005", "gmf"), ("0.0005", "mf"), ("0.01", "gmf"), ("0.01", "mf")].map(|(a, b)| (a.to_owned(), b.to_owned())));
    // Best first, by validation; best.toml is that trial's config.
    let valid: Vec<f64> = rows.iter().map(|r| r["valid_hr@10"].parse().unwrap()).collect();
    assert!(valid.windows(2).all(|w| w[0] >= w[1]), "{valid:?}");
    let best_run = Path::new(&rows[0]["run"]).to_owned();
    let best = std::fs::read_to_string(t.join("best.toml")).unwrap();
    let trial_config = std::fs::read_to_string(best_run.join("config.toml")).unwrap();
    assert!(best.ends_with(&trial_config) && best.starts_with("# ncf tune"), "{best}");
    assert!(std::fs::read(t.join("tune.png")).unwrap().starts_with(b"\x89PNG"));
    let retrain = ncf().args(["-q", "train", "--epochs", "1", "--config"]).arg(t.join("best.toml")).arg("--out").arg(dir.join("again")).output().unwrap();
    assert!(retrain.status.success(), "{}", String::from_utf8_lossy(&retrain.stderr));

    // Continued: ended trials are not rerun; a lost one is.
    let manifests = |t: &Path| (0..4).map(|i| std::fs::read_to_string(t.join(format!("trial-{i:03}/run.json"))).unwrap_or_default()).collect::<Vec<_>>();
    let before = manifests(&t);
    std::fs::remove_dir_all(t.join("trial-002")).unwrap();
    let stdout = tune(&t, &args);
    assert!(stdout.contains("continuing the tune"), "{stdout}");
    let after = manifests(&t);
    for i in [0, 1, 3] {
        assert_eq!(before[i], after[i], "trial {i} was rerun");
    }
    assert!(after[2].contains("\"finished\""));
    assert_eq!(results(&t).len(), 4);

    // Another search in the same directory is refused.
    let out = ncf().args(["tune", "--backend", "flex", "--grid", "optim.lr=[0.1]", "--out"]).arg(&t).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("another search"));
}

/// The median rule stops a hopeless trial early; --random samples the grid; a spent budget
/// starts no trial and says how to continue; choosing on test is refused.
#[test]
fn tune_prunes_samples_and_keeps_to_its_budget() {
    let dir = temp_dir("tune-prune");
    let t = dir.join("prune");
    tune(&t, &["--epochs", "4", "--prune-after", "1", "--grid", "optim.lr=[0.01,0.005,0.003,0.000001]", "--set", "model.kind=\"gmf\""]);
    let m = manifest(&t.join("trial-003"));
    assert_eq!(m["status"], "pruned", "lr 1e-6 learns nothing in an epoch: {m}");
    assert!(m["epochs"].as_u64().unwrap() < 4);
    assert_eq!(manifest(&t.join("trial-000"))["epochs"], 4, "the first trials have no peers to be pruned against");

    let r = dir.join("random");
    tune(&r, &["--epochs", "1", "--random", "2", "--seed", "7", "--grid", "optim.lr=[0.001,0.002,0.003]", "--grid", "model.factors=[4,8]"]);
    assert_eq!(results(&r).len(), 2);

    let b = dir.join("budget");
    let stdout = tune(&b, &["--epochs", "1", "--budget-minutes", "0", "--grid", "optim.lr=[0.001,0.002]"]);
    assert!(stdout.contains("2 trials not run") && stdout.contains("rerun the same command"), "{stdout}");
    assert!(!b.join("trial-000").exists());

    let out = ncf().args(["tune", "--grid", "optim.lr=[0.1]", "--set", "train.select_on=test", "--out"]).arg(dir.join("refused")).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("chooses on the validation split"));
    assert!(!dir.join("refused").exists());
}

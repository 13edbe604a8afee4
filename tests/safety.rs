//! Nothing a user owns is lost: outputs never replace what ncf did not write, ids survive every
//! file ncf writes, runs survive being killed and moved, and progress goes to one stream.

#[path = "ncf_bin.rs"]
mod ncf_bin;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Instant;

use assert_cmd::Command;
use ncf_bin::{ncf, temp_dir};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The error of a command that must fail cleanly.
fn refused(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded:\n{}", text(&out));
    assert!(stderr.starts_with("error: ") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Every file below `dir` with its contents.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A small interaction file: 40 users × 30 items, integer ids.
fn ratings(dir: &Path) -> PathBuf {
    ratings_of(dir, 600, 40, 30)
}

/// `rows` interactions of `users` × `items`, integer ids, in `dir/ratings.csv`.
fn ratings_of(dir: &Path, rows: u64, users: u64, items: u64) -> PathBuf {
    let p = dir.join("ratings.csv");
    let mut s = String::from("user,item,rating,timestamp\n");
    for r in 0..rows {
        s.push_str(&format!("{},{},{},{}\n", r % users, (r * 7 + r / users) % items, 1 + r % 5, r));
    }
    std::fs::write(&p, s).unwrap();
    p
}

fn train_args(cmd: &mut Command, data: &Path, epochs: usize) {
    cmd.args(["train", "--backend", "flex", "--epochs", &epochs.to_string(), "--seed", "3", "--set", "train.eval_negatives=10"]).arg("--data").arg(data);
}

#[test]
fn data_split_writes_only_its_own_files() {
    let dir = temp_dir("split");
    let input = ratings(&dir);
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    let before = snapshot(&dir);
    let split = |out: &Path, extra: &[&str]| ncf().current_dir(&dir).args(["data", "split"]).arg(&input).arg("--out").arg(out).args(extra).output().unwrap();

    // The working directory, however it is named, and a directory holding the user's files.
    for out in [Path::new("."), Path::new("./"), dir.as_path(), Path::new("..")] {
        let e = refused(split(out, &["--force"]));
        assert!(e.contains("working directory"), "{e}");
    }
    let e = refused(ncf().current_dir(dir.join("..")).args(["data", "split"]).arg(&input).arg("--out").arg(&dir).output().unwrap());
    assert!(e.contains("not an ncf split output") && e.contains("--force"), "{e}");
    assert_eq!(snapshot(&dir), before, "nothing was touched");

    // An output file that is the input is refused even with --force.
    let holder = dir.join("holder");
    std::fs::create_dir_all(&holder).unwrap();
    std::fs::copy(&input, holder.join("train.csv")).unwrap();
    let e = refused(ncf().args(["data", "split"]).arg(holder.join("train.csv")).arg("--out").arg(&holder).arg("--force").output().unwrap());
    assert!(e.contains("is also an input"), "{e}");

    // A new directory, then the same again (an ncf split output is replaced), then --force into
    // a directory with other files: only ncf's files are written there.
    let out = dir.join("split");
    ok(split(&out, &[]));
    let first = snapshot(&out);
    ok(split(&out, &[]));
    assert_eq!(snapshot(&out), first, "the same split again");
    ok(split(&holder, &["--force"]));
    assert_eq!(std::fs::read(holder.join("notes.txt")).ok(), None);
    std::fs::write(holder.join("keep.txt"), "mine").unwrap();
    ok(split(&holder, &[]));
    assert_eq!(std::fs::read_to_string(holder.join("keep.txt")).unwrap(), "mine");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn train_out_refuses_an_existing_run_unless_resumed_or_forced() {
    let dir = temp_dir("train-out");
    let input = ratings(&dir);
    let run = dir.join("run");
    let train = |extra: &[&str]| {
        let mut cmd = ncf();
        train_args(&mut cmd, &input, 1);
        cmd.arg("--out").arg(&run).args(extra).output().unwrap()
    };
    ok(train(&[]));
    let first = std::fs::read(run.join("last/model.safetensors")).unwrap();
    let e = refused(train(&[]));
    assert!(e.contains("already holds a run") && e.contains("--resume") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(run.join("last/model.safetensors")).unwrap(), first);
    // --force starts the run afresh with the new settings (a seed given by --set would lose to
    // train_args' --seed flag; the model file's bytes alone also differ between identical runs,
    // its header's metadata order not being fixed).
    ok(train(&["--force", "--set", "model.init_std=0.05"]));
    assert!(std::fs::read_to_string(run.join("config.toml")).unwrap().contains("init_std = 0.05"), "started afresh");
    assert_eq!(std::fs::read_to_string(run.join("metrics.csv")).unwrap().lines().count(), 2, "one epoch, not a continuation");

    // A directory of the user's: refused; with --force only ncf's files are added.
    let mine = dir.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let e = refused(ncf().args(["train", "--backend", "flex", "--epochs", "1", "--out"]).arg(&mine).output().unwrap());
    assert!(e.contains("not an ncf run output"), "{e}");
    // The data file as the run directory, and the run directory inside the data file's place.
    let e = refused(ncf().args(["train", "--backend", "flex", "--out"]).arg(&input).arg("--data").arg(&input).output().unwrap());
    assert!(e.contains("is also an input"), "{e}");
    ok(ncf()
        .args(["train", "--backend", "flex", "--epochs", "1", "--set", "data.demo.users=30", "--set", "data.demo.items=20", "--force", "--out"])
        .arg(&mine)
        .output()
        .unwrap());
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "mine");
}

#[test]
fn exports_never_replace_foreign_files() {
    let dir = temp_dir("exports");
    let input = ratings(&dir);
    let run = dir.join("run");
    let mut cmd = ncf();
    train_args(&mut cmd, &input, 1);
    ok(cmd.arg("--out").arg(&run).output().unwrap());
    let recommend = |out: &Path, extra: &[&str]| {
        ncf().args(["recommend", "--backend", "flex", "--checkpoint"]).arg(&run).arg("--out").arg(out).args(extra).output().unwrap()
    };
    // The input itself, a user's file, a missing directory.
    let users = dir.join("users.csv");
    std::fs::write(&users, "0\n1\n").unwrap();
    let e = refused(recommend(&users, &["--users", users.to_str().unwrap(), "--force"]));
    assert!(e.contains("is also an input"), "{e}");
    assert_eq!(std::fs::read_to_string(&users).unwrap(), "0\n1\n");
    let e = refused(recommend(&input, &[]));
    assert!(e.contains("not an ncf export") && e.contains("--force"), "{e}");
    let e = refused(recommend(&dir.join("missing/recs.csv"), &[]));
    assert!(e.contains("no such directory"), "{e}");
    // An ncf export is replaced; a user's file only with --force.
    let recs = dir.join("recs.csv");
    ok(recommend(&recs, &[]));
    ok(recommend(&recs, &["--top-n", "3"]));
    let copy = dir.join("copy.csv");
    std::fs::copy(&input, &copy).unwrap();
    ok(recommend(&copy, &["--force"]));
    assert!(std::fs::read_to_string(&copy).unwrap().starts_with("user,rank,item,score\n"));
    let pairs = dir.join("pairs.csv");
    std::fs::write(&pairs, "user,item\n0,1\n").unwrap();
    let e = refused(ncf().args(["score", "--backend", "flex", "--checkpoint"]).arg(&run).arg("--pairs").arg(&pairs).arg("--out").arg(&pairs).output().unwrap());
    assert!(e.contains("is also an input"), "{e}");
    assert_eq!(std::fs::read_to_string(&pairs).unwrap(), "user,item\n0,1\n");
    let e = refused(
        ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(&run).arg("--test").arg(&pairs).arg("--per-user").arg(&pairs).output().unwrap(),
    );
    assert!(e.contains("is also an input"), "{e}");
    // bench --out: a directory of the user's is refused before anything is measured.
    let mine = dir.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("bench.json"), "mine").unwrap();
    let e = refused(ncf().args(["bench", "--workload", "small", "--backends", "flex", "--out"]).arg(&mine).output().unwrap());
    assert!(e.contains("not an ncf bench output"), "{e}");
    assert_eq!(std::fs::read_to_string(mine.join("bench.json")).unwrap(), "mine");
}

/// Ids of every awkward kind: separators, quotes, line breaks, leading zeros, 20-digit numbers,
/// Latin-1 bytes (read as Latin-1 characters).
fn awkward_ids() -> Vec<(Vec<u8>, String)> {
    let mut ids: Vec<(Vec<u8>, String)> = ["a,1", "q\"uote", "t\tab", "line\nbreak", "007", "7", "18446744073709551616123", "(paren)", "ü-utf8", " "]
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let quoted = if s.contains([',', '"', '\n', '\t']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
            (quoted.into_bytes(), s.to_string())
        })
        .collect();
    ids.push((b"caf\xe9".to_vec(), "caf\u{e9}".to_owned()));
    ids
}

#[test]
fn awkward_ids_round_trip_through_split_checkpoint_and_exports() {
    let dir = temp_dir("ids");
    let users = awkward_ids();
    let file = dir.join("awkward.csv");
    let mut bytes = b"user,item\n".to_vec();
    let mut want = BTreeSet::new();
    for (k, (raw, id)) in users.iter().enumerate() {
        for j in 0..6 {
            let (item_raw, item) = &users[(k + j) % users.len()];
            bytes.extend_from_slice(raw);
            bytes.push(b',');
            bytes.extend_from_slice(item_raw);
            bytes.push(b'\n');
            want.insert((id.clone(), item.clone()));
        }
    }
    std::fs::write(&file, &bytes).unwrap();
    let a = dir.join("a");
    ok(ncf().args(["data", "split", "--set", "train.eval_negatives=3"]).arg(&file).arg("--out").arg(&a).output().unwrap());
    let read_pairs = |p: &Path| -> BTreeSet<(String, String)> {
        let mut r = csv::Reader::from_path(p).unwrap();
        r.records().map(|rec| rec.unwrap()).map(|rec| (rec[0].to_owned(), rec[1].to_owned())).collect()
    };
    let mut got = read_pairs(&a.join("train.csv"));
    got.extend(read_pairs(&a.join("valid.csv")));
    got.extend(read_pairs(&a.join("test.csv")));
    assert_eq!(got, want, "train.csv, valid.csv and test.csv hold the input's pairs");
    // Read back as a given split and written again: the same files.
    let b = dir.join("b");
    let given = |key: &str, f: &str| format!("split.{key}={}", a.join(f).display());
    ok(ncf()
        .args(["data", "split", "--set", "split.method=given"])
        .args(["--set", &given("train_path", "train.csv"), "--set", &given("test_path", "test.csv")])
        .args(["--set", &given("valid_path", "valid.csv"), "--set", &given("negatives_path", "test.negative"), "--out"])
        .arg(&b)
        .output()
        .unwrap());
    for f in ["train.csv", "valid.csv", "test.csv", "test.negative"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f}");
    }
    // A checkpoint keeps every id: recommendations name them all, in CSV and JSONL.
    let run = dir.join("run");
    let mut cmd = ncf();
    train_args(&mut cmd, &file, 1);
    ok(cmd.args(["--set", "train.eval_negatives=3", "--out"]).arg(&run).output().unwrap());
    let ids: BTreeSet<String> = users.iter().map(|u| u.1.clone()).collect();
    let recs = dir.join("recs.csv");
    ok(ncf().args(["recommend", "--backend", "flex", "--include-seen", "--top-n", "2", "--checkpoint"]).arg(&run).arg("--out").arg(&recs).output().unwrap());
    let users_out: BTreeSet<String> = read_pairs(&recs).into_iter().map(|p| p.0).collect();
    assert_eq!(users_out, ids);
    let jsonl = dir.join("recs.jsonl");
    ok(ncf().args(["recommend", "--backend", "flex", "--top-n", "2", "--checkpoint"]).arg(&run).arg("--out").arg(&jsonl).output().unwrap());
    let users_out: BTreeSet<String> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users_out, ids);
}

/// A checkpoint of format 2 (ids as text lines, no validation split) still loads and recommends
/// the same.
#[test]
fn format_2_checkpoints_still_load() {
    let dir = temp_dir("v2");
    let input = ratings(&dir);
    let run = dir.join("run");
    let mut cmd = ncf();
    train_args(&mut cmd, &input, 1);
    // Format 2 predates validation splits: a run without one.
    ok(cmd.args(["--set", "train.select_on=test", "--out"]).arg(&run).output().unwrap());
    let recommend = |out: &Path| ok(ncf().args(["recommend", "--backend", "flex", "--checkpoint"]).arg(&run).arg("--out").arg(out).output().unwrap());
    recommend(&dir.join("v3.csv"));
    let best = run.join("best");
    let meta = std::fs::read_to_string(best.join("checkpoint.json")).unwrap();
    std::fs::write(best.join("checkpoint.json"), ncf_bin::with_format_version(&meta, 2)).unwrap();
    // The ids of this file are 0..40 and 0..30, interned in first-seen order.
    let recs = std::fs::read_to_string(dir.join("v3.csv")).unwrap();
    let e = refused(ncf().args(["recommend", "--backend", "flex", "--checkpoint"]).arg(&run).arg("--out").arg(dir.join("v2.csv")).output().unwrap());
    assert!(e.contains("users.txt"), "format 2 reads the id lines: {e}");
    let order = |col: usize| {
        let mut seen = Vec::new();
        for line in std::fs::read_to_string(&input).unwrap().lines().skip(1) {
            let id = line.split(',').nth(col).unwrap().to_owned();
            if !seen.contains(&id) {
                seen.push(id);
            }
        }
        seen.iter().map(|s| format!("{s}\n")).collect::<String>()
    };
    assert_eq!(order(0).lines().count(), 40);
    std::fs::write(best.join("users.txt"), order(0)).unwrap();
    std::fs::write(best.join("items.txt"), order(1)).unwrap();
    recommend(&dir.join("v2.csv"));
    assert_eq!(std::fs::read_to_string(dir.join("v2.csv")).unwrap(), recs);
    let other = ncf_bin::with_format_version(&meta, 99);
    std::fs::write(best.join("checkpoint.json"), other).unwrap();
    let e = refused(ncf().args(["recommend", "--backend", "flex", "--checkpoint"]).arg(&run).arg("--out").arg(dir.join("v99.csv")).output().unwrap());
    assert!(e.contains("format version 99") && e.contains("retrain"), "{e}");
    assert!(!dir.join("v99.csv").exists());
}

#[test]
fn leave_one_out_drops_single_interaction_users_with_one_warning() {
    let dir = temp_dir("loo");
    let input = ratings(&dir);
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("lonely1,3,5,1000\nlonely2,4,5,1001\n");
    std::fs::write(&input, text).unwrap();
    let mut cmd = ncf();
    train_args(&mut cmd, &input, 1);
    let out = cmd.arg("--out").arg(dir.join("run")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
    assert!(stderr.contains("dropped 2 users with a single interaction (2 interactions)"), "{stderr}");
}

#[test]
fn progress_goes_to_stdout_quiet_silences_it_and_a_closed_pipe_ends_quietly() {
    let dir = temp_dir("stream");
    let input = ratings(&dir);
    let mut cmd = ncf();
    train_args(&mut cmd, &input, 2);
    let out = cmd.arg("--out").arg(dir.join("a")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = ok(out);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("epoch ")).count(), 2, "{stdout}");
    assert!(!stderr.contains("epoch "), "{stderr}");
    let mut cmd = ncf();
    train_args(&mut cmd, &input, 2);
    let out = cmd.arg("--quiet").arg("--out").arg(dir.join("b")).output().unwrap();
    let quiet = ok(out);
    assert!(quiet.is_empty(), "{quiet}");
    assert!(dir.join("b/best/checkpoint.json").exists());

    // `ncf train | head -1`: stdout closes after the first line.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("ncf"))
        .args(["train", "--backend", "flex", "--epochs", "3", "--set", "train.eval_negatives=10", "--data"])
        .arg(&input)
        .arg("--out")
        .arg(dir.join("c"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert!(out.status.success() || out.status.signal() == Some(13), "{:?} {stderr}", out.status);
    assert!(!stderr.contains("panicked") && !stderr.contains("error"), "{stderr}");
}

#[test]
fn runs_resume_and_evaluate_from_any_directory() {
    let dir = temp_dir("relocate");
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    ratings(&a);
    // Relative --data and --out from directory a ...
    ok(ncf()
        .current_dir(&a)
        .args(["train", "--backend", "flex", "--epochs", "1", "--set", "train.eval_negatives=10", "--data", "ratings.csv", "--out", "run"])
        .output()
        .unwrap());
    // ... resumed and evaluated from directory b.
    let stdout = ok(ncf().current_dir(&b).args(["train", "--backend", "flex", "--epochs", "2", "--resume"]).arg(a.join("run")).output().unwrap());
    assert!(stdout.contains("after epoch 1") && stdout.contains("epoch   2"), "{stdout}");
    let stdout = ok(ncf().current_dir(&b).args(["evaluate", "--backend", "flex", "--checkpoint", "../a/run"]).output().unwrap());
    assert!(stdout.contains("HR@10"), "{stdout}");
}

/// Metrics without the seconds column.
fn metrics(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv")).unwrap().lines().map(|l| l.rsplit_once(',').unwrap().0.to_owned()).collect()
}

/// `ncf train` killed with SIGKILL at random moments (mid epoch, mid checkpoint write): after
/// every kill `best/` and `last/` load when present (and `best/` whenever `last/` is), and
/// resuming after the last kill ends with the metrics of an uninterrupted run.
#[test]
fn sigkill_at_random_moments_loses_nothing() {
    const KILLS: usize = 40;
    let dir = temp_dir("sigkill");
    let input = ratings_of(&dir, 3000, 150, 100);
    let epochs = 4;
    let base = dir.join("base");
    let t = Instant::now();
    let mut cmd = ncf();
    train_args(&mut cmd, &input, epochs);
    ok(cmd.arg("--out").arg(&base).output().unwrap());
    let whole = t.elapsed();
    let want = metrics(&base);

    let run = dir.join("run");
    // Deterministic moments spread over a whole run (an LCG: no seed to record).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut moments = Vec::new();
    let (mut kills, mut loaded, mut mid_write) = (0, 0, 0);
    while kills < KILLS {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = whole.mul_f64((state >> 11) as f64 / (1u64 << 53) as f64);
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("ncf"));
        if run.join("config.toml").exists() {
            cmd.args(["train", "--backend", "flex", "--epochs", &epochs.to_string(), "--resume"]).arg(&run);
        } else {
            cmd.args(["train", "--backend", "flex", "--epochs", &epochs.to_string(), "--seed", "3", "--set", "train.eval_negatives=10", "--force"])
                .arg("--data")
                .arg(&input)
                .arg("--out")
                .arg(&run);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        if finished {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            // The run completed before the kill: start over so later kills land mid-run.
            std::fs::remove_dir_all(&run).unwrap();
            continue;
        }
        kills += 1;
        moments.push(delay);
        let (best, last) = (run.join("best"), run.join("last"));
        let names: Vec<String> = std::fs::read_dir(&run).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        mid_write += names.iter().any(|n| n.starts_with(".best.tmp-") || n.starts_with(".last.tmp-")) as usize;
        assert!(!last.exists() || best.exists(), "kill {kills} after {delay:?}: last/ without best/");
        for ck in [best, last] {
            if ck.exists() {
                ok(ncf().args(["evaluate", "--backend", "flex", "--checkpoint"]).arg(&ck).output().unwrap());
                loaded += 1;
            }
        }
    }
    if run.join("config.toml").exists() {
        ok(ncf().args(["train", "--backend", "flex", "--epochs", &epochs.to_string(), "--resume"]).arg(&run).output().unwrap());
    } else {
        let mut cmd = ncf();
        train_args(&mut cmd, &input, epochs);
        ok(cmd.arg("--force").arg("--out").arg(&run).output().unwrap());
    }
    assert_eq!(metrics(&run), want, "the resumed run's metrics");
    let leftovers: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
        .collect();
    assert!(leftovers.is_empty(), "leftovers of killed writers are swept: {leftovers:?}");
    eprintln!("{KILLS} kills at {moments:?} (a whole run takes {whole:?}); {mid_write} mid checkpoint write; {loaded} checkpoints loaded after them");
    assert!(moments.iter().any(|m| *m < whole / 4) && moments.iter().any(|m| *m > whole / 2), "{moments:?}");
}

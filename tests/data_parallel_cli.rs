//! `ncf train --devices 0,1` trains the model one device trains on the same global batch: two
//! flex replicas in one process (and two runtimes on one wgpu adapter, lavapipe in CI, when there
//! is one) against the same config on one device, compared through what a run writes: every
//! number of `metrics.csv` and every weight of `last/model.safetensors`.
//!
//! Tolerances: metrics within 1e-4 relative (or 1e-6 absolute, the csv's last digit), weights
//! within 5e-5 absolute (seen: metrics equal to the csv's 6 decimals but a loss's last digit,
//! weights up to 6.9e-6 apart on flex and 1.3e-7 on lavapipe, for NeuMF with Adam over 800 and
//! 100 steps; weights move by up to ~1 in training). The two runs differ by f32 rounding only
//! (one device sums the batch's gradient in one order, two shards in another). That the
//! comparison can fail is checked on the way: one device at half the batch (what two devices
//! would train if each took a whole `train.batch_size`) lies far outside both tolerances (seen:
//! metrics 3000 times the tolerance apart, weights by 1).

#[path = "ncf_bin.rs"]
mod ncf_bin;

use std::path::{Path, PathBuf};

use ncf_bin::{ncf, temp_dir};

const REL: f64 = 1e-4;
const ABS: f64 = 1e-6;
const WEIGHTS: f32 = 5e-5;

/// The size of a run: demo users and items, epochs, global batch.
#[derive(Clone, Copy)]
struct Scale(usize, usize, usize, usize);

/// On flex: ~800 steps.
const FLEX: Scale = Scale(200, 300, 2, 128);
/// On lavapipe, where a step costs more: ~100 steps.
const WGPU: Scale = Scale(100, 150, 1, 256);

/// The demo set at `scale`, seeded; `extra` after.
fn train(backend: &str, run: &Path, extra: &[&str]) -> std::process::Output {
    train_at(FLEX, backend, run, extra)
}

fn train_at(Scale(users, items, epochs, batch): Scale, backend: &str, run: &Path, extra: &[&str]) -> std::process::Output {
    ncf()
        .args(["train", "--backend", backend, "--seed", "3", "--epochs", &epochs.to_string()])
        .args(["--set", &format!("data.demo.users={users}"), "--set", &format!("data.demo.items={items}")])
        .args(["--set", &format!("train.batch_size={batch}")])
        .args(extra)
        .arg("--out")
        .arg(run)
        .output()
        .unwrap()
}

/// [`train_at`], which must succeed; returns its stdout.
fn train_ok(scale: Scale, backend: &str, run: &Path, extra: &[&str]) -> String {
    let out = train_at(scale, backend, run, extra);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "train {extra:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Every numeric cell of `metrics.csv` but the epoch and the seconds, named `column/epoch`.
fn metrics(run: &Path) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let mut out = Vec::new();
    for (e, line) in lines.enumerate() {
        for (name, cell) in header.iter().zip(line.split(',')) {
            if !["epoch", "seconds"].contains(name)
                && let Ok(v) = cell.parse::<f64>()
            {
                out.push((format!("{name}/{}", e + 1), v));
            }
        }
    }
    assert!(out.len() > 10, "{text}");
    out
}

/// `last/model.safetensors` as (name, f32 values), sorted by name.
fn weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(run.join("last/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            (name, view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The largest metric difference relative to the tolerance (≤ 1 passes) and where it is.
fn metric_gap(a: &[(String, f64)], b: &[(String, f64)]) -> (f64, String) {
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>(), "the same cells");
    a.iter()
        .zip(b)
        .map(|((name, x), (_, y))| ((x - y).abs() / (REL * x.abs().max(y.abs())).max(ABS), format!("{name}: {x} vs {y}")))
        .fold((0.0, String::new()), |m, g| if g.0 > m.0 { g } else { m })
}

/// The largest weight difference and where it is.
fn weight_gap(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f32, String) {
    assert_eq!(a.iter().map(|x| (&x.0, x.1.len())).collect::<Vec<_>>(), b.iter().map(|x| (&x.0, x.1.len())).collect::<Vec<_>>());
    let mut worst = (0.0f32, String::new());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        for (k, (p, q)) in x.iter().zip(y).enumerate() {
            let d = (p - q).abs();
            assert!(d.is_finite(), "{name}[{k}]: {p} vs {q}");
            if d > worst.0 {
                worst = (d, format!("{name}[{k}]: {p} vs {q}"));
            }
        }
    }
    worst
}

/// `--devices 0,1` against one device at the same global batch: within the tolerances, and
/// printed (the test's output shows the differences seen).
fn compare(scale: Scale, backend: &str, dir: &Path, name: &str, config: &[&str]) -> PathBuf {
    let one = dir.join(format!("{name}-one"));
    let two = dir.join(format!("{name}-two"));
    train_ok(scale, backend, &one, config);
    let stdout = train_ok(scale, backend, &two, &[config, &["--devices", "0,1"]].concat());
    assert!(stdout.contains("data parallel: 2 devices") && stdout.contains(&format!("global batch {}", scale.3)), "{stdout}");
    let (m, at) = metric_gap(&metrics(&one), &metrics(&two));
    let (w, wat) = weight_gap(&weights(&one), &weights(&two));
    eprintln!("{backend} {name}: largest metric gap {m:.3} of the tolerance ({at}); largest weight difference {w:.2e} ({wat})");
    assert!(m <= 1.0, "{backend} {name}: metrics differ beyond {REL} relative: {at}");
    assert!(w <= WEIGHTS, "{backend} {name}: weights differ by {w:e}: {wat}");
    let manifest = std::fs::read_to_string(two.join("run.json")).unwrap();
    assert!(manifest.contains("\"devices\": ["), "{manifest}");
    two
}

/// The sampled softmax over shared negatives with history: every shard scores against the whole
/// batch's positives and the shared negatives (cosine MF: no biases, whose softmax gradient is
/// rounding noise that Adam would turn into steps).
const SOFTMAX: [&str; 10] =
    ["--model", "mf", "--set", "model.cosine=true", "--set", "train.loss=softmax", "--set", "sampler.shared_negatives=64", "--set", "model.history=0.3"];

#[test]
fn two_flex_devices_train_like_one_at_the_same_global_batch() {
    let dir = temp_dir("flex");
    // NeuMF with BCE (the default), and BPR (groups of a positive and its negatives split whole).
    let two = compare(FLEX, "flex", &dir, "neumf", &[]);
    // SGD: BPR is blind to the output bias (it cancels in each pair's difference), whose
    // gradient is rounding noise that Adam's normalised steps would turn into moves of ~lr.
    compare(
        FLEX,
        "flex",
        &dir,
        "gmf-bpr",
        &["--model", "gmf", "--set", "train.loss=bpr", "--set", "sampler.negatives=3", "--set", "optim.kind=sgd", "--set", "optim.lr=0.05"],
    );
    compare(FLEX, "flex", &dir, "softmax", &SOFTMAX);

    // The comparison can fail: each device taking a whole train.batch_size would train one
    // device's batch of 256; one device at another batch (here half) is far off.
    let half = dir.join("neumf-half");
    train_ok(Scale(FLEX.0, FLEX.1, FLEX.2, FLEX.3 / 2), "flex", &half, &[]);
    let (m, at) = metric_gap(&metrics(&dir.join("neumf-one")), &metrics(&half));
    let (w, _) = weight_gap(&weights(&dir.join("neumf-one")), &weights(&half));
    eprintln!("flex neumf at half the batch: largest metric gap {m:.0} of the tolerance ({at}); largest weight difference {w:.2e}");
    assert!(m > 10.0 && w > 100.0 * WEIGHTS, "half the batch should not pass: metric gap {m} ({at}), weights {w}");

    // A one-entry list is that device: the single-device run, bit for bit.
    let single = dir.join("neumf-single");
    train_ok(FLEX, "flex", &single, &["--devices", "0"]);
    assert_eq!(metrics(&single), metrics(&dir.join("neumf-one")));
    assert!(weights(&single) == weights(&dir.join("neumf-one")));

    // Resumed on two devices, a run stopped after epoch 1 reaches the uninterrupted run's
    // metrics exactly (the replicas are rebuilt from last/: weights and optimizer state).
    let resumed = dir.join("neumf-resumed");
    let first = train_at(Scale(FLEX.0, FLEX.1, 1, FLEX.3), "flex", &resumed, &["--devices", "0,1"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let out = ncf().args(["train", "--backend", "flex", "--epochs", "2", "--devices", "0,1", "--resume"]).arg(&resumed).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("after epoch 1") && stdout.contains("data parallel: 2 devices"), "{stdout}");
    assert_eq!(metrics(&resumed), metrics(&two));
    assert!(weights(&resumed) == weights(&two));
}

#[test]
fn bad_device_lists_are_refused_naming_the_flag() {
    let dir = temp_dir("bad");
    for (list, says) in [
        ("0,x", "expected device indices"),
        ("", "expected device indices"),
        ("0,,1", "expected device indices"),
        ("-1", "expected device indices"),
        ("1,1", "named twice"),
    ] {
        let run = dir.join("run");
        let out = train("flex", &run, &[&format!("--devices={list}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--devices {list:?} accepted");
        assert!(stderr.contains("--devices") && stderr.contains(says) && !stderr.contains("panicked"), "--devices {list:?}: {stderr}");
        assert!(!run.exists(), "--devices {list:?} left {}", run.display());
    }
    // A loss that does not split across devices is refused before training.
    let run = dir.join("bpr-shared");
    let out = train("flex", &run, &["--devices", "0,1", "--set", "train.loss=bpr", "--set", "sampler.shared_negatives=16"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--devices") && stderr.contains("BPR") && !stderr.contains("panicked"), "{stderr}");
    assert!(!run.join("last").exists());
}

/// Two runtimes on the one wgpu adapter (lavapipe in CI), when there is one.
#[test]
fn two_wgpu_devices_train_like_one_at_the_same_global_batch() {
    let dir = temp_dir("wgpu");
    let probe = ncf()
        .args(["train", "--backend", "wgpu", "--epochs", "0", "--devices", "0,1", "--set", "data.demo.users=20", "--set", "data.demo.items=30"])
        .arg("--out")
        .arg(dir.join("probe"))
        .output()
        .unwrap();
    if !probe.status.success() {
        let err = String::from_utf8_lossy(&probe.stderr);
        assert!(!std::env::var("NCF_REQUIRE_WGPU").is_ok_and(|v| v == "1"), "NCF_REQUIRE_WGPU=1 but two wgpu devices are unavailable: {err}");
        eprintln!("skipping: two wgpu devices unavailable ({err}); install mesa-vulkan-drivers to run it");
        return;
    }
    // The fused row-sparse Adam kernel (the default) and the composed ops.
    compare(WGPU, "wgpu", &dir, "neumf", &[]);
    compare(WGPU, "wgpu", &dir, "softmax", &[&SOFTMAX[..], &["--set", "optim.fused=false"]].concat());
}

//! `ncf runs`: a table of training runs side by side — model, loss, the config values that differ
//! between them, the best epoch's validation and test metrics, wall time, backend — sortable by a
//! metric, with an optional PNG of their validation curves. Reads `config.toml`, `metrics.csv`
//! and, when present, `run.json`; runs made before manifests show `–` for what only those hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::history::{self, EpochRecord, Metric, SelectOn};
use crate::manifest::Manifest;

/// What a missing value shows as.
const MISSING: &str = "–";

/// One run directory, read.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub dir: PathBuf,
    /// `config.toml` flattened to `section.key` → value as TOML writes it.
    pub config: BTreeMap<String, String>,
    pub history: Vec<EpochRecord>,
    /// Cutoff K of the metrics.
    pub k: usize,
    /// The metric and split the run chose its best epoch by.
    pub chosen_by: (Metric, SelectOn),
    pub manifest: Option<Manifest>,
}

/// A metric of a run's table: `split_name@k` like `valid_recall@20`, or `name@k` meaning the split
/// each run chose on.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricKey {
    pub on: Option<SelectOn>,
    pub metric: String,
    pub k: usize,
}

impl MetricKey {
    /// Parses `valid_recall@20`, `test_hr@10` or `recall@20`.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, k) = s.rsplit_once('@').with_context(|| format!("metric {s:?}: write it like valid_recall@20, test_hr@10 or ndcg@10"))?;
        let k = k.parse().with_context(|| format!("metric {s:?}: {k:?} is not a cutoff"))?;
        let (on, metric) = match name.split_once('_') {
            Some(("valid", m)) => (Some(SelectOn::Valid), m),
            Some(("test", m)) => (Some(SelectOn::Test), m),
            _ => (None, name),
        };
        let known = Metric::ALL.iter().map(|m| m.name()).chain(["coverage"]).collect::<Vec<_>>();
        if !known.contains(&metric) {
            bail!("metric {s:?}: {metric:?} is none of {}", known.join(", "));
        }
        Ok(Self { on, metric: metric.to_owned(), k })
    }

    /// The column name, e.g. `valid_recall@20`, or `recall@20`.
    pub fn label(&self) -> String {
        let l = history::label(&self.metric, self.k);
        self.on.map_or(l.clone(), |on| format!("{}_{l}", on.name()))
    }
}

impl RunSummary {
    /// Reads `dir`; only `config.toml` is required.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: not a run directory", path.display()))?;
        let value: toml::Table = toml::from_str(&text).with_context(|| format!("{}: malformed", path.display()))?;
        let mut config = BTreeMap::new();
        flatten("", &value, &mut config);
        let metrics = dir.join("metrics.csv");
        let (history, k) = match std::fs::read_to_string(&metrics) {
            Ok(t) => history::parse_csv(&t).with_context(|| format!("{}", metrics.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 10),
            Err(e) => return Err(e).with_context(|| format!("reading {}", metrics.display())),
        };
        let field = |key: &str| value.get("train").and_then(|t| t.get(key)).cloned();
        let metric = field("best_metric").and_then(|v| v.try_into().ok()).unwrap_or_default();
        let on = field("select_on").and_then(|v| v.try_into().ok()).unwrap_or_default();
        let k = field("k").and_then(|v| v.as_integer()).map_or(k, |k| k as usize);
        Ok(Self { dir: dir.to_owned(), config, history, k, chosen_by: (metric, on), manifest: Manifest::read(dir)? })
    }

    /// The chosen epoch (as `train` chose it).
    pub fn best(&self) -> Option<&EpochRecord> {
        let b = history::best(&self.history, self.chosen_by.0, self.chosen_by.1)?;
        self.history.iter().find(|r| r.epoch == b.epoch)
    }

    /// `key` of the split it names (each run's own choosing split when it names none) at `epoch`.
    fn value_at(&self, r: &EpochRecord, key: &MetricKey) -> Option<f64> {
        if key.k != self.k {
            return None;
        }
        r.on(key.on.unwrap_or(self.chosen_by.1))?.get(&key.metric)
    }

    /// `key` at the best epoch.
    pub fn value(&self, key: &MetricKey) -> Option<f64> {
        self.value_at(self.best()?, key)
    }

    /// `key` per epoch (NaN where not evaluated), for curves.
    pub fn curve(&self, key: &MetricKey) -> Vec<f64> {
        let last = self.history.last().map_or(0, |r| r.epoch);
        let mut v = vec![f64::NAN; last];
        for r in &self.history {
            if let Some(x) = self.value_at(r, key) {
                v[r.epoch - 1] = x;
            }
        }
        v
    }

    /// A config value, as TOML writes it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }
}

/// `table` flattened into `out` as `prefix.key` → value.
fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            toml::Value::String(s) => drop(out.insert(key, s.clone())),
            v => drop(out.insert(key, v.to_string())),
        }
    }
}

/// The run directories under `roots`: each root that is a run, else the runs found below it (a
/// directory of runs, a tune directory of trials), in name order.
pub fn discover(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if dir.join("config.toml").is_file() && (dir.join("metrics.csv").is_file() || dir.join("last").is_dir() || dir.join(crate::manifest::FILE).is_file()) {
            out.push(dir.to_owned());
            return;
        }
        if depth == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut subdirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        subdirs.sort();
        for d in subdirs {
            walk(&d, depth - 1, out);
        }
    }
    let mut out = Vec::new();
    for root in roots {
        if !root.is_dir() {
            bail!("{}: no such directory; name run directories or a directory holding them (default: runs)", root.display());
        }
        let before = out.len();
        walk(root, 3, &mut out);
        if out.len() == before {
            bail!("{}: holds no ncf run (a run directory has config.toml and metrics.csv)", root.display());
        }
    }
    Ok(out)
}

/// The config keys whose values differ between `runs` (shown as columns), model and loss aside.
pub fn differing_keys(runs: &[RunSummary]) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = runs.iter().flat_map(|r| r.config.keys()).collect();
    keys.into_iter()
        .filter(|k| !matches!(k.as_str(), "model.kind" | "train.loss"))
        .filter(|k| runs.iter().any(|r| r.get(k) != runs[0].get(k)))
        .cloned()
        .collect()
}

/// The metric a table of `runs` shows and sorts by: `given`, else the one every run chose on.
pub fn default_metric(runs: &[RunSummary], given: Option<&str>) -> Result<MetricKey> {
    if let Some(g) = given {
        return MetricKey::parse(g);
    }
    let first = runs.first().map_or((Metric::default(), 10), |r| (r.chosen_by.0, r.k));
    Ok(MetricKey { on: None, metric: first.0.name().to_owned(), k: first.1 })
}

/// Orders `runs` best first by `key` (runs without it last); ties keep the given order.
pub fn sort(runs: &mut [RunSummary], key: &MetricKey) {
    runs.sort_by(|a, b| match (a.value(key), b.value(key)) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}

/// The table: a header and one row per run, every cell a string (`–` where missing).
pub fn table(runs: &[RunSummary], key: &MetricKey) -> Vec<Vec<String>> {
    let keys = differing_keys(runs);
    // The metric on both splits, at each run's best epoch.
    let shown = [SelectOn::Valid, SelectOn::Test].map(|on| MetricKey { on: Some(on), ..key.clone() });
    let mut header: Vec<String> = ["run", "status", "model", "loss"].map(String::from).into();
    header.extend(keys.iter().cloned());
    header.extend(["epochs", "best", "chosen on"].map(String::from));
    header.extend(shown.iter().map(MetricKey::label));
    header.extend(["wall s", "backend"].map(String::from));
    let fmt = |v: Option<f64>| v.map_or(MISSING.to_owned(), |v| format!("{v:.4}"));
    let mut rows = vec![header];
    for r in runs {
        let cell = |k: &str| r.get(k).unwrap_or(MISSING).to_owned();
        let m = r.manifest.as_ref();
        // EASE is fitted in closed form: no training loss applies.
        let loss = if r.get("model.kind") == Some("ease") { MISSING.to_owned() } else { cell("train.loss") };
        let mut row = vec![r.dir.display().to_string(), m.map_or(MISSING.into(), |m| m.status.name().into()), cell("model.kind"), loss];
        row.extend(keys.iter().map(|k| cell(k)));
        row.push(r.history.last().map_or(MISSING.into(), |l| l.epoch.to_string()));
        row.push(r.best().map_or(MISSING.into(), |b| b.epoch.to_string()));
        row.push(r.chosen_by.1.name().into());
        row.extend(shown.iter().map(|k| fmt(r.value(k))));
        row.push(m.map_or(MISSING.into(), |m| format!("{:.1}", m.wall_secs())));
        row.push(m.and_then(Manifest::latest).map_or(MISSING.into(), |i| i.backend.clone()));
        rows.push(row);
    }
    rows
}

/// `rows` as aligned text columns.
pub fn aligned(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(s, &w)| format!("{s}{}", " ".repeat(w - s.chars().count()))).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Reads the runs under `roots`, sorted by `metric` (or the runs' own choosing metric).
pub fn load(roots: &[PathBuf], metric: Option<&str>) -> Result<(Vec<RunSummary>, MetricKey)> {
    let runs = discover(roots)?.iter().map(|d| RunSummary::read(d)).collect::<Result<Vec<_>>>()?;
    let key = default_metric(&runs, metric)?;
    let mut runs = runs;
    sort(&mut runs, &key);
    Ok((runs, key))
}

/// What `ncf runs` shows: which runs, sorted how, printed how, and an optional plot.
#[derive(Debug, Clone)]
pub struct RunsJob {
    /// Run directories, or directories holding runs.
    pub dirs: Vec<PathBuf>,
    /// Metric to show and sort by, best first; `None`: the metric the runs chose their best
    /// epoch by.
    pub sort: Option<String>,
    /// Worst first.
    pub reverse: bool,
    /// CSV instead of aligned columns.
    pub csv: bool,
    /// PNG of the runs' curves of the metric per epoch.
    pub plot: Option<PathBuf>,
}

pub fn run(job: &RunsJob) -> Result<()> {
    let (mut runs, key) = load(&job.dirs, job.sort.as_deref())?;
    if job.reverse {
        runs.reverse();
    }
    let rows = table(&runs, &key);
    if job.csv {
        print!("{}", crate::export::csv_string(rows));
    } else {
        print!("{}", aligned(&rows));
    }
    if let Some(plot) = &job.plot {
        // Validation curves where the run has them, else its choosing split's: never test
        // curves beside validation ones.
        let curves: Vec<(String, Vec<f64>)> = runs
            .iter()
            .map(|r| {
                let on = if r.history.iter().any(|h| h.valid.is_some()) { SelectOn::Valid } else { r.chosen_by.1 };
                (format!("{} ({})", r.dir.display(), on.name()), r.curve(&MetricKey { on: Some(on), ..key.clone() }))
            })
            .collect();
        let series: Vec<crate::curves::Series> = curves.iter().map(|(name, values)| crate::curves::Series { name, values }).collect();
        crate::curves::write_one(plot, &history::label(&key.metric, key.k), &series)?;
        if !job.csv {
            say!("curves: {}", plot.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_keys_parse_or_name_the_fix() {
        assert_eq!(MetricKey::parse("valid_recall@20").unwrap(), MetricKey { on: Some(SelectOn::Valid), metric: "recall".into(), k: 20 });
        assert_eq!(MetricKey::parse("full_ndcg@10").unwrap(), MetricKey { on: None, metric: "full_ndcg".into(), k: 10 });
        assert_eq!(MetricKey::parse("test_full_ndcg@5").unwrap().label(), "test_full_ndcg@5");
        assert!(MetricKey::parse("recall").unwrap_err().to_string().contains("valid_recall@20"));
        assert!(MetricKey::parse("valid_auc@10").unwrap_err().to_string().contains("none of hr, ndcg"));
    }

    #[test]
    fn aligned_pads_columns() {
        let rows = vec![vec!["a".to_owned(), "bb".into()], vec!["ccc".into(), "–".into()]];
        assert_eq!(aligned(&rows), "a    bb\nccc  –\n");
    }
}

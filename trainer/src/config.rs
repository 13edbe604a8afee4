//! The resolved run configuration: one serde struct per concern, nested under [`RunConfig`].
//! Precedence: `--set` and flags > `--config` file > defaults.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ncf_datasets::{CleanConfig, DemoConfig, ReadOptions, SamplerConfig, SplitConfig, SplitMethod};
use ncf_model::{LossConfig, ModelConfig, OptimConfig};
use serde::{Deserialize, Serialize};

pub use crate::history::SelectOn;

/// Where interactions come from and how they are cleaned. Defaults: the built-in demo data,
/// auto-detected file format and columns, duplicate pairs dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Interaction file; absent means the built-in demo dataset.
    pub path: Option<PathBuf>,
    pub read: ReadOptions,
    pub clean: CleanConfig,
    pub demo: DemoConfig,
}

/// Training loop settings. Defaults: 10 epochs, batch 256, evaluation every epoch at K = 10
/// against 100 sampled negatives and over the full catalogue, loss read back every 50 steps, best
/// checkpoint on validation HR@K, no early stopping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Cutoff K of the reported metrics.
    pub k: usize,
    /// Sampled negatives per test item in evaluation (NCF protocol).
    pub eval_negatives: usize,
    /// Steps between device→host reads of the running loss.
    pub log_every: usize,
    /// Also rank every item per test user (training items masked) each epoch.
    pub full_ranking: bool,
    /// bce (pointwise, paper), bpr (pairwise), softmax (sampled softmax) or ccl (SimpleX's
    /// cosine contrastive loss); the last two train on `sampler.shared_negatives`, settings in
    /// `[loss]`.
    pub loss: ncf_model::LossKind,
    /// Metric choosing `best/` and driving early stopping: hr, ndcg (sampled) or recall,
    /// precision, full_ndcg, map (full ranking), all at K, read on the `select_on` split.
    pub best_metric: crate::history::Metric,
    /// Stop after this many epochs without a better `best_metric` (0 = run every epoch).
    pub patience: usize,
    /// The split `best/` and early stopping read: "valid" (held out from training), or "test"
    /// (the NCF paper's protocol: no validation split is carved).
    pub select_on: SelectOn,
    /// Evaluate every this many epochs (and always at the last epoch and at an early stop).
    pub eval_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 256,
            k: 10,
            eval_negatives: 100,
            log_every: 50,
            full_ranking: true,
            loss: ncf_model::LossKind::Bce,
            best_metric: crate::history::Metric::Hr,
            patience: 0,
            select_on: SelectOn::Valid,
            eval_every: 1,
        }
    }
}

/// NeuMF pretraining (paper §3.4.1): start from a trained GMF and a trained MLP run on the same
/// data. Defaults: no pretraining, α = 0.5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// GMF run or checkpoint directory.
    pub gmf: Option<PathBuf>,
    /// MLP run or checkpoint directory.
    pub mlp: Option<PathBuf>,
    /// Weight of the GMF half in the joined output layer.
    pub alpha: f64,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self { gmf: None, mlp: None, alpha: 0.5 }
    }
}

/// Everything a training run needs; saved as `config.toml` in the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The one seed every random choice flows from.
    pub seed: u64,
    pub data: DataConfig,
    pub split: SplitConfig,
    pub sampler: SamplerConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub train: TrainConfig,
    /// Settings of the losses over batch-shared negatives (`train.loss` picks the loss).
    pub loss: LossConfig,
    pub pretrain: PretrainConfig,
    /// Side features of users and items (files and how their columns are encoded).
    pub features: ncf_datasets::FeaturesConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            data: DataConfig::default(),
            split: SplitConfig::default(),
            sampler: SamplerConfig::default(),
            model: ModelConfig::default(),
            optim: OptimConfig::default(),
            train: TrainConfig::default(),
            loss: LossConfig::default(),
            pretrain: PretrainConfig::default(),
            features: Default::default(),
        }
    }
}

impl RunConfig {
    /// Defaults, overlaid with `file` (if any), then with `key=value` overrides.
    pub fn resolve(file: Option<&Path>, sets: &[String]) -> Result<Self> {
        let mut value = toml::Table::try_from(RunConfig::default()).expect("defaults serialize");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
            let table: toml::Table = text.parse().with_context(|| format!("parsing config {}", path.display()))?;
            merge(&mut value, table);
            // The file alone first, so that its errors name it.
            let _: RunConfig = value.clone().try_into().with_context(|| format!("{}: invalid configuration", path.display()))?;
        }
        for set in sets {
            let (key, raw) = split_set(set).with_context(|| format!("--set {set:?}: expected section.key=value"))?;
            set_path(&mut value, key, parse_value(raw)).with_context(|| format!("--set {set:?}"))?;
        }
        let config: RunConfig = value.try_into().context("invalid configuration")?;
        config.model.validate().map_err(anyhow::Error::msg)?;
        if config.train.batch_size == 0 || config.train.log_every == 0 || config.train.eval_every == 0 {
            bail!("train.batch_size, train.log_every and train.eval_every must be at least 1");
        }
        config.check_validation()?;
        crate::history::check_metric(config.train.best_metric, config.train.full_ranking)?;
        config.loss.validate().map_err(anyhow::Error::msg)?;
        if config.train.loss.shared_only() && config.sampler.shared_negatives == 0 && !config.loss.in_batch {
            bail!(
                "train.loss = \"{}\" trains against shared negatives: set sampler.shared_negatives (e.g. 1000) or loss.in_batch = true",
                config.train.loss.name()
            );
        }
        if config.pretrain.gmf.is_some() != config.pretrain.mlp.is_some() {
            bail!("pretrain.gmf and pretrain.mlp go together: NeuMF pretraining needs both runs");
        }
        if config.pretrain.gmf.is_some() && config.model.kind != ncf_model::ModelKind::Neumf {
            bail!("[pretrain] applies to model.kind = \"neumf\" only");
        }
        Ok(config)
    }

    /// Whether the run holds out a validation split (`train.select_on = "valid"`).
    pub fn validation(&self) -> bool {
        self.train.select_on == SelectOn::Valid
    }

    /// Checks that `train.select_on` has the split it needs.
    fn check_validation(&self) -> Result<()> {
        let s = &self.split;
        if !(0.0..1.0).contains(&s.valid_ratio) {
            bail!("split.valid_ratio = {} must be at least 0 and below 1", s.valid_ratio);
        }
        match self.train.select_on {
            SelectOn::Test | SelectOn::Last if s.valid_path.is_some() => bail!(
                "split.valid_path is set but train.select_on = \"{}\" holds out no validation split; \
                 unset one of them",
                self.train.select_on.name()
            ),
            SelectOn::Last if self.train.patience > 0 => {
                bail!("train.select_on = \"last\" keeps the last epoch: train.patience (early stopping) needs a split to choose on")
            }
            SelectOn::Valid if s.valid_ratio <= 0.0 && needs_valid_ratio(s) => bail!(
                "train.select_on = \"valid\" needs a validation split, but split.valid_ratio = {} holds none out of the {} split; \
                 set split.valid_ratio > 0{}, or choose on test as the NCF paper does with train.select_on = \"test\"",
                s.valid_ratio,
                s.method.label(),
                if s.method == SplitMethod::Given { " or split.valid_path" } else { "" }
            ),
            _ => Ok(()),
        }
    }

    /// Whether the run trains against negatives shared per batch: its loss needs them (softmax,
    /// ccl) or `sampler.shared_negatives` is set; an epoch's samples are then its positives.
    pub fn shared_negatives(&self) -> bool {
        self.train.loss.shared_only() || self.sampler.shared_negatives > 0
    }

    /// Every file or directory the run reads (the data, a given split's files, pretrained runs).
    pub fn input_paths(&self) -> Vec<&Path> {
        let (d, s, p) = (&self.data, &self.split, &self.pretrain);
        [&d.path, &s.train_path, &s.test_path, &s.valid_path, &s.negatives_path, &p.gmf, &p.mlp].into_iter().flatten().map(PathBuf::as_path).collect()
    }

    /// Makes every path of [`RunConfig::input_paths`] absolute against the working directory, so
    /// that a saved `config.toml` names the same files from any directory (`--resume`,
    /// `ncf evaluate`).
    pub fn absolutize_paths(&mut self) {
        let (d, s, p, f) = (&mut self.data, &mut self.split, &mut self.pretrain, &mut self.features);
        let paths = [
            &mut d.path,
            &mut s.train_path,
            &mut s.test_path,
            &mut s.valid_path,
            &mut s.negatives_path,
            &mut p.gmf,
            &mut p.mlp,
            &mut f.user.path,
            &mut f.item.path,
        ];
        for path in paths.into_iter().flatten() {
            if let Ok(abs) = std::path::absolute(&*path) {
                *path = abs;
            }
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// Where a training run's configuration comes from, layered by [`ConfigSources::resolve`]:
/// defaults, the config file, `--set`s and shorthand flags, then the data, reader and feature
/// flags. `ncf tune` adds each trial's grid values to `sets`.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// `--config`, or the `config.toml` of the run being resumed.
    pub file: Option<PathBuf>,
    /// `--set KEY=VALUE` overrides, in order.
    pub sets: Vec<String>,
    /// Shorthand flags as (flag, key, TOML value), e.g. `("--epochs", "train.epochs", "5")`; a key
    /// also given by a `--set` is refused.
    pub shorthands: Vec<(&'static str, &'static str, String)>,
    /// `--data`.
    pub data: Option<PathBuf>,
    /// Reader flags: the format and columns given here replace the config's.
    pub read: ReadOptions,
    /// `--user-features`.
    pub user_features: Option<PathBuf>,
    /// `--item-features`.
    pub item_features: Option<PathBuf>,
    /// A resumed run, whose features may not change.
    pub resume: bool,
}

impl ConfigSources {
    /// The config file, then `--set`, then the shorthand flags, then the data, reader and
    /// feature flags.
    pub fn resolve(&self) -> Result<RunConfig> {
        let mut sets = self.sets.clone();
        for (flag, key, value) in &self.shorthands {
            // A key set twice would silently take the flag's value: refuse instead.
            if let Some(set) = self.sets.iter().find(|s| split_set(s).is_some_and(|(k, _)| k == *key)) {
                bail!("{flag} and --set {set} both set {key}: pass one of them");
            }
            sets.push(format!("{key}={value}"));
        }
        let mut config = RunConfig::resolve(self.file.as_deref(), &sets)?;
        if let Some(path) = &self.data {
            config.data.path = Some(path.clone());
        }
        for (flag, path, side) in
            [("--user-features", &self.user_features, &mut config.features.user), ("--item-features", &self.item_features, &mut config.features.item)]
        {
            if let Some(path) = path {
                if self.resume {
                    bail!("{flag}: a resumed run keeps the features it was started with");
                }
                side.path = Some(path.clone());
            }
        }
        let (read, over) = (&mut config.data.read, &self.read);
        read.format = over.format.or(read.format);
        read.user_col = over.user_col.clone().or(read.user_col.take());
        read.item_col = over.item_col.clone().or(read.item_col.take());
        read.rating_col = over.rating_col.clone().or(read.rating_col.take());
        read.time_col = over.time_col.clone().or(read.time_col.take());
        Ok(config)
    }
}

/// Whether `split`'s validation split comes from `split.valid_ratio` (leave-one-out takes the
/// second-latest interaction instead, a given split may bring its own file).
fn needs_valid_ratio(split: &SplitConfig) -> bool {
    match split.method {
        SplitMethod::LeaveOneOut => false,
        SplitMethod::Random | SplitMethod::Temporal => true,
        SplitMethod::Given => split.valid_path.is_none(),
    }
}

/// A `--set KEY=VALUE`'s key and raw value, trimmed.
pub fn split_set(set: &str) -> Option<(&str, &str)> {
    set.split_once('=').map(|(k, v)| (k.trim(), v.trim()))
}

/// A `--set` value: TOML if it parses as one (numbers, booleans, arrays), else a string.
pub(crate) fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty()).context("empty key")?;
    let mut cur = table;
    for p in parts {
        cur = match cur.entry(p.to_owned()).or_insert_with(|| toml::Value::Table(Default::default())) {
            toml::Value::Table(t) => t,
            _ => bail!("{p} is a value, not a section"),
        };
    }
    // Integers given for float fields are widened by serde; strings stay strings.
    cur.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_parsing() {
        let dir = std::env::temp_dir().join(format!("ncf-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "seed = 7\n[train]\nepochs = 3\nbatch_size = 64\n").unwrap();
        let c = RunConfig::resolve(Some(&file), &["train.epochs=5".into(), "model.kind=gmf".into(), "optim.lr=0.01".into()]).unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.train.epochs, 5);
        assert_eq!(c.train.batch_size, 64);
        assert_eq!(c.model.kind, ncf_model::ModelKind::Gmf);
        assert_eq!(c.optim.lr, 0.01);
        let err = RunConfig::resolve(None, &["train.epoch=5".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("epoch"), "{err:#}");
        let round: RunConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn best_metric_is_one_of_the_named_metrics() {
        let c = RunConfig::resolve(None, &["train.best_metric=full_ndcg".into()]).unwrap();
        assert_eq!(c.train.best_metric, crate::history::Metric::FullNdcg);
        let e = format!("{:#}", RunConfig::resolve(None, &["train.best_metric=hr@10".into()]).unwrap_err());
        assert!(e.contains("hr@10") && e.contains("full_ndcg"), "{e}");
        let e = format!("{:#}", RunConfig::resolve(None, &["train.best_metric=recall".into(), "train.full_ranking=false".into()]).unwrap_err());
        assert!(e.contains("train.full_ranking"), "{e}");
    }

    #[test]
    fn select_on_valid_needs_a_validation_split() {
        let c = RunConfig::resolve(None, &[]).unwrap();
        assert_eq!((c.train.select_on, c.train.eval_every, c.split.valid_ratio), (SelectOn::Valid, 1, 0.1));
        let err = |sets: &[&str]| RunConfig::resolve(None, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map(|_| ()).unwrap_err().to_string();
        for method in ["random", "temporal", "given"] {
            let e = err(&[&format!("split.method={method}"), "split.valid_ratio=0"]);
            assert!(e.contains("split.valid_ratio") && e.contains("train.select_on = \"test\""), "{e}");
        }
        assert!(RunConfig::resolve(None, &["split.valid_ratio=0".into()]).is_ok(), "leave-one-out needs no ratio");
        assert!(RunConfig::resolve(None, &["split.method=random".into(), "split.valid_ratio=0".into(), "train.select_on=test".into()]).is_ok());
        assert!(RunConfig::resolve(None, &["split.method=given".into(), "split.valid_ratio=0".into(), "split.valid_path=v.csv".into()]).is_ok());
        assert!(err(&["train.select_on=test", "split.valid_path=v.csv"]).contains("split.valid_path"));
        assert!(err(&["split.valid_ratio=1"]).contains("below 1"));
        assert!(err(&["train.eval_every=0"]).contains("train.eval_every"));
        assert!(format!("{:#}", RunConfig::resolve(None, &["train.select_on=train".into()]).unwrap_err()).contains("valid"));
    }

    /// Sections of the config, as keys in messages start.
    const SECTIONS: [&str; 8] = ["seed", "data", "split", "sampler", "model", "optim", "train", "pretrain"];

    /// Dotted config keys named in `text`: a section name then `.name` parts, not preceded by a
    /// character that makes it part of another word or path, and not a file name.
    fn named_keys(text: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let bytes = text.as_bytes();
        for section in SECTIONS {
            let mut from = 0;
            while let Some(at) = text[from..].find(&format!("{section}.")).map(|a| a + from) {
                from = at + 1;
                let before = at.checked_sub(1).map(|b| bytes[b]);
                if before.is_some_and(|b| b.is_ascii_alphanumeric() || b"_.-/:\\${".contains(&b)) {
                    continue;
                }
                let len = text[at..].find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')).unwrap_or(text.len() - at);
                let key = text[at..at + len].trim_end_matches('.');
                let last = key.rsplit('.').next().unwrap_or("");
                let file = ["csv", "toml", "json", "png", "safetensors", "rating", "negative", "txt", "parquet", "jsonl", "rs", "py", "sh"];
                let call = text[at + len..].starts_with('(');
                if key.contains('.') && !file.contains(&last) && !call {
                    keys.push(key.to_owned());
                }
            }
        }
        keys
    }

    /// Whether `key` names a field or section of the config.
    fn is_key(key: &str) -> bool {
        let defaults = toml::Table::try_from(RunConfig::default()).unwrap();
        let mut parts = key.split('.').peekable();
        let mut table = &defaults;
        while let Some(p) = parts.next() {
            match table.get(p) {
                Some(toml::Value::Table(t)) => table = t,
                Some(_) => return parts.peek().is_none(),
                // Optional fields are absent from the serialized defaults: setting one must parse.
                None => {
                    // (Other checks may refuse the value; only an unknown field is a wrong key.)
                    let known =
                        |v: &&str| RunConfig::resolve(None, &[format!("{key}={v}")]).map_or_else(|e| !format!("{e:#}").contains("unknown field"), |_| true);
                    return parts.peek().is_none() && ["\"x\"", "1"].iter().any(known);
                }
            }
        }
        true
    }

    /// Every config key that an error, help text, doc comment, preset, benchmark script or the
    /// README names exists.
    #[test]
    fn every_named_key_is_a_real_key() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = vec![root.join("README.md")];
        for dir in ["trainer/src", "datasets/src", "model/src", "configs", "benches"] {
            let mut stack = vec![root.join(dir)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap().flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "rs" || x == "toml" || x == "sh" || x == "md") {
                        files.push(p);
                    }
                }
            }
        }
        let mut bad = Vec::new();
        let mut checked = 0;
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            // Unit tests (at the end of a file) name wrong keys on purpose.
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            // README's bad-input table names wrong keys on purpose.
            let text = text.split("## Bad input").next().unwrap_or("");
            for (n, line) in text.lines().enumerate() {
                // Code is full of field accesses (`config.train.k`): in Rust, only comments and
                // string literals (messages, help) are read.
                let rust = f.extension().is_some_and(|x| x == "rs");
                let prose: String = if !rust || line.trim_start().starts_with("//") {
                    line.to_owned()
                } else {
                    line.split('"').skip(1).step_by(2).collect::<Vec<_>>().join(" ")
                };
                for key in named_keys(&prose) {
                    checked += 1;
                    if !is_key(&key) {
                        bad.push(format!("{}:{}: {key}", f.display(), n + 1));
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} keys found: the scan is broken");
        assert!(bad.is_empty(), "names that are not config keys:\n{}", bad.join("\n"));
        // The scan itself finds a bad key.
        assert_eq!(named_keys("use data.min_user_interactions = 2"), ["data.min_user_interactions"]);
        assert!(!is_key("data.min_user_interactions") && is_key("data.clean.min_user_interactions") && is_key("data.path"));
    }

    #[test]
    fn every_preset_resolves() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunConfig::resolve(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 10, "{n} presets");
    }
}

//! The resolved run configuration: one serde struct per concern, nested under [`RunConfig`].
//! Precedence: `--set` and flags > `--config` file > defaults.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ncf_datasets::{CleanConfig, DemoConfig, ReadOptions, SamplerConfig, SplitConfig};
use ncf_model::{ModelConfig, OptimConfig};
use serde::{Deserialize, Serialize};

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

/// Training loop settings. Defaults: 10 epochs, batch 256, evaluation at K = 10 against 100
/// sampled negatives and over the full catalogue, loss read back every 50 steps, best checkpoint
/// on HR@K, no early stopping.
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
    /// Pointwise BCE (paper) or pairwise BPR.
    pub loss: ncf_model::LossKind,
    /// Metric choosing `best/` and driving early stopping: hr, ndcg (sampled) or recall,
    /// precision, full_ndcg, map (full ranking), all at K.
    pub best_metric: String,
    /// Stop after this many epochs without a better `best_metric` (0 = run every epoch).
    pub patience: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { epochs: 10, batch_size: 256, k: 10, eval_negatives: 100, log_every: 50, full_ranking: true, loss: ncf_model::LossKind::Bce, best_metric: "hr".into(), patience: 0 }
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
    pub pretrain: PretrainConfig,
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
            pretrain: PretrainConfig::default(),
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
        }
        for set in sets {
            let (key, raw) = set.split_once('=').with_context(|| format!("--set {set:?}: expected section.key=value"))?;
            set_path(&mut value, key.trim(), parse_value(raw.trim()))
                .with_context(|| format!("--set {set:?}"))?;
        }
        let config: RunConfig = value.try_into().context("invalid configuration")?;
        config.model.validate().map_err(anyhow::Error::msg)?;
        if config.train.batch_size == 0 || config.train.log_every == 0 {
            bail!("train.batch_size and train.log_every must be at least 1");
        }
        crate::history::check_metric(&config.train.best_metric, config.train.full_ranking)?;
        if config.pretrain.gmf.is_some() != config.pretrain.mlp.is_some() {
            bail!("pretrain.gmf and pretrain.mlp go together: NeuMF pretraining needs both runs");
        }
        if config.pretrain.gmf.is_some() && config.model.kind != ncf_model::ModelKind::Neumf {
            bail!("[pretrain] applies to model.kind = \"neumf\" only");
        }
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// A `--set` value: TOML if it parses as one (numbers, booleans, arrays), else a string.
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
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

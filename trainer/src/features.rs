//! Side features in a run: read beside the interactions (`--user-features`, `--item-features`),
//! handed to every training step as the rows of the batch's users and items, and composed into
//! the model for scoring (evaluation, `recommend`, `score`, exports).

use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::Device;
use ncf_datasets::{Batch, ColumnRef, IdMap, Interactions, SideFeatures};
use ncf_model::{FeatureRows, HostFeatureRows, Ncf};

use crate::config::RunConfig;

/// The run's features on each side (`None`: none on that side).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFeatures {
    pub user: Option<SideFeatures>,
    pub item: Option<SideFeatures>,
}

impl RunFeatures {
    /// Reads the configured feature files for `data`'s users and items and prints what each
    /// column became.
    pub fn load(config: &RunConfig, data: &Interactions) -> Result<Self> {
        let side = |c, ids: &IdMap, what: &str, flag| -> Result<Option<SideFeatures>> {
            let Some((side, summary, without)) = SideFeatures::load(c, ids, flag)? else { return Ok(None) };
            let columns: Vec<String> = side
                .vocab
                .columns
                .iter()
                .zip(&summary)
                .map(|(c, s)| format!("{} {}{}", c.name, c.kind.name(), if s.inferred { "" } else { " (declared)" }))
                .collect();
            say!(
                "features: {what}: {} feature rows from {} ({}); {without} of {} {what}s without a line get the unknown rows",
                side.vocab.rows,
                columns.len(),
                columns.join(", "),
                ids.len()
            );
            Ok(Some(side))
        };
        let features = Self {
            user: side(&config.features.user, &data.users, "user", "user-features")?,
            item: side(&config.features.item, &data.items, "item", "item-features")?,
        };
        if !config.model.id_embeddings && (features.user.is_none() || features.item.is_none()) {
            bail!("model.id_embeddings = false trains a pure feature model: give both --user-features and --item-features");
        }
        Ok(features)
    }

    /// Rows of each side's feature table, for [`Ncf::with_feature_tables`].
    pub fn table_rows(&self) -> (Option<usize>, Option<usize>) {
        (self.user.as_ref().map(|s| s.vocab.rows as usize), self.item.as_ref().map(|s| s.vocab.rows as usize))
    }

    /// The model `config` describes, with this run's feature tables.
    pub fn init_model(&self, config: &RunConfig, n_users: usize, n_items: usize, device: &Device) -> Ncf {
        Ncf::init(&config.model, n_users, n_items, config.seed, device).with_feature_tables(config.model.init_std, self.table_rows(), config.seed)
    }

    /// The feature rows of a batch's unique users and items.
    pub fn batch(&self, batch: &Batch, device: &Device) -> (Option<FeatureRows>, Option<FeatureRows>) {
        let side = |s: &Option<SideFeatures>, ids: &[i32]| s.as_ref().map(|s| rows_of(s, ids.iter().map(|&i| i as usize)).to_device(device));
        (side(&self.user, batch.uniq_users()), side(&self.item, batch.uniq_items()))
    }

    /// These features with users the run never saw appended after its `n` users (dense ids `n`,
    /// `n + 1`, …), encoded from `path` with the run's user encoding: those of `raw` that have a
    /// line there, returned in that order.
    pub fn with_new_users(&self, path: &Path, key: Option<&str>, raw: &[&str]) -> Result<(RunFeatures, Vec<String>)> {
        let Some(side) = &self.user else {
            bail!("--user-features: the checkpoint was trained without user features; retrain with --user-features to score new users from them")
        };
        let key = key.map(|k| k.parse::<ColumnRef>().expect("infallible"));
        let table = ncf_datasets::table::read_keyed_with(path, key.as_ref(), &[], ["user-features", "user-features"])?;
        let trained: Vec<&str> = side.vocab.columns.iter().map(|c| c.name.as_str()).collect();
        if table.names != trained {
            bail!(
                "{}: columns {} but the checkpoint's user features were fitted on columns {}; give a file with the training file's columns",
                path.display(),
                table.names.join(", "),
                trained.join(", ")
            );
        }
        let mut extended = side.clone();
        let mut found = Vec::new();
        let e = &mut extended.entities;
        for &r in raw {
            let Some(values) = table.get(r) else { continue };
            for (row, w) in side.vocab.encode(Some(values)) {
                e.rows.push(row);
                e.weights.push(w);
            }
            e.offsets.push(e.rows.len() as u32);
            found.push(r.to_owned());
        }
        Ok((RunFeatures { user: Some(extended), item: self.item.clone() }, found))
    }

    /// `model` with every entity's features composed into its row, as scoring sees it.
    pub fn compose(&self, model: &Ncf) -> Ncf {
        if self.user.is_none() && self.item.is_none() {
            return model.clone();
        }
        let device = model.user.val().device();
        let all = |s: &Option<SideFeatures>| s.as_ref().map(|s| rows_of(s, 0..s.entities.len()).to_device(&device));
        model.compose_features(all(&self.user).as_ref(), all(&self.item).as_ref())
    }
}

/// The feature rows of `entities` (dense ids) of one side.
pub fn rows_of(side: &SideFeatures, entities: impl IntoIterator<Item = usize>) -> HostFeatureRows {
    let e = &side.entities;
    HostFeatureRows::gather(entities, &e.offsets, &e.rows, &e.weights, side.vocab.rows as usize)
}

//! Side features of users or items (age band, region, category, genre flags, price): a keyed
//! table turned into rows of one feature embedding table per side. Each column gets its own
//! range of rows: categorical and bucketed numeric columns one row per value plus a reserved
//! "unknown" row (unseen categories, missing values, entities without a line in the file);
//! multi-hot columns (`a|b|c`) and 0/1 flag columns one row per value, averaged.
//!
//! An entity's feature vector is then the weighted sum of its rows: weight 1 for a categorical
//! or numeric column, 1/k for each of the k values of a multi-hot column, and 1/k for each of the
//! k flags set among a file's flag columns (their mean, like a multi-hot column spread over
//! several columns, as MovieLens `u.item` writes its 19 genres).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use crate::ColumnRef;
use crate::error::DataError;
use crate::interactions::IdMap;
use crate::table::{KeyedTable, read_keyed_with};

/// How a column becomes feature rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// One value per entity: one row per distinct value, plus "unknown".
    Categorical,
    /// Several values per entity separated by `FeatureConfig::separator`: one row per value,
    /// averaged.
    MultiHot,
    /// A number, cut into quantile buckets fitted on the file: one row per bucket, plus "unknown".
    Numeric,
    /// 0 or 1: one row, set when 1; the flags set on an entity are averaged together.
    Flag,
    /// Left out (e.g. an identifier-like column: a title, a URL, a zip code).
    Skip,
}

impl FeatureKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Categorical => "categorical",
            Self::MultiHot => "multi-hot",
            Self::Numeric => "numeric",
            Self::Flag => "flag",
            Self::Skip => "skipped",
        }
    }
}

/// How a feature file is read. Columns not declared in `columns` are inferred.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConfig {
    /// The feature file (CSV/TSV/`|`/`::`-separated, with or without a header); `None`: no
    /// features on this side.
    pub path: Option<PathBuf>,
    /// Key column (the user or item id): a name or a 0-based index; default an id-like name,
    /// else the first column.
    pub key: Option<String>,
    /// Declared kinds by column name (0-based index as a string for files without a header).
    pub columns: BTreeMap<String, FeatureKind>,
    /// Quantile buckets of a numeric column.
    pub buckets: usize,
    /// Separator of a multi-hot column's values.
    pub separator: String,
    /// An inferred categorical column with more distinct values than this share of the rows is
    /// identifier-like and skipped (declare it `categorical` to keep it).
    pub max_distinct_share: f64,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self { path: None, key: None, columns: BTreeMap::new(), buckets: 10, separator: "|".into(), max_distinct_share: 0.5 }
    }
}

/// Side features of both sides (`[features.user]`, `[features.item]`); none by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesConfig {
    pub user: FeatureConfig,
    pub item: FeatureConfig,
}

/// A side's features as a run uses them: the encoding fitted on its file and every entity's
/// rows, entities in dense-id order.
#[derive(Debug, Clone, PartialEq)]
pub struct SideFeatures {
    pub vocab: FeatureVocab,
    pub entities: EntityFeatures,
}

impl SideFeatures {
    /// Reads `config.path`, fits its encoding and encodes every entity of `ids`. Also returns
    /// the column summary and how many entities had no line in the file. `flag` names the
    /// command-line flag of the file in messages (e.g. `user-features`).
    pub fn load(config: &FeatureConfig, ids: &IdMap, flag: &'static str) -> Result<Option<(Self, Vec<ColumnSummary>, usize)>, DataError> {
        let Some(path) = &config.path else { return Ok(None) };
        let key = config.key.as_deref().map(|k| k.parse::<ColumnRef>().expect("infallible"));
        let table = read_keyed_with(path, key.as_ref(), &[], [flag, flag])?;
        if table.names.is_empty() {
            return Err(DataError::Parse {
                path: path.clone(),
                message: "no columns besides the key; a feature file needs a key column and at least one attribute column".into(),
            });
        }
        for name in config.columns.keys() {
            if !table.names.contains(name) {
                return Err(DataError::MissingColumn {
                    path: path.clone(),
                    column: name.clone(),
                    flag: "set features.*.columns",
                    available: table.names.join(", "),
                });
            }
        }
        let (vocab, summary) = FeatureVocab::fit(&table, config);
        let (entities, without) = vocab.encode_all(&table, ids);
        Ok(Some((Self { vocab, entities }, summary, without)))
    }
}

/// One column's encoding: its kind and the rows it owns, from `offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureColumn {
    pub name: String,
    pub kind: FeatureKind,
    /// Categorical and multi-hot: the values, in first-seen order (row `offset + 1 + i` for
    /// categorical, whose row `offset` is "unknown"; `offset + i` for multi-hot).
    pub values: Vec<String>,
    /// Numeric: the upper edges of the buckets but the last (row `offset + 1 + bucket`).
    pub edges: Vec<f64>,
    /// First row of the column in the side's feature table.
    pub offset: u32,
}

impl FeatureColumn {
    /// Rows the column owns.
    pub fn rows(&self) -> u32 {
        match self.kind {
            FeatureKind::Categorical => 1 + self.values.len() as u32,
            FeatureKind::MultiHot => self.values.len() as u32,
            FeatureKind::Numeric => 1 + self.edges.len() as u32 + 1,
            FeatureKind::Flag => 1,
            FeatureKind::Skip => 0,
        }
    }
}

/// A side's fitted feature encoding: kept in checkpoints so unseen entities encode the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureVocab {
    /// The file's non-key columns, in file order (skipped ones included, owning no rows).
    pub columns: Vec<FeatureColumn>,
    pub separator: String,
    /// Rows of the side's feature table.
    pub rows: u32,
}

/// Each entity's feature rows and weights, entities in dense-id order (CSR).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityFeatures {
    pub offsets: Vec<u32>,
    pub rows: Vec<u32>,
    pub weights: Vec<f32>,
}

impl EntityFeatures {
    /// Entity `e`'s (row, weight) pairs.
    pub fn of(&self, e: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (a, b) = (self.offsets[e] as usize, self.offsets[e + 1] as usize);
        self.rows[a..b].iter().copied().zip(self.weights[a..b].iter().copied())
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What fitting found, for the printed summary.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSummary {
    pub name: String,
    pub kind: FeatureKind,
    /// Whether the kind was inferred (else declared).
    pub inferred: bool,
    pub distinct: usize,
    pub missing: usize,
    /// Why an inferred column was skipped, or how a numeric one was cut.
    pub note: String,
}

/// A value that counts as missing: absent, empty, or a placeholder.
fn present(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !v.is_empty() && !matches!(*v, "NA" | "N/A" | "null" | "NULL" | "nan" | "NaN"))
}

impl FeatureVocab {
    /// Fits the encoding of `table`'s columns: declared kinds from `config`, others inferred.
    pub fn fit(table: &KeyedTable, config: &FeatureConfig) -> (Self, Vec<ColumnSummary>) {
        let mut columns = Vec::new();
        let mut summaries = Vec::new();
        let mut offset = 0u32;
        for (j, name) in table.names.iter().enumerate() {
            let values: Vec<&str> = table.column(j).filter_map(present).collect();
            let missing = table.len() - values.len();
            let distinct: HashMap<&str, ()> = values.iter().map(|&v| (v, ())).collect();
            let declared = config.columns.get(name).copied();
            let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite())).collect();
            let (kind, note) = match declared {
                Some(k) => (k, String::new()),
                None if values.is_empty() => (FeatureKind::Skip, "no values".into()),
                None if distinct.keys().all(|v| matches!(*v, "0" | "1")) => (FeatureKind::Flag, String::new()),
                None if numbers.is_some() && distinct.len() > 2 * config.buckets => (FeatureKind::Numeric, String::new()),
                None if values.iter().any(|v| v.contains(config.separator.as_str())) => (FeatureKind::MultiHot, String::new()),
                None if distinct.len() as f64 > config.max_distinct_share * table.len() as f64 && distinct.len() > 20 => (
                    FeatureKind::Skip,
                    format!("identifier-like: {} distinct values in {} rows; declare it categorical to keep it", distinct.len(), table.len()),
                ),
                None => (FeatureKind::Categorical, String::new()),
            };
            let mut column = FeatureColumn { name: name.clone(), kind, values: Vec::new(), edges: Vec::new(), offset };
            let mut note = note;
            match kind {
                FeatureKind::Categorical => column.values = first_seen(values.iter().copied()),
                FeatureKind::MultiHot => {
                    column.values = first_seen(values.iter().flat_map(|v| v.split(config.separator.as_str()).map(str::trim).filter(|s| !s.is_empty())))
                }
                FeatureKind::Numeric => {
                    let mut xs: Vec<f64> = values.iter().filter_map(|v| v.parse::<f64>().ok()).filter(|x| x.is_finite()).collect();
                    xs.sort_by(f64::total_cmp);
                    column.edges = quantile_edges(&xs, config.buckets);
                    note = format!("{} buckets by quantile", column.edges.len() + 1);
                }
                FeatureKind::Flag | FeatureKind::Skip => {}
            }
            offset += column.rows();
            summaries.push(ColumnSummary { name: name.clone(), kind, inferred: declared.is_none(), distinct: distinct.len(), missing, note });
            columns.push(column);
        }
        (Self { columns, separator: config.separator.clone(), rows: offset }, summaries)
    }

    /// One entity's (row, weight) pairs from its non-key values (`None`: no line in the file).
    pub fn encode(&self, values: Option<&[Option<String>]>) -> Vec<(u32, f32)> {
        let value = |j: usize| values.and_then(|v| present(v.get(j)?.as_deref()));
        let mut out = Vec::new();
        let mut flags = Vec::new();
        for (j, c) in self.columns.iter().enumerate() {
            match c.kind {
                FeatureKind::Categorical => {
                    let at = value(j).and_then(|v| c.values.iter().position(|x| x == v)).map_or(0, |i| 1 + i as u32);
                    out.push((c.offset + at, 1.0));
                }
                FeatureKind::Numeric => {
                    let at =
                        value(j).and_then(|v| v.parse::<f64>().ok()).filter(|x| x.is_finite()).map_or(0, |x| 1 + c.edges.partition_point(|&e| e < x) as u32);
                    out.push((c.offset + at, 1.0));
                }
                FeatureKind::MultiHot => {
                    let hits: Vec<u32> = value(j)
                        .map(|v| {
                            v.split(self.separator.as_str()).filter_map(|s| c.values.iter().position(|x| x == s.trim())).map(|i| c.offset + i as u32).collect()
                        })
                        .unwrap_or_default();
                    let w = 1.0 / hits.len().max(1) as f32;
                    out.extend(hits.into_iter().map(|r| (r, w)));
                }
                FeatureKind::Flag => {
                    if value(j) == Some("1") {
                        flags.push(c.offset);
                    }
                }
                FeatureKind::Skip => {}
            }
        }
        let w = 1.0 / flags.len().max(1) as f32;
        out.extend(flags.into_iter().map(|r| (r, w)));
        out
    }

    /// Every entity of `ids` (in dense order) encoded from `table`; entities without a line get
    /// the unknown rows. Returns the features and how many entities had no line.
    pub fn encode_all(&self, table: &KeyedTable, ids: &IdMap) -> (EntityFeatures, usize) {
        let mut f = EntityFeatures { offsets: vec![0], ..Default::default() };
        let mut without = 0;
        for raw in ids.raw_ids() {
            let values = table.get(raw);
            without += usize::from(values.is_none());
            for (r, w) in self.encode(values) {
                f.rows.push(r);
                f.weights.push(w);
            }
            f.offsets.push(f.rows.len() as u32);
        }
        (f, without)
    }
}

/// Distinct values in first-seen order.
fn first_seen<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for v in values {
        if seen.insert(v, ()).is_none() {
            out.push(v.to_owned());
        }
    }
    out
}

/// Upper edges of up to `buckets` quantile buckets of sorted `xs` (distinct, so equal values
/// share a bucket); a value `x` falls in bucket `edges.partition_point(|e| e < x)`.
fn quantile_edges(xs: &[f64], buckets: usize) -> Vec<f64> {
    let mut edges: Vec<f64> = (1..buckets.max(1)).map(|b| xs[(b * xs.len() / buckets).min(xs.len() - 1)]).collect();
    edges.dedup();
    if edges.last() == xs.last() {
        edges.pop();
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> KeyedTable {
        let dir = std::env::temp_dir().join(format!("ncf-features-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("t{}.csv", fnv(text)));
        std::fs::write(&p, text).unwrap();
        crate::table::read_keyed(&p, None, &[]).unwrap()
    }

    fn fnv(s: &str) -> u64 {
        s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    }

    #[test]
    fn kinds_are_inferred_and_encoded_with_unknown_rows() {
        // 30 users: age (numeric), segment (categorical), tags (multi-hot), two flags, an id-like column.
        let mut text = String::from("user,age,segment,tags,vip,new,email\n");
        for u in 0..30 {
            let tags = ["a|b", "b", "c|a|b", ""][u % 4];
            text += &format!("u{u},{},{},{tags},{},{},x{u}@example.com\n", 18 + u * 2, ["s1", "s2", "s3"][u % 3], u % 2, u32::from(u % 5 == 0));
        }
        let t = table(&text);
        let (vocab, summary) = FeatureVocab::fit(&t, &FeatureConfig { buckets: 4, ..Default::default() });
        let kinds: Vec<(&str, FeatureKind)> = vocab.columns.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        use FeatureKind::*;
        assert_eq!(kinds, [("age", Numeric), ("segment", Categorical), ("tags", MultiHot), ("vip", Flag), ("new", Flag), ("email", Skip)]);
        assert!(summary[5].note.contains("identifier-like"), "{:?}", summary[5]);
        assert_eq!(summary[2].missing, 7, "empty tags count as missing");
        // Rows: age 1 + 4 buckets, segment 1 + 3, tags 3, vip 1, new 1.
        assert_eq!(vocab.rows, 5 + 4 + 3 + 1 + 1);
        let age = &vocab.columns[0];
        assert_eq!(age.edges.len(), 3);

        let row = |u: usize| t.get(&format!("u{u}"));
        // u0: age 18 (first bucket), s1, tags a|b (0.5 each), vip 0, new 1 (the only flag: weight 1).
        let e = vocab.encode(row(0));
        assert_eq!(e, vec![(1, 1.0), (5 + 1, 1.0), (9, 0.5), (10, 0.5), (13, 1.0)]);
        // u5: vip 1 and new 1: each flag at 0.5.
        let e5 = vocab.encode(row(5));
        assert_eq!(e5[e5.len() - 2..], [(12, 0.5), (13, 0.5)]);
        // No line: the unknown rows of the numeric and categorical columns, nothing else.
        assert_eq!(vocab.encode(None), vec![(0, 1.0), (5, 1.0)]);
        // Unseen values map to unknown; numbers past the edges to the last bucket.
        let unseen = vec![Some("1000".to_owned()), Some("s9".into()), Some("zzz".into()), None, None, None];
        assert_eq!(vocab.encode(Some(&unseen)), vec![(4, 1.0), (5, 1.0)]);

        let ids = IdMap::from_raw(vec!["u1".into(), "nobody".into(), "u0".into()]);
        let (all, without) = vocab.encode_all(&t, &ids);
        assert_eq!((all.len(), without), (3, 1));
        assert_eq!(all.of(2).collect::<Vec<_>>(), e);
        assert_eq!(all.of(1).collect::<Vec<_>>(), vocab.encode(None));

        // Declared kinds win; the vocabulary round-trips through serde (checkpoints keep it).
        let mut config = FeatureConfig::default();
        config.columns.insert("email".into(), Categorical);
        config.columns.insert("age".into(), Skip);
        let (declared, _) = FeatureVocab::fit(&t, &config);
        assert_eq!((declared.columns[0].kind, declared.columns[5].kind, declared.columns[5].values.len()), (Skip, Categorical, 30));
        let back: FeatureVocab = serde_json::from_str(&serde_json::to_string(&declared).unwrap()).unwrap();
        assert_eq!(back, declared);
    }

    #[test]
    fn quantile_edges_split_evenly_and_merge_ties() {
        let xs: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(quantile_edges(&xs, 4), vec![25.0, 50.0, 75.0]);
        let ties = [1.0, 1.0, 1.0, 1.0, 2.0, 3.0];
        assert_eq!(quantile_edges(&ties, 3), vec![1.0, 2.0]);
        assert_eq!(quantile_edges(&[5.0; 8], 4), Vec::<f64>::new(), "one value: one bucket");
    }
}

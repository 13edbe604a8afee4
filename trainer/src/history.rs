//! Per-epoch metrics of a run: kept in every checkpoint (so `--resume` continues the same
//! `metrics.csv` and curves) and written as `RUN/metrics.csv`.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Full-ranking metrics at K over all items, the user's earlier items masked (training items for
/// validation; training and validation items for test).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FullMetrics {
    pub recall: f64,
    pub precision: f64,
    pub ndcg: f64,
    pub map: f64,
    /// Share of the catalogue appearing in some user's top K.
    pub coverage: f64,
}

/// One split's metrics at one epoch: sampled HR/NDCG and optional full-ranking metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub hr: f64,
    pub ndcg: f64,
    pub full: Option<FullMetrics>,
}

impl Metrics {
    /// A metric by its short name ([`Metric::name`], or `coverage`); `None` when not computed.
    pub fn get(&self, name: &str) -> Option<f64> {
        let f = self.full;
        match name {
            "hr" => Some(self.hr),
            "ndcg" => Some(self.ndcg),
            "recall" => f.map(|f| f.recall),
            "precision" => f.map(|f| f.precision),
            "full_ndcg" => f.map(|f| f.ndcg),
            "map" => f.map(|f| f.map),
            "coverage" => f.map(|f| f.coverage),
            _ => None,
        }
    }

    /// The metrics as the per-epoch log line shows them.
    pub fn brief(&self, k: usize) -> String {
        let full = self.full.map_or(String::new(), |f| format!("  full: Recall@{k} {:.4}  NDCG@{k} {:.4}  cov {:.3}", f.recall, f.ndcg, f.coverage));
        format!("HR@{k} {:.4}  NDCG@{k} {:.4}{full}", self.hr, self.ndcg)
    }
}

/// The split that chooses `best/`, drives early stopping and that `train.best_metric` is read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SelectOn {
    /// The validation split (held out from training; test stays untouched by every choice).
    #[default]
    Valid,
    /// The test split, as the NCF paper does; no validation split is carved.
    Test,
    /// No choice: no validation split is carved and `best/` is the last epoch, so the number of
    /// epochs, fixed in advance (e.g. read off a validation run), is the only choice; for
    /// retraining on all the training data once it is made.
    Last,
}

impl SelectOn {
    /// The name used in configs, `metrics.csv` and column prefixes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Test => "test",
            Self::Last => "last",
        }
    }
}

/// One epoch: mean training loss and, on evaluated epochs, test and validation metrics.
/// The test fields keep the names and layout of checkpoints written before validation existed,
/// so their histories still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    /// Test sampled HR@K (`None`: the epoch was not evaluated).
    pub hr: Option<f64>,
    /// Test sampled NDCG@K.
    pub ndcg: Option<f64>,
    /// Test full-ranking metrics.
    pub full: Option<FullMetrics>,
    /// Validation metrics (`None`: not evaluated, or no validation split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<Metrics>,
    pub seconds: f64,
}

/// A metric a run selects its best checkpoint and stops early on (`train.best_metric`), at K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Hit ratio among the sampled candidates.
    #[default]
    Hr,
    /// NDCG among the sampled candidates.
    Ndcg,
    /// Full ranking: held-out items in the top K over all held-out items.
    Recall,
    /// Full ranking: held-out items in the top K over K.
    Precision,
    /// Full ranking: NDCG.
    FullNdcg,
    /// Full ranking: mean average precision.
    Map,
}

impl Metric {
    pub const ALL: [Metric; 6] = [Self::Hr, Self::Ndcg, Self::Recall, Self::Precision, Self::FullNdcg, Self::Map];

    /// The name in configs, `metrics.csv` columns and [`Metrics::get`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Hr => "hr",
            Self::Ndcg => "ndcg",
            Self::Recall => "recall",
            Self::Precision => "precision",
            Self::FullNdcg => "full_ndcg",
            Self::Map => "map",
        }
    }

    /// Whether the sampled evaluation computes it; the others need `train.full_ranking`.
    pub fn sampled(self) -> bool {
        matches!(self, Self::Hr | Self::Ndcg)
    }
}

impl EpochRecord {
    /// An epoch's record; `test` is `None` on epochs not evaluated.
    pub fn new(epoch: usize, loss: f64, valid: Option<Metrics>, test: Option<Metrics>, seconds: f64) -> Self {
        Self { epoch, loss, hr: test.map(|t| t.hr), ndcg: test.map(|t| t.ndcg), full: test.and_then(|t| t.full), valid, seconds }
    }

    /// The test metrics, if the epoch was evaluated.
    pub fn test(&self) -> Option<Metrics> {
        Some(Metrics { hr: self.hr?, ndcg: self.ndcg?, full: self.full })
    }

    /// The metrics of split `on`, if computed this epoch.
    pub fn on(&self, on: SelectOn) -> Option<Metrics> {
        match on {
            SelectOn::Valid => self.valid,
            // Last reads test only to report it: nothing is chosen on it.
            SelectOn::Test | SelectOn::Last => self.test(),
        }
    }

    /// Metrics named like `valid_hr@10` and `test_hr@10` (and `loss`), for `checkpoint.json`.
    pub fn named(&self, k: usize) -> HashMap<String, f64> {
        let mut out = HashMap::from([("loss".to_owned(), self.loss)]);
        for on in [SelectOn::Valid, SelectOn::Test] {
            let Some(m) = self.on(on) else { continue };
            for name in Metric::ALL.iter().map(|m| m.name()).chain(["coverage"]) {
                if let Some(v) = m.get(name) {
                    out.insert(format!("{}_{}", on.name(), label(name, k)), v);
                }
            }
        }
        out
    }
}

/// `hr` → `hr@10`; the loss has no cutoff.
pub fn label(name: &str, k: usize) -> String {
    if name == "loss" { name.to_owned() } else { format!("{name}@{k}") }
}

/// Checks that the run computes its `train.best_metric`.
pub fn check_metric(metric: Metric, full_ranking: bool) -> Result<()> {
    if !full_ranking && !metric.sampled() {
        bail!("train.best_metric = {:?} is a full-ranking metric but train.full_ranking is false", metric.name());
    }
    Ok(())
}

/// Where the best epoch is and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Best {
    pub epoch: usize,
    pub value: f64,
}

/// The best evaluated epoch of `history` on `metric` of split `on` (first of equals), if any;
/// epochs not evaluated are never best.
pub fn best(history: &[EpochRecord], metric: Metric, on: SelectOn) -> Option<Best> {
    let metric = metric.name();
    if on == SelectOn::Last {
        // The last evaluated epoch, whatever its value.
        return history.iter().rev().find_map(|r| r.on(on).and_then(|m| m.get(metric)).map(|value| Best { epoch: r.epoch, value }));
    }
    history.iter().fold(None, |best: Option<Best>, r| {
        let Some(v) = r.on(on).and_then(|m| m.get(metric)) else { return best };
        match best {
            Some(b) if b.value >= v => Some(b),
            _ => Some(Best { epoch: r.epoch, value: v }),
        }
    })
}

/// Early stopping: true when `epoch` comes `patience` epochs (0 = never) after the best one.
pub fn should_stop(history: &[EpochRecord], metric: Metric, on: SelectOn, patience: usize, epoch: usize) -> bool {
    patience > 0 && on != SelectOn::Last && best(history, metric, on).is_some_and(|b| epoch >= b.epoch + patience)
}

/// Whether to evaluate after `epoch`: every `every` epochs, at the last one, and wherever
/// early stopping would stop without a better result now.
pub fn evaluate_at(history: &[EpochRecord], epoch: usize, last: usize, every: usize, stop: (Metric, SelectOn, usize)) -> bool {
    epoch.is_multiple_of(every.max(1)) || epoch >= last || should_stop(history, stop.0, stop.1, stop.2, epoch)
}

/// The metrics of both splits, in `metrics.csv`'s column order.
const COLUMNS: [&str; 7] = ["hr", "ndcg", "recall", "precision", "full_ndcg", "map", "coverage"];

/// `metrics.csv`: one row per epoch; `valid_` then `test_` metric columns named like
/// `valid_hr@10`, empty where not computed; the protocol and the split choices were made on.
pub fn csv(history: &[EpochRecord], k: usize, protocol: &str, selected_on: SelectOn) -> String {
    let sides = [SelectOn::Valid, SelectOn::Test];
    let metrics = sides.iter().flat_map(|on| COLUMNS.iter().map(move |m| format!("{}_{m}@{k}", on.name())));
    let header = ["epoch".to_owned(), "loss".into()].into_iter().chain(metrics).chain(["protocol".into(), "selected_on".into(), "seconds".into()]);
    let rows = history.iter().map(|r| {
        let cells = sides.iter().flat_map(|&on| {
            let m = r.on(on);
            COLUMNS.iter().map(move |name| m.and_then(|m| m.get(name)).map_or(String::new(), |v| format!("{v:.6}")))
        });
        [r.epoch.to_string(), format!("{:.6}", r.loss)]
            .into_iter()
            .chain(cells)
            .chain([protocol.to_owned(), selected_on.name().to_owned(), format!("{:.3}", r.seconds)])
            .collect::<Vec<String>>()
    });
    crate::export::csv_string(std::iter::once(header.collect()).chain(rows))
}

/// Reads a `metrics.csv` back: its epochs and K. Also reads the layout written before validation
/// existed (`hr@10`... without a split prefix, all test metrics). A cell left empty is a metric
/// not computed that epoch.
pub fn parse_csv(text: &str) -> Result<(Vec<EpochRecord>, usize)> {
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(epoch_col), Some(loss_col)) = (col("epoch"), col("loss")) else { bail!("no epoch and loss columns") };
    let k = header.iter().find_map(|h| h.rsplit_once('@').and_then(|(_, k)| k.parse().ok())).unwrap_or(10);
    // Column of split `on`'s metric `name` (test metrics may carry no prefix).
    let find = |on: SelectOn, name: &str| {
        let label = label(name, k);
        col(&format!("{}_{label}", on.name())).or_else(|| (on == SelectOn::Test).then(|| col(&label)).flatten())
    };
    let sides = [SelectOn::Valid, SelectOn::Test].map(|on| COLUMNS.map(|name| find(on, name)));
    let seconds_col = col("seconds");
    let mut history = Vec::new();
    for (line, row) in reader.records().enumerate() {
        let row = row?;
        let num = |c: Option<usize>| c.and_then(|c| row.get(c)).filter(|v| !v.is_empty()).map(|v| v.parse::<f64>()).transpose();
        let bad = |what: &str| anyhow::anyhow!("line {}: {what} is not a number", line + 2);
        let epoch = row.get(epoch_col).and_then(|v| v.parse().ok()).ok_or_else(|| bad("epoch"))?;
        let loss = num(Some(loss_col)).map_err(|_| bad("loss"))?.unwrap_or(f64::NAN);
        let mut metrics = [None, None];
        for (m, cols) in metrics.iter_mut().zip(&sides) {
            let v: Vec<Option<f64>> = cols.iter().map(|&c| num(c)).collect::<Result<_, _>>().map_err(|_| bad("a metric"))?;
            let full = match (v[2], v[3], v[4], v[5], v[6]) {
                (Some(recall), Some(precision), Some(ndcg), Some(map), coverage) => {
                    Some(FullMetrics { recall, precision, ndcg, map, coverage: coverage.unwrap_or(f64::NAN) })
                }
                _ => None,
            };
            *m = v[0].zip(v[1]).map(|(hr, ndcg)| Metrics { hr, ndcg, full });
        }
        let seconds = num(seconds_col).map_err(|_| bad("seconds"))?.unwrap_or(f64::NAN);
        history.push(EpochRecord::new(epoch, loss, metrics[0], metrics[1], seconds));
    }
    Ok((history, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(hr: f64) -> Metrics {
        Metrics { hr, ndcg: hr / 2.0, full: None }
    }

    /// Validation HR `valid`, test HR `test`; `None` for an epoch not evaluated.
    fn rec(epoch: usize, scores: Option<(f64, f64)>) -> EpochRecord {
        EpochRecord::new(epoch, 0.5, scores.map(|s| m(s.0)), scores.map(|s| m(s.1)), 1.0)
    }

    #[test]
    fn best_and_early_stopping_read_the_selected_split() {
        let h: Vec<_> = [(0.1, 0.4), (0.3, 0.1), (0.3, 0.2), (0.2, 0.5), (0.25, 0.1)].iter().enumerate().map(|(i, &v)| rec(i + 1, Some(v))).collect();
        assert_eq!(best(&h, Metric::Hr, SelectOn::Valid), Some(Best { epoch: 2, value: 0.3 }));
        assert_eq!(best(&h, Metric::Hr, SelectOn::Test), Some(Best { epoch: 4, value: 0.5 }));
        assert_eq!(best(&h, Metric::Hr, SelectOn::Last).map(|b| b.epoch), h.iter().rev().find(|r| r.hr.is_some()).map(|r| r.epoch));
        assert!(!should_stop(&h, Metric::Hr, SelectOn::Last, 1, 100));
        let stop = |h: &[EpochRecord], p: usize| should_stop(h, Metric::Hr, SelectOn::Valid, p, h.last().unwrap().epoch);
        assert!(!stop(&h, 0));
        assert!(stop(&h, 3));
        assert!(!stop(&h, 4));
        assert!(!stop(&h[..2], 1));
        assert_eq!(best(&h, Metric::Recall, SelectOn::Valid), None, "not computed");
        assert!(check_metric(Metric::Recall, false).is_err());
        assert!(check_metric(Metric::Ndcg, false).is_ok());
    }

    #[test]
    fn epochs_not_evaluated_are_never_best_and_patience_counts_epochs() {
        let h = vec![rec(1, None), rec(2, Some((0.2, 0.2))), rec(3, None), rec(4, Some((0.1, 0.3))), rec(5, None)];
        assert_eq!(best(&h, Metric::Hr, SelectOn::Valid), Some(Best { epoch: 2, value: 0.2 }));
        assert_eq!(best(&h[..1], Metric::Hr, SelectOn::Valid), None);
        // every 2 epochs, 7 in all, patience 3: epoch 5 is evaluated because it would stop there.
        let at = |e: usize| evaluate_at(&h[..e - 1], e, 7, 2, (Metric::Hr, SelectOn::Valid, 3));
        assert_eq!((1..=5).map(at).collect::<Vec<_>>(), [false, true, false, true, true]);
        assert!(evaluate_at(&h, 7, 7, 5, (Metric::Hr, SelectOn::Valid, 0)), "the last epoch");
        assert!(should_stop(&h, Metric::Hr, SelectOn::Valid, 3, 5));
    }

    #[test]
    fn csv_names_valid_and_test_columns_apart() {
        let h = vec![rec(1, Some((0.3, 0.4))), rec(2, None)];
        let text = csv(&h, 10, "sampled", SelectOn::Valid);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("epoch,loss,valid_hr@10,valid_ndcg@10,valid_recall@10,"), "{}", lines[0]);
        assert!(lines[0].contains(",valid_coverage@10,test_hr@10,") && lines[0].ends_with(",test_coverage@10,protocol,selected_on,seconds"), "{}", lines[0]);
        assert!(lines[1].starts_with("1,0.500000,0.300000,0.150000,,,,,,0.400000,0.200000,,"), "{}", lines[1]);
        assert!(lines[1].ends_with(",sampled,valid,1.000"));
        assert!(lines[2].starts_with("2,0.500000,,,,,,,,,,,,,,,sampled,"), "{}", lines[2]);
        assert_eq!(h[0].named(10)["valid_hr@10"], 0.3);
        assert_eq!(h[0].named(10)["test_ndcg@10"], 0.2);
    }

    #[test]
    fn csv_reads_back_and_so_does_the_layout_before_validation() {
        let full = FullMetrics { recall: 0.25, precision: 0.125, ndcg: 0.5, map: 0.0625, coverage: 0.75 };
        let h = vec![
            EpochRecord::new(1, 0.5, Some(m(0.25)), Some(Metrics { hr: 0.5, ndcg: 0.25, full: Some(full) }), 1.5),
            rec(2, None),
            EpochRecord::new(3, 0.25, None, Some(m(0.75)), 2.0),
        ];
        let (back, k) = parse_csv(&csv(&h, 20, "sampled-100 (leave-one-out)", SelectOn::Valid)).unwrap();
        assert_eq!((back, k), (h, 20));
        let old = "epoch,loss,hr@10,ndcg@10,recall@10,precision@10,full_ndcg@10,map@10,coverage@10,protocol,seconds\n\
                   1,0.400000,0.500000,0.250000,,,,,,\"sampled-99\",3.000\n";
        let (back, k) = parse_csv(old).unwrap();
        assert_eq!(k, 10);
        assert_eq!((back[0].test().unwrap().hr, back[0].valid, back[0].seconds), (0.5, None, 3.0));
        let err = parse_csv("epoch,loss\n1,x\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("loss"), "{err}");
    }

    /// Histories of checkpoints written before validation (test metrics only) still load.
    #[test]
    fn old_histories_load() {
        let old = r#"{"epoch":3,"loss":0.3,"hr":0.5,"ndcg":0.25,"full":{"recall":0.1,"precision":0.05,"ndcg":0.2,"map":0.04,"coverage":0.3},"seconds":2.0}"#;
        let r: EpochRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.test().unwrap().hr, r.valid, r.full.unwrap().map), (0.5, None, 0.04));
        let back: EpochRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}

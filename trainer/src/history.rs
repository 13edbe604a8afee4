//! Per-epoch metrics of a run: kept in every checkpoint (so `--resume` continues the same
//! `metrics.csv` and curves) and written as `RUN/metrics.csv`.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Full-ranking metrics at K over all items, training items masked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FullMetrics {
    pub recall: f64,
    pub precision: f64,
    pub ndcg: f64,
    pub map: f64,
    /// Share of the catalogue appearing in some user's top K.
    pub coverage: f64,
}

/// One epoch: mean training loss, sampled HR/NDCG and optional full-ranking metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub hr: f64,
    pub ndcg: f64,
    pub full: Option<FullMetrics>,
    pub seconds: f64,
}

/// The metrics a run can select its best checkpoint and stop early on.
pub const SELECTABLE: [&str; 6] = ["hr", "ndcg", "recall", "precision", "full_ndcg", "map"];

impl EpochRecord {
    /// A metric by its short name (see [`SELECTABLE`]); `None` when the run did not compute it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let f = self.full;
        match name {
            "hr" => Some(self.hr),
            "ndcg" => Some(self.ndcg),
            "recall" => f.map(|f| f.recall),
            "precision" => f.map(|f| f.precision),
            "full_ndcg" => f.map(|f| f.ndcg),
            "map" => f.map(|f| f.map),
            "loss" => Some(self.loss),
            _ => None,
        }
    }

    /// Metrics named like `hr@10`, for `checkpoint.json`.
    pub fn named(&self, k: usize) -> HashMap<String, f64> {
        ["loss"].iter().chain(SELECTABLE.iter()).filter_map(|&n| self.metric(n).map(|v| (label(n, k), v))).collect()
    }
}

/// `hr` → `hr@10`; the loss has no cutoff.
pub fn label(name: &str, k: usize) -> String {
    if name == "loss" { name.to_owned() } else { format!("{name}@{k}") }
}

/// Checks a `train.best_metric` value, and that the run computes it.
pub fn check_metric(name: &str, full_ranking: bool) -> Result<()> {
    if !SELECTABLE.contains(&name) {
        bail!("train.best_metric = {name:?}: use one of {}", SELECTABLE.join(", "));
    }
    if !full_ranking && !matches!(name, "hr" | "ndcg") {
        bail!("train.best_metric = {name:?} is a full-ranking metric but train.full_ranking is false");
    }
    Ok(())
}

/// Where the best epoch is and whether training should stop early.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Best {
    pub epoch: usize,
    pub value: f64,
}

/// The best epoch of `history` on `metric` (first of equals), if any.
pub fn best(history: &[EpochRecord], metric: &str) -> Option<Best> {
    history.iter().fold(None, |best: Option<Best>, r| {
        let v = r.metric(metric).unwrap_or(f64::NEG_INFINITY);
        match best {
            Some(b) if b.value >= v => Some(b),
            _ => Some(Best { epoch: r.epoch, value: v }),
        }
    })
}

/// Early stopping: true when the last `patience` epochs brought no improvement (0 = never).
pub fn should_stop(history: &[EpochRecord], metric: &str, patience: usize) -> bool {
    match (patience, history.last(), best(history, metric)) {
        (0, _, _) | (_, None, _) | (_, _, None) => false,
        (p, Some(last), Some(b)) => last.epoch >= b.epoch + p,
    }
}

/// `metrics.csv`: one row per epoch, metric columns named like `hr@10`, the protocol in a column.
pub fn csv(history: &[EpochRecord], k: usize, protocol: &str) -> String {
    let metrics = ["hr", "ndcg", "recall", "precision", "full_ndcg", "map", "coverage"].map(|m| format!("{m}@{k}"));
    let header = ["epoch".to_owned(), "loss".into()].into_iter().chain(metrics).chain(["protocol".into(), "seconds".into()]);
    let rows = history.iter().map(|r| {
        let cell = |f: fn(&FullMetrics) -> f64| r.full.as_ref().map_or(String::new(), |m| format!("{:.6}", f(m)));
        vec![
            r.epoch.to_string(),
            format!("{:.6}", r.loss),
            format!("{:.6}", r.hr),
            format!("{:.6}", r.ndcg),
            cell(|m| m.recall),
            cell(|m| m.precision),
            cell(|m| m.ndcg),
            cell(|m| m.map),
            cell(|m| m.coverage),
            protocol.to_owned(),
            format!("{:.3}", r.seconds),
        ]
    });
    crate::export::csv_string(std::iter::once(header.collect()).chain(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, hr: f64) -> EpochRecord {
        EpochRecord { epoch, loss: 0.5, hr, ndcg: hr / 2.0, full: None, seconds: 1.0 }
    }

    #[test]
    fn best_and_early_stopping() {
        let h: Vec<_> = [0.1, 0.3, 0.3, 0.2, 0.25].iter().enumerate().map(|(i, &v)| rec(i + 1, v)).collect();
        assert_eq!(best(&h, "hr"), Some(Best { epoch: 2, value: 0.3 }));
        assert!(!should_stop(&h, "hr", 0));
        assert!(should_stop(&h, "hr", 3));
        assert!(!should_stop(&h, "hr", 4));
        assert!(!should_stop(&h[..2], "hr", 1));
        assert_eq!(best(&h, "recall").map(|b| b.epoch), Some(1));
        assert!(check_metric("recall", false).is_err());
        assert!(check_metric("hr@10", true).is_err());
        let text = csv(&h, 10, "sampled");
        assert_eq!(text.lines().count(), 6);
        assert!(text.starts_with("epoch,loss,hr@10,"));
        assert!(text.lines().nth(2).unwrap().starts_with("2,0.500000,0.300000,0.150000,,"));
    }
}

//! Ranking metrics as pure functions on one user's result (CONVENTIONS.md "Evaluation").
//! Device code computes the same quantities in bulk; these are the definitions it is tested against.

/// Rank of a test item among sampled negatives: how many negatives score at least as high
/// (ties count against the test item, so a constant model ranks last).
pub fn sampled_rank(test_score: f32, negative_scores: &[f32]) -> usize {
    negative_scores.iter().filter(|&&s| s >= test_score).count()
}

/// Hit ratio at `k` for a 0-based rank.
pub fn hit_at(rank: usize, k: usize) -> f64 {
    (rank < k) as u8 as f64
}

/// NDCG at `k` for a single relevant item at 0-based `rank`: 1 / log2(rank + 2).
pub fn ndcg_single_at(rank: usize, k: usize) -> f64 {
    if rank < k { 1.0 / ((rank + 2) as f64).log2() } else { 0.0 }
}

/// Full-ranking metrics of one user at a cutoff `k`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RankingMetrics {
    pub recall: f64,
    pub precision: f64,
    pub ndcg: f64,
    pub map: f64,
}

/// Metrics of a top-`k` list `ranked` (best first) against the user's `relevant` items.
/// Recall = hits/|relevant|, precision = hits/k, NDCG with the ideal DCG over
/// min(k, |relevant|) items, MAP@k dividing by min(k, |relevant|). `None` when nothing is relevant.
pub fn ranking_at(ranked: &[u32], relevant: &[u32], k: usize) -> Option<RankingMetrics> {
    if relevant.is_empty() || k == 0 {
        return None;
    }
    let (mut hits, mut dcg, mut ap) = (0usize, 0.0, 0.0);
    for (pos, item) in ranked.iter().take(k).enumerate() {
        if relevant.contains(item) {
            hits += 1;
            dcg += 1.0 / ((pos + 2) as f64).log2();
            ap += hits as f64 / (pos + 1) as f64;
        }
    }
    let ideal_n = k.min(relevant.len());
    let idcg: f64 = (0..ideal_n).map(|p| 1.0 / ((p + 2) as f64).log2()).sum();
    Some(RankingMetrics { recall: hits as f64 / relevant.len() as f64, precision: hits as f64 / k as f64, ndcg: dcg / idcg, map: ap / ideal_n as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_rank_counts_ties_against() {
        assert_eq!(sampled_rank(0.5, &[0.1, 0.5, 0.9]), 2);
        assert_eq!(sampled_rank(1.0, &[1.0; 100]), 100);
        assert_eq!(sampled_rank(2.0, &[1.0; 100]), 0);
    }

    #[test]
    fn hit_and_ndcg_by_hand() {
        assert_eq!(hit_at(9, 10), 1.0);
        assert_eq!(hit_at(10, 10), 0.0);
        assert_eq!(ndcg_single_at(0, 10), 1.0);
        assert!((ndcg_single_at(1, 10) - 1.0 / 3f64.log2()).abs() < 1e-12);
        assert!((ndcg_single_at(2, 10) - 0.5).abs() < 1e-12);
        assert_eq!(ndcg_single_at(10, 10), 0.0);
    }

    #[test]
    fn ranking_metrics_by_hand() {
        // Hits at positions 1 and 3 (0-based 0 and 2); 3 relevant; k = 4.
        let m = ranking_at(&[7, 1, 8, 2], &[7, 8, 9], 4).unwrap();
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.precision - 0.5).abs() < 1e-12);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!((m.ndcg - dcg / idcg).abs() < 1e-12);
        assert!((m.map - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        // Perfect list.
        let p = ranking_at(&[9, 8], &[8, 9], 2).unwrap();
        assert_eq!((p.recall, p.precision, p.ndcg, p.map), (1.0, 1.0, 1.0, 1.0));
        assert_eq!(ranking_at(&[1], &[], 10), None);
    }
}

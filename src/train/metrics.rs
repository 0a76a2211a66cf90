//! How well a score flags the positions where the cloud model would choose differently.
//! Scores are oriented "higher = more suspicious" (consult first); `positive` marks a
//! disagreement.

/// Area under the ROC curve: the chance that a random disagreement scores above a random
/// agreement (ties count half). 0.5 is chance. `None` when one class is empty.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mann–Whitney U with average ranks over ties.
    let (mut rank_sum, mut n_pos) = (0f64, 0usize);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if positive[k] {
                rank_sum += average_rank;
                n_pos += 1;
            }
        }
        i = j + 1;
    }
    let n_neg = scores.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    Some((rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos as f64 * n_neg as f64))
}

/// The share of all positions a gate must consult (highest scores first) to flag `recall` of
/// the disagreements. Lower is better; a perfect score needs the disagreement rate itself.
pub fn consult_rate_for_recall(scores: &[f32], positive: &[bool], recall: f64) -> Option<f64> {
    let total_pos = positive.iter().filter(|&&p| p).count();
    if total_pos == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let need = (recall * total_pos as f64).ceil() as usize;
    let mut found = 0;
    for (consulted, &k) in order.iter().enumerate() {
        found += positive[k] as usize;
        if found >= need {
            return Some((consulted + 1) as f64 / scores.len() as f64);
        }
    }
    Some(1.0)
}

/// The score above which a gate consults on `rate` of the positions (highest scores first).
pub fn cutoff_for_rate(scores: &[f32], rate: f64) -> Option<f32> {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = ((rate * sorted.len() as f64).round() as usize).min(sorted.len());
    (k > 0).then(|| sorted[k - 1])
}

/// The ranking figures of one score, as `hybrid reward train` prints them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GateReport {
    pub name: String,
    pub roc_auc: Option<f64>,
    /// Share of positions consulted to flag 90% of the disagreements.
    pub consult_for_90: Option<f64>,
    pub consult_for_75: Option<f64>,
}

impl GateReport {
    pub fn new(name: &str, scores: &[f32], positive: &[bool]) -> Self {
        Self {
            name: name.to_string(),
            roc_auc: roc_auc(scores, positive),
            consult_for_90: consult_rate_for_recall(scores, positive, 0.90),
            consult_for_75: consult_rate_for_recall(scores, positive, 0.75),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_one_for_a_perfect_ranking_half_for_ties_and_zero_reversed() {
        let pos = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &pos), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &pos), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 4], &pos), Some(0.5));
        // One inversion out of four pairs.
        assert_eq!(roc_auc(&[0.1, 0.85, 0.8, 0.9], &pos), Some(0.75));
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]), None);
    }

    #[test]
    fn consult_rate_counts_positions_until_the_recall_is_reached() {
        // 10 positions, 2 disagreements ranked 1st and 4th.
        let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0];
        let mut pos = [false; 10];
        pos[0] = true;
        pos[3] = true;
        assert_eq!(consult_rate_for_recall(&scores, &pos, 0.5), Some(0.1));
        assert_eq!(consult_rate_for_recall(&scores, &pos, 0.9), Some(0.4));
        assert_eq!(consult_rate_for_recall(&scores, &[false; 10], 0.9), None);
        assert_eq!(cutoff_for_rate(&scores, 0.3), Some(0.7));
        assert_eq!(cutoff_for_rate(&scores, 0.0), None);
    }
}

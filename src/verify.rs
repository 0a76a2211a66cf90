//! Checking the small model's tokens against the cloud's scores of them: pure logic, no
//! model and no I/O. A consult sends the whole context anyway, so the cloud computes the
//! local tokens since the previous consult (its prefill) and can score them for the cost of
//! their vocabulary projections; [`check`] reads those scores, as speculative decoding does.
//!
//! - Greedy: the first pending token that is not the cloud's most likely token there is
//!   replaced by it; the tokens after it are withdrawn. With every token checked the answer
//!   is the cloud model's own greedy answer, id for id.
//! - Sampling (speculative sampling, Leviathan et al. 2023): a pending token `x` drawn from
//!   the small model's `q` stays with probability min(1, p(x)/q(x)); the first one that does
//!   not is replaced by a draw from max(0, p − q), renormalised. `p` is the cloud's
//!   distribution at the sampler's temperature, known only over the top alternatives the
//!   cloud returned (and `x` itself): renormalising there is an approximation wherever the
//!   cloud puts mass outside them.
use crate::cloud::PositionScore;
use crate::sampler::Sampler;
use crate::{Error, Result};

/// One unchecked token as the small model emitted it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: u32,
    /// The distribution it was drawn from, (id, probability); for greedy the token alone.
    pub q: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every pending token stands.
    Accepted,
    /// Pending token `index` is replaced by `token`; the ones after it are withdrawn.
    Rejected { index: usize, token: u32 },
}

/// Checks `pending` against the cloud's `scores` of the same positions (greedy when the
/// sampler's temperature is 0).
pub fn check(pending: &[Pending], scores: &[PositionScore], sampler: &mut Sampler) -> Result<Verdict> {
    if scores.len() != pending.len() {
        return Err(Error::Cloud(format!("the cloud scored {} positions, {} were asked for", scores.len(), pending.len())));
    }
    let temperature = sampler.config().temperature;
    for (index, (token, score)) in pending.iter().zip(scores).enumerate() {
        let best = score.top.first().ok_or_else(|| Error::Cloud("the cloud's scores carry no alternatives: ask with logprobs ≥ 1".into()))?;
        if temperature <= 0.0 {
            if best.0 != token.id {
                return Ok(Verdict::Rejected { index, token: best.0 });
            }
            continue;
        }
        let p = cloud_distribution(score, token.id, temperature);
        let p_of = |id: u32, d: &[(u32, f32)]| d.iter().find(|e| e.0 == id).map_or(0.0, |e| e.1);
        let (px, qx) = (p_of(token.id, &p), p_of(token.id, &token.q));
        if qx > 0.0 && sampler.uniform() < (px / qx).min(1.0) {
            continue;
        }
        let residual: Vec<(u32, f32)> = p.iter().map(|&(id, pi)| (id, (pi - p_of(id, &token.q)).max(0.0))).collect();
        let replacement = match residual.iter().any(|r| r.1 > 0.0) {
            true => sampler.pick(&residual),
            false => sampler.pick(&p),
        };
        return Ok(Verdict::Rejected { index, token: replacement });
    }
    Ok(Verdict::Accepted)
}

/// The cloud's distribution at `temperature` over its returned alternatives and `token`
/// (with its own logprob when it is not among them), renormalised.
fn cloud_distribution(score: &PositionScore, token: u32, temperature: f32) -> Vec<(u32, f32)> {
    let mut entries = score.top.clone();
    if let (false, Some(lp)) = (entries.iter().any(|e| e.0 == token), score.logprob) {
        entries.push((token, lp));
    }
    let top = entries.iter().map(|e| e.1).fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = entries.iter().map(|e| ((e.1 - top) / temperature).exp()).collect();
    let sum: f32 = weights.iter().sum();
    entries.iter().zip(weights).map(|(e, w)| (e.0, w / sum)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::SamplerConfig;

    fn score(id: u32, top: &[(u32, f32)]) -> PositionScore {
        PositionScore { id, logprob: top.iter().find(|t| t.0 == id).map(|t| t.1), top: top.to_vec() }
    }

    fn greedy(id: u32) -> Pending {
        Pending { id, q: vec![(id, 1.0)] }
    }

    #[test]
    fn greedy_rejects_the_first_token_the_cloud_would_not_pick() {
        let mut s = Sampler::new(SamplerConfig::default());
        let scores = [score(5, &[(5, -0.1), (6, -2.0)]), score(7, &[(8, -0.2), (7, -1.9)]), score(9, &[(1, -0.1)])];
        let pending = [greedy(5), greedy(7), greedy(9)];
        assert_eq!(check(&pending, &scores, &mut s).unwrap(), Verdict::Rejected { index: 1, token: 8 });
        assert_eq!(check(&pending[..1], &scores[..1], &mut s).unwrap(), Verdict::Accepted);
        assert_eq!(check(&[], &[], &mut s).unwrap(), Verdict::Accepted);
    }

    #[test]
    fn mismatched_or_empty_scores_are_errors() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert!(check(&[greedy(1)], &[], &mut s).unwrap_err().to_string().contains("scored 0 positions, 1"));
        assert!(check(&[greedy(1)], &[score(1, &[])], &mut s).unwrap_err().to_string().contains("logprobs"));
    }

    #[test]
    fn speculative_sampling_keeps_the_cloud_distribution() {
        // q proposes 0 or 1 evenly; the cloud wants 0 with 0.2, 1 with 0.3, 2 with 0.5. The
        // emitted token after one check must follow the cloud's distribution.
        let cloud = [(0u32, 0.2f32.ln()), (1, 0.3f32.ln()), (2, 0.5f32.ln())];
        let q = vec![(0u32, 0.5f32), (1, 0.5)];
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_p: 1.0, seed: 11 });
        let mut counts = [0usize; 3];
        let n = 20_000;
        for i in 0..n {
            let x = (i % 2) as u32;
            let verdict = check(&[Pending { id: x, q: q.clone() }], &[score(x, &cloud)], &mut s).unwrap();
            let out = match verdict {
                Verdict::Accepted => x,
                Verdict::Rejected { token, .. } => token,
            };
            counts[out as usize] += 1;
        }
        for (k, want) in [0.2, 0.3, 0.5].into_iter().enumerate() {
            let got = counts[k] as f64 / n as f64;
            assert!((got - want).abs() < 0.015, "token {k}: {got} against {want}");
        }
    }
}

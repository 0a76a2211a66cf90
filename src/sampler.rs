//! Choosing the next token from logits: greedy at temperature 0, else temperature and
//! nucleus (top-p) sampling from a seeded generator so runs are reproducible. The hybrid loop
//! reads the distribution as [`TopLogits`] (the GPU sends back only that); the server and
//! `hybrid generate` sample from the whole vocabulary.
use crate::reward::LogitFeatures;
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p` (1 keeps all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, seed: 299_792_458 }
    }
}

pub struct Sampler {
    config: SamplerConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        Self { config, rng: StdRng::seed_from_u64(config.seed) }
    }

    /// A token from the whole vocabulary's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.config.temperature <= 0.0 {
            return argmax(logits);
        }
        self.draw((0u32..).zip(logits.iter().copied()).collect())
    }

    /// A token from the most likely ones: at a temperature, top-p within the top
    /// [`TopLogits::K`] (their mass is renormalised).
    pub fn sample_top(&mut self, top: &TopLogits) -> u32 {
        if self.config.temperature <= 0.0 {
            return top.argmax();
        }
        self.draw(top.ids.iter().copied().zip(top.logits.iter().copied()).collect())
    }

    /// What [`sample_top`](Self::sample_top) draws from: (id, probability) summing to 1,
    /// most likely first; greedy is the top token with probability 1. Verification of a
    /// sampled token reads it (speculative sampling's q).
    pub fn distribution(&self, top: &TopLogits) -> Vec<(u32, f32)> {
        if self.config.temperature <= 0.0 {
            return vec![(top.argmax(), 1.0)];
        }
        let candidates: Vec<(u32, f32)> = top.ids.iter().copied().zip(top.logits.iter().copied()).collect();
        let (order, probs, cut, kept) = self.nucleus(&candidates);
        order[..cut].iter().map(|&k| (candidates[k].0, probs[k] / kept)).collect()
    }

    pub fn config(&self) -> SamplerConfig {
        self.config
    }

    /// A uniform draw in [0, 1) from the sampler's generator.
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }

    /// A token from (id, weight) pairs, in proportion to the weights (which need not sum to 1).
    pub fn pick(&mut self, weighted: &[(u32, f32)]) -> u32 {
        let total: f32 = weighted.iter().map(|w| w.1.max(0.0)).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(id, w) in weighted {
            r -= w.max(0.0);
            if r <= 0.0 {
                return id;
            }
        }
        weighted.last().map_or(0, |w| w.0)
    }

    /// Temperature softmax over `candidates` (id, logit), then the smallest most likely set
    /// whose mass reaches `top_p`, then a draw from it.
    fn draw(&mut self, candidates: Vec<(u32, f32)>) -> u32 {
        let (order, probs, cut, kept) = self.nucleus(&candidates);
        let mut r = self.rng.random::<f32>() * kept;
        for &k in &order[..cut] {
            r -= probs[k];
            if r <= 0.0 {
                return candidates[k].0;
            }
        }
        candidates[order[cut - 1]].0
    }

    /// The temperature softmax of `candidates`, their order (most likely first, lower id on
    /// ties), how many of that order top-p keeps, and the mass they hold.
    fn nucleus(&self, candidates: &[(u32, f32)]) -> (Vec<usize>, Vec<f32>, usize, f32) {
        let logits: Vec<f32> = candidates.iter().map(|&(_, l)| l).collect();
        let probs = softmax(&logits, self.config.temperature);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(candidates[a].0.cmp(&candidates[b].0)));
        let mut kept = 0.0;
        let mut cut = order.len();
        for (i, &k) in order.iter().enumerate() {
            kept += probs[k];
            if kept >= self.config.top_p {
                cut = i + 1;
                break;
            }
        }
        (order, probs, cut, kept)
    }
}

/// The next-token distribution as the hybrid loop reads it: the most likely tokens with their
/// logits, and the normaliser and entropy of the whole vocabulary. Enough for greedy choice,
/// sampling within the top, and the reward head's features, and about a kilobyte where the
/// whole vocabulary's logits are 200–600 KB (what a GPU would otherwise send back per token).
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogits {
    /// The most likely tokens, most likely first (on equal logits the lower id first): at
    /// most [`K`](Self::K), and only those within [`SPAN`](Self::SPAN) of the top.
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
    /// log Σ exp(logit) over the whole vocabulary.
    pub log_sum_exp: f32,
    /// Entropy of softmax(logits) over the whole vocabulary, in nats.
    pub entropy: f32,
}

impl TopLogits {
    /// Tokens kept.
    pub const K: usize = 64;
    /// Logits further below the top are dropped: a probability under e^-32 of the top one's.
    pub const SPAN: f32 = 32.0;

    /// From the whole vocabulary's logits.
    pub fn from_logits(logits: &[f32]) -> Self {
        let (log_sum_exp, entropy) = normaliser(logits);
        let candidates = (0u32..).zip(logits.iter().copied()).collect();
        Self::from_candidates(candidates, log_sum_exp, entropy)
    }

    /// From a set of (id, logit) that holds the top [`K`](Self::K) (more are dropped), and
    /// the whole vocabulary's normaliser and entropy.
    pub fn from_candidates(mut candidates: Vec<(u32, f32)>, log_sum_exp: f32, entropy: f32) -> Self {
        let top = candidates.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        candidates.retain(|c| c.1 >= top - Self::SPAN);
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if candidates.len() > Self::K {
            candidates.select_nth_unstable_by(Self::K - 1, order);
            candidates.truncate(Self::K);
        }
        candidates.sort_unstable_by(order);
        let (ids, logits) = candidates.into_iter().unzip();
        Self { ids, logits, log_sum_exp, entropy }
    }

    /// The most likely token (the lowest id on a tie, as [`argmax`]).
    pub fn argmax(&self) -> u32 {
        self.ids[0]
    }

    /// log p of `id`, if it is among the top.
    pub fn log_prob(&self, id: u32) -> Option<f32> {
        self.ids.iter().position(|&i| i == id).map(|k| self.logits[k] - self.log_sum_exp)
    }

    /// The reward head's features of proposing `token`; for a token outside the top, log p is
    /// that of the least likely kept token (an upper bound).
    pub fn features(&self, token: u32) -> LogitFeatures {
        let p = |logit: f32| (logit - self.log_sum_exp).exp();
        let last = *self.logits.last().expect("at least one token");
        let top1_p = p(self.logits[0]);
        LogitFeatures {
            log_p: self.log_prob(token).unwrap_or(last - self.log_sum_exp).max(-100.0),
            top1_p,
            margin: top1_p - self.logits.get(1).map_or(0.0, |&l| p(l)),
            entropy: self.entropy.max(0.0),
        }
    }
}

/// log Σ exp(l) and the entropy of softmax(l), in f64: a vocabulary has ~150k terms.
fn normaliser(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut weighted) = (0f64, 0f64);
    for &l in logits {
        let z = (l - max) as f64;
        let e = z.exp();
        sum += e;
        weighted += e * z;
    }
    // H = log Σe^z − Σ e^z·z / Σ e^z
    ((max as f64 + sum.ln()) as f32, (sum.ln() - weighted / sum).max(0.0) as f32)
}

/// log p of `token` under softmax(logits) (what the reward labels record of the cloud model).
pub fn log_prob(logits: &[f32], token: u32) -> f32 {
    let chosen = logits.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY);
    (chosen - normaliser(logits).0).max(-100.0)
}

/// Index of the largest logit; the lowest index wins a tie, as in llama.cpp.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Softmax of `logits / temperature`, computed stably.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits.iter().map(|&l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_logit_and_the_first_on_ties() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
        assert_eq!(argmax(&[1.0, 5.0, 5.0]), 1);
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_p: 1e-6, seed: 1 });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 2.0, 1.0]), 1);
        }
    }

    #[test]
    fn same_seed_same_samples_and_frequencies_follow_probabilities() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY]; // probabilities 1/4, 3/4, 0
        let cfg = SamplerConfig { temperature: 1.0, top_p: 1.0, seed: 7 };
        let draw = |cfg| {
            let mut s = Sampler::new(cfg);
            (0..4000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(cfg);
        assert_eq!(a, draw(cfg));
        let ones = a.iter().filter(|&&t| t == 1).count() as f32 / a.len() as f32;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        assert!(!a.contains(&2));
    }

    #[test]
    fn top_logits_keep_the_most_likely_in_order_with_the_whole_normaliser() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.1).collect();
        let top = TopLogits::from_logits(&logits);
        assert_eq!(top.ids.len(), TopLogits::K);
        assert_eq!(top.argmax(), argmax(&logits), "ties go to the lowest id, as argmax");
        for pair in top.ids.windows(2).zip(top.logits.windows(2)) {
            let ((a, b), (la, lb)) = ((pair.0[0], pair.0[1]), (pair.1[0], pair.1[1]));
            assert!(la > lb || (la == lb && a < b), "{a}:{la} before {b}:{lb}");
        }
        let smallest_kept = *top.logits.last().unwrap();
        assert!(logits.iter().filter(|&&l| l > smallest_kept).count() < TopLogits::K);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((top.log_sum_exp as f64 - z.ln()).abs() < 1e-4);
        let id = top.ids[3];
        assert!((top.log_prob(id).unwrap() - log_prob(&logits, id)).abs() < 1e-5);
        assert_eq!(top.log_prob(top.ids.iter().max().unwrap() + 1000), None);
    }

    #[test]
    fn sampling_the_top_follows_the_renormalised_probabilities() {
        let top = TopLogits::from_candidates(vec![(5, (3.0f32).ln()), (9, 0.0)], 10.0, 1.0);
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_p: 1.0, seed: 3 });
        let draws: Vec<u32> = (0..4000).map(|_| s.sample_top(&top)).collect();
        let fives = draws.iter().filter(|&&t| t == 5).count() as f32 / draws.len() as f32;
        assert!((fives - 0.75).abs() < 0.03, "{fives}");
        assert_eq!(Sampler::new(SamplerConfig::default()).sample_top(&top), 5, "greedy");
    }

    #[test]
    fn softmax_is_normalised_and_stable_for_large_logits() {
        let p = softmax(&[1000.0, 1000.0, 0.0], 1.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - 0.5).abs() < 1e-6);
    }
}

//! When to ask the cloud: one decision per proposed token, from signals the small model
//! already computed. Pure logic, no model and no I/O.
//!
//! - `reward`: consult when the reward head's score (estimated chance the cloud agrees) is
//!   below the threshold.
//! - `maxprob`: consult when the small model's top-1 probability is below the threshold.
//! - `entropy`: consult when the entropy of the next-token distribution (nats) is above the
//!   threshold.
//! - `random`: consult with probability `threshold`, from a seeded generator.
//! - `never` / `always`: small model only / cloud only.
//! - `verify`: lossless. Gates like `maxprob`, and the loop adds consults so that every local
//!   token is checked before the answer ends (at least every `verify_every` tokens, and at
//!   its end): the answer is the cloud model's own.
//!
//! For the probability-like policies (reward, maxprob, random) the threshold lies in [0,1]
//! and a higher one consults more often: 0 never, 1 always. The entropy threshold is in nats
//! and runs the other way (0 consults on every uncertain token).
use crate::{Error, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    Reward,
    MaxProb,
    Entropy,
    Random,
    Never,
    Always,
    Verify,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 7] = [Self::Reward, Self::MaxProb, Self::Entropy, Self::Random, Self::Never, Self::Always, Self::Verify];

    pub fn name(self) -> &'static str {
        match self {
            Self::Reward => "reward",
            Self::MaxProb => "maxprob",
            Self::Entropy => "entropy",
            Self::Random => "random",
            Self::Never => "never",
            Self::Always => "always",
            Self::Verify => "verify",
        }
    }

    /// Whether decisions need the reward head's score.
    pub fn needs_reward(self) -> bool {
        self == Self::Reward
    }

    /// Whether the policy can ever consult (so needs a cloud).
    pub fn may_consult(self) -> bool {
        self != Self::Never
    }

    /// Whether every local token must be checked by the cloud before the answer ends.
    pub fn lossless(self) -> bool {
        self == Self::Verify
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s.trim().to_ascii_lowercase()).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
            Error::InvalidInput(format!("unknown policy `{s}`; use one of: {}", known.join(", ")))
        })
    }
}

/// What the small model knows about its proposed token when the decision is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    /// The reward head's score in [0,1], when a head is loaded.
    pub reward: Option<f32>,
    /// Probability of the most likely next token.
    pub top1_prob: f32,
    /// Entropy of the next-token distribution, in nats.
    pub entropy: f32,
}

/// A policy with its threshold, ready to decide.
#[derive(Debug, Clone)]
pub struct Policy {
    kind: PolicyKind,
    threshold: f32,
    rng: StdRng,
}

impl Policy {
    /// `threshold` must lie in [0,1] (entropy: ≥ 0 nats); `seed` drives the `random` policy.
    pub fn new(kind: PolicyKind, threshold: f32, seed: u64) -> Result<Self> {
        let valid = match kind {
            PolicyKind::Entropy => threshold >= 0.0 && threshold.is_finite(),
            _ => (0.0..=1.0).contains(&threshold),
        };
        if !valid {
            return Err(Error::InvalidInput(match kind {
                PolicyKind::Entropy => {
                    format!("entropy threshold {threshold} is not a number of nats ≥ 0; tokens whose entropy exceeds it are sent to the cloud")
                }
                _ => format!("threshold {threshold} is outside [0, 1] for the {kind} policy; higher consults the cloud more often (0: never, 1: always)"),
            }));
        }
        Ok(Self { kind, threshold, rng: StdRng::seed_from_u64(seed) })
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Whether to ask the cloud for this token. For reward, maxprob and random, threshold 0
    /// never consults and 1 always does, scores of exactly 0 or 1 included.
    pub fn consult(&mut self, signals: &Signals) -> Result<bool> {
        let t = self.threshold;
        let probability_like = matches!(self.kind, PolicyKind::Reward | PolicyKind::MaxProb | PolicyKind::Random | PolicyKind::Verify);
        Ok(match self.kind {
            PolicyKind::Never => false,
            PolicyKind::Always => true,
            _ if probability_like && t <= 0.0 => false,
            _ if probability_like && t >= 1.0 => true,
            PolicyKind::Reward => {
                let reward =
                    signals.reward.ok_or_else(|| Error::InvalidInput("the reward policy needs a reward head; load one or pick another policy".into()))?;
                reward < t
            }
            PolicyKind::MaxProb | PolicyKind::Verify => signals.top1_prob < t,
            PolicyKind::Entropy => signals.entropy > t,
            PolicyKind::Random => self.rng.random::<f32>() < t,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(reward: f32, top1_prob: f32, entropy: f32) -> Signals {
        Signals { reward: Some(reward), top1_prob, entropy }
    }

    fn decide(kind: PolicyKind, t: f32, s: Signals) -> bool {
        Policy::new(kind, t, 7).unwrap().consult(&s).unwrap()
    }

    #[test]
    fn each_policy_consults_on_its_own_signal() {
        let sure = signals(0.9, 0.95, 0.2);
        let unsure = signals(0.1, 0.3, 3.0);
        for (kind, t) in [(PolicyKind::Reward, 0.5), (PolicyKind::MaxProb, 0.5), (PolicyKind::Entropy, 1.0)] {
            assert!(!decide(kind, t, sure), "{kind} consulted on a confident token");
            assert!(decide(kind, t, unsure), "{kind} did not consult on an unsure token");
        }
        // Only the reward moves: the reward policy follows it, maxprob does not.
        let mixed = signals(0.1, 0.95, 0.2);
        assert!(decide(PolicyKind::Reward, 0.5, mixed));
        assert!(!decide(PolicyKind::MaxProb, 0.5, mixed));
        assert!(!decide(PolicyKind::Entropy, 0.5, mixed));
    }

    #[test]
    fn thresholds_zero_and_one_mean_never_and_always_even_at_saturated_scores() {
        let saturated = [signals(1.0, 1.0, 0.0), signals(0.0, 0.0, 12.0)];
        for kind in [PolicyKind::Reward, PolicyKind::MaxProb, PolicyKind::Random] {
            for s in saturated {
                assert!(!decide(kind, 0.0, s), "{kind} at 0 consulted on {s:?}");
                assert!(decide(kind, 1.0, s), "{kind} at 1 did not consult on {s:?}");
            }
        }
    }

    #[test]
    fn never_and_always_ignore_the_threshold() {
        let s = signals(0.5, 0.5, 1.0);
        for t in [0.0, 0.5, 1.0] {
            assert!(!decide(PolicyKind::Never, t, s));
            assert!(decide(PolicyKind::Always, t, s));
        }
    }

    #[test]
    fn a_higher_threshold_never_consults_less() {
        let cases: Vec<Signals> = (0..50).map(|i| i as f32 / 49.0).map(|x| signals(x, 1.0 - x * 0.9, x * 8.0)).collect();
        for kind in [PolicyKind::Reward, PolicyKind::MaxProb] {
            let mut last = 0;
            for t in [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0] {
                let n = cases.iter().filter(|s| decide(kind, t, **s)).count();
                assert!(n >= last, "{kind}: threshold {t} consults {n} < {last}");
                last = n;
            }
            assert_eq!(last, cases.len());
        }
        // Entropy runs the other way: a lower threshold (nats) consults more.
        let mut last = 0;
        for t in [9.0, 6.0, 3.0, 1.0, 0.0] {
            let n = cases.iter().filter(|s| decide(PolicyKind::Entropy, t, **s)).count();
            assert!(n >= last, "entropy: threshold {t} consults {n} < {last}");
            last = n;
        }
        assert_eq!(last, cases.len() - 1, "entropy 0 is never above threshold 0");
    }

    #[test]
    fn random_consults_at_its_rate_and_repeats_with_the_seed() {
        let s = signals(0.5, 0.5, 1.0);
        let run = |seed| {
            let mut p = Policy::new(PolicyKind::Random, 0.2, seed).unwrap();
            (0..10_000).map(|_| p.consult(&s).unwrap()).collect::<Vec<bool>>()
        };
        let a = run(1);
        let rate = a.iter().filter(|&&c| c).count() as f64 / a.len() as f64;
        assert!((rate - 0.2).abs() < 0.02, "rate {rate}");
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
    }

    #[test]
    fn bad_thresholds_names_and_a_missing_head_are_clear_errors() {
        for t in [-0.1, 1.5, f32::NAN] {
            let e = Policy::new(PolicyKind::MaxProb, t, 0).unwrap_err().to_string();
            assert!(e.contains("outside [0, 1]"), "{e}");
        }
        assert!(Policy::new(PolicyKind::Entropy, 4.0, 0).is_ok());
        let e = Policy::new(PolicyKind::Entropy, -1.0, 0).unwrap_err().to_string();
        assert!(e.contains("nats"), "{e}");
        let e = "cheap".parse::<PolicyKind>().unwrap_err().to_string();
        assert!(e.contains("reward, maxprob, entropy, random, never, always, verify"), "{e}");
        assert_eq!("MaxProb".parse::<PolicyKind>().unwrap(), PolicyKind::MaxProb);
        let no_head = Signals { reward: None, top1_prob: 0.5, entropy: 1.0 };
        let e = Policy::new(PolicyKind::Reward, 0.5, 0).unwrap().consult(&no_head).unwrap_err().to_string();
        assert!(e.contains("needs a reward head"), "{e}");
    }
}

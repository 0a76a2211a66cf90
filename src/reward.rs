//! The reward head: a small MLP that estimates, for a token the small model proposes, how
//! likely the cloud model would have chosen the same token. It reads only what the small
//! model already computed: the final hidden state that produced the proposal, the proposed
//! token's input embedding, and four scalars of the next-token distribution.
//!
//! Two branches add up to the score's logit. A small one reads only the distribution's
//! scalars, so the head can always do what the max-prob and entropy gates do; a wider one
//! reads everything (hidden state, embedding, scalars), with dropout while training, to learn
//! where the cloud disagrees beyond what the scalars say.
//!
//! Weights live in one safetensors file (loaded from bytes, so the browser loads it the same
//! way): `norm.mean` and `norm.std` standardise the input row, `scalar.fc`/`scalar.out` are the
//! small branch, `fc1`, `fc2`, `out` the wide one (each `.weight`/`.bias`). The hidden size of
//! the small model follows from `fc1.weight`'s shape.
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use std::collections::HashMap;

/// The reward policy's threshold unless the user picks one (chosen from the HumanEval
/// evaluation; see the README).
pub const DEFAULT_THRESHOLD: f32 = 0.7;

/// Heads in `assets/reward/`, by the small model they were trained for.
pub const SHIPPED_HEADS: &[(&str, &str)] = &[("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b.safetensors")];

/// The shipped head for a small model, if one exists in this checkout.
#[cfg(not(target_arch = "wasm32"))]
pub fn shipped_head(slm: &str) -> Option<std::path::PathBuf> {
    let (_, file) = SHIPPED_HEADS.iter().find(|(model, _)| *model == slm)?;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/reward").join(file);
    path.exists().then_some(path)
}

/// Scalars of the next-token distribution at the position that proposes a token (softmax at
/// temperature 1; computed by [`TopLogits::features`](crate::sampler::TopLogits::features)).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LogitFeatures {
    /// Log-probability of the proposed token.
    pub log_p: f32,
    /// Probability of the most likely token.
    pub top1_p: f32,
    /// Probability of the most likely token minus that of the second.
    pub margin: f32,
    /// Entropy of the distribution, in nats.
    pub entropy: f32,
}

impl LogitFeatures {
    pub const COUNT: usize = 4;

    pub fn to_array(self) -> [f32; Self::COUNT] {
        [self.log_p, self.top1_p, self.margin, self.entropy]
    }

    pub fn from_array(a: [f32; Self::COUNT]) -> Self {
        Self { log_p: a[0], top1_p: a[1], margin: a[2], entropy: a[3] }
    }

    /// What the head reads: the features plus the top-1 uncertainty on a log scale, which
    /// separates 0.99 from 0.9999 where most tokens are.
    fn head_inputs(self) -> [f32; SCALARS] {
        [self.log_p, self.top1_p, self.margin, self.entropy, ((1.0 - self.top1_p).max(0.0) + 1e-6).ln()]
    }
}

/// Scalars in an input row.
const SCALARS: usize = 5;

/// Layer sizes after the input: the wide branch, and the scalar branch.
const FC1: usize = 128;
const FC2: usize = 32;
const SCALAR_FC: usize = 16;

/// The MLP, on candle-nn layers; training (`src/train/`) builds the same struct on a VarMap.
pub struct RewardHead {
    hidden_size: usize,
    mean: Tensor,
    std: Tensor,
    scalar_fc: Linear,
    scalar_out: Linear,
    fc1: Linear,
    fc2: Linear,
    out: Linear,
}

impl RewardHead {
    /// Width of the input row for a small model of hidden size `hidden_size`.
    pub fn input_width(hidden_size: usize) -> usize {
        2 * hidden_size + SCALARS
    }

    /// Builds the layers from a VarBuilder (fresh for training, loaded for inference), with
    /// the input standardisation `mean`/`std` (each of `input_width` values).
    pub fn build(vb: VarBuilder, hidden_size: usize, mean: Tensor, std: Tensor) -> Result<Self> {
        let width = Self::input_width(hidden_size);
        Ok(Self {
            hidden_size,
            mean,
            std,
            scalar_fc: candle_nn::linear(SCALARS, SCALAR_FC, vb.pp("scalar.fc"))?,
            scalar_out: candle_nn::linear(SCALAR_FC, 1, vb.pp("scalar.out"))?,
            fc1: candle_nn::linear(width, FC1, vb.pp("fc1"))?,
            fc2: candle_nn::linear(FC1, FC2, vb.pp("fc2"))?,
            // Zero at first: a fresh head ranks by the scalars alone (as the max-prob and entropy
            // gates do) and the wide branch grows only where training finds it helps.
            out: Linear::new(
                vb.pp("out").get_with_hints((1, FC2), "weight", candle_nn::Init::Const(0.0))?,
                Some(vb.pp("out").get_with_hints(1, "bias", candle_nn::Init::Const(0.0))?),
            ),
        })
    }

    /// Loads a head from the bytes of its safetensors file.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let bad = |what: String| Error::InvalidInput(format!("reward head file is not usable: {what}; train one with `hybrid reward train` or use the file in assets/reward/"));
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load_buffer(bytes, &device).map_err(|e| bad(crate::error::first_line(&e)))?;
        let width = match tensors.get("fc1.weight").map(|t| t.dims().to_vec()) {
            Some(dims) if dims.len() == 2 && dims[1] > SCALARS && (dims[1] - SCALARS).is_multiple_of(2) => dims[1],
            Some(dims) => return Err(bad(format!("fc1.weight has shape {dims:?}"))),
            None => return Err(bad("no tensor fc1.weight".into())),
        };
        let hidden_size = (width - SCALARS) / 2;
        let stat = |name: &str| -> Result<Tensor> {
            let t = tensors.get(name).ok_or_else(|| bad(format!("no tensor {name}")))?;
            match t.dims() {
                [w] if *w == width => Ok(t.to_dtype(DType::F32)?),
                dims => Err(bad(format!("{name} has shape {dims:?}, expected [{width}]"))),
            }
        };
        let (mean, std) = (stat("norm.mean")?, stat("norm.std")?);
        let layers: HashMap<String, Tensor> =
            tensors.iter().filter(|(k, _)| !k.starts_with("norm.")).map(|(k, v)| (k.clone(), v.clone())).collect();
        let vb = VarBuilder::from_tensors(layers, DType::F32, &device);
        Self::build(vb, hidden_size, mean, std).map_err(|e| bad(e.to_string()))
    }

    /// Hidden size of the small model this head was trained for.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Standardisation tensors, for saving alongside the layers.
    pub fn normalisation(&self) -> (&Tensor, &Tensor) {
        (&self.mean, &self.std)
    }

    /// One input row: hidden state, token embedding, scalars of the distribution.
    pub fn input_row(hidden: &[f32], embedding: &[f32], features: &LogitFeatures) -> Vec<f32> {
        let mut row = Vec::with_capacity(hidden.len() + embedding.len() + SCALARS);
        row.extend_from_slice(hidden);
        row.extend_from_slice(embedding);
        row.extend_from_slice(&features.head_inputs());
        row
    }

    /// Raw scores (before the sigmoid) of a batch of input rows `(n, input_width)`.
    pub fn logits(&self, rows: &Tensor) -> Result<Tensor> {
        self.forward(rows, 0.0)
    }

    /// Like [`logits`](Self::logits), with dropout `p` in the wide branch (training only).
    pub fn logits_with_dropout(&self, rows: &Tensor, p: f32) -> Result<Tensor> {
        self.forward(rows, p)
    }

    fn forward(&self, rows: &Tensor, dropout: f32) -> Result<Tensor> {
        let x = rows.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let scalars = x.narrow(1, 2 * self.hidden_size, SCALARS)?;
        let narrow = self.scalar_out.forward(&candle_nn::ops::silu(&self.scalar_fc.forward(&scalars)?)?)?;
        let mut h = candle_nn::ops::silu(&self.fc1.forward(&x)?)?;
        if dropout > 0.0 {
            h = candle_nn::ops::dropout(&h, dropout)?;
        }
        let wide = self.out.forward(&candle_nn::ops::silu(&self.fc2.forward(&h)?)?)?;
        Ok((narrow + wide)?.squeeze(1)?)
    }

    /// The score in [0,1] of one proposed token: an estimate of the chance that the cloud
    /// model's greedy token is the same.
    pub fn score(&self, hidden: &[f32], embedding: &[f32], features: &LogitFeatures) -> Result<f32> {
        let d = self.hidden_size;
        if hidden.len() != d || embedding.len() != d {
            return Err(Error::InvalidInput(format!(
                "the reward head was trained for a small model of hidden size {d}, got hidden {} and embedding {}; load the head trained for this model",
                hidden.len(),
                embedding.len()
            )));
        }
        let row = Tensor::from_vec(Self::input_row(hidden, embedding, features), (1, Self::input_width(d)), &Device::Cpu)?;
        let logit = self.logits(&row)?.to_vec1::<f32>()?[0];
        Ok(sigmoid(logit))
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(all(test, not(target_arch = "wasm32")))] // writes through a temporary directory
mod tests {
    use super::*;

    /// The web app writes the default threshold in JS and HTML too (its slider shows before the
    /// engine loads): they must say what `hybrid chat` does.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn the_web_app_starts_at_the_default_threshold() {
        let read = |f: &str| std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f)).unwrap();
        let default = DEFAULT_THRESHOLD.to_string();
        let app = read("www/app.js");
        assert!(app.contains(&format!("reward: {{ max: 1, step: 0.01, initial: {default} }}")), "www/app.js: the reward slider's initial value is not {default}");
        let page = read("www/index.html");
        assert!(page.contains(&format!(r#"<input id="threshold" type="range" min="0" max="1" step="0.01" value="{default}">"#)), "www/index.html: the threshold slider's value is not {default}");
    }

    #[test]
    fn logit_features_match_a_direct_softmax() {
        let logits = [2.0f32, 1.0, 0.5, -1.0, 2.0 - 0.3];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let p: Vec<f64> = logits.iter().map(|&l| (l as f64).exp() / z).collect();
        let entropy: f64 = -p.iter().map(|q| q * q.ln()).sum::<f64>();
        let features = |logits: &[f32], token| crate::sampler::TopLogits::from_logits(logits).features(token);
        let f = features(&logits, 2);
        assert!((f.log_p as f64 - p[2].ln()).abs() < 1e-5);
        assert!((f.top1_p as f64 - p[0]).abs() < 1e-6);
        assert!((f.margin as f64 - (p[0] - p[4])).abs() < 1e-6);
        assert!((f.entropy as f64 - entropy).abs() < 1e-5);
        // A tie for the top: margin 0.
        assert_eq!(features(&[1.0, 1.0, 0.0], 0).margin, 0.0);
        // A certain distribution: entropy 0, top-1 probability 1.
        let sure = features(&[100.0, -100.0, -100.0], 0);
        assert!(sure.entropy < 1e-6 && (sure.top1_p - 1.0).abs() < 1e-6 && sure.log_p > -1e-6);
    }

    fn save_random_head(hidden: usize) -> Vec<u8> {
        let device = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let width = RewardHead::input_width(hidden);
        let _ = RewardHead::build(vb, hidden, Tensor::zeros(width, DType::F32, &device).unwrap(), Tensor::ones(width, DType::F32, &device).unwrap()).unwrap();
        let mut tensors: HashMap<String, Tensor> =
            varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        tensors.insert("norm.mean".into(), Tensor::zeros(width, DType::F32, &device).unwrap());
        tensors.insert("norm.std".into(), Tensor::ones(width, DType::F32, &device).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn a_saved_head_loads_and_scores_in_the_unit_interval() {
        let head = RewardHead::from_safetensors(&save_random_head(8)).unwrap();
        assert_eq!(head.hidden_size(), 8);
        let f = LogitFeatures { log_p: -0.1, top1_p: 0.9, margin: 0.8, entropy: 0.4 };
        let s = head.score(&[0.5; 8], &[-0.5; 8], &f).unwrap();
        assert!((0.0..=1.0).contains(&s), "{s}");
        // The batch path gives the same score as the single-row path.
        let row = Tensor::from_vec(RewardHead::input_row(&[0.5; 8], &[-0.5; 8], &f), (1, RewardHead::input_width(8)), &Device::Cpu).unwrap();
        assert!((sigmoid(head.logits(&row).unwrap().to_vec1::<f32>().unwrap()[0]) - s).abs() < 1e-6);
        let e = head.score(&[0.5; 9], &[0.5; 8], &f).unwrap_err().to_string();
        assert!(e.contains("hidden size 8"), "{e}");
    }

    #[test]
    fn a_bad_file_is_a_clear_error() {
        for bytes in [b"not a safetensors file".to_vec(), Vec::new()] {
            let e = RewardHead::from_safetensors(&bytes).err().expect("must fail").to_string();
            assert!(e.contains("reward head file is not usable"), "{e}");
        }
    }
}

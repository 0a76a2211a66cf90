//! One decoder for the llama/qwen2 family, written on candle ops with quantized matmuls
//! straight from the GGUF tensors. `forward` takes a batch of new tokens (prefill) or
//! one token (decode) and returns the logits of the last position and the final hidden
//! state that produced them (the reward head reads it).
use super::config::{ModelConfig, RopeLayout};
use super::gguf::tensor;
use super::weights::QWeight;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use std::io::{Read, Seek};
use std::sync::Arc;

/// What one forward pass produces for its last position.
#[derive(Debug, Clone)]
pub struct Step {
    /// Logits over the vocabulary for the next token.
    pub logits: Vec<f32>,
    /// Final hidden state (after the output norm) that the logits were computed from.
    pub hidden: Vec<f32>,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Rewrite weight formats that lack SIMD kernels into equivalent ones that have them
    /// (see `weights.rs`). Off only to compare kernels with a reference bit for bit.
    pub rewrite_weights: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { rewrite_weights: true }
    }
}

/// A quantized projection with an optional bias.
struct Linear {
    weight: QWeight,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: QWeight,
    up: QWeight,
    down: QWeight,
}

/// Keys and values of every layer for the positions seen so far, each `(n_head_kv, len, head_dim)`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keep only the first `len` positions. Each layer is cut by its own length, so this
    /// also repairs a cache whose first layers appended during a pass that then failed.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        for entry in self.layers.iter_mut() {
            *entry = match entry.take() {
                Some((k, v)) if k.dim(1)? <= len => Some((k, v)),
                Some((k, v)) if len > 0 => Some((
                    k.narrow(1, 0, len)?.contiguous()?,
                    v.narrow(1, 0, len)?.contiguous()?,
                )),
                _ => None,
            };
        }
        self.len = self.len.min(len);
        Ok(())
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|e| *e = None);
        self.len = 0;
    }
}

pub struct Decoder {
    config: ModelConfig,
    device: Device,
    embedding: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: QWeight,
    /// Rotary tables, `(context_length, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
    cache: KvCache,
}

impl Decoder {
    /// Loads a GGUF model file onto the CPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &std::path::Path) -> Result<Self> {
        Self::load_with(path, LoadOptions::default())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_with(path: &std::path::Path, options: LoadOptions) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::File {
            path: path.to_path_buf(),
            message: format!("cannot open model file: {e}"),
        })?;
        let content = super::gguf::read_content(&mut file)?;
        Self::from_gguf(&content, &mut file, &Device::Cpu, options)
    }

    pub fn from_gguf<R: Read + Seek>(
        content: &Content,
        reader: &mut R,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let weight = |t: QTensor| match options.rewrite_weights {
            true => QWeight::new(t),
            false => QWeight::as_stored(t),
        };
        let config = ModelConfig::from_gguf(content)?;
        let mut qtensor = |name: &str| tensor(content, reader, name, device);
        let embedding = Arc::new(qtensor("token_embd.weight")?);
        // Small models tie the output projection to the embedding table.
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => weight(qtensor("output.weight")?)?,
            false => QWeight::from_arc(embedding.clone())?,
        };
        let output_norm = qtensor("output_norm.weight")?.dequantize(device)?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut qtensor = |name: &str| tensor(content, reader, &format!("blk.{i}.{name}"), device);
            let mut linear = |name: &str| -> Result<Linear> {
                let weight = weight(qtensor(&format!("{name}.weight"))?)?;
                let bias = match config.qkv_bias && name != "attn_output" {
                    true => Some(qtensor(&format!("{name}.bias"))?.dequantize(device)?),
                    false => None,
                };
                Ok(Linear { weight, bias })
            };
            let (q, k, v, o) = (linear("attn_q")?, linear("attn_k")?, linear("attn_v")?, linear("attn_output")?);
            let mut qtensor = |name: &str| tensor(content, reader, &format!("blk.{i}.{name}"), device);
            layers.push(Layer {
                q,
                k,
                v,
                o,
                attn_norm: qtensor("attn_norm.weight")?.dequantize(device)?,
                ffn_norm: qtensor("ffn_norm.weight")?.dequantize(device)?,
                gate: weight(qtensor("ffn_gate.weight")?)?,
                up: weight(qtensor("ffn_up.weight")?)?,
                down: weight(qtensor("ffn_down.weight")?)?,
            });
        }
        let (cos, sin) = rope_tables(&config, device)?;
        let cache = KvCache { layers: (0..config.n_layer).map(|_| None).collect(), len: 0 };
        Ok(Self { config, device: device.clone(), embedding, layers, output_norm, output, cos, sin, cache })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    pub fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }

    /// Number of positions in the KV cache; the next token goes at this position.
    pub fn kv_len(&self) -> usize {
        self.cache.len
    }

    /// Runs `tokens` at the positions after the cached ones and appends them to the cache.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Step> {
        let start = self.cache.len;
        let result = self.forward_at(tokens, start);
        match &result {
            Ok(_) => self.cache.len = start + tokens.len(),
            // Layers before the failure already appended; keep the cache consistent.
            Err(_) => self.cache.truncate(start)?,
        }
        result
    }

    fn forward_at(&mut self, tokens: &[u32], start: usize) -> Result<Step> {
        let n = tokens.len();
        let cfg = &self.config;
        if n == 0 {
            return Err(Error::InvalidInput("forward needs at least one token".into()));
        }
        if start + n > cfg.context_length {
            return Err(Error::InvalidInput(format!(
                "context full: {start} cached + {n} new tokens exceed the model's {} positions; start a new conversation or truncate the cache",
                cfg.context_length
            )));
        }
        let vocab = self.embedding.shape().dims()[0];
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!("token id {bad} is outside the vocabulary of {vocab} ids")));
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embedding.embedding(&ids)?; // (n, n_embd)
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let mask = match n {
            1 => None,
            _ => Some(causal_mask(n, start, &self.device)?),
        };
        let eps = cfg.rms_eps;
        for (layer, cache) in self.layers.iter().zip(self.cache.layers.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let a = attention(cfg, layer, &h, &cos, &sin, mask.as_ref(), cache)?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = candle_nn::ops::silu(&layer.gate.forward(&h)?)?;
            let f = layer.down.forward(&(gate * layer.up.forward(&h)?)?)?;
            x = (x + f)?;
        }
        // Only the last position's logits are needed: skip the vocabulary projection for the rest.
        let last = x.narrow(0, n - 1, 1)?;
        let hidden = candle_nn::ops::rms_norm(&last, &self.output_norm, eps)?;
        let logits = self.output.forward(&hidden)?;
        Ok(Step { logits: logits.flatten_all()?.to_vec1()?, hidden: hidden.flatten_all()?.to_vec1()? })
    }
}

fn attention(
    cfg: &ModelConfig,
    layer: &Layer,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    cache: &mut Option<(Tensor, Tensor)>,
) -> Result<Tensor> {
    let (n, hd, n_head, n_kv) = (x.dim(0)?, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
    let heads = |t: Tensor, h: usize| -> Result<Tensor> {
        Ok(t.reshape((1, n, h, hd))?.transpose(1, 2)?.contiguous()?) // (1, h, n, hd)
    };
    let q = heads(layer.q.forward(x)?, n_head)?;
    let k = heads(layer.k.forward(x)?, n_kv)?;
    let v = heads(layer.v.forward(x)?, n_kv)?;
    let (q, k) = match cfg.rope_layout {
        RopeLayout::Interleaved => (candle_nn::rotary_emb::rope_i(&q, cos, sin)?, candle_nn::rotary_emb::rope_i(&k, cos, sin)?),
        RopeLayout::Halves => (candle_nn::rotary_emb::rope(&q, cos, sin)?, candle_nn::rotary_emb::rope(&k, cos, sin)?),
    };
    let (k, v) = (k.squeeze(0)?, v.squeeze(0)?); // (n_kv, n, hd)
    let (k, v) = match cache.take() {
        None => (k, v),
        Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 1)?, Tensor::cat(&[&cv, &v], 1)?),
    };
    *cache = Some((k.clone(), v.clone()));
    let kv_len = k.dim(1)?;
    // Grouped-query attention without copying K/V: the query heads sharing a kv head
    // are stacked along the row dimension of one matmul.
    let group = n_head / n_kv;
    let q = q.reshape((n_kv, group * n, hd))?;
    let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
    let scores = match mask {
        Some(mask) => scores.reshape((n_kv, group, n, kv_len))?.broadcast_add(mask)?.reshape((n_kv, group * n, kv_len))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let y = probs.matmul(&v)?; // (n_kv, group * n, hd)
    let y = y.reshape((n_head, n, hd))?.transpose(0, 1)?.reshape((n, n_head * hd))?;
    layer.o.forward(&y)
}

/// Additive mask `(n, start + n)`: query i (at position start + i) sees keys 0..=start + i.
fn causal_mask(n: usize, start: usize, device: &Device) -> Result<Tensor> {
    let kv_len = start + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..kv_len).map(move |j| if j <= start + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(mask, (n, kv_len), device)?)
}

fn rope_tables(cfg: &ModelConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv_freq: Vec<f32> =
        (0..half).map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.head_dim as f32)).collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
    let positions = Tensor::arange(0u32, cfg.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((cfg.context_length, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?.contiguous()?, angles.sin()?.contiguous()?))
}


//! Decoder hyper-parameters, read once from GGUF metadata.
use super::gguf::Metadata;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs (2i, 2i+1): llama GGUFs, whose Q/K rows the converter permuted.
    Interleaved,
    /// Halves (i, i + d/2): qwen2 ("NeoX" style).
    Halves,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rope_layout: RopeLayout,
    pub rms_eps: f32,
    /// Q, K and V projections carry a bias (qwen2).
    pub qkv_bias: bool,
}

impl ModelConfig {
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let arch = content.get_str("general.architecture")?.to_string();
        let (rope_layout, qkv_bias) = match arch.as_str() {
            "llama" => (RopeLayout::Interleaved, false),
            "qwen2" => (RopeLayout::Halves, true),
            other => {
                return Err(Error::Gguf(format!(
                    "architecture `{other}` is not supported; this decoder runs llama and qwen2 models"
                )))
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = content.get_u32(&key("embedding_length"))? as usize;
        let n_head = content.get_u32(&key("attention.head_count"))? as usize;
        let n_head_kv = content
            .get_u32(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head);
        if n_head == 0 || !n_embd.is_multiple_of(n_head) || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(Error::Gguf(format!(
                "inconsistent head counts: embedding {n_embd}, heads {n_head}, kv heads {n_head_kv}"
            )));
        }
        let head_dim = n_embd / n_head;
        if let Ok(rope_dim) = content.get_u32(&key("rope.dimension_count")) {
            if rope_dim as usize != head_dim {
                return Err(Error::Gguf(format!(
                    "partial rotary embeddings (rope dim {rope_dim} < head dim {head_dim}) are not supported"
                )));
            }
        }
        Ok(Self {
            n_layer: content.get_u32(&key("block_count"))? as usize,
            n_ff: content.get_u32(&key("feed_forward_length"))? as usize,
            context_length: content.get_u32(&key("context_length"))? as usize,
            rope_base: content.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: content.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            arch,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            rope_layout,
            qkv_bias,
        })
    }
}

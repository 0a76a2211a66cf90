//! The decoder on the GPU: the same llama/qwen2 computation as `model::decoder`, with the
//! weights in their GGUF blocks on the device and the KV cache there too. A step (one token)
//! is one submission; only the logits and the final hidden state come back, and only for the
//! last token of a prompt.
//!
//! Prompts run token by token (matrix-vector products); a batched prefill kernel is next.
use super::quant::{lookup, GpuMatrix, MatOp, Product};
use super::{bytes_of, Gpu, Op};
use crate::model::attention::Rope;
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::decoder::Step;
use crate::model::gguf::tensor;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::Device;
use std::io::{Read, Seek};

const PARAMS: &str = include_str!("params.wgsl");
/// Positions the GPU KV cache holds (the attention kernel keeps this many scores on chip).
pub const MAX_POSITIONS: usize = 2048;

/// The f32 kernels, each from its own file with the shared `Params`.
fn kernel(gpu: &Gpu, name: &str) -> std::sync::Arc<wgpu::ComputePipeline> {
    let source = match name {
        "rms_norm" => include_str!("rms_norm.wgsl"),
        "rope" => include_str!("rope.wgsl"),
        "attention" => include_str!("attention.wgsl"),
        "silu_mul" => include_str!("silu_mul.wgsl"),
        other => unreachable!("no kernel {other}"),
    };
    gpu.pipeline(name, || format!("{PARAMS}\n{source}"), name)
}

/// `Params` of the f32 kernels (params.wgsl).
#[derive(Debug, Clone, Copy, Default)]
struct Params {
    n: u32,
    heads: u32,
    kv_heads: u32,
    pos: u32,
    eps: f32,
    kv_row: u32,
    offset: u32,
    rope_layout: u32,
}

impl Params {
    fn bytes(&self) -> [u8; 32] {
        let words = [self.n, self.heads, self.kv_heads, self.pos, self.eps.to_bits(), self.kv_row, self.offset, self.rope_layout];
        let mut out = [0u8; 32];
        out.copy_from_slice(bytes_of(&words));
        out
    }
}

struct LayerOps {
    attn_norm: Op,
    q: Vec<MatOp>,
    k: Vec<MatOp>,
    v: Vec<MatOp>,
    rope_q: Op,
    rope_k: Op,
    attention: Op,
    o: Vec<MatOp>,
    ffn_norm: Op,
    gate: Vec<MatOp>,
    up: Vec<MatOp>,
    silu: Op,
    down: Vec<MatOp>,
}

pub struct GpuDecoder {
    gpu: Gpu,
    config: ModelConfig,
    vocab: usize,
    /// Positions in the KV cache; the next token goes here.
    len: usize,
    /// One-row lookups in the embedding table, one per part of it.
    embed: Vec<MatOp>,
    layers: Vec<LayerOps>,
    /// Every layer's rope_q and attention read `q_step`: position `pos`.
    q_params: Params,
    q_step: wgpu::Buffer,
    /// Every layer's rope_k reads `k_step`: position `pos`, rotating in the cache at `pos * kv_row`.
    k_params: Params,
    k_step: wgpu::Buffer,
    output_norm: Op,
    output: Vec<MatOp>,
    logits: wgpu::Buffer,
    hidden: wgpu::Buffer,
    /// Keeps the weights of the ops alive and names what was uploaded.
    _matrices: Vec<GpuMatrix>,
    /// The embedding table also stays on the CPU: the reward head reads a token's row.
    embedding_cpu: candle_core::quantized::QTensor,
}

impl GpuDecoder {
    pub fn from_gguf<R: Read + Seek>(gpu: Gpu, content: &Content, reader: &mut R) -> Result<Self> {
        let config = ModelConfig::from_gguf(content)?;
        let c = &config;
        let (hd, d) = (c.head_dim, c.n_embd);
        let kv_row = c.n_head_kv * hd;
        let positions = MAX_POSITIONS.min(c.context_length);
        let mut matrices = Vec::new();
        let upload = |name: &str, reader: &mut R| -> Result<GpuMatrix> {
            GpuMatrix::upload(&gpu, name, &tensor(content, reader, name, &Device::Cpu)?)
        };
        let floats = |name: &str, reader: &mut R| -> Result<wgpu::Buffer> {
            let values = tensor(content, reader, name, &Device::Cpu)?.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            gpu.storage(name, bytes_of(&values), wgpu::BufferUsages::empty())
        };
        let buffer = |label: &str, len: usize| gpu.output(label, len);
        let (x, h, q, att) = (buffer("x", d), buffer("h", d), buffer("q", c.n_head * hd), buffer("att", c.n_head * hd));
        let (gate, up) = (buffer("gate", c.n_ff), buffer("up", c.n_ff));
        let rope = Rope::new(c);
        let (rope_cos, rope_sin) = rope.tables();
        let half = hd / 2;
        let table: Vec<f32> = rope_cos[..positions * half].iter().chain(&rope_sin[..positions * half]).copied().collect();
        let rope_table = gpu.storage("rope", bytes_of(&table), wgpu::BufferUsages::empty())?;
        let rope_layout = match c.rope_layout {
            RopeLayout::Interleaved => 0,
            RopeLayout::Halves => 1,
        };
        // What every layer's kernels read; the step's position is written once per step.
        let q_params = Params { n: hd as u32, heads: c.n_head as u32, kv_heads: c.n_head_kv as u32, kv_row: kv_row as u32, rope_layout, ..Default::default() };
        let k_params = Params { heads: c.n_head_kv as u32, ..q_params };
        let (q_step, k_step) = (gpu.uniform("q step", &q_params.bytes()), gpu.uniform("k step", &k_params.bytes()));
        let norm_params = gpu.uniform("norm", &Params { n: d as u32, eps: c.rms_eps, ..Default::default() }.bytes());
        let silu_params = gpu.uniform("silu", &Params { n: c.n_ff as u32, ..Default::default() }.bytes());
        let norm = |x: &wgpu::Buffer, w: &wgpu::Buffer, out: &wgpu::Buffer| {
            gpu.op(kernel(&gpu, "rms_norm"), &[(0, x), (1, w), (2, out)], (3, &norm_params), (1, 1))
        };
        let groups = |n: usize| ((n as u32).div_ceil(64), 1);

        let embedding_cpu = tensor(content, reader, "token_embd.weight", &Device::Cpu)?;
        let embedding = GpuMatrix::upload(&gpu, "token_embd.weight", &embedding_cpu)?;
        let embed = embedding.rows_ops(&gpu, Some(1), &x);
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let name = |n: &str| format!("blk.{i}.{n}");
            let bias = |n: &str, reader: &mut R| -> Result<Option<wgpu::Buffer>> {
                match c.qkv_bias {
                    true => Ok(Some(floats(&name(&format!("{n}.bias")), reader)?)),
                    false => Ok(None),
                }
            };
            let (k_cache, v_cache) = (buffer("k cache", positions * kv_row), buffer("v cache", positions * kv_row));
            let (wq, bq) = (upload(&name("attn_q.weight"), reader)?, bias("attn_q", reader)?);
            let (wk, bk) = (upload(&name("attn_k.weight"), reader)?, bias("attn_k", reader)?);
            let (wv, bv) = (upload(&name("attn_v.weight"), reader)?, bias("attn_v", reader)?);
            let wo = upload(&name("attn_output.weight"), reader)?;
            let (wg, wu, wd) = (upload(&name("ffn_gate.weight"), reader)?, upload(&name("ffn_up.weight"), reader)?, upload(&name("ffn_down.weight"), reader)?);
            let (attn_norm_w, ffn_norm_w) = (floats(&name("attn_norm.weight"), reader)?, floats(&name("ffn_norm.weight"), reader)?);
            let ops = LayerOps {
                attn_norm: norm(&x, &attn_norm_w, &h),
                q: wq.matvec_ops(&gpu, &h, &q, Product { bias: bq.as_ref(), ..Default::default() })?,
                k: wk.matvec_ops(&gpu, &h, &k_cache, Product { bias: bk.as_ref(), ..Default::default() })?,
                v: wv.matvec_ops(&gpu, &h, &v_cache, Product { bias: bv.as_ref(), ..Default::default() })?,
                rope_q: gpu.op(kernel(&gpu, "rope"), &[(0, &q), (1, &rope_table)], (2, &q_step), groups(c.n_head * half)),
                rope_k: gpu.op(kernel(&gpu, "rope"), &[(0, &k_cache), (1, &rope_table)], (2, &k_step), groups(c.n_head_kv * half)),
                attention: gpu.op(kernel(&gpu, "attention"), &[(0, &q), (1, &k_cache), (2, &v_cache), (3, &att)], (4, &q_step), (c.n_head as u32, 1)),
                o: wo.matvec_ops(&gpu, &att, &x, Product { accumulate: true, ..Default::default() })?,
                ffn_norm: norm(&x, &ffn_norm_w, &h),
                gate: wg.matvec_ops(&gpu, &h, &gate, Product::default())?,
                up: wu.matvec_ops(&gpu, &h, &up, Product::default())?,
                silu: gpu.op(kernel(&gpu, "silu_mul"), &[(0, &gate), (1, &up)], (2, &silu_params), groups(c.n_ff)),
                down: wd.matvec_ops(&gpu, &gate, &x, Product { accumulate: true, ..Default::default() })?,
            };
            layers.push(ops);
            matrices.extend([wq, wk, wv, wo, wg, wu, wd]);
        }
        let hidden = buffer("hidden", d);
        let output_norm = norm(&x, &floats("output_norm.weight", reader)?, &hidden);
        // Small models tie the output projection to the embedding table.
        let output_matrix = match content.tensor_infos.contains_key("output.weight") {
            true => Some(upload("output.weight", reader)?),
            false => None,
        };
        let vocab = output_matrix.as_ref().unwrap_or(&embedding).rows;
        let logits = buffer("logits", vocab);
        let output = output_matrix.as_ref().unwrap_or(&embedding).matvec_ops(&gpu, &hidden, &logits, Product::default())?;
        matrices.push(embedding);
        matrices.extend(output_matrix);
        Ok(Self {
            gpu,
            config,
            vocab,
            len: 0,
            embed,
            layers,
            q_params,
            q_step,
            k_params,
            k_step,
            output_norm,
            output,
            logits,
            hidden,
            _matrices: matrices,
            embedding_cpu,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn adapter(&self) -> &wgpu::AdapterInfo {
        &self.gpu.adapter
    }

    /// The input embedding of a token (the reward head reads it), from the CPU copy.
    pub fn token_embedding(&self, id: u32) -> Result<Vec<f32>> {
        if id as usize >= self.vocab {
            return Err(Error::InvalidInput(format!("token id {id} is outside the vocabulary of {} ids", self.vocab)));
        }
        let row = self.embedding_cpu.embedding(&candle_core::Tensor::new(&[id], &Device::Cpu)?)?;
        Ok(row.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Makes the device unusable, as a lost device is (to test what survives that).
    pub fn lose_device(&self) {
        self.gpu.device.destroy();
    }

    /// Positions in the KV cache.
    pub fn kv_len(&self) -> usize {
        self.len
    }

    /// Forgets the conversation (the cache is overwritten from position 0).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Runs `tokens` after the cached positions; the step predicts the token after the last.
    pub async fn forward(&mut self, tokens: &[u32]) -> Result<Step> {
        let capacity = MAX_POSITIONS.min(self.config.context_length);
        if tokens.is_empty() {
            return Err(Error::InvalidInput("forward needs at least one token".into()));
        }
        if self.len + tokens.len() > capacity {
            return Err(Error::InvalidInput(format!(
                "GPU context full: {} cached + {} new tokens exceed its {capacity} positions; start a new conversation",
                self.len,
                tokens.len()
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::InvalidInput(format!("token id {bad} is outside the vocabulary of {} ids", self.vocab)));
        }
        for (i, &token) in tokens.iter().enumerate() {
            self.step(token, i + 1 == tokens.len());
        }
        let mut read = self.gpu.read_f32s(&[(&self.logits, self.vocab), (&self.hidden, self.config.n_embd)]).await?;
        self.gpu.check()?;
        let (hidden, logits) = (read.pop().expect("hidden"), read.pop().expect("logits"));
        Ok(Step { logits, hidden })
    }

    /// One token at position `len`, in one submission; the output projection only when its
    /// logits are wanted.
    fn step(&mut self, token: u32, last: bool) {
        let pos = self.len as u32;
        let gpu = &self.gpu;
        let kv_offset = pos * self.q_params.kv_row;
        gpu.queue.write_buffer(&self.q_step, 0, &Params { pos, ..self.q_params }.bytes());
        gpu.queue.write_buffer(&self.k_step, 0, &Params { pos, offset: kv_offset, ..self.k_params }.bytes());
        // K and V go straight into each layer's cache at this position.
        for layer in &self.layers {
            for m in layer.k.iter().chain(&layer.v) {
                m.write_y_offset(gpu, kv_offset);
            }
        }
        let mut ops: Vec<&Op> = vec![lookup(gpu, &self.embed, token as usize)];
        for l in &self.layers {
            ops.push(&l.attn_norm);
            ops.extend(all(&l.q).into_iter().chain(all(&l.k)).chain(all(&l.v)));
            ops.extend([&l.rope_q, &l.rope_k, &l.attention]);
            ops.extend(all(&l.o));
            ops.push(&l.ffn_norm);
            ops.extend(all(&l.gate).into_iter().chain(all(&l.up)));
            ops.push(&l.silu);
            ops.extend(all(&l.down));
        }
        if last {
            ops.push(&self.output_norm);
            ops.extend(all(&self.output));
        }
        gpu.run(&ops);
        self.len += 1;
    }
}

fn all(ops: &[MatOp]) -> Vec<&Op> {
    ops.iter().map(|m| &m.op).collect()
}

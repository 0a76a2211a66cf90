//! The decoder on the GPU: the same llama/qwen2 computation as `model::decoder`, with the
//! weights in their GGUF blocks on the device and the KV cache there too. A step (one token,
//! or up to [`CHUNK`] tokens of a prompt, through the matrix-matrix kernel) is one
//! submission; only a summary of the last token's logits (`logit_summary.wgsl`: the top ones,
//! normaliser and entropy) and its final hidden state come back.
use super::attention::Attention;
use super::quant::{Batch, GpuMatrix, MatOp, Output, Product, QuantizedInput};
use super::{bytes_of, Gpu, Groups, Op};
use crate::generate::SlmStep;
use crate::model::attention::Rope;
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::gguf::tensor;
use crate::sampler::TopLogits;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::QTensor;
use candle_core::Device;
use std::io::{Read, Seek};

const PARAMS: &str = include_str!("params.wgsl");
/// Bytes the KV cache of all layers may take. It is allocated whole when the model loads, so
/// it is bounded by memory rather than by the model's context: 512 MiB is about the weights of
/// qwen2.5-coder-0.5b, so that model needs about twice its file on the GPU (21845 positions of
/// its 32768) and smollm2-135m gets its whole context (8192 positions, 360 MiB).
const KV_CACHE_BYTES: usize = 512 << 20;
/// Prompt tokens one step computes (activation buffers hold this many rows).
pub const CHUNK: usize = 128;
/// Logits the summary sends back at most (`CAP` in logit_summary.wgsl), and words in all.
const SUMMARY_CAP: usize = 128;
const SUMMARY_WORDS: usize = 4 + 2 * SUMMARY_CAP;

/// The f32 kernels, each from its own file with the shared `Params`.
fn kernel(gpu: &Gpu, name: &str) -> std::sync::Arc<wgpu::ComputePipeline> {
    let source = match name {
        "rms_norm" => include_str!("rms_norm.wgsl"),
        "rope" => include_str!("rope.wgsl"),
        "silu_mul" => include_str!("silu_mul.wgsl"),
        "logit_summary" => include_str!("logit_summary.wgsl"),
        other => unreachable!("no kernel {other}"),
    };
    gpu.pipeline(name, || format!("{PARAMS}\n{source}"), name)
}

/// `Params` of the f32 kernels (params.wgsl).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Params {
    pub n: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub pos: u32,
    pub eps: f32,
    pub kv_row: u32,
    pub offset: u32,
    pub rope_layout: u32,
}

impl Params {
    pub fn bytes(&self) -> [u8; 32] {
        let words = [self.n, self.heads, self.kv_heads, self.pos, self.eps.to_bits(), self.kv_row, self.offset, self.rope_layout];
        let mut out = [0u8; 32];
        out.copy_from_slice(bytes_of(&words));
        out
    }
}

/// A layer's dispatches, in order.
struct LayerOps {
    /// RMS norm and quantization of the residual stream into `normed_in`.
    attn_norm: Op,
    /// q, k and v: one stacked product where their layouts agree, else three.
    qkv: Vec<MatOp>,
    rope_q: Op,
    rope_k: Op,
    /// The split attention and the merge of its splits.
    attention: [Op; 2],
    o: Vec<MatOp>,
    ffn_norm: Op,
    /// silu(gate) · up into `gate`: one gated product where their layouts agree, else the
    /// two products and `silu`.
    gate_up: Vec<MatOp>,
    silu: Option<Op>,
    down: Vec<MatOp>,
}

pub struct GpuDecoder {
    gpu: Gpu,
    config: ModelConfig,
    vocab: usize,
    /// Positions in the KV cache; the next token goes here.
    len: usize,
    /// Positions the KV cache holds.
    capacity: usize,
    /// Keeps the attention pipelines and their scratch buffers alive.
    _attention: Attention,
    /// The step's token ids, and its size and position for the matrix ops.
    ids: wgpu::Buffer,
    batch: Batch,
    /// Embedding lookups of the step's ids, one per part of the table.
    embed: Vec<Op>,
    layers: Vec<LayerOps>,
    /// The products' inputs quantized to 8 bits, each filled by its op before the products
    /// that read it: the normed residual (q, k, v, gate, up; filled by the layers' norms),
    /// attention's output (o), the FFN's activation (down) and the final hidden state (the
    /// output projection).
    _normed_in: QuantizedInput,
    attention_in: QuantizedInput,
    ffn_in: QuantizedInput,
    hidden_in: QuantizedInput,
    /// Every layer's rope_q and attention read `q_step`: the step's first position `pos`.
    q_params: Params,
    q_step: wgpu::Buffer,
    /// Every layer's rope_k reads `k_step`: position `pos`, rotating in the cache at `pos * kv_row`.
    k_params: Params,
    k_step: wgpu::Buffer,
    /// The final norm of the step's last row.
    output_params: Params,
    output_step: wgpu::Buffer,
    output_norm: Op,
    output: Vec<MatOp>,
    logits: wgpu::Buffer,
    summarize: Op,
    summary: wgpu::Buffer,
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
        let positions = capacity(c);
        let mut matrices = Vec::new();
        let upload = |name: &str, reader: &mut R| -> Result<GpuMatrix> { GpuMatrix::upload(&gpu, name, &tensor(content, reader, name, &Device::Cpu)?) };
        let floats = |name: &str, reader: &mut R| -> Result<wgpu::Buffer> {
            let values = tensor(content, reader, name, &Device::Cpu)?.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            // Copyable: products copy their biases side by side.
            gpu.storage(name, bytes_of(&values), wgpu::BufferUsages::COPY_SRC)
        };
        // Activations: a row per token of the step.
        let rows = |label: &str, width: usize| gpu.output(label, CHUNK * width);
        let (x, q, att) = (rows("x", d), rows("q", c.n_head * hd), rows("att", c.n_head * hd));
        let (gate, up) = (rows("gate", c.n_ff), rows("up", c.n_ff));
        let ids = gpu.storage("ids", &[0; 4 * CHUNK], wgpu::BufferUsages::empty())?;
        let batch = Batch::new(&gpu);
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
        let norm_params = Params { n: d as u32, eps: c.rms_eps, ..Default::default() };
        let silu_params = gpu.uniform("silu", &Params { n: c.n_ff as u32, ..Default::default() }.bytes());
        let across = |n: usize| (n as u32).div_ceil(64);
        let attention = Attention::new(&gpu, c.n_head, c.n_head_kv, hd, CHUNK)?;

        let normed_in = QuantizedInput::for_norms(&gpu, d, CHUNK);
        let attention_in = QuantizedInput::new(&gpu, &att, c.n_head * hd, CHUNK);
        let ffn_in = QuantizedInput::new(&gpu, &gate, c.n_ff, CHUNK);
        let embedding_cpu = tensor(content, reader, "token_embd.weight", &Device::Cpu)?;
        let embedding = GpuMatrix::upload(&gpu, "token_embd.weight", &embedding_cpu)?;
        let embed = embedding.gather_ops(&gpu, &ids, &x, &batch);
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let name = |n: &str| format!("blk.{i}.{n}");
            let bias = |n: &str, reader: &mut R| -> Result<Option<wgpu::Buffer>> {
                match c.qkv_bias {
                    true => Ok(Some(floats(&name(&format!("{n}.bias")), reader)?)),
                    false => Ok(None),
                }
            };
            let (k_cache, v_cache) = (gpu.output("k cache", positions * kv_row), gpu.output("v cache", positions * kv_row));
            let read = |n: &str, reader: &mut R| tensor(content, reader, &name(n), &Device::Cpu);
            let (tq, bq) = (read("attn_q.weight", reader)?, bias("attn_q", reader)?);
            let (tk, bk) = (read("attn_k.weight", reader)?, bias("attn_k", reader)?);
            let (tv, bv) = (read("attn_v.weight", reader)?, bias("attn_v", reader)?);
            let wo = upload(&name("attn_output.weight"), reader)?;
            let (tg, tu, wd) = (read("ffn_gate.weight", reader)?, read("ffn_up.weight", reader)?, upload(&name("ffn_down.weight"), reader)?);
            let (attn_norm_w, ffn_norm_w) = (floats(&name("attn_norm.weight"), reader)?, floats(&name("ffn_norm.weight"), reader)?);
            let output = |y, product| Output { y, product };
            // K and V go straight into the layer's cache at the step's positions.
            let cached = |bias| Product { bias, at_position: true, ..Default::default() };
            let residual = [output(&x, Product { accumulate: true, ..Default::default() })];
            let qkv_outputs =
                [output(&q, Product { bias: bq.as_ref(), ..Default::default() }), output(&k_cache, cached(bk.as_ref())), output(&v_cache, cached(bv.as_ref()))];
            // Matrices that cannot be stacked (different layouts) each get their own product.
            let mut products = |stacked: Option<GpuMatrix>, each: &[(&QTensor, &str, Output)]| -> Result<Vec<MatOp>> {
                if let Some(m) = stacked {
                    // A gated pair writes one output, the first (silu(gate)·up into `gate`).
                    let outputs: Vec<Output> = each.iter().map(|e| e.2).take(m.outputs()).collect();
                    let ops = m.product_ops(&gpu, &normed_in, &outputs, &batch)?;
                    matrices.push(m);
                    return Ok(ops);
                }
                let mut ops = Vec::new();
                for (t, n, o) in each {
                    let m = GpuMatrix::upload(&gpu, &name(n), t)?;
                    ops.extend(m.product_ops(&gpu, &normed_in, &[*o], &batch)?);
                    matrices.push(m);
                }
                Ok(ops)
            };
            let qkv = products(
                GpuMatrix::stack(&gpu, &name("attn_qkv"), &[&tq, &tk, &tv])?,
                &[(&tq, "attn_q.weight", qkv_outputs[0]), (&tk, "attn_k.weight", qkv_outputs[1]), (&tv, "attn_v.weight", qkv_outputs[2])],
            )?;
            let gated = GpuMatrix::stack_gated(&gpu, &name("ffn_gate_up"), &tg, &tu)?;
            let silu = match gated {
                Some(_) => None,
                None => Some(gpu.op(kernel(&gpu, "silu_mul"), &[(0, &gate), (1, &up), (2, &silu_params)], Groups::per_token(across(c.n_ff))).named("silu_mul")),
            };
            let plain = Product::default();
            let gate_up = products(gated, &[(&tg, "ffn_gate.weight", output(&gate, plain)), (&tu, "ffn_up.weight", output(&up, plain))])?;
            let ops = LayerOps {
                attn_norm: normed_in.normed_op(&gpu, &x, &attn_norm_w, c.rms_eps),
                qkv,
                rope_q: gpu.op(kernel(&gpu, "rope"), &[(0, &q), (1, &rope_table), (2, &q_step)], Groups::per_token(across(c.n_head * half))).named("rope"),
                rope_k: gpu
                    .op(kernel(&gpu, "rope"), &[(0, &k_cache), (1, &rope_table), (2, &k_step)], Groups::per_token(across(c.n_head_kv * half)))
                    .named("rope"),
                attention: attention.ops(&gpu, &q, &k_cache, &v_cache, &att, &q_step),
                o: wo.product_ops(&gpu, &attention_in, &residual, &batch)?,
                ffn_norm: normed_in.normed_op(&gpu, &x, &ffn_norm_w, c.rms_eps),
                gate_up,
                silu,
                down: wd.product_ops(&gpu, &ffn_in, &residual, &batch)?,
            };
            layers.push(ops);
            matrices.extend([wo, wd]);
        }
        let hidden = gpu.output("hidden", d);
        let output_params = norm_params;
        let output_step = gpu.uniform("output norm", &output_params.bytes());
        let output_norm_w = floats("output_norm.weight", reader)?;
        let output_norm =
            gpu.op(kernel(&gpu, "rms_norm"), &[(0, &x), (1, &output_norm_w), (2, &hidden), (3, &output_step)], Groups::fixed(1, 1)).named("rms_norm");
        // Small models tie the output projection to the embedding table.
        let output_matrix = match content.tensor_infos.contains_key("output.weight") {
            true => Some(upload("output.weight", reader)?),
            false => None,
        };
        let vocab = output_matrix.as_ref().unwrap_or(&embedding).rows;
        let logits = gpu.output("logits", vocab);
        let hidden_in = QuantizedInput::new(&gpu, &hidden, d, 1);
        let output =
            output_matrix.as_ref().unwrap_or(&embedding).product_ops(&gpu, &hidden_in, &[Output { y: &logits, product: Product::default() }], &batch)?;
        let (summarize, summary) = summary_op(&gpu, &logits, vocab);
        matrices.push(embedding);
        matrices.extend(output_matrix);
        Ok(Self {
            gpu,
            config,
            vocab,
            len: 0,
            capacity: positions,
            _attention: attention,
            ids,
            batch,
            embed,
            layers,
            _normed_in: normed_in,
            attention_in,
            ffn_in,
            hidden_in,
            q_params,
            q_step,
            k_params,
            k_step,
            output_params,
            output_step,
            output_norm,
            output,
            logits,
            summarize,
            summary,
            hidden,
            _matrices: matrices,
            embedding_cpu,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Whether [`GpuDecoder::profile`] times kernels on the device (timestamp queries).
    pub fn has_timestamps(&self) -> bool {
        self.gpu.has_timestamps()
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

    /// Positions the KV cache holds; a step past them fails, and the caller goes on on the CPU.
    pub fn kv_capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the conversation (the cache is overwritten from position 0).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets the positions from `len` on (they are overwritten by the next step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Runs `tokens` after the cached positions, [`CHUNK`] at a time; the step predicts the
    /// token after the last.
    pub async fn forward(&mut self, tokens: &[u32]) -> Result<SlmStep> {
        let capacity = self.capacity;
        if tokens.is_empty() {
            return Err(Error::InvalidInput("forward needs at least one token".into()));
        }
        if self.len + tokens.len() > capacity {
            // A GPU error: the caller goes on on the CPU, whose cache is the model's context.
            return Err(Error::Gpu(format!("GPU context full: {} cached + {} new tokens exceed its {capacity} positions", self.len, tokens.len())));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::InvalidInput(format!("token id {bad} is outside the vocabulary of {} ids", self.vocab)));
        }
        let chunks = tokens.len().div_ceil(CHUNK);
        for (i, chunk) in tokens.chunks(CHUNK).enumerate() {
            self.step(chunk, i + 1 == chunks);
        }
        let mut read = self.gpu.read_words(&[(&self.summary, SUMMARY_WORDS), (&self.hidden, self.config.n_embd)]).await?;
        self.gpu.check()?;
        let (hidden, summary) = (read.pop().expect("hidden"), read.pop().expect("summary"));
        Ok(SlmStep { top: top_logits(&summary)?, hidden: hidden.into_iter().map(f32::from_bits).collect() })
    }

    /// The whole vocabulary's logits of the last step (what the summary is computed from; for
    /// tests: the decoder itself reads back only the summary).
    pub async fn last_logits(&self) -> Result<Vec<f32>> {
        self.gpu.read_f32(&self.logits, self.vocab).await
    }

    /// `tokens` at positions `len..`, in one submission; the output projection and its
    /// summary only when the step's logits are wanted.
    fn step(&mut self, tokens: &[u32], last: bool) {
        self.write_step(tokens, last);
        self.gpu.run(&self.step_ops(tokens.len(), last), tokens.len() as u32);
        self.len += tokens.len();
    }

    /// Each kernel's time in a step of `tokens` after the cached positions (which stay as
    /// they were): (the op's kind, weight bytes, flops per token, seconds), in dispatch order.
    pub async fn profile(&mut self, tokens: &[u32]) -> Result<Vec<(String, u64, u64, f64)>> {
        if tokens.is_empty() || tokens.len() > CHUNK || self.len + tokens.len() > self.capacity {
            return Err(Error::InvalidInput(format!("a profiled step takes 1 to {CHUNK} tokens that fit the GPU context")));
        }
        self.write_step(tokens, true);
        let ops = self.step_ops(tokens.len(), true);
        let times = self.gpu.profile(&ops, tokens.len() as u32).await?;
        Ok(ops.iter().zip(times).map(|(op, t)| (op.kind.clone(), op.weight_bytes, op.flops_per_token, t)).collect())
    }

    /// Writes what the step's kernels read: its ids, size and position.
    fn write_step(&self, tokens: &[u32], last: bool) {
        let (n, pos) = (tokens.len(), self.len as u32);
        let gpu = &self.gpu;
        gpu.queue.write_buffer(&self.ids, 0, bytes_of(tokens));
        self.batch.write(gpu, n, pos as usize);
        gpu.queue.write_buffer(&self.q_step, 0, &Params { pos, ..self.q_params }.bytes());
        gpu.queue.write_buffer(&self.k_step, 0, &Params { pos, offset: pos * self.q_params.kv_row, ..self.k_params }.bytes());
        if last {
            let offset = ((n - 1) * self.config.n_embd) as u32;
            gpu.queue.write_buffer(&self.output_step, 0, &Params { offset, ..self.output_params }.bytes());
        }
    }

    /// The dispatches of a step of `n` tokens, in order.
    fn step_ops(&self, n: usize, last: bool) -> Vec<&Op> {
        let product = |ops| for_tokens(ops, n);
        let mut ops: Vec<&Op> = self.embed.iter().collect();
        for l in &self.layers {
            ops.push(&l.attn_norm);
            ops.extend(product(&l.qkv));
            ops.extend([&l.rope_q, &l.rope_k, &l.attention[0], &l.attention[1], self.attention_in.quantize()]);
            ops.extend(product(&l.o));
            ops.push(&l.ffn_norm);
            ops.extend(product(&l.gate_up));
            ops.extend(l.silu.iter());
            ops.push(self.ffn_in.quantize());
            ops.extend(product(&l.down));
        }
        if last {
            ops.extend([&self.output_norm, self.hidden_in.quantize()]);
            ops.extend(self.output.iter().map(|m| m.for_tokens(1)));
            ops.push(&self.summarize);
        }
        ops
    }
}

/// Positions the GPU KV cache of a model holds: its context, or as many as [`KV_CACHE_BYTES`] hold.
pub fn capacity(c: &ModelConfig) -> usize {
    let per_position = 2 * c.n_layer * c.n_head_kv * c.head_dim * 4;
    c.context_length.min(KV_CACHE_BYTES / per_position.max(1))
}

/// The summary of `vocab` logits (`logit_summary.wgsl`), and the buffer it writes.
fn summary_op(gpu: &Gpu, logits: &wgpu::Buffer, vocab: usize) -> (Op, wgpu::Buffer) {
    let summary = gpu.output("logit summary", SUMMARY_WORDS);
    let params = gpu.uniform("summary", &Params { n: vocab as u32, heads: TopLogits::K as u32, ..Default::default() }.bytes());
    (gpu.op(kernel(gpu, "logit_summary"), &[(0, logits), (1, &summary), (2, &params)], Groups::fixed(1, 1)).named("logit_summary"), summary)
}

/// What the decoder reads back of `logits`, computed on the GPU (for tests of the kernel).
pub async fn summarize(gpu: &Gpu, logits: &[f32]) -> Result<TopLogits> {
    let buffer = gpu.storage("logits", bytes_of(logits), wgpu::BufferUsages::empty())?;
    let (op, summary) = summary_op(gpu, &buffer, logits.len());
    gpu.run(&[&op], 1);
    let words = gpu.read_words(&[(&summary, SUMMARY_WORDS)]).await?.pop().expect("one read");
    gpu.check()?;
    top_logits(&words)
}

fn for_tokens(ops: &[MatOp], tokens: usize) -> Vec<&Op> {
    ops.iter().map(|m| m.for_tokens(tokens)).collect()
}

/// The top logits from `logit_summary.wgsl`'s words: found, max, log Σ exp, entropy, then
/// (id, logit bits) pairs.
fn top_logits(words: &[u32]) -> Result<TopLogits> {
    let found = (words[0] as usize).min(SUMMARY_CAP);
    if found == 0 {
        return Err(Error::Gpu("the GPU's logits are not numbers (no top logit found)".into()));
    }
    let candidates = words[4..4 + 2 * found].chunks_exact(2).map(|p| (p[0], f32::from_bits(p[1]))).collect();
    Ok(TopLogits::from_candidates(candidates, f32::from_bits(words[2]), f32::from_bits(words[3])))
}

//! One decoder for the llama/qwen2 family, written on candle ops with quantized matmuls
//! straight from the GGUF tensors. `forward` takes a batch of new tokens (prefill) or
//! one token (decode) and returns the logits of the last position and the final hidden
//! state that produced them (the reward head reads it).
pub use super::attention::KvCache;
use super::attention::{attend, KvDtype, Rope};
use super::config::ModelConfig;
use super::gguf::tensor;
use super::weights::QWeight;
use super::with_values;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
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

/// Which kernels the quantized products run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kernels {
    /// Several rows at once (prefill) through our batched kernels (`gemm`), a single row (a
    /// decode step) through our matrix-vector kernels (`gemv`) or candle's. Fastest; but the
    /// two meet the same row with different arithmetic, so a prompt run whole and run in
    /// pieces differ in the last bits.
    #[default]
    Fastest,
    /// Every row through one kernel whose result for a row never depends on the other rows of
    /// the pass: `gemv` where the CPU has it for the format, else candle's. The server runs
    /// this: a cached prefix, a batch of sessions and one request alone then give exactly the
    /// same tokens.
    RowInvariant,
    /// candle's kernels on the weights as stored (no rewritten formats): the reference the
    /// parity tests compare the decoder with.
    CandleReference,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub kernels: Kernels,
    /// How KV caches store keys and values.
    pub kv_dtype: KvDtype,
}

impl LoadOptions {
    /// What the cloud side runs (`hybrid serve`, and whatever must give exactly its tokens:
    /// `hybrid generate`, the in-process cloud of evaluations and label collection).
    pub fn cloud() -> Self {
        LoadOptions { kernels: Kernels::RowInvariant, kv_dtype: CLOUD_KV_DTYPE }
    }
}

/// The cloud's KV cache type (`hybrid serve --kv-dtype` overrides it): f16 takes half the
/// memory and decodes faster than f32 where attention reads much of the cache
/// (examples/kv_dtype_lab.rs; docs/server.md).
pub const CLOUD_KV_DTYPE: KvDtype = KvDtype::F16;

/// A quantized projection with an optional bias.
struct Linear {
    weight: QWeight,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.add_bias(self.weight.forward(x)?)
    }

    /// `forward` of each on the same `x`, as one product where the kernels allow.
    fn forward_each<const N: usize>(linears: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let mut ys = QWeight::forward_each(linears.map(|l| &l.weight), x)?;
        for (y, linear) in ys.iter_mut().zip(linears) {
            *y = linear.add_bias(y.clone())?;
        }
        Ok(ys)
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
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

pub struct Decoder {
    config: ModelConfig,
    /// Whether every product runs on rayon's threads (`gemv` for every row), so that the
    /// element-wise ops should too, rather than on candle's pool.
    elementwise_on_rayon: bool,
    /// Whether a row's result never depends on the other rows of a pass (`Kernels::RowInvariant`),
    /// so the last layer may compute fewer rows without changing a bit.
    row_invariant: bool,
    kv_dtype: KvDtype,
    device: Device,
    embedding: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: QWeight,
    rope: Rope,
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
        let mut file = std::fs::File::open(path).map_err(|e| Error::File { path: path.to_path_buf(), message: format!("cannot open model file: {e}") })?;
        let content = super::gguf::read_content(&mut file)?;
        Self::from_gguf(&content, &mut file, &Device::Cpu, options)
    }

    pub fn from_gguf<R: Read + Seek>(content: &Content, reader: &mut R, device: &Device, options: LoadOptions) -> Result<Self> {
        // A kernel set the CPU lacks (HYBRID_KERNELS) stops here, before any kernel runs.
        super::cpu::KernelSet::select()?;
        let weight = |t: QTensor| QWeight::new(t, options.kernels);
        let config = ModelConfig::from_gguf(content)?;
        let mut qtensor = |name: &str| tensor(content, reader, name, device);
        let embedding = Arc::new(qtensor("token_embd.weight")?);
        // Small models tie the output projection to the embedding table.
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => weight(qtensor("output.weight")?)?,
            false => QWeight::from_arc(embedding.clone(), options.kernels)?,
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
        let rope = Rope::new(&config);
        Ok(Self {
            config,
            elementwise_on_rayon: options.kernels == Kernels::RowInvariant && super::gemv::Kernel::detect().is_some(),
            row_invariant: options.kernels == Kernels::RowInvariant,
            kv_dtype: options.kv_dtype,
            device: device.clone(),
            embedding,
            layers,
            output_norm,
            output,
            rope,
            cache: KvCache::default(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// KV cache bytes one position takes in every layer.
    pub fn kv_bytes_per_position(&self) -> usize {
        let c = &self.config;
        c.n_layer * 2 * c.n_head_kv * c.head_dim * self.kv_dtype.bytes()
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
        let mut cache = std::mem::take(&mut self.cache);
        let result = self.forward_batch(&mut [Sequence { cache: &mut cache, tokens }]);
        self.cache = cache;
        Ok(result?.pop().expect("one step per sequence"))
    }

    /// One forward pass over several sequences, each with its own KV cache and new tokens
    /// (a prefill chunk or a single decode token). The projections run once over the rows of
    /// all sequences, so a batch of decode steps reads each weight matrix once; attention runs
    /// per sequence. Returns one `Step` per sequence, for its last new token. On error every
    /// cache is left as it was.
    pub fn forward_batch(&self, batch: &mut [Sequence<'_>]) -> Result<Vec<Step>> {
        self.run_batch(batch, Outputs::LastOfEach)
    }

    /// Like [`forward_batch`](Self::forward_batch), but sequence `i` gets a `Step` for each of
    /// its last `tails[i]` new tokens (at least its last one, at most all of them), in order:
    /// scoring a prompt's tail costs the vocabulary projection of those rows only.
    pub fn forward_tails(&self, batch: &mut [Sequence<'_>], tails: &[usize]) -> Result<Vec<Vec<Step>>> {
        if tails.len() != batch.len() {
            return Err(Error::InvalidInput(format!("{} tail counts for {} sequences; pass one per sequence", tails.len(), batch.len())));
        }
        if let Some((seq, &k)) = batch.iter().zip(tails).find(|(s, &k)| k == 0 || k > s.tokens.len()) {
            return Err(Error::InvalidInput(format!("a sequence of {} new tokens cannot get logits for its last {k}: ask for 1 to {0}", seq.tokens.len())));
        }
        let mut steps = self.run_batch(batch, Outputs::Tails(tails))?.into_iter();
        Ok(tails.iter().map(|&k| steps.by_ref().take(k).collect()).collect())
    }

    fn run_batch(&self, batch: &mut [Sequence<'_>], outputs: Outputs<'_>) -> Result<Vec<Step>> {
        let row = self.config.n_head_kv * self.config.head_dim;
        for seq in batch.iter_mut() {
            seq.cache.prepare(self.config.n_layer, row, self.kv_dtype);
            seq.cache.reserve(seq.tokens.len());
        }
        let starts: Vec<usize> = batch.iter().map(|s| s.cache.len).collect();
        for (seq, &start) in batch.iter().zip(&starts) {
            self.check_input(seq.tokens, start)?;
        }
        let result = on_worker(|| self.forward_rows(batch, &starts, outputs));
        for (seq, &start) in batch.iter_mut().zip(&starts) {
            match &result {
                Ok(_) => seq.cache.len = start + seq.tokens.len(),
                // Layers before the failure already appended; keep every cache consistent.
                Err(_) => seq.cache.truncate(start),
            }
        }
        result
    }

    /// Self-attention of layer `l` for every sequence of the batch; `x` holds the rows of
    /// all sequences in batch order, at `positions`. Every row's keys and values go into the
    /// caches; the output has a row for each input row, or with `tails` each sequence's last
    /// `tails[i]` rows only.
    fn attention(&self, layer: &Layer, l: usize, x: &Tensor, positions: &[usize], batch: &mut [Sequence<'_>], tails: Option<&[usize]>) -> Result<Tensor> {
        let cfg = &self.config;
        let (rows, hd) = (x.dim(0)?, cfg.head_dim);
        let flat = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let [q, k, v] = Linear::forward_each([&layer.q, &layer.k, &layer.v], x)?;
        let (mut q, mut k, v) = (flat(q)?, flat(k)?, flat(v)?);
        let (q_row, kv_row) = (cfg.n_head * hd, cfg.n_head_kv * hd);
        super::cpu::vectorized(
            #[inline(always)]
            || {
                for (r, &pos) in positions.iter().enumerate() {
                    self.rope.apply(&mut q[r * q_row..][..q_row], pos);
                    self.rope.apply(&mut k[r * kv_row..][..kv_row], pos);
                }
            },
        );
        let mut out = Vec::with_capacity(rows * q_row);
        let mut first = 0;
        for (i, seq) in batch.iter_mut().enumerate() {
            let n = seq.tokens.len();
            let cache = &mut seq.cache.layers[l];
            cache.k.extend_from_f32(&k[first * kv_row..(first + n) * kv_row]);
            cache.v.extend_from_f32(&v[first * kv_row..(first + n) * kv_row]);
            let kept = tails.map_or(n, |t| t[i]);
            let queries = first + n - kept..first + n;
            out.extend(attend(cfg, &q[queries.start * q_row..queries.end * q_row], &positions[queries], cache));
            first += n;
        }
        let out_rows = tails.map_or(rows, |t| t.iter().sum());
        layer.o.forward(&Tensor::from_vec(out, (out_rows, q_row), &self.device)?)
    }

    fn check_input(&self, tokens: &[u32], start: usize) -> Result<()> {
        let n = tokens.len();
        let context = self.config.context_length;
        if n == 0 {
            return Err(Error::InvalidInput("forward needs at least one token".into()));
        }
        if start + n > context {
            return Err(Error::InvalidInput(format!(
                "context full: {start} cached + {n} new tokens exceed the model's {context} positions; start a new conversation or truncate the cache"
            )));
        }
        let vocab = self.vocab_size();
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!("token id {bad} is outside the vocabulary of {vocab} ids")));
        }
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.embedding.shape().dims()[0]
    }

    /// The input embedding of one token (the reward head reads it).
    pub fn token_embedding(&self, id: u32) -> Result<Vec<f32>> {
        self.check_input(&[id], 0)?;
        let row = self.embedding.embedding(&Tensor::new(&[id], &self.device)?)?;
        Ok(row.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Like [`forward`](Self::forward), but returns a `Step` for every new token, not only the
    /// last: the logits that predict the token after each one. Teacher forcing reads these.
    /// The vocabulary projection costs `tokens.len()` rows of logits: pass chunks.
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<Step>> {
        let mut cache = std::mem::take(&mut self.cache);
        let result = self.run_batch(&mut [Sequence { cache: &mut cache, tokens }], Outputs::Every);
        self.cache = cache;
        result
    }

    fn forward_rows(&self, batch: &mut [Sequence<'_>], starts: &[usize], outputs: Outputs<'_>) -> Result<Vec<Step>> {
        let cfg = &self.config;
        let tokens: Vec<u32> = batch.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let positions: Vec<usize> = batch.iter().zip(starts).flat_map(|(s, &start)| start..start + s.tokens.len()).collect();
        let ids = Tensor::new(tokens.as_slice(), &self.device)?;
        let mut x = self.embedding.embedding(&ids)?; // (rows, n_embd)
        let eps = cfg.rms_eps;
        let tails: Vec<usize> = match outputs {
            Outputs::LastOfEach => vec![1; batch.len()],
            Outputs::Every => batch.iter().map(|s| s.tokens.len()).collect(),
            Outputs::Tails(tails) => tails.to_vec(),
        };
        let every_row = tails.iter().sum::<usize>() == tokens.len();
        // Only the rows that get logits need the last layer past its keys and values (a 12-token
        // consult computes 1 row there, not 12). Only where that cannot change their bits.
        let trim_last_layer = !every_row && self.row_invariant;
        let n_layer = self.layers.len();
        for (l, layer) in self.layers.iter().enumerate() {
            let trim = trim_last_layer && l + 1 == n_layer;
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let a = self.attention(layer, l, &h, &positions, batch, trim.then_some(tails.as_slice()))?;
            if trim {
                x = tails_of_each(&x, batch, &tails)?;
            }
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let [gate, up] = QWeight::forward_each([&layer.gate, &layer.up], &h)?;
            let f = layer.down.forward(&match self.elementwise_on_rayon {
                true => silu_mul(&gate, &up)?,
                // Prompts' products run on candle's pool (its tiled kernels): so does this.
                false => (candle_nn::ops::silu(&gate)? * up)?,
            })?;
            x = (x + f)?;
        }
        // Usually only each sequence's last position needs logits: skip the vocabulary projection for the rest.
        let kept = match every_row || trim_last_layer {
            true => x,
            false => tails_of_each(&x, batch, &tails)?,
        };
        let hidden = candle_nn::ops::rms_norm(&kept, &self.output_norm, eps)?;
        let logits = self.output.forward(&hidden)?;
        let (logits, hidden) = (logits.to_vec2::<f32>()?, hidden.to_vec2::<f32>()?);
        Ok(logits.into_iter().zip(hidden).map(|(logits, hidden)| Step { logits, hidden }).collect())
    }
}

/// The rows of `x` (all sequences' rows in batch order) that are each sequence's last
/// `tails[i]`.
fn tails_of_each(x: &Tensor, batch: &[Sequence<'_>], tails: &[usize]) -> Result<Tensor> {
    Ok(match batch {
        [one] => x.narrow(0, one.tokens.len() - tails[0], tails[0])?,
        _ => {
            let mut end = 0u32;
            let mut rows = Vec::with_capacity(tails.iter().sum());
            for (s, &k) in batch.iter().zip(tails) {
                end += s.tokens.len() as u32;
                rows.extend(end - k as u32..end);
            }
            x.index_select(&Tensor::new(rows.as_slice(), x.device())?, 0)?
        }
    })
}

/// `silu(gate) · up`, element by element, on rayon's threads. candle's element-wise ops hand
/// tensors of 64K values or more (a prompt's feed-forward activations) to its own thread pool,
/// whose threads then spin for more work while rayon's run the next product (with every
/// product on rayon, 12 new tokens cost 30% more that way).
fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    const CHUNK: usize = 8 * 1024;
    let mut out = vec![0f32; gate.elem_count()];
    with_values(gate, |g| {
        with_values(up, |u| {
            let pieces = out.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)));
            pieces.for_each(|(out, (g, u))| super::exp::silu_mul(out, g, u));
        })
    })??;
    Ok(Tensor::from_vec(out, gate.shape(), gate.device())?)
}

/// Runs a forward pass on one of rayon's workers, so that each of the kernels' parallel loops
/// (hundreds per decode step) starts right there instead of handing its work from this thread
/// to the pool and waiting to be woken.
fn on_worker<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    #[cfg(not(target_arch = "wasm32"))]
    return rayon::scope(|_| pass());
    #[cfg(target_arch = "wasm32")]
    pass()
}

/// Which rows of a forward pass get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outputs<'a> {
    LastOfEach,
    Every,
    /// Each sequence's last `tails[i]` rows.
    Tails(&'a [usize]),
}

/// One sequence's part of a batched forward pass.
pub struct Sequence<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
}

//! Quantized matrices on the GPU and the kernels that read them (`quant.wgsl`).
//!
//! At upload each GGUF format is repacked, exactly, into one of two layouts the kernels read
//! with aligned 16-byte loads: 4-bit levels with an f32 scale and offset per 32 values
//! (Q4_0, Q4_1, Q4_K), or 8-bit levels with an f32 scale per 16 values (Q8_0, Q5_0, Q6_K).
//! Products quantize their input to 8 bits per 32 values (`quantize.wgsl`, as the CPU's
//! integer kernels do) and sum levels with `dot4I8Packed`: on a software adapter a load costs
//! a loop over the SIMD lanes, so the kernels load as few, as wide words as they can, and
//! reuse each input word for several rows (and tokens).
//!
//! A matrix larger than one binding may hold (WebGPU guarantees 128 MiB; a 150k-token
//! vocabulary projection is more) is split by rows into parts, each its own buffer and dispatch.
use super::{bytes_of, Gpu, Groups, Op, Span};
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};

const SOURCE: &str = include_str!("quant.wgsl");
const QUANTIZE: &str = include_str!("quantize.wgsl");
/// Workgroups per dispatch dimension (the WebGPU minimum limit).
const MAX_GROUPS: u32 = 65535;
/// Values per chunk: the unit of a scale (or two) and of the input's 8-bit quantization.
const CHUNK_VALUES: usize = 32;
/// Rows each thread of a product computes, and the tokens it computes them for in a prefill
/// (`R`, `TT` of quant.wgsl).
const ROWS_PER_THREAD: u32 = 4;
const _: () = assert!(ROWS_PER_THREAD == 4, "quant.wgsl's matvec is written for 4 rows per thread");
const TOKENS_PER_THREAD: u32 = 4;

/// Threads of a product workgroup (`WG` of quant.wgsl). A software adapter runs a workgroup
/// on one core, 8 lanes at a time: one SIMD row per workgroup spreads a 576-row matrix over
/// 18 workgroups instead of 3, so every core has work (on 2 cores the difference was within
/// the machine's noise; it is for machines with more).
fn product_threads(gpu: &Gpu) -> u32 {
    if gpu.is_software() {
        8
    } else {
        64
    }
}

/// `groups` workgroups laid out across dispatch dimensions x and y (each holds at most
/// 65535), with the `groups_per_y` of `Dims` that kernels use to number them.
fn spread(groups: u32) -> (Groups, u32) {
    let per_y = groups.min(MAX_GROUPS);
    (Groups::fixed(per_y, groups.div_ceil(MAX_GROUPS)), per_y)
}

/// The formats the kernels read: those of smollm2-135m and the qwen2.5-coder models.
pub const FORMATS: [GgmlDType; 6] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K];

/// The two layouts on the GPU (`LAYOUT` in quant.wgsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Per 32 values: 16 bytes of 4-bit levels (byte j holds values j and j + 16, as Q4_1
    /// does), and `value = scale · level + offset`.
    Q4 = 0,
    /// Per 32 values: 32 signed 8-bit levels, and `value = scale · level` with one scale for
    /// each 16 values.
    Q8 = 1,
}

impl Layout {
    fn of(dtype: GgmlDType) -> Result<Self> {
        match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q4K => Ok(Layout::Q4),
            GgmlDType::Q8_0 | GgmlDType::Q5_0 | GgmlDType::Q6K => Ok(Layout::Q8),
            other => Err(Error::Gpu(format!("no kernel reads {other:?} weights; run on the CPU"))),
        }
    }

    /// 16-byte words of levels per chunk.
    fn level_words(self) -> usize {
        match self {
            Layout::Q4 => 1,
            Layout::Q8 => 2,
        }
    }
}

fn f16_at(b: &[u8], o: usize) -> f32 {
    half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}

/// One GGUF block as levels and, per 16 values, `(scale, offset)`: value = scale · level +
/// offset, computed as ggml dequantizes (each product exact in f32).
fn decode_block(dtype: GgmlDType, b: &[u8], levels: &mut Vec<i32>, runs: &mut Vec<(f32, f32)>) {
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
            let (d, m, qs) = match dtype {
                GgmlDType::Q4_0 => (f16_at(b, 0), -8.0 * f16_at(b, 0), &b[2..18]),
                _ => (f16_at(b, 0), f16_at(b, 2), &b[4..20]),
            };
            levels.extend(qs.iter().map(|&q| i32::from(q & 15)).chain(qs.iter().map(|&q| i32::from(q >> 4))));
            runs.extend([(d, m); 2]);
        }
        GgmlDType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            levels.extend((0..16).map(|j| i32::from(qs[j] & 15) | (((qh >> j) & 1) << 4) as i32).map(|l| l - 16));
            levels.extend((0..16).map(|j| i32::from(qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as i32).map(|l| l - 16));
            runs.extend([(d, 0.0); 2]);
        }
        GgmlDType::Q8_0 => {
            let d = f16_at(b, 0);
            levels.extend(b[2..34].iter().map(|&q| i32::from(q as i8)));
            runs.extend([(d, 0.0); 2]);
        }
        GgmlDType::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let sc = &b[4..16];
            let scale_min = |j: usize| -> (u8, u8) {
                if j < 4 {
                    (sc[j] & 63, sc[j + 4] & 63)
                } else {
                    ((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4))
                }
            };
            for j in 0..4 {
                let qs = &b[16 + 32 * j..48 + 32 * j];
                for (sub, shift) in [(2 * j, 0), (2 * j + 1, 4)] {
                    let (s, m) = scale_min(sub);
                    levels.extend(qs.iter().map(|&q| i32::from((q >> shift) & 15)));
                    runs.extend([(d * f32::from(s), -(dmin * f32::from(m))); 2]);
                }
            }
        }
        GgmlDType::Q6K => {
            let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], f16_at(b, 208));
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                for (k, (lo_off, lo_shift)) in [(0, 0), (32, 0), (0, 4), (32, 4)].into_iter().enumerate() {
                    levels.extend((0..32).map(|l| i32::from(((ql[l + lo_off] >> lo_shift) & 15) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32));
                    let s = |r: usize| (d * f32::from(sc[8 * half + 2 * k + r] as i8), 0.0);
                    runs.extend([s(0), s(1)]);
                }
            }
        }
        other => unreachable!("{other:?} has no layout"),
    }
}

/// One GGUF row in a layout, appended: its levels (chunk after chunk, `chunks` of them, an
/// even count: the last may be padding of zeros) to `levels_out`, its scales, a 16-byte word
/// per pair of chunks, to `scales_out`: `(scale, offset)` of both chunks (Q4) or the scales of
/// their four 16-value halves (Q8). A part's buffer is every row's levels, then every row's
/// scales.
fn repack_row(dtype: GgmlDType, layout: Layout, row: &[u8], chunks: usize, levels_out: &mut Vec<u32>, scales_out: &mut Vec<u32>) {
    let (mut levels, mut runs) = (Vec::with_capacity(chunks * CHUNK_VALUES), Vec::with_capacity(chunks * 2));
    for block in row.chunks_exact(dtype.type_size()) {
        decode_block(dtype, block, &mut levels, &mut runs);
    }
    levels.resize(chunks * CHUNK_VALUES, 0);
    runs.resize(chunks * 2, (0.0, 0.0));
    for c in 0..chunks {
        let l = &levels[c * CHUNK_VALUES..(c + 1) * CHUNK_VALUES];
        match layout {
            Layout::Q4 => {
                for k in 0..4 {
                    levels_out.push((0..4).map(|b| ((l[4 * k + b] | (l[16 + 4 * k + b] << 4)) as u32) << (8 * b)).sum());
                }
                let (scale, offset) = runs[2 * c];
                scales_out.extend([scale.to_bits(), offset.to_bits()]);
            }
            Layout::Q8 => {
                for k in 0..8 {
                    levels_out.push((0..4).map(|b| ((l[4 * k + b] as u8) as u32) << (8 * b)).sum());
                }
                scales_out.extend([runs[2 * c].0.to_bits(), runs[2 * c + 1].0.to_bits()]);
            }
        }
    }
}

/// The step every matrix op of a decoder reads (`Batch` in quant.wgsl): how many token rows
/// its input holds, and the KV-cache position of the first. Written once per step.
pub struct Batch {
    pub buffer: wgpu::Buffer,
}

impl Batch {
    pub fn new(gpu: &Gpu) -> Self {
        Self { buffer: gpu.uniform("batch", bytes_of(&[1u32, 0, 0, 0])) }
    }

    pub fn write(&self, gpu: &Gpu, tokens: usize, pos: usize) {
        gpu.queue.write_buffer(&self.buffer, 0, bytes_of(&[tokens as u32, pos as u32, 0, 0]));
    }
}

/// What a matrix product does with its result (the `flags` of `quant.wgsl`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Product<'a> {
    pub bias: Option<&'a wgpu::Buffer>,
    /// Add to the output instead of overwriting it.
    pub accumulate: bool,
    /// Token t's output goes to row `pos + t` of the output (the KV cache).
    pub at_position: bool,
}

/// Rows `first_row..first_row + rows` of a matrix, repacked, in one buffer.
struct Part {
    first_row: usize,
    rows: usize,
    words: wgpu::Buffer,
}

/// A `(rows, cols)` matrix repacked into one layout: one GGUF matrix, or several stacked so
/// that one dispatch computes them all (`stack`, `stack_gated`).
pub struct GpuMatrix {
    pub dtype: GgmlDType,
    layout: Layout,
    pub rows: usize,
    pub cols: usize,
    /// 32-value chunks per row, rounded up to even (the kernels step through pairs).
    chunks: usize,
    parts: Vec<Part>,
    /// The stacked matrices' rows (one entry for a single matrix): where each one's outputs go.
    segments: Vec<usize>,
    /// Gate and up rows interleaved: the product is silu(gate · x) · (up · x), a row per pair.
    gated: bool,
}

/// Where a product's output rows go: one buffer per stacked matrix.
#[derive(Clone, Copy)]
pub struct Output<'a> {
    pub y: &'a wgpu::Buffer,
    pub product: Product<'a>,
}

/// Chunks of a row of `cols` values as the kernels step through them: pairs.
fn chunks_of(cols: usize) -> usize {
    cols.div_ceil(2 * CHUNK_VALUES) * 2
}

/// Bytes of a row in a layout: its levels, then a 16-byte word of scales per pair of chunks.
fn row_bytes(layout: Layout, chunks: usize) -> usize {
    chunks * 16 * layout.level_words() + chunks / 2 * 16
}

/// An input of `cols` values per token quantized to 8 bits, as the products read it
/// (`quantize.wgsl`): per token, each chunk's 32 levels, then per pair of chunks their
/// `(scale, scale · Σ levels)`; and the op that fills it from the f32 rows.
pub struct QuantizedInput {
    buffer: wgpu::Buffer,
    cols: usize,
    quantize: Option<Op>,
}

impl QuantizedInput {
    /// For up to `tokens` rows of `x`, `cols` floats apart.
    pub fn new(gpu: &Gpu, x: &wgpu::Buffer, cols: usize, tokens: usize) -> Self {
        let mut input = Self::for_norms(gpu, cols, tokens);
        let groups = (chunks_of(cols) as u32).div_ceil(64);
        // One row (the final hidden state) whatever the step's token count.
        let groups = if tokens == 1 { Groups::fixed(groups, 1) } else { Groups::per_token(groups) };
        let params = input.params(gpu, 0.0);
        let quantize = gpu.op(input.kernel(gpu, "quantize"), &[(0, x), (1, &input.buffer), (2, &params)], groups).named("quantize");
        input.quantize = Some(quantize);
        input
    }

    /// An input filled only by `normed_op`s: the residual stream RMS-normed (each layer its
    /// own norm weights) before a layer's products.
    pub fn for_norms(gpu: &Gpu, cols: usize, tokens: usize) -> Self {
        // Per token: two 16-byte words of levels per chunk, one of scales per pair.
        let chunks = chunks_of(cols);
        Self { buffer: gpu.output("quantized input", tokens * (chunks * 2 + chunks / 2) * 4), cols, quantize: None }
    }

    /// An op filling this input with `x`'s rows RMS-normed with `weight` (norm and quantization
    /// in one dispatch).
    pub fn normed_op(&self, gpu: &Gpu, x: &wgpu::Buffer, weight: &wgpu::Buffer, eps: f32) -> Op {
        let params = self.params(gpu, eps);
        gpu.op(self.kernel(gpu, "norm_quantize"), &[(0, x), (1, &self.buffer), (2, &params), (3, weight)], Groups::per_token(1)).named("norm+quantize")
    }

    /// `QuantizeParams` of quantize.wgsl, for rows of x `cols` floats apart.
    fn params(&self, gpu: &Gpu, eps: f32) -> wgpu::Buffer {
        gpu.uniform("quantize", bytes_of(&[self.cols as u32, chunks_of(self.cols) as u32, self.cols as u32, eps.to_bits()]))
    }

    fn kernel(&self, gpu: &Gpu, entry: &str) -> std::sync::Arc<wgpu::ComputePipeline> {
        gpu.pipeline("quantize", || QUANTIZE.to_string(), entry)
    }

    /// The op that fills it from the rows it was built for (not one `for_norms`).
    pub fn quantize(&self) -> &Op {
        self.quantize.as_ref().expect("an input for norms is filled by its normed_ops")
    }
}

/// A product with a part of a matrix: the kernel for a step of one token (a decode step), and
/// the one for more (a prefill), which computes each row for several tokens at once.
pub struct MatOp {
    vector: Op,
    matrix: Op,
}

impl MatOp {
    pub fn for_tokens(&self, tokens: usize) -> &Op {
        if tokens == 1 {
            &self.vector
        } else {
            &self.matrix
        }
    }
}

impl GpuMatrix {
    pub fn upload(gpu: &Gpu, name: &str, tensor: &QTensor) -> Result<Self> {
        Self::build(gpu, name, &[tensor], false)
    }

    /// Up to three matrices of the same width and layout as one: a product computes all of
    /// them in one dispatch, each into its own output (q, k and v). `None` when they differ.
    pub fn stack(gpu: &Gpu, name: &str, tensors: &[&QTensor]) -> Result<Option<Self>> {
        if tensors.len() > 3 || !Self::stackable(tensors)? {
            return Ok(None);
        }
        Self::build(gpu, name, tensors, false).map(Some)
    }

    /// Gate and up as one matrix whose product is silu(gate · x) · (up · x), the FFN's
    /// activation (one dispatch instead of three). `None` when their layouts differ.
    pub fn stack_gated(gpu: &Gpu, name: &str, gate: &QTensor, up: &QTensor) -> Result<Option<Self>> {
        if !Self::stackable(&[gate, up])? || gate.shape() != up.shape() {
            return Ok(None);
        }
        Self::build(gpu, name, &[gate, up], true).map(Some)
    }

    fn stackable(tensors: &[&QTensor]) -> Result<bool> {
        let first = tensors[0];
        let cols = first.shape().dims2()?.1;
        for t in tensors {
            if Layout::of(t.dtype())? != Layout::of(first.dtype())? || t.shape().dims2()?.1 != cols {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The rows of `tensors` repacked into parts: one matrix after another, or with `gated`
    /// the two interleaved row by row (a part always holds whole pairs).
    fn build(gpu: &Gpu, name: &str, tensors: &[&QTensor], gated: bool) -> Result<Self> {
        let dtype = tensors[0].dtype();
        let layout = Layout::of(dtype)?;
        let shapes: Vec<(usize, usize)> = tensors.iter().map(|t| t.shape().dims2()).collect::<candle_core::Result<_>>()?;
        let cols = shapes[0].1;
        let data: Vec<_> = tensors.iter().map(|t| t.data()).collect::<candle_core::Result<_>>()?;
        // (matrix, row) in the order of the stacked matrix's rows.
        let order: Vec<(usize, usize)> = match gated {
            true => (0..shapes[0].0).flat_map(|r| [(0, r), (1, r)]).collect(),
            false => shapes.iter().enumerate().flat_map(|(i, &(rows, _))| (0..rows).map(move |r| (i, r))).collect(),
        };
        let rows = order.len();
        let chunks = chunks_of(cols);
        let row_bytes = row_bytes(layout, chunks);
        let limit = gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size) as usize;
        let rows_per_part = if gated { (limit / row_bytes / 2 * 2).max(2) } else { (limit / row_bytes).max(1) };
        let parts = (0..rows)
            .step_by(rows_per_part)
            .map(|first_row| {
                let n = rows_per_part.min(rows - first_row);
                let (mut levels, mut scales) = (Vec::with_capacity(n * row_bytes / 4), Vec::with_capacity(n * chunks * 2));
                for &(t, r) in &order[first_row..first_row + n] {
                    let gguf_row = data[t].len() / shapes[t].0;
                    repack_row(tensors[t].dtype(), layout, &data[t][r * gguf_row..(r + 1) * gguf_row], chunks, &mut levels, &mut scales);
                }
                levels.extend(scales);
                let words = gpu.storage(name, bytes_of(&levels), wgpu::BufferUsages::empty())?;
                Ok(Part { first_row, rows: n, words })
            })
            .collect::<Result<_>>()?;
        let segments = if gated { vec![rows / 2] } else { shapes.iter().map(|s| s.0).collect() };
        Ok(Self { dtype, layout, rows, cols, chunks, parts, segments, gated })
    }

    /// Outputs a product writes: one per stacked matrix, one for a gated pair.
    pub fn outputs(&self) -> usize {
        self.segments.len()
    }

    /// The kernel `entry` for this layout, with `tokens` per thread (the prefill's tile).
    fn pipeline(&self, gpu: &Gpu, entry: &str, tokens: u32) -> std::sync::Arc<wgpu::ComputePipeline> {
        let layout = self.layout as u32;
        let threads = product_threads(gpu);
        let gated = self.gated;
        gpu.pipeline(&format!("quant-{layout}-{tokens}-{gated}"), || {
            format!(
                "const LAYOUT: u32 = {layout}u;\nconst WG: u32 = {threads}u;\nconst R: u32 = {ROWS_PER_THREAD}u;\nconst TT: u32 = {tokens}u;\nconst GATED: bool = {gated};\n{SOURCE}"
            )
        }, entry)
    }

    /// The `Dims` uniform of a part (quant.wgsl), with each output's flags.
    fn dims(&self, gpu: &Gpu, part: &Part, flags: [u32; 3], groups_per_y: u32) -> wgpu::Buffer {
        let scale_base = part.rows * self.chunks * self.layout.level_words();
        let (mut ends, mut strides) = ([u32::MAX; 4], [0u32; 4]);
        let mut end = 0;
        for (i, &rows) in self.segments.iter().enumerate() {
            end += rows as u32;
            (ends[i], strides[i]) = (end, rows as u32);
        }
        let head = [part.rows, self.cols, self.chunks, scale_base, groups_per_y as usize, part.first_row, 0, 0].map(|v| v as u32);
        let words: Vec<u32> = head.into_iter().chain(ends).chain(flags).chain([0]).chain(strides).collect();
        gpu.uniform("dims", bytes_of(&words))
    }

    /// `Y = X Wᵀ` for the step's token rows of the quantized `x`, each stacked matrix into its
    /// output (with its bias, accumulation and placement): one op per part.
    pub fn product_ops(&self, gpu: &Gpu, x: &QuantizedInput, outputs: &[Output], batch: &Batch) -> Result<Vec<MatOp>> {
        if x.cols != self.cols {
            return Err(Error::Gpu(format!("a product of a {}-column matrix with {}-value input rows", self.cols, x.cols)));
        }
        if outputs.len() != self.segments.len() {
            return Err(Error::Gpu(format!("{} outputs for {} stacked matrices", outputs.len(), self.segments.len())));
        }
        let mut flags = [0u32; 3];
        for (i, o) in outputs.iter().enumerate() {
            flags[i] = u32::from(o.product.bias.is_some()) | (u32::from(o.product.accumulate) << 1) | (u32::from(o.product.at_position) << 2);
        }
        // One bias value per output row, side by side (zeros where a matrix has none; the
        // kernel reads them only where a flag says so), copied together once. Without any, a
        // placeholder: the binding must be bound.
        let bias = match outputs.iter().any(|o| o.product.bias.is_some()) {
            false => gpu.output("no bias", 1),
            true => {
                let bias = gpu.output("bias", self.segments.iter().sum());
                let mut encoder = gpu.device.create_command_encoder(&Default::default());
                let mut at = 0u64;
                for (o, &rows) in outputs.iter().zip(&self.segments) {
                    if let Some(b) = o.product.bias {
                        encoder.copy_buffer_to_buffer(b, 0, &bias, at, rows as u64 * 4);
                    }
                    at += rows as u64 * 4;
                }
                gpu.queue.submit([encoder.finish()]);
                bias
            }
        };
        let weight_bytes = row_bytes(self.layout, self.chunks) as u64;
        // Every output binding is bound; unused ones to buffers of their own (WebGPU forbids
        // two writable bindings of one buffer in a dispatch).
        let unused = [gpu.output("unused output", 1), gpu.output("unused output", 1)];
        let y = |i: usize| outputs.get(i).map_or_else(|| &unused[i - 1], |o| o.y);
        let kind = match (self.gated, self.segments.len()) {
            (true, _) => "gated ",
            (false, 1) => "",
            _ => "stacked ",
        };
        Ok(self
            .parts
            .iter()
            .map(|part| {
                let groups = (part.rows as u32).div_ceil(product_threads(gpu) * ROWS_PER_THREAD);
                let dims = self.dims(gpu, part, flags, 0);
                let buffers = [(0, &part.words), (1, &x.buffer), (2, y(0)), (7, y(1)), (8, y(2)), (3, &dims), (4, &bias), (5, &batch.buffer)];
                let costed = |op: Op, kernel: &str| Op {
                    kind: format!("{kernel} {kind}{:?}", self.dtype),
                    weight_bytes: part.rows as u64 * weight_bytes,
                    flops_per_token: 2 * (part.rows * self.cols) as u64,
                    ..op
                };
                let vector = gpu.op(self.pipeline(gpu, "matvec", 1), &buffers, Groups::fixed(groups, 1));
                let matrix = gpu.op(self.pipeline(gpu, "product", TOKENS_PER_THREAD), &buffers, Groups { x: groups, y: Span::TokenTiles(TOKENS_PER_THREAD) });
                MatOp { vector: costed(vector, "matvec"), matrix: costed(matrix, "matmul") }
            })
            .collect())
    }

    /// Row t of `y` = row `ids[t]` of the matrix, for the step's tokens (the embedding
    /// lookup): one op per part, each writing the rows it holds.
    pub fn gather_ops(&self, gpu: &Gpu, ids: &wgpu::Buffer, y: &wgpu::Buffer, batch: &Batch) -> Vec<Op> {
        self.parts
            .iter()
            .map(|part| {
                let dims = self.dims(gpu, part, [0; 3], 0);
                let buffers = [(0, &part.words), (2, y), (3, &dims), (5, &batch.buffer), (6, ids)];
                gpu.op(self.pipeline(gpu, "gather", 1), &buffers, Groups::per_token((self.chunks as u32).div_ceil(64))).named("embedding")
            })
            .collect()
    }

    /// The whole matrix as f32, row-major.
    pub async fn dequantize(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let out = gpu.output("dequantized", self.rows * self.cols);
        let ops: Vec<Op> = self
            .parts
            .iter()
            .map(|part| {
                let (groups, per_y) = spread(part.rows as u32);
                let dims = self.dims(gpu, part, [0; 3], per_y);
                gpu.op(self.pipeline(gpu, "dequantize", 1), &[(0, &part.words), (2, &out), (3, &dims)], groups)
            })
            .collect();
        gpu.run(&ops.iter().collect::<Vec<_>>(), 1);
        gpu.read_f32(&out, self.rows * self.cols).await
    }

    /// `X Wᵀ` for `x` holding `tokens` rows of `cols` values, each quantized to 8 bits per 32
    /// values first: the one-token kernel for one row, the tiled one for more. Row-major
    /// `(tokens, rows)`.
    pub async fn product(&self, gpu: &Gpu, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        if x.len() != tokens * self.cols {
            return Err(Error::InvalidInput(format!("GPU product: x has {} values, not {tokens} rows of the matrix's {} columns", x.len(), self.cols)));
        }
        let batch = Batch::new(gpu);
        batch.write(gpu, tokens, 0);
        let x = gpu.storage("x", bytes_of(x), wgpu::BufferUsages::empty())?;
        let input = QuantizedInput::new(gpu, &x, self.cols, tokens);
        let out = gpu.output("y", tokens * self.rows);
        let ops = self.product_ops(gpu, &input, &[Output { y: &out, product: Product::default() }], &batch)?;
        let mut run = vec![input.quantize()];
        run.extend(ops.iter().map(|m| m.for_tokens(tokens)));
        gpu.run(&run, tokens as u32);
        gpu.read_f32(&out, tokens * self.rows).await
    }

    /// Rows `ids` of the matrix, dequantized, row after row.
    pub async fn gather(&self, gpu: &Gpu, ids: &[u32]) -> Result<Vec<f32>> {
        let batch = Batch::new(gpu);
        batch.write(gpu, ids.len(), 0);
        let id_buffer = gpu.storage("ids", bytes_of(ids), wgpu::BufferUsages::empty())?;
        let out = gpu.output("rows", ids.len() * self.cols);
        let ops = self.gather_ops(gpu, &id_buffer, &out, &batch);
        gpu.run(&ops.iter().collect::<Vec<_>>(), ids.len() as u32);
        gpu.read_f32(&out, ids.len() * self.cols).await
    }
}

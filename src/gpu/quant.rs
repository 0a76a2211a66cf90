//! Quantized matrices on the GPU, in their GGUF blocks, and the kernels that read them.
//! A matrix larger than one binding may hold (WebGPU guarantees 128 MiB; a 150k-token
//! vocabulary projection is more) is split by rows into parts, each its own buffer and dispatch.
use super::{bytes_of, Gpu, Groups, Op, Span};
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};

const SOURCE: &str = include_str!("quant.wgsl");
/// Workgroups per dispatch dimension (the WebGPU minimum limit).
const MAX_GROUPS: u32 = 65535;
/// Matrix rows and tokens of one matmul workgroup (`TILE` in quant.wgsl).
const TILE: u32 = 32;
/// Matrix rows of one matvec workgroup (`MATVEC_ROWS` in quant.wgsl).
const MATVEC_ROWS: u32 = 8;

/// `groups` workgroups laid out across dispatch dimensions x and y (each holds at most
/// 65535), with the `groups_per_y` of `Dims` that kernels use to number them.
fn spread(groups: u32) -> (Groups, u32) {
    let per_y = groups.min(MAX_GROUPS);
    (Groups::fixed(per_y, groups.div_ceil(MAX_GROUPS)), per_y)
}

/// The formats the kernels read: those of smollm2-135m and the qwen2.5-coder models.
pub const FORMATS: [GgmlDType; 6] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K];

/// ggml's id of a format (what `quant.wgsl`'s FORMAT compares with).
fn format_id(dtype: GgmlDType) -> Result<u32> {
    Ok(match dtype {
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q4K => 12,
        GgmlDType::Q6K => 14,
        other => return Err(Error::Gpu(format!("no kernel reads {other:?} weights; run on the CPU"))),
    })
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

/// Rows `first_row..first_row + rows` of a matrix, in one buffer.
struct Part {
    first_row: usize,
    rows: usize,
    blocks: wgpu::Buffer,
}

/// A `(rows, cols)` matrix of one quantized format, its GGUF bytes as uploaded.
pub struct GpuMatrix {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    row_bytes: usize,
    parts: Vec<Part>,
}

/// A product with a part of a matrix: the matrix-vector kernel for a step of one token, the
/// matrix-matrix kernel for more (both read the same `Dims`).
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
        let dtype = tensor.dtype();
        format_id(dtype)?;
        let (rows, cols) = tensor.shape().dims2()?;
        let bytes = tensor.data()?;
        let row_bytes = bytes.len() / rows;
        let limit = gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size) as usize;
        let rows_per_part = (limit / row_bytes).max(1);
        let parts = (0..rows)
            .step_by(rows_per_part)
            .map(|first_row| {
                let n = rows_per_part.min(rows - first_row);
                let blocks = gpu.storage(name, &bytes[first_row * row_bytes..(first_row + n) * row_bytes], wgpu::BufferUsages::empty())?;
                Ok(Part { first_row, rows: n, blocks })
            })
            .collect::<Result<_>>()?;
        Ok(Self { dtype, rows, cols, row_bytes, parts })
    }

    fn pipeline(&self, gpu: &Gpu, entry: &str) -> std::sync::Arc<wgpu::ComputePipeline> {
        let id = format_id(self.dtype).expect("checked at upload");
        gpu.pipeline(&format!("quant-{id}"), || format!("const FORMAT: u32 = {id}u;\n{SOURCE}"), entry)
    }

    /// The `Dims` uniform of a part (quant.wgsl), for kernels that number their workgroups
    /// with `groups_per_y`.
    fn dims(&self, gpu: &Gpu, part: &Part, flags: u32, groups_per_y: u32) -> wgpu::Buffer {
        let dims = [part.rows as u32, self.cols as u32, self.row_bytes as u32, groups_per_y, part.first_row as u32, 0, flags, self.rows as u32];
        gpu.uniform("dims", bytes_of(&dims))
    }

    /// `Y = X Wᵀ` for the step's token rows of `x` (with `product`'s bias, accumulation and
    /// placement): one op per part.
    pub fn product_ops(&self, gpu: &Gpu, x: &wgpu::Buffer, y: &wgpu::Buffer, batch: &Batch, product: Product) -> Result<Vec<MatOp>> {
        // The kernels read their bias binding only when the flag says so, but it must be bound.
        let no_bias;
        let bias = match product.bias {
            Some(bias) => bias,
            None => {
                no_bias = gpu.storage("no bias", &[0; 4], wgpu::BufferUsages::empty())?;
                &no_bias
            }
        };
        let flags = u32::from(product.bias.is_some()) | (u32::from(product.accumulate) << 1) | (u32::from(product.at_position) << 2);
        Ok(self
            .parts
            .iter()
            .map(|part| {
                let rows = part.rows as u32;
                let (vector_groups, per_y) = spread(rows.div_ceil(MATVEC_ROWS));
                let dims = self.dims(gpu, part, flags, per_y);
                let buffers = [(0, &part.blocks), (1, x), (2, y), (3, &dims), (4, bias), (5, &batch.buffer)];
                MatOp {
                    vector: gpu.op(self.pipeline(gpu, "matvec"), &buffers, vector_groups),
                    matrix: gpu.op(self.pipeline(gpu, "matmul"), &buffers, Groups { x: rows.div_ceil(TILE), y: Span::TokenTiles(TILE) }),
                }
            })
            .collect())
    }

    /// Row t of `y` = row `ids[t]` of the matrix, for the step's tokens (the embedding
    /// lookup): one op per part, each writing the rows it holds.
    pub fn gather_ops(&self, gpu: &Gpu, ids: &wgpu::Buffer, y: &wgpu::Buffer, batch: &Batch) -> Vec<Op> {
        self.parts
            .iter()
            .map(|part| {
                let dims = self.dims(gpu, part, 0, 0);
                let buffers = [(0, &part.blocks), (2, y), (3, &dims), (5, &batch.buffer), (6, ids)];
                gpu.op(self.pipeline(gpu, "gather"), &buffers, Groups::per_token(1))
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
                let dims = self.dims(gpu, part, 0, per_y);
                gpu.op(self.pipeline(gpu, "dequantize"), &[(0, &part.blocks), (2, &out), (3, &dims)], groups)
            })
            .collect();
        gpu.run(&ops.iter().collect::<Vec<_>>(), 1);
        gpu.read_f32(&out, self.rows * self.cols).await
    }

    /// `X Wᵀ` for `x` holding `tokens` rows of `cols` values: the matrix-vector kernel for one
    /// row, the matrix-matrix kernel for more. Row-major `(tokens, rows)`.
    pub async fn product(&self, gpu: &Gpu, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        if x.len() != tokens * self.cols {
            return Err(Error::InvalidInput(format!("GPU product: x has {} values, not {tokens} rows of the matrix's {} columns", x.len(), self.cols)));
        }
        let batch = Batch::new(gpu);
        batch.write(gpu, tokens, 0);
        let x = gpu.storage("x", bytes_of(x), wgpu::BufferUsages::empty())?;
        let out = gpu.output("y", tokens * self.rows);
        let ops = self.product_ops(gpu, &x, &out, &batch, Product::default())?;
        gpu.run(&ops.iter().map(|m| m.for_tokens(tokens)).collect::<Vec<_>>(), tokens as u32);
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

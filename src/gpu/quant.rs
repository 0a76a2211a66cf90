//! Quantized matrices on the GPU, in their GGUF blocks, and the kernels that read them.
//! A matrix larger than one binding may hold (WebGPU guarantees 128 MiB; a 150k-token
//! vocabulary projection is more) is split by rows into parts, each its own buffer and dispatch.
use super::{bytes_of, Gpu, Op};
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};

const SOURCE: &str = include_str!("quant.wgsl");
/// Workgroups per dispatch dimension (the WebGPU minimum limit).
const MAX_GROUPS: u32 = 65535;

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

/// What a matrix product does with its result (the `flags` of `quant.wgsl`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Product<'a> {
    pub bias: Option<&'a wgpu::Buffer>,
    /// Add to the output instead of overwriting it.
    pub accumulate: bool,
    /// Where the output starts, in floats.
    pub y_offset: u32,
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

/// One dispatch over a part of a matrix, with the `Dims` it was built with (steps that move
/// its output, like K and V into the cache, rewrite them).
pub struct MatOp {
    pub op: Op,
    pub dims: [u32; 8],
    /// The part's first row.
    pub first_row: usize,
    pub rows: usize,
}

impl MatOp {
    /// Rewrites the op's `Dims` with its output moved by `offset` floats.
    pub fn write_y_offset(&self, gpu: &Gpu, offset: u32) {
        let mut dims = self.dims;
        dims[5] += offset;
        gpu.queue.write_buffer(&self.op.params, 0, bytes_of(&dims));
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

    /// `y = W x` (with `product`'s bias, accumulation and offset): one op per part, one
    /// workgroup per row.
    pub fn matvec_ops(&self, gpu: &Gpu, x: &wgpu::Buffer, y: &wgpu::Buffer, product: Product) -> Result<Vec<MatOp>> {
        // The kernel reads its bias binding only when the flag says so, but it must be bound.
        let no_bias;
        let bias = match product.bias {
            Some(bias) => bias,
            None => {
                no_bias = gpu.storage("no bias", &[0; 4], wgpu::BufferUsages::empty())?;
                &no_bias
            }
        };
        let flags = u32::from(product.bias.is_some()) | (u32::from(product.accumulate) << 1);
        Ok(self
            .parts
            .iter()
            .map(|part| {
                let rows = part.rows as u32;
                let dims = [rows, self.cols as u32, self.row_bytes as u32, rows.min(MAX_GROUPS), 0, product.y_offset + part.first_row as u32, flags, part.first_row as u32];
                let buffers = [(0, &part.blocks), (1, x), (2, y), (4, bias)];
                let params = gpu.uniform("dims", bytes_of(&dims));
                let op = gpu.op(self.pipeline(gpu, "matvec"), &buffers, (3, &params), (rows.min(MAX_GROUPS), rows.div_ceil(MAX_GROUPS)));
                MatOp { op, dims, first_row: part.first_row, rows: part.rows }
            })
            .collect())
    }

    /// Dequantizes `rows` rows of each part into `y` (one op per part). For a lookup of one
    /// row, build with `rows = 1` and point the op of the row's part at it with [`lookup`].
    pub fn rows_ops(&self, gpu: &Gpu, rows: Option<usize>, y: &wgpu::Buffer) -> Vec<MatOp> {
        self.parts
            .iter()
            .map(|part| {
                let n = rows.unwrap_or(part.rows) as u32;
                let y_offset = if rows.is_some() { 0 } else { (part.first_row * self.cols) as u32 };
                let dims = [n, self.cols as u32, self.row_bytes as u32, n.min(MAX_GROUPS), 0, y_offset, 0, 0];
                let params = gpu.uniform("dims", bytes_of(&dims));
                let op = gpu.op(self.pipeline(gpu, "dequantize"), &[(0, &part.blocks), (2, y)], (3, &params), (n.min(MAX_GROUPS), n.div_ceil(MAX_GROUPS)));
                MatOp { op, dims, first_row: part.first_row, rows: part.rows }
            })
            .collect()
    }

    /// The whole matrix as f32, row-major.
    pub async fn dequantize(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let out = gpu.output("dequantized", self.rows * self.cols);
        let ops = self.rows_ops(gpu, None, &out);
        gpu.run(&ops.iter().map(|m| &m.op).collect::<Vec<_>>());
        gpu.read_f32(&out, self.rows * self.cols).await
    }

    /// `W x` for one input vector of `cols` values.
    pub async fn matvec(&self, gpu: &Gpu, x: &[f32]) -> Result<Vec<f32>> {
        if x.len() != self.cols {
            return Err(Error::InvalidInput(format!("GPU matvec: x has {} values, the matrix {} columns", x.len(), self.cols)));
        }
        let x = gpu.storage("x", bytes_of(x), wgpu::BufferUsages::empty())?;
        let out = gpu.output("y", self.rows);
        let ops = self.matvec_ops(gpu, &x, &out, Product::default())?;
        gpu.run(&ops.iter().map(|m| &m.op).collect::<Vec<_>>());
        gpu.read_f32(&out, self.rows).await
    }
}

/// Points a one-row lookup (from [`GpuMatrix::rows_ops`] with `rows = Some(1)`) at `row`:
/// returns the op to run, of the part holding the row.
pub fn lookup<'a>(gpu: &Gpu, ops: &'a [MatOp], row: usize) -> &'a Op {
    let m = ops.iter().find(|m| (m.first_row..m.first_row + m.rows).contains(&row)).expect("a row of the matrix");
    let mut dims = m.dims;
    dims[4] = (row - m.first_row) as u32;
    gpu.queue.write_buffer(&m.op.params, 0, bytes_of(&dims));
    &m.op
}

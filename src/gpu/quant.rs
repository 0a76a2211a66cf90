//! Quantized matrices on the GPU, in their GGUF blocks, and the kernels that read them.
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
        other => return Err(Error::InvalidInput(format!("GPU: no kernel reads {other:?} weights; run on the CPU"))),
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

/// A `(rows, cols)` matrix of one quantized format, its GGUF bytes as uploaded.
pub struct GpuMatrix {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    row_bytes: usize,
    blocks: wgpu::Buffer,
}

impl GpuMatrix {
    pub fn upload(gpu: &Gpu, name: &str, tensor: &QTensor) -> Result<Self> {
        let dtype = tensor.dtype();
        format_id(dtype)?;
        let (rows, cols) = tensor.shape().dims2()?;
        let bytes = tensor.data()?;
        let row_bytes = bytes.len() / rows;
        let blocks = gpu.storage(name, &bytes, wgpu::BufferUsages::empty())?;
        Ok(Self { dtype, rows, cols, row_bytes, blocks })
    }

    fn pipeline(&self, gpu: &Gpu, entry: &str) -> std::sync::Arc<wgpu::ComputePipeline> {
        let id = format_id(self.dtype).expect("checked at upload");
        gpu.pipeline(&format!("quant-{id}"), || format!("const FORMAT: u32 = {id}u;\n{SOURCE}"), entry)
    }

    /// The `Dims` uniform of `quant.wgsl` for `rows` rows from `first_row`.
    pub fn dims(&self, rows: usize, first_row: u32, product: &Product) -> [u32; 8] {
        let rows = rows as u32;
        let flags = u32::from(product.bias.is_some()) | (u32::from(product.accumulate) << 1);
        [rows, self.cols as u32, self.row_bytes as u32, rows.min(MAX_GROUPS), first_row, product.y_offset, flags, 0]
    }

    /// `y = W x` (with `product`'s bias, accumulation and offset), one workgroup per row.
    pub fn matvec_op(&self, gpu: &Gpu, x: &wgpu::Buffer, y: &wgpu::Buffer, product: Product) -> Result<Op> {
        let no_bias = gpu.storage("no bias", &[0; 4], wgpu::BufferUsages::empty())?;
        let bias = product.bias.unwrap_or(&no_bias);
        let rows = self.rows as u32;
        let buffers = [(0, &self.blocks), (1, x), (2, y), (4, bias)];
        let dims = self.dims(self.rows, 0, &product);
        Ok(gpu.op(self.pipeline(gpu, "matvec"), &buffers, 3, bytes_of(&dims), (rows.min(MAX_GROUPS), rows.div_ceil(MAX_GROUPS))))
    }

    /// `rows` rows from `first_row` (set per use through the op's params), dequantized into `y`.
    pub fn rows_op(&self, gpu: &Gpu, rows: usize, y: &wgpu::Buffer) -> Op {
        let dims = self.dims(rows, 0, &Product::default());
        let groups = (rows as u32).min(MAX_GROUPS);
        gpu.op(self.pipeline(gpu, "dequantize"), &[(0, &self.blocks), (2, y)], 3, bytes_of(&dims), (groups, (rows as u32).div_ceil(MAX_GROUPS)))
    }

    /// The whole matrix as f32, row-major.
    pub async fn dequantize(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let out = gpu.output("dequantized", self.rows * self.cols);
        gpu.run(&[&self.rows_op(gpu, self.rows, &out)]);
        gpu.read_f32(&out, self.rows * self.cols).await
    }

    /// `W x` for one input vector of `cols` values.
    pub async fn matvec(&self, gpu: &Gpu, x: &[f32]) -> Result<Vec<f32>> {
        if x.len() != self.cols {
            return Err(Error::InvalidInput(format!("GPU matvec: x has {} values, the matrix {} columns", x.len(), self.cols)));
        }
        let x = gpu.storage("x", bytes_of(x), wgpu::BufferUsages::empty())?;
        let out = gpu.output("y", self.rows);
        gpu.run(&[&self.matvec_op(gpu, &x, &out, Product::default())?]);
        gpu.read_f32(&out, self.rows).await
    }
}

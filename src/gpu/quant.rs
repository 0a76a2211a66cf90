//! Quantized matrices on the GPU, in their GGUF blocks, and the kernels that read them.
use super::Gpu;
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use wgpu::util::DeviceExt;

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

    /// The whole matrix as f32, row-major.
    pub async fn dequantize(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let out = gpu.output("dequantized", self.rows * self.cols);
        self.dispatch(gpu, "dequantize", None, &out)?;
        gpu.read_f32(&out, self.rows * self.cols).await
    }

    /// `W x` for one input vector of `cols` values.
    pub async fn matvec(&self, gpu: &Gpu, x: &[f32]) -> Result<Vec<f32>> {
        if x.len() != self.cols {
            return Err(Error::InvalidInput(format!("GPU matvec: x has {} values, the matrix {} columns", x.len(), self.cols)));
        }
        let x = gpu.storage("x", bytes_of(x), wgpu::BufferUsages::empty())?;
        let out = gpu.output("y", self.rows);
        self.dispatch(gpu, "matvec", Some(&x), &out)?;
        gpu.read_f32(&out, self.rows).await
    }

    /// One workgroup per row, rows spread over two dispatch dimensions. `x` is bound only for
    /// entries that read it (an automatic layout leaves out what an entry does not use).
    fn dispatch(&self, gpu: &Gpu, entry: &str, x: Option<&wgpu::Buffer>, out: &wgpu::Buffer) -> Result<()> {
        let id = format_id(self.dtype)?;
        let pipeline = gpu.pipeline(&format!("quant-{id}"), || format!("const FORMAT: u32 = {id}u;\n{SOURCE}"), entry);
        let rows = self.rows as u32;
        let (groups_x, groups_y) = (rows.min(MAX_GROUPS), rows.div_ceil(MAX_GROUPS));
        let dims = [rows, self.cols as u32, self.row_bytes as u32, groups_x];
        let dims = gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("dims"),
            contents: bytes_of_u32(&dims),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = [Some(&self.blocks), x, Some(out), Some(&dims)]
            .into_iter()
            .enumerate()
            .filter_map(|(i, b)| Some(wgpu::BindGroupEntry { binding: i as u32, resource: b?.as_entire_binding() }))
            .collect();
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups_x, groups_y, 1);
        }
        gpu.queue.submit([encoder.finish()]);
        Ok(())
    }
}

fn bytes_of(values: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

fn bytes_of_u32(values: &[u32]) -> &[u8] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

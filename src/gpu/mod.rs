//! Our WebGPU backend, on wgpu: natively on Vulkan (Mesa's lavapipe where there is no GPU),
//! in the browser on WebGPU. Weights stay in their GGUF blocks on the GPU and are
//! dequantized inside the kernels (`quant.wgsl`).
//!
//! Here: the device with the limits the decoder needs, buffers, dispatches and readback.
//! `quant` holds the quantized matrices and their kernels (dequantize, gather, matrix-vector
//! for a decode step, matrix-matrix for a prefill), each checked against the CPU for every
//! format our models use (`tests/gpu_kernels.rs`); `decoder` the model on top of them.
pub mod attention;
pub mod decoder;
pub mod quant;

use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A device and queue, and the compute pipelines built on them so far.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// The first error the device reported on its own (validation, out of memory, lost):
    /// wgpu's default handler would panic, which in the browser kills the engine.
    failure: Arc<Mutex<Option<String>>>,
}

/// One kernel dispatch with its bindings, built once and encoded again for every step; what
/// changes between steps is written into uniforms it shares with others.
pub struct Op {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: Groups,
    /// What a profile calls it: the kernel, and the weights' format for matrix kernels.
    pub kind: String,
    /// Bytes it reads that do not depend on the step's tokens (weights): for GB/s in a profile.
    pub weight_bytes: u64,
    /// Floating-point operations per token of the step: for GFLOP/s in a profile.
    pub flops_per_token: u64,
}

/// Workgroups of a dispatch: `x` across, and down dimension y either a fixed count or one
/// per token (or per tile of tokens) of the step that runs it.
#[derive(Debug, Clone, Copy)]
pub struct Groups {
    pub x: u32,
    pub y: Span,
}

#[derive(Debug, Clone, Copy)]
pub enum Span {
    Fixed(u32),
    Tokens,
    TokenTiles(u32),
}

impl Groups {
    pub fn fixed(x: u32, y: u32) -> Self {
        Self { x, y: Span::Fixed(y) }
    }

    pub fn per_token(x: u32) -> Self {
        Self { x, y: Span::Tokens }
    }
}

impl Op {
    /// The op under the name a profile gives it.
    pub fn named(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// Dispatches for a step of `tokens` tokens.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, tokens: u32) {
        let y = match self.groups.y {
            Span::Fixed(y) => y,
            Span::Tokens => tokens,
            Span::TokenTiles(tile) => tokens.div_ceil(tile),
        };
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.groups.x, y, 1);
    }
}

/// Numbers whose bytes go to the GPU as they are: no padding, every bit pattern valid.
pub trait Plain: Copy {}
impl Plain for u32 {}
impl Plain for f32 {}

/// The bytes of plain numbers, for buffers and uniforms.
pub fn bytes_of<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: `Plain` types have no padding, and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

fn gpu_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Gpu(format!("{what}: {e}"))
}

impl Gpu {
    /// The default adapter with its own storage limits (the spec's defaults, 128 MiB per
    /// binding, are too small for an embedding table), or `None` when there is none: then
    /// the model runs on the CPU.
    pub async fn new() -> Result<Option<Gpu>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let Ok(adapter) = instance.request_adapter(&wgpu::RequestAdapterOptions::default()).await else {
            return Ok(None);
        };
        let available = adapter.limits();
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: available.max_storage_buffer_binding_size,
            max_buffer_size: available.max_buffer_size,
            max_storage_buffers_per_shader_stage: available.max_storage_buffers_per_shader_stage.min(10),
            ..wgpu::Limits::downlevel_defaults()
        };
        // Timestamps, where the adapter has them, time each kernel for `--profile`.
        let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("hybrid-assistant"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| gpu_error("cannot open the device", e))?;
        let failure = Arc::new(Mutex::new(None));
        let record = |failure: &Arc<Mutex<Option<String>>>| {
            let failure = failure.clone();
            move |message: String| {
                failure.lock().expect("failure lock").get_or_insert(message);
            }
        };
        let on_error = record(&failure);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| on_error(e.to_string())));
        let on_lost = record(&failure);
        device.set_device_lost_callback(move |reason, message| on_lost(format!("the device was lost ({reason:?}): {message}")));
        Ok(Some(Gpu { device, queue, adapter: adapter.get_info(), limits, pipelines: Mutex::new(HashMap::new()), failure }))
    }

    /// Whether the adapter is a CPU running shaders (lavapipe, SwiftShader): one workgroup
    /// runs on one core, so kernels use small workgroups to keep every core busy.
    pub fn is_software(&self) -> bool {
        // Browsers say so only through `isFallbackAdapter` (a CPU device type in wgpu), and
        // not always: the names of the software renderers tell the rest.
        const SOFTWARE: [&str; 5] = ["swiftshader", "llvmpipe", "lavapipe", "basic render", "warp"];
        let name = self.adapter.name.to_lowercase();
        self.adapter.device_type == wgpu::DeviceType::Cpu || SOFTWARE.iter().any(|s| name.contains(s))
    }

    /// An error if the device has reported one since it was opened: results are not to be trusted.
    pub fn check(&self) -> Result<()> {
        match self.failure.lock().expect("failure lock").as_ref() {
            Some(message) => Err(Error::Gpu(message.clone())),
            None => Ok(()),
        }
    }

    /// A compute pipeline for `entry` of `source`, built once per `key`.
    pub fn pipeline(&self, key: &str, source: impl FnOnce() -> String, entry: &str) -> Arc<wgpu::ComputePipeline> {
        let mut pipelines = self.pipelines.lock().expect("pipeline cache lock");
        pipelines
            .entry(format!("{key}/{entry}"))
            .or_insert_with(|| {
                let module =
                    self.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(key), source: wgpu::ShaderSource::Wgsl(source().into()) });
                Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                }))
            })
            .clone()
    }

    /// A storage buffer holding `bytes`, padded to whole u32s; refuses what the device cannot bind.
    pub fn storage(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        let size = bytes.len().div_ceil(4).max(1) * 4;
        if size as u64 > self.limits.max_storage_buffer_binding_size {
            return Err(Error::Gpu(format!(
                "{label} needs {size} bytes in one binding, this adapter binds at most {} ({}); run on the CPU",
                self.limits.max_storage_buffer_binding_size, self.adapter.name
            )));
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size as u64,
            usage: usage | wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // Writes must be whole u32s: the bulk as it is, only the last partial word padded.
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            self.queue.write_buffer(&buffer, 0, &bytes[..whole]);
        }
        if whole < size {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.queue.write_buffer(&buffer, whole as u64, &tail);
        }
        Ok(buffer)
    }

    /// A uniform buffer holding `bytes`, rewritable between steps.
    pub fn uniform(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    /// One dispatch of `pipeline` with `buffers` (uniforms included) at their binding numbers.
    pub fn op(&self, pipeline: Arc<wgpu::ComputePipeline>, buffers: &[(u32, &wgpu::Buffer)], groups: Groups) -> Op {
        let entries: Vec<wgpu::BindGroupEntry> =
            buffers.iter().map(|(binding, b)| wgpu::BindGroupEntry { binding: *binding, resource: b.as_entire_binding() }).collect();
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
        Op { pipeline, bind_group, groups, kind: String::new(), weight_bytes: 0, flops_per_token: 0 }
    }

    /// Whether [`Gpu::profile`] times kernels on the device (timestamp queries) rather than
    /// from the CPU.
    pub fn has_timestamps(&self) -> bool {
        self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Runs `ops` like [`Gpu::run`], but each in a pass of its own, and returns each one's
    /// time in seconds: from timestamp queries where the adapter has them, else from the CPU,
    /// waiting for each dispatch (which then includes a submission's overhead).
    pub async fn profile(&self, ops: &[&Op], tokens: u32) -> Result<Vec<f64>> {
        if !self.has_timestamps() {
            let mut times = Vec::with_capacity(ops.len());
            for op in ops {
                let start = web_time::Instant::now();
                self.run(&[op], tokens);
                self.wait().await?;
                times.push(start.elapsed().as_secs_f64());
            }
            return Ok(times);
        }
        // A query set holds at most 4096 timestamps: 2048 passes.
        let mut times = Vec::with_capacity(ops.len());
        for batch in ops.chunks(2048) {
            let count = 2 * batch.len() as u32;
            let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("profile"), ty: wgpu::QueryType::Timestamp, count });
            let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile"),
                size: count as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut encoder = self.device.create_command_encoder(&Default::default());
            for (i, op) in batch.iter().enumerate() {
                let timestamp_writes = wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                };
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: Some(timestamp_writes) });
                op.encode(&mut pass, tokens);
            }
            encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
            self.queue.submit([encoder.finish()]);
            let words = self.read_words(&[(&resolved, 2 * count as usize)]).await?.pop().expect("one read");
            let period = self.queue.get_timestamp_period() as f64 * 1e-9;
            let ticks: Vec<u64> = words.chunks_exact(2).map(|w| w[0] as u64 | (w[1] as u64) << 32).collect();
            times.extend(ticks.chunks_exact(2).map(|t| t[1].saturating_sub(t[0]) as f64 * period));
        }
        self.check()?;
        Ok(times)
    }

    /// Waits until everything submitted so far has run.
    pub async fn wait(&self) -> Result<()> {
        let (sender, receiver) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = sender.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| gpu_error("waiting for the device", e))?;
        receiver.await.map_err(|_| gpu_error("waiting for the device", "the device went away"))
    }

    /// Runs `ops` in order in one submission for a step of `tokens` tokens (a dispatch sees
    /// what the ones before it wrote).
    pub fn run(&self, ops: &[&Op], tokens: u32) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for op in ops {
                op.encode(&mut pass, tokens);
            }
        }
        self.queue.submit([encoder.finish()]);
    }

    /// An f32 output buffer of `len` values that can be copied out.
    pub fn output(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Copies `len` f32s out of `buffer` (after everything submitted so far).
    pub async fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let words = self.read_words(&[(buffer, len)]).await?.pop().expect("one read");
        Ok(words.into_iter().map(f32::from_bits).collect())
    }

    /// Copies the first `len` 32-bit words out of each buffer with one copy submission and
    /// one wait.
    pub async fn read_words(&self, reads: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<u32>>> {
        let offsets: Vec<u64> = reads.iter().scan(0u64, |at, &(_, len)| Some(std::mem::replace(at, *at + len as u64 * 4))).collect();
        let size = reads.iter().map(|&(_, len)| len as u64 * 4).sum::<u64>().max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        for (&(buffer, len), &offset) in reads.iter().zip(&offsets) {
            encoder.copy_buffer_to_buffer(buffer, 0, &staging, offset, len as u64 * 4);
        }
        self.queue.submit([encoder.finish()]);
        let (sender, receiver) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        // Natively the callback runs inside poll; in the browser, from its event loop.
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| gpu_error("waiting for the device", e))?;
        receiver.await.map_err(|_| gpu_error("reading back", "the device went away"))?.map_err(|e| gpu_error("reading back", e))?;
        let data = staging.slice(..).get_mapped_range().map_err(|e| gpu_error("reading back", e))?;
        let values = reads
            .iter()
            .zip(&offsets)
            .map(|(&(_, len), &offset)| {
                data[offset as usize..offset as usize + len * 4].chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            })
            .collect();
        drop(data);
        staging.unmap();
        Ok(values)
    }
}

//! Where the small model runs: on the GPU when an adapter can take it and is the faster, else
//! on the CPU. A software adapter (SwiftShader, lavapipe) is not used unless asked for; on a
//! hardware one a short calibration times both. A GPU that fails mid-answer (a lost device, an
//! error it reports, its KV cache full) hands over to the CPU, which recomputes the
//! conversation so far and goes on: the answer is not lost.
use crate::generate::{Slm, SlmStep};
use crate::gpu::decoder::GpuDecoder;
use crate::gpu::Gpu;
use crate::model::decoder::Decoder;
use crate::model::gguf;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;
use std::io::Cursor;
use web_time::Instant;

/// How the small model picks its backend (the web app's `?gpu=` and the engine's `gpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuChoice {
    /// The CPU.
    Off,
    /// The GPU when its adapter is hardware and a few timed decode steps find it faster than
    /// the CPU.
    Auto,
    /// The GPU whenever it can take the model, a software adapter too.
    Force,
    /// As `Auto`, but times both backends on a software adapter too (to check the choice where
    /// only a software adapter exists, as in headless browsers).
    Calibrate,
}

impl std::str::FromStr for GpuChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            "force" => Ok(Self::Force),
            "calibrate" => Ok(Self::Calibrate),
            other => Err(Error::InvalidInput(format!("gpu is auto, force, calibrate or off, not `{other}`"))),
        }
    }
}

/// Decode speeds measured at load, GPU against CPU, on this device and model.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Calibration {
    pub gpu_tok_s: f64,
    pub cpu_tok_s: f64,
}

// One per loaded model: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Cpu(Decoder),
    Gpu(GpuDecoder),
}

pub struct SmallModel {
    backend: Backend,
    /// The GGUF file, kept while on the GPU to build the CPU decoder should the GPU fail.
    gguf: Option<Vec<u8>>,
    /// Every token fed since the last reset: what the CPU must recompute after a GPU failure.
    context: Vec<u32>,
    /// Why this model is not (or no longer) on the GPU; `None` while on the GPU.
    cpu_reason: Option<String>,
    calibration: Option<Calibration>,
}

impl SmallModel {
    /// On the CPU.
    pub fn cpu(decoder: Decoder, reason: impl Into<String>) -> Self {
        Self { backend: Backend::Cpu(decoder), gguf: None, context: Vec::new(), cpu_reason: Some(reason.into()), calibration: None }
    }

    /// On the GPU if `gpu` is given and the model fits it, else on the CPU. `content` is the
    /// header of `gguf`, read once by the caller.
    pub async fn load(gguf: Vec<u8>, content: &Content, gpu: Option<Gpu>) -> Result<Self> {
        let reason = match gpu {
            None => "no WebGPU adapter".to_string(),
            Some(gpu) => match GpuDecoder::from_gguf(gpu, content, &mut Cursor::new(&gguf[..])) {
                Ok(decoder) => {
                    return Ok(Self { backend: Backend::Gpu(decoder), gguf: Some(gguf), context: Vec::new(), cpu_reason: None, calibration: None });
                }
                Err(e) => e.to_string(),
            },
        };
        let decoder = Decoder::from_gguf(content, &mut Cursor::new(&gguf[..]), &candle_core::Device::Cpu, Default::default())?;
        Ok(Self::cpu(decoder, reason))
    }

    /// The backend `choice` picks (module docs), with `gpu` the adapter if there is one.
    pub async fn choose(gguf: Vec<u8>, content: &Content, gpu: Option<Gpu>, choice: GpuChoice) -> Result<Self> {
        let cpu = |gguf: &[u8], reason: String| -> Result<Self> { Ok(Self::cpu(cpu_decoder(gguf)?, reason)) };
        match (choice, gpu) {
            (GpuChoice::Off, _) => cpu(&gguf, "the GPU is turned off (gpu=off)".into()),
            (GpuChoice::Auto, Some(gpu)) if gpu.is_software() => {
                let name = match gpu.adapter.name.as_str() {
                    "" => String::new(),
                    name => format!(" ({name})"),
                };
                cpu(&gguf, format!("the only GPU adapter{name} is a software renderer, slower than the CPU path (gpu=force uses it anyway)"))
            }
            (GpuChoice::Auto | GpuChoice::Calibrate, gpu @ Some(_)) => Self::load_calibrated(gguf, content, gpu).await,
            (_, gpu) => Self::load(gguf, content, gpu).await,
        }
    }

    /// On the GPU if it takes the model and a few timed decode steps find it faster than the
    /// CPU, else on the CPU: what `GpuChoice::Auto` does on a hardware adapter.
    pub async fn load_calibrated(gguf: Vec<u8>, content: &Content, gpu: Option<Gpu>) -> Result<Self> {
        let mut model = Self::load(gguf, content, gpu).await?;
        if matches!(model.backend, Backend::Gpu(_)) {
            model.calibrate().await?;
        }
        Ok(model)
    }

    /// Times a few decode steps on the GPU and then on the CPU, and keeps the faster.
    async fn calibrate(&mut self) -> Result<()> {
        // A short prompt of any valid ids, then single-token steps: a decode step's speed.
        const PROMPT: [u32; 4] = [1, 2, 3, 4];
        const STEPS: u32 = 4;
        async fn tok_s(model: &mut SmallModel) -> Result<f64> {
            model.reset();
            model.forward(&PROMPT).await?;
            let start = Instant::now();
            for i in 0..STEPS {
                model.forward(&[5 + i]).await?;
            }
            let seconds = start.elapsed().as_secs_f64().max(1e-6);
            model.reset();
            Ok(f64::from(STEPS) / seconds)
        }
        let gpu_tok_s = tok_s(self).await?;
        let Some(gguf) = self.gguf.take() else {
            return Ok(()); // the GPU failed while timed: already on the CPU
        };
        let gpu = std::mem::replace(&mut self.backend, Backend::Cpu(cpu_decoder(&gguf)?));
        let cpu_tok_s = tok_s(self).await?;
        self.calibration = Some(Calibration { gpu_tok_s, cpu_tok_s });
        if cpu_tok_s > gpu_tok_s {
            self.cpu_reason = Some(format!("measured faster here: CPU {cpu_tok_s:.1} tok/s, WebGPU {gpu_tok_s:.1} tok/s"));
        } else {
            self.backend = gpu;
            self.gguf = Some(gguf);
        }
        Ok(())
    }

    /// The decode speeds of both backends measured at load (`GpuChoice::Auto` on a hardware
    /// adapter).
    pub fn calibration(&self) -> Option<Calibration> {
        self.calibration
    }

    /// "webgpu" or "cpu".
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Cpu(_) => "cpu",
            Backend::Gpu(_) => "webgpu",
        }
    }

    /// The GPU adapter's name while on the GPU.
    pub fn adapter(&self) -> Option<String> {
        match &self.backend {
            Backend::Gpu(g) => Some(g.adapter().name.clone()),
            Backend::Cpu(_) => None,
        }
    }

    /// Why the model runs on the CPU (no adapter, too large, the GPU failed); `None` on the GPU.
    pub fn cpu_reason(&self) -> Option<&str> {
        self.cpu_reason.as_deref()
    }

    /// On the GPU: each kernel's time in a step of `tokens` after what is cached (see
    /// [`GpuDecoder::profile`]); `None` on the CPU.
    pub async fn gpu_profile(&mut self, tokens: &[u32]) -> Option<Result<Vec<(String, u64, u64, f64)>>> {
        match &mut self.backend {
            Backend::Gpu(g) => Some(g.profile(tokens).await),
            Backend::Cpu(_) => None,
        }
    }

    /// How [`SmallModel::gpu_profile`] times kernels: "timestamp queries" on the device, or
    /// "cpu" (each dispatch waited for).
    pub fn gpu_timer(&self) -> &'static str {
        match &self.backend {
            Backend::Gpu(g) if g.has_timestamps() => "timestamp queries",
            _ => "cpu",
        }
    }

    /// Makes the GPU fail as a lost device does (for tests of the fallback).
    pub fn lose_gpu(&self) {
        if let Backend::Gpu(g) = &self.backend {
            g.lose_device();
        }
    }

    pub fn config(&self) -> &crate::model::config::ModelConfig {
        match &self.backend {
            Backend::Cpu(d) => d.config(),
            Backend::Gpu(g) => g.config(),
        }
    }
}

/// The CPU decoder from the whole file (after a GPU failure; the header is read again).
fn cpu_decoder(gguf: &[u8]) -> Result<Decoder> {
    let mut reader = Cursor::new(gguf);
    let content = gguf::read_content(&mut reader)?;
    Decoder::from_gguf(&content, &mut reader, &candle_core::Device::Cpu, Default::default())
}

impl Slm for SmallModel {
    fn reset(&mut self) {
        self.context.clear();
        match &mut self.backend {
            Backend::Cpu(d) => d.cache_mut().clear(),
            Backend::Gpu(g) => g.clear(),
        }
    }

    fn truncate(&mut self, len: usize) {
        self.context.truncate(len);
        match &mut self.backend {
            Backend::Cpu(d) => d.cache_mut().truncate(len),
            Backend::Gpu(g) => g.truncate(len),
        }
    }

    async fn forward(&mut self, tokens: &[u32]) -> Result<SlmStep> {
        let step = match &mut self.backend {
            Backend::Cpu(d) => d.forward(tokens)?.into(),
            Backend::Gpu(g) => match g.forward(tokens).await {
                Ok(step) => step,
                Err(e @ Error::Gpu(_)) => {
                    let gguf = self.gguf.take().expect("kept while on the GPU");
                    let mut cpu = cpu_decoder(&gguf)?;
                    let mut all = self.context.clone();
                    all.extend_from_slice(tokens);
                    let step = cpu.forward(&all)?.into();
                    self.backend = Backend::Cpu(cpu);
                    self.cpu_reason = Some(format!("the GPU failed mid-answer ({e}); going on on the CPU"));
                    step
                }
                Err(e) => return Err(e),
            },
        };
        self.context.extend_from_slice(tokens);
        Ok(step)
    }

    fn token_embedding(&self, id: u32) -> Result<Vec<f32>> {
        match &self.backend {
            Backend::Cpu(d) => d.token_embedding(id),
            Backend::Gpu(g) => g.token_embedding(id),
        }
    }
}

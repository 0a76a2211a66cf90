//! Where the small model runs: on the GPU when an adapter can take it, else on the CPU. A GPU
//! that fails mid-answer (a lost device, an error it reports) hands over to the CPU, which
//! recomputes the conversation so far and goes on: the answer is not lost.
use crate::generate::{Slm, SlmStep};
use crate::gpu::decoder::GpuDecoder;
use crate::gpu::Gpu;
use crate::model::decoder::Decoder;
use crate::model::gguf;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;
use std::io::Cursor;

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
}

impl SmallModel {
    /// On the CPU.
    pub fn cpu(decoder: Decoder, reason: impl Into<String>) -> Self {
        Self { backend: Backend::Cpu(decoder), gguf: None, context: Vec::new(), cpu_reason: Some(reason.into()) }
    }

    /// On the GPU if `gpu` is given and the model fits it, else on the CPU. `content` is the
    /// header of `gguf`, read once by the caller.
    pub async fn load(gguf: Vec<u8>, content: &Content, gpu: Option<Gpu>) -> Result<Self> {
        let reason = match gpu {
            None => "no WebGPU adapter".to_string(),
            Some(gpu) => match GpuDecoder::from_gguf(gpu, content, &mut Cursor::new(&gguf[..])) {
                Ok(decoder) => {
                    return Ok(Self { backend: Backend::Gpu(decoder), gguf: Some(gguf), context: Vec::new(), cpu_reason: None });
                }
                Err(e) => e.to_string(),
            },
        };
        let decoder = Decoder::from_gguf(content, &mut Cursor::new(&gguf[..]), &candle_core::Device::Cpu, Default::default())?;
        Ok(Self::cpu(decoder, reason))
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

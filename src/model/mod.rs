//! The small-model side: GGUF loading, one decoder for the llama/qwen2 family,
//! the tokenizer built from GGUF metadata, and the chat template.
pub mod attention;
pub mod chat;
pub mod config;
pub mod cpu;
pub mod decoder;
pub mod exp;
pub mod gemm;
pub mod gemv;
pub mod gguf;
pub mod int8;
pub mod speed;
pub mod tokenizer;
pub mod weights;

use crate::Result;
use candle_core::quantized::gguf_file::Content;
use candle_core::Device;
use std::io::{Read, Seek};

/// Calls `f` on the f32 values of `x`, in row-major order. A contiguous f32 tensor on the CPU
/// lends its storage (the products' inputs and outputs are hundreds of kilobytes in a
/// 12-token pass, 28 layers deep); anything else is copied out first.
pub(crate) fn with_values<R>(x: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    use candle_core::{CpuStorage, Storage};
    {
        let (storage, layout) = x.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&values[start..end]));
        }
    }
    Ok(f(&x.flatten_all()?.to_vec1::<f32>()?))
}

/// Deterministic values in [-1, 1) for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Everything one GGUF file provides: the decoder, its tokenizer and its chat template.
pub struct Model {
    pub decoder: decoder::Decoder,
    pub tokenizer: tokenizer::Tokenizer,
    /// Absent when the GGUF carries no `tokenizer.chat_template`.
    pub chat: Option<chat::ChatTemplate>,
}

impl Model {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &std::path::Path) -> Result<Self> {
        Self::load_with(path, Default::default())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_with(path: &std::path::Path, options: decoder::LoadOptions) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| crate::Error::File {
            path: path.to_path_buf(),
            message: format!("cannot open model file: {e}"),
        })?;
        let content = gguf::read_content(&mut file)?;
        Self::from_gguf(&content, &mut file, &Device::Cpu, options)
    }

    pub fn from_gguf<R: Read + Seek>(content: &Content, reader: &mut R, device: &Device, options: decoder::LoadOptions) -> Result<Self> {
        Ok(Self {
            tokenizer: tokenizer::Tokenizer::from_gguf(content)?,
            chat: chat::ChatTemplate::from_gguf(content).ok(),
            decoder: decoder::Decoder::from_gguf(content, reader, device, options)?,
        })
    }

    /// The prompt as the model's chat template renders one user message, ready to generate the reply.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        self.render_chat(&[chat::Message::user(user)])
    }

    /// A conversation rendered by the model's chat template, ready to generate the next reply.
    pub fn render_chat(&self, messages: &[chat::Message]) -> Result<String> {
        let template = self.chat.as_ref().ok_or_else(|| {
            crate::Error::ChatTemplate("this model has no chat template; run without --chat".into())
        })?;
        template.render(messages, true)
    }
}

//! The decoding loop: prefill the prompt, then propose one token at a time until an
//! end-of-generation token or the token budget. (The hybrid loop that consults the
//! cloud builds on this; see DESIGN.md.)
use crate::model::decoder::Decoder;
use crate::model::tokenizer::Tokenizer;
use crate::sampler::Sampler;
use crate::Result;
use web_time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (not emitted).
    EndOfGeneration,
    /// `max_tokens` were emitted.
    MaxTokens,
    /// The caller's callback asked to stop.
    Stopped,
}

#[derive(Debug, Clone)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Tokens emitted (end-of-generation excluded).
    pub tokens: usize,
    /// Seconds of the prompt's forward pass (which yields the first token's logits).
    pub prefill_secs: f64,
    /// Decode forward passes (one per token after the first) and their seconds.
    pub decode_steps: usize,
    pub decode_secs: f64,
    pub stop: StopReason,
}

impl GenerationStats {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    pub fn decode_tok_s(&self) -> f64 {
        match self.decode_steps {
            0 => 0.0,
            n => n as f64 / self.decode_secs.max(1e-9),
        }
    }
}

/// Generates after `prompt` (token ids) on a fresh KV cache, calling `on_token(id)` for each
/// emitted token; returning `false` from it stops generation.
pub fn generate(
    decoder: &mut Decoder,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<GenerationStats> {
    decoder.cache_mut().clear();
    let t0 = Instant::now();
    let mut logits = decoder.forward(prompt)?.logits;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        tokens: 0,
        prefill_secs,
        decode_steps: 0,
        decode_secs: 0.0,
        stop: StopReason::MaxTokens,
    };
    while stats.tokens < max_tokens {
        let id = sampler.sample(&logits);
        if tokenizer.is_eog(id) {
            stats.stop = StopReason::EndOfGeneration;
            break;
        }
        stats.tokens += 1;
        if !on_token(id) {
            stats.stop = StopReason::Stopped;
            break;
        }
        if stats.tokens == max_tokens {
            break;
        }
        let t = Instant::now();
        logits = decoder.forward(&[id])?.logits;
        stats.decode_secs += t.elapsed().as_secs_f64();
        stats.decode_steps += 1;
    }
    Ok(stats)
}

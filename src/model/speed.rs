//! Prefill and decode speed of the decoder on a fixed prompt, the same measurement natively
//! (`hybrid bench decode`) and in the browser (`hybrid bench browser`, through `Engine::bench`).
use super::tokenizer::Tokenizer;
use crate::generate::Slm;
use crate::Result;
use serde::{Deserialize, Serialize};
use web_time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Speed {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// Real text, tokenized and repeated to exactly `n` ids.
pub fn bench_prompt(tokenizer: &Tokenizer, n: usize) -> Result<Vec<u32>> {
    const TEXT: &str = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nThe quick brown fox jumps over the lazy dog. ";
    let ids = tokenizer.encode(TEXT)?;
    Ok(ids.iter().copied().cycle().take(n).collect())
}

/// Best-of-`repeats` prefill of `prompt` and decode of `gen_tokens` greedy tokens after it.
pub async fn measure(slm: &mut impl Slm, prompt: &[u32], gen_tokens: usize, repeats: usize) -> Result<Speed> {
    let mut best = Speed { prefill_tok_s: 0.0, decode_tok_s: 0.0 };
    for _ in 0..repeats.max(1) {
        slm.reset();
        let t = Instant::now();
        let mut id = slm.forward(prompt).await?.top.argmax();
        let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..gen_tokens {
            id = slm.forward(&[id]).await?.top.argmax();
        }
        let decode = gen_tokens as f64 / t.elapsed().as_secs_f64();
        best.prefill_tok_s = best.prefill_tok_s.max(prefill);
        best.decode_tok_s = best.decode_tok_s.max(decode);
    }
    slm.reset();
    Ok(best)
}

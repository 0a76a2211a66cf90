// The parameters of the decoder's f32 kernels (rms_norm, rope, attention, silu_mul,
// logit_summary), one uniform each; prepended to each kernel's source. The kernels work on a
// batch of token rows: dispatch dimension y is the token (the host dispatches as many as the
// step has), row t of a buffer starts at t times its width.

struct Params {
  // Width of a row (rms_norm, silu_mul, logit_summary's vocabulary) or, for rope and
  // attention, of one head.
  n: u32,
  heads: u32,
  kv_heads: u32,
  // Position of the batch's first token (0-based); its token t is at pos + t, and attention
  // reads positions 0..=pos + t.
  pos: u32,
  eps: f32,
  // Floats per position in the KV cache (kv_heads * head_dim).
  kv_row: u32,
  // Where the first row starts in its buffer (k is rotated in place in the cache; the final
  // norm reads the batch's last row).
  offset: u32,
  // Rope: 0 interleaved pairs (2i, 2i+1) (llama GGUFs), 1 halves (i, i + d/2) (qwen2).
  rope_layout: u32,
}

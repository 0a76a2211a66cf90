// The parameters of the decoder's f32 kernels (rms_norm, rope, attention, silu_mul), one
// uniform each; prepended to each kernel's source.

struct Params {
  // Width of the vector (rms_norm, silu_mul) or, for rope and attention, of one head.
  n: u32,
  heads: u32,
  kv_heads: u32,
  // Position of the token this step computes (0-based); attention reads positions 0..=pos.
  pos: u32,
  eps: f32,
  // Floats per position in the KV cache (kv_heads * head_dim).
  kv_row: u32,
  // Where the rotated vector starts in its buffer (k is rotated in place in the cache).
  offset: u32,
  // Rope: 0 interleaved pairs (2i, 2i+1) (llama GGUFs), 1 halves (i, i + d/2) (qwen2).
  rope_layout: u32,
}


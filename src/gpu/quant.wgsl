// Quantized matrices in their GPU layouts (quant.rs). The host prepends
//   const LAYOUT: u32 = …;  // 0: 4-bit levels, scale and offset per 32 values; 1: 8-bit levels, a scale per 16
//   const WG: u32 = …;      // threads of a product workgroup
//   const R: u32 = …;       // rows each thread computes
//   const TT: u32 = …;      // tokens each thread computes them for (1 for a decode step)
//   const GATED: bool = …;  // rows are (gate, up) pairs: the output is silu(gate) · up
//
// A part's words: every row's levels, a 16-byte word per chunk of 32 values (two for 8-bit),
// then from `scale_base` every row's scales, a word per pair of chunks. Inputs come quantized
// to 8 bits per chunk (quantize.wgsl), so a chunk's dot product is a sum of integer dot
// products of packed bytes, scaled once.
//
// On a software adapter (lavapipe, SwiftShader) each storage load is a loop over the SIMD
// lanes: the kernels load 16 bytes at a time, and each input word serves R rows.

const Q4: u32 = 0u;
const NIBBLES: u32 = 0x0F0F0F0Fu;

struct Dims {
  // Rows of this part of the matrix (a matrix too large for one binding is split by rows).
  rows: u32,
  cols: u32,
  // 32-value chunks per row: an even count, the last may be padding.
  chunks: u32,
  // Where the scales start, in 16-byte words.
  scale_base: u32,
  // Workgroups per dispatch column (dequantize): a dispatch dimension holds at most 65535.
  groups_per_y: u32,
  // The part's first row in the whole matrix: where its outputs start, and the token ids a
  // gather of this part serves.
  first_row: u32,
  _pad0: u32,
  _pad1: u32,
  // Stacked matrices (q, k, v): output row r belongs to the first whose `ends` is above it,
  // and goes to that one's output (y, y1, y2) with its flags and row stride. Output rows are
  // matrix rows, or pairs of them with GATED.
  ends: vec4<u32>,
  // Bit 0: add bias[r]. Bit 1: add to y instead of overwriting it (the residual stream).
  // Bit 2: token t's output goes to row batch.pos + t (k and v, into the KV cache).
  flags: vec4<u32>,
  // Floats per token row of each output: its matrix's rows.
  strides: vec4<u32>,
}

// What changes between steps, shared by every matrix op of the decoder.
struct Batch {
  // Token rows in x (and y).
  tokens: u32,
  // Position of the first token in the KV cache.
  pos: u32,
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<uniform> batch: Batch;
@group(0) @binding(6) var<storage, read> ids: array<u32>;
@group(0) @binding(7) var<storage, read_write> y1: array<f32>;
@group(0) @binding(8) var<storage, read_write> y2: array<f32>;

// The scales word of pair p of a row.
fn scales_of(row: u32, p: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(w[dims.scale_base + row * (dims.chunks / 2u) + p]);
}

// Chunk c of a row, dequantized.
fn dequant_chunk(row: u32, c: u32) -> array<f32, 32> {
  var v: array<f32, 32>;
  let s = scales_of(row, c / 2u);
  let odd = (c % 2u) == 1u;
  if (LAYOUT == Q4) {
    let scale = select(s.x, s.z, odd);
    let offset = select(s.y, s.w, odd);
    let q = w[row * dims.chunks + c];
    for (var k = 0u; k < 4u; k++) {
      for (var b = 0u; b < 4u; b++) {
        let byte = (q[k] >> (8u * b)) & 0xffu;
        v[4u * k + b] = scale * f32(byte & 15u) + offset;
        v[16u + 4u * k + b] = scale * f32(byte >> 4u) + offset;
      }
    }
    return v;
  }
  let scales = select(s.xy, s.zw, odd);
  for (var h = 0u; h < 2u; h++) {
    let q = w[(row * dims.chunks + c) * 2u + h];
    for (var k = 0u; k < 4u; k++) {
      for (var b = 0u; b < 4u; b++) {
        let level = bitcast<i32>(q[k] << (24u - 8u * b)) >> 24u;
        v[16u * h + 4u * k + b] = scales[h] * f32(level);
      }
    }
  }
  return v;
}

// The whole matrix as f32, row-major (checks every format against the CPU's dequantization).
@compute @workgroup_size(64)
fn dequantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let row = wid.x + wid.y * dims.groups_per_y;
  if (row >= dims.rows) {
    return;
  }
  let out = (dims.first_row + row) * dims.cols;
  for (var c = lid.x; c * 32u < dims.cols; c += 64u) {
    let v = dequant_chunk(row, c);
    for (var j = 0u; j < 32u; j++) {
      y[out + c * 32u + j] = v[j];
    }
  }
}

// Row t of y = row ids[t] of the matrix (the embedding lookup): workgroup y is the token, a
// thread a chunk; a part skips the ids that another part holds.
@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.y;
  let c = gid.x;
  let id = ids[t];
  if (t >= batch.tokens || id < dims.first_row || id >= dims.first_row + dims.rows || c * 32u >= dims.cols) {
    return;
  }
  let v = dequant_chunk(id - dims.first_row, c);
  let out = t * dims.cols + c * 32u;
  for (var j = 0u; j < 32u; j++) {
    y[out + j] = v[j];
  }
}

// Token t's output `r` (a row of the whole stacked matrix, or a pair with GATED) into its
// matrix's output, with bias and accumulation.
fn store(t: u32, r: u32, value: f32) {
  var m = 0u;
  var start = 0u;
  if (r >= dims.ends.x) {
    m = 1u;
    start = dims.ends.x;
  }
  if (r >= dims.ends.y) {
    m = 2u;
    start = dims.ends.y;
  }
  let flags = dims.flags[m];
  var v = value;
  if ((flags & 1u) != 0u) {
    v += bias[r];
  }
  var slot = t;
  if ((flags & 4u) != 0u) {
    slot += batch.pos;
  }
  let at = slot * dims.strides[m] + r - start;
  let accumulate = (flags & 2u) != 0u;
  if (m == 0u) {
    if (accumulate) { v += y[at]; }
    y[at] = v;
  } else if (m == 1u) {
    if (accumulate) { v += y1[at]; }
    y1[at] = v;
  } else {
    if (accumulate) { v += y2[at]; }
    y2[at] = v;
  }
}

// Σ level·x over a chunk of 4-bit levels `q` (byte j: levels j and j + 16) and input levels
// `xa` (values 0..15) and `xb` (16..31).
fn dot_q4(q: vec4<u32>, xa: vec4<u32>, xb: vec4<u32>) -> i32 {
  return dot4I8Packed(q.x & NIBBLES, xa.x) + dot4I8Packed((q.x >> 4u) & NIBBLES, xb.x)
       + dot4I8Packed(q.y & NIBBLES, xa.y) + dot4I8Packed((q.y >> 4u) & NIBBLES, xb.y)
       + dot4I8Packed(q.z & NIBBLES, xa.z) + dot4I8Packed((q.z >> 4u) & NIBBLES, xb.z)
       + dot4I8Packed(q.w & NIBBLES, xa.w) + dot4I8Packed((q.w >> 4u) & NIBBLES, xb.w);
}

// Σ level·x over 16 values of 8-bit levels.
fn dot_q8(q: vec4<u32>, x: vec4<u32>) -> i32 {
  return dot4I8Packed(q.x, x.x) + dot4I8Packed(q.y, x.y) + dot4I8Packed(q.z, x.z) + dot4I8Packed(q.w, x.w);
}

// A pair of chunks (2p, 2p + 1) of a row against the input's levels `x0..x3` and its
// (scale, scale · Σ levels) `xs` of the same chunks.
fn pair_dot(row: u32, p: u32, x0: vec4<u32>, x1: vec4<u32>, x2: vec4<u32>, x3: vec4<u32>, xs: vec4<f32>) -> f32 {
  let s = scales_of(row, p);
  if (LAYOUT == Q4) {
    let q0 = w[row * dims.chunks + 2u * p];
    let q1 = w[row * dims.chunks + 2u * p + 1u];
    let d = s * xs.xxzz;
    return d.x * f32(dot_q4(q0, x0, x1)) + s.y * xs.y + d.z * f32(dot_q4(q1, x2, x3)) + s.w * xs.w;
  }
  let b = (row * dims.chunks + 2u * p) * 2u;
  return xs.x * (s.x * f32(dot_q8(w[b], x0)) + s.y * f32(dot_q8(w[b + 1u], x1)))
       + xs.z * (s.z * f32(dot_q8(w[b + 2u], x2)) + s.w * f32(dot_q8(w[b + 3u], x3)));
}

// y = W x for one token (a decode step): `product` with TT = 1 and R = 4, written without
// arrays. A shader compiler that does not unroll loops (SwiftShader's) keeps an array indexed
// by a loop counter in memory, every access a gather: `product` ran 7× slower there.
@compute @workgroup_size(WG)
fn matvec(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row0 = gid.x * 4u;
  if (row0 >= dims.rows) {
    return;
  }
  let pairs = dims.chunks / 2u;
  let last = dims.rows - 1u;
  let r1 = min(row0 + 1u, last);
  let r2 = min(row0 + 2u, last);
  let r3 = min(row0 + 3u, last);
  var a0 = 0.0;
  var a1 = 0.0;
  var a2 = 0.0;
  var a3 = 0.0;
  for (var p = 0u; p < pairs; p++) {
    let x0 = xq[4u * p];
    let x1 = xq[4u * p + 1u];
    let x2 = xq[4u * p + 2u];
    let x3 = xq[4u * p + 3u];
    let xs = bitcast<vec4<f32>>(xq[dims.chunks * 2u + p]);
    a0 += pair_dot(row0, p, x0, x1, x2, x3, xs);
    a1 += pair_dot(r1, p, x0, x1, x2, x3, xs);
    a2 += pair_dot(r2, p, x0, x1, x2, x3, xs);
    a3 += pair_dot(r3, p, x0, x1, x2, x3, xs);
  }
  let r = dims.first_row + row0;
  if (GATED) {
    // Rows 2i and 2i + 1 are gate and up of output i.
    store(0u, r / 2u, a0 / (1.0 + exp(-a0)) * a1);
    if (row0 + 2u < dims.rows) { store(0u, r / 2u + 1u, a2 / (1.0 + exp(-a2)) * a3); }
  } else {
    store(0u, r, a0);
    if (row0 + 1u < dims.rows) { store(0u, r + 1u, a1); }
    if (row0 + 2u < dims.rows) { store(0u, r + 2u, a2); }
    if (row0 + 3u < dims.rows) { store(0u, r + 3u, a3); }
  }
}

// Y = X Wᵀ: a thread computes R neighbouring rows for TT neighbouring tokens (workgroup y is
// the tile of tokens), stepping through the row a pair of chunks at a time: each input word
// it loads serves R rows, each weight word TT tokens.
@compute @workgroup_size(WG)
fn product(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row0 = gid.x * R;
  let t0 = gid.y * TT;
  if (row0 >= dims.rows) {
    return;
  }
  let pairs = dims.chunks / 2u;
  // Per token: 2 words of levels per chunk, then a word of scales per pair.
  let x_stride = dims.chunks * 2u + pairs;
  var acc: array<array<f32, TT>, R>;
  var x_base: array<u32, TT>;
  for (var t = 0u; t < TT; t++) {
    x_base[t] = min(t0 + t, batch.tokens - 1u) * x_stride;
  }
  var rows: array<u32, R>;
  for (var r = 0u; r < R; r++) {
    rows[r] = min(row0 + r, dims.rows - 1u);
  }
  for (var p = 0u; p < pairs; p++) {
    // The input's levels of chunks 2p and 2p + 1 and their (scale, scale · Σ levels).
    var xl: array<array<vec4<u32>, 4>, TT>;
    var xs: array<vec4<f32>, TT>;
    for (var t = 0u; t < TT; t++) {
      let b = x_base[t] + 4u * p;
      xl[t] = array<vec4<u32>, 4>(xq[b], xq[b + 1u], xq[b + 2u], xq[b + 3u]);
      xs[t] = bitcast<vec4<f32>>(xq[x_base[t] + dims.chunks * 2u + p]);
    }
    for (var r = 0u; r < R; r++) {
      let s = scales_of(rows[r], p);
      if (LAYOUT == Q4) {
        let q0 = w[rows[r] * dims.chunks + 2u * p];
        let q1 = w[rows[r] * dims.chunks + 2u * p + 1u];
        for (var t = 0u; t < TT; t++) {
          let d = s * xs[t].xxzz;
          acc[r][t] += d.x * f32(dot_q4(q0, xl[t][0], xl[t][1])) + s.y * xs[t].y
                     + d.z * f32(dot_q4(q1, xl[t][2], xl[t][3])) + s.w * xs[t].w;
        }
      } else {
        let b = (rows[r] * dims.chunks + 2u * p) * 2u;
        let q0 = w[b];
        let q1 = w[b + 1u];
        let q2 = w[b + 2u];
        let q3 = w[b + 3u];
        for (var t = 0u; t < TT; t++) {
          acc[r][t] += xs[t].x * (s.x * f32(dot_q8(q0, xl[t][0])) + s.y * f32(dot_q8(q1, xl[t][1])))
                     + xs[t].z * (s.z * f32(dot_q8(q2, xl[t][2])) + s.w * f32(dot_q8(q3, xl[t][3])));
        }
      }
    }
  }
  for (var t = 0u; t < TT; t++) {
    if (t0 + t < batch.tokens) {
      if (GATED) {
        // Rows 2i and 2i + 1 are gate and up of output i (R is even, row0 too).
        for (var r = 0u; r < R; r += 2u) {
          if (row0 + r < dims.rows) {
            let g = acc[r][t];
            store(t0 + t, (dims.first_row + row0 + r) / 2u, g / (1.0 + exp(-g)) * acc[r + 1u][t]);
          }
        }
      } else {
        for (var r = 0u; r < R; r++) {
          if (row0 + r < dims.rows) {
            store(t0 + t, dims.first_row + row0 + r, acc[r][t]);
          }
        }
      }
    }
  }
}

// Quantized GGUF matrices, read straight from their blocks. The host prepends
//   const FORMAT: u32 = …;
// (the GgmlDType's ggml id). A matrix is its rows' raw GGUF bytes, padded to whole u32s, so
// upload is a copy; f16 scales are read with unpack2x16float, so no `shader-f16` is needed.

const Q4_0: u32 = 2u;
const Q4_1: u32 = 3u;
const Q5_0: u32 = 6u;
const Q8_0: u32 = 8u;
const Q4_K: u32 = 12u;
const Q6_K: u32 = 14u;

struct Dims {
  // Rows of this part of the matrix (a matrix too large for one binding is split by rows).
  rows: u32,
  cols: u32,
  row_bytes: u32,
  // Workgroups per dispatch column (matvec, dequantize): a dispatch dimension holds at most
  // 65535 workgroups.
  groups_per_y: u32,
  // The part's first row in the whole matrix: where its outputs and bias start, and the
  // token ids a gather of this part serves.
  first_row: u32,
  // Where the output starts in y.
  y_offset: u32,
  // Bit 0: add bias[first_row + row]. Bit 1: add to y instead of overwriting it (the residual
  // stream). Bit 2: token t's output goes to row batch.pos + t (k and v, into the KV cache).
  flags: u32,
  // Floats per token row of y: the whole matrix's rows.
  y_stride: u32,
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

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<uniform> batch: Batch;
@group(0) @binding(6) var<storage, read> ids: array<u32>;

fn byte_at(o: u32) -> u32 {
  return (w[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

fn i8_at(o: u32) -> i32 {
  return (i32(byte_at(o)) << 24u) >> 24u;
}

fn f16_at(o: u32) -> f32 {
  return unpack2x16float(byte_at(o) | (byte_at(o + 1u) << 8u)).x;
}

// The 4 bytes at byte offset `o`, little-endian, at any alignment (blocks of 18, 20, 22, 34
// and 210 bytes start anywhere in a word): one or two loads instead of four.
fn word_at(o: u32) -> u32 {
  let i = o >> 2u;
  let shift = (o & 3u) * 8u;
  if (shift == 0u) {
    return w[i];
  }
  return (w[i] >> shift) | (w[i + 1u] << (32u - shift));
}

// Byte b (0..3) of a word, as a signed 8-bit value.
fn i8_of(word: u32, b: u32) -> i32 {
  return bitcast<i32>(word << (24u - 8u * b)) >> 24u;
}

// Q4_K's 6-bit scale (x) and min (y) of sub-block `j` from the 12 packed bytes at `o`.
fn scale_min_k4(o: u32, j: u32) -> vec2<f32> {
  if (j < 4u) {
    return vec2<f32>(f32(byte_at(o + j) & 63u), f32(byte_at(o + j + 4u) & 63u));
  }
  let sc = (byte_at(o + j + 4u) & 0xfu) | ((byte_at(o + j - 4u) >> 6u) << 4u);
  let m = (byte_at(o + j + 4u) >> 4u) | ((byte_at(o + j) >> 6u) << 4u);
  return vec2<f32>(f32(sc), f32(m));
}

// Values 16·run .. 16·run + 15 of the row whose bytes start at `base`, as ggml dequantizes
// them. A 16-value run lies within one block (or sub-block) of every format, so its scales
// are read once.
fn dequant16(base: u32, run: u32) -> array<f32, 16> {
  var v: array<f32, 16>;
  let c = run / 2u;
  let half = (run % 2u) * 16u;
  if (FORMAT == Q8_0) {
    let o = base + c * 34u;
    let d = f16_at(o);
    for (var k = 0u; k < 4u; k++) {
      let q = word_at(o + 2u + half + 4u * k);
      for (var b = 0u; b < 4u; b++) {
        v[4u * k + b] = d * f32(i8_of(q, b));
      }
    }
    return v;
  }
  if (FORMAT == Q4_0 || FORMAT == Q4_1 || FORMAT == Q5_0) {
    var size = 18u;
    if (FORMAT == Q4_1) { size = 20u; }
    if (FORMAT == Q5_0) { size = 22u; }
    let o = base + c * size;
    let scales = unpack2x16float(word_at(o));
    var qh = 0u;
    if (FORMAT == Q5_0) { qh = word_at(o + 2u) >> half; }
    let shift = select(0u, 4u, half == 16u);
    for (var k = 0u; k < 4u; k++) {
      let q = word_at(o + size - 16u + 4u * k) >> shift;
      for (var b = 0u; b < 4u; b++) {
        let j = 4u * k + b;
        var level = (q >> (8u * b)) & 0xfu;
        if (FORMAT == Q5_0) {
          level |= ((qh >> j) & 1u) << 4u;
        }
        if (FORMAT == Q4_0) { v[j] = scales.x * (f32(level) - 8.0); }
        if (FORMAT == Q4_1) { v[j] = scales.x * f32(level) + scales.y; }
        if (FORMAT == Q5_0) { v[j] = scales.x * (f32(level) - 16.0); }
      }
    }
    return v;
  }
  if (FORMAT == Q4_K) {
    let o = base + (c / 8u) * 144u;
    let sub = c % 8u;
    let sm = scale_min_k4(o + 4u, sub);
    let dm = unpack2x16float(word_at(o));
    let scale = dm.x * sm.x;
    let offset = dm.y * sm.y;
    let qs = o + 16u + (sub / 2u) * 32u + half;
    let shift = (sub % 2u) * 4u;
    for (var k = 0u; k < 4u; k++) {
      let q = word_at(qs + 4u * k) >> shift;
      for (var b = 0u; b < 4u; b++) {
        v[4u * k + b] = scale * f32((q >> (8u * b)) & 0xfu) - offset;
      }
    }
    return v;
  }
  // Q6_K: chunk c is group g of one half of a 256-value block; each 16-value run has a scale.
  let o = base + (c / 8u) * 210u;
  let within = c % 8u;
  let h = within / 4u;
  let g = within % 4u;
  let ql = o + h * 64u + (g & 1u) * 32u + half;
  let qh = o + 128u + h * 32u + half;
  let shift = select(0u, 4u, g >= 2u);
  let scale = f16_at(o + 208u) * f32(i8_at(o + 192u + h * 8u + 2u * g + half / 16u));
  for (var k = 0u; k < 4u; k++) {
    let lo = word_at(ql + 4u * k) >> shift;
    let hi = word_at(qh + 4u * k) >> (2u * g);
    for (var b = 0u; b < 4u; b++) {
      let q = i32(((lo >> (8u * b)) & 0xfu) | (((hi >> (8u * b)) & 3u) << 4u)) - 32;
      v[4u * k + b] = scale * f32(q);
    }
  }
  return v;
}

fn group_of(wid: vec3<u32>) -> u32 {
  return wid.x + wid.y * dims.groups_per_y;
}

// The whole matrix as f32, row-major (checks every format against the CPU's dequantization).
@compute @workgroup_size(64)
fn dequantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let row = group_of(wid);
  if (row >= dims.rows) {
    return;
  }
  let base = row * dims.row_bytes;
  let out = dims.y_offset + (dims.first_row + row) * dims.cols;
  for (var run = lid.x; run < dims.cols / 16u; run += 64u) {
    let v = dequant16(base, run);
    for (var j = 0u; j < 16u; j++) {
      y[out + run * 16u + j] = v[j];
    }
  }
}

// Row t of y = row ids[t] of the matrix (the embedding lookup): workgroup y is the token; a
// part skips the ids that another part holds.
@compute @workgroup_size(64)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = wid.y;
  let id = ids[t];
  if (t >= batch.tokens || id < dims.first_row || id >= dims.first_row + dims.rows) {
    return;
  }
  let base = (id - dims.first_row) * dims.row_bytes;
  let out = dims.y_offset + t * dims.cols;
  for (var run = lid.x; run < dims.cols / 16u; run += 64u) {
    let v = dequant16(base, run);
    for (var j = 0u; j < 16u; j++) {
      y[out + run * 16u + j] = v[j];
    }
  }
}

// Where token t's output of matrix row `row` (of this part) goes, with bias and accumulation.
fn store(t: u32, row: u32, value: f32) {
  var r = value;
  if ((dims.flags & 1u) != 0u) {
    r += bias[dims.first_row + row];
  }
  var slot = t;
  if ((dims.flags & 4u) != 0u) {
    slot += batch.pos;
  }
  let at = dims.y_offset + slot * dims.y_stride + dims.first_row + row;
  if ((dims.flags & 2u) != 0u) {
    r += y[at];
  }
  y[at] = r;
}

// Σ_j W[row, 32c + j] · x[32c + j] over one 32-element chunk of the row at `base`: the
// chunk's scales are read once, then its quants a word (4 bytes) at a time.
fn chunk_dot(base: u32, c: u32) -> f32 {
  let x0 = c * 32u;
  if (FORMAT == Q8_0) {
    let o = base + c * 34u;
    var s = 0.0;
    for (var k = 0u; k < 8u; k++) {
      let q = word_at(o + 2u + 4u * k);
      let j = x0 + 4u * k;
      s += f32(i8_of(q, 0u)) * x[j] + f32(i8_of(q, 1u)) * x[j + 1u] + f32(i8_of(q, 2u)) * x[j + 2u] + f32(i8_of(q, 3u)) * x[j + 3u];
    }
    return f16_at(o) * s;
  }
  if (FORMAT == Q4_0 || FORMAT == Q4_1 || FORMAT == Q5_0) {
    var size = 18u;
    if (FORMAT == Q4_1) { size = 20u; }
    if (FORMAT == Q5_0) { size = 22u; }
    let o = base + c * size;
    let qs = o + size - 16u;
    var qh = 0u;
    if (FORMAT == Q5_0) { qh = word_at(o + 2u); }
    var s = 0.0;
    var xs = 0.0;
    for (var k = 0u; k < 4u; k++) {
      let q = word_at(qs + 4u * k);
      for (var b = 0u; b < 4u; b++) {
        let j = 4u * k + b;
        var lo = (q >> (8u * b)) & 0xfu;
        var hi = (q >> (8u * b + 4u)) & 0xfu;
        if (FORMAT == Q5_0) {
          lo |= ((qh >> j) << 4u) & 0x10u;
          hi |= (qh >> (j + 12u)) & 0x10u;
        }
        let xl = x[x0 + j];
        let xh = x[x0 + j + 16u];
        s += f32(lo) * xl + f32(hi) * xh;
        xs += xl + xh;
      }
    }
    let scales = word_at(o);
    let d = unpack2x16float(scales).x;
    if (FORMAT == Q4_0) { return d * (s - 8.0 * xs); }
    if (FORMAT == Q5_0) { return d * (s - 16.0 * xs); }
    return d * s + unpack2x16float(scales).y * xs;
  }
  if (FORMAT == Q4_K) {
    let o = base + (c / 8u) * 144u;
    let sub = c % 8u;
    let sm = scale_min_k4(o + 4u, sub);
    let qs = o + 16u + (sub / 2u) * 32u;
    let shift = (sub % 2u) * 4u;
    var s = 0.0;
    var xs = 0.0;
    for (var k = 0u; k < 8u; k++) {
      let q = word_at(qs + 4u * k) >> shift;
      for (var b = 0u; b < 4u; b++) {
        let xv = x[x0 + 4u * k + b];
        s += f32((q >> (8u * b)) & 0xfu) * xv;
        xs += xv;
      }
    }
    let dm = unpack2x16float(word_at(o));
    return dm.x * sm.x * s - dm.y * sm.y * xs;
  }
  // Q6_K: a chunk is one group g of one half; its two 16-element runs have their own scales.
  let o = base + (c / 8u) * 210u;
  let within = c % 8u;
  let half = within / 4u;
  let g = within % 4u;
  let ql = o + half * 64u + (g & 1u) * 32u;
  let qh = o + 128u + half * 32u;
  let shift = select(0u, 4u, g >= 2u);
  var s0 = 0.0;
  var s1 = 0.0;
  for (var k = 0u; k < 8u; k++) {
    let lo = word_at(ql + 4u * k) >> shift;
    let hi = word_at(qh + 4u * k) >> (2u * g);
    var p = 0.0;
    for (var b = 0u; b < 4u; b++) {
      let q = i32(((lo >> (8u * b)) & 0xfu) | (((hi >> (8u * b)) & 3u) << 4u)) - 32;
      p += f32(q) * x[x0 + 4u * k + b];
    }
    if (k < 4u) { s0 += p; } else { s1 += p; }
  }
  let sc = o + 192u + half * 8u + 2u * g;
  return f16_at(o + 208u) * (f32(i8_at(sc)) * s0 + f32(i8_at(sc + 1u)) * s1);
}

// Rows of one matvec workgroup (`MATVEC_ROWS` in quant.rs), 8 threads each.
const MATVEC_ROWS: u32 = 8u;
var<workgroup> partial: array<f32, 64>;

// y = W x (+ bias) (+ y) for one token (a decode step): a workgroup takes 8 rows, the 8
// threads of a row taking its 32-element chunks in turn (neighbouring blocks), then one
// thread per row adds the 8 sums.
@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let lane = lid.x % 8u;
  let row = group_of(wid) * MATVEC_ROWS + lid.x / 8u;
  var sum = 0.0;
  if (row < dims.rows) {
    let base = row * dims.row_bytes;
    for (var c = lane; c < dims.cols / 32u; c += 8u) {
      sum += chunk_dot(base, c);
    }
  }
  partial[lid.x] = sum;
  workgroupBarrier();
  if (lane == 0u && row < dims.rows) {
    var total = 0.0;
    for (var k = 0u; k < 8u; k++) {
      total += partial[lid.x + k];
    }
    store(0u, row, total);
  }
}

// Y = X Wᵀ for batch.tokens rows of x (a prefill): a workgroup computes a tile of TILE matrix
// rows by TILE tokens, stepping through the columns 32 at a time. Each step dequantizes the
// tile's weights once into workgroup memory, where all TILE tokens use them; each of the 64
// threads then accumulates 4 rows by 4 tokens.
const TILE: u32 = 32u;
var<workgroup> w_tile: array<f32, 1024>; // [column][row]
var<workgroup> x_tile: array<f32, 1024>; // [column][token]

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let row0 = wid.x * TILE;
  let t0 = wid.y * TILE;
  // What this thread loads: 16 columns of one row and of one token.
  let load = lid.x / 2u;
  let half = (lid.x % 2u) * 16u;
  let load_row = row0 + load;
  let load_token = t0 + load;
  // What this thread computes.
  let r4 = (lid.x % 8u) * 4u;
  let t4 = (lid.x / 8u) * 4u;
  var acc: array<vec4<f32>, 4>; // [row][token]
  for (var c0 = 0u; c0 < dims.cols; c0 += 32u) {
    var wv: array<f32, 16>;
    if (load_row < dims.rows) {
      wv = dequant16(load_row * dims.row_bytes, (c0 + half) / 16u);
    }
    for (var j = 0u; j < 16u; j++) {
      let c = half + j;
      w_tile[c * TILE + load] = wv[j];
      var xv = 0.0;
      if (load_token < batch.tokens) {
        xv = x[load_token * dims.cols + c0 + c];
      }
      x_tile[c * TILE + load] = xv;
    }
    workgroupBarrier();
    for (var c = 0u; c < 32u; c++) {
      let xs = vec4<f32>(x_tile[c * TILE + t4], x_tile[c * TILE + t4 + 1u], x_tile[c * TILE + t4 + 2u], x_tile[c * TILE + t4 + 3u]);
      for (var i = 0u; i < 4u; i++) {
        acc[i] += w_tile[c * TILE + r4 + i] * xs;
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    for (var j = 0u; j < 4u; j++) {
      let row = row0 + r4 + i;
      let t = t0 + t4 + j;
      if (row < dims.rows && t < batch.tokens) {
        store(t, row, acc[i][j]);
      }
    }
  }
}

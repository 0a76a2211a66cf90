// The input of a product, quantized to 8 bits per chunk of 32 values as the CPU's integer
// kernels do (`model::int8::quantize_block`): scale = max |v| / 127, level = v / scale rounded
// to nearest, ties to even. Layout per token (quant.wgsl reads it): each chunk's 32 levels in
// two 16-byte words, then a word per pair of chunks, (scale, scale · Σ levels) of each.
// A thread quantizes a chunk; workgroup y is the token. `norm_quantize` first applies the
// RMS norm (the residual stream into a layer's products: one dispatch instead of two).

struct QuantizeParams {
  cols: u32,
  // Chunks per token: an even count, past `cols` they are zeros.
  chunks: u32,
  // Floats from one token's row of x to the next.
  x_stride: u32,
  eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> xq: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> params: QuantizeParams;
@group(0) @binding(3) var<storage, read> norm_weight: array<vec4<f32>>;

// Chunk c of token t's row of x as 8 vec4s, zeros past the row's end (cols and x_stride are
// multiples of 4). Loops of constant count unroll, so the arrays stay in registers: on a
// software adapter an array indexed at run time lives in memory, every access a gather.
fn chunk_of(t: u32, c: u32) -> array<vec4<f32>, 8> {
  var v: array<vec4<f32>, 8>;
  for (var k = 0u; k < 8u; k++) {
    if (c * 32u + 4u * k < params.cols) {
      v[k] = x[(t * params.x_stride) / 4u + c * 8u + k];
    }
  }
  return v;
}

@compute @workgroup_size(64)
fn quantize(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x < params.chunks) {
    store_chunk(gid.y, gid.x, chunk_of(gid.y, gid.x));
  }
}

var<workgroup> sums: array<f32, 64>;

// x[t] / sqrt(mean(x[t]²) + eps) · weight, quantized: a workgroup per token.
@compute @workgroup_size(64)
fn norm_quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = wid.y;
  var s = 0.0;
  for (var c = lid.x; c < params.chunks; c += 64u) {
    let v = chunk_of(t, c);
    for (var k = 0u; k < 8u; k++) {
      s += dot(v[k], v[k]);
    }
  }
  sums[lid.x] = s;
  workgroupBarrier();
  for (var stride = 32u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      sums[lid.x] += sums[lid.x + stride];
    }
    workgroupBarrier();
  }
  let inv = 1.0 / sqrt(sums[0] / f32(params.cols) + params.eps);
  for (var c = lid.x; c < params.chunks; c += 64u) {
    var v = chunk_of(t, c);
    for (var k = 0u; k < 8u; k++) {
      if (c * 32u + 4u * k < params.cols) {
        v[k] = v[k] * inv * norm_weight[c * 8u + k];
      }
    }
    store_chunk(t, c, v);
  }
}

fn store_chunk(t: u32, c: u32, v: array<vec4<f32>, 8>) {
  var m = vec4<f32>(0.0);
  for (var k = 0u; k < 8u; k++) {
    m = max(m, abs(v[k]));
  }
  let scale = max(max(m.x, m.y), max(m.z, m.w)) / 127.0;
  let inverse = select(0.0, 1.0 / scale, scale > 0.0);
  var words: array<u32, 8>;
  var sum = vec4<i32>(0);
  for (var k = 0u; k < 8u; k++) {
    let level = vec4<i32>(round(v[k] * inverse));
    sum += level;
    words[k] = pack4xI8(level);
  }
  let stride = params.chunks * 2u + params.chunks / 2u;
  let base = t * stride;
  xq[base + 2u * c] = vec4<u32>(words[0], words[1], words[2], words[3]);
  xq[base + 2u * c + 1u] = vec4<u32>(words[4], words[5], words[6], words[7]);
  let s = base + params.chunks * 2u + c / 2u;
  let k = (c % 2u) * 2u;
  xq[s][k] = bitcast<u32>(scale);
  xq[s][k + 1u] = bitcast<u32>(scale * f32(sum.x + sum.y + sum.z + sum.w));
}

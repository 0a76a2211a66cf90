// The input of a product, quantized to 8 bits per chunk of 32 values as the CPU's integer
// kernels do (`model::int8::quantize_block`): scale = max |v| / 127, level = v / scale rounded
// to nearest, ties to even. Layout per token (quant.wgsl reads it): each chunk's 32 levels in
// two 16-byte words, then a word per pair of chunks, (scale, scale · Σ levels) of each.
// A thread quantizes one chunk; workgroup y is the token.

struct QuantizeParams {
  cols: u32,
  // Chunks per token: an even count, past `cols` they are zeros.
  chunks: u32,
  // Floats from one token's row of x to the next.
  x_stride: u32,
  _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> xq: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> params: QuantizeParams;

@compute @workgroup_size(64)
fn quantize(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  let t = gid.y;
  if (c >= params.chunks) {
    return;
  }
  var v: array<f32, 32>;
  var amax = 0.0;
  for (var j = 0u; j < 32u; j++) {
    let col = c * 32u + j;
    if (col < params.cols) {
      v[j] = x[t * params.x_stride + col];
    }
    amax = max(amax, abs(v[j]));
  }
  let scale = amax / 127.0;
  let inverse = select(0.0, 1.0 / scale, scale > 0.0);
  var words: array<u32, 8>;
  var sum = 0i;
  for (var j = 0u; j < 32u; j++) {
    let level = i32(round(v[j] * inverse));
    sum += level;
    words[j / 4u] |= (bitcast<u32>(level) & 0xffu) << (8u * (j % 4u));
  }
  let stride = params.chunks * 2u + params.chunks / 2u;
  let base = t * stride;
  xq[base + 2u * c] = vec4<u32>(words[0], words[1], words[2], words[3]);
  xq[base + 2u * c + 1u] = vec4<u32>(words[4], words[5], words[6], words[7]);
  let s = base + params.chunks * 2u + c / 2u;
  let k = (c % 2u) * 2u;
  xq[s][k] = bitcast<u32>(scale);
  xq[s][k + 1u] = bitcast<u32>(scale * f32(sum));
}

// ---- attention, split across workgroups (flash-decoding) ----
// `attention`: workgroup (g, s) per KV head g and split s of the positions 0..=pos + t, y the
// token t. It reads each key and value row once for the GROUP query heads that share it and
// writes, per head, a partial (max, sum of exponentials, unnormalised output) of its split;
// `combine` merges a head's partials. Nothing in workgroup memory grows with the context.
// The host prepends HD4 (head_dim / 4), GROUP (query heads per KV head), WG (threads per
// workgroup), SPLITS (splits per KV head and token at most) and SPAN (positions a split
// takes at least: fewer, longer splits spend less on merging).
@group(0) @binding(0) var<storage, read> att_q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> att_k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> att_v: array<vec4<f32>>;
// [token][head][split][HD4] and [token][head][split] (max, sum): `attention` writes them,
// `combine` reads them.
@group(0) @binding(3) var<storage, read_write> att_part: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> att_stats: array<vec2<f32>>;
@group(0) @binding(5) var<uniform> att_params: Params;
// `combine`'s output: [token][head][HD4].
@group(0) @binding(6) var<storage, read_write> att_out: array<vec4<f32>>;

// A thread's partial sums of one head at a time, to merge a workgroup's threads.
var<workgroup> red_acc: array<vec4<f32>, WG * HD4>;
var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_l: array<f32, WG>;

const LOWEST: f32 = -3.4e38;

fn splits_for(seen: u32) -> u32 {
  return clamp((seen + SPAN - 1u) / SPAN, 1u, SPLITS);
}

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let g = wid.x / SPLITS;
  let s = wid.x % SPLITS;
  let t = wid.y;
  let seen = att_params.pos + t + 1u;
  let splits = splits_for(seen);
  if (s >= splits) {
    return;
  }
  let len = (seen + splits - 1u) / splits;
  let end = min(seen, (s + 1u) * len);
  let kv_row4 = att_params.kv_row / 4u;
  let scale = 1.0 / sqrt(f32(att_params.n));
  let h0 = g * GROUP;
  // Every loop below has a constant bound, so it unrolls and these arrays stay in registers
  // (indexed at run time they would live in memory, every access a gather on a CPU adapter).
  var q: array<vec4<f32>, GROUP * HD4>;
  let q0 = (t * att_params.heads + h0) * HD4;
  for (var i = 0u; i < GROUP * HD4; i++) {
    q[i] = att_q[q0 + i] * scale;
  }
  var m: array<f32, GROUP>;
  var l: array<f32, GROUP>;
  var acc: array<vec4<f32>, GROUP * HD4>;
  for (var k = 0u; k < GROUP; k++) {
    m[k] = LOWEST;
  }
  // Online softmax over this thread's positions: each row load serves all GROUP heads.
  for (var j = s * len + lid.x; j < end; j += WG) {
    let row = j * kv_row4 + g * HD4;
    // Zeroed by hand: SwiftShader (Chrome's software WebGPU) kept the last position's sums
    // in a loop-body `var` instead of zeroing it each iteration.
    var dot: array<vec4<f32>, GROUP>;
    for (var k = 0u; k < GROUP; k++) {
      dot[k] = vec4<f32>(0.0);
    }
    for (var d = 0u; d < HD4; d++) {
      let key = att_k[row + d];
      for (var k = 0u; k < GROUP; k++) {
        dot[k] += q[k * HD4 + d] * key;
      }
    }
    var c: array<f32, GROUP>;
    var p: array<f32, GROUP>;
    for (var k = 0u; k < GROUP; k++) {
      let score = dot[k].x + dot[k].y + dot[k].z + dot[k].w;
      let top = max(m[k], score);
      c[k] = exp(m[k] - top);
      p[k] = exp(score - top);
      l[k] = l[k] * c[k] + p[k];
      m[k] = top;
    }
    for (var d = 0u; d < HD4; d++) {
      let value = att_v[row + d];
      for (var k = 0u; k < GROUP; k++) {
        acc[k * HD4 + d] = acc[k * HD4 + d] * c[k] + p[k] * value;
      }
    }
  }
  // The workgroup's threads merged into one partial per head.
  let part0 = (t * att_params.heads + h0) * SPLITS + s;
  for (var k = 0u; k < GROUP; k++) {
    red_m[lid.x] = m[k];
    workgroupBarrier();
    var top = LOWEST;
    for (var i = 0u; i < WG; i++) {
      top = max(top, red_m[i]);
    }
    let c = exp(m[k] - top);
    red_l[lid.x] = l[k] * c;
    for (var d = 0u; d < HD4; d++) {
      red_acc[lid.x * HD4 + d] = acc[k * HD4 + d] * c;
    }
    workgroupBarrier();
    let part = part0 + k * SPLITS;
    for (var d = lid.x; d < HD4; d += WG) {
      var sum = vec4<f32>(0.0);
      for (var i = 0u; i < WG; i++) {
        sum += red_acc[i * HD4 + d];
      }
      att_part[part * HD4 + d] = sum;
    }
    if (lid.x == 0u) {
      var sum = 0.0;
      for (var i = 0u; i < WG; i++) {
        sum += red_l[i];
      }
      att_stats[part] = vec2<f32>(top, sum);
    }
    workgroupBarrier();
  }
}

// Workgroup per query head and token; thread d merges vec4 d of the head's splits.
@compute @workgroup_size(HD4)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let h = wid.x;
  let t = wid.y;
  let splits = splits_for(att_params.pos + t + 1u);
  let base = (t * att_params.heads + h) * SPLITS;
  var top = LOWEST;
  for (var s = 0u; s < splits; s++) {
    top = max(top, att_stats[base + s].x);
  }
  var sum = 0.0;
  var out = vec4<f32>(0.0);
  for (var s = 0u; s < splits; s++) {
    let w = exp(att_stats[base + s].x - top);
    sum += w * att_stats[base + s].y;
    out += w * att_part[(base + s) * HD4 + lid.x];
  }
  att_out[(t * att_params.heads + h) * HD4 + lid.x] = out / sum;
}

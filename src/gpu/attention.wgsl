// ---- attention: one workgroup per query head h and token t, over positions 0..=pos + t ----
// The host prepends `const HD4: u32 = head_dim / 4;`. Rows are read as vec4s: on a software
// adapter each storage load is a loop over the SIMD lanes, so a thread keeps its query in
// registers (loops over HD4 unroll; a runtime bound would put the array in memory) and reads
// a key or value row 16 bytes at a time.
@group(0) @binding(0) var<storage, read> att_q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> att_k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> att_v: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> att_out: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> att_params: Params;

// 8 KiB of the 16 KiB of workgroup memory WebGPU guarantees; the GPU context is this long.
const MAX_POSITIONS: u32 = 2048u;
var<workgroup> scores: array<f32, MAX_POSITIONS>;
var<workgroup> reduce: array<f32, 64>;
// The output's partial sums: [group of positions][vec4 of the head].
var<workgroup> partial: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let hd4 = HD4;
  let kv_row4 = att_params.kv_row / 4u;
  let h = wid.x;
  let t = wid.y;
  let g = h / (att_params.heads / att_params.kv_heads);
  let seen = att_params.pos + t + 1u;
  let scale = 1.0 / sqrt(f32(att_params.n));
  let q0 = (t * att_params.heads + h) * hd4;
  var q: array<vec4<f32>, HD4>;
  for (var d = 0u; d < HD4; d++) {
    q[d] = att_q[q0 + d] * scale;
  }
  var m = -3.4e38;
  for (var j = lid.x; j < seen; j += 64u) {
    let k = j * kv_row4 + g * hd4;
    var dot = vec4<f32>(0.0);
    for (var d = 0u; d < HD4; d++) {
      dot += q[d] * att_k[k + d];
    }
    let score = dot.x + dot.y + dot.z + dot.w;
    scores[j] = score;
    m = max(m, score);
  }
  reduce[lid.x] = m;
  workgroupBarrier();
  for (var stride = 32u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      reduce[lid.x] = max(reduce[lid.x], reduce[lid.x + stride]);
    }
    workgroupBarrier();
  }
  let top = reduce[0];
  workgroupBarrier();
  var s = 0.0;
  for (var j = lid.x; j < seen; j += 64u) {
    let e = exp(scores[j] - top);
    scores[j] = e;
    s += e;
  }
  reduce[lid.x] = s;
  workgroupBarrier();
  for (var stride = 32u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      reduce[lid.x] += reduce[lid.x + stride];
    }
    workgroupBarrier();
  }
  let inv = 1.0 / reduce[0];
  // Thread (group, d): vec4 d of the output summed over the positions of its group (the
  // positions are split into 64 / hd4 groups so that every thread works).
  let groups = max(64u / hd4, 1u);
  let d = lid.x % hd4;
  let group = lid.x / hd4;
  var acc = vec4<f32>(0.0);
  if (group < groups) {
    for (var j = group; j < seen; j += groups) {
      acc += scores[j] * att_v[j * kv_row4 + g * hd4 + d];
    }
  }
  partial[lid.x] = acc;
  workgroupBarrier();
  if (lid.x < hd4) {
    var total = vec4<f32>(0.0);
    for (var k = 0u; k < groups; k++) {
      total += partial[k * hd4 + lid.x];
    }
    att_out[q0 + lid.x] = total * inv;
  }
}
